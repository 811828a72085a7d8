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

import click  # noqa: E402 - after the SIGINT handler, on purpose

from repx import __version__  # noqa: E402
from repx.cli import build, completion, lab, report, store, tools, tui  # noqa: E402
from repx.cli.common import Context  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More detail (repeat for Nix traces).")
@click.option("--store-map-size", metavar="SIZE",
              help="Address space to map the job store with, e.g. 2G (env "
                   "REPX_STORE_MAP_SIZE; default 1T, or a quarter of `ulimit -v`).")
@click.version_option(__version__, prog_name="repx")
@click.pass_context
def main(ctx: click.Context, verbose: int, store_map_size: str | None) -> None:
    """repx: reproducible, incremental experiments described in Nix."""
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


for _family in (lab, build, store, tools, report, completion, tui):
    _family.register(main)
