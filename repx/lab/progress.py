"""What opening a lab tells the person waiting for it: which lab, and the slow phases.

Opening a big lab takes a while before any job runs: Nix evaluates and builds the lab
(seconds), the sweeps are expanded and every job hashed (a million jobs: half a minute),
the stage scripts are validated (seconds the first time). :func:`repx.lab.open.open_lab`
reports these phases to a :class:`LabReporter`. The base class says nothing, so the library
API (notebooks, ``repx.doit``, tests) stays quiet unless its caller asks; the ``repx``
command passes a :class:`ConsoleLabReporter`.

On a terminal, a phase that has run for more than :data:`SHOW_AFTER` seconds gets a live
line (what is happening, for how long, how many jobs so far), erased when the phase ends so
the command's own output is all that stays. The line follows the rules of every live display
(:mod:`repx.display`: cut to the terminal's width, ASCII unless UTF-8, no colour with
``NO_COLOR``) and is drawn by :mod:`rich`. Elsewhere (a log, a pipe) nothing is drawn: a
redrawn line is noise in a file. With ``-v`` each phase's time is printed, terminal or not.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from repx.display import glyphs_for, is_terminal, make_console
from repx.lab.nix import LabSource

if TYPE_CHECKING:
    # Imported when a line is first drawn: off a terminal (a log, a pipe, a benchmark)
    # opening a lab never loads rich.
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

#: A phase shorter than this gets no live line: a line that flashes and vanishes is noise.
#: ``REPX_PROGRESS_AFTER`` (seconds) sets it, for a recording or a slow terminal.
SHOW_AFTER = 1.0
#: How often the live line is redrawn.
REDRAW_EVERY = 0.2


@dataclass
class Phase:
    """One step of opening a lab.

    ``name`` is what ``-v`` prints the time of (``nix build``); ``doing`` is the live line's
    text (``building the lab with Nix``). ``progress`` counts what is done so far (jobs
    expanded), read from the drawing thread; ``done`` is the final count (set before the
    phase ends) and ``unit`` what is counted (``jobs``).
    """

    name: str
    doing: str
    unit: str = ""
    progress: Callable[[], int] | None = None
    done: int | None = None

    def count_text(self, count: int | None) -> str:
        """``200000 jobs`` (``1 script``), or "" when nothing is counted."""
        if count is None or not self.unit:
            return ""
        unit = self.unit[:-1] if count == 1 and self.unit.endswith("s") else self.unit
        return f"{count} {unit}"


class LabReporter:
    """Receives what opening a lab does; every method does nothing (the library is quiet).

    Subclass it to show progress elsewhere (a notebook widget, a log).
    """

    def lab_found(self, source: LabSource, cwd: Path) -> None:
        """The lab file about to be built, found from ``cwd`` (in it or in a folder above)."""

    def phase_started(self, phase: Phase) -> None:
        """``phase`` begins."""

    def phase_finished(self, phase: Phase, seconds: float, ok: bool) -> None:
        """``phase`` ended after ``seconds``: done (``ok``) or by an error."""


#: The reporter of a caller that gave none.
QUIET = LabReporter()


@contextmanager
def reported(reporter: LabReporter, phase: Phase) -> Iterator[Phase]:
    """Run the body as ``phase`` of ``reporter``: started, then finished with its time
    (also when the body raises, so a live line is erased before the error is printed)."""
    started = time.monotonic()
    reporter.phase_started(phase)
    ok = False
    try:
        yield phase
        ok = True
    finally:
        reporter.phase_finished(phase, time.monotonic() - started, ok)


def show_after_setting() -> float:
    """Seconds a phase runs before its live line is drawn: ``REPX_PROGRESS_AFTER`` when it
    is a number of seconds ≥ 0, else :data:`SHOW_AFTER` (a bad value is not worth failing
    a command over; the default is what a user who set nothing sees)."""
    text = os.environ.get("REPX_PROGRESS_AFTER", "").strip()
    try:
        value = float(text)
    except ValueError:
        return SHOW_AFTER
    return value if value >= 0 else SHOW_AFTER


class ConsoleLabReporter(LabReporter):
    """Phases on ``stream`` (stderr): a live line on a terminal, times with ``verbose``.

    ``live`` defaults to whether ``stream`` is a terminal; ``show_after`` is how long a phase
    runs before its line is drawn (``REPX_PROGRESS_AFTER``, else :data:`SHOW_AFTER`).
    """

    def __init__(self, stream: TextIO | None = None, *, verbose: int = 0,
                 live: bool | None = None, show_after: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.live = is_terminal(self.stream) if live is None else live
        self.show_after = show_after_setting() if show_after is None else show_after
        self.glyphs = glyphs_for(self.stream)
        self._console: Console | None = None
        self._stop = threading.Event()
        self._drawer: threading.Thread | None = None
        self._live: Live | None = None
        self._lock = threading.Lock()

    @property
    def console(self) -> Console:
        """The console the live line is drawn on, made when first needed."""
        if self._console is None:
            self._console = make_console(self.stream, terminal=self.live)
        return self._console

    def lab_found(self, source: LabSource, cwd: Path) -> None:
        if not self.verbose:
            return
        where = ""
        if source.lab_root is not None and source.lab_root != cwd.resolve():
            where = f" (found above {cwd}, in {source.lab_root})"
        self._line(f"repx: lab: {source}{where}")

    def phase_started(self, phase: Phase) -> None:
        if not self.live:
            return
        self._stop.clear()
        started = time.monotonic()
        self._drawer = threading.Thread(target=self._draw_until_stopped,
                                        args=(phase, started), daemon=True,
                                        name=f"repx lab progress: {phase.name}")
        self._drawer.start()

    def phase_finished(self, phase: Phase, seconds: float, ok: bool) -> None:
        if self._drawer is not None:
            self._stop.set()
            self._drawer.join()
            self._drawer = None
        with self._lock:
            self._erase()
        if self.verbose and ok:
            count = phase.count_text(phase.done)
            self._line(f"repx: {phase.name}: {seconds:.2f}s" + (f" ({count})" if count else ""))

    # -- drawing (the drawer thread; the main thread only after joining it)

    def _draw_until_stopped(self, phase: Phase, started: float) -> None:
        if self._stop.wait(self.show_after):
            return
        while True:
            line = self._line_text(phase, time.monotonic() - started)
            with self._lock:
                if self._live is None:
                    from rich.live import Live

                    self._live = Live(line, console=self.console, auto_refresh=False,
                                      transient=True, redirect_stdout=False,
                                      redirect_stderr=False)
                    self._live.start(refresh=True)
                else:
                    self._live.update(line, refresh=True)
            if self._stop.wait(REDRAW_EVERY):
                return

    def _line_text(self, phase: Phase, elapsed: float) -> Text:
        """``expanding the lab… 3s · 120000 jobs`` in the terminal's width: what is being
        done is shortened first, so the time and the count stay on a narrow terminal."""
        count = phase.count_text(phase.progress() if phase.progress else None)
        ellipsis = self.glyphs.ellipsis
        tail = f" {elapsed:.0f}s" + (f"{self.glyphs.separator}{count}" if count else "")
        width = self.console.width
        doing = phase.doing + ellipsis
        room = width - len(tail)
        if len(doing) > room:
            doing = doing[:max(0, room - len(ellipsis))] + ellipsis
        from rich.text import Text

        text = Text(doing, no_wrap=True, overflow="crop")
        text.append(tail, style="dim")
        text.truncate(width, overflow="crop")
        return text

    def _erase(self) -> None:
        if self._live is not None:
            self._live.stop()  # transient: the line is erased
            self._live = None

    def _line(self, text: str) -> None:
        with self._lock:
            self._erase()
            self.stream.write(text + "\n")
            self.stream.flush()
