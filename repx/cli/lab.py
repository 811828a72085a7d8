"""``repx lab build``, ``repx list runs|jobs|groups`` and ``repx trace-params``: the lab
itself, before anything runs."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import click

from repx.cli.common import (
    LAB_FILE_HELP,
    Context,
    handle_errors,
    lab_arguments,
    lab_options,
    nix_build_options,
    short,
    table,
)
from repx.cli.completion import complete_jobs, complete_run_names, complete_targets
from repx.lab import LabOptions, open_lab

# ----------------------------------------------------------------------------- lab


@click.group("lab")
def lab_group() -> None:
    """Build the lab without running anything."""


@lab_group.command("build")
@click.option("-f", "--file", "lab_file", metavar="FILE", help=LAB_FILE_HELP)
@click.option("--nixpkgs", metavar="PATH", envvar="REPX_NIXPKGS",
              help="Use this nixpkgs instead of the host package set.")
@click.option("-o", "--out-link", default="result", show_default=True,
              help="Where to link the built lab.")
@click.option("--run", "run_slice", metavar="RUN", shell_complete=complete_run_names,
              help="Build only this run (and the runs it depends on).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@nix_build_options
@handle_errors
def lab_build(lab_file: str | None, nixpkgs: str | None, out_link: str, run_slice: str | None,
              as_json: bool, nix_args: tuple[Any, Any, bool]) -> None:
    """Build lab.nix (or a flake's lab) into a read-only lab directory and validate its
    scripts.

    Examples: repx lab build -f examples/param-sweep/lab.nix;
    repx lab build --argstr mountDir /scratch; repx lab build -f flake.nix#lab --impure
    """
    ctx = click.get_current_context().find_object(Context)
    arg, argstr, impure = nix_args
    graph = open_lab(LabOptions(lab_file=lab_file, nixpkgs=nixpkgs, out_link=out_link,
                                run_slice=run_slice, show_trace=bool(ctx and ctx.verbose > 1),
                                lab_args=lab_arguments(arg, argstr), impure=impure))
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


@click.group("list")
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
@click.argument("targets", nargs=-1, shell_complete=complete_targets)
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


@click.command("trace-params")
@click.argument("job", shell_complete=complete_jobs)
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


def register(main: click.Group) -> None:
    """Add this module's commands to the ``repx`` group."""
    main.add_command(lab_group)
    main.add_command(list_group)
    main.add_command(trace_params)
