"""``repx pull``: a target's finished jobs copied into the local store (:mod:`repx.remote.pull`).

Also the hidden ``repx _pull-serve``, the remote half: the shipped repx runs it on the
target to list records and stream files. It reads its request as JSON on stdin (a list of
20 000 job ids is too long for one command-line word) and is not meant to be typed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from repx.cli.common import handle_errors, lab_options, store_option
from repx.cli.completion import complete_targets
from repx.cli.remote import target_lab_folder
from repx.display import plural
from repx.errors import UsageError
from repx.lab import LabOptions, open_lab
from repx.store import Store
from repx.store.space import human


@click.argument("selected", nargs=-1, metavar="[RUN|@GROUP|JOB]...",
                shell_complete=complete_targets)
@click.option("--target", "target_name", metavar="NAME", required=True,
              help="The target to pull from (a [targets.NAME] table of repx.toml or "
                   "~/.config/repx/config.toml).")
@lab_options
@store_option
@click.option("--include", "include", metavar="PATTERN", multiple=True,
              help="Copy only the outputs whose path under out/ matches PATTERN (fnmatch: "
                   "'*.csv', 'plots/*'; repeatable). Logs and params are always copied.")
@click.option("--max-size", metavar="SIZE", default=None,
              help="Copy only output files of at most SIZE each (e.g. 10M, 1G).")
@click.option("--verify", is_flag=True,
              help="Also hash the local files of jobs pulled before (default: their size "
                   "is checked) and fetch again any that changed.")
@click.option("--json", "as_json", is_flag=True, help="Print what was pulled as JSON.")
@handle_errors
def pull(selected: tuple[str, ...], target_name: str, options: LabOptions, store_dir: str,
         include: tuple[str, ...], max_size: str | None, verify: bool,
         as_json: bool) -> None:
    """Copy the records and outputs of the target's finished jobs of RUN, @GROUP or JOB
    (default: every job of the lab) into the local store, so that `repx status`, `viz`,
    `report` and `repx.analysis` work here.

    Incremental: only files the local store lacks are sent. Verified: every file is
    checked against the BLAKE3 the target recorded, and a job is recorded here only once
    all of its files are. A job that succeeded here with another record, or that a local
    build is running, is left alone. Jobs still running on the target are skipped (pull
    again when they are done).

    Example: repx pull --target cluster train --include '*.json'
    """
    from repx.remote.pull import PullSelection, TargetSource, parse_max_size, pull_jobs
    from repx.remote.targets import find_target

    target = find_target(target_name, target_lab_folder(options.lab_file))
    if target.is_local:
        raise UsageError("--target local is this machine: its jobs are in the local store "
                         "already")
    selection = PullSelection(include=include,
                              max_size=parse_max_size(max_size) if max_size else None)
    graph = open_lab(options)
    job_ids = [job.id for job in graph.select(list(selected))]
    source = TargetSource(target)

    def progress(text: str) -> None:
        if not as_json:
            click.echo(f"repx: {target.name}: {text}", err=True)

    with Store(store_dir) as store:
        summary = pull_jobs(source, store, job_ids, selection, where=target.where(),
                            rehash=verify, progress=progress)
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
        return
    parts = [f"{plural(len(summary.imported), 'job')} pulled",
             f"{len(summary.up_to_date)} already here",
             f"{plural(summary.files_received, 'file')} ({human(summary.bytes_received)}) "
             f"in {summary.seconds:.1f} s"]
    if summary.outputs_left:
        parts.append(f"{plural(summary.outputs_left, 'output')} left on the target "
                     "(--include/--max-size)")
    click.echo(f"{target.name}: " + ", ".join(parts))
    notes = [(summary.active, "still running or queued there (pull again when done)"),
             (summary.kept_local, "kept as they are here (succeeded here with another "
                                  "record, or a local build holds them)"),
             (summary.missing, "not run there")]
    for ids, what in notes:
        if ids:
            click.echo(f"  {plural(len(ids), 'job')} {what}", err=True)


@click.argument("action", type=click.Choice(["list", "send"]))
@click.option("--store", "store_dir", metavar="DIR", required=True)
@handle_errors
def pull_serve(action: str, store_dir: str) -> None:
    """The target's half of `repx pull` (JSON request on stdin)."""
    from repx.remote.pull import PullError, serve_list, serve_send

    try:
        request = json.loads(sys.stdin.buffer.read() or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PullError(f"_pull-serve {action}: the request is not JSON ({exc})") from None
    if not isinstance(request, dict):
        raise PullError(f"_pull-serve {action}: the request is not a JSON object")
    if action == "list":
        sys.stdout.write(json.dumps(serve_list(Path(store_dir), request)))
        sys.stdout.flush()
    else:
        serve_send(Path(store_dir), request, sys.stdout.buffer)
        sys.stdout.buffer.flush()


def register(main: click.Group) -> None:
    """Add this module's commands to the ``repx`` group."""
    main.command("pull")(pull)
    main.command("_pull-serve", hidden=True)(pull_serve)
