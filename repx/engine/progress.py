"""What a user sees while a build runs.

On a terminal: a live block, redrawn a few times a second, with the counts, an ETA and the
units running now. Elsewhere (CI logs, ``| tee``): plain lines — one at every tenth of the
work or every 10 s, whichever comes first — so a log stays readable at 20 000 jobs. Failures
are printed the moment they happen, in both modes, with the tail of the job's stderr and the
path of its logs.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import TextIO

from repx.engine.scheduler import Failure, Reporter
from repx.engine.units import Outcome, Unit

#: Lines of a failed job's stderr shown under the failure.
STDERR_TAIL = 8
#: Running units listed under the live counts.
RUNNING_SHOWN = 4


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


class ConsoleReporter(Reporter):
    """Progress on a stream (stderr by default): live on a TTY, plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
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
        self._drawn = 0
        self._last_draw = 0.0
        self._last_line = time.monotonic()
        self._next_tenth = 1
        self._recent: deque[float] = deque(maxlen=200)
        self._printed_done = -1

    # -- events

    def begin(self, total: int) -> None:
        self.total = total
        self.started_at = time.monotonic()
        if not self.live and total:
            self._print(f"running {total} jobs")

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
        lines = [f"FAILED {failure.label} {failure.unit}: {failure.reason}"]
        lines += [f"  | {line}" for line in tail(failure.stderr_log, STDERR_TAIL)]
        lines.append(f"  logs: {failure.stderr_log} (stdout: {failure.stdout_log})")
        self._print("\n".join(lines))

    def message(self, text: str) -> None:
        self._print(text)

    def tick(self) -> None:
        now = time.monotonic()
        if self.live:
            if now - self._last_draw >= 0.1:
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
            self._erase()
        elif self.total and self.done != self._printed_done:
            self._print(self._status(time.monotonic()))

    # -- drawing

    def _status(self, now: float) -> str:
        parts = [f"[{self.done}/{self.total}]", f"{self.ok} done"]
        if self.cached:
            parts.append(f"{self.cached} cached")
        if self.failed_count:
            parts.append(f"{self.failed_count} failed")
        if self.blocked:
            parts.append(f"{self.blocked} blocked")
        if self.queued_ids:
            parts.append(f"{len(self.queued_ids)} queued")
        parts.append(f"{len(self.running)} running")
        eta = self._eta(now)
        if eta is not None:
            parts.append(f"ETA {format_seconds(eta)}")
        parts.append(f"elapsed {format_seconds(now - self.started_at)}")
        return " · ".join(parts)

    def _eta(self, now: float) -> float | None:
        remaining = self.total - self.done
        if remaining <= 0 or len(self._recent) < 2:
            return None
        span = now - self._recent[0]
        if span <= 0:
            return None
        rate = len(self._recent) / span
        return remaining / rate

    def _draw(self, now: float) -> None:
        lines = [self._status(now)]
        shown = sorted(self.running.values(), key=lambda entry: entry[1])[:RUNNING_SHOWN]
        for unit, since in shown:
            lines.append(f"  ▸ {unit.label} {unit.id[:12]} {format_seconds(now - since)}")
        if len(self.running) > RUNNING_SHOWN:
            lines.append(f"  … {len(self.running) - RUNNING_SHOWN} more running")
        self._erase()
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)
        self._last_draw = now

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write("\x1b[F\x1b[K" * self._drawn)
            self._drawn = 0

    def _print(self, text: str) -> None:
        if self.live:
            self._erase()
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_line = time.monotonic()
        if self.live:
            self._draw(time.monotonic())


class QuietReporter(Reporter):
    """``--quiet``: nothing but failures (for Makefiles and scripts)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def failed(self, failure: Failure) -> None:
        self.stream.write(f"FAILED {failure.label} {failure.unit}: {failure.reason}\n"
                          f"  logs: {failure.stderr_log}\n")
        self.stream.flush()
