"""Expand a loaded lab into its job graph: combinations, effective params, wiring, identities.

Nix writes one blueprint per run (docs/blueprint.md) and stays O(stages); everything that
is O(jobs) happens here, in one pass per run:

* **Combinations.** The run's axes (as given), then its zip groups (as given), row-major
  (first axis most significant). Values must be scalars; an axis (or zip) with a repeated
  value is an error, because Nix 2.8 prints floats with 6 significant digits and two
  distinct sweep values may have collapsed into one.
* **Effective params** of a stage: for each declared param ``p``, the value of a
  dot-notation key ``"<stage>.p"`` that targets this stage (it wins), else of a plain key
  ``p``, else the stage default; a ``null`` value means the default. Keys no stage declares
  still multiply the combinations, and the resulting identical jobs collapse.
* **Stage order** inside a pipeline is topological (ties by stage key), so every upstream
  id exists before its consumer is hashed (DESIGN 5: the original's alphabetical order let
  a consumer named before its producer miss the producer's changes).
* **Identity** (``repx.identity``): the canonical JSON of ::

      {"code":      ["pure", [script store paths in executable order], outputs]
                    | ["params-only", pname, version, [executable names]],
       "files":     {input: store path}       # inputs resolved from defaults
       "inter_run": [[run, type, [sorted job ids of that run]], ...],
       "params":    {declared param: effective value},
       "upstream":  [[producer job id, [[source, target], ...]], ...]}   # deps order

  Never resources, undeclared params, git hash, lab version or group names. In ``pure``
  mode the resolved output templates are hashed too: with one script per stage
  (DESIGN 6) a dynamic ``outputs`` function is not captured by the script path, and a
  job that writes elsewhere must not reuse an old record.
* **Resources** (DESIGN 7): mem, cpus, time are the maximum over the stage's own hints
  and its upstream jobs' merged hints; partition and sbatch_opts are the stage's own,
  else the first dependency's.

Speed matters (a 10 000-combination sweep must expand in well under a second), so
everything that does not vary per job is computed once per stage (or per dynamic
variant): the constant head of the identity JSON is fed to a BLAKE3 hasher once and the
hasher is copied per job; a stage's jobs are memoised on the indices of the dimensions
that can influence it (its own params and those of its upstream stages), so a stage that
depends on one axis is hashed once per value of that axis, not once per combination.
"""

from __future__ import annotations

import bisect
import heapq
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from json.encoder import encode_basestring
from operator import itemgetter
from pathlib import Path
from typing import Any

from blake3 import blake3

from repx.blueprint import DEPENDENCY_TYPES, Executable, Input, Lab, Pipeline, Run, Stage, load_lab
from repx.errors import LabError, UsageError
from repx.identity import canonical_json, nix32_of_digest

#: Inputs the runtime provides (scatter-gather plumbing and the store base directory).
RUNTIME_INPUTS = frozenset({"worker__item", "worker__outs", "store__base"})

#: Valid resource hint keys, in the order merged resources list them.
RESOURCE_KEYS = ("mem", "cpus", "time", "partition", "sbatch_opts")

_SCALARS = (str, int, float, bool, type(None))

# --------------------------------------------------------------------------- resources

_MEM_RE = re.compile(r"^\s*(\d+)\s*([KMGTkmgt]?)\s*$")
_MEM_UNITS = {"": 1024**2, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_TIME_RE = re.compile(r"^\s*(?:(\d+)-)?(\d+):(\d+)(?::(\d+))?\s*$")


def parse_mem(value: object) -> int:
    """Bytes for a ``mem`` hint: ``"512M"``, ``"8G"``… (powers of 1024), or a plain number.

    A plain number (int or digit string) means MiB, as in ``sbatch --mem``.
    Raises ValueError for anything else (zero included).
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        n = value * _MEM_UNITS[""]
    elif isinstance(value, str) and (m := _MEM_RE.match(value)):
        n = int(m.group(1)) * _MEM_UNITS[m.group(2).upper()]
    else:
        raise ValueError(value)
    if n <= 0:
        raise ValueError(value)
    return n


def parse_time(value: object) -> int:
    """Seconds for a ``time`` hint: ``"D-HH:MM:SS"``, ``"HH:MM:SS"``, ``"MM:SS"`` or seconds.

    Raw seconds follow the seed (SLURM reads a bare number as minutes; the SLURM executor
    converts). Raises ValueError for anything else (zero included).
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and value.strip().isdigit():
        seconds = int(value)
    elif isinstance(value, str) and (m := _TIME_RE.match(value)):
        days, a, b, c = m.groups()
        if c is None:  # MM:SS (a day prefix needs the full HH:MM:SS)
            if days is not None:
                raise ValueError(value)
            hours, minutes, secs = 0, int(a), int(b)
        else:
            hours, minutes, secs = int(a), int(b), int(c)
            if minutes >= 60:
                raise ValueError(value)
        if secs >= 60:
            raise ValueError(value)
        seconds = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + secs
    else:
        raise ValueError(value)
    if seconds <= 0:
        raise ValueError(value)
    return seconds


class Resources(dict[str, Any]):
    """Resource hints (keys from :data:`RESOURCE_KEYS`, original values) plus parsed numbers.

    Instances are shared between jobs with the same hints: treat them as read-only.
    ``mem_bytes``/``cpu_count``/``time_seconds`` are None when the hint is unset.
    """

    __slots__ = ("mem_bytes", "cpu_count", "time_seconds")

    def __init__(
        self,
        values: dict[str, Any] | None = None,
        mem_bytes: int | None = None,
        cpu_count: int | None = None,
        time_seconds: int | None = None,
    ) -> None:
        super().__init__(values or {})
        self.mem_bytes = mem_bytes
        self.cpu_count = cpu_count
        self.time_seconds = time_seconds


_NO_RESOURCES = Resources()


def validate_resources(raw: dict[str, Any] | None, where: str) -> Resources:
    """Check a stage's (or executable's) resource hints and parse them.

    ``where`` names the stage and file (``stage 'x' (file f)``) for the error message.
    Keys with a ``null`` value count as unset (a dynamic ``resources`` function may
    compute ``null`` for some combinations).
    """
    if not raw:
        return _NO_RESOURCES
    unknown = sorted(k for k in raw if k not in RESOURCE_KEYS)
    if unknown:
        raise LabError(
            f"{where}: unknown resource hint keys: {unknown}; "
            f"valid keys are {', '.join(RESOURCE_KEYS)}"
        )
    values: dict[str, Any] = {}
    mem_bytes = cpu_count = time_seconds = None

    def bad(key: str, value: object, expected: str) -> LabError:
        return LabError(
            f"{where}: resource hint '{key}' has an invalid value {canonical_json(value)}; "
            f"expected {expected}"
        )

    for key in RESOURCE_KEYS:
        value = raw.get(key)
        if value is None:
            continue
        if key == "mem":
            try:
                mem_bytes = parse_mem(value)
            except ValueError:
                raise bad(key, value, 'a positive number of MiB or a number with a K, M, G '
                          'or T suffix (e.g. "8G")') from None
        elif key == "cpus":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise bad(key, value, "a positive integer")
            cpu_count = value
        elif key == "time":
            try:
                time_seconds = parse_time(value)
            except ValueError:
                raise bad(key, value, 'a positive duration: "HH:MM:SS", "MM:SS", '
                          '"D-HH:MM:SS" or a number of seconds') from None
        elif key == "partition":
            if not isinstance(value, str) or not value:
                raise bad(key, value, "a partition name (string)")
        elif not isinstance(value, list) or not all(isinstance(o, str) for o in value):
            raise bad(key, value, 'a list of strings (e.g. ["--gres=gpu:1"])')
        elif not value:
            continue
        values[key] = value
    return Resources(values, mem_bytes, cpu_count, time_seconds)


def merge_resources(own: Resources, upstream: Sequence[Resources]) -> Resources:
    """DESIGN 7: max mem/cpus/time over ``own`` and ``upstream``; partition, sbatch_opts own
    else the first upstream's. Ties keep the earlier value (own first, then deps order)."""
    if not upstream:
        return own
    mem, mem_b = own.get("mem"), own.mem_bytes
    cpus = own.cpu_count
    time, time_s = own.get("time"), own.time_seconds
    for r in upstream:
        if r.mem_bytes is not None and (mem_b is None or r.mem_bytes > mem_b):
            mem, mem_b = r["mem"], r.mem_bytes
        if r.cpu_count is not None and (cpus is None or r.cpu_count > cpus):
            cpus = r.cpu_count
        if r.time_seconds is not None and (time_s is None or r.time_seconds > time_s):
            time, time_s = r["time"], r.time_seconds
    first = upstream[0]
    merged = {
        "mem": mem,
        "cpus": cpus,
        "time": time,
        "partition": own.get("partition", first.get("partition")),
        "sbatch_opts": own.get("sbatch_opts", first.get("sbatch_opts")),
    }
    return Resources({k: v for k, v in merged.items() if v is not None}, mem_b, cpus, time_s)


# --------------------------------------------------------------------------- body rendering


def render_param(value: object) -> str:
    """A param value as the stage script renders it at run time (see nix/lib/script.nix).

    The script reads the params JSON itself, so this follows JSON text: strings
    raw, numbers and booleans as written (``true``/``false``), null empty.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return canonical_json(value)


def render_body(exe: Executable | str, params: dict[str, Any]) -> str:
    """The body of ``exe`` (an Executable or a body string) with each ``__repx_param_<p>__``
    token replaced by ``params[p]`` as ``toString`` would render it.

    Tokens of params not in ``params`` are left as they are.
    """
    body = exe if isinstance(exe, str) else exe.body
    if not params or "__repx_param_" not in body:
        return body
    names = sorted(params, key=len, reverse=True)  # longest first: "a_b" before "a"
    pattern = re.compile("|".join(re.escape(f"__repx_param_{p}__") for p in names))
    return pattern.sub(lambda m: render_param(params[m.group(0)[13:-2]]), body)


# --------------------------------------------------------------------------- the job graph


@dataclass(slots=True, eq=False)
class Job:
    """One unit of work: a stage under one effective parameter combination.

    Jobs with the same id (identical work reached from several combinations, pipelines or
    runs) are one Job; ``runs`` lists every run that produced it. ``inputs`` maps each
    input name to its source: ``{"job": id, "output": name}``, ``{"file": path}``,
    ``{"runtime": "worker__item" | "worker__outs" | "store__base"}`` or
    ``{"run_manifest": run, "jobs": [ids]}``. Dict members may be shared between jobs:
    treat them as read-only.
    """

    id: str
    pname: str
    version: str
    #: The stage's pipeline key.
    stage: str
    stage_file: str
    pipeline_file: str
    kind: str
    #: The first run that produced this job.
    run: str
    runs: list[str]
    hash_mode: str
    params: dict[str, Any]
    #: param -> "default" | "sweep:<key>" | "override:<key>" (a one-value run param)
    #: | "zip:<label>.<key>"
    param_sources: dict[str, str]
    resources: Resources
    own_resources: Resources
    #: Upstream job ids in dependency order, without repeats.
    depends_on: list[str]
    #: The producer job id of each of ``stage_def.deps`` (repeats kept; for identity).
    upstream: list[str]
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, Any]
    executables: dict[str, Executable]
    #: (run, type) of every run whose manifest this job reads (its inter-run edges).
    inter_run: list[tuple[str, str]]
    stage_def: Stage

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


# --------------------------------------------------------------------------- expansion


def load_job_graph(lab_dir: str | Path) -> JobGraph:
    """Load the lab directory and expand it (the one call most commands need)."""
    return expand_lab(load_lab(lab_dir))


def expand_lab(lab: Lab) -> JobGraph:
    """Expand every run of ``lab`` into jobs; runs are expanded after the runs they depend
    on (their job ids feed inter-run identities), ``graph.runs`` keeps the lab's order."""
    graph = JobGraph(lab)
    expanded: dict[str, RunJobs] = {}
    by_name = {r.name: r for r in lab.runs}
    for name in _run_order(lab, by_name):
        expanded[name] = _RunExpander(graph, by_name[name], expanded).expand()
    graph.runs = {n: expanded[n] for n in lab.run_names}
    return graph


def identity_parts(job: Job) -> dict[str, Any]:
    """Rebuild the object whose canonical JSON gives ``job.id`` (for tracing and tests)."""
    st = job.stage_def
    if job.hash_mode == "pure":
        code: list[Any] = ["pure", [e.script for e in st.executables.values()], job.outputs]
    else:
        code = ["params-only", job.pname, job.version, list(st.executables)]
    return {
        "code": code,
        "files": {k: v["file"] for k, v in job.inputs.items() if "file" in v},
        "inter_run": [[ir.run, ir.type, job.inputs[ir.target]["jobs"]] for ir in st.inter_run],
        "params": job.params,
        "upstream": [
            [pid, [[m.source, m.target] for m in dep.mappings]]
            for pid, dep in zip(job.upstream, st.deps, strict=True)
        ],
    }


def _run_order(lab: Lab, by_name: dict[str, Run]) -> list[str]:
    """Runs in dependency order, ties by lab.json order (which Nix already sorts)."""
    position = {n: i for i, n in enumerate(lab.run_names)}
    waiting = {
        n: {d.run for d in by_name[n].dependencies if d.run in position and d.run != n}
        for n in lab.run_names
    }
    for n in lab.run_names:
        if any(d.run == n for d in by_name[n].dependencies):
            raise LabError(f"run '{n}' (file {by_name[n].file}) depends on itself")
    order: list[str] = []
    ready = [position[n] for n, w in waiting.items() if not w]
    heapq.heapify(ready)
    while ready:
        n = lab.run_names[heapq.heappop(ready)]
        order.append(n)
        for m, w in waiting.items():
            if n in w:
                w.discard(n)
                if not w:
                    heapq.heappush(ready, position[m])
    if len(order) != len(lab.run_names):
        cycle = [n for n in lab.run_names if n not in order]
        raise LabError(f"{lab.path}/lab.json: runs depend on each other in a cycle: {cycle}")
    return order


def _topo_stages(pipeline: Pipeline) -> list[Stage]:
    """A pipeline's stages in dependency order; ties (independent stages) by key."""
    by_key: dict[str, Stage] = {}
    for s in pipeline.stages:
        if s.key in by_key:
            raise LabError(f"pipeline {pipeline.file}: two stages have the key '{s.key}'")
        by_key[s.key] = s
    waiting: dict[str, int] = {}
    consumers: dict[str, list[str]] = {k: [] for k in by_key}
    for s in pipeline.stages:
        producers = {d.stage for d in s.deps}
        for p in sorted(producers):
            if p not in by_key:
                raise LabError(
                    f"pipeline {pipeline.file}: stage '{s.key}' (pname '{s.pname}') depends "
                    f"on '{p}', which is not a stage of this pipeline; stages: "
                    f"{', '.join(sorted(by_key))}"
                )
            consumers[p].append(s.key)
        waiting[s.key] = len(producers)
    ready = [k for k, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[Stage] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(by_key[k])
        for c in consumers[k]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, c)
    if len(order) != len(by_key):
        stuck = sorted(k for k, n in waiting.items() if n > 0)
        raise LabError(
            f"pipeline {pipeline.file}: stages depend on each other in a cycle "
            f"(stages involved or downstream of it: {', '.join(stuck)})"
        )
    return order


class _Member:
    """One run param (axis or zip member) placed in the combination space."""

    __slots__ = ("key", "stage", "param", "dim", "pos", "label")

    def __init__(
        self, key: str, stage: str | None, param: str, dim: int, pos: int, label: str
    ) -> None:
        self.key, self.stage, self.param = key, stage, param
        self.dim, self.pos, self.label = dim, pos, label


class _Variant:
    """What is constant for every job of a stage with one resolved set of dynamic attrs."""

    __slots__ = ("pname", "suffix", "outputs", "own_res", "head", "template", "mapped")

    pname: str
    suffix: str
    outputs: dict[str, Any]
    own_res: Resources
    #: BLAKE3 state after the constant head of the identity JSON (copied per job).
    head: Any
    #: Input sources in name order; ``None`` where a dependency maps the input.
    template: dict[str, dict[str, Any] | None]
    #: (target input, index into deps, source output) for mapped inputs.
    mapped: list[tuple[str, int, str]]


class _Plan:
    """Everything about one stage of one pipeline that does not vary per combination."""

    __slots__ = (
        "stage", "pipeline", "dep_index", "dep_map_json", "dedupe", "param_plan", "sig_dims",
        "sig", "memo", "rows", "variants", "static", "inter_run_json", "inter_run_inputs",
        "inter_run_pairs",
    )

    stage: Stage
    pipeline: Pipeline
    dep_index: list[int]
    dep_map_json: list[str]
    dedupe: bool
    #: (param, dimension or -1, position in the dimension's row, default, source label)
    param_plan: list[tuple[str, int, int, Any, str]]
    sig_dims: frozenset[int]
    sig: Callable[[tuple[int, ...]], Any]
    memo: dict[Any, Job]
    rows: dict[str, Any] | None
    variants: dict[str, _Variant]
    static: _Variant | None
    inter_run_json: str
    inter_run_inputs: dict[str, dict[str, Any]]
    inter_run_pairs: list[tuple[str, str]]


def _constant(_idx: tuple[int, ...]) -> tuple[()]:
    return ()


def _dynamic_pname(stage: Stage) -> bool:
    return stage.dynamic is not None and "pname" in stage.dynamic.attrs


class _RunExpander:
    def __init__(
        self,
        graph: JobGraph,
        run: Run,
        expanded: dict[str, RunJobs],
    ) -> None:
        self.graph = graph
        self.run = run
        self.expanded = expanded
        # Merged resources by (id(own), *id(upstream merged)). Per run on purpose: every
        # object whose id is a key is alive until the run is expanded (held by a plan or
        # a job), so an id cannot be reused for another object while the memo exists.
        self.resource_memo: dict[tuple[int, ...], Resources] = {}
        self.plain: dict[str, _Member] = {}
        self.where = f"run '{run.name}' (file {run.file})"
        self.dims: list[tuple[tuple[Any, ...], ...]] = []

    # ---- setup

    def expand(self) -> RunJobs:
        run = self.run
        members = self._dimensions()
        targets = self._targets(members)
        pipelines = [self._plans(pi, p, targets) for pi, p in enumerate(run.pipelines)]
        run_ids: dict[str, None] = {}
        make = self._make
        for idx in product(*[range(len(d)) for d in self.dims]):
            for plans in pipelines:
                cur: list[Job] = []
                for plan in plans:
                    k = plan.sig(idx)
                    job = plan.memo.get(k)
                    if job is None:
                        job = plan.memo[k] = make(plan, idx, cur)
                        run_ids[job.id] = None
                    cur.append(job)
        return RunJobs(
            name=run.name,
            run=run,
            dependencies=[(d.run, d.type) for d in run.dependencies],
            job_ids=list(run_ids),
        )

    def _dimensions(self) -> list[_Member]:
        """Validate the run's values and lay axes then zips out as dimensions."""
        members: list[_Member] = []
        for axis in self.run.axes:
            if not axis.values:
                raise LabError(f'{self.where}: parameter "{axis.key}" has no values')
            self._check_values(axis.key, axis.values)
            label = ("sweep:" if len(axis.values) > 1 else "override:") + axis.key
            members.append(_Member(axis.key, axis.stage, axis.param, len(self.dims), 0, label))
            self.dims.append(tuple((v,) for v in axis.values))
        for z in self.run.zips:
            if not z.rows:
                raise LabError(f"{self.where}: utils.zip group '{z.label}' has no rows")
            for j, m in enumerate(z.members):
                self._check_values(m.key, [row[j] for row in z.rows], duplicates=False)
                members.append(_Member(m.key, m.stage, m.param, len(self.dims), j,
                                       f"zip:{z.label}.{m.key}"))
            seen: dict[str, int] = {}
            for i, row in enumerate(z.rows):
                text = canonical_json(list(row))
                if text in seen:
                    keys = ", ".join(m.key for m in z.members)
                    raise LabError(
                        f"{self.where}: utils.zip group '{z.label}' ({keys}) has the same row "
                        f"{text} twice (rows {seen[text] + 1} and {i + 1}). "
                        + _FLOAT_HINT
                    )
                seen[text] = i
            self.dims.append(tuple(z.rows))
        return members

    def _check_values(self, key: str, values: Iterable[Any], duplicates: bool = True) -> None:
        seen: set[str] = set()
        for v in values:
            if not isinstance(v, _SCALARS):
                raise LabError(
                    f'{self.where}: parameter "{key}" has the non-scalar value '
                    f"{canonical_json(v)}; sweep values must be strings, numbers, booleans "
                    "or null (pass structured data as a JSON string or a file)"
                )
            if duplicates:
                text = canonical_json(v)
                if text in seen:
                    raise LabError(
                        f'{self.where}: parameter "{key}" has the value {text} more than '
                        "once. " + _FLOAT_HINT
                    )
                seen.add(text)

    def _describe_stages(self) -> str:
        parts: dict[str, None] = {}
        for p in self.run.pipelines:
            for s in p.stages:
                declared = ", ".join(sorted(s.params)) or "no params"
                parts[f"{s.pname} (key '{s.key}'): {declared}"] = None
        return "; ".join(parts) or "(no stages)"

    def _targets(self, members: list[_Member]) -> dict[tuple[int, str], dict[str, _Member]]:
        """Resolve dot-notation keys to stages: per (pipeline, stage key), param -> member.

        The part before the dot names the stages whose pname or pipeline key it is (the
        rule the Nix side uses to tabulate dynamic attributes, so both agree); a dynamic
        pname is matched by key only. Naming stages of different pnames is ambiguous.
        """
        stages = [(pi, s) for pi, p in enumerate(self.run.pipelines) for s in p.stages]
        dotted: dict[tuple[int, str], dict[str, _Member]] = {}
        for m in members:
            if m.stage is None:
                if m.param in self.plain:
                    raise LabError(f'{self.where}: parameter "{m.param}" is given twice')
                self.plain[m.param] = m
                continue
            matched = [
                (pi, s) for pi, s in stages
                if s.key == m.stage or (s.pname == m.stage and not _dynamic_pname(s))
            ]
            pnames = sorted({s.pname for _, s in matched})
            if len(pnames) > 1:
                raise LabError(
                    f'{self.where}: parameter key "{m.key}" is ambiguous: \'{m.stage}\' '
                    f"names stages with different pnames ({', '.join(pnames)}); use the "
                    "pname of the one you mean"
                )
            if not matched:
                raise LabError(
                    f'{self.where}: parameter key "{m.key}" names no stage of this run '
                    f"('{m.stage}' is neither a stage pname nor a pipeline key); stages and "
                    f"their declared params: {self._describe_stages()}"
                )
            declaring = [(pi, s) for pi, s in matched if m.param in s.params]
            if not declaring:
                raise LabError(
                    f'{self.where}: parameter key "{m.key}" names stage \'{m.stage}\', which '
                    f"declares no param '{m.param}'; stages and their declared params: "
                    f"{self._describe_stages()}"
                )
            for pi, s in declaring:
                slot = dotted.setdefault((pi, s.key), {})
                if m.param in slot:
                    raise LabError(
                        f'{self.where}: parameter keys "{slot[m.param].key}" and "{m.key}" '
                        f"both set param '{m.param}' of stage '{s.pname}'"
                    )
                slot[m.param] = m
        return dotted

    def _plans(
        self, pi: int, pipeline: Pipeline, targets: dict[tuple[int, str], dict[str, _Member]]
    ) -> list[_Plan]:
        order = _topo_stages(pipeline)
        index = {s.key: i for i, s in enumerate(order)}
        plans: list[_Plan] = []
        for st in order:
            plan = _Plan()
            plan.stage, plan.pipeline = st, pipeline
            plan.dep_index = [index[d.stage] for d in st.deps]
            plan.dep_map_json = [
                canonical_json([[m.source, m.target] for m in d.mappings]) for d in st.deps
            ]
            plan.dedupe = len(set(plan.dep_index)) != len(plan.dep_index)
            own = targets.get((pi, st.key), {})
            plan.param_plan = []
            dims: set[int] = set()
            for p in sorted(st.params):
                m = own.get(p) or self.plain.get(p)
                if m is None:
                    plan.param_plan.append((p, -1, 0, st.params[p], "default"))
                else:
                    plan.param_plan.append((p, m.dim, m.pos, st.params[p], m.label))
                    dims.add(m.dim)
            for i in plan.dep_index:
                dims |= plans[i].sig_dims
            plan.sig_dims = frozenset(dims)
            ordered = sorted(dims)
            plan.sig = itemgetter(*ordered) if ordered else _constant
            plan.memo = {}
            plan.variants = {}
            self._inter_run(plan)
            what = f"stage '{st.pname}' (file {st.file})"
            if st.kind == "scatter-gather":
                for name, exe in st.executables.items():
                    validate_resources(exe.resources, f"{what}, executable '{name}'")
            if st.dynamic is None:
                plan.rows = None
                plan.static = self._variant(plan, st.pname, st.inputs, st.outputs, st.resources)
            else:
                plan.rows = {canonical_json(r.params): r for r in st.dynamic.table}
                plan.static = None
            plans.append(plan)
        return plans

    def _inter_run(self, plan: _Plan) -> None:
        st = plan.stage
        parts: list[Any] = []
        plan.inter_run_inputs = {}
        plan.inter_run_pairs = []
        for ir in st.inter_run:
            if ir.type not in DEPENDENCY_TYPES:
                raise LabError(
                    f"stage '{st.pname}' (file {st.file}) in {self.where}: dependency on run "
                    f"'{ir.run}' has unknown type '{ir.type}'; use \"hard\" or \"soft\""
                )
            upstream = self.expanded.get(ir.run)
            if upstream is None:
                raise LabError(
                    f"stage '{st.pname}' (file {st.file}) in {self.where} reads the job "
                    f"manifest of run '{ir.run}', which is not part of this lab (a per-run "
                    "slice cannot hold it); build the full lab to run it"
                )
            ids = sorted(upstream.job_ids)
            parts.append([ir.run, ir.type, ids])
            plan.inter_run_inputs[ir.target] = {"run_manifest": ir.run, "jobs": ids}
            plan.inter_run_pairs.append((ir.run, ir.type))
        plan.inter_run_json = canonical_json(parts)

    def _variant(
        self,
        plan: _Plan,
        pname: str,
        inputs: dict[str, Input],
        outputs: dict[str, Any],
        resources: dict[str, Any] | None,
    ) -> _Variant:
        st = plan.stage
        v = _Variant()
        v.pname = pname
        v.suffix = f"-{pname}-{st.version}"
        v.outputs = outputs
        v.own_res = validate_resources(resources, f"stage '{pname}' (file {st.file})")
        mapped: dict[str, tuple[int, str]] = {}
        for di, dep in enumerate(st.deps):
            for m in dep.mappings:
                if m.target in mapped:
                    raise LabError(
                        f"stage '{pname}' (file {st.file}): input '{m.target}' is mapped by "
                        f"two dependencies ('{st.deps[mapped[m.target][0]].stage}' and "
                        f"'{dep.stage}'); map it from one only"
                    )
                mapped[m.target] = (di, m.source)
        template: dict[str, dict[str, Any] | None] = {}
        files: dict[str, str] = {}
        for name in sorted(set(inputs) | set(mapped)):
            if name in mapped:
                template[name] = None
            elif name in RUNTIME_INPUTS:
                template[name] = {"runtime": name}
            elif name in plan.inter_run_inputs:
                template[name] = plan.inter_run_inputs[name]
            else:
                inp = inputs[name]
                default = inp.default
                path = inp.file
                if path is None and isinstance(default, str) and default.startswith("/"):
                    path = default
                if path is None:
                    raise self._input_error(plan, pname, name, default)
                files[name] = path
                template[name] = {"file": path}
        v.template = template
        v.mapped = [(t, di, src) for t, (di, src) in mapped.items()]
        if self.run.hash_mode == "pure":
            code: list[Any] = ["pure", [e.script for e in st.executables.values()], outputs]
        else:
            code = ["params-only", pname, st.version, list(st.executables)]
        head = (
            '{"code":' + canonical_json(code)
            + ',"files":' + canonical_json(files)
            + ',"inter_run":' + plan.inter_run_json
            + ',"params":'
        )
        v.head = blake3(head.encode())
        return v

    def _input_error(self, plan: _Plan, pname: str, name: str, default: Any) -> LabError:
        st = plan.stage
        by_key = {s.key: s for s in plan.pipeline.stages}
        available = [
            f"{by_key[d.stage].pname}.{out}" for d in st.deps for out in by_key[d.stage].outputs
        ]
        where = f"stage '{pname}' (file {st.file}) in run '{self.run.name}'"
        tail = (
            f"outputs available from its dependencies: {available}"
            if st.deps
            else "it has no dependencies (add one with callStage, or give the input a default)"
        )
        if name.startswith("metadata__"):
            other = name[len("metadata__"):]
            if any(d.run == other for d in self.run.dependencies) and st.deps:
                return LabError(
                    f"{where}: input '{name}' is the job manifest of run '{other}', which only "
                    "stages without dependencies in the pipeline receive; read it in the "
                    "first stage and pass what you need downstream"
                )
            return LabError(
                f"{where}: input '{name}' is the job manifest of run '{other}', but run "
                f"'{self.run.name}' does not depend on that run; add it to callRun's "
                "dependencies"
            )
        if default is None or default == "":
            return LabError(
                f"{where}: input '{name}' is required (empty default) but no dependency "
                f"provides it; {tail}"
            )
        if isinstance(default, str) and default.startswith("$out"):
            return LabError(
                f"{where}: input '{name}' defaults to '{default}' (an upstream stage's "
                f"output) but no dependency provides it; {tail}"
            )
        if isinstance(default, str):
            return LabError(
                f"{where}: input '{name}': default '{default}' not found beside {st.file} "
                f"and no dependency provides it; {tail}"
            )
        return LabError(
            f"{where}: input '{name}' has the default {canonical_json(default)}, which is not "
            f"a file path, and no dependency provides it; {tail}"
        )

    def _dynamic_variant(self, plan: _Plan, params_json: str) -> _Variant:
        v = plan.variants.get(params_json)
        if v is not None:
            return v
        assert plan.rows is not None
        row = plan.rows.get(params_json)
        if row is None:
            st = plan.stage
            known = list(plan.rows)[:5]
            raise LabError(
                f"stage '{st.pname}' (file {st.file}) in {self.where}: the lab has no dynamic "
                f"attributes (pname/inputs/outputs/resources) for the params {params_json}; "
                f"known rows start with {known}. The Nix side and this repx disagree on the "
                "effective params: rebuild the lab with this version of repx"
            )
        v = self._variant(plan, row.pname, row.inputs, row.outputs, row.resources)
        plan.variants[params_json] = v
        return v

    # ---- per job

    def _make(self, plan: _Plan, idx: tuple[int, ...], cur: list[Job]) -> Job:
        dims = self.dims
        params: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, dim, pos, default, label in plan.param_plan:
            if dim < 0:
                params[name] = default
                sources[name] = "default"
            else:
                value = dims[dim][idx[dim]][pos]
                if value is None:
                    params[name] = default
                    sources[name] = "default"
                else:
                    params[name] = value
                    sources[name] = label
        params_json = canonical_json(params)
        v = plan.static or self._dynamic_variant(plan, params_json)
        producers = [cur[i] for i in plan.dep_index]
        if producers:
            upstream_json = "[" + ",".join([
                "[" + encode_basestring(p.id) + "," + mj + "]"
                for p, mj in zip(producers, plan.dep_map_json, strict=True)
            ]) + "]"
        else:
            upstream_json = "[]"
        h = v.head.copy()
        h.update((params_json + ',"upstream":' + upstream_json + "}").encode())
        jid = nix32_of_digest(h.digest(20)) + v.suffix
        graph = self.graph
        job = graph.jobs.get(jid)
        run = self.run
        if job is not None:
            if run.name not in job.runs:
                job.runs.append(run.name)
            return job
        inputs = dict(v.template)
        for target, di, src in v.mapped:
            inputs[target] = {"job": producers[di].id, "output": src}
        upstream = [p.id for p in producers]
        depends_on = list(dict.fromkeys(upstream)) if plan.dedupe else upstream
        if producers:
            key = (id(v.own_res), *[id(p.resources) for p in producers])
            merged = self.resource_memo.get(key)
            if merged is None:
                merged = merge_resources(v.own_res, [p.resources for p in producers])
                self.resource_memo[key] = merged
        else:
            merged = v.own_res
        st = plan.stage
        job = Job(
            id=jid,
            pname=v.pname,
            version=st.version,
            stage=st.key,
            stage_file=st.file,
            pipeline_file=plan.pipeline.file,
            kind=st.kind,
            run=run.name,
            runs=[run.name],
            hash_mode=run.hash_mode,
            params=params,
            param_sources=sources,
            resources=merged,
            own_resources=v.own_res,
            depends_on=depends_on,
            upstream=upstream,
            inputs=inputs,  # type: ignore[arg-type]
            outputs=v.outputs,
            executables=st.executables,
            inter_run=plan.inter_run_pairs,
            stage_def=st,
        )
        graph.jobs[jid] = job
        return job


_FLOAT_HINT = (
    "Nix 2.8 prints floats with 6 significant digits, so values such as 0.1234567 and "
    "0.1234568 both become 0.123457 and would silently run as one job; write such values "
    'as strings (e.g. "0.1234567") to keep them distinct, or remove the duplicate.'
)
