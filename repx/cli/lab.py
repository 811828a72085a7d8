"""``repx lab build``, ``repx list runs|jobs|groups`` and ``repx trace-params``: the lab
itself, before anything runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from repx.cli.common import (
    LAB_FILE_HELP,
    Context,
    alias_of,
    handle_errors,
    lab_arguments,
    lab_options,
    lab_reporter,
    nix_build_options,
    short,
    store_option,
    table,
)
from repx.cli.completion import complete_jobs, complete_run_names, complete_targets
from repx.display import plural
from repx.lab import LabOptions, open_lab
from repx.lab.export import export_lab
from repx.lab.graph import Job
from repx.lab.open import locate_lab
from repx.report import lab_views as lv
from repx.store import Store

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
              help="Build only this run (and the runs it depends on): its name, or its key "
                   "in lab.nix's runs.")
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
                                lab_args=lab_arguments(arg, argstr), impure=impure,
                                reporter=lab_reporter()))
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
        click.echo(f"  run {name}: {plural(count, 'job')}")
    click.echo(f"{plural(summary['jobs'], 'distinct job')}")


@lab_group.command("export")
@lab_options
@click.option("-o", "--output", default="lab.tar", show_default=True, metavar="FILE",
              type=click.Path(dir_okay=False), help="The tar to write.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@handle_errors
def lab_export(options: LabOptions, output: str, as_json: bool) -> None:
    """Write the lab, its whole closure and its images to one tar, for machines without Nix
    (`repx build --lab lab.tar` unpacks it once into the lab cache).

    Example: repx lab export -o lab.tar; repx lab export --lab ./result -o /shared/lab.tar
    """
    summary = export_lab(locate_lab(options), Path(output))
    data = {"tar": str(summary.path), "lab": summary.lab, "lab_id": summary.lab_id,
            "store_paths": summary.store_paths, "images": summary.images,
            "size": summary.size, "sha256": summary.sha256}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    images = ", ".join(f"{n} ({d[:19]})" for n, d in summary.images.items()) or "none"
    click.echo(f"exported lab {summary.lab_id} to {summary.path}: {summary.store_paths} store "
               f"paths, {summary.size / 1e6:.1f} MB; images: {images}")


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
@store_option
@click.option("-s", "--stage", help="Only jobs of this stage (pname or pipeline key); an "
              "unknown stage is an error listing the stages.")
@click.option("--status", "statuses", type=click.Choice(lv.JOB_STATES), multiple=True,
              help="Only jobs in this state, from the store (repeatable). pending: not run, "
                   "its inputs are ready; blocked: not run, an upstream job is not done.")
@click.option("-p", "--param", "param_keys", multiple=True, metavar="KEY",
              help="Show this effective param as a column (repeatable; a.b reads into an "
                   "object).")
@click.option("--output-paths", is_flag=True,
              help="Show each job's output folder in the store ($out; '-' if it has not run).")
@click.option("-g", "--group-by-stage", is_flag=True, help="One table per stage.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of job objects.")
@handle_errors
def list_jobs(targets: tuple[str, ...], options: LabOptions, store_dir: str, stage: str | None,
              statuses: tuple[str, ...], param_keys: tuple[str, ...], output_paths: bool,
              group_by_stage: bool, as_json: bool) -> None:
    """The jobs of the lab (or of RUN, @GROUP, JOB prefix), with their effective params.

    STAGE is the pipeline key, with the pname in parentheses where it differs; PARAMS are
    the effective params (its upstream jobs', then its own). --status adds each job's state
    (from --store) and keeps the jobs in the states named; -p KEY shows the effective param
    KEY instead of the PARAMS column; --output-paths adds the output folder of each job.

    Example: repx list jobs hyperparam-sweep --stage train-model -p lr --status succeeded
    """
    graph = open_lab(options)
    jobs = graph.select(list(targets)) if targets else list(graph.jobs.values())
    if stage:
        jobs = lv.jobs_of_stage(graph, jobs, stage)
    states = lv.lab_job_states(graph, store_dir, [j.id for j in jobs]) if statuses else {}
    if statuses:
        jobs = [j for j in jobs if states[j.id] in statuses]
    # The table's PARAMS are effective params too; the JSON has them with -p only (its
    # `params` and `depends_on` already say where each value comes from).
    wanted = param_keys or not as_json
    effective = lv.effective_params(graph, [j.id for j in jobs]) if wanted else {}

    def extra(job: Job) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if statuses:
            data["status"] = states[job.id]
        if param_keys:
            data["effective_params"] = effective[job.id]
        if output_paths:
            out = lv.output_dir(store_dir, job.id)
            data["output_path"] = str(out) if out.is_dir() else None
        return data

    if as_json:
        objects = [{**job.to_dict(), **extra(job)} for job in jobs]
        if group_by_stage:
            by_stage: dict[str, list[Any]] = {}
            for job, obj in zip(jobs, objects, strict=True):
                by_stage.setdefault(job.stage, []).append(obj)
            click.echo(json.dumps(by_stage, indent=2))
        else:
            click.echo(json.dumps(objects, indent=2))
        return

    header = ["JOB", "RUN", "STAGE"]
    header += ["STATUS"] if statuses else []
    header += [key.upper() for key in param_keys] if param_keys else ["PARAMS"]
    header += ["OUTPUT PATH"] if output_paths else []

    def row(job: Job) -> list[str]:
        data = extra(job)
        cells = [job.id, job.run, lv.stage_label(job)]
        if statuses:
            cells.append(data["status"])
        if param_keys:
            for key in param_keys:
                value = lv.param_value(data["effective_params"], key)
                cells.append("-" if lv.is_missing(value) else short(value))
        else:
            cells.append(" ".join(f"{k}={short(v)}" for k, v in effective[job.id].items()))
        if output_paths:
            cells.append(data["output_path"] or "-")
        return cells

    if group_by_stage:
        for index, (name, members) in enumerate(lv.group_by_stage(jobs).items()):
            if index:
                click.echo()
            click.echo(f"[{name}] {plural(len(members), 'job')} (pname {members[0].pname})")
            table(header, [row(job) for job in members])
    else:
        table(header, [row(job) for job in jobs])
    counts = lv.stage_counts(jobs)
    click.echo(f"{plural(len(jobs), 'job')}: "
               + ", ".join(f"{n} {label}" for label, n in counts.items()))


@list_group.command("deps")
@click.argument("job", shell_complete=complete_jobs)
@lab_options
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the tree as JSON.")
@handle_errors
def list_deps(job: str, options: LabOptions, store_dir: str, as_json: bool) -> None:
    """The jobs JOB depends on, as a tree: its producers, theirs, and so on, with their
    states from the store; a job already shown is marked (see above). A run whose manifest
    JOB reads (an inter-run dependency) is one line with its job count.

    Example: repx list deps 3f9a2
    """
    graph = open_lab(options)
    target = graph.resolve_job(job)
    ids = graph.upstream_closure([target.id])
    states = lv.lab_job_states(graph, store_dir, ids) if Store.exists(store_dir) else None
    tree = lv.dependency_tree(graph, target, states)
    if as_json:
        click.echo(json.dumps(tree.to_dict(), indent=2))
        return

    def echo_node(node: lv.DependencyNode, depth: int) -> None:
        indent = "  " * depth
        state = f"  {node.state}" if node.state else ""
        more = "  (see above)" if node.repeated and node.job.depends_on else ""
        click.echo(f"{indent}{node.job.id}  [{node.job.stage}]{state}{more}")
        for run, kind, count in node.runs:
            click.echo(f"{indent}  run {run}: its manifest ({plural(count, 'job')}, {kind})")
        for child in node.children:
            echo_node(child, depth + 1)

    echo_node(tree, 0)
    click.echo(f"{len(ids) - 1} upstream jobs")


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
@click.argument("job", required=False, shell_complete=complete_jobs)
@lab_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def trace_params(job: str | None, options: LabOptions, as_json: bool) -> None:
    """The effective params of JOB (default: of every job), where each value came from, and
    its upstream jobs' params.

    Example: repx trace-params 3f9a --lab ./result
    """
    graph = open_lab(options)
    targets = [graph.resolve_job(job)] if job is not None else list(graph.jobs.values())
    effective = lv.effective_params(graph, [t.id for t in targets])
    traces = []
    for target in targets:
        upstream = [graph.jobs[i] for i in graph.upstream_closure([target.id])
                    if i != target.id]
        traces.append((target, upstream, {
            "job": target.id,
            "params": {k: {"value": v, "source": target.param_sources.get(k, "default")}
                       for k, v in target.params.items()},
            "effective": effective[target.id],
            "upstream": {u.id: u.params for u in upstream},
        }))
    if as_json:
        data: Any = (traces[0][2] if job is not None
                     else {target.id: trace for target, _, trace in traces})
        click.echo(json.dumps(data, indent=2))
        return
    for index, (target, upstream, trace) in enumerate(traces):
        if index:
            click.echo()
        click.echo(f"job {target.id} (run {target.run}, stage {target.stage})")
        if not target.params:
            click.echo("  (no params)")
        for key, entry in trace["params"].items():
            click.echo(f"  {key} = {json.dumps(entry['value'])}    [{entry['source']}]")
        for up in upstream:
            click.echo(f"upstream {up.id}")
            for key, value in up.params.items():
                click.echo(f"  {key} = {json.dumps(value)}")


def register(main: click.Group) -> None:
    """Add this module's commands to the ``repx`` group."""
    main.add_command(lab_group)
    # The original RepX's name for `list deps`.
    list_group.add_command(alias_of(list_deps, "dependencies", "list deps"))
    main.add_command(list_group)
    main.add_command(trace_params)
