"""What ``repx tui`` shows and does, without a terminal: the lab's runs → stages → jobs with
their states as the store says now, filters, a job's detail and logs, and the two actions
(cancel, rerun the failed jobs).

The store is opened read-only and read again on every :meth:`Dashboard.refresh` (one
snapshot for the statuses of all the lab's jobs, one for the records still active), so the
dashboard can run beside a build on tens of thousands of jobs. SLURM is asked about records
no build here watches at most every :attr:`Dashboard.slurm_every` seconds and without
recording anything (:func:`repx.engine.slurm.adopt.look_up` with ``record=False``).

Who may act: the dashboard never touches jobs another live build owns (their claim names a
process that is not the rerun this dashboard started); it says so instead. It cancels the
jobs of its own rerun (the job's process group, as the build itself would) and SLURM jobs
whose build is gone (``repx build --no-wait``: :func:`repx.engine.slurm.cancel.cancel_jobs`
takes their records over). Rerunning is ``repx build -k`` of the failed jobs' ids, started
as a subprocess whose output the dashboard shows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repx.engine.slurm.adopt import SlurmLookup, look_up, watched_here
from repx.errors import UsageError
from repx.lab.graph import Job, JobGraph
from repx.report.store_views import copy_log, fmt_duration, fmt_time, log_paths, open_store
from repx.store import JobRecord, Store, StoreError, live_claim, this_host
from repx.store.layout import read_units, unit_ids

#: The states a job can be shown in, in the order counts are written.
STATES = ("failed", "running", "queued", "stale", "cancelled", "succeeded", "not_run")

#: How many jobs of one stage the tree lists; a filter narrows the rest down.
MAX_JOBS_PER_STAGE = 500


# --------------------------------------------------------------------------------- filter


@dataclass(frozen=True)
class JobFilter:
    """Which jobs to list: every condition given must hold (statuses and stages: any of)."""

    statuses: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    params: tuple[tuple[str, str], ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.statuses or self.stages or self.params)

    def matches(self, job: Job, state: str) -> bool:
        if self.statuses and state not in self.statuses:
            return False
        if self.stages and job.stage not in self.stages and job.pname not in self.stages:
            return False
        return all(name in job.params and param_text(job.params[name]) == value
                   for name, value in self.params)


def param_text(value: object) -> str:
    """A param value as a filter compares it: strings as they are, the rest as JSON-ish
    text (``3``, ``true``, ``[1, 2]``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_filter(text: str) -> JobFilter:
    """``status:failed stage:train lr=0.1``: words separated by spaces; ``not-run`` and
    ``not_run`` are the same state. Anything else is a :class:`UsageError` that says the
    syntax, so the dashboard can show it in place of a traceback."""
    statuses: set[str] = set()
    stages: set[str] = set()
    params: list[tuple[str, str]] = []
    for word in text.split():
        key, sep, value = word.partition(":")
        if sep and key in ("status", "stage") and value:
            if key == "status":
                state = value.replace("-", "_")
                if state not in STATES:
                    raise UsageError(f"filter '{word}': unknown status; one of "
                                     f"{', '.join(STATES)}")
                statuses.add(state)
            else:
                stages.add(value)
            continue
        name, sep, value = word.partition("=")
        if sep and name:
            params.append((name, value))
            continue
        raise UsageError(f"filter '{word}': write status:STATE, stage:NAME or PARAM=VALUE")
    return JobFilter(frozenset(statuses), frozenset(stages), tuple(params))


# ------------------------------------------------------------------------------ the tree


@dataclass
class StageView:
    """One stage of a run: its jobs' counts, and the ids the filter lets through."""

    run: str
    stage: str
    counts: Counter[str]
    job_ids: list[str]


@dataclass
class RunView:
    name: str
    counts: Counter[str]
    stages: list[StageView]


def counts_text(counts: Counter[str]) -> str:
    """``3 jobs: 1 failed, 2 succeeded`` (only the states some job is in)."""
    total = sum(counts.values())
    parts = [f"{counts[s]} {s.replace('_', ' ')}" for s in STATES if counts.get(s)]
    return f"{total} job{'s' if total != 1 else ''}: {', '.join(parts) or 'none'}"


# ------------------------------------------------------------------------------- rerun


@dataclass
class Rerun:
    """A ``repx build`` this dashboard started, its output going to a file it shows."""

    job_ids: list[str]
    process: subprocess.Popen[bytes]
    output: Path
    started: float = field(default_factory=time.time)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 8) -> list[str]:
        """The last lines the build wrote (stdout and stderr, in order)."""
        try:
            text = self.output.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        # A live status line redraws with carriage returns: keep its last state.
        shown = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
        return [line for line in shown if line.strip()][-lines:]


# ----------------------------------------------------------------------------- dashboard


class Dashboard:
    """The lab's jobs as the store says now, and the actions ``repx tui`` offers."""

    #: Seconds between two questions to SLURM about records no build here watches.
    slurm_every = 10.0

    def __init__(self, graph: JobGraph, store_dir: str | os.PathLike[str]) -> None:
        self.graph = graph
        self.store_dir = Path(os.path.abspath(store_dir))
        self.store: Store = open_store(self.store_dir)
        self.job_ids: list[str] = list(graph.jobs)
        self.states: dict[str, str] = {}
        #: RUNNING/QUEUED records whose owner may be alive, by job id.
        self.active: dict[str, JobRecord] = {}
        self.slurm = SlurmLookup()
        self._slurm_asked = 0.0
        #: The rerun going on (or the last one), and every rerun started from here.
        self.rerun: Rerun | None = None
        self.reruns: list[Rerun] = []
        self.refresh()

    def close(self) -> None:
        """Close the store and delete the output files of the reruns that have ended. A
        rerun still going keeps going (it is a build like any other; its own session, so
        the terminal closing does not stop it) and keeps its output file."""
        self.store.close()
        for rerun in self.reruns:
            if not rerun.running:
                rerun.output.unlink(missing_ok=True)

    # ------------------------------------------------------------------------- reading

    def refresh(self) -> None:
        """Read every job's state again (and SLURM's word, when it is due)."""
        statuses = self.store.statuses(self.job_ids)
        active_ids = [i for i, s in statuses.items() if s.active]
        records = self.store.get_many(active_ids) if active_ids else {}
        now = time.monotonic()
        unwatched = [r for r in records.values() if r.slurm_id and not watched_here(r)]
        if unwatched and now - self._slurm_asked >= self.slurm_every:
            self.slurm = look_up(self.store, unwatched, graph=self.graph, record=False)
            self._slurm_asked = now
        states = {i: s.value for i, s in statuses.items()}
        self.active = {}
        for job_id, record in records.items():
            shown = self.slurm.shown_status(job_id)
            if shown is not None:
                states[job_id] = shown
            elif not live_claim(record):
                states[job_id] = "stale"
            if live_claim(record) or shown is not None:
                self.active[job_id] = record
        self.states = states

    def state(self, job_id: str) -> str:
        return self.states.get(job_id, "not_run")

    def runs(self, job_filter: JobFilter = JobFilter()) -> list[RunView]:
        """Runs → stages → jobs, with each level's counts over all its jobs and the ids the
        filter keeps (a stage none of whose jobs match is left out while filtering)."""
        views: list[RunView] = []
        for name, run in self.graph.runs.items():
            stages: dict[str, StageView] = {}
            for job_id in run.job_ids:
                job = self.graph.jobs[job_id]
                view = stages.setdefault(job.stage, StageView(name, job.stage, Counter(), []))
                state = self.state(job_id)
                view.counts[state] += 1
                if job_filter.matches(job, state):
                    view.job_ids.append(job_id)
            shown = [s for s in stages.values() if s.job_ids or not job_filter.active]
            total: Counter[str] = Counter()
            for stage in stages.values():
                total.update(stage.counts)
            views.append(RunView(name, total, shown))
        return views

    def failed_jobs(self) -> list[str]:
        return [i for i in self.job_ids if self.state(i) == "failed"]

    def job_label(self, job_id: str) -> str:
        """``a1b2c3d4e5f6  lr=0.1 seed=2``: a job as the tree lists it."""
        job = self.graph.jobs[job_id]
        params = " ".join(f"{k}={param_text(v)}" for k, v in sorted(job.params.items())
                          if not isinstance(v, dict | list))
        return f"{job_id[:12]}  {params}".rstrip()

    def detail(self, job_id: str) -> dict[str, Any]:
        """What the lab says a job is and what its last attempt did (the store keeps one
        record per job: the last attempt; earlier ones are overwritten)."""
        job = self.graph.jobs[job_id]
        record = self.store.get(job_id)
        logs = log_paths(self.store, job_id, record)
        attempt: dict[str, Any] | None = None
        if record is not None:
            duration = (record.finished - record.started
                        if record.started is not None and record.finished is not None
                        else None)
            attempt = {
                "status": record.status.value,
                "exit code": record.exit_code,
                # "exit code 3" says nothing the exit code does not.
                "reason": None if record.reason in ("", f"exit code {record.exit_code}")
                else record.reason,
                "started": fmt_time(record.started),
                "finished": fmt_time(record.finished),
                "duration": fmt_duration(duration),
                "host": record.host or None,
                "build pid": record.pid,
                "slurm job": record.slurm_id,
                "slurm state": self.slurm.states.get(job_id),
            }
        return {
            "id": job_id,
            "state": self.state(job_id),
            "run": job.run,
            "stage": job.stage,
            "params": dict(job.params),
            "resources": dict(job.resources),
            "last attempt": attempt,
            "reruns started here": sum(1 for r in self.reruns if job_id in r.job_ids),
            "owner": self.foreign_owner(job_id),
            "logs": {name: str(path) for name, path in logs.items()},
        }

    def log_path(self, job_id: str, *, stderr: bool) -> Path:
        return log_paths(self.store, job_id, self.store.get(job_id))[
            "stderr" if stderr else "stdout"]

    # --------------------------------------------------------------------- who may act

    def _ours(self, record: JobRecord) -> bool:
        """Whether the record's claim is the rerun this dashboard started."""
        return (self.rerun is not None and record.host == this_host()
                and record.pid == self.rerun.pid)

    def foreign_owner(self, job_id: str) -> str | None:
        """Who owns a job that another live build holds (None when no one, or us)."""
        record = self.active.get(job_id)
        if record is None or self._ours(record):
            return None
        if record.slurm_id and not watched_here(record):
            return None  # a --no-wait submission: no build watches it any more
        return f"build pid {record.pid} on {record.host or '?'}"

    def foreign_builds(self) -> Counter[str]:
        """The other live builds holding jobs of this lab, with how many each holds."""
        owners: Counter[str] = Counter()
        for job_id in self.active:
            owner = self.foreign_owner(job_id)
            if owner is not None:
                owners[owner] += 1
        return owners

    # ------------------------------------------------------------------------- actions

    def start_rerun(self, job_ids: Iterable[str] | None = None) -> Rerun:
        """Start ``repx build -k`` of ``job_ids`` (default: the failed jobs) in the
        background; its output goes to a file :meth:`Rerun.tail` reads."""
        if self.rerun is not None and self.rerun.running:
            raise UsageError(f"a rerun is still going (pid {self.rerun.pid}); wait for it "
                             "or cancel its jobs")
        owners = self.foreign_builds()
        if owners:
            raise UsageError(f"read-only: {', '.join(owners)} owns jobs of this lab; "
                             "rerun when it has finished")
        ids = list(job_ids) if job_ids is not None else self.failed_jobs()
        if not ids:
            raise UsageError("no failed jobs to rerun")
        handle, name = tempfile.mkstemp(prefix="repx-tui-rerun-", suffix=".log")
        command = [sys.executable, "-m", "repx", "build", "--lab", str(self.graph.lab.path),
                   "--store", str(self.store_dir), "--keep-going", *ids]
        with os.fdopen(handle, "wb") as output:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.rerun = Rerun(ids, process, Path(name))
        self.reruns.append(self.rerun)
        return self.rerun

    def rerun_progress(self) -> str:
        """``rerun of 3 jobs: 1 succeeded, 2 running`` (or how it ended)."""
        rerun = self.rerun
        if rerun is None:
            return ""
        counts: Counter[str] = Counter()
        records = self.store.get_many(rerun.job_ids)
        for job_id in rerun.job_ids:
            record = records.get(job_id)
            fresh = record is not None and (record.status.active or (
                record.finished is not None and record.finished >= rerun.started - 1))
            counts[self.state(job_id) if fresh else "waiting"] += 1
        parts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))
        code = rerun.process.poll()
        end = "" if code is None else f" — finished, exit code {code}"
        return f"rerun of {len(rerun.job_ids)} job(s): {parts}{end}"

    def cancel(self, job_ids: Iterable[str]) -> list[str]:
        """Cancel what this dashboard may cancel among ``job_ids``; what was done, one line
        each. Jobs another live build owns are refused (read-only), with a line saying so."""
        done: list[str] = []
        slurm_ids: list[str] = []
        for job_id in job_ids:
            record = self.active.get(job_id)
            if record is None:
                continue
            if self._ours(record):
                killed = _signal_job(record.pid, job_id, self._units(job_id))
                done.append(f"cancelled {job_id[:12]} (signalled {killed} process group(s))"
                            if killed else f"{job_id[:12]}: no process found (not started?)")
            elif record.slurm_id and not watched_here(record):
                slurm_ids.append(job_id)
            else:
                done.append(f"{job_id[:12]}: read-only, {self.foreign_owner(job_id)} owns it")
        if slurm_ids:
            from repx.engine.slurm.cancel import cancel_jobs

            with Store(self.store_dir) as writable:
                closed = cancel_jobs(writable, slurm_ids)
            done += [f"cancelled {r.job_id[:12]} (SLURM job {r.slurm_id})" for r in closed]
        return done or ["nothing running to cancel"]

    def _units(self, job_id: str) -> list[str]:
        """The job and, for a scatter-gather job, its units (each runs as its own process
        with its own ``REPX_JOB_ID``)."""
        try:
            units = read_units(self.store.meta_dir(job_id), job_id)
        except (StoreError, OSError):
            units = None
        return [job_id, *(unit_ids(units) if units is not None else [])]


def _signal_job(build_pid: int | None, job_id: str, unit_ids_: list[str]) -> int:
    """SIGTERM the process groups of the build's children that run ``job_id`` or one of its
    units; how many were signalled.

    The engine starts each unit as a session leader with ``REPX_JOB_ID`` set
    (``repx.engine.contract.JOB_ID_ENV``, see
    :mod:`repx.engine.local`), so the unit's main process is a child of the build with that
    variable; signalling its group reaches what it started. The build sees the exit and
    records the job as failed by the signal.
    """
    from repx.engine.descendants import job_of

    if build_pid is None:
        return 0
    wanted = set(unit_ids_)
    signalled = 0
    for pid in _children(build_pid):
        found, _session = job_of(pid)
        if found in wanted:
            try:
                os.killpg(pid, signal.SIGTERM)
                signalled += 1
            except (ProcessLookupError, PermissionError):
                continue
    return signalled


def _children(parent: int) -> list[int]:
    """The pids whose parent is ``parent`` (from /proc)."""
    children: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            ppid = int(text[text.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent:
            children.append(int(entry))
    return children


class LogFollower:
    """A job's log as it grows: :meth:`read` returns the bytes written since the last call
    (everything again after the file was truncated by a rerun)."""

    #: How much of an existing log the first read shows (its end): a job's log may be
    #: gigabytes, and the dashboard must stay responsive.
    first_read = 256 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.position = max(0, path.stat().st_size - self.first_read)
        except OSError:
            self.position = 0

    def read(self) -> tuple[str, bool]:
        """(the new text, whether the log started over so what was shown is stale)."""
        try:
            restarted = self.path.stat().st_size < self.position
        except OSError:
            restarted = False
        chunks: list[bytes] = []
        self.position = copy_log(self.path, 0 if restarted else self.position, chunks.append)
        return b"".join(chunks).decode("utf-8", errors="replace"), restarted
