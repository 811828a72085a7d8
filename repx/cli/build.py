"""``repx build`` and ``repx cancel``: running the jobs the store does not hold."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from repx.cli.common import Context, alias_of, handle_errors, lab_options, store_option
from repx.cli.completion import complete_targets
from repx.config import RepxConfig, load_config
from repx.display import plural
from repx.engine.build import (
    BuildOptions,
    BuildResult,
    explain_build,
    explain_targets,
    run_build,
)
from repx.engine.build import dry_run as dry_run_plan
from repx.engine.progress import ConsoleReporter, QuietReporter, print_recap
from repx.engine.runtimes import RUNTIME_ENV, RUNTIMES, Mount, parse_mount
from repx.errors import UsageError
from repx.lab import LabOptions, open_lab
from repx.lab.resources import parse_mem
from repx.store import Store

# ---------------------------------------------------------------------------- build


@click.command("build")
@click.argument("targets", nargs=-1, shell_complete=complete_targets)
@lab_options
@store_option
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Jobs to run at once (default: the machine's CPUs).")
@click.option("-k", "--keep-going", "--continue-on-failure", "keep_going", is_flag=True,
              help="After a failure, still run everything that does not depend on it "
                   "(--continue-on-failure: the original RepX's name).")
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
@click.option("--runtime", type=click.Choice(list(RUNTIMES)), default=None,
              envvar=RUNTIME_ENV,
              help="Run each job natively (default), in a bwrap sandbox, or in a podman or "
                   "docker container of its run's image (env REPX_RUNTIME).")
@click.option("--mount", "mounts", multiple=True, metavar="PATH[:ro|rw]",
              help="bwrap/podman/docker: show jobs this host path at the same path, "
                   "read-only unless :rw (repeatable).")
@click.option("--network", is_flag=True,
              help="bwrap/podman/docker: let jobs use the network (default: none).")
@click.option("--artifact-store", type=click.Choice(["shared", "node-local"]), default=None,
              help="SLURM: nodes use the lab's closures where this machine has them "
                   "(shared, default), or unpack the lab's export on their own disk "
                   "(node-local, with an isolating --runtime; env REPX_ARTIFACT_STORE).")
@click.option("--artifact-dir", metavar="PATH", default=None,
              help="SLURM node-local: the folder on each node to unpack into (default: the "
                   "node's $TMPDIR; env REPX_ARTIFACT_DIR).")
@click.option("--dry-run", is_flag=True, help="Show what would run; run nothing.")
@click.option("--explain", is_flag=True,
              help="With --dry-run: a table per run and stage, and for every job what "
                   "changed since the last build (script diff, param, upstream job, ...).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON summary (executed, up_to_date, failed, blocked, ...).")
@click.option("-q", "--quiet", is_flag=True, help="No progress; only failures.")
@click.option("--make-stamps", is_flag=True,
              help="Touch outputs/<job>/repx/make.stamp of every job left done (for the "
                   "Makefiles of repx makefile).")
@handle_errors
def build(targets: tuple[str, ...], options: LabOptions, store_dir: str, jobs: int | None,
          keep_going: bool, force: tuple[str, ...], verify: bool, cpus: int | None,
          mem: str | None, scheduler: str, no_wait: bool, resources_file: Path | None,
          poll: float, dry_run: bool, as_json: bool, quiet: bool,
          make_stamps: bool = False, runtime: str | None = None,
          mounts: tuple[str, ...] = (), network: bool = False,
          artifact_store: str | None = None, artifact_dir: str | None = None,
          explain: bool = False) -> None:
    """Build the lab and run the jobs of RUN, @GROUP or JOB that the store does not hold
    (default: every run).

    Exit code 0 when everything asked for is up to date, 1 when a job failed (or could not
    run because of one), 2 for a usage or lab error, 130 when interrupted.

    Example: repx build hyperparam-sweep -j 4 --keep-going
    """
    config = load_config(_lab_folder(options))
    if runtime is None and config.runtime is not None:
        if config.runtime not in RUNTIMES:
            raise UsageError(f"{config.origin()}: runtime = {config.runtime!r} is not a "
                             f"runtime; use one of {', '.join(RUNTIMES)}")
        runtime = config.runtime
    # A configuration's mounts are for isolating runtimes, its artifact settings for SLURM:
    # a file that serves both kinds of build must not break the other kind.
    isolating = (runtime or "native") != "native"
    config_mounts = config.mounts if isolating else []
    config_slurm = config if scheduler == "slurm" else RepxConfig()
    build_options = BuildOptions(
        targets=targets, jobs=jobs or 0, keep_going=keep_going, force=force, verify=verify,
        cpus=cpus or 0, mem=_parse_mem_option(mem), scheduler=scheduler, wait=not no_wait,
        resources_file=resources_file or _default_resources(), poll=poll,
        make_stamps=make_stamps, runtime=runtime,
        mounts=tuple(parse_mount(m) for m in mounts) if mounts else tuple(
            _config_mount(m, config) for m in config_mounts),
        network=network or bool(isolating and config.network),
        artifact_store=artifact_store or (
            None if os.environ.get("REPX_ARTIFACT_STORE") else config_slurm.artifact_store),
        artifact_dir=artifact_dir or (
            None if os.environ.get("REPX_ARTIFACT_DIR") else config_slurm.artifact_dir),
    )
    if explain and not dry_run:
        raise UsageError("--explain goes with --dry-run (or use `repx explain JOB`)")
    if dry_run and explain:
        from repx.engine.explain import render_plan

        explained = explain_build(options, store_dir, build_options)
        if as_json:
            click.echo(json.dumps(explained.to_json(), indent=2, ensure_ascii=False))
            return
        for line in render_plan(explained):
            click.echo(line)
        would_run = len(explained.jobs)
        click.echo(f"{would_run} job{'s' if would_run != 1 else ''} would run, "
                   f"{len(explained.up_to_date)} up to date")
        return
    if dry_run:
        plan = dry_run_plan(options, store_dir, build_options)
        if as_json:
            click.echo(json.dumps({"would_run": plan.to_run, "up_to_date": plan.up_to_date,
                                   "reasons": plan.reasons}, indent=2, ensure_ascii=False))
            return
        for job_id in plan.to_run:
            click.echo(f"would run {job_id} ({plan.reasons.get(job_id, '')})")
        click.echo(f"{plural(len(plan.to_run), 'job')} would run, "
                   f"{len(plan.up_to_date)} up to date")
        return
    reporter = QuietReporter() if quiet else ConsoleReporter()
    result = run_build(options, store_dir, build_options, reporter)
    _report(result, as_json=as_json, quiet=quiet)


def _report(result: BuildResult, *, as_json: bool, quiet: bool) -> None:
    """The last words of ``repx build``: the summary (or JSON), then the exit code."""
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        # The recap is failures only, so -q ("only failures") keeps it.
        print_recap(result.recap)  # a table fitted to a terminal, plain lines elsewhere
        if not quiet:
            click.echo(result.summary_line())
    if result.interrupted:
        click.echo("repx: build interrupted; running jobs were stopped and recorded as "
                   "cancelled", err=True)
    sys.exit(result.exit_code)


@click.command("explain")
@click.argument("jobs", nargs=-1, required=True, metavar="JOB...",
                shell_complete=complete_targets)
@lab_options
@store_option
@click.option("--json", "as_json", is_flag=True,
              help="Print the explanations as JSON (one object per job).")
@handle_errors
def explain(jobs: tuple[str, ...], options: LabOptions, store_dir: str,
            as_json: bool) -> None:
    """Say why JOB would run: new combination, failed before, output missing, or what
    changed in its identity since the last build (with the script's diff); or that it is
    up to date. JOB is a job id (or unique prefix), a run or @GROUP.

    Example: repx explain 3fk9
    """
    from repx.engine.explain import render_job

    explained = explain_targets(options, store_dir, jobs)
    if as_json:
        click.echo(json.dumps([e.to_json() for e in explained], indent=2,
                              ensure_ascii=False))
        return
    for e in explained:
        for line in render_job(e, with_diff=True):
            click.echo(line)


@click.command("cancel")
@click.argument("targets", nargs=-1, shell_complete=complete_targets)
@lab_options
@store_option
@handle_errors
def cancel(targets: tuple[str, ...], options: LabOptions, store_dir: str) -> None:
    """Cancel the SLURM jobs repx submitted: all of them, or those of RUN, @GROUP or JOB.

    Example: repx cancel hyperparam-sweep
    """
    from repx.engine.slurm.cancel import cancel_jobs

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
    click.echo(f"{plural(len(closed), 'SLURM job')} cancelled")


def _config_mount(text: str, config: RepxConfig) -> Mount:
    """A ``mounts`` entry of a configuration file; its errors name the file."""
    try:
        return parse_mount(text)
    except UsageError as error:
        raise UsageError(f"{config.origin()}: mounts: {error.message}") from None


def _lab_folder(options: LabOptions) -> Path:
    """Where the lab's ``repx.toml`` would be: the folder of ``-f FILE`` (or ``-f DIR``
    itself), else the current folder."""
    if options.lab_file:
        path = Path(options.lab_file.split("#", 1)[0])
        return path if path.is_dir() else path.parent
    return Path.cwd()


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


def register(main: click.Group) -> None:
    """Add this module's commands to the ``repx`` group."""
    main.add_command(build)
    # The original RepX's name for it: `repx run RUN` builds and runs RUN.
    main.add_command(alias_of(build, "run", "build"))
    main.add_command(cancel)
    main.add_command(explain)
