"""``repx build`` and ``repx cancel``: running the jobs the store does not hold."""

from __future__ import annotations

import contextlib
import json
import operator
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from repx.cli.common import Context, alias_of, handle_errors, lab_options, store_option
from repx.cli.completion import complete_targets
from repx.cli.remote import target_option
from repx.display import plural
from repx.engine.runtimes import RUNTIME_ENV, RUNTIMES, Mount, parse_mount
from repx.errors import UsageError
from repx.lab import LabOptions, head_start
from repx.lab.open import start_locating_lab

if TYPE_CHECKING:
    # Imported where used: `repx build` starts the lab's Nix build first, and the engine,
    # the store and LMDB load on one core while Nix evaluates on the other.
    from repx.config import RepxConfig
    from repx.engine.build import BuildResult
    from repx.engine.scheduler import Reporter

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
              help="SLURM: return once every job is submitted, also those after a "
                   "scatter-gather stage (its scatter submits its branches on the node); "
                   "a later status or build records and adopts them.")
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
@click.option("--scratch", type=click.Choice(["shared", "node-local"]), default=None,
              help="SLURM: jobs write $out in the store (shared, default), or on their "
                   "node's disk, moved into the store only when the job succeeded and "
                   "verified against the node's BLAKE3 manifest (node-local; native "
                   "runtime).")
@click.option("--scratch-dir", metavar="PATH", default=None,
              help="SLURM node-local scratch: the folder on each node (default: the "
                   "node's $REPX_SCRATCH_DIR, else $TMPDIR).")
@click.option("--keep-failed-scratch", is_flag=True,
              help="SLURM node-local scratch: keep a failed job's scratch as "
                   "repx/failed-scratch.tar in its job folder.")
@click.option("--pack", type=click.IntRange(min=1), default=1, show_default=True,
              help="SLURM: jobs one array task runs one after another (each keeps its own "
                   "record, logs and exit code), for stages of many short jobs.")
@click.option("--min-task-time", metavar="DURATION", default=None,
              help="SLURM: pack each stage so that one array task lasts at least this "
                   "long (e.g. 10m, 90s, 00:10:00), from the Elapsed of the stage's "
                   "earlier jobs in the store (--pack where none is known).")
@click.option("--dry-run", is_flag=True, help="Show what would run; run nothing.")
@click.option("--explain", is_flag=True,
              help="With --dry-run: a table per run and stage, and for every job what "
                   "changed since the last build (script diff, param, upstream job, ...).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON summary (executed, up_to_date, failed, blocked, ...).")
@click.option("-q", "--quiet", is_flag=True, help="No progress; only failures.")
@click.option("--retries", type=click.IntRange(min=0), default=0, show_default=True,
              help="Try a failed job up to N more times: out of memory with twice the "
                   "memory, a time-out with 1.5 times the time, a node failure elsewhere "
                   "(a stage's `retries` resource hint wins).")
@click.option("--retry-failed", is_flag=True,
              help="Retry script failures (a non-zero exit) too; by default only failures "
                   "the job's resources or node caused are retried.")
@click.option("--make-stamps", is_flag=True,
              help="Touch outputs/<job>/repx/make.stamp of every job left done (for the "
                   "Makefiles of repx makefile).")
@click.option("--target", metavar="NAME", default=None,
              help="Build the lab here, ship what the target NAME lacks (a [targets.NAME] "
                   "of repx.toml or ~/.config/repx/config.toml) and run the jobs there with "
                   "its scheduler and runtime; Ctrl-C cancels them there.")
@handle_errors
def build(targets: tuple[str, ...], options: LabOptions, store_dir: str, jobs: int | None,
          keep_going: bool, force: tuple[str, ...], verify: bool, cpus: int | None,
          mem: str | None, scheduler: str, no_wait: bool, resources_file: Path | None,
          poll: float, dry_run: bool, as_json: bool, quiet: bool,
          make_stamps: bool = False, runtime: str | None = None,
          mounts: tuple[str, ...] = (), network: bool = False,
          artifact_store: str | None = None, artifact_dir: str | None = None,
          explain: bool = False, scratch: str | None = None, scratch_dir: str | None = None,
          keep_failed_scratch: bool = False, pack: int = 1,
          min_task_time: str | None = None, target: str | None = None, retries: int = 0,
          retry_failed: bool = False) -> None:
    """Build the lab and run the jobs of RUN, @GROUP or JOB that the store does not hold
    (default: every run).

    Exit code 0 when everything asked for is up to date, 1 when a job failed (or could not
    run because of one), 2 for a usage or lab error, 130 when interrupted.

    Example: repx build hyperparam-sweep -j 4 --keep-going
    """
    if target is not None and target != "local":
        _build_on_target(target, options, quiet=quiet)
    # The lab's Nix build runs from here on (or since the entry point, when it could guess
    # this lab: repx.lab.head_start), while the rest of repx loads and the options are
    # checked; leaving this block stops it unless the build waited for it.
    with head_start.take(options) or start_locating_lab(options) as lab:
        from repx.config import RepxConfig, load_config
        from repx.engine.build import BuildOptions, run_build
        from repx.engine.build import dry_run as dry_run_plan

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
        if scratch is None and config_slurm.scratch not in (None, "shared", "node-local"):
            raise UsageError(f"{config.origin()}: scratch = {config_slurm.scratch!r}; use "
                             "shared or node-local")
        if scratch_dir is None and config_slurm.scratch_dir is not None \
                and not config_slurm.scratch_dir.startswith("/"):
            raise UsageError(f"{config.origin()}: scratch_dir = {config_slurm.scratch_dir!r}; "
                             "give an absolute path (a folder on each compute node)")
        build_options = BuildOptions(
            targets=targets, jobs=jobs or 0, keep_going=keep_going, force=force, verify=verify,
            cpus=cpus or 0, mem=_parse_mem_option(mem), scheduler=scheduler, wait=not no_wait,
            resources_file=resources_file or _default_resources(), poll=poll,
            make_stamps=make_stamps, runtime=runtime, retries=retries,
            retry_failed=retry_failed,
            mounts=tuple(parse_mount(m) for m in mounts) if mounts else tuple(
                _config_mount(m, config) for m in config_mounts),
            network=network or bool(isolating and config.network),
            artifact_store=artifact_store or (
                None if os.environ.get("REPX_ARTIFACT_STORE") else config_slurm.artifact_store),
            artifact_dir=artifact_dir or (
                None if os.environ.get("REPX_ARTIFACT_DIR") else config_slurm.artifact_dir),
            scratch=scratch or config_slurm.scratch,
            scratch_dir=scratch_dir or config_slurm.scratch_dir,
            keep_failed_scratch=keep_failed_scratch,
            pack=pack, min_task_time=_parse_duration_option("--min-task-time", min_task_time),
        )
        if scheduler != "slurm" and (pack != 1 or min_task_time is not None):
            raise UsageError("--pack and --min-task-time pack jobs into SLURM array tasks: "
                             "they go with --scheduler slurm")
        if explain and not dry_run:
            raise UsageError("--explain goes with --dry-run (or use `repx explain JOB`)")
        if dry_run and explain:
            from repx.engine.build import explain_build
            from repx.engine.explain import render_plan

            explained = explain_build(lab, store_dir, build_options)
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
            plan = dry_run_plan(lab, store_dir, build_options)
            if as_json:
                _echo_json({"would_run": plan.to_run, "up_to_date": plan.up_to_date,
                            "reasons": plan.reasons}, ensure_ascii=False)
                return
            for job_id in plan.to_run:
                click.echo(f"would run {job_id} ({plan.reasons.get(job_id, '')})")
            click.echo(f"{plural(len(plan.to_run), 'job')} would run, "
                       f"{len(plan.up_to_date)} up to date")
            return
        result = run_build(lab, store_dir, build_options,
                       make_reporter=lambda: _reporter(quiet))
        _report(result, as_json=as_json, quiet=quiet)


def _indented_json(obj: dict[str, Any], *, ensure_ascii: bool = True) -> Iterator[str]:
    """The text of ``json.dumps(obj, indent=2, ensure_ascii=ensure_ascii)``, in pieces.

    With an indent, json encodes in pure Python: seconds for the million ids a large
    sweep's dry run or no-op lists, and one string of it (plus its bytes on the way out)
    would double the command's peak memory. Lists of strings and dicts of strings (job
    ids, reasons) are written here a few thousand entries at a time; any other value goes
    through json itself, its lines indented one level deeper (JSON strings hold no raw
    newline, so that is exact).
    """
    from json.encoder import encode_basestring, encode_basestring_ascii

    quote = encode_basestring_ascii if ensure_ascii else encode_basestring
    plain = _PLAIN_ASCII if ensure_ascii else _PLAIN
    chunk = 4096

    def quoted_list(items: list[str], separator: str) -> str:
        # Job ids need no escape: when no item of the piece does, one join quotes them all.
        if plain.fullmatch("".join(items)):
            return '"' + f'"{separator}"'.join(items) + '"'
        return separator.join(map(quote, items))

    if not obj:
        yield "{}"
        return

    def quoted_keys(keys: list[str]) -> Iterator[str]:
        # '"<key>": ' for each key, with one join and one check per piece when none needs
        # an escape (job ids never do).
        if plain.fullmatch("".join(keys)):
            return map('"{}": '.format, keys)
        return (quote(k) + ": " for k in keys)

    strings = {str}
    for index, (key, value) in enumerate(obj.items()):
        yield ("{" if index == 0 else ",") + "\n  " + quote(key) + ": "
        # Exactly str (the type test runs in C over a million ids); anything else, a str
        # subclass included, goes through json below.
        if isinstance(value, list) and value and set(map(type, value)) == strings:
            for start in range(0, len(value), chunk):
                yield ("[\n    " if start == 0 else ",\n    ") + quoted_list(
                    value[start:start + chunk], ",\n    ")
            yield "\n  ]"
        elif (isinstance(value, dict) and value and set(map(type, value)) == strings
              and set(map(type, value.values())) == strings):
            keys = list(value)
            # Reasons repeat ("not in the store"): each distinct one is quoted once.
            texts = {v: quote(v) for v in set(value.values())}
            quoted_values = list(map(texts.__getitem__, value.values()))
            for start in range(0, len(keys), chunk):
                end = start + chunk
                yield ("{\n    " if start == 0 else ",\n    ") + ",\n    ".join(
                    map(operator.add, quoted_keys(keys[start:end]), quoted_values[start:end]))
            yield "\n  }"
        else:
            yield json.dumps(value, indent=2, ensure_ascii=ensure_ascii).replace("\n", "\n  ")
    yield "\n}"


#: Text JSON writes as it is between quotes (json.encoder's own escaping rules): no quote,
#: backslash or control character, and with ``ensure_ascii`` nothing beyond ASCII.
_PLAIN_ASCII = re.compile(r'[^"\\\x00-\x1f\x7f-\U0010ffff]*')
_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')


def _echo_json(obj: dict[str, Any], *, ensure_ascii: bool = True) -> None:
    """Print ``obj`` as ``json.dumps(obj, indent=2)`` would, piece by piece."""
    for piece in _indented_json(obj, ensure_ascii=ensure_ascii):
        click.echo(piece, nl=False)
    click.echo()


def _reporter(quiet: bool) -> Reporter:
    """The build's display, made once something is to run (a no-op never imports it)."""
    from repx.engine.progress import ConsoleReporter, QuietReporter

    return QuietReporter() if quiet else ConsoleReporter()


def _report(result: BuildResult, *, as_json: bool, quiet: bool) -> None:
    """The last words of ``repx build``: the summary (or JSON), then the exit code."""
    if as_json:
        _echo_json(result.to_json())
    else:
        # The recap is failures only, so -q ("only failures") keeps it.
        from repx.engine.progress import print_recap

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
    from repx.engine.build import explain_targets
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
@target_option(["cancel"], takes_lab=True)
@handle_errors
def cancel(targets: tuple[str, ...], options: LabOptions, store_dir: str) -> None:
    """Cancel the SLURM jobs repx submitted: all of them, or those of RUN, @GROUP or JOB.

    Example: repx cancel hyperparam-sweep
    """
    from repx.engine.slurm.cancel import cancel_jobs
    from repx.lab import open_lab
    from repx.store import Store

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


def _build_on_target(name: str, options: LabOptions, *, quiet: bool) -> None:
    """``build --target NAME``: the lab built here (where Nix is), the build run there;
    exits with the remote build's code."""
    from repx.lab.open import locate_lab
    from repx.remote.commands import build_on_target
    from repx.remote.targets import find_target

    target = find_target(name, _lab_folder(options))
    lab_dir = locate_lab(options)
    code, _summary = build_on_target(click.get_current_context(), target, lab_dir,
                                     quiet=quiet)
    sys.exit(code)


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


#: Units a --min-task-time may be written in, in seconds.
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration_option(option: str, value: str | None) -> float | None:
    """Seconds for a duration option: ``10m``, ``90s``, ``1.5h``, ``2d`` or a SLURM-style
    ``[D-]HH:MM:SS`` / ``MM:SS`` / plain seconds; None when not given."""
    if value is None:
        return None
    text = value.strip().lower()
    seconds: float | None = None
    if text[-1:] in _DURATION_UNITS:
        with contextlib.suppress(ValueError):
            seconds = float(text[:-1]) * _DURATION_UNITS[text[-1]]
    else:
        from repx.lab.resources import parse_time

        with contextlib.suppress(ValueError):
            seconds = float(parse_time(text))
    if seconds is None or not seconds > 0:
        raise UsageError(f"{option} {value}: not a duration (e.g. 10m, 90s, 1h, 00:10:00)")
    return seconds


def _parse_mem_option(value: str | None) -> int:
    if value is None:
        return 0
    from repx.lab.resources import parse_mem

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
