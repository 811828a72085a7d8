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
  id exists before its consumer is hashed (ordering stages by name instead would let a
  consumer named before its producer miss the producer's changes).
* **Identity**: what a job hashes is defined in :mod:`repx.identity` (``code_part``,
  ``identity_head``, ``identity_tail``); this module only feeds it the values.
* **Resources** (:mod:`repx.lab.resources`): merged along the pipeline.

Speed matters (a 10 000-combination sweep must expand in well under a second), so
everything that does not vary per job is computed once per stage (or per dynamic
variant): the constant head of the identity JSON is fed to a BLAKE3 hasher once and the
hasher is copied per job; a stage's jobs are memoised on the indices of the dimensions
that can influence it (its own params and those of its upstream stages), so a stage that
depends on one axis is hashed once per value of that axis, not once per combination.
A job's params JSON is joined from its values' JSON, encoded once per sweep value. A lab
of a million jobs must fit in a few hundred MB, so what a stage's jobs share is one
:class:`~repx.lab.graph.StageShape` and one dict or list (read-only) where the values are
the same, and the cyclic garbage collector pauses while the graph grows (it would walk it
again and again, and it holds no cycles). tests/test_expand_reference.py checks every
shortcut against the plain definitions.
"""

from __future__ import annotations

import gc
import heapq
from array import array
from collections.abc import Callable, Iterable, Sequence
from itertools import product
from json.encoder import encode_basestring
from operator import itemgetter
from pathlib import Path
from typing import Any

from blake3 import blake3

from repx.errors import LabError
from repx.identity import (
    canonical_json,
    code_part,
    identity_head,
    identity_tail,
    nix32_of_digest,
    scalar_json,
)
from repx.lab.blueprint import (
    DEPENDENCY_TYPES,
    Executable,
    Input,
    Lab,
    Pipeline,
    Run,
    Stage,
    load_lab,
)
from repx.lab.expansion_memo import ExpansionMemo, RunMemo, memo_key, value_key
from repx.lab.graph import Job, JobGraph, RunJobs, StageShape
from repx.lab.outputs import check_output_templates
from repx.lab.resources import Resources, merge_resources, validate_resources

#: Inputs the runtime provides (scatter-gather plumbing and the store base directory).
RUNTIME_INPUTS = frozenset({"worker__item", "worker__outs", "store__base"})

_SCALARS = (str, int, float, bool, type(None))

#: ``upstream`` and ``depends_on`` of every job without producers (read-only, shared).
_NO_IDS: list[str] = []
#: The producers of a job of a stage without dependencies (read-only, shared).
_NO_JOBS: list[Job] = []




def load_job_graph(lab_dir: str | Path) -> JobGraph:
    """Load the lab directory and expand it (the one call most commands need)."""
    return expand_lab(load_lab(lab_dir))


def expand_lab(lab: Lab, *, into: JobGraph | None = None,
               reuse: ExpansionMemo | None = None) -> JobGraph:
    """Expand every run of ``lab`` into jobs; runs are expanded after the runs they depend
    on (their job ids feed inter-run identities), ``graph.runs`` keeps the lab's order.

    ``into`` is a fresh ``JobGraph(lab)`` to fill instead of a new one: a progress line can
    then count its ``jobs`` from another thread while they are made. ``reuse`` is an
    earlier expansion whose ids the combinations it already held take
    (:mod:`repx.lab.expansion_memo`); the graph is the same with or without it.
    """
    graph = JobGraph(lab) if into is None else into
    if graph.jobs or graph.lab is not lab:
        raise ValueError("expand_lab(into=...) takes a fresh JobGraph of the same lab")
    by_name = {r.name: r for r in lab.runs}
    # Expansion makes millions of objects that all stay alive, no cycles among them: the
    # cyclic collector would walk the growing graph again and again for nothing (a third of
    # the time at 200 000 jobs), so it pauses meanwhile.
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            expanded = _expand_runs(graph, lab, by_name, reuse)
        except _StaleMemo:
            # A reused id differed from its hash: the memo is not this lab's after all.
            graph.jobs.clear()
            graph.expansion_memo.clear()
            graph.reused_ids = 0
            expanded = _expand_runs(graph, lab, by_name, None)
    finally:
        if collecting:
            gc.enable()
    graph.runs = {n: expanded[n] for n in lab.run_names}
    return graph


class _StaleMemo(Exception):
    """A job id read from an expansion memo is not the id its hash gives."""


def _expand_runs(graph: JobGraph, lab: Lab, by_name: dict[str, Run],
                 reuse: ExpansionMemo | None) -> dict[str, RunJobs]:
    expanded: dict[str, RunJobs] = {}
    for name in _run_order(lab, by_name):
        expanded[name] = _RunExpander(graph, by_name[name], expanded, reuse).expand()
    return expanded


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

    __slots__ = ("pname", "suffix", "outputs", "executables", "own_res", "head", "template",
                 "mapped", "shape")

    pname: str
    suffix: str
    outputs: dict[str, Any]
    executables: dict[str, Executable]
    own_res: Resources
    #: BLAKE3 state after the constant head of the identity JSON (copied per job).
    head: Any
    #: Input sources in name order; ``None`` where a dependency maps the input.
    template: dict[str, dict[str, Any] | None]
    #: (target input, index into deps, source output) for mapped inputs.
    mapped: list[tuple[str, int, str]]
    #: What the variant's jobs share (one object for all of them).
    shape: StageShape


class _StagePlan:
    """Everything about one stage of one pipeline that does not vary per combination."""

    __slots__ = (
        "stage", "pipeline", "dep_index", "dep_map_json", "dedupe", "param_plan", "sig_dims",
        "sig", "memo", "rows", "variants", "static", "inter_run_json", "inter_run_inputs",
        "inter_run_pairs", "sources_memo", "sources", "no_params",
    )

    stage: Stage
    pipeline: Pipeline
    dep_index: list[int]
    dep_map_json: list[str]
    dedupe: bool
    #: (param, dimension or -1, position in the dimension's row, default, source label,
    #: ``"<param JSON>":``, canonical JSON of the default): the JSON fragments let a job's
    #: params JSON be joined from pieces instead of encoded again per job.
    param_plan: list[tuple[str, int, int, Any, str, str, str]]
    #: The param-sources dicts already made, by their values (jobs share them read-only;
    #: a stage usually has one).
    sources_memo: dict[tuple[str, ...], dict[str, str]]
    #: The param sources of every job whose swept values are not null (read-only, shared).
    sources: dict[str, str]
    sig_dims: frozenset[int]
    sig: Callable[[tuple[int, ...]], Any]
    #: Jobs (and their positions in the graph) by the indices of the dimensions that reach
    #: the stage; None when all do.
    memo: dict[Any, tuple[Job, int]] | None
    #: The one (read-only) params dict of a stage that declares no params.
    no_params: dict[str, Any] | None
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


def _check_outputs(stage: Stage, what: str) -> None:
    """Every output template a stage declares follows the one rule of
    :func:`repx.lab.outputs.output_relpath` (it names a file of the job's own ``out/``):
    the static outputs, or each row of a ``{ params }:`` outputs function, and a
    scatter-gather's scatter and step outputs. Checked once per stage, before any job."""
    if stage.dynamic is not None and "outputs" in stage.dynamic.attrs:
        for row in stage.dynamic.table:
            check_output_templates(row.outputs,
                                   f"{what}, for params {canonical_json(row.params)}")
    else:
        check_output_templates(stage.outputs, what)
    for exe in stage.executables.values():
        if exe.name == "scatter":
            check_output_templates(exe.outputs, f"{what}, scatter", scatter=True)
        elif exe.step is not None:
            check_output_templates(exe.outputs, f"{what}, step '{exe.step}'")


class _RunExpander:
    def __init__(
        self,
        graph: JobGraph,
        run: Run,
        expanded: dict[str, RunJobs],
        reuse: ExpansionMemo | None = None,
    ) -> None:
        self.graph = graph
        self.run = run
        self.expanded = expanded
        self.reuse = reuse
        # Merged resources by (id(own), *id(upstream merged)). Per run on purpose: every
        # object whose id is a key is alive until the run is expanded (held by a plan or
        # a job), so an id cannot be reused for another object while the memo exists.
        self.resource_memo: dict[tuple[int, ...], Resources] = {}
        self.plain: dict[str, _Member] = {}
        #: ``Job.runs`` of the jobs this run makes first: one list for all of them (a job a
        #: later run reaches too gets a list of its own then).
        self.run_list = [run.name]
        self.where = f"run '{run.name}' (file {run.file})"
        self.dims: list[tuple[tuple[Any, ...], ...]] = []
        #: ``dims`` with every value as its canonical JSON (encoded once per value, not
        #: once per job that uses it).
        self.dims_json: list[tuple[tuple[str, ...], ...]] = []

    # ---- setup

    def expand(self) -> RunJobs:
        run = self.run
        members = self._dimensions()
        targets = self._targets(members)
        pipelines = [self._stage_plans(pi, p, targets) for pi, p in enumerate(run.pipelines)]
        run_ids: dict[str, None] = {}
        key = self._memo_key(pipelines)
        stages = sum(len(plans) for plans in pipelines)
        earlier = self._earlier(key, stages)
        # Per combination and stage plan, the job's position in the graph: the cells of
        # this run's memo.
        cells: array[int] = array("I")
        whole = self._make_jobs(pipelines, earlier, run_ids, cells.append)
        if key is not None and whole:
            self.graph.expansion_memo[run.name] = RunMemo(
                key, [[value_key(v) for v in d] for d in self.dims_json], stages, cells)
        return RunJobs(
            name=run.name,
            run=run,
            dependencies=[(d.run, d.type) for d in run.dependencies],
            job_ids=list(run_ids),
        )

    def _memo_key(self, pipelines: list[list[_StagePlan]]) -> str | None:
        """The run's :func:`~repx.lab.expansion_memo.memo_key`; None when a stage varies by
        value (its variants, and their heads, are per combination)."""
        plans = [plan for plans in pipelines for plan in plans]
        if any(plan.static is None for plan in plans):
            return None
        return memo_key(self.run, [(plan.static.head.digest(), plan.static.suffix)
                                   for plan in plans if plan.static is not None])

    def _earlier(self, key: str | None,
                 stages: int) -> tuple[RunMemo, list[list[int]]] | None:
        """The memo of this run when it was expanded under the same key (with ``stages``
        stage plans), and per dimension where each of today's values was then (-1: new)."""
        if key is None or self.reuse is None:
            return None
        memo = self.reuse.runs.get(self.run.name)
        if memo is None or memo.key != key or len(memo.dims) != len(self.dims_json):
            return None
        combinations = 1
        for values in memo.dims:
            combinations *= len(values)
        if memo.stages != stages or len(memo.cells) != combinations * stages or (
                memo.cells and max(memo.cells) >= len(self.reuse.ids)):
            return None
        places = []
        for then, now in zip(memo.dims, self.dims_json, strict=True):
            position = {v: i for i, v in enumerate(then)}
            places.append([position.get(value_key(v), -1) for v in now])
        return memo, places

    def _make_jobs(self, pipelines: list[list[_StagePlan]],
                   earlier: tuple[RunMemo, list[list[int]]] | None,
                   run_ids: dict[str, None], record: Callable[[int], None]) -> bool:
        """Make every combination's jobs, in order, recording each job's position in the
        graph; False when a job was found already made (reached by another run or pipeline:
        it has no position of its own, and the run keeps no memo).

        With ``earlier`` (:meth:`_earlier`), a combination the memo holds takes its ids from
        it; a few of them, spread over the run, are hashed anyway and must give the ids
        read (else :class:`_StaleMemo`).
        """
        places: list[list[int]] | None = None
        ids: Sequence[str] = ()
        cells: array[int] = array("I")
        stages = 0
        strides: list[int] = []
        if earlier is not None and self.reuse is not None:
            memo, places = earlier
            ids, cells, stages = self.reuse.ids, memo.cells, memo.stages
            # Row-major: the last dimension's values are adjacent.
            strides = [1] * len(memo.dims)
            for d in range(len(memo.dims) - 2, -1, -1):
                strides[d] = strides[d + 1] * len(memo.dims[d + 1])
        combinations = 1
        for d in self.dims:
            combinations *= len(d)
        # Of the combinations found in the memo: every other one in a small run, about 8
        # in a large one, the first included.
        check_every = max(2, combinations // 8)
        found = 0
        make = self._make
        jobs = self.graph.jobs
        whole = True
        reused = 0
        for idx in product(*[range(len(d)) for d in self.dims]):
            then = -1  # the combination's place in the memo
            check = False
            if places is not None:
                then = 0
                for d, i in enumerate(idx):
                    p = places[d][i]
                    if p < 0:
                        then = -1
                        break
                    then += p * strides[d]
                if then >= 0:
                    check = found % check_every == 0
                    found += 1
            cell = then * stages
            for plans in pipelines:
                cur: list[Job] = []
                for plan in plans:
                    by_sig = plan.memo
                    hit = None
                    if by_sig is not None:
                        k = plan.sig(idx)
                        hit = by_sig.get(k)
                    if hit is None:
                        known = ids[cells[cell]] if then >= 0 and not check else None
                        at = len(jobs)
                        job = make(plan, idx, cur, known)
                        whole = whole and len(jobs) > at
                        run_ids[job.id] = None
                        reused += known is not None
                        if by_sig is not None:
                            by_sig[k] = (job, at)
                    else:
                        job, at = hit
                    if check and job.id != ids[cells[cell]]:
                        raise _StaleMemo(job.id)
                    cur.append(job)
                    record(at)
                    cell += 1
        self.graph.reused_ids += reused
        return whole

    def _dimensions(self) -> list[_Member]:
        """Validate the run's values and lay axes then zips out as dimensions."""
        members: list[_Member] = []
        for axis in self.run.axes:
            if not axis.values:
                raise LabError(f'{self.where}: parameter "{axis.key}" has no values')
            texts = self._check_values(axis.key, axis.values)
            label = ("sweep:" if len(axis.values) > 1 else "override:") + axis.key
            members.append(_Member(axis.key, axis.stage, axis.param, len(self.dims), 0, label))
            self.dims.append(tuple((v,) for v in axis.values))
            self.dims_json.append(tuple((t,) for t in texts))
        for z in self.run.zips:
            if not z.rows:
                raise LabError(f"{self.where}: utils.zip group '{z.label}' has no rows")
            columns = []
            for j, m in enumerate(z.members):
                columns.append(self._check_values(m.key, [row[j] for row in z.rows],
                                                  duplicates=False))
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
            self.dims_json.append(tuple(zip(*columns, strict=True)))
        return members

    def _check_values(self, key: str, values: Iterable[Any],
                      duplicates: bool = True) -> list[str]:
        """Check one param's values; return their canonical JSON texts, in order."""
        seen: set[str] = set()
        texts: list[str] = []
        for v in values:
            if not isinstance(v, _SCALARS):
                raise LabError(
                    f'{self.where}: parameter "{key}" has the non-scalar value '
                    f"{canonical_json(v)}; sweep values must be strings, numbers, booleans "
                    "or null (pass structured data as a JSON string or a file)"
                )
            text = scalar_json(v)
            if duplicates:
                if text in seen:
                    raise LabError(
                        f'{self.where}: parameter "{key}" has the value {text} more than '
                        "once. " + _FLOAT_HINT
                    )
                seen.add(text)
            texts.append(text)
        return texts

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

    def _stage_plans(
        self, pi: int, pipeline: Pipeline, targets: dict[tuple[int, str], dict[str, _Member]]
    ) -> list[_StagePlan]:
        order = _topo_stages(pipeline)
        index = {s.key: i for i, s in enumerate(order)}
        plans: list[_StagePlan] = []
        for st in order:
            plan = _StagePlan()
            plan.stage, plan.pipeline = st, pipeline
            plan.dep_index = [index[d.stage] for d in st.deps]
            plan.dep_map_json = [
                canonical_json([[m.source, m.target] for m in d.mappings]) for d in st.deps
            ]
            plan.dedupe = len(set(plan.dep_index)) != len(plan.dep_index)
            own = targets.get((pi, st.key), {})
            plan.param_plan = []
            dims: set[int] = set()
            # Sorted by name: the order canonical JSON writes the params object's keys in.
            for p in sorted(st.params):
                m = own.get(p) or self.plain.get(p)
                default = st.params[p]
                fragments = (encode_basestring(p) + ":", canonical_json(default))
                if m is None:
                    plan.param_plan.append((p, -1, 0, default, "default", *fragments))
                else:
                    plan.param_plan.append((p, m.dim, m.pos, default, m.label, *fragments))
                    dims.add(m.dim)
            plan.sources_memo = {}
            plan.sources = {entry[0]: entry[4] for entry in plan.param_plan}
            for i in plan.dep_index:
                dims |= plans[i].sig_dims
            plan.sig_dims = frozenset(dims)
            ordered = sorted(dims)
            plan.sig = itemgetter(*ordered) if ordered else _constant
            # A stage that every dimension reaches has a job per combination: nothing to
            # memoise (and a million-entry memo to spare).
            plan.memo = {} if len(dims) < len(self.dims) else None
            plan.variants = {}
            plan.no_params = {} if not plan.param_plan else None
            self._inter_run(plan)
            what = f"stage '{st.pname}' (file {st.file})"
            _check_outputs(st, what)
            if st.kind == "scatter-gather":
                for name, exe in st.executables.items():
                    validate_resources(exe.resources, f"{what}, executable '{name}'")
            if st.dynamic is None:
                plan.rows = None
                plan.static = self._variant(plan, st.pname, st.inputs, st.outputs, st.resources,
                                            st.executables)
            else:
                plan.rows = {canonical_json(r.params): r for r in st.dynamic.table}
                plan.static = None
            plans.append(plan)
        return plans

    def _inter_run(self, plan: _StagePlan) -> None:
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
        plan: _StagePlan,
        pname: str,
        inputs: dict[str, Input],
        outputs: dict[str, Any],
        resources: dict[str, Any] | None,
        executables: dict[str, Executable],
    ) -> _Variant:
        st = plan.stage
        v = _Variant()
        v.pname = pname
        v.suffix = f"-{pname}-{st.version}"
        v.outputs = outputs
        v.executables = executables
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
        run = self.run
        v.shape = StageShape(
            pname=pname, version=st.version, stage=st.key, stage_file=st.file,
            pipeline_file=plan.pipeline.file, kind=st.kind, run=run.name,
            hash_mode=run.hash_mode, outputs=outputs, executables=executables,
            own_resources=v.own_res, inter_run=plan.inter_run_pairs, stage_def=st,
            template=template,
            mapped=tuple(v.mapped),
        )
        code = code_part(self.run.hash_mode, executables, outputs, pname, st.version)
        v.head = blake3(identity_head(code, files, plan.inter_run_json).encode())
        return v

    def _input_error(self, plan: _StagePlan, pname: str, name: str, default: Any) -> LabError:
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

    def _dynamic_variant(self, plan: _StagePlan, params_json: str) -> _Variant:
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
                "attributes (pname/inputs/outputs/resources/executables) for the params "
                f"{params_json}; "
                f"known rows start with {known}. The Nix side and this repx disagree on the "
                "effective params: rebuild the lab with this version of repx"
            )
        v = self._variant(plan, row.pname, row.inputs, row.outputs, row.resources,
                          row.executables)
        plan.variants[params_json] = v
        return v

    # ---- per job

    def _null_sources(self, plan: _StagePlan, idx: tuple[int, ...]) -> dict[str, str]:
        """The param sources of a job where a swept value is null (its param takes the
        default): one dict per distinct set of such params."""
        labels = tuple(
            label if dim >= 0 and self.dims[dim][idx[dim]][pos] is not None else "default"
            for _name, dim, pos, _default, label, _key, _default_json in plan.param_plan
        )
        sources = plan.sources_memo.get(labels)
        if sources is None:
            names = [entry[0] for entry in plan.param_plan]
            sources = plan.sources_memo[labels] = dict(zip(names, labels, strict=True))
        return sources

    def _make(self, plan: _StagePlan, idx: tuple[int, ...], cur: list[Job],
              known: str | None = None) -> Job:
        """The job of ``plan`` for the combination ``idx`` (``cur``: the combination's jobs
        of the stages before it). ``known`` is its id read from an expansion memo: then
        its params and upstream JSON are not made and nothing is hashed."""
        dims, dims_json = self.dims, self.dims_json
        params: dict[str, Any] = {} if plan.no_params is None else plan.no_params
        pieces: list[str] = []
        nulls = False
        for name, dim, pos, default, _label, key_json, default_json in plan.param_plan:
            if dim >= 0:
                value = dims[dim][idx[dim]][pos]
                if value is not None:
                    params[name] = value
                    pieces.append(key_json + dims_json[dim][idx[dim]][pos])
                    continue
                nulls = True
            params[name] = default
            pieces.append(key_json + default_json)
        sources = plan.sources if not nulls else self._null_sources(plan, idx)
        dep_index = plan.dep_index
        if not dep_index:
            producers: list[Job] = _NO_JOBS
        elif len(dep_index) == 1:
            producers = [cur[dep_index[0]]]
        else:
            producers = [cur[i] for i in dep_index]
        if known is not None and plan.static is not None:
            v = plan.static
            jid = known
        else:
            # Byte for byte canonical_json(params): keys in sorted order, each value's
            # canonical JSON (tests/test_expand_reference.py checks it against the encoder).
            params_json = "{" + ",".join(pieces) + "}"
            v = plan.static or self._dynamic_variant(plan, params_json)
            if not producers:
                upstream_json = "[]"
            elif len(producers) == 1:
                # One producer (a chain, the common shape): the same text without the join.
                upstream_json = ("[[" + encode_basestring(producers[0].id) + ","
                                 + plan.dep_map_json[0] + "]]")
            else:
                upstream_json = "[" + ",".join([
                    "[" + encode_basestring(p.id) + "," + mj + "]"
                    for p, mj in zip(producers, plan.dep_map_json, strict=True)
                ]) + "]"
            h = v.head.copy()
            h.update(identity_tail(params_json, upstream_json).encode())
            jid = nix32_of_digest(h.digest(20)) + v.suffix
        graph = self.graph
        job = graph.jobs.get(jid)
        run = self.run
        if job is not None:
            if run.name not in job.runs:
                # A new list: the first run's jobs share one (``self.run_list``).
                job.runs = [*job.runs, run.name]
            return job
        if not producers:
            upstream = _NO_IDS
            merged = v.own_res
        else:
            if len(producers) == 1:
                upstream = [producers[0].id]
                key: tuple[int, ...] = (id(v.own_res), id(producers[0].resources))
            else:
                upstream = [p.id for p in producers]
                key = (id(v.own_res), *[id(p.resources) for p in producers])
            merged = self.resource_memo.get(key)
            if merged is None:
                merged = merge_resources(v.own_res, [p.resources for p in producers])
                self.resource_memo[key] = merged
        depends_on = list(dict.fromkeys(upstream)) if plan.dedupe else upstream
        job = Job(jid, v.shape, self.run_list, params, sources, merged, depends_on, upstream)
        graph.jobs[jid] = job
        return job


_FLOAT_HINT = (
    "Nix 2.8 prints floats with 6 significant digits, so values such as 0.1234567 and "
    "0.1234568 both become 0.123457 and would silently run as one job; write such values "
    'as strings (e.g. "0.1234567") to keep them distinct, or remove the duplicate.'
)
