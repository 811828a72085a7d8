"""``repx report``: the lab and its jobs as one self-contained HTML file.

A thin command over :func:`repx.report.html_report.write_report`, with the shared lab and
store options of the other reading commands.
"""

from __future__ import annotations

import click

from repx.cli.common import handle_errors, lab_options, store_option
from repx.cli.completion import complete_runs
from repx.lab import LabOptions, open_lab
from repx.report import html_report
from repx.report.store_views import human_bytes


@click.argument("runs", nargs=-1, metavar="[RUN|@GROUP]...", shell_complete=complete_runs)
@lab_options
@store_option
@click.option("-o", "--output", metavar="FILE", default="report.html", show_default=True,
              help="Write the report here.")
@click.option("--links", type=click.Choice(html_report.LINK_STYLES), default="relative",
              show_default=True,
              help="Links to logs and outputs: relative to FILE's folder (the report moves "
                   "with the store), or absolute file:// URLs (the report is copied away).")
@click.option("--no-graph", is_flag=True,
              help="Leave the lab's graph out (it needs Graphviz's `dot`).")
@handle_errors
def report(runs: tuple[str, ...], options: LabOptions, store_dir: str, output: str,
           links: str, no_graph: bool) -> None:
    """Write one self-contained HTML file about the lab (RUN or @GROUP: those runs; default
    every run): provenance (lab id, gitHash, repx version, hosts, dates), the runs with
    their counts, the failures with their params and the end of their stderr, a duration
    plot per stage, the lab's graph, and the sweep as a table with one row per job (params,
    status, duration, output size, requested resources, links to logs and outputs) that
    filters, sorts and pages in the browser. It loads nothing from the network.

    Example: repx report -o report.html && xdg-open report.html
    """
    graph = open_lab(options)
    summary = html_report.write_report(graph, store_dir, output, runs=runs, links=links,
                                       graph_drawing=not no_graph)
    for note in summary.notes:
        click.echo(f"repx: note: {note}", err=True)
    click.echo(f"wrote {output} ({summary.jobs} job{'s' if summary.jobs != 1 else ''}, "
               f"{summary.failed} failed; {human_bytes(summary.bytes)}, "
               f"{summary.seconds:.1f}s)", err=True)


def register(main: click.Group) -> None:
    """Add ``repx report`` to the ``repx`` group."""
    main.command("report")(report)
