"""``repx tui``: the terminal dashboard (:mod:`repx.report.tui`), behind one click command.

Textual is an optional dependency (the ``tui`` extra): without it the command says how to
install it instead of failing on an import.
"""

from __future__ import annotations

import click

from repx.cli.common import handle_errors, lab_options, store_option
from repx.errors import UsageError
from repx.lab import LabOptions, open_lab

INSTALL_HINT = ("repx tui needs Textual, which is not installed: "
                "pip install 'repx-lab[tui]' (or pip install textual)")


@click.command("tui")
@lab_options
@store_option
@click.option("--refresh", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="SECONDS", help="Seconds between two reads of the store.")
@handle_errors
def tui(options: LabOptions, store_dir: str, refresh: float) -> None:
    """A terminal dashboard: runs, stages and jobs with live counts from the store,
    filters, a job's params, resources, last attempt and log (followed while it runs),
    and actions: cancel a job or stage, rerun the failed jobs.

    Keys: arrows move, / filters (status:failed stage:NAME PARAM=VALUE), n goes to the next
    failed job, l shows its log, e switches stderr/stdout, c cancels, r reruns the failed
    jobs, q quits. Jobs another live build owns are read-only.

    Example: repx tui
    """
    try:
        from repx.report.tui.app import run_dashboard
    except ImportError as error:
        if (error.name or "").split(".")[0] not in ("textual", "rich"):
            raise
        raise UsageError(INSTALL_HINT) from None
    from repx.report.tui.model import Dashboard

    graph = open_lab(options, validate=False)
    dashboard = Dashboard(graph, store_dir)
    try:
        run_dashboard(dashboard, refresh=refresh)
    finally:
        dashboard.close()


def register(main: click.Group) -> None:
    """Add this module's command to the ``repx`` group."""
    main.add_command(tui)
