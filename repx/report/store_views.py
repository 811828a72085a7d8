"""What the store knows about a lab's jobs, as plain data: the library behind ``repx status``,
``show``, ``log`` and ``cache`` (the CLI in :mod:`repx.cli.store` only prints it).

Everything here reads the store in as few transactions as it can (``statuses`` and
``get_many`` take one snapshot for any number of jobs) because these commands run beside a
build that is writing, on stores of tens of thousands of jobs.

Records of work on SLURM that no build watches (``repx build --no-wait``) are looked up in
SLURM first (:func:`slurm_lookup`, one batched squeue/sacct call per command): jobs still
there show as queued or running, and the engine records the outcome of those that ended
(:mod:`repx.engine.slurm.adopt`; this layer itself writes no record).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from repx.engine.contract import resolve_output
from repx.engine.slurm.adopt import SlurmLookup, look_up
from repx.errors import UsageError
from repx.lab.graph import Job, JobGraph
from repx.store import ACTIVE_STATUSES, JobRecord, Status, Store, StoreError, layout, live_claim
from repx.store.gc import dir_size
from repx.store.layout import read_units, unit_ids

#: How often ``repx log -f`` looks for new output and for the job's end.
FOLLOW_POLL = 0.2
#: Seconds between two questions to SLURM while following a job only SLURM watches (one
#: squeue/sacct each: slurmctld, not the log, sets the pace).
SLURM_FOLLOW_POLL = 1.0


# ----------------------------------------------------------------------------- formatting


def human_bytes(n: int | None) -> str:
    """``1.5 MiB``: sizes as people read them (powers of 1024, like du -h)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def fmt_time(t: float | None) -> str:
    """An epoch time in local time, to the second; ``-`` when unknown."""
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


# ---------------------------------------------------------------------------------- store


def no_store_message(store_dir: str | os.PathLike[str]) -> str:
    return f"no repx store at {store_dir}; run `repx build` first or pass --store"


def open_store(store_dir: str | os.PathLike[str], *, readonly: bool = True,
               create: bool = False) -> Store:
    """Open the store at ``store_dir``; a missing store is a clear error unless ``create``.

    Checked here rather than left to :class:`Store`: a writable Store creates a missing
    store, and ``repx gc`` or ``repx cache rm`` with a mistyped ``--store`` must say so
    instead of creating an empty one and reporting that it freed nothing.
    """
    root = Path(os.path.abspath(store_dir))
    if not create and not Store.exists(root):
        raise StoreError(no_store_message(root))
    return Store(root, readonly=readonly)


def stored_ids(store: Store) -> set[str]:
    """Ids of every job the store holds: records, and ``outputs/*`` folders without one."""
    ids = {r.job_id for r in store.records()}
    try:
        ids.update(os.listdir(store.outputs_root))
    except OSError:
        pass
    return ids


def resolve_stored_job(store: Store, prefix: str) -> str:
    """The id of the stored job whose id is ``prefix`` or uniquely starts with it.

    Looks at records and at output folders (a folder whose record is gone still holds logs).
    An ambiguous prefix is an error that lists the candidates.
    """
    if not prefix:
        raise UsageError("an empty job id matches every job; give an id or a prefix of one")
    if "/" in prefix or "\0" in prefix:
        raise UsageError(f"'{prefix}' is not a job id (job ids contain no '/')")
    if store.get(prefix) is not None or store.job_dir(prefix).exists():
        return prefix
    found = sorted(i for i in stored_ids(store) if i.startswith(prefix))
    if not found:
        raise UsageError(f"no job in the store at {store.root} has an id starting with "
                         f"'{prefix}'")
    if len(found) > 1:
        shown = ", ".join(found[:10])
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        raise UsageError(f"job id prefix '{prefix}' is ambiguous in the store at {store.root}: "
                         f"it matches {len(found)} jobs: {shown}{more}; give more characters")
    return found[0]


# --------------------------------------------------------------------------------- status

#: Keys of a status count, in the order the JSON gives them.
COUNT_KEYS = ("jobs", "succeeded", "failed", "cancelled", "running", "queued", "stale",
              "not_run")


def select_runs(graph: JobGraph, names: Iterable[str]) -> list[str]:
    """Run names for ``names`` (runs or ``@group``s); every run when none is given."""
    chosen: dict[str, None] = {}
    for name in names:
        if name.startswith("@"):
            members = graph.groups.get(name[1:])
            if members is None:
                raise UsageError(f"unknown group '{name}'; groups: "
                                 f"{', '.join('@' + g for g in graph.groups) or '(none)'}")
            chosen.update(dict.fromkeys(members))
        elif name in graph.runs:
            chosen[name] = None
        else:
            raise UsageError(f"unknown run '{name}' in lab {graph.lab.path}; runs: "
                             f"{', '.join(graph.runs) or '(none)'}; groups: "
                             f"{', '.join('@' + g for g in graph.groups) or '(none)'}")
    return list(chosen) if chosen else list(graph.runs)


def slurm_lookup(store: Store, job_ids: Iterable[str] | None = None,
                 graph: JobGraph | None = None) -> SlurmLookup:
    """Ask SLURM about the RUNNING/QUEUED records among ``job_ids`` (None: every record)
    that name a SLURM job no build here watches, and have the engine record the outcomes
    of those that ended (:func:`repx.engine.slurm.adopt.look_up`). Costs nothing on a store
    without such records."""
    if job_ids is None:
        records = list(store.records(ACTIVE_STATUSES))
    else:
        active = [i for i, s in store.statuses(job_ids).items() if s.active]
        records = list(store.get_many(active).values()) if active else []
    return look_up(store, records, graph=graph)


def still_on_slurm(store: Store, records: list[JobRecord]) -> set[str]:
    """``repx gc``'s question: which of these RUNNING/QUEUED records SLURM still queues or
    runs (or cannot be asked about); nothing is recorded."""
    return look_up(store, records, record=False).still_on_slurm()


def job_states(store: Store, job_ids: Iterable[str],
               slurm: SlurmLookup | None = None) -> dict[str, str]:
    """A state per job that has a record: a :class:`Status` value, or ``stale`` for a
    RUNNING/QUEUED claim whose owner is gone (the next build runs it again). A job that
    ``slurm`` found still on SLURM is ``queued`` or ``running`` as SLURM says, whoever
    claimed it."""
    statuses = store.statuses(job_ids)
    active = [i for i, s in statuses.items() if s.active]
    return _states(statuses, store.get_many(active) if active else {}, slurm)


def slurm_states(store: Store, job_ids: Iterable[str],
                 graph: JobGraph | None = None) -> tuple[dict[str, str], SlurmLookup]:
    """:func:`job_states` after :func:`slurm_lookup` of the same jobs, reading the store
    once (``repx status`` of a 20 000-job lab reads it again only for what was recorded)."""
    ids = list(job_ids)
    statuses = store.statuses(ids)
    active = [i for i, s in statuses.items() if s.active]
    records = store.get_many(active) if active else {}
    slurm = look_up(store, records.values(), graph=graph)
    if slurm.recorded:
        now = store.get_many(slurm.recorded)
        statuses.update({i: r.status for i, r in now.items()})
        records = {i: r for i, r in {**records, **now}.items() if r.status.active}
    return _states(statuses, records, slurm), slurm


def _states(statuses: dict[str, Status], active: dict[str, JobRecord],
            slurm: SlurmLookup | None) -> dict[str, str]:
    """The states of :func:`job_states` from the statuses and the records still active."""
    states: dict[str, str] = {i: s.value for i, s in statuses.items()}
    for job_id, record in active.items():
        shown = slurm.shown_status(job_id) if slurm is not None else None
        if shown is not None:
            states[job_id] = shown
        elif not live_claim(record):
            states[job_id] = "stale"
    return states


def _count(ids: Iterable[str], states: dict[str, str]) -> dict[str, int]:
    counts = Counter(states.get(i, "not_run") for i in ids)
    out = {k: counts.get(k, 0) for k in COUNT_KEYS[1:]}
    out["jobs"] = sum(counts.values())
    return {k: out[k] for k in COUNT_KEYS}


def run_status(graph: JobGraph, store: Store, runs: Iterable[str] = ()) -> dict[str, Any]:
    """Per-run counts of the lab's jobs by what the store says about them, plus totals.

    The total counts each job once, though a job shared by two runs counts in both rows.
    Jobs on SLURM are counted as SLURM sees them (:func:`slurm_lookup`); ``notes`` says what
    could not be asked or recorded.
    """
    names = select_runs(graph, runs)
    ids: dict[str, None] = {}
    for name in names:
        ids.update(dict.fromkeys(graph.runs[name].job_ids))
    states, slurm = slurm_states(store, ids, graph)
    return {
        "lab": str(graph.lab.path),
        "store": str(store.root),
        "runs": [{"run": name, **_count(graph.runs[name].job_ids, states)} for name in names],
        "total": _count(ids, states),
        "failures": _failure_counts(store, [i for i in ids
                                            if states.get(i) in ("failed", "cancelled")]),
        "notes": slurm.notes,
    }


def _failure_counts(store: Store, failed: list[str]) -> dict[str, int]:
    """How many of the ``failed`` jobs ended by each kind of failure (their records'
    ``failure``; ``unclassified`` for records without one), most frequent first, ties by
    name."""
    if not failed:
        return {}
    kinds = Counter(r.failure or "unclassified" for r in store.get_many(failed).values())
    return dict(sorted(kinds.items(), key=lambda item: (-item[1], item[0])))


# ----------------------------------------------------------------------------------- show


def _record_dict(record: JobRecord, slurm: SlurmLookup | None = None) -> dict[str, Any]:
    duration = None
    if record.started is not None and record.finished is not None:
        duration = record.finished - record.started
    return {
        "status": record.status.value,
        "exit_code": record.exit_code,
        "reason": record.reason,
        "started": record.started,
        "finished": record.finished,
        "duration": duration,
        "host": record.host,
        "pid": record.pid,
        "owner": record.owner,
        "owner_alive": live_claim(record) if record.status.active else None,
        "slurm_id": record.slurm_id,
        # SLURM's word on the job just now; None when SLURM was not asked.
        "slurm_state": slurm.states.get(record.job_id) if slurm is not None else None,
        "lab": record.lab,
        "run": record.run,
        "stage": record.stage,
        # What kind of failure ended its last attempt (repx.engine.failures), and every
        # attempt of the build that recorded it.
        "failure": record.failure,
        "attempts": record.attempts,
    }


def _file_info(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except OSError:
        return {"path": str(path), "exists": False, "size": None}
    size = dir_size(path) if path.is_dir() else st.st_size
    return {"path": str(path), "exists": True, "size": size}


def log_paths(store: Store, job_id: str, record: JobRecord | None) -> dict[str, Path]:
    """Where a job's stdout and stderr are: as recorded, else the store's usual place."""
    meta = store.meta_dir(job_id)
    return {
        "stdout": Path(record.stdout_log) if record and record.stdout_log
        else meta / layout.STDOUT_LOG,
        "stderr": Path(record.stderr_log) if record and record.stderr_log
        else meta / layout.STDERR_LOG,
    }


def output_path(store: Store, job_id: str, template: object) -> Path | None:
    """Where an output declared as ``template`` of a stored job is, by the one rule of
    :func:`repx.engine.contract.resolve_output`; None for an output that is not a path."""
    if not isinstance(template, str):
        return None
    return Path(resolve_output(template, str(store.out_dir(job_id)), job=job_id, name=""))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"error": f"cannot read {path}: {exc}"}


def _with_unit_ids(store: Store, job_id: str) -> list[str]:
    """The job and, for a scatter-gather job whose scatter ran, every unit it lists."""
    try:
        units = read_units(store.meta_dir(job_id), job_id)
    except (StoreError, OSError):
        units = None
    return [job_id, *(unit_ids(units) if units is not None else [])]


def stored_detail(store: Store, job_id: str, slurm: SlurmLookup | None = None) -> dict[str, Any]:
    """What the store knows about a job: record, output files, logs, run-time JSON; for
    work on SLURM, what SLURM says (``slurm``: looked up here when not given).

    ``repx cache show``, and ``repx show`` for a job no lab lists (a scatter-gather unit, a
    job of an older lab).
    """
    if slurm is None:
        slurm = slurm_lookup(store, _with_unit_ids(store, job_id))
    record = store.get(job_id)
    files = [{"path": f.path, "size": f.size, "blake3": f.blake3}
             for f in (record.outputs if record else [])]
    shown = slurm.shown_status(job_id)
    detail: dict[str, Any] = {
        "id": job_id,
        "status": shown or (record.status.value if record else "not run"),
        "record": _record_dict(record, slurm) if record else None,
        "job_dir": str(store.job_dir(job_id)),
        "job_dir_exists": store.job_dir(job_id).is_dir(),
        "files": files,
        "outputs_bytes": sum(f["size"] for f in files),
        "logs": {k: _file_info(p) for k, p in log_paths(store, job_id, record).items()},
        "params_json": _read_json(store.meta_dir(job_id) / layout.PARAMS_JSON),
        "inputs_json": _read_json(store.meta_dir(job_id) / layout.INPUTS_JSON),
        "notes": slurm.notes,
    }
    units = _units(store, job_id, slurm)
    if units is not None:
        detail["units"] = units
    return detail


def _units(store: Store, job_id: str, slurm: SlurmLookup | None = None) -> dict[str, Any] | None:
    """A scatter-gather job's units with their states, if its ``units.json`` exists."""
    try:
        units = read_units(store.meta_dir(job_id), job_id)
    except StoreError as exc:
        return {"error": exc.message}
    if units is None:
        return None
    ids = unit_ids(units)
    states = job_states(store, ids, slurm)
    scatter = units.get("scatter")
    branches = units.get("branches") if isinstance(units.get("branches"), list) else []
    return {
        "scatter": {"id": scatter, "status": states.get(scatter, "not run")}
        if isinstance(scatter, str) else None,
        "branches": [
            {"item": b.get("item"),
             "steps": {step: {"id": uid, "status": states.get(uid, "not run")}
                       for step, uid in (b.get("steps") or {}).items()
                       if isinstance(uid, str)}}
            for b in branches if isinstance(b, dict)
        ],
        "counts": dict(Counter(states.get(i, "not run") for i in ids)),
    }


def job_detail(graph: JobGraph, store: Store, job: Job) -> dict[str, Any]:
    """Everything ``repx show`` prints about a job of the lab: what the lab says it is
    (params and where they came from, resources, inputs, declared outputs) joined with what
    the store says happened (status, timings, output files and sizes, logs)."""
    dependents = [j.id for j in graph.jobs.values() if job.id in j.depends_on]
    related = [*job.depends_on, *dependents]
    slurm = slurm_lookup(store, [*_with_unit_ids(store, job.id), *related], graph)
    states = job_states(store, [job.id, *related], slurm)
    detail = stored_detail(store, job.id, slurm)
    inputs: dict[str, Any] = {}
    for name, source in job.inputs.items():
        entry: dict[str, Any] = dict(source)
        if "job" in source:
            producer = graph.jobs.get(source["job"])
            template = producer.outputs.get(source.get("output", "")) if producer else None
            path = output_path(store, source["job"], template)
            entry["path"] = str(path) if path else None
            entry["status"] = states.get(source["job"], "not run")
        elif "file" in source:
            entry["path"] = source["file"]
        elif "run_manifest" in source:
            entry = {"run_manifest": source["run_manifest"], "jobs": len(source["jobs"])}
        inputs[name] = entry
    outputs: dict[str, Any] = {}
    for name, template in job.outputs.items():
        path = output_path(store, job.id, template)
        info = _file_info(path) if path else {"path": None, "exists": False, "size": None}
        outputs[name] = {"template": template, **info}
    detail.update({
        "in_lab": True,
        "run": job.run,
        "runs": list(job.runs),
        "stage": job.stage,
        "pname": job.pname,
        "version": job.version,
        "kind": job.kind,
        "hash_mode": job.hash_mode,
        "params": job.params,
        "param_sources": job.param_sources,
        "resources": dict(job.resources),
        "inputs": inputs,
        "outputs": outputs,
        "depends_on": [{"id": i, "status": states.get(i, "not run")} for i in job.depends_on],
        "dependents": [{"id": i, "status": states.get(i, "not run")} for i in dependents],
        "scripts": {name: e.script for name, e in job.executables.items()},
    })
    detail["status"] = states.get(job.id, "not run")
    return dict(sorted(detail.items(), key=lambda kv: _SHOW_ORDER.get(kv[0], 99)))


_SHOW_ORDER = {k: i for i, k in enumerate((
    "id", "in_lab", "status", "run", "runs", "stage", "pname", "version", "kind", "hash_mode",
    "params", "param_sources", "resources", "inputs", "outputs", "files", "outputs_bytes",
    "record", "logs", "job_dir", "job_dir_exists", "depends_on", "dependents", "scripts",
    "units", "params_json", "inputs_json", "notes",
))}


# ------------------------------------------------------------------------------------ log


def log_file(store: Store, job_id: str, *, stderr: bool = False) -> tuple[Path, JobRecord | None]:
    """The job's stdout (or stderr) log path and its record (None if it has none)."""
    record = store.get(job_id)
    return log_paths(store, job_id, record)["stderr" if stderr else "stdout"], record


def copy_log(path: Path, pos: int, write: Callable[[bytes], object]) -> int:
    """Write what ``path`` holds beyond ``pos``; returns the new position.

    A file shorter than ``pos`` was truncated (the job was run again): start over.
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < pos:
                pos = 0
            fh.seek(pos)
            while chunk := fh.read(1 << 16):
                write(chunk)
                pos += len(chunk)
    except FileNotFoundError:
        pass
    return pos


def follow_log(store: Store, job_id: str, path: Path, write: Callable[[bytes], object], *,
               poll: float = FOLLOW_POLL, sleep: Callable[[float], object] = time.sleep,
               start: int = 0) -> JobRecord | None:
    """Copy ``path`` to ``write`` as it grows until the job is no longer running.

    The job's state is read *before* each copy: once a read shows it ended, the log is
    complete (the executor closes it before recording the outcome), so one last copy gets
    everything. A claim whose owner died counts as ended, unless the record names a SLURM
    job that SLURM still queues or runs (a ``--no-wait`` build exits after submitting):
    SLURM is asked at most every ``SLURM_FOLLOW_POLL`` seconds, and once it no longer holds
    the job its outcome is recorded (as ``repx status`` would) and the log copied one last
    time. Returns the last record seen. Copying starts at byte ``start`` (``repx log -n``:
    where the last lines begin).
    """
    pos = start
    asked = -SLURM_FOLLOW_POLL
    on_slurm = False
    while True:
        record = store.get(job_id)
        running = record is not None and live_claim(record)
        if not running and record is not None and record.status.active and record.slurm_id:
            now = time.monotonic()
            if now - asked >= SLURM_FOLLOW_POLL:
                asked = now
                # SLURM's answer decides; one it could not give (no squeue) ends the follow.
                lookup = look_up(store, [record])
                on_slurm = lookup.shown_status(job_id) is not None
                if lookup.recorded:
                    record = store.get(job_id)
            running = on_slurm
        pos = copy_log(path, pos, write)
        if not running:
            return record
        sleep(poll)


# ---------------------------------------------------------------------------------- cache


def record_row(record: JobRecord, slurm: SlurmLookup | None = None) -> dict[str, Any]:
    """One line of ``repx cache ls``; a job found still on SLURM with SLURM's state."""
    shown = slurm.shown_status(record.job_id) if slurm is not None else None
    return {
        "id": record.job_id,
        "status": shown or record.status.value,
        "run": record.run,
        "stage": record.stage,
        "bytes": sum(f.size for f in record.outputs),
        "files": len(record.outputs),
        "started": record.started,
        "finished": record.finished,
    }


def cache_list(store: Store, *, statuses: Iterable[str] = (), run: str | None = None,
               stage: str | None = None, slurm: SlurmLookup | None = None,
               with_params: bool = False) -> list[dict[str, Any]]:
    """The store's records, oldest first, filtered by status (as shown: a job ``slurm``
    found still on SLURM has SLURM's state), run and stage. ``with_params`` adds each
    job's ``params``: what it was run with (its ``params.json``; {} when it has none), so
    the failures of a sweep can be told apart without the lab."""
    wanted = {Status(s).value for s in statuses}
    rows = [
        row for row in (
            record_row(r, slurm) for r in store.records()
            if (run is None or r.run == run)
            and (stage is None or r.stage == stage or r.stage.split("/", 1)[0] == stage))
        if not wanted or row["status"] in wanted
    ]
    rows.sort(key=lambda r: (r["finished"] or r["started"] or 0.0, r["id"]))
    if with_params:
        for row in rows:
            params = _read_json(store.meta_dir(row["id"]) / layout.PARAMS_JSON)
            row["params"] = params if isinstance(params, dict) else {}
    return rows


def cache_stats(store: Store) -> dict[str, Any]:
    """What the store holds (records by status and run, recorded output sizes, roots,
    orphan folders) and how the last build went (its hit rate)."""
    by_status: Counter[str] = Counter()
    by_run: dict[str, dict[str, int]] = {}
    sizes: dict[str, int] = {}
    for record in store.records():
        size = sum(f.size for f in record.outputs)
        sizes[record.job_id] = size
        by_status[record.status.value] += 1
        row = by_run.setdefault(record.run or "(none)", {"records": 0, "bytes": 0})
        row["records"] += 1
        row["bytes"] += size
    try:
        folders = set(os.listdir(store.outputs_root))
    except OSError:
        folders = set()
    roots = store.roots()
    stats: dict[str, Any] = {
        "store": str(store.root),
        "records": len(sizes),
        "by_status": {s.value: by_status.get(s.value, 0) for s in Status},
        "outputs_bytes": sum(sizes.values()),
        "by_run": dict(sorted(by_run.items())),
        "orphan_folders": len(folders - sizes.keys()),
        "roots": len(roots),
        "pinned_roots": sum(r.pinned for r in roots),
        "last_build": None,
    }
    last = store.get_meta("last_build")
    if last is not None:
        stats["last_build"] = last_build_summary(
            last, sizes, blob=lambda name: store.get_meta_blob("last_build", name))
    return stats


def last_build_summary(last: dict[str, Any], sizes: dict[str, int], *,
                       blob: Callable[[str], bytes | None] | None = None) -> dict[str, Any]:
    """Counts, sizes and hit rate of the ``last_build`` meta record the executor writes.

    hit rate = up to date / (up to date + executed + failed): the share of the jobs the
    build needed that it could take from the store. Blocked and cancelled jobs never got the
    chance either way and are left out.

    A list may be inline (a list, or one newline-joined text) or in a blob of the record
    (``<list>_blob``, with ``<list>_count``): ``blob`` reads it, and only when ``sizes`` needs
    the ids; without it the count stands.
    """
    def ids(value: object) -> list[str]:
        if isinstance(value, str):  # a long list, kept as one newline-joined text
            return value.split("\n") if value else []
        return [i for i in value if isinstance(i, str)] if isinstance(value, list) else []

    def listed(key: str) -> tuple[int, list[str]]:
        """(count, ids) of one list; a blob's ids are read only when ``sizes`` needs them."""
        blob_name = last.get(f"{key}_blob")
        if last.get(key) is not None or not isinstance(blob_name, str):
            inline = ids(last.get(key))
            return len(inline), inline
        count = last.get(f"{key}_count")
        data = blob(blob_name) if blob is not None and sizes else None
        in_blob = ids(data.decode("utf-8", "replace")) if data is not None else []
        return (count if isinstance(count, int) else 0), in_blob

    found = {k: listed(k) for k in ("executed", "up_to_date", "failed", "blocked",
                                    "cancelled", "not_started")}
    counts = {k: count for k, (count, _) in found.items()}
    lists = {k: job_ids for k, (_, job_ids) in found.items()}
    hit, ran, failed = (counts[k] for k in ("up_to_date", "executed", "failed"))
    started, finished = last.get("started"), last.get("finished")
    duration = None
    if isinstance(started, int | float) and isinstance(finished, int | float):
        duration = finished - started
    return {
        "lab": last.get("lab"),
        "targets": last.get("targets") or [],
        "started": started,
        "finished": finished,
        "duration": duration,
        **counts,
        "hit_rate": hit / (hit + ran + failed) if hit + ran + failed else None,
        "executed_bytes": sum(sizes.get(i, 0) for i in lists["executed"]),
        "reused_bytes": sum(sizes.get(i, 0) for i in lists["up_to_date"]),
    }


def verify_jobs(store: Store, job_ids: Iterable[str] | None = None, *,
                checksums: bool = True) -> list[dict[str, Any]]:
    """Check recorded outputs against the disk: every SUCCEEDED record, or the jobs named.

    A named job without a record is a problem; so is a SUCCEEDED record whose files are
    missing, changed in size or (with ``checksums``) in content.
    """
    if job_ids is None:
        records = list(store.records((Status.SUCCEEDED,)))
        named: list[str] = []
    else:
        named = list(dict.fromkeys(job_ids))
        found = store.get_many(named)
        records = [found[i] for i in named if i in found]
    results: list[dict[str, Any]] = []
    for record in records:
        results.append({
            "id": record.job_id,
            "status": record.status.value,
            "files": len(record.outputs),
            "bytes": sum(f.size for f in record.outputs),
            "problems": store.verify(record, checksums=checksums),
        })
    have = {r.job_id for r in records}
    for job_id in named:
        if job_id not in have:
            results.append({"id": job_id, "status": "no record", "files": 0, "bytes": 0,
                            "problems": [f"job {job_id} has no record in {store.root}"]})
    return results


def remove_jobs(store: Store, job_ids: Iterable[str]) -> list[tuple[str, int]]:
    """Delete records and output folders of the given jobs; returns (id, bytes freed).

    Refuses, before deleting anything, a job that is RUNNING or QUEUED under a live owner:
    removing its folder would pull the ground from under the process writing it.
    """
    ids = list(dict.fromkeys(job_ids))
    records = store.get_many(ids)
    for job_id in ids:
        record = records.get(job_id)
        if record is not None and live_claim(record):
            raise UsageError(
                f"job {job_id} is {record.status.value} (owner {record.owner or '?'}, pid "
                f"{record.pid} on {record.host or '?'}); stop that build before removing it"
            )
    sizes = [(i, dir_size(store.job_dir(i))) for i in ids]
    store.delete(ids)
    return sizes
