"""What a user sees while a build runs.

On a terminal: a live block, redrawn at most :data:`REDRAW_EVERY` seconds apart, with the
counts, an ETA and the units running now; every line of it is cut to the terminal's width
so a redraw never leaves a stale copy (see :mod:`repx.display` for the rules: colour, ASCII,
``NO_COLOR``). When the build ends the block is replaced by its last status line, which
keeps the elapsed time. Elsewhere (CI logs, ``| tee``): plain lines — one at every tenth of
the work or every 10 s, whichever comes first — so a log stays readable at 20 000 jobs.
Failures are printed the moment they happen, in both modes, with the tail of the job's
stderr and the path of its logs.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from repx.display import Glyphs, glyphs_for, is_terminal, make_console
from repx.engine.recap import FailedJob, params_text, recap_lines
from repx.engine.scheduler import Failure, Reporter
from repx.engine.units import Outcome, Unit

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, Group, RenderResult
    from rich.live import Live
    from rich.text import Text

# rich is imported where something is drawn for a terminal: a build off a terminal (a log,
# CI, a benchmark) writes plain lines and never pays for loading it.

#: Lines of a failed job's stderr shown under the failure.
STDERR_TAIL = 8
#: Running units listed under the live counts.
RUNNING_SHOWN = 4
#: Shortest time between two redraws of the live block: drawing costs the same whatever
#: the number of jobs, so a build of 20 000 one-second jobs pays it ten times a second.
REDRAW_EVERY = 0.1

#: The styles of a status line's parts (rich style names); none at all without colour.
STYLE_COUNT = "bold"
STYLE_DONE = "green"
STYLE_UP_TO_DATE = "dim"
STYLE_FAILED = "bold red"
STYLE_BLOCKED = "red"
STYLE_RUNNING = "bold cyan"
STYLE_TIME = "dim"


def format_seconds(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``4.2s``: short enough for a status line."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"


def tail(path: str, lines: int) -> list[str]:
    """The last ``lines`` lines of a (log) file; empty when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    return data.splitlines()[-lines:]


@dataclass(frozen=True)
class Part:
    """One part of a status line: its text, style, and how much it matters when the line
    must be shortened (the lowest ``rank`` goes first; the count and failures stay)."""

    text: str
    style: str
    rank: int


def fit_parts(parts: list[Part], width: int, glyphs: Glyphs) -> Text:
    """The parts, joined by the separator, in at most ``width`` columns: the least
    important parts are left out until the rest fits, then the line is cut (one part
    wider than the whole terminal)."""
    kept = list(parts)
    separator = len(glyphs.separator)

    def length(items: list[Part]) -> int:
        return sum(len(p.text) for p in items) + separator * max(0, len(items) - 1)

    while len(kept) > 1 and length(kept) > width:
        kept.remove(min(kept, key=lambda p: p.rank))
    from rich.text import Text

    line = Text(no_wrap=True, overflow="ellipsis" if glyphs.unicode else "crop")
    for index, part in enumerate(kept):
        if index:
            line.append(glyphs.separator, style=STYLE_TIME)
        line.append(part.text, style=part.style)
    line.truncate(width, overflow="ellipsis" if glyphs.unicode else "crop")
    return line


def crop(text: str, width: int, glyphs: Glyphs) -> str:
    """``text`` in at most ``width`` columns, its end replaced by the ellipsis if cut."""
    if len(text) <= width:
        return text
    if width <= len(glyphs.ellipsis):
        return text[:max(0, width)]
    return text[:width - len(glyphs.ellipsis)] + glyphs.ellipsis


class ConsoleReporter(Reporter):
    """Progress on a stream (stderr by default): live on a TTY, plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = is_terminal(self.stream) if live is None else live
        self.glyphs = glyphs_for(self.stream)
        self._console: Console | None = None
        self.tick_interval = 0.2 if self.live else 2.0
        self.total = 0
        self.done = 0
        self.ok = 0
        self.cached = 0
        self.failed_count = 0
        self.blocked = 0
        self.running: dict[str, tuple[Unit, float]] = {}
        self.queued_ids: set[str] = set()
        self.started_at = time.monotonic()
        self._live: Live | None = None
        self._last_draw = 0.0
        self._last_line = time.monotonic()
        self._next_tenth = 1
        self._recent: deque[float] = deque(maxlen=200)
        self._printed_done = -1
        #: What a site limit holds back (``submitted 1500 of 5000 (MaxSubmitJobs 500)``).
        self.limit_note = ""

    @property
    def console(self) -> Console:
        """The rich console of the live display, made on first use (plain lines need none)."""
        if self._console is None:
            self._console = make_console(self.stream, terminal=self.live)
        return self._console

    # -- events

    def begin(self, total: int) -> None:
        self.total = total
        self.started_at = time.monotonic()
        if not self.live and total:
            self._print(f"running {total} job{'s' if total != 1 else ''}")

    def add_units(self, count: int) -> None:
        self.total += count

    def queued(self, unit: Unit) -> None:
        self.queued_ids.add(unit.id)

    def started(self, unit: Unit) -> None:
        self.queued_ids.discard(unit.id)
        self.running[unit.id] = (unit, time.monotonic())

    def finished(self, unit: Unit, seconds: float) -> None:
        self.queued_ids.discard(unit.id)
        self.running.pop(unit.id, None)
        self.done += 1
        if unit.outcome is Outcome.SUCCEEDED:
            self.ok += 1
            self._recent.append(time.monotonic())
        elif unit.outcome is Outcome.UP_TO_DATE:
            self.cached += 1
        elif unit.outcome is Outcome.FAILED:
            self.failed_count += 1
        elif unit.outcome is Outcome.BLOCKED:
            self.blocked += 1

    def failed(self, failure: Failure) -> None:
        if not self.live:
            lines = [f"FAILED {failure.label} {failure.unit}: {failure.reason}"]
            lines += [f"  | {line}" for line in tail(failure.stderr_log, STDERR_TAIL)]
            lines.append(f"  logs: {failure.stderr_log} (stdout: {failure.stdout_log})")
            self._print("\n".join(lines))
            return
        from rich.text import Text

        text = Text()
        text.append("FAILED", style=STYLE_FAILED)
        text.append(f" {failure.label} {failure.unit}: {failure.reason}")
        for line in tail(failure.stderr_log, STDERR_TAIL):
            text.append(f"\n  | {line}", style=STYLE_TIME)
        text.append(f"\n  logs: {failure.stderr_log} (stdout: {failure.stdout_log})")
        text.overflow = "fold"  # a log path longer than the terminal is folded, not cut
        self._print_live(text)

    def message(self, text: str) -> None:
        if self.live:
            from rich.text import Text

            self._print_live(Text(text))
        else:
            self._print(text)

    def limited(self, text: str) -> None:
        if text and not self.limit_note and not self.live:
            self._print(text)  # a log says once that the build goes in waves
        self.limit_note = text

    def tick(self) -> None:
        now = time.monotonic()
        if self.live:
            if now - self._last_draw >= REDRAW_EVERY:
                self._draw(now)
            return
        reached = self.done * 10 >= self.total * self._next_tenth  # integers: no drift
        if reached or now - self._last_line >= 10:
            while self._next_tenth <= 10 and self.done * 10 >= self.total * self._next_tenth:
                self._next_tenth += 1
            self._print(self._status(now))
            self._printed_done = self.done

    def close(self) -> None:
        if self.live:
            if self._live is not None:
                self._live.stop()  # transient: the block is erased
                self._live = None
            if self.total:
                # The last word of the display stays: the counts and the elapsed time.
                self.console.print(self._status_text(time.monotonic()))
        elif self.total and self.done != self._printed_done:
            self._print(self._status(time.monotonic()))

    # -- the status line

    def _parts(self, now: float) -> list[Part]:
        """The parts of the status line, most important ranked highest: the count, the
        failures and the elapsed time stay on the narrowest terminal."""
        parts = [Part(f"[{self.done}/{self.total}]", STYLE_COUNT, 9),
                 Part(f"{self.ok} done", STYLE_DONE, 5)]
        if self.cached:
            parts.append(Part(f"{self.cached} up to date", STYLE_UP_TO_DATE, 3))
        if self.failed_count:
            parts.append(Part(f"{self.failed_count} failed", STYLE_FAILED, 8))
        if self.blocked:
            parts.append(Part(f"{self.blocked} blocked", STYLE_BLOCKED, 6))
        if self.queued_ids:
            parts.append(Part(f"{len(self.queued_ids)} queued", "", 2))
        if self.running:
            parts.append(Part(f"{len(self.running)} running", STYLE_RUNNING, 4))
        if self.limit_note:
            parts.append(Part(self.limit_note, "", 2))
        eta = self._eta(now)
        if eta is not None:
            parts.append(Part(f"ETA {format_seconds(eta)}", "", 1))
        parts.append(Part(f"elapsed {format_seconds(now - self.started_at)}", STYLE_TIME, 7))
        return parts

    def _status(self, now: float) -> str:
        """The status line as plain text, whole (a log line may be long)."""
        return self.glyphs.separator.join(part.text for part in self._parts(now))

    def _status_text(self, now: float) -> Text:
        """The status line styled and fitted to the terminal's width."""
        return fit_parts(self._parts(now), self.console.width, self.glyphs)

    def _eta(self, now: float) -> float | None:
        remaining = self.total - self.done
        if remaining <= 0 or len(self._recent) < 2:
            return None
        span = now - self._recent[0]
        if span <= 0:
            return None
        rate = len(self._recent) / span
        return remaining / rate

    # -- drawing (live mode)

    def _block(self, now: float) -> Group:
        """The live block: the status line, then the oldest running units, every line
        cut to the width (a wrapped line would survive the next redraw)."""
        from rich.console import Group
        from rich.text import Text

        width = self.console.width
        lines = [self._status_text(now)]
        shown = sorted(self.running.values(), key=lambda entry: entry[1])[:RUNNING_SHOWN]
        for unit, since in shown:
            head = f"  {self.glyphs.running} "
            took = f" {format_seconds(now - since)}"
            name = crop(f"{unit.label} {unit.id[:12]}", width - len(head) - len(took),
                        self.glyphs)
            line = Text(no_wrap=True, overflow="crop")
            line.append(head + name, style=STYLE_RUNNING)
            line.append(took, style=STYLE_TIME)
            line.truncate(width)
            lines.append(line)
        if len(self.running) > RUNNING_SHOWN:
            more = f"  {self.glyphs.ellipsis} {len(self.running) - RUNNING_SHOWN} more running"
            lines.append(Text(crop(more, width, self.glyphs), no_wrap=True, style=STYLE_TIME))
        return Group(*lines)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """The live block as of now: rich renders it at each redraw and under each lasting
        message, so what it shows is never older than the last event."""
        yield self._block(time.monotonic())

    def _draw(self, now: float) -> None:
        if self._live is None:
            from rich.live import Live

            self._live = Live(self, console=self.console, auto_refresh=False,
                              transient=True, vertical_overflow="crop",
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start(refresh=True)
        else:
            self._live.refresh()
        self._last_draw = now

    def _print_live(self, text: Text) -> None:
        """A lasting message above the live block (rich redraws the block under it)."""
        now = time.monotonic()
        if self._live is None:
            self._draw(now)
        self._last_draw = now
        # Wrapped by rich at the width: no line wider than the terminal, ever.
        self.console.print(text)
        self._last_line = time.monotonic()

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_line = time.monotonic()


class QuietReporter(Reporter):
    """``--quiet``: nothing but failures (for Makefiles and scripts)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def failed(self, failure: Failure) -> None:
        self.stream.write(f"FAILED {failure.label} {failure.unit}: {failure.reason}\n"
                          f"  logs: {failure.stderr_log}\n")
        self.stream.flush()


def print_recap(rows: list[FailedJob], stream: TextIO | None = None, *,
                limit: int = 50) -> None:
    """The failure recap at the end of a build, on ``stream`` (stdout by default).

    On a terminal, in the display's colours and never wider than it: a table when one row
    per job fits the width, else two lines per job (what failed, then its log, folded if
    need be) — a table squeezed into 40 columns is a column of letters. Log paths under the
    current folder are shown relative to it. Elsewhere the plain lines of
    :func:`repx.engine.recap.recap_lines`, which a log or a script reads whole.
    """
    if not rows:
        return
    stream = stream or sys.stdout
    if not is_terminal(stream):
        for line in recap_lines(rows, limit=limit):
            stream.write(line + "\n")
        stream.flush()
        return
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    glyphs = glyphs_for(stream)
    console = make_console(stream, terminal=True)
    shown = [(row.label or row.pname, params_text(row.params) or "-", row.reason,
              _short_path(row.stderr_log)) for row in rows[:limit]]
    console.print(Text(f"{len(rows)} failed job{'s' if len(rows) != 1 else ''}:",
                       style=STYLE_FAILED))
    header = ("STAGE", "PARAMS", "REASON", "LOG")
    widths = [max(len(cells[i]) for cells in [header, *shown]) for i in range(4)]
    if 2 + sum(widths) + 2 * 3 <= console.width:
        table = Table(box=None, show_edge=False, pad_edge=False, header_style=STYLE_COUNT,
                      padding=(0, 2, 0, 0), collapse_padding=True)
        for name, style in zip(header, ("", "", STYLE_BLOCKED, STYLE_TIME), strict=True):
            table.add_column(name, style=style or None, no_wrap=True)
        for cells in shown:
            table.add_row(*cells)
        console.print(Padding(table, (0, 0, 0, 2), expand=False))
    else:
        for stage, params, reason, log in shown:
            line = Text(f"  {stage} {params}: ", overflow="fold")
            line.append(reason, style=STYLE_BLOCKED)
            console.print(line)
            # Folded where the width ends, not word-wrapped: "log:" stays beside the path.
            line = f"    log: {log}"
            width = max(1, console.width)
            for start in range(0, len(line), width):
                console.print(Text(line[start:start + width], style=STYLE_TIME))
    if len(rows) > limit:
        console.print(Text(f"  {glyphs.ellipsis} and {len(rows) - limit} more "
                           "(repx build --json lists them all)", style=STYLE_TIME))


def _short_path(path: str) -> str:
    """``path`` relative to the current folder when it is under it (``.repx/outputs/…``),
    else as it is."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative
