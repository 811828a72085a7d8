"""The ``repx`` command line: a thin click layer over the library API.

One module per command family: :mod:`.lab` (lab build, list, trace-params), :mod:`.build`
(build, cancel), :mod:`.store` (status, show, log, cache, gc), :mod:`.tools` (viz,
makefile, init), :mod:`.completion` (completion, and the candidates TAB offers),
:mod:`.tui` (the terminal dashboard), :mod:`.report` (the HTML report);
:mod:`.common` holds the shared options and error handling. Every command
turns a ``RepxError`` into ``repx: <message>`` and its exit code (2 for lab and usage
errors); a traceback is shown only with ``-v``.
"""

from __future__ import annotations

import sys

from repx.console import install_quiet_interrupt

# `python -m repx.cli` imports this package before its __main__ runs (sys.argv[0] is "-m"
# meanwhile): Ctrl-C during the imports below must be quiet there too (see repx.console).
if sys.argv[:1] == ["-m"]:
    install_quiet_interrupt()

import importlib  # noqa: E402

import click  # noqa: E402 - after the SIGINT handler, on purpose

from repx import __version__  # noqa: E402

#: The command families (modules of this package with a ``register(main)``), in help order.
FAMILIES = ("lab", "build", "store", "tools", "report", "completion", "tui", "pull")

#: Commands whose family alone is loaded to run them: a no-op ``repx build`` is timed in
#: milliseconds, and importing every family (reports, the TUI, SLURM views) costs more than
#: the build's own work. Any other command, ``--help`` and completion load every family.
QUICK_COMMANDS = {"build": "build", "run": "build"}


class _FamilyGroup(click.Group):
    """The ``repx`` group: command families are imported when a command needs them."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._loaded: set[str] = set()

    def _load(self, *families: str) -> None:
        for family in families:
            if family not in self._loaded:
                self._loaded.add(family)
                importlib.import_module(f"repx.cli.{family}").register(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        quick = QUICK_COMMANDS.get(cmd_name)
        if quick is not None:
            self._load(quick)
            command = super().get_command(ctx, cmd_name)
            if command is not None:
                return command
        self._load(*FAMILIES)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load(*FAMILIES)
        return super().list_commands(ctx)


@click.group(cls=_FamilyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More detail (repeat for Nix traces).")
@click.option("--store-map-size", metavar="SIZE",
              help="Address space to map the job store with, e.g. 2G (env "
                   "REPX_STORE_MAP_SIZE; default 1T, or a quarter of `ulimit -v`).")
@click.version_option(__version__, prog_name="repx")
@click.pass_context
def main(ctx: click.Context, verbose: int, store_map_size: str | None) -> None:
    """repx: reproducible, incremental experiments described in Nix."""
    from repx.cli.common import Context

    ctx.obj = Context(verbose)
    if store_map_size is not None:
        _set_store_map_size(store_map_size)


def _set_store_map_size(text: str) -> None:
    """``--store-map-size``: checked now, passed on as ``REPX_STORE_MAP_SIZE`` (which the
    store reads, and which the jobs' own analysis code inherits)."""
    import os

    from repx.errors import RepxError
    from repx.store.space import MAP_SIZE_ENV, parse_size

    try:
        parse_size(text, "--store-map-size")
    except RepxError as error:
        raise click.BadParameter(error.message, param_hint="--store-map-size") from error
    os.environ[MAP_SIZE_ENV] = text
