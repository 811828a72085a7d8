"""Work units: the processes a build starts, and the scatter-gather identities.

A simple job is one unit under its own id. A scatter-gather job is several: its scatter,
one unit per (branch, step) once the scatter has written its work items, and its gather,
which runs under the job's id (so the job's record and ``out/`` are the gather's, and
downstream jobs read them like any job's). Scatter and step units have identities of their
own, derived from the job's id — plus the work item and the step for a step — so each is
cached in the store on its own: after a failed branch is fixed, only that branch reruns
(DESIGN decision 11).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from repx.blueprint import Executable
from repx.errors import LabError
from repx.expand import Job, Resources
from repx.identity import canonical_json, job_id

#: Roles of a unit. "job" is a simple job; the others belong to a scatter-gather job.
ROLES = ("job", "scatter", "step", "gather")


@dataclass(slots=True, eq=False)
class Unit:
    """One process to run (or a gate, which runs nothing), plus scheduler bookkeeping."""

    id: str
    job: Job
    role: str
    #: Shown in progress and errors: ``pname``, ``pname/scatter``, ``pname/step[3]``.
    label: str
    script: str
    #: Declared outputs (templates) to check after a zero exit.
    outputs: dict[str, Any]
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
    #: waiting | ready | running | foreign | done
    state: str = "waiting"
    outcome: str = ""
    reason: str = ""
    #: The store said RUNNING/QUEUED for this id at plan time (a dead build's leftover).
    maybe_orphan: bool = False

    def __repr__(self) -> str:
        return f"Unit({self.id!r}, {self.role})"


def unit_resources(resources: Resources | dict[str, Any] | None,
                   fallback: Resources) -> tuple[int, int]:
    """(cpus, mem bytes) for admission: the executable's own hints, else the job's."""
    cpus = getattr(resources, "cpu_count", None) or fallback.cpu_count or 1
    mem = getattr(resources, "mem_bytes", None) or fallback.mem_bytes or 0
    return int(cpus), int(mem)


# ------------------------------------------------------------------ scatter-gather identity


def scatter_id(job: Job) -> str:
    """The id of a scatter-gather job's scatter unit (a function of the job's id only)."""
    return job_id(["scatter", job.id], f"{job.pname}-scatter", job.version)


def step_id(job: Job, step: str, item: Any) -> str:
    """The id of step ``step`` of the branch whose work item is ``item``.

    The item's content, not its position, is part of the identity: a scatter that writes
    the same items in a new order reuses every branch.
    """
    return job_id(["step", job.id, step, item], f"{job.pname}-{step}", job.version)


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
class StepPlan:
    """One step of one branch: its unit id and the ids of the steps it reads."""

    step: str
    id: str
    deps: list[str]


def branch_plan(job: Job, item: Any) -> list[StepPlan]:
    """The steps of one branch in dependency order, with their ids."""
    sg = job.stage_def.scatter_gather
    if sg is None:
        raise LabError(f"job {job.id} is not a scatter-gather job")
    steps = job.stage_def.steps
    ids = {name: step_id(job, name, item) for name in sg.step_order}
    return [
        StepPlan(name, ids[name], [ids[d.stage] for d in steps[name].deps])
        for name in sg.step_order
    ]


def step_inputs(
    job: Job,
    exe: Executable,
    *,
    static_inputs: dict[str, str],
    item_path: str,
    dep_out_dirs: dict[str, str],
) -> dict[str, str]:
    """The inputs of one step unit: its work item, its dependency steps' outputs, and the
    stage's own inputs (or the step's defaults) for everything else."""
    from repx.engine.jobfiles import output_path

    resolved: dict[str, str] = {}
    steps = job.stage_def.steps
    mapped: dict[str, str] = {}
    for dep in exe.deps:
        source_exe = steps[dep.stage]
        for mapping in dep.mappings:
            template = source_exe.outputs.get(mapping.source)
            if template is None:
                raise LabError(
                    f"stage '{job.pname}' (file {job.stage_file}): step '{exe.step}' maps "
                    f"output '{mapping.source}' of step '{dep.stage}', which declares "
                    f"{sorted(source_exe.outputs)}"
                )
            mapped[mapping.target] = output_path(
                template, dep_out_dirs[dep.stage], job=job.id, name=mapping.source
            )
    for name, declared in exe.inputs.items():
        if name == "worker__item":
            resolved[name] = item_path
        elif name in mapped:
            resolved[name] = mapped[name]
        elif name in static_inputs:
            resolved[name] = static_inputs[name]
        elif declared.file:
            resolved[name] = declared.file
        elif declared.default not in ("", None):
            resolved[name] = str(declared.default)
        else:
            raise LabError(
                f"stage '{job.pname}' (file {job.stage_file}): input '{name}' of step "
                f"'{exe.step}' is not provided by another step, by the stage's inputs "
                f"({', '.join(sorted(static_inputs)) or 'none'}) or by a default"
            )
    # Inputs mapped by a dependency but not declared still reach the step.
    for name, path in mapped.items():
        resolved.setdefault(name, path)
    return resolved


def units_manifest(scatter: str, branches: list[tuple[Any, list[StepPlan]]]) -> str:
    """The text of ``repx/units.json`` of a scatter-gather job: which store ids belong to
    it (``repx gc`` keeps them with the job; ``repx show`` lists them)."""
    return canonical_json({
        "scatter": scatter,
        "branches": [
            {"item": item, "steps": {p.step: p.id for p in plans}} for item, plans in branches
        ],
    })


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (readers never see half of it)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
