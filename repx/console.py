"""The ``repx`` command's entry point, and Ctrl-C before a command is ready for it.

Importing the command line (click, LMDB, the engine) takes a few hundred milliseconds. A
Ctrl-C in that time would raise ``KeyboardInterrupt`` in the middle of an import, before
:func:`repx.cli.common.handle_errors` is there to turn it into ``repx: interrupted``, and
Python would print a traceback. So the first thing the entry point does is install
:func:`quiet_interrupt`: until a command starts, Ctrl-C ends repx with that one line and
exit code 130. While a command runs, Ctrl-C raises ``KeyboardInterrupt`` as usual (a build
stops its jobs and records them cancelled): :func:`interrupts_raise` switches between the two.

This module imports nothing of repx and only what Python has (nearly) loaded at startup
(``os``, ``_signal``, ``types``; not even ``typing``), so that the handler is in place
two milliseconds or so after Python itself is up (measured with ``python -X importtime``).
"""

# _signal, the C module under `signal`: built in and initialised with the interpreter, so
# importing it costs nothing, while `signal` first builds its enums (milliseconds in which a
# Ctrl-C would still be a traceback).
import _signal
import os
from types import FrameType, TracebackType

#: The exit code of a command stopped by Ctrl-C (128 + SIGINT, what shells report).
INTERRUPTED_EXIT_CODE = 130


def quiet_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT while repx is starting or finishing: one line on stderr, exit code 130.

    ``os.write`` rather than ``print``: the handler may run while Python is in the middle of
    writing to ``sys.stderr``, whose buffer must not be re-entered.
    """
    os.write(2, b"repx: interrupted\n")
    raise SystemExit(INTERRUPTED_EXIT_CODE)


def install_quiet_interrupt() -> None:
    """Make Ctrl-C end repx quietly. Outside the main thread, where Python allows no signal
    handler, nothing changes."""
    try:
        _signal.signal(_signal.SIGINT, quiet_interrupt)
    except ValueError:
        pass


class interrupts_raise:  # lower case: used like a function, `with interrupts_raise():`
    """While a command runs, Ctrl-C raises ``KeyboardInterrupt`` (which the command handles).

    Only the quiet handler of this module is replaced, and it is put back afterwards; a
    program that imports repx and set its own SIGINT handler keeps it.
    """

    def __init__(self) -> None:
        self._switched = False

    def __enter__(self) -> None:
        if _signal.getsignal(_signal.SIGINT) is quiet_interrupt:
            try:
                _signal.signal(_signal.SIGINT, _signal.default_int_handler)
                self._switched = True
            except ValueError:  # not the main thread
                pass

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._switched:
            _signal.signal(_signal.SIGINT, quiet_interrupt)


def main() -> None:
    """The ``repx`` console script: Ctrl-C is quiet from here on, a build's lab starts
    building (:mod:`repx.lab.head_start`), then the command line runs."""
    install_quiet_interrupt()
    import sys

    from repx.lab import head_start

    head_start.start(sys.argv[1:])
    try:
        from repx.cli import main as cli

        cli()
    finally:
        head_start.cancel()
        _skip_final_collection()


def _skip_final_collection() -> None:
    """Spare the ending process the garbage collector's last pass over its whole heap.

    An interpreter that exits collects every object it still holds, although the process
    is about to end: after the expansion of a 20 000-job lab, tens of milliseconds for
    nothing (docs/benchmarks.md). Frozen objects are left out of that pass. Objects are
    still released and closed as before: module teardown drops them by their reference
    counts, and atexit handlers run.
    """
    import gc

    gc.freeze()
