"""A head start for ``repx build``: the lab's Nix build begins before the command line loads.

A no-op ``repx build`` is timed in tens of milliseconds, and the Nix evaluation of the lab
is most of it. Loading click and repx's command modules takes about 20 ms, and until now
Nix could start only after them. So the console entry point (:mod:`repx.console`) looks at
the arguments first. When they are ``build`` (or ``run``) and none of them can change which
lab is built or how, it starts the default lab's build right away (:func:`start`), and the
command line loads while Nix evaluates.

The look at the arguments is a guess, never a parse: a token that could name a lab, its
arguments or another target (``--lab``, ``-f``, ``--arg``, ``--target``, ...) or ask for
help means no head start. Soundness rests on :func:`take`: the ``build`` command, once click
has parsed everything, adopts the started build only if the lab options it computed
are equal to the ones the head start guessed, and with the same reporting. Any other
command, option set or error cancels it (:func:`cancel`, which the entry point calls on
its way out, whatever happened), so nothing is built that the command did not ask for.
"""

from __future__ import annotations

import os

from repx.errors import RepxError
from repx.lab.open import LabLocation, LabOptions, start_locating_lab
from repx.lab.progress import ConsoleLabReporter

#: The commands that build the lab they run (``run`` is the original RepX's name).
COMMANDS = frozenset({"build", "run"})
#: Long options that change the lab, how it is built, or what the command does instead.
LAB_CHANGING = frozenset({"--lab", "--file", "--nixpkgs", "--arg", "--argstr", "--impure",
                          "--target", "--help", "--"})
#: Short options among them (also inside a group of short flags such as ``-kf``).
LAB_CHANGING_SHORT = frozenset("fh")
#: Where ``--nixpkgs`` also comes from (click reads it; an empty value counts as unset).
NIXPKGS_ENV = "REPX_NIXPKGS"

_started: LabLocation | None = None


def guessed_options(args: list[str]) -> LabOptions | None:
    """The lab options ``repx build ARGS`` will have if no token in ``args`` changes them
    (None when one might)."""
    for token in args:
        if token.startswith("--"):
            if token.partition("=")[0] in LAB_CHANGING:
                return None
        elif token.startswith("-") and LAB_CHANGING_SHORT & set(token[1:]):
            return None
    return LabOptions(nixpkgs=os.environ.get(NIXPKGS_ENV) or None,
                      reporter=ConsoleLabReporter())


def start(argv: list[str]) -> None:
    """Start the lab build of ``repx ARGV`` now if it is a build whose lab is the default
    one; otherwise, or if starting fails (no lab file here, no Nix), do nothing: the
    command finds and reports that itself."""
    global _started
    if not argv or argv[0] not in COMMANDS:
        return
    options = guessed_options(argv[1:])
    if options is None:
        return
    try:
        _started = start_locating_lab(options)
    except RepxError:
        _started = None


def take(options: LabOptions) -> LabLocation | None:
    """The build started ahead, if it builds the lab ``options`` say, reported as they say
    (the caller then waits for or cancels it); else None, and the head start is cancelled."""
    global _started
    started, _started = _started, None
    if started is None:
        return None
    reporter = options.reporter
    if (started.options == options and type(reporter) is ConsoleLabReporter
            and reporter.verbose == 0):
        return started
    started.cancel()
    return None


def cancel() -> None:
    """Stop a head start nobody took (the command was another, or it failed first)."""
    global _started
    started, _started = _started, None
    if started is not None:
        started.cancel()
