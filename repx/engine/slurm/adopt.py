"""What SLURM did with jobs no build watches, for ``repx status``, ``show``, ``cache ls``, ``gc``.

After ``repx build --scheduler slurm --no-wait`` the store holds QUEUED records whose build
is gone: to the store alone they look like stale claims, and a job that has finished stays
QUEUED until someone asks SLURM. :func:`look_up` asks, for every RUNNING or QUEUED record
with a SLURM id that no live build on this machine watches, in one batched squeue call (and
one sacct call for the tasks squeue has forgotten), and then

* reports the jobs still on SLURM as queued or running (:meth:`SlurmLookup.shown_status`);
* records the outcome of those that ended through the SLURM scheduler's own adoption
  (:meth:`SlurmScheduler.record_ended`): the same claim, output check, manifest and record a
  later build writes, so the next build finds them done and nothing is judged twice;
* leaves the records SLURM does not know as they are (stale claims the next build runs).

A record whose owner is a live process on this machine is not looked up: that build watches
the job and records it itself. When SLURM's commands are not on PATH (a laptop reading a
store copied from the cluster), or SLURM does not answer, it says so once in
:attr:`SlurmLookup.notes` and changes nothing.

Which lab a job belongs to: the lab the command was given when it lists the job, else the
lab its record names (expanded once per lab). A scatter-gather step is found through its
job's ``units.json``. A fully detached ``--no-wait`` build leaves no gather record until
the scatter ran, so the graph's active scatter records are looked up too; recording one
adopts the branches and gather its node submitted (:mod:`repx.engine.slurm.detached`). A
job whose lab is gone from disk is shown with SLURM's state but recorded only by the next
build.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field

from repx.display import plural
from repx.engine.slurm.cli import ACTIVE_STATES, FINAL_STATES, SlurmCli, SlurmError, task_states
from repx.errors import RepxError
from repx.identity import scatter_id
from repx.lab.expand import load_job_graph
from repx.lab.graph import JobGraph
from repx.store import JobRecord, Status, Store, StoreError, layout, owner_alive, this_host
from repx.store.layout import read_units, unit_ids

#: SLURM states in which a job still waits for a node (shown as ``queued``); the other
#: active states have started it (shown as ``running``).
WAITING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})


@dataclass
class SlurmLookup:
    """What SLURM said about a set of records, and what was recorded because of it."""

    #: SLURM's state (``PENDING``, ``RUNNING``, ``COMPLETED``…) by job id, for every
    #: looked-up record SLURM knows.
    states: dict[str, str] = field(default_factory=dict)
    #: The status recorded now, by job id, for jobs whose SLURM task had ended.
    recorded: dict[str, Status] = field(default_factory=dict)
    #: Looked-up job ids SLURM could not be asked about (its commands missing or silent).
    unknown: set[str] = field(default_factory=set)
    #: What to tell the user once (SLURM missing, outcomes that could not be recorded).
    notes: list[str] = field(default_factory=list)

    def shown_status(self, job_id: str) -> str | None:
        """``queued`` or ``running`` for a job SLURM still holds; None otherwise."""
        state = self.states.get(job_id)
        if state is None or state not in ACTIVE_STATES:
            return None
        return "queued" if state in WAITING_STATES else "running"

    def still_on_slurm(self) -> set[str]:
        """Ids SLURM still queues or runs, plus those it could not be asked about (kept by
        gc: a job that may be running must keep its folder)."""
        return {i for i, s in self.states.items() if s in ACTIVE_STATES} | self.unknown


def watched_here(record: JobRecord) -> bool:
    """Whether a live process on this machine owns the record (a build that watches it)."""
    return record.host == this_host() and owner_alive(record.host, record.pid, record.owner)


def look_up(store: Store, records: Iterable[JobRecord], *, graph: JobGraph | None = None,
            record: bool = True) -> SlurmLookup:
    """Ask SLURM about the RUNNING/QUEUED ``records`` that name a SLURM job and that no live
    build on this machine watches; with ``record``, record the outcomes of those that ended.

    ``graph`` is the lab the command works on (tried first to find a job's stage); ``store``
    may be read-only: a writable handle is opened only when there is an outcome to record.
    """
    lookup = SlurmLookup()
    records = list(records)
    if graph is not None:
        records += _detached_scatters(store, graph, {r.job_id for r in records})
    wanted = [r for r in records if r.status.active and r.slurm_id and not watched_here(r)]
    if not wanted:
        return lookup
    what = (f"{len(wanted)} job{'s' if len(wanted) != 1 else ''} recorded as queued or "
            "running on SLURM")
    if shutil.which("squeue") is None:
        lookup.unknown = {r.job_id for r in wanted}
        lookup.notes.append(f"{what}, but SLURM's commands (squeue, sacct) are not on PATH "
                            "here: showing what the store records (on the cluster's login "
                            "node repx asks SLURM and records what ended)")
        return lookup
    try:
        cli = SlurmCli()
        tasks = {r.slurm_id or "": store.folders.meta_file(r.job_id, layout.EXIT_CODE)
                 for r in wanted}
        states = task_states(cli, tasks)
    except SlurmError as exc:
        lookup.unknown = {r.job_id for r in wanted}
        lookup.notes.append(f"{what}, but SLURM could not be asked ({exc.message}): showing "
                            "what the store records")
        return lookup
    for rec in wanted:
        if rec.slurm_id in states:
            lookup.states[rec.job_id] = states[rec.slurm_id][0]
    ended = [r for r in wanted if lookup.states.get(r.job_id) in FINAL_STATES]
    if record and ended:
        _record_ended(store, ended, states, graph, cli, lookup)
    return lookup


def _detached_scatters(store: Store, graph: JobGraph, known: set[str]) -> list[JobRecord]:
    """The active scatter records of the graph's scatter-gather jobs, not among ``known``:
    after a fully detached ``--no-wait`` build the gather has no record until its scatter's
    is recorded (:mod:`repx.engine.slurm.detached`), so asking about the graph's jobs alone
    would never reach it."""
    ids = [scatter_id(job) for job in graph.jobs.values() if job.kind == "scatter-gather"]
    ids = [i for i in ids if i not in known]
    if not ids:
        return []
    active = [i for i, status in store.statuses(ids).items() if status.active]
    return list(store.get_many(active).values()) if active else []


def _record_ended(store: Store, ended: list[JobRecord], states: dict[str, tuple[str, str]],
                  graph: JobGraph | None, cli: SlurmCli, lookup: SlurmLookup) -> None:
    """Record the outcomes of ``ended`` through the SLURM scheduler's adoption, one
    scheduler per lab; what cannot be recorded here is said in ``lookup.notes``."""
    by_lab: dict[str, tuple[_Lab, list[JobRecord]]] = {}
    given = _Lab(graph, _job_index(graph)) if graph is not None else None
    loaded: dict[str, _Lab | None] = {}
    left: list[str] = []
    for rec in ended:
        lab = _lab_of(rec, given, loaded)
        if lab is None and "/" in rec.stage:
            lab = _lab_of_step(store, rec, given, loaded)
        if lab is None:
            left.append(rec.job_id)
            continue
        by_lab.setdefault(str(lab.graph.lab.path), (lab, []))[1].append(rec)
    if by_lab:
        try:
            writable = Store(store.root)
        except StoreError as exc:
            lookup.notes.append(f"{plural(len(ended), 'job')} ended on SLURM but cannot be "
                                f"recorded in {store.root}: {exc.message}")
            return
        with writable:
            for lab, recs in by_lab.values():
                try:
                    _record_lab(writable, lab, recs, states, cli)
                except RepxError as exc:
                    lookup.notes.append(f"{plural(len(recs), 'job')} of lab "
                                        f"{lab.graph.lab.path} ended on SLURM but could "
                                        f"not be recorded: {exc.message}")
            # A scatter's job (its gather) may have been recorded with it: a detached
            # scatter-gather job's branches and gather are adopted when it is.
            gathers = {lab.index[r.job_id] for lab, recs in by_lab.values() for r in recs
                       if lab.index.get(r.job_id, r.job_id) != r.job_id}
            now = writable.get_many([r.job_id for r in ended] + sorted(gathers))
        for gather_id in gathers:
            after = now.get(gather_id)
            if after is not None and not after.status.active:
                lookup.recorded[gather_id] = after.status
        claimed = []
        for rec in ended:
            after = now.get(rec.job_id)
            if after is not None and not after.status.active:
                lookup.recorded[rec.job_id] = after.status
            elif rec.job_id not in left and after is not None and after.host != this_host():
                claimed.append(after)
        if claimed:
            hosts = ", ".join(sorted({r.host or "?" for r in claimed}))
            lookup.notes.append(
                f"{plural(len(claimed), 'job')} ended on SLURM, claimed by repx on another "
                f"host ({hosts}); a build there records them, or ask from that host")
    if left:
        lookup.notes.append(
            f"{len(left)} job{'s' if len(left) != 1 else ''} ended on SLURM but could not be "
            "recorded here (a scatter-gather step, or a job whose lab is gone): the next "
            f"`repx build` of its lab records {'them' if len(left) != 1 else 'it'}")


@dataclass
class _Lab:
    """A lab graph and which graph job each record id of it belongs to."""

    graph: JobGraph
    #: Record id -> graph job id.
    index: dict[str, str]
    #: Whether ``index`` holds the scatter-gather units of the job folders' ``units.json``.
    steps_indexed: bool = False


def _job_index(graph: JobGraph) -> dict[str, str]:
    """Record id -> graph job id: every job, and the scatter unit of each scatter-gather job
    (its steps are known only from its work items: left to the next build)."""
    index = {job_id: job_id for job_id in graph.jobs}
    for job in graph.jobs.values():
        if job.kind == "scatter-gather":
            index[scatter_id(job)] = job.id
    return index


def _lab_of(rec: JobRecord, given: _Lab | None, loaded: dict[str, _Lab | None]) -> _Lab | None:
    """The lab that lists the record's job: ``given`` if it does, else the lab the record
    names (expanded once per lab); None when neither does."""
    if given is not None and rec.job_id in given.index:
        return given
    if not rec.lab:
        return None
    if rec.lab not in loaded:
        found: _Lab | None = None
        if os.path.isdir(rec.lab):
            try:
                graph = load_job_graph(rec.lab)
            except Exception:  # noqa: BLE001 - a lab that no longer loads: leave the job
                graph = None
            if graph is not None:
                found = _Lab(graph, _job_index(graph))
        loaded[rec.lab] = found
    lab = loaded[rec.lab]
    return lab if lab is not None and rec.job_id in lab.index else None


def _lab_of_step(store: Store, rec: JobRecord, given: _Lab | None,
                 loaded: dict[str, _Lab | None]) -> _Lab | None:
    """The lab that lists ``rec`` as a unit of one of its scatter-gather jobs (the steps and
    gather a detached scatter submitted: :mod:`repx.engine.slurm.detached`), once each
    lab's ``units.json`` files were read into its index; None when none does."""
    for lab in (given, loaded.get(rec.lab) if rec.lab else None):
        if lab is None:
            continue
        if not lab.steps_indexed:
            lab.steps_indexed = True
            for job in lab.graph.jobs.values():
                if job.kind != "scatter-gather":
                    continue
                try:
                    units = read_units(store.meta_dir(job.id), job.id)
                except StoreError:
                    continue
                for uid in unit_ids(units or {}):
                    lab.index.setdefault(uid, job.id)
        if rec.job_id in lab.index:
            return lab
    return None


def _record_lab(store: Store, lab: _Lab, recs: list[JobRecord],
                states: dict[str, tuple[str, str]], cli: SlurmCli) -> None:
    """One SLURM scheduler over the jobs of ``recs`` (nothing else of the lab), adopting and
    recording the ended ones. ``keep_going``: a failure seen here never cancels other work
    on SLURM; that is a build's decision."""
    from repx.engine.plan import Plan
    from repx.engine.slurm.scheduler import SlurmOptions, SlurmScheduler

    job_ids = list(dict.fromkeys(lab.index[r.job_id] for r in recs))
    plan = Plan(closure=job_ids, up_to_date=[], to_run=job_ids)
    scheduler = SlurmScheduler(lab.graph, store, plan, SlurmOptions(keep_going=True, wait=False),
                               cli=cli)
    tasks = {r.slurm_id for r in recs}
    scheduler.record_ended({t: st for t, st in states.items() if t in tasks})
