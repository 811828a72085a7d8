"""What a build must run: the up-to-date check, in doit's model.

doit calls a task up to date when its saved state says it succeeded and its targets exist;
a changed dependency shows up as a changed checksum. repx keeps the first half and replaces
the second: a job's identity already covers everything it depends on (scripts, params,
upstream identities), so a changed upstream gives a *new* id, which the store simply does
not hold. What is left to check per job is therefore cheap — one status byte from the store
and a ``stat`` per declared output — which is what makes a no-op rebuild of 20 000 jobs fit
in a fraction of a second. ``--verify`` adds doit's checksum comparison (BLAKE3 of every
output against the manifest recorded when the job finished).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from itertools import compress
from typing import TYPE_CHECKING, Any

from repx.engine.contract import OUT_MARK, declared_outputs, outputs_present
from repx.errors import UsageError
from repx.lab.graph import Job, JobGraph, selection_closure
from repx.store import ACTIVE_STATUSES, Status, Store
from repx.store.layout import OUT

if TYPE_CHECKING:
    from repx.engine.noop_index import UpToDate


@dataclass
class Plan:
    """The jobs a build looks at, split by what must happen to them."""

    #: Every job of the selection and what it needs, in topological order.
    closure: list[str]
    #: Jobs already done (succeeded, outputs present, not forced).
    up_to_date: list[str]
    #: Jobs to run, in topological order.
    to_run: list[str]
    #: Why each job runs ("not in the store", "failed before", "forced", "output missing",
    #: "checksum mismatch", ...).
    reasons: dict[str, str] = field(default_factory=dict)
    #: Jobs the store says are running or queued (maybe by a build that died).
    in_flight: set[str] = field(default_factory=set)
    #: Jobs recorded as succeeded that run again (forced, an output missing or changed):
    #: their claim must take over the succeeded record.
    stale: set[str] = field(default_factory=set)
    #: Jobs named by ``--force``: their units run even when the store holds them.
    forced: set[str] = field(default_factory=set)


def resolve_force(graph: JobGraph, names: tuple[str, ...], closure: list[str]) -> set[str]:
    """Job ids named by ``--force`` values: a job id (or unique prefix), a stage (pname or
    pipeline key) or a run. Values that match nothing are an error (a typo must not
    silently force nothing)."""
    forced: set[str] = set()
    in_closure = set(closure)
    for name in names:
        if name in graph.runs:
            forced.update(graph.runs[name].job_ids)
            continue
        stage_jobs = [j.id for j in graph.jobs.values() if name in (j.pname, j.stage)]
        if stage_jobs:
            forced.update(stage_jobs)
            continue
        try:
            forced.add(graph.resolve_job(name).id)
        except UsageError:
            raise UsageError(
                f"--force {name}: not a run, a stage (pname or pipeline key) or a job id of "
                f"this lab; runs: {', '.join(graph.runs)}"
            ) from None
    return forced & in_closure


def missing_output(outputs: dict[str, Any], out_dir: str,
                   job_id: str) -> tuple[str, str] | None:
    """(name, path) of the first declared output that does not exist; None when all do.

    The one completeness check: the plan asks it of a succeeded record, the scheduler of a
    unit that exited 0 and of a scatter-gather unit the store already holds. Paths are
    resolved by :func:`repx.engine.contract.declared_outputs`. Existence is asked with
    ``access(F_OK)``: the answer of ``stat`` (symlinks followed) at two thirds of its system
    time, and a large plan is mostly this call.
    """
    for name, path in declared_outputs(outputs, out_dir, job_id).items():
        if not os.access(path, os.F_OK):
            return name, path
    return None


class _OutputPaths:
    """Each job's declared outputs as paths relative to the store's outputs folder,
    resolved once per outputs dict: the jobs of a stage share theirs, so a 20 000-job plan
    resolves a couple of templates instead of 20 000 (the same rule as
    :func:`missing_output`).

    Existence is asked relative to the open outputs folder (``access(F_OK, dir_fd=)``):
    the kernel then walks three path components per output instead of the whole store
    path, which is most of a large plan's system time.
    """

    __slots__ = ("_by_outputs", "_folder", "_outputs_root")

    def __init__(self, outputs_root: str) -> None:
        # Keyed by id(): every outputs dict is held by the graph for the plan's lifetime.
        self._by_outputs: dict[int, list[tuple[str, str]]] = {}
        self._outputs_root = outputs_root
        try:
            self._folder: int | None = os.open(outputs_root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            self._folder = None  # no job ever ran here: every output is missing

    def close(self) -> None:
        if self._folder is not None:
            os.close(self._folder)
            self._folder = None

    def _relative(self, outputs: dict[str, Any], job_id: str) -> list[tuple[str, str]]:
        relative = self._by_outputs.get(id(outputs))
        if relative is None:
            marked = declared_outputs(outputs, OUT_MARK, job_id)
            relative = [(name, f"/{OUT}{path[len(OUT_MARK):]}")
                        for name, path in marked.items()]
            self._by_outputs[id(outputs)] = relative
        return relative

    def incomplete(self, jobs: dict[str, Job], job_ids: list[str]) -> set[str]:
        """The jobs of ``job_ids`` with a declared output missing.

        The same answer as :meth:`missing` asked job by job; when every stage among them
        declares exactly one file output (the common shape), it is one C-level loop of
        ``access`` calls, as in the no-op check, instead of a Python call per job.
        """
        if self._folder is None:
            return set(job_ids)
        outputs_of = list(map(operator.attrgetter("outputs"), map(jobs.__getitem__, job_ids)))
        keys = list(map(id, outputs_of))
        tails: dict[int, str] = {}
        for key, outputs, job_id in zip(keys, outputs_of, job_ids, strict=True):
            if key not in tails:
                relative = self._relative(outputs, job_id)
                if len(relative) != 1:
                    return {j for j, o in zip(job_ids, outputs_of, strict=True)
                            if self.missing(o, j) is not None}
                tails[key] = relative[0][1]
        present = outputs_present(self._folder, job_ids, map(tails.__getitem__, keys))
        return set(compress(job_ids, map(operator.not_, present)))

    def missing(self, outputs: dict[str, Any], job_id: str) -> tuple[str, str] | None:
        """:func:`missing_output` of one job: (name, absolute path) of its first missing
        output, None when all exist."""
        relative = self._relative(outputs, job_id)
        folder = self._folder
        for name, rel in relative:
            if folder is None or not os.access(job_id + rel, os.F_OK, dir_fd=folder):
                return name, f"{self._outputs_root}/{job_id}{rel}"
        return None



def plan_build(
    graph: JobGraph,
    store: Store,
    targets: list[str],
    *,
    force: tuple[str, ...] = (),
    verify: bool = False,
    marked: Callable[[str], Collection[str] | None] | None = None,
    present: UpToDate | None = None,
) -> Plan:
    """Split the selection into up-to-date jobs and jobs to run.

    ``marked`` (the ids a closure mark names, :meth:`Store.statuses`) lets the statuses of
    the jobs an edit did not reach come from the last no-op build instead of the records.
    ``present`` is a closure this command found up to date moments ago (the check ahead of
    an edited lab, on the lab it replaces): its jobs' outputs are not looked at again, as a
    no-op build does not look at them twice either, and their records are not read again
    while the store has not been written since (:meth:`Store.statuses`).
    """
    closure = selection_closure(graph, targets)
    forced = resolve_force(graph, force, closure) if force else set()
    present_ids: Collection[str] = frozenset(present.ids) if present is not None else ()
    statuses = store.statuses(closure, marked, (present_ids, present.mark[1])
                              if present is not None else None)
    jobs = graph.jobs
    up_to_date: list[str] = []
    to_run: list[str] = []
    reasons: dict[str, str] = {}
    in_flight: set[str] = set()
    records = store.get_many([j for j in closure if statuses.get(j) is Status.SUCCEEDED]) \
        if verify else {}
    outputs = _OutputPaths(store.folders.outputs_root)
    missing_of = outputs.missing
    succeeded = Status.SUCCEEDED
    try:
        todo = closure
        if not forced and not verify:
            # Most jobs are succeeded with their outputs present: those are settled in one
            # pass, and only the others walk the loop below for their reasons.
            done = [j for j in closure if statuses.get(j) is succeeded]
            unchecked = [j for j in done if j not in present_ids] if present_ids else done
            incomplete = outputs.incomplete(jobs, unchecked)
            up_to_date = [j for j in done if j not in incomplete] if incomplete else done
            todo = [] if len(up_to_date) == len(closure) else [
                j for j in closure if statuses.get(j) is not succeeded or j in incomplete]
        for job_id in todo:
            status = statuses.get(job_id)
            reason = None
            if status is succeeded:
                if job_id in forced:
                    reason = "forced"
                else:
                    missing = missing_of(jobs[job_id].outputs, job_id)
                    if missing is not None:
                        reason = f"output '{missing[0]}' is missing ({missing[1]})"
                    if reason is None and verify:
                        problems = store.verify(records[job_id], checksums=True)
                        if problems:
                            reason = "; ".join(problems[:3])
            elif status is None:
                reason = "not in the store"
            else:
                if status in ACTIVE_STATUSES:
                    in_flight.add(job_id)
                reason = f"{status.value} before"
            if reason is None:
                up_to_date.append(job_id)
            else:
                to_run.append(job_id)
                reasons[job_id] = reason
    finally:
        outputs.close()
    stale = {j for j in to_run if statuses.get(j) is Status.SUCCEEDED}
    return Plan(closure, up_to_date, to_run, reasons, in_flight, stale, forced)
