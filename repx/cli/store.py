"""``repx status``, ``show``, ``log``, ``cache`` and ``gc``: looking at what the store holds.

A thin layer: :mod:`repx.report.store_views` and :mod:`repx.store.gc` compute plain data,
these commands print it (a table or block for people, ``--json`` for scripts). Read-only
commands open the store read-only, so they never wait for a build that is committing.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from repx.cli.common import (
    DefaultCommandGroup,
    handle_errors,
    lab_options,
    short,
    store_option,
    table,
)
from repx.cli.completion import (
    complete_gc_roots,
    complete_jobs,
    complete_run_names,
    complete_runs,
)
from repx.cli.remote import target_option
from repx.display import plural
from repx.errors import LabError, UsageError
from repx.lab import LabOptions, open_lab
from repx.lab.graph import JobGraph
from repx.lab.nix import find_lab_source, find_lab_upward
from repx.lab.open import is_lab_dir
from repx.report import lab_views as lv
from repx.report import store_views as ins
from repx.store import Status, Store
from repx.store import gc as repx_gc

_STATUS_CHOICES = click.Choice([s.value for s in Status])

#: Units ``repx show`` prints of a scatter-gather job (a sweep may have thousands).
_MAX_UNIT_LINES = 30


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _echo_notes(notes: list[str]) -> None:
    """What the command could not find out (SLURM unavailable…), once, on stderr."""
    for note in notes:
        click.echo(f"repx: note: {note}", err=True)


# ---------------------------------------------------------------------------- status


def status(runs: tuple[str, ...], options: LabOptions, store_dir: str, as_json: bool) -> None:
    """How far each run of the lab is: job counts by state, from the store.

    RUN may be a run name or @GROUP (default: every run). RUNNING counts queued jobs too,
    FAILED cancelled ones; NOT RUN counts jobs without a record and claims whose process is
    gone (the next build runs them). The total counts a job shared by two runs once. Jobs
    submitted to SLURM are counted as SLURM sees them, and the outcomes of those that ended
    are recorded (as a build would), though no build watches them.

    Example: repx status hyperparam-sweep --store ./.repx
    """
    graph = open_lab(options)
    with ins.open_store(store_dir) as store:
        data = ins.run_status(graph, store, runs)
    _echo_notes(data["notes"])
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
    if data["failures"]:
        click.echo("failures: " + ", ".join(f"{count} {kind}"
                                            for kind, count in data["failures"].items()))


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
        job_id, in_lab = _find_job(graph, store, job)
        if in_lab and graph is not None:
            data = ins.job_detail(graph, store, graph.jobs[job_id])
        else:
            data = ins.stored_detail(store, job_id)
            data["in_lab"] = False
    _echo_notes(data["notes"])
    if as_json:
        _echo_json(data)
        return
    _print_detail(data)


def _find_job(graph: JobGraph | None, store: Store, job: str) -> tuple[str, bool]:
    """The id JOB names, and whether it is a job of ``graph``: looked up in the lab (when
    there is one and it has such a prefix), then in the store (scatter-gather units, jobs
    of other labs). An unknown or ambiguous prefix is an error listing what was looked at."""
    if graph is not None and any(i.startswith(job) for i in graph.jobs):
        return graph.resolve_job(job).id, True  # unique, or an error listing the candidates
    try:
        return ins.resolve_stored_job(store, job), False
    except UsageError as exc:
        if graph is None or "ambiguous" in exc.message:
            raise
        raise UsageError(f"no job of lab {graph.lab.path} and none in the store at "
                         f"{store.root} has an id starting with '{job}'") from None


def show_output(job: str, path: str | None, options: LabOptions, store_dir: str,
                path_only: bool) -> None:
    """A job's output folder ($out): its files with their sizes; with PATH (relative to
    $out) the content of that file, or the files of that folder. --path prints only the
    absolute path of $out or of PATH (for scripts: cat "$(repx show output JOB x --path)").

    JOB is looked up as for `repx show`. PATH must stay inside $out (no '..' out of it, no
    link that leads elsewhere).

    Example: repx show output 3f9a2 results/summary.csv
    """
    graph = _maybe_lab(options)
    with ins.open_store(store_dir) as store:
        job_id, _ = _find_job(graph, store, job)
        out = store.out_dir(job_id)
        record = store.get(job_id)
    if not out.is_dir():
        state = record.status.value if record else "not run"
        raise UsageError(f"job {job_id} ({state}) has no output folder yet: {out} does not "
                         "exist (run it with `repx build`)")
    target = lv.output_target(out, path)
    if not os.path.lexists(target):
        listing = "\n".join(f"  {e.path}{'/' if e.is_dir else ''}" for e in lv.list_output(out))
        raise UsageError(f"job {job_id} has no output '{path}' ({target} does not exist); "
                         f"files in {out}:\n{listing or '  (none)'}")
    if path_only:
        click.echo(str(target))
        return
    if target.is_dir():
        if target == out:
            click.echo(f"output folder {out}")
        else:
            click.echo(f"folder {path} of {out}")
        entries = lv.list_output(target)
        for entry in entries:
            size = "" if entry.is_dir else f"  {ins.human_bytes(entry.size)}"
            click.echo(f"  {entry.path}{'/' if entry.is_dir else ''}{size}")
        if not entries:
            click.echo("  (empty)")
        return
    stdout = click.get_binary_stream("stdout")
    try:
        with open(target, "rb") as fh:
            while chunk := fh.read(1 << 16):
                stdout.write(chunk)
        stdout.flush()
    except BrokenPipeError:  # `repx show output JOB big.csv | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _attempt_lines(attempts: list[dict[str, Any]]) -> list[str]:
    """One line per attempt: where it ran, how it ended, what it asked for and used."""
    def mem(value: Any) -> str:
        return ins.human_bytes(value) if isinstance(value, (int, float)) else "-"

    def seconds(value: Any) -> str:
        return ins.fmt_duration(value) if isinstance(value, (int, float)) else "-"

    lines = []
    for a in attempts:
        code = a.get("exit_code")
        ended = a.get("failure") or a.get("state") or "?"
        where = f"SLURM job {a['slurm_id']} on {a.get('node') or '?'}" if a.get(
            "slurm_id") else f"on {a.get('node') or '?'}"
        lines.append(
            f"#{a.get('attempt', '?')} {where}: {ended}"
            f"{f', exit code {code}' if code else ''}; asked mem {mem(a.get('mem'))}, "
            f"time {seconds(a.get('time'))}; used MaxRSS {mem(a.get('max_rss'))}, "
            f"elapsed {seconds(a.get('elapsed'))}, CPU {seconds(a.get('cpu_time'))}")
    return lines


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
    elif d.get("in_current_lab", False) is False:
        # `repx show` looked the job up in the lab; `repx cache show` in the record of the
        # current lab's build (None: no lab here to say the job is not one of).
        echo("          (not a job of this lab: what the store knows)")
    rec = d.get("record")
    state = d["status"]
    if rec:
        code = f"exit code {rec['exit_code']}" if rec["exit_code"] is not None else ""
        for part in (code, rec["reason"]):
            if part and part not in state:
                state += f", {part}"
        if rec.get("slurm_state") and d["status"] in ("queued", "running"):
            state += f" (SLURM job {rec['slurm_id']}: {rec['slurm_state']})"
        elif rec["owner_alive"] is False:
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
        if rec.get("failure"):
            echo(f"failure   {rec['failure']}")
        if rec.get("attempts"):
            echo(f"attempts  {len(rec['attempts'])}")
            for line in _attempt_lines(rec["attempts"]):
                echo(f"  {line}")
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
                echo(f"  {name} <- manifest of run {src['run_manifest']} "
                     f"({plural(src['jobs'], 'job')})")
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
            echo(f"units     {plural(len(units['branches']), 'branch', 'branches')}; {counts}")
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


def log(job: str, store_dir: str, follow: bool, stderr: bool, lines: int | None) -> None:
    """Print a job's stdout log (--stderr: its stderr log).

    JOB is a job id or a unique prefix of one in the store. -n N prints only the last N
    lines. -f keeps printing what the job writes until it is no longer running (a finished
    job's log is printed and -f returns); a job on SLURM that no build watches (--no-wait)
    is followed until SLURM is done with it, and its outcome recorded.

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
        start = lv.tail_offset(path, lines) if lines is not None else 0
        try:
            if not follow:
                if not path.exists():
                    state = record.status.value if record else "not recorded"
                    raise UsageError(f"job {job_id} ({state}) has no {which} log at {path}")
                ins.copy_log(path, start, write)
                return
            record = ins.follow_log(store, job_id, path, write, start=start)
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
    """The jobs the store holds: id, status, run, stage, output size, finish time, params.

    Jobs on SLURM show SLURM's state; the outcomes of those that ended are recorded.

    Example: repx cache ls --status failed --run hyperparam-sweep
    """
    with ins.open_store(store_dir) as store:
        slurm = ins.slurm_lookup(store)
        rows = ins.cache_list(store, statuses=statuses, run=run, stage=stage, slurm=slurm,
                              with_params=True)
    _echo_notes(slurm.notes)
    if as_json:
        _echo_json(rows)
        return
    table(["JOB", "STATUS", "RUN", "STAGE", "SIZE", "FINISHED", "PARAMS"],
          [[r["id"], r["status"], r["run"] or "-", r["stage"] or "-", ins.human_bytes(r["bytes"]),
            ins.fmt_time(r["finished"]),
            " ".join(f"{k}={short(v)}" for k, v in r["params"].items()) or "-"]
           for r in rows])
    click.echo(f"{plural(len(rows), 'job')}, "
               f"{ins.human_bytes(sum(r['bytes'] for r in rows))} of outputs")


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


def _in_current_lab(store: Store, job_id: str) -> bool | None:
    """Whether ``job_id`` is a job of the current lab — the built lab ``result`` beside the
    lab file of this folder (or of the nearest folder above), or ``./result`` — as the
    store's record of that lab's build lists it; None when there is no built lab here or
    it never ran on this store (nothing to compare with: no claim either way)."""
    cwd = Path.cwd()
    folders = [cwd]
    found = find_lab_upward(cwd)
    if found is not None:
        folders += [found.folder, *([found.lab_root] if found.lab_root else [])]
    for folder in folders:
        result = folder / "result"
        if is_lab_dir(result):
            ids = repx_gc.recorded_lab_jobs(store, str(result.resolve()))
            if ids is not None:
                return job_id in ids  # a scatter-gather unit is not a job: not listed
    return None


def cache_show(job: str, store_dir: str, as_json: bool) -> None:
    """What the store holds about one job (JOB: an id or a unique prefix in the store):
    its record, every output file with size and BLAKE3, logs, params and inputs it ran with.

    Example: repx cache show 3f9a2 --json
    """
    with ins.open_store(store_dir) as store:
        job_id = ins.resolve_stored_job(store, job)
        data = ins.stored_detail(store, job_id)
        data["in_current_lab"] = _in_current_lab(store, job_id)
    _echo_notes(data["notes"])
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
        click.echo(f"verified {plural(len(results), 'job')} ({plural(files, 'file')}, {size}): "
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
    click.echo(f"removed {plural(len(removed), 'job')}, freed "
               f"{ins.human_bytes(sum(n for _, n in removed))}")


#: Skipped folders ``repx cache recover`` lists (--json lists them all).
_MAX_SKIPPED_LINES = 20


def cache_recover(store_dir: str, quick: bool, dry_run: bool, as_json: bool) -> None:
    """Rebuild the store's records from its job folders, after its database was lost
    (deleted, empty) or damaged (cut short, corrupt): a damaged database is first moved
    aside to db.damaged-<time>. Every folder whose repx/record.json is complete gets its
    record back (a succeeded job only if its files match the manifest: size and BLAKE3,
    --quick: size only), and the gc roots come back from roots.json. Folders the
    database already knows are left alone. --dry-run only reports.

    Example: repx cache recover --store ./.repx
    """
    from repx.store.recover import recover

    result = recover(store_dir, checksums=not quick, dry_run=dry_run)
    if as_json:
        _echo_json(result.to_dict())
        return
    echo = click.echo
    would = "would " if dry_run else ""
    if result.database == "damaged":
        echo(f"database  damaged: {result.damage}")
        echo(f"          {would}moved aside to "
             + (result.moved_to or f"{result.store}/db.damaged-<time>"))
    elif result.database == "missing":
        echo(f"database  missing or empty: {would}created afresh")
    counts = ", ".join(f"{len(ids)} {status}" for status, ids in sorted(result.recovered.items()))
    stale = (f", {len(result.stale_replaced)} of them over a stale claim"
             if result.stale_replaced else "")
    echo(f"{would}recover {plural(result.recovered_count, 'job')}"
         + (f" ({counts}{stale})" if counts else "")
         + f"; {len(result.already)} already recorded, "
         f"{plural(len(result.skipped), 'folder')} skipped")
    for root in result.roots:
        echo(f"{would}restore gc root {root.name}{' (pinned)' if root.pinned else ''} "
             f"({root.lab_path}) from {result.roots_from}")
    for name, why in result.skipped[:_MAX_SKIPPED_LINES]:
        echo(f"  skipped {name}: {why}")
    if len(result.skipped) > _MAX_SKIPPED_LINES:
        echo(f"  … {len(result.skipped) - _MAX_SKIPPED_LINES} more (--json lists them all)")


# -------------------------------------------------------------------------------- gc


#: Exit code of ``repx gc`` when it removed nothing because nobody confirmed the removal
#: (no terminal to ask on and no --yes, or "no" at the prompt).
GC_NOT_CONFIRMED = 4

#: Lines of a gc plan shown before the prompt (the summary line counts them all).
_MAX_PLAN_LINES = 20


def gc(store_dir: str, dry_run: bool, keep_recent: int | None, as_json: bool, yes: bool,
       options: LabOptions) -> None:
    """Remove every job record and output folder that no gc root reaches.

    Every lab you build stays a gc root, keeping all of its jobs, until you remove it with
    `repx gc unpin` (see `repx gc roots`); --keep-recent N also drops the unpinned roots
    beyond the N newest (pinned ones stay). The current lab (--lab; else the `result` link
    here or beside the lab file found upward, as in a subfolder of the lab; else the lab
    file built now) is always kept, and so are jobs running under a live process or on
    SLURM. gc shows what it would remove and asks first (--yes: do not ask); without a
    terminal and without --yes it removes nothing and exits with code 4. --dry-run only
    reports what would go.

    Example: repx gc --dry-run --keep-recent 3
    """
    with ins.open_store(store_dir, readonly=dry_run) as store:
        current = repx_gc.current_lab(options)
        keep = [current] if current is not None else []
        on_slurm = functools.partial(ins.still_on_slurm, store)
        plan = repx_gc.collect(store, dry_run=True, keep_recent=keep_recent, keep_labs=keep,
                               on_slurm=on_slurm)
        if dry_run or plan.removes_nothing:
            plan.dry_run = dry_run  # nothing to remove: the plan is the whole run
            _print_gc(plan, as_json, dry_run=dry_run)
            return
        if not yes:
            interactive = not as_json and sys.stdin.isatty()
            if not interactive:
                _print_gc(plan, as_json, dry_run=True)
                click.echo("repx: gc removed nothing: removing needs confirmation; pass --yes "
                           "(or run it in a terminal to be asked)", err=True)
                sys.exit(GC_NOT_CONFIRMED)
            _print_gc(plan, as_json=False, dry_run=True, limit=_MAX_PLAN_LINES)
            if not click.confirm("Remove them?", default=False, err=True):
                click.echo("gc: nothing removed")
                sys.exit(GC_NOT_CONFIRMED)
        result = repx_gc.collect(store, keep_recent=keep_recent, keep_labs=keep,
                                 approved=plan, on_slurm=on_slurm)
    _print_gc(result, as_json, dry_run=False)


def _print_gc(result: repx_gc.GcResult, as_json: bool, *, dry_run: bool,
              limit: int | None = None) -> None:
    """What gc removed or (``dry_run``) would remove: one line per root, job and folder
    (the first ``limit`` of them), then the counts and sizes."""
    if as_json:
        _echo_json(result.to_dict())
        return
    for warning in result.warnings:
        click.echo(f"repx: warning: {warning}", err=True)
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} gc root {root.name} ({root.lab_path})" for root in result.dropped_roots]
    lines += [f"{verb} {job_id}  {ins.human_bytes(size)}" for job_id, size in result.removed]
    lines += [f"{verb} orphan folder outputs/{name}  {ins.human_bytes(size)}"
              for name, size in result.orphans]
    shown = lines if limit is None else lines[:limit]
    for line in shown:
        click.echo(line)
    if len(shown) < len(lines):
        click.echo(f"… {len(lines) - len(shown)} more (`repx gc --dry-run` lists them all)")
    root_labs = {r.lab_path for r in result.roots}
    current = [lab for lab in result.kept_labs if lab not in root_labs]
    click.echo(
        f"gc: {verb} {plural(len(result.removed), 'job')} and "
        f"{plural(len(result.orphans), 'orphan folder')}, "
        f"{'would free' if dry_run else 'freed'} {ins.human_bytes(result.freed_bytes)}; kept "
        f"{plural(result.reachable, 'job')} reachable from {plural(len(result.roots), 'root')}"
        + (" and the current lab" if current else "")
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
    click.echo(f"pinned {root.name} ({root.lab_path}, {plural(len(graph.jobs), 'job')})")


def gc_unpin(name: str, store_dir: str) -> None:
    """Unpin the gc root NAME (a name, a unique name prefix, or a lab path): a pinned root
    becomes the ordinary root its lab's build gave it (`repx gc --keep-recent` may drop it
    later); an unpinned root is removed, and its jobs go at the next `repx gc` unless
    another root or the current lab reaches them. Building that lab again makes it a root
    again.

    Example: repx gc unpin paper-v1
    """
    with ins.open_store(store_dir, readonly=False) as store:
        done = repx_gc.unpin(store, name)
    root = done.removed
    if done.automatic is None:
        click.echo(f"removed gc root {root.name} ({root.lab_path})")
    else:
        click.echo(f"unpinned {root.name}: lab {root.lab_path} is an ordinary gc root again "
                   f"({done.automatic.name}; `repx gc unpin {done.automatic.name}` removes it)")


# ---------------------------------------------------------------------------- register

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def register(main: click.Group) -> None:
    """Add this module's commands to the ``repx`` group."""
    main.command("status")(target_option(["status"], takes_lab=True)(handle_errors(_JSON(
        store_option(lab_options(click.argument("runs", nargs=-1, metavar="[RUN|@GROUP]...",
                                                shell_complete=complete_runs)(status)))))))
    show_group = DefaultCommandGroup(
        "show", default="job",
        help="Show one job (`repx show JOB` is `repx show job JOB`) or the files of its "
             "output folder (`repx show output JOB [PATH]`).\n\nExample: repx show 3f9a2",
        short_help="Everything about one job (show JOB), or its outputs (show output JOB).")
    main.add_command(show_group)
    show_group.command("job")(target_option(["show", "job"], takes_lab=True)(handle_errors(
        _JSON(store_option(lab_options(click.argument("job", shell_complete=complete_jobs)(
            show)))))))
    show_group.command("output")(target_option(["show", "output"], takes_lab=True)(
        handle_errors(store_option(lab_options(
        click.option("--path", "path_only", is_flag=True,
                     help="Print only the absolute path of $out (or of PATH in it).")(
            click.argument("job", shell_complete=complete_jobs)(
                click.argument("path", required=False)(show_output))))))))
    main.command("log")(target_option(["log"])(handle_errors(
        click.option("--stderr", is_flag=True, help="Print the stderr log instead.")(
            click.option("-f", "--follow", is_flag=True,
                         help="Keep printing until the job is no longer running.")(
                click.option("-n", "--lines", type=click.IntRange(min=0), metavar="N",
                             help="Print only the last N lines (with -f: then follow).")(
                    store_option(click.argument("job", shell_complete=complete_jobs)(log))))))))

    @main.group("cache")
    def cache() -> None:
        """Look at and maintain what the job store holds (ls, stats, show, verify, rm,
        recover).

        Example: repx cache stats
        """

    status_opt = click.option("--status", "statuses", type=_STATUS_CHOICES, multiple=True,
                              help="Only jobs in this state (repeatable).")
    cache.command("ls")(target_option(["cache", "ls"])(handle_errors(_JSON(status_opt(store_option(
        click.option("--run", help="Only jobs recorded for this run.",
                     shell_complete=complete_run_names)(
            click.option("--stage", help="Only jobs of this stage (pname).")(cache_ls))))))))
    cache.command("stats")(target_option(["cache", "stats"])(handle_errors(_JSON(
        store_option(cache_stats)))))
    job_arg = click.argument("job", shell_complete=complete_jobs)
    jobs_arg = click.argument("jobs", nargs=-1, metavar="[JOB]...", shell_complete=complete_jobs)
    cache.command("show")(target_option(["cache", "show"])(handle_errors(_JSON(
        store_option(job_arg(cache_show))))))
    cache.command("verify")(target_option(["cache", "verify"])(handle_errors(_JSON(store_option(
        click.option("--quick", is_flag=True, help="Compare sizes only, not BLAKE3 digests.")(
            jobs_arg(cache_verify)))))))
    cache.command("rm")(target_option(["cache", "rm"])(handle_errors(_JSON(status_opt(
        store_option(jobs_arg(cache_rm)))))))
    cache.command("recover")(target_option(["cache", "recover"])(handle_errors(_JSON(
        store_option(
        click.option("--quick", is_flag=True,
                     help="Check succeeded jobs' output sizes only, not BLAKE3 digests.")(
            click.option("--dry-run", is_flag=True, help="Only report what would be done.")(
                cache_recover)))))))

    @main.group("gc", invoke_without_command=True)
    @click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
    @click.option("--keep-recent", type=int, metavar="N",
                  help="First drop the unpinned roots beyond the N newest.")
    @click.option("-y", "--yes", is_flag=True,
                  help="Remove without asking (needed when there is no terminal to ask on).")
    @_JSON
    @store_option
    @lab_options
    @target_option(["gc"], takes_lab=True)
    @click.pass_context
    @handle_errors
    def gc_group(ctx: click.Context, store_dir: str, dry_run: bool, keep_recent: int | None,
                 yes: bool, as_json: bool, options: LabOptions) -> None:
        if ctx.invoked_subcommand is None:
            gc(store_dir, dry_run, keep_recent, as_json, yes, options)

    gc_group.help = gc.__doc__
    gc_group.short_help = "Remove the jobs no gc root reaches; manage roots (pin, unpin)."
    gc_group.command("roots")(handle_errors(_JSON(store_option(gc_roots))))
    gc_group.command("pin")(handle_errors(store_option(lab_options(
        click.argument("name", required=False)(gc_pin)))))
    root_arg = click.argument("name", shell_complete=complete_gc_roots)
    gc_group.command("unpin")(handle_errors(store_option(root_arg(gc_unpin))))

