"""The job graph: every job of a lab, its runs and groups, and how targets select jobs.

A :class:`Job` is a stage under one effective parameter combination, named by its identity
(:mod:`repx.identity`); :mod:`repx.lab.expand` builds the graph from a loaded lab. Targets
(run names, ``@group``, job ids or unique id prefixes) are resolved here, once, for every
command, and :func:`selection_closure` is the one definition of "what a selection needs".
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from repx.errors import UsageError
from repx.lab.resources import Resources

if TYPE_CHECKING:
    # Types only: a no-op build answered from its index never loads a blueprint, and the
    # blueprint's fifteen dataclasses are a tenth of that command's start-up.
    from repx.lab.blueprint import Executable, Lab, Run, Stage
    from repx.lab.expansion_memo import RunMemo


@dataclass(frozen=True, slots=True, eq=False)
class StageShape:
    """What every job of one stage variant of one run has in common.

    A lab of a million jobs has a handful of these: a :class:`Job` keeps one reference to
    its shape instead of a dozen fields of its own, so the graph stays small and quick to
    make. ``template`` holds every input in name order, ``None`` where a producer's output
    feeds it; ``mapped`` says which producer: (input, index into the job's ``upstream``,
    the producer's output).
    """

    pname: str
    version: str
    stage: str
    stage_file: str
    pipeline_file: str
    kind: str
    run: str
    hash_mode: str
    outputs: dict[str, Any]
    executables: dict[str, Executable]
    own_resources: Resources
    inter_run: list[tuple[str, str]]
    stage_def: Stage
    template: dict[str, dict[str, Any] | None]
    mapped: tuple[tuple[str, int, str], ...]


class Job:
    """One unit of work: a stage under one effective parameter combination.

    Jobs with the same id (identical work reached from several combinations, pipelines or
    runs) are one Job; ``runs`` lists every run that produced it. ``inputs`` maps each
    input name to its source: ``{"job": id, "output": name}``, ``{"file": path}``,
    ``{"runtime": "worker__item" | "worker__outs" | "store__base"}`` or
    ``{"run_manifest": run, "jobs": [ids]}``. Dict and list members may be shared between
    jobs: treat them as read-only. What the jobs of a stage share lives in their
    :class:`StageShape` (read through the properties below).
    """

    __slots__ = ("id", "shape", "runs", "params", "param_sources", "resources", "depends_on",
                 "upstream", "_inputs")

    #: The job's identity (:mod:`repx.identity`).
    id: str
    shape: StageShape
    runs: list[str]
    params: dict[str, Any]
    #: param -> "default" | "sweep:<key>" | "override:<key>" (a one-value run param)
    #: | "zip:<label>.<key>"
    param_sources: dict[str, str]
    resources: Resources
    #: Upstream job ids in dependency order, without repeats.
    depends_on: list[str]
    #: The producer job id of each of ``stage_def.deps`` (repeats kept; for identity).
    upstream: list[str]

    def __init__(self, id: str, shape: StageShape, runs: list[str], params: dict[str, Any],
                 param_sources: dict[str, str], resources: Resources, depends_on: list[str],
                 upstream: list[str]) -> None:
        self.id, self.shape, self.runs = id, shape, runs
        self.params, self.param_sources, self.resources = params, param_sources, resources
        self.depends_on, self.upstream = depends_on, upstream
        # Without mapped inputs the template is complete (no None left): shared as it is.
        self._inputs: dict[str, Any] | None = None if shape.mapped else shape.template

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        """Each input's source (see the class doc), made on first use: most commands never
        read the inputs of most jobs."""
        inputs = self._inputs
        if inputs is None:
            inputs = dict(self.shape.template)  # the mapped inputs' places, in name order
            upstream = self.upstream
            for target, index, source in self.shape.mapped:
                inputs[target] = {"job": upstream[index], "output": source}
            self._inputs = inputs
        return inputs

    @property
    def pname(self) -> str:
        """The stage's pname (a dynamic pname: this job's)."""
        return self.shape.pname

    @property
    def version(self) -> str:
        return self.shape.version

    @property
    def stage(self) -> str:
        """The stage's pipeline key."""
        return self.shape.stage

    @property
    def stage_file(self) -> str:
        return self.shape.stage_file

    @property
    def pipeline_file(self) -> str:
        return self.shape.pipeline_file

    @property
    def kind(self) -> str:
        """"simple" or "scatter-gather"."""
        return self.shape.kind

    @property
    def run(self) -> str:
        """The first run that produced this job."""
        return self.shape.run

    @property
    def hash_mode(self) -> str:
        return self.shape.hash_mode

    @property
    def outputs(self) -> dict[str, Any]:
        return self.shape.outputs

    @property
    def executables(self) -> dict[str, Executable]:
        return self.shape.executables

    @property
    def own_resources(self) -> Resources:
        """The stage's own resource hints (before merging upstream's)."""
        return self.shape.own_resources

    @property
    def inter_run(self) -> list[tuple[str, str]]:
        """(run, type) of every run whose manifest this job reads (its inter-run edges)."""
        return self.shape.inter_run

    @property
    def stage_def(self) -> Stage:
        return self.shape.stage_def


    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``repx list jobs --json``); scripts by executable name."""
        return {
            "id": self.id,
            "pname": self.pname,
            "version": self.version,
            "run": self.run,
            "runs": list(self.runs),
            "stage": self.stage,
            "stage_file": self.stage_file,
            "kind": self.kind,
            "hash_mode": self.hash_mode,
            "params": self.params,
            "param_sources": self.param_sources,
            "resources": dict(self.resources),
            "depends_on": list(self.depends_on),
            "inputs": self.inputs,
            "outputs": self.outputs,
            "scripts": {name: e.script for name, e in self.executables.items()},
        }


@dataclass(slots=True)
class RunJobs:
    """The jobs of one run (ids in expansion order, each once) and its run dependencies."""

    name: str
    run: Run
    dependencies: list[tuple[str, str]]
    job_ids: list[str]

    @property
    def hash_mode(self) -> str:
        return self.run.hash_mode


class JobGraph:
    """Every job of a lab, keyed by id in expansion order, plus runs and groups."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.jobs: dict[str, Job] = {}
        self.runs: dict[str, RunJobs] = {}
        self.groups: dict[str, list[str]] = {g: list(m) for g, m in lab.groups.items()}
        #: How each run was expanded (:mod:`repx.lab.expansion_memo`), for the next
        #: expansion of an edited lab; a run whose stages vary by value has none.
        self.expansion_memo: dict[str, RunMemo] = {}
        #: Jobs whose ids the expansion read from an earlier one instead of hashing them.
        self.reused_ids = 0
        self._sorted_ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.jobs)

    # ---- lookup

    def _prefix_matches(self, prefix: str, limit: int = 5) -> tuple[int, list[str]]:
        if self._sorted_ids is None or len(self._sorted_ids) != len(self.jobs):
            self._sorted_ids = sorted(self.jobs)
        ids = self._sorted_ids
        i = bisect.bisect_left(ids, prefix)
        found: list[str] = []
        count = 0
        while i < len(ids) and ids[i].startswith(prefix):
            if count < limit:
                found.append(ids[i])
            count += 1
            i += 1
        return count, found

    def resolve_job(self, prefix: str) -> Job:
        """The job whose id is ``prefix`` or uniquely starts with it (UsageError otherwise)."""
        job = self.jobs.get(prefix)
        if job is not None:
            return job
        count, found = self._prefix_matches(prefix) if prefix else (0, [])
        if count == 1:
            return self.jobs[found[0]]
        if count == 0:
            raise UsageError(f"no job id starts with '{prefix}'")
        more = f" and {count - len(found)} more" if count > len(found) else ""
        raise UsageError(
            f"job id prefix '{prefix}' is ambiguous: it matches {count} jobs: "
            f"{', '.join(found)}{more}; give more characters"
        )

    def select(self, targets: Iterable[str]) -> list[Job]:
        """Jobs named by ``targets`` (run names, ``@group``, job ids or unique id prefixes),
        in target order, each once. No targets selects every job."""
        targets = list(targets)
        if not targets:
            return list(self.jobs.values())
        chosen: dict[str, None] = {}
        for t in targets:
            if t.startswith("@"):
                members = self.groups.get(t[1:])
                if members is None:
                    raise UsageError(f"unknown group '{t}'; {self._available()}")
                for r in members:
                    chosen.update(dict.fromkeys(self.runs[r].job_ids))
            elif t in self.runs:
                chosen.update(dict.fromkeys(self.runs[t].job_ids))
            else:
                count, _ = self._prefix_matches(t, 0) if t else (0, [])
                if count == 0 and t not in self.jobs:
                    raise UsageError(
                        f"unknown target '{t}': not a run, a @group or a job id; "
                        f"{self._available()}"
                    )
                chosen[self.resolve_job(t).id] = None
        return [self.jobs[i] for i in chosen]

    def _available(self) -> str:
        runs = ", ".join(self.runs) or "(none)"
        groups = ", ".join(f"@{g}" for g in self.groups) or "(none)"
        return f"runs: {runs}; groups: {groups}"

    # ---- order

    def upstream_closure(self, job_ids: Iterable[str]) -> list[str]:
        """Ids of ``job_ids`` and of everything they need (producers, and every job of a run
        whose manifest they read), in topological order."""
        return self._post_order(job_ids)

    def topological_order(self) -> list[str]:
        """Every job id, each after all of its upstream jobs (stable on expansion order)."""
        return self._post_order(self.jobs)

    def _post_order(self, roots: Iterable[str]) -> list[str]:
        # Iterative DFS; a run read through its manifest is one virtual node ("\0" + name),
        # so 10 000 consumers of a 10 000-job run cost 20 000 steps, not 10^8.
        jobs, runs = self.jobs, self.runs

        def upstream_of(node: str) -> Iterable[str]:
            if node[0] == "\0":
                return runs[node[1:]].job_ids
            job = jobs[node]
            if not job.inter_run:
                return job.depends_on
            return [*job.depends_on, *("\0" + r for r, _ in job.inter_run)]

        seen: set[str] = set()
        order: list[str] = []
        for root in roots:
            if root not in jobs:
                raise UsageError(f"unknown job id '{root}'")
            if root in seen:
                continue
            seen.add(root)
            stack = [(root, iter(upstream_of(root)))]
            while stack:
                node, it = stack[-1]
                for up in it:
                    if up not in seen:
                        seen.add(up)
                        stack.append((up, iter(upstream_of(up))))
                        break
                else:
                    stack.pop()
                    if node[0] != "\0":
                        order.append(node)
        return order


def selection_closure(graph: JobGraph, targets: list[str]) -> list[str]:
    """The selected jobs plus everything they need: producers, manifest runs, and every job
    of each run that a selected run depends on (hard or soft), transitively."""
    if not targets:
        # Every job, in expansion order: expansion makes each job after all of its
        # producers and after every run whose manifest it reads, so that order is
        # topological and is exactly the post-order walk below from all the jobs in
        # expansion order (each root's upstream jobs were earlier roots), minus the walk.
        return list(graph.jobs)
    selected = graph.select(targets)
    roots = [job.id for job in selected]
    stack = [dep for run in dict.fromkeys(r for job in selected for r in job.runs)
             for dep, _kind in graph.runs[run].dependencies]
    dependency_runs: set[str] = set()
    while stack:
        name = stack.pop()
        if name not in dependency_runs:
            dependency_runs.add(name)
            stack.extend(dep for dep, _kind in graph.runs[name].dependencies)
    for name in dependency_runs:
        roots.extend(graph.runs[name].job_ids)
    return graph.upstream_closure(roots)
