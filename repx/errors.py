"""Error types that the CLI turns into one readable message and an exit code.

Every problem caused by the user's lab, arguments or environment is raised as a
``RepxError`` (or a subclass) carrying a message that names the file, stage, run or
parameter at fault; the CLI prints it without a traceback.
"""

from __future__ import annotations


class RepxError(Exception):
    """A user-facing error: printed as ``repx: <message>``; exit code ``exit_code``."""

    exit_code = 2

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Extra text (e.g. a Nix trace) shown only with ``-v``.
        self.detail = detail


class LabError(RepxError):
    """The lab definition is invalid (bad Nix, bad schema, bad wiring, bad params)."""


class UsageError(RepxError):
    """The command line asks for something that does not exist (unknown run, job…)."""


class ValidationError(LabError):
    """A stage script fails build-time validation (shellcheck, parse, missing commands)."""
