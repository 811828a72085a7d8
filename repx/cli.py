"""The ``repx`` command line: a thin click layer over the library API.

Every command turns a ``RepxError`` into ``repx: <message>`` and its exit code
(2 for lab and usage errors); a traceback is shown only with ``-v``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import click

from repx import __version__
from repx.build import BuildOptions, BuildResult, run_build, run_noop_build
from repx.build import dry_run as dry_run_plan
from repx.cli_common import Context, handle_errors, lab_options, short, store_option, table
from repx.engine.plan import selection_closure
from repx.engine.progress import ConsoleReporter, QuietReporter
from repx.errors import UsageError
from repx.expand import parse_mem
from repx.graph_index import index_path, up_to_date_ids, write_index
from repx.lab import LabOptions, cache_dir, locate_lab, open_lab
from repx.store import Store


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More detail (repeat for Nix traces).")
@click.version_option(__version__, prog_name="repx")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """repx: reproducible, incremental experiments described in Nix."""
    ctx.obj = Context(verbose)


# ----------------------------------------------------------------------------- lab


@main.group("lab")
def lab_group() -> None:
    """Build the lab without running anything."""


@lab_group.command("build")
@click.option("-f", "--file", "lab_file", metavar="FILE", help="The lab file (default ./lab.nix).")
@click.option("--nixpkgs", metavar="PATH", envvar="REPX_NIXPKGS",
              help="Use this nixpkgs instead of the host package set.")
@click.option("-o", "--out-link", default="result", show_default=True,
              help="Where to link the built lab.")
@click.option("--run", "run_slice", metavar="RUN",
              help="Build only this run (and the runs it depends on).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@handle_errors
def lab_build(lab_file: str | None, nixpkgs: str | None, out_link: str, run_slice: str | None,
              as_json: bool) -> None:
    """Build lab.nix into a read-only lab directory and validate its scripts.

    Example: repx lab build -f examples/param-sweep/lab.nix
    """
    ctx = click.get_current_context().find_object(Context)
    graph = open_lab(LabOptions(lab_file=lab_file, nixpkgs=nixpkgs, out_link=out_link,
                                run_slice=run_slice, show_trace=bool(ctx and ctx.verbose > 1)))
    summary = {
        "lab": str(graph.lab.path),
        "runs": {name: len(run.job_ids) for name, run in graph.runs.items()},
        "jobs": len(graph.jobs),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"lab: {summary['lab']}")
    for name, count in summary["runs"].items():
        click.echo(f"  run {name}: {count} jobs")
    click.echo(f"{summary['jobs']} distinct jobs")


# ---------------------------------------------------------------------------- list


@main.group("list")
def list_group() -> None:
    """List the runs, jobs or groups of a lab."""


@list_group.command("runs")
@lab_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def list_runs(options: LabOptions, as_json: bool) -> None:
    """The runs, their dependencies and job counts.

    Example: repx list runs --lab ./result
    """
    graph = open_lab(options)
    rows = [
        {
            "name": name,
            "jobs": len(run.job_ids),
            "hash_mode": run.hash_mode,
            "dependencies": {dep: kind for dep, kind in run.dependencies},
        }
        for name, run in graph.runs.items()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table(["RUN", "JOBS", "HASH MODE", "DEPENDS ON"],
          [[r["name"], str(r["jobs"]), r["hash_mode"],
            ", ".join(f"{d} ({k})" for d, k in r["dependencies"].items()) or "-"] for r in rows])


@list_group.command("jobs")
@click.argument("targets", nargs=-1)
@lab_options
@click.option("-s", "--stage", help="Only jobs of this stage (pname or pipeline key).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of job objects.")
@handle_errors
def list_jobs(targets: tuple[str, ...], options: LabOptions, stage: str | None,
              as_json: bool) -> None:
    """The jobs of the lab (or of RUN, @GROUP, JOB prefix).

    Example: repx list jobs hyperparam-sweep --stage train-model --json
    """
    graph = open_lab(options)
    jobs = graph.select(list(targets)) if targets else list(graph.jobs.values())
    if stage:
        jobs = [j for j in jobs if stage in (j.pname, j.stage)]
    if as_json:
        click.echo(json.dumps([job.to_dict() for job in jobs], indent=2))
        return
    table(["JOB", "RUN", "STAGE", "PARAMS"],
          [[job.id, job.run, job.stage,
            " ".join(f"{k}={short(v)}" for k, v in job.params.items())] for job in jobs])
    counts = Counter(job.pname for job in jobs)
    click.echo(f"{len(jobs)} jobs: " + ", ".join(f"{n} {p}" for p, n in counts.items()))


@list_group.command("groups")
@lab_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def list_groups(options: LabOptions, as_json: bool) -> None:
    """The run groups (use them as @GROUP targets).

    Example: repx list groups
    """
    graph = open_lab(options)
    if as_json:
        click.echo(json.dumps(graph.groups, indent=2))
        return
    if not graph.groups:
        click.echo("no groups")
        return
    table(["GROUP", "RUNS"], [[g, ", ".join(runs)] for g, runs in graph.groups.items()])


# -------------------------------------------------------------------- trace-params


@main.command("trace-params")
@click.argument("job")
@lab_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def trace_params(job: str, options: LabOptions, as_json: bool) -> None:
    """The effective params of JOB, where each value came from, and its upstream jobs' params.

    Example: repx trace-params 3f9a --lab ./result
    """
    graph = open_lab(options)
    target = graph.resolve_job(job)
    upstream = [graph.jobs[i] for i in graph.upstream_closure([target.id]) if i != target.id]
    data = {
        "job": target.id,
        "params": {k: {"value": v, "source": target.param_sources.get(k, "default")}
                   for k, v in target.params.items()},
        "upstream": {u.id: u.params for u in upstream},
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"job {target.id} (run {target.run}, stage {target.stage})")
    if not target.params:
        click.echo("  (no params)")
    for key, entry in data["params"].items():
        click.echo(f"  {key} = {json.dumps(entry['value'])}    [{entry['source']}]")
    for up in upstream:
        click.echo(f"upstream {up.id}")
        for key, value in up.params.items():
            click.echo(f"  {key} = {json.dumps(value)}")


# ---------------------------------------------------------------------------- build


@main.command("build")
@click.argument("targets", nargs=-1)
@lab_options
@store_option
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Jobs to run at once (default: the machine's CPUs).")
@click.option("-k", "--keep-going", is_flag=True,
              help="After a failure, still run everything that does not depend on it.")
@click.option("--force", "force", multiple=True, metavar="JOB|STAGE|RUN",
              help="Rerun these even if the store holds them (repeatable).")
@click.option("--verify", is_flag=True,
              help="Also compare the outputs of finished jobs with their recorded checksums.")
@click.option("--cpus", type=click.IntRange(min=1), default=None,
              help="CPUs the jobs' cpus hints may add up to (default: this machine's).")
@click.option("--mem", metavar="SIZE", default=None,
              help="Memory the jobs' mem hints may add up to, e.g. 16G (default: this "
                   "machine's).")
@click.option("--scheduler", type=click.Choice(["local", "slurm"]), default="local",
              envvar="REPX_SCHEDULER", show_default=True,
              help="Run jobs here, or submit them to SLURM (env REPX_SCHEDULER).")
@click.option("--no-wait", is_flag=True,
              help="SLURM: return once the jobs are submitted (a later build adopts them).")
@click.option("--resources", "resources_file", metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="SLURM: resources.toml with [defaults] and [[rules]] (default: "
                   "./resources.toml if it exists).")
@click.option("--poll", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="SLURM: seconds between two looks at squeue.")
@click.option("--dry-run", is_flag=True, help="Show what would run; run nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON summary (executed, up_to_date, failed, blocked, ...).")
@click.option("-q", "--quiet", is_flag=True, help="No progress; only failures.")
@handle_errors
def build(targets: tuple[str, ...], options: LabOptions, store_dir: str, jobs: int | None,
          keep_going: bool, force: tuple[str, ...], verify: bool, cpus: int | None,
          mem: str | None, scheduler: str, no_wait: bool, resources_file: Path | None,
          poll: float, dry_run: bool, as_json: bool, quiet: bool) -> None:
    """Build the lab and run the jobs of RUN, @GROUP or JOB that the store does not hold
    (default: every run).

    Exit code 0 when everything asked for is up to date, 1 when a job failed (or could not
    run because of one), 2 for a usage or lab error, 130 when interrupted.

    Example: repx build hyperparam-sweep -j 4 --keep-going
    """
    build_options = BuildOptions(
        targets=targets, jobs=jobs or 0, keep_going=keep_going, force=force, verify=verify,
        cpus=cpus or 0, mem=_parse_mem_option(mem), scheduler=scheduler, wait=not no_wait,
        resources_file=resources_file or _default_resources(), poll=poll,
    )
    lab_dir = locate_lab(options)
    index = index_path(cache_dir(), lab_dir, targets)
    if not (force or verify) and Store.exists(store_dir):
        with Store(store_dir, readonly=dry_run) as store:
            ids = up_to_date_ids(index, store) if dry_run else None
            result = None if dry_run else run_noop_build(str(lab_dir), store, index, targets)
        if ids is not None:  # a dry run with nothing to do: answered from the index too
            if as_json:
                click.echo(json.dumps({"would_run": [], "up_to_date": ids}, indent=2))
            else:
                click.echo(f"0 jobs would run, {len(ids)} up to date")
            return
        if result is not None:
            _report(result, as_json=as_json, quiet=quiet)
            return
    graph = open_lab(replace(options, lab_dir=str(lab_dir)))
    if not index.exists() and all(t.startswith("@") or t in graph.runs for t in targets):
        # Only for whole runs: a Makefile recipe per job would leave one index per job.
        write_index(index, graph, selection_closure(graph, list(targets)))
    if dry_run:
        store = Store(store_dir, readonly=True) if Store.exists(store_dir) else None
        plan = dry_run_plan(graph, store, build_options)
        if as_json:
            click.echo(json.dumps({"would_run": plan.to_run, "up_to_date": plan.up_to_date},
                                  indent=2))
            return
        for job_id in plan.to_run:
            click.echo(f"would run {job_id} ({plan.reasons.get(job_id, '')})")
        click.echo(f"{len(plan.to_run)} jobs would run, {len(plan.up_to_date)} up to date")
        return
    reporter = QuietReporter() if quiet else ConsoleReporter()
    with Store(store_dir) as store:
        result = run_build(graph, store, build_options, reporter)
    _report(result, as_json=as_json, quiet=quiet)


def _report(result: BuildResult, *, as_json: bool, quiet: bool) -> None:
    """The last words of ``repx build``: the summary (or JSON), then the exit code."""
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    elif not quiet:
        click.echo(result.summary_line())
    if result.interrupted:
        click.echo("repx: build interrupted; running jobs were stopped and recorded as "
                   "cancelled", err=True)
    sys.exit(result.exit_code)


@main.command("cancel")
@click.argument("targets", nargs=-1)
@lab_options
@store_option
@handle_errors
def cancel(targets: tuple[str, ...], options: LabOptions, store_dir: str) -> None:
    """Cancel the SLURM jobs repx submitted: all of them, or those of RUN, @GROUP or JOB.

    Example: repx cancel hyperparam-sweep
    """
    from repx.engine.slurm import cancel_jobs

    if not Store.exists(store_dir):
        raise UsageError(f"no repx store at {store_dir}; run `repx build` first or pass --store")
    with Store(store_dir) as store:
        ids = None
        if targets:
            graph = open_lab(options)
            ids = [job.id for job in graph.select(list(targets))]
        closed = cancel_jobs(store, ids)
    ctx = click.get_current_context().find_object(Context)
    shown = closed if ctx and ctx.verbose else closed[:10]
    for record in shown:
        click.echo(f"cancelled {record.job_id} (SLURM job {record.slurm_id})")
    if len(closed) > len(shown):
        click.echo(f"… and {len(closed) - len(shown)} more (-v lists them all)")
    click.echo(f"{len(closed)} SLURM jobs cancelled")


def _default_resources() -> Path | None:
    path = Path("resources.toml")
    return path if path.is_file() else None


def _parse_mem_option(value: str | None) -> int:
    if value is None:
        return 0
    try:
        return parse_mem(value)
    except ValueError:
        raise UsageError(f"--mem {value}: not a memory size (e.g. 512M, 16G)") from None


# Commands about the store (status, show, log, cache, gc) and the tools around a build
# (viz, makefile, init) live in their own modules.
from repx import cli_inspect, cli_tools  # noqa: E402

cli_inspect.register(main)
cli_tools.register(main)


if __name__ == "__main__":
    main()
