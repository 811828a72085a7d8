"""``repx status``, ``show``, ``log``, ``cache`` and ``gc``: looking at what the store holds.

A thin layer: :mod:`repx.report.store_views` and :mod:`repx.store.gc` compute plain data,
these commands print it (a table or block for people, ``--json`` for scripts). Read-only
commands open the store read-only, so they never wait for a build that is committing.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from repx.cli.common import handle_errors, lab_options, store_option, table
from repx.cli.completion import (
    complete_gc_roots,
    complete_jobs,
    complete_run_names,
    complete_runs,
)
from repx.errors import LabError, UsageError
from repx.lab import LabOptions, open_lab
from repx.lab.graph import JobGraph
from repx.lab.nix import find_lab_source
from repx.report import store_views as ins
from repx.store import Status
from repx.store import gc as repx_gc

_STATUS_CHOICES = click.Choice([s.value for s in Status])

#: Units ``repx show`` prints of a scatter-gather job (a sweep may have thousands).
_MAX_UNIT_LINES = 30


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# ---------------------------------------------------------------------------- status


def status(runs: tuple[str, ...], options: LabOptions, store_dir: str, as_json: bool) -> None:
    """How far each run of the lab is: job counts by state, from the store.

    RUN may be a run name or @GROUP (default: every run). RUNNING counts queued jobs too,
    FAILED cancelled ones; NOT RUN counts jobs without a record and claims whose process is
    gone (the next build runs them). The total counts a job shared by two runs once.

    Example: repx status hyperparam-sweep --store ./.repx
    """
    graph = open_lab(options)
    with ins.open_store(store_dir) as store:
        data = ins.run_status(graph, store, runs)
    if as_json:
        _echo_json(data)
        return

    def row(name: str, c: dict[str, int]) -> list[str]:
        return [name, str(c["jobs"]), str(c["succeeded"]), str(c["failed"] + c["cancelled"]),
                str(c["running"] + c["queued"]), str(c["not_run"] + c["stale"])]

    table(["RUN", "JOBS", "SUCCEEDED", "FAILED", "RUNNING", "NOT RUN"],
          [row(r["run"], r) for r in data["runs"]] + [row("total", data["total"])])
    total = data["total"]
    notes = [f"{total[k]} {k}" for k in ("cancelled", "queued") if total[k]]
    if total["stale"]:
        notes.append(f"{total['stale']} stale claims (their process is gone)")
    if notes:
        click.echo("of which " + ", ".join(notes))


# ------------------------------------------------------------------------------ show


def _maybe_lab(options: LabOptions) -> JobGraph | None:
    """The lab, or None when none was named and the folder has no lab file."""
    if options.lab_dir is None and options.lab_file is None:
        try:
            find_lab_source(None)
        except LabError:
            return None
    return open_lab(options)


def show(job: str, options: LabOptions, store_dir: str, as_json: bool) -> None:
    """Everything about one job: params (and where each came from), resources, inputs,
    outputs with their sizes, status, timings and log paths.

    JOB is a job id or a unique prefix, looked up in the lab (--lab, or ./lab.nix), then in
    the store (scatter-gather units, jobs of other labs). Outside a lab folder it shows
    what the store alone knows.

    Example: repx show 3f9a2 --lab ./result
    """
    graph = _maybe_lab(options)
    with ins.open_store(store_dir) as store:
        if graph is not None and any(i.startswith(job) for i in graph.jobs):
            # Unique, or an error listing the lab's candidates.
            data = ins.job_detail(graph, store, graph.resolve_job(job))
        else:
            try:
                job_id = ins.resolve_stored_job(store, job)
            except UsageError as exc:
                if graph is None or "ambiguous" in exc.message:
                    raise
                raise UsageError(f"no job of lab {graph.lab.path} and none in the store at "
                                 f"{store.root} has an id starting with '{job}'") from None
            data = ins.stored_detail(store, job_id)
            data["in_lab"] = False
    if as_json:
        _echo_json(data)
        return
    _print_detail(data)


def _size(info: dict[str, Any]) -> str:
    return ins.human_bytes(info["size"]) if info.get("exists") else "missing"


def _print_detail(d: dict[str, Any]) -> None:
    echo = click.echo
    echo(f"job       {d['id']}")
    if d.get("in_lab"):
        also = [r for r in d["runs"] if r != d["run"]]
        echo(f"run       {d['run']}" + (f" (also in {', '.join(also)})" if also else ""))
        echo(f"stage     {d['stage']} (pname {d['pname']}, version {d['version']}, "
             f"{d['kind']}, hash {d['hash_mode']})")
    else:
        echo("          (not a job of this lab: what the store knows)")
    rec = d.get("record")
    state = d["status"]
    if rec:
        code = f"exit code {rec['exit_code']}" if rec["exit_code"] is not None else ""
        for part in (code, rec["reason"]):
            if part and part not in state:
                state += f", {part}"
        if rec["owner_alive"] is False:
            state += " (its process is gone)"
    echo(f"status    {state}")
    if rec:
        if not d.get("in_lab"):
            echo(f"run       {rec['run'] or '-'}   stage {rec['stage'] or '-'}")
        echo(f"started   {ins.fmt_time(rec['started'])}   finished "
             f"{ins.fmt_time(rec['finished'])}   took {ins.fmt_duration(rec['duration'])}")
        where = f"host {rec['host'] or '-'}, pid {rec['pid'] if rec['pid'] is not None else '-'}"
        if rec["slurm_id"]:
            where += f", SLURM job {rec['slurm_id']}"
        echo(f"ran on    {where}")
        echo(f"lab       {rec['lab'] or '-'}")
    if d.get("in_lab"):
        echo("params" + ("" if d["params"] else "    (none)"))
        for key, value in d["params"].items():
            echo(f"  {key} = {json.dumps(value)}    [{d['param_sources'].get(key, 'default')}]")
        echo("resources" + ("" if d["resources"] else " (none)"))
        for key, value in d["resources"].items():
            echo(f"  {key} = {json.dumps(value)}")
        echo("inputs" + ("" if d["inputs"] else "    (none)"))
        for name, src in d["inputs"].items():
            if "job" in src:
                echo(f"  {name} <- {src['job']} ({src['status']}) output {src.get('output')}: "
                     f"{src.get('path') or '?'}")
            elif "file" in src:
                echo(f"  {name} <- file {src['file']}")
            elif "run_manifest" in src:
                echo(f"  {name} <- manifest of run {src['run_manifest']} ({src['jobs']} jobs)")
            else:
                echo(f"  {name} <- provided at run time ({src.get('runtime')})")
        echo("outputs" + ("" if d["outputs"] else "   (none)"))
        for name, out in d["outputs"].items():
            echo(f"  {name} = {out['path'] or out['template']}  {_size(out)}")
    files = d["files"]
    if files:
        echo(f"files     {len(files)}, {ins.human_bytes(d['outputs_bytes'])} in {d['job_dir']}/out")
        for f in files[:20]:
            echo(f"  {f['path']}  {ins.human_bytes(f['size'])}  blake3 {f['blake3'][:16]}")
        if len(files) > 20:
            echo(f"  … {len(files) - 20} more (--json lists them all)")
    for name, info in d["logs"].items():
        echo(f"{name:<9} {info['path']}  {_size(info)}")
    if d.get("in_lab"):
        for title, key in (("depends on", "depends_on"), ("needed by", "dependents")):
            if d[key]:
                echo(title)
                for dep in d[key]:
                    echo(f"  {dep['id']}  {dep['status']}")
    units = d.get("units")
    if units:
        if "error" in units:
            echo(f"units     {units['error']}")
        else:
            counts = ", ".join(f"{n} {s}" for s, n in sorted(units["counts"].items()))
            echo(f"units     {len(units['branches'])} branches; {counts}")
            if units["scatter"]:
                echo(f"  scatter {units['scatter']['id']}  {units['scatter']['status']}")
            lines = [f"  [{i}] {step} {unit['id']}  {unit['status']}"
                     for i, branch in enumerate(units["branches"])
                     for step, unit in branch["steps"].items()]
            for line in lines[:_MAX_UNIT_LINES]:
                echo(line)
            if len(lines) > _MAX_UNIT_LINES:
                echo(f"  … {len(lines) - _MAX_UNIT_LINES} more units (--json lists them all)")


# ------------------------------------------------------------------------------- log


def log(job: str, store_dir: str, follow: bool, stderr: bool) -> None:
    """Print a job's stdout log (--stderr: its stderr log).

    JOB is a job id or a unique prefix of one in the store. -f keeps printing what the job
    writes until it is no longer running (a finished job's log is printed and -f returns).

    Example: repx log 3f9a2 --stderr -f
    """
    out = click.get_binary_stream("stdout")

    def write(chunk: bytes) -> None:
        out.write(chunk)
        out.flush()

    with ins.open_store(store_dir) as store:
        job_id = ins.resolve_stored_job(store, job)
        path, record = ins.log_file(store, job_id, stderr=stderr)
        which = "stderr" if stderr else "stdout"
        try:
            if not follow:
                if not path.exists():
                    state = record.status.value if record else "not recorded"
                    raise UsageError(f"job {job_id} ({state}) has no {which} log at {path}")
                ins.copy_log(path, 0, write)
                return
            record = ins.follow_log(store, job_id, path, write)
        except BrokenPipeError:  # `repx log JOB | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
    if not path.exists():
        raise UsageError(f"job {job_id} wrote no {which} log ({path})")
    if record is not None and record.status is not Status.SUCCEEDED:
        why = f": {record.reason}" if record.reason else ""
        click.echo(f"repx: job {job_id} is {record.status.value}{why}", err=True)


# ----------------------------------------------------------------------------- cache


def cache_ls(store_dir: str, statuses: tuple[str, ...], run: str | None, stage: str | None,
             as_json: bool) -> None:
    """The jobs the store holds: id, status, run, stage, output size, finish time.

    Example: repx cache ls --status failed --run hyperparam-sweep
    """
    with ins.open_store(store_dir) as store:
        rows = ins.cache_list(store, statuses=statuses, run=run, stage=stage)
    if as_json:
        _echo_json(rows)
        return
    table(["JOB", "STATUS", "RUN", "STAGE", "SIZE", "FINISHED"],
          [[r["id"], r["status"], r["run"] or "-", r["stage"] or "-", ins.human_bytes(r["bytes"]),
            ins.fmt_time(r["finished"])] for r in rows])
    click.echo(f"{len(rows)} jobs, {ins.human_bytes(sum(r['bytes'] for r in rows))} of outputs")


def cache_stats(store_dir: str, as_json: bool) -> None:
    """What the store holds (jobs by status and run, output sizes, gc roots) and the hit
    rate of the last build (jobs up to date / jobs it needed).

    Example: repx cache stats --json
    """
    with ins.open_store(store_dir) as store:
        stats = ins.cache_stats(store)
    if as_json:
        _echo_json(stats)
        return
    echo = click.echo
    echo(f"store     {stats['store']}")
    by_status = ", ".join(f"{n} {s}" for s, n in stats["by_status"].items() if n) or "none"
    echo(f"jobs      {stats['records']} ({by_status})")
    echo(f"outputs   {ins.human_bytes(stats['outputs_bytes'])}")
    echo(f"gc roots  {stats['roots']} ({stats['pinned_roots']} pinned)")
    if stats["orphan_folders"]:
        echo(f"orphans   {stats['orphan_folders']} output folders without a record "
             "(`repx gc` removes them)")
    if stats["by_run"]:
        table(["RUN", "JOBS", "SIZE"],
              [[run, str(r["records"]), ins.human_bytes(r["bytes"])]
               for run, r in stats["by_run"].items()])
    last = stats["last_build"]
    if last is None:
        echo("last build: none recorded")
        return
    rate = "n/a" if last["hit_rate"] is None else f"{last['hit_rate']:.1%}"
    echo(f"last build {ins.fmt_time(last['started'])} ({ins.fmt_duration(last['duration'])}) "
         f"of {', '.join(last['targets']) or 'every run'}")
    echo(f"  lab        {last['lab']}")
    echo(f"  hit rate   {rate}: {last['up_to_date']} up to date "
         f"({ins.human_bytes(last['reused_bytes'])}), {last['executed']} executed "
         f"({ins.human_bytes(last['executed_bytes'])}), {last['failed']} failed")
    if last["blocked"] or last["cancelled"] or last["not_started"]:
        echo(f"  not run    {last['blocked']} blocked, {last['cancelled']} cancelled, "
             f"{last['not_started']} not started")


def cache_show(job: str, store_dir: str, as_json: bool) -> None:
    """What the store holds about one job (JOB: an id or a unique prefix in the store):
    its record, every output file with size and BLAKE3, logs, params and inputs it ran with.

    Example: repx cache show 3f9a2 --json
    """
    with ins.open_store(store_dir) as store:
        data = ins.stored_detail(store, ins.resolve_stored_job(store, job))
    if as_json:
        _echo_json(data)
        return
    data["in_lab"] = False
    _print_detail(data)
    for key in ("params_json", "inputs_json"):
        if data[key] is not None:
            click.echo(f"{key.replace('_', '.')}  {json.dumps(data[key], sort_keys=True)}")


def cache_verify(jobs: tuple[str, ...], store_dir: str, quick: bool, as_json: bool) -> None:
    """Check that the outputs of every succeeded job (or of JOB…) are on disk as recorded:
    present, same size, same BLAKE3 (--quick: sizes only). Exit code 1 if anything is wrong.

    Example: repx cache verify --store ./.repx
    """
    with ins.open_store(store_dir) as store:
        ids = [ins.resolve_stored_job(store, j) for j in jobs] if jobs else None
        results = ins.verify_jobs(store, ids, checksums=not quick)
    bad = [r for r in results if r["problems"]]
    if as_json:
        _echo_json(results)
    else:
        for r in bad:
            click.echo(f"{r['id']} ({r['status']}):")
            for problem in r["problems"]:
                click.echo(f"  {problem}")
        files = sum(r["files"] for r in results)
        size = ins.human_bytes(sum(r["bytes"] for r in results))
        click.echo(f"verified {len(results)} jobs ({files} files, {size}): "
                   + (f"{len(bad)} with problems" if bad else "all as recorded"))
    if bad:
        sys.exit(1)


def cache_rm(jobs: tuple[str, ...], store_dir: str, statuses: tuple[str, ...],
             as_json: bool) -> None:
    """Delete jobs from the store: their records and output folders. JOB is an id or a unique
    prefix; --status removes every job in that state instead. A job still running under a
    live process is refused. The next build runs removed jobs again.

    Example: repx cache rm --status failed
    """
    if not jobs and not statuses:
        raise UsageError("name the jobs to remove (JOB…) or a --status (e.g. --status failed)")
    with ins.open_store(store_dir, readonly=False) as store:
        ids = [ins.resolve_stored_job(store, j) for j in jobs]
        if statuses:
            ids += [r["id"] for r in ins.cache_list(store, statuses=statuses)]
        removed = ins.remove_jobs(store, ids)
    if as_json:
        _echo_json({"removed": [{"id": i, "bytes": n} for i, n in removed],
                    "freed_bytes": sum(n for _, n in removed)})
        return
    for job_id, _ in removed:
        click.echo(f"removed {job_id}")
    click.echo(f"removed {len(removed)} jobs, freed "
               f"{ins.human_bytes(sum(n for _, n in removed))}")


# -------------------------------------------------------------------------------- gc


def gc(store_dir: str, dry_run: bool, keep_recent: int | None, as_json: bool) -> None:
    """Remove every job record and output folder that no gc root reaches.

    Every lab you build stays a gc root, keeping all of its jobs, until you remove it with
    `repx gc unpin` (see `repx gc roots`); --keep-recent N also drops the unpinned roots
    beyond the N newest (pinned ones stay). Jobs running under a live process are kept.
    --dry-run only reports what would go.

    Example: repx gc --dry-run --keep-recent 3
    """
    store = ins.open_store(store_dir, readonly=dry_run)
    with store:
        result = repx_gc.collect(store, dry_run=dry_run, keep_recent=keep_recent)
    if as_json:
        _echo_json(result.to_dict())
        return
    for warning in result.warnings:
        click.echo(f"repx: warning: {warning}", err=True)
    verb = "would remove" if dry_run else "removed"
    for root in result.dropped_roots:
        click.echo(f"{verb} gc root {root.name} ({root.lab_path})")
    for job_id, size in result.removed:
        click.echo(f"{verb} {job_id}  {ins.human_bytes(size)}")
    for name, size in result.orphans:
        click.echo(f"{verb} orphan folder outputs/{name}  {ins.human_bytes(size)}")
    click.echo(
        f"gc: {verb} {len(result.removed)} jobs and {len(result.orphans)} orphan folders, "
        f"{'would free' if dry_run else 'freed'} {ins.human_bytes(result.freed_bytes)}; kept "
        f"{result.reachable} jobs reachable from {len(result.roots)} roots"
        + (f" and {len(result.kept_running)} running" if result.kept_running else ""))


def gc_roots(store_dir: str, as_json: bool) -> None:
    """The gc roots: every lab built into this store (a root until unpinned) and every
    pinned one, with the number of jobs each keeps.

    Example: repx gc roots --json
    """
    with ins.open_store(store_dir) as store:
        roots = repx_gc.list_roots(store)
    if as_json:
        _echo_json([r.to_dict() for r in roots])
        return
    if not roots:
        click.echo("no gc roots (every `repx build` registers its lab as one)")
        return
    table(["NAME", "PINNED", "CREATED", "JOBS", "LAB"],
          [[r.name, "yes" if r.pinned else "no", ins.fmt_time(r.created),
            "?" if r.jobs is None else str(r.jobs),
            r.lab_path + ("" if r.lab_exists else " (gone from disk)")] for r in roots])


def gc_pin(name: str | None, options: LabOptions, store_dir: str) -> None:
    """Pin the current lab (--lab, or ./lab.nix built now) as a gc root called NAME
    (default: the lab's store name). A pinned root is never dropped by
    `repx gc --keep-recent`; it goes only with `repx gc unpin NAME`.

    Example: repx gc pin paper-v1
    """
    graph = open_lab(options)
    with ins.open_store(store_dir, readonly=False, create=True) as store:
        root = repx_gc.pin_lab(store, graph, name)
    click.echo(f"pinned {root.name} ({root.lab_path}, {len(graph.jobs)} jobs)")


def gc_unpin(name: str, store_dir: str) -> None:
    """Remove the gc root NAME (a name, a unique name prefix, or a lab path), pinned or not.
    Its jobs go at the next `repx gc` unless another root reaches them; building that lab
    again makes it a root again.

    Example: repx gc unpin paper-v1
    """
    with ins.open_store(store_dir, readonly=False) as store:
        root = repx_gc.unpin(store, name)
    click.echo(f"removed gc root {root.name} ({root.lab_path})")


# ---------------------------------------------------------------------------- register

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def register(main: click.Group) -> None:
    """Add this module's commands to the ``repx`` group."""
    main.command("status")(handle_errors(_JSON(store_option(lab_options(
        click.argument("runs", nargs=-1, metavar="[RUN|@GROUP]...",
                       shell_complete=complete_runs)(status))))))
    main.command("show")(handle_errors(_JSON(store_option(lab_options(
        click.argument("job", shell_complete=complete_jobs)(show))))))
    main.command("log")(handle_errors(
        click.option("--stderr", is_flag=True, help="Print the stderr log instead.")(
            click.option("-f", "--follow", is_flag=True,
                         help="Keep printing until the job is no longer running.")(
                store_option(click.argument("job", shell_complete=complete_jobs)(log))))))

    @main.group("cache")
    def cache() -> None:
        """Look at and maintain what the job store holds (ls, stats, show, verify, rm).

        Example: repx cache stats
        """

    status_opt = click.option("--status", "statuses", type=_STATUS_CHOICES, multiple=True,
                              help="Only jobs in this state (repeatable).")
    cache.command("ls")(handle_errors(_JSON(status_opt(store_option(
        click.option("--run", help="Only jobs recorded for this run.",
                     shell_complete=complete_run_names)(
            click.option("--stage", help="Only jobs of this stage (pname).")(cache_ls)))))))
    cache.command("stats")(handle_errors(_JSON(store_option(cache_stats))))
    job_arg = click.argument("job", shell_complete=complete_jobs)
    jobs_arg = click.argument("jobs", nargs=-1, metavar="[JOB]...", shell_complete=complete_jobs)
    cache.command("show")(handle_errors(_JSON(store_option(job_arg(cache_show)))))
    cache.command("verify")(handle_errors(_JSON(store_option(
        click.option("--quick", is_flag=True, help="Compare sizes only, not BLAKE3 digests.")(
            jobs_arg(cache_verify))))))
    cache.command("rm")(handle_errors(_JSON(status_opt(store_option(
        jobs_arg(cache_rm))))))

    @main.group("gc", invoke_without_command=True)
    @click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
    @click.option("--keep-recent", type=int, metavar="N",
                  help="First drop the unpinned roots beyond the N newest.")
    @_JSON
    @store_option
    @click.pass_context
    @handle_errors
    def gc_group(ctx: click.Context, store_dir: str, dry_run: bool, keep_recent: int | None,
                 as_json: bool) -> None:
        if ctx.invoked_subcommand is None:
            gc(store_dir, dry_run, keep_recent, as_json)

    gc_group.help = gc.__doc__
    gc_group.short_help = "Remove the jobs no gc root reaches; manage roots (pin, unpin)."
    gc_group.command("roots")(handle_errors(_JSON(store_option(gc_roots))))
    gc_group.command("pin")(handle_errors(store_option(lab_options(
        click.argument("name", required=False)(gc_pin)))))
    root_arg = click.argument("name", shell_complete=complete_gc_roots)
    gc_group.command("unpin")(handle_errors(store_option(root_arg(gc_unpin))))

