"""What every ``repx`` command shares: the lab and store options, error handling, tables.

Every command family of :mod:`repx.cli` uses these helpers, so that every command reports
errors and finds its lab and store the same way.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from repx.console import INTERRUPTED_EXIT_CODE, interrupts_raise
from repx.errors import LabError, RepxError, UsageError
from repx.lab import LabOptions
from repx.lab.nix import LabArgument, find_lab_source, find_lab_upward
from repx.lab.progress import ConsoleLabReporter
from repx.store.layout import DEFAULT_STORE


class Context:
    """Options shared by every command (set on the group)."""

    def __init__(self, verbose: int) -> None:
        self.verbose = verbose


LAB_FILE_HELP = ("The lab to build: a lab file, a flake.nix[#ATTR] or a folder "
                 "(default ./lab.nix, else ./flake.nix#lab, else ./nix/lab.nix, here or in "
                 "the nearest folder above).")


def lab_reporter() -> ConsoleLabReporter:
    """How a command shows the opening of its lab: the lab found and the phase times with
    ``-v``, a live line for a slow phase on a terminal (see :mod:`repx.lab.progress`)."""
    ctx = click.get_current_context(silent=True)
    context = ctx.find_object(Context) if ctx is not None else None
    return ConsoleLabReporter(verbose=context.verbose if context else 0)


def lab_arguments(arg: tuple[tuple[str, str], ...],
                  argstr: tuple[tuple[str, str], ...]) -> tuple[LabArgument, ...]:
    """``--arg``/``--argstr`` pairs as lab arguments; a name given twice is an error."""
    arguments = [LabArgument(n, v) for n, v in arg] + [LabArgument(n, v, True) for n, v in argstr]
    seen: set[str] = set()
    for argument in arguments:
        if argument.name in seen:
            raise UsageError(f"the lab argument '{argument.name}' is given twice "
                             "(--arg/--argstr)")
        seen.add(argument.name)
    return tuple(arguments)


def nix_build_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--arg``, ``--argstr`` and ``--impure``: how the lab is evaluated (every command that
    builds the lab takes them)."""

    @click.option("--arg", "lab_arg", type=(str, str), multiple=True, metavar="NAME EXPR",
                  help="Pass the Nix expression EXPR as argument NAME of the lab file's "
                       "function (repeatable).")
    @click.option("--argstr", "lab_argstr", type=(str, str), multiple=True,
                  metavar="NAME VALUE",
                  help="Pass the string VALUE as argument NAME of the lab file's function.")
    @click.option("--impure", is_flag=True,
                  help="Evaluate a flake lab impurely (needed with the host package set).")
    @functools.wraps(func)
    def wrapper(*args: Any, lab_arg: tuple[tuple[str, str], ...],
                lab_argstr: tuple[tuple[str, str], ...], impure: bool, **kwargs: Any) -> Any:
        return func(*args, nix_args=(lab_arg, lab_argstr, impure), **kwargs)

    return wrapper


def lab_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say which lab a command works on."""

    @click.option("--lab", "lab_dir", metavar="DIR",
                  help="A built lab directory (e.g. ./result); default: build ./lab.nix first.")
    @click.option("-f", "--file", "lab_file", metavar="FILE", help=LAB_FILE_HELP)
    @click.option("--nixpkgs", metavar="PATH", envvar="REPX_NIXPKGS",
                  help="Use this nixpkgs instead of the host package set (env REPX_NIXPKGS).")
    @nix_build_options
    @functools.wraps(func)
    def wrapper(*args: Any, lab_dir: str | None, lab_file: str | None,
                nixpkgs: str | None, nix_args: tuple[Any, Any, bool], **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Context)
        arg, argstr, impure = nix_args
        try:
            arguments = lab_arguments(arg, argstr)
        except RepxError as error:
            raise click.UsageError(error.message) from error
        options = LabOptions(lab_dir=lab_dir, lab_file=lab_file, nixpkgs=nixpkgs,
                             show_trace=bool(ctx and ctx.verbose > 1),
                             lab_args=arguments, impure=impure, reporter=lab_reporter())
        return func(*args, options=options, **kwargs)

    return wrapper


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print user errors as one message; keep tracebacks for -v."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Context)
        verbose = ctx.verbose if ctx else 0
        try:
            with interrupts_raise():
                return func(*args, **kwargs)
        except RepxError as error:
            click.echo(f"repx: {error.message}", err=True)
            if verbose and error.detail:
                click.echo(error.detail, err=True)
            sys.exit(error.exit_code)
        except BrokenPipeError:
            # The reader went away (`repx list jobs --json | head`): nothing left to say.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except KeyboardInterrupt:
            click.echo("repx: interrupted", err=True)
            sys.exit(INTERRUPTED_EXIT_CODE)
        except Exception as error:  # noqa: BLE001 - last resort: never a bare traceback
            if verbose:
                import traceback  # only here: its import is a no-op build's millisecond

                traceback.print_exc()
            click.echo(f"repx: internal error: {error!r} (run with -v for the traceback)",
                       err=True)
            sys.exit(3)

    return wrapper


def alias_of(command: click.Command, name: str, original: str) -> click.Command:
    """``command`` under another name (the original RepX's), whose help says what it is.

    The same options and callback: ``repx run`` is ``repx build`` in every way, so scripts
    written for the original keep working.
    """
    alias = copy.copy(command)
    alias.name = name
    alias.short_help = f"Alias of `repx {original}` (the original RepX's name)."
    alias.help = f"Alias of `repx {original}`.\n\n{command.help or ''}"
    return alias


class DefaultCommandGroup(click.Group):
    """A group whose arguments go to ``default`` when they name none of its commands.

    ``repx show JOB`` is ``repx show job JOB`` while ``repx show output JOB`` is another
    command, as in the original RepX. A TAB after ``repx show`` offers what ``default``'s
    argument offers (job ids), plus the command names that start with what was typed.
    """

    def __init__(self, *args: Any, default: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default = default

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        help_names = set(ctx.help_option_names)
        if args and args[0] not in self.commands and args[0] not in help_names:
            args = [self.default, *args]
        return super().parse_args(ctx, args)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        items: list[Any] = []
        command = self.commands.get(self.default)
        argument = next((p for p in command.params if isinstance(p, click.Argument)), None) \
            if command is not None else None
        if argument is not None:
            items += argument.shell_complete(ctx, incomplete)
        if incomplete:
            items += [item for item in super().shell_complete(ctx, incomplete)
                      if item.value in self.commands]
        return items


def default_store_dir(cwd: Path | None = None, lab_file: str | None = None) -> Path:
    """The store of a command given none: ``.repx`` in the folder of the lab ``cwd`` belongs
    to (``cwd`` or the nearest folder above with a lab file, see
    :func:`repx.lab.nix.find_lab_upward`), else ``./.repx``. With ``lab_file`` (``-f
    FILE``), the lab named: ``.repx`` beside that file, by the same rule (the folder above
    for a lab's ``nix/lab.nix``).

    Beside the lab, like its ``result`` link: ``repx status`` in ``lab/stages/`` must see
    the jobs that ``repx build`` in ``lab/`` ran, and ``repx build -f other/lab.nix`` must
    use ``other/.repx``, not start an empty store wherever it was typed.
    """
    base = (cwd or Path.cwd()).absolute()
    if lab_file is not None:
        try:
            source = find_lab_source(lab_file, base)
        except LabError:
            return base / DEFAULT_STORE  # opening the lab reports what is wrong with -f
        found = find_lab_upward(source.folder)
        if found is not None and found.lab_file == source.lab_file and found.lab_root:
            return found.lab_root / DEFAULT_STORE
        return source.folder / DEFAULT_STORE
    found = find_lab_upward(base)
    folder = found.lab_root if found is not None and found.lab_root is not None else base
    return folder / DEFAULT_STORE


def store_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--store DIR`` (env ``REPX_STORE``, default :func:`default_store_dir`), passed on as
    an absolute ``store_dir``.

    The default follows the lab, looked up or named with ``-f FILE``; with ``--lab DIR``
    (a built lab, which has no folder of its own) it is ``./.repx``.
    """

    @click.option("--store", "store_dir", metavar="DIR", envvar="REPX_STORE",
                  default=DEFAULT_STORE, show_default=".repx in the lab's folder",
                  help="The job store directory (env REPX_STORE).")
    @functools.wraps(func)
    def wrapper(*args: Any, store_dir: str, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        lab_file = ctx.params.get("lab_file")
        if (ctx.get_parameter_source("store_dir") is ParameterSource.DEFAULT
                and not ctx.params.get("lab_dir")):
            chosen = default_store_dir(lab_file=lab_file)
            context = ctx.find_object(Context)
            if context and context.verbose and chosen.parent != Path.cwd().resolve():
                where = "beside the lab file" if lab_file else "the store of the lab above"
                click.echo(f"repx: store: {chosen} ({where})", err=True)
            store_dir = str(chosen)
        return func(*args, store_dir=os.path.abspath(store_dir), **kwargs)

    return wrapper


def short(value: object, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else "…" + text[-(width - 1):]


def table(header: list[str], rows: list[list[str]]) -> None:
    """A plain aligned table (readable in a terminal and in logs)."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for row in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
