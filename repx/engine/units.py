"""Work units, their typed states and outcomes, and the rules by which outcomes propagate.

A simple job is one unit under its own id. A scatter-gather job is several: its scatter,
one unit per (branch, step) once the scatter has written its work items, and its gather,
which runs under the job's id (so the job's record and ``out/`` are the gather's, and
downstream jobs read them like any job's). Scatter and step ids come from
:mod:`repx.identity`, so each is cached in the store on its own: after a failed branch is
fixed, only that branch reruns.

A unit moves through :class:`UnitState`::

    WAITING ──(dependencies done)──▶ READY ──▶ RUNNING ─────────────────▶ DONE
       │                               │  └──▶ SUBMITTED ─▶ ON_SLURM ─▶ RUNNING ─▶ DONE
       │                               ├──▶ CACHED (the store holds it) ─────────▶ DONE
       │                               └──▶ FOREIGN (another build runs it) ─▶ READY | DONE
       └──(a dependency failed)─────────────────────────────────────────────────▶ DONE

and ends with one :class:`Outcome`. :class:`UnitGraph` holds the units and applies the
rules: a unit becomes READY when its last dependency ends well (or ends at all, for a soft
inter-run gate); a failed dependency makes it BLOCKED, and so on downstream. Executors
decide only what happens to READY units.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from repx.errors import LabError
from repx.identity import step_id
from repx.lab.graph import Job
from repx.lab.resources import NO_RESOURCES, Resources
from repx.store import Status


class UnitState(StrEnum):
    """Where a unit is in a build (see the module doc for the transitions)."""

    WAITING = "waiting"
    READY = "ready"
    RUNNING = "running"
    #: Submitted to SLURM, not yet seen running.
    SUBMITTED = "submitted"
    #: Seen running on SLURM.
    ON_SLURM = "running-slurm"
    #: Claimed by another live build; waited for.
    FOREIGN = "foreign"
    #: Its claim was refused because the store already holds it complete.
    CACHED = "cached"
    DONE = "done"


#: States of a unit that a batch system holds: its dependencies ending does not queue it again.
ON_BATCH_SYSTEM = frozenset({UnitState.SUBMITTED, UnitState.ON_SLURM})


class Outcome(StrEnum):
    """How a unit (and so a job) ended in this build; the values are what manifests and
    summaries print."""

    SUCCEEDED = "succeeded"
    UP_TO_DATE = "up to date"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"
    NOT_STARTED = "not started"

    @property
    def ok(self) -> bool:
        """Whether units waiting on this one may run (hard dependencies)."""
        return self in _OK

    @property
    def store_status(self) -> Status | None:
        """The store status a record of this outcome carries; None for outcomes this build
        never records (done elsewhere, or never started)."""
        return _RECORDED.get(self)


_OK = frozenset({Outcome.SUCCEEDED, Outcome.UP_TO_DATE})

#: The one mapping from outcomes to store statuses. A blocked unit is recorded only when it
#: was already queued on SLURM (it is cancelled there).
_RECORDED = {
    Outcome.SUCCEEDED: Status.SUCCEEDED,
    Outcome.FAILED: Status.FAILED,
    Outcome.CANCELLED: Status.CANCELLED,
    Outcome.BLOCKED: Status.CANCELLED,
}


@dataclass(slots=True, eq=False)
class Unit:
    """One process to run (or a gate, which runs nothing), plus scheduler bookkeeping."""

    id: str
    job: Job
    #: "job" (a simple job) or a part of a scatter-gather job: "scatter", "step", "gather";
    #: "gate" for an inter-run dependency.
    role: str
    #: Shown in progress and errors: ``pname``, ``pname/scatter``, ``pname/step[3]``.
    label: str
    script: str
    #: Declared outputs (templates) to check after a zero exit.
    outputs: dict[str, Any]
    #: For admission (``cpus`` hint, else 1; ``mem`` in bytes, else 0).
    cpus: int
    mem: int
    run_index: int
    order: int
    step: str | None = None
    branch: int | None = None
    item: Any = None
    #: A gate is a virtual node (an inter-run dependency); ``soft`` gates open whatever
    #: the outcome of their dependencies, hard ones only when all succeeded.
    gate: bool = False
    soft: bool = False
    deps_left: int = 0
    #: What this unit waits for, and who waits for it.
    deps: list[Unit] = field(default_factory=list)
    dependents: list[Unit] = field(default_factory=list)
    #: The SLURM job id (``123`` or ``123_4`` for an array task) once submitted.
    slurm_id: str | None = None
    state: UnitState = UnitState.WAITING
    outcome: Outcome | None = None
    reason: str = ""
    #: The store said RUNNING/QUEUED for this id at plan time (a dead build's leftover).
    maybe_orphan: bool = False
    #: The hints this unit runs with: its executable's own, else its job's merged hints.
    resources: Resources = field(default_factory=lambda: NO_RESOURCES)

    def __repr__(self) -> str:
        return f"Unit({self.id!r}, {self.role})"


class UnitGraph:
    """The units of one build and the rules by which outcomes pass along their edges.

    ``on_done(unit)`` is called once for every non-gate unit when it gets its outcome.
    Ready units wait in :attr:`ready`, a heap ordered by (run, creation order), which is the
    order executors start them in.
    """

    def __init__(self, on_done: Callable[[Unit], None] = lambda unit: None) -> None:
        self.units: dict[str, Unit] = {}
        self.ready: list[tuple[int, int, int, Unit]] = []
        self._on_done = on_done
        self._seq = 0

    def add(self, unit: Unit) -> Unit:
        """Register a unit (gates are not registered: they have no id in the store)."""
        if not unit.gate:
            self.units[unit.id] = unit
        return unit

    def wait_for(self, unit: Unit, deps: list[Unit]) -> None:
        """Add edges only: ``unit`` waits for ``deps``, none of which has an outcome yet."""
        for dep in dict.fromkeys(deps):
            _add_edge(unit, dep)

    def link(self, unit: Unit, deps: list[Unit]) -> None:
        """Make ``unit`` wait for ``deps``; those already done count at once (a failed one
        blocks it, unless it is a soft gate), and with nothing left to wait for it is ready."""
        for dep in dict.fromkeys(deps):
            if dep.state is UnitState.DONE:
                assert dep.outcome is not None
                if dep.outcome.ok or unit.soft:
                    continue
                self.resolve(unit, Outcome.BLOCKED, f"{dep.label} {dep.id} {dep.outcome}")
                return
            _add_edge(unit, dep)
        if unit.deps_left == 0 and unit.state is UnitState.WAITING:
            self.make_ready(unit)

    def make_ready(self, unit: Unit) -> None:
        """Every dependency of ``unit`` is done: a gate opens (succeeds), a unit already on a
        batch system stays there, any other unit joins the ready queue."""
        if unit.gate:
            self.resolve(unit, Outcome.SUCCEEDED, "")
            return
        if unit.state in ON_BATCH_SYSTEM:
            return
        self.push_ready(unit)

    def push_ready(self, unit: Unit) -> None:
        """Queue ``unit`` to be started (again, for one whose other owner died)."""
        unit.state = UnitState.READY
        self._seq += 1
        heapq.heappush(self.ready, (unit.run_index, unit.order, self._seq, unit))

    def resolve(self, unit: Unit, outcome: Outcome, reason: str) -> None:
        """Give ``unit`` its outcome and pass it on: dependents become ready or blocked."""
        stack = [(unit, outcome, reason)]
        while stack:
            u, oc, why = stack.pop()
            if u.state is UnitState.DONE:
                continue
            u.state = UnitState.DONE
            u.outcome = oc
            u.reason = why
            if not u.gate:
                self._on_done(u)
            ok = oc in _OK
            for dep in u.dependents:
                if dep.state is UnitState.DONE:
                    continue
                if ok or dep.soft:
                    dep.deps_left -= 1
                    if dep.deps_left == 0:
                        if dep.gate:
                            stack.append((dep, Outcome.SUCCEEDED, ""))
                        else:
                            self.make_ready(dep)
                else:
                    stack.append((dep, Outcome.BLOCKED, f"{u.label} {u.id} {oc}"
                                  if oc is not Outcome.BLOCKED else u.reason))


def _add_edge(unit: Unit, dep: Unit) -> None:
    """``unit`` waits for ``dep`` (one edge of the unit graph)."""
    unit.deps_left += 1
    unit.deps.append(dep)
    dep.dependents.append(unit)


# ------------------------------------------------------------------ scatter-gather branches


def read_work_items(path: str, job: Job) -> list[Any]:
    """The scatter's work items, checked to be a JSON list."""
    try:
        with open(path, encoding="utf-8") as handle:
            items = json.load(handle)
    except FileNotFoundError:
        raise LabError(
            f"stage '{job.pname}' (file {job.stage_file}): the scatter did not write its "
            f"work__items file {path}"
        ) from None
    except (OSError, ValueError) as exc:
        raise LabError(
            f"stage '{job.pname}' (file {job.stage_file}): the scatter's work__items file "
            f"{path} is not valid JSON: {exc}"
        ) from None
    if not isinstance(items, list):
        raise LabError(
            f"stage '{job.pname}' (file {job.stage_file}): the scatter's work__items file "
            f"{path} must hold a JSON list, not {type(items).__name__}"
        )
    return items


@dataclass(slots=True)
class BranchStep:
    """One step of one branch: its unit id and the ids of the steps it reads."""

    step: str
    id: str
    deps: list[str]


def branch_steps(job: Job, item: Any) -> list[BranchStep]:
    """The steps of one branch in dependency order, with their ids."""
    sg = job.stage_def.scatter_gather
    if sg is None:
        raise LabError(f"job {job.id} is not a scatter-gather job")
    steps = job.stage_def.steps
    ids = {name: step_id(job, name, item) for name in sg.step_order}
    return [
        BranchStep(name, ids[name], [ids[d.stage] for d in steps[name].deps])
        for name in sg.step_order
    ]
