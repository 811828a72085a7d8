"""The ``repx`` command line: a thin click layer over the library API.

One module per command family: :mod:`.lab` (lab build, list, trace-params), :mod:`.build`
(build, cancel), :mod:`.store` (status, show, log, cache, gc), :mod:`.tools` (viz,
makefile, init), :mod:`.completion` (completion, and the candidates TAB offers);
:mod:`.common` holds the shared options and error handling. Every command
turns a ``RepxError`` into ``repx: <message>`` and its exit code (2 for lab and usage
errors); a traceback is shown only with ``-v``.
"""

from __future__ import annotations

import click

from repx import __version__
from repx.cli import build, completion, lab, store, tools
from repx.cli.common import Context


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More detail (repeat for Nix traces).")
@click.version_option(__version__, prog_name="repx")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """repx: reproducible, incremental experiments described in Nix."""
    ctx.obj = Context(verbose)


for _family in (lab, build, store, tools, completion):
    _family.register(main)
