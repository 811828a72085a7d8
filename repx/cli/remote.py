"""``--target NAME`` on the commands that run or inspect jobs (see :mod:`repx.remote`)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from repx.cli.common import handle_errors

TARGET_HELP = ("Do this on the target NAME (a [targets.NAME] table of repx.toml or "
               "~/.config/repx/config.toml), with its remote repx and store, over ssh.")


def target_lab_folder(lab_file: str | None) -> Path:
    """Where the lab's ``repx.toml`` (and so its targets) would be: the folder of ``-f
    FILE`` (or ``-f DIR`` itself), else the current folder."""
    if lab_file:
        path = Path(lab_file.split("#", 1)[0])
        return path if path.is_dir() else path.parent
    return Path.cwd()


def target_option(command: Sequence[str], *, takes_lab: bool = False
                  ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--target NAME``: with a remote target the command is run by the remote repx
    (``command`` with the options given here), else ``func`` runs here as usual."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @click.option("--target", metavar="NAME", default=None, help=TARGET_HELP)
        @functools.wraps(func)
        def wrapper(*args: Any, target: str | None, **kwargs: Any) -> Any:
            if target is None or target == "local":
                return func(*args, **kwargs)
            ctx = click.get_current_context()

            @handle_errors
            def run_remotely() -> None:
                from repx.remote.commands import forward
                from repx.remote.targets import find_target

                found = find_target(target, target_lab_folder(ctx.params.get("lab_file")))
                sys.exit(forward(ctx, found, command, takes_lab=takes_lab))

            return run_remotely()

        return wrapper

    return decorate
