"""Why a job runs: explained plans (``repx build --dry-run --explain``, ``repx explain``).

The plan (:mod:`repx.engine.plan`) knows *that* a job runs — its id is not in the store,
it failed before, an output is missing. A new id only says that *something* in the job's
identity changed; which part changed needs the identity of the job that held the same
**place** before. A place is (run, pipeline, stage, the job's swept param values, the places
of its upstream jobs): it survives every change that is not a change of sweep values, so
the job at a place in the last build is the one a new job replaces.

What the comparison needs is kept per built lab in a **snapshot**: per job its id, runs,
params, their sources and upstream ids (places are computed from these when explaining),
and per stage variant the other identity parts (scripts with their bodies and
runDependencies, outputs, input files, inter-run ids, wiring). A built lab
directory is a Nix store path and never changes, so the snapshot of a lab is written once,
by the first full build of that lab (:func:`record_build`), in ``<store>/explain/``; a no-op
rebuild writes nothing. The store's meta ``explain_history`` lists the labs built, newest
first, and ``last_build`` (written by every build, the no-op one included) names the latest.
"""

from __future__ import annotations

import difflib
import functools
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from blake3 import blake3

from repx.identity import canonical_json
from repx.lab.graph import Job, JobGraph
from repx.store import Status, Store

#: Bump when the snapshot layout changes (older files are then ignored).
SNAPSHOT_FORMAT = 2
#: Store meta key of the labs built into this store, newest first.
HISTORY_KEY = "explain_history"
#: How many earlier labs the explanation may look back through.
HISTORY_LENGTH = 8
#: Folder of a store that holds the snapshots.
SNAPSHOT_DIR = "explain"

#: Param sources that are coordinates of a place (values a sweep or zip enumerates) are
#: "sweep:<key>" and "zip:<label>.<key>"; "default" and "override:<key>" are not.
_SWEPT = ("sweep:", "zip:")


# ------------------------------------------------------------------------------ snapshots


def snapshot_path(store_root: Path, lab_path: str) -> Path:
    """Where the snapshot of the lab built from ``lab_path`` lives in a store."""
    key = blake3(lab_path.encode()).hexdigest()[:32]
    return Path(store_root) / SNAPSHOT_DIR / f"{key}.msgpack"


#: What a place is made of, per job, producers before consumers: (id, runs, pipeline
#: file, stage key, params, param sources, upstream ids).
PlaceRow = tuple[str, list[str], str, str, dict[str, Any], dict[str, str], list[str]]


def places_of(rows: Iterable[PlaceRow],
              pipelines: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every job's places (one per run that produces it), from ``rows`` in an order where
    each producer precedes its consumers (expansion order is one: runs are expanded after
    the runs they read, a stage's producers before it).

    ``pipelines`` lists each run's pipeline files: a pipeline counts by its position in
    the run, not its file, so moving the project or editing the pipeline file moves no job.
    Computed when explaining, not when building: the build only keeps the rows.
    """
    places: dict[tuple[str, str], str] = {}
    result: dict[str, list[str]] = {}
    index = {(run, f): str(i) for run, files in pipelines.items() for i, f in enumerate(files)}
    encode = canonical_json
    for job_id, runs, pipeline_file, stage, params, sources, upstream in rows:
        swept = encode([[p, v] for p, v in params.items()
                        if sources.get(p, "").startswith(_SWEPT)])
        mine: list[str] = []
        for run in runs:
            ups = ",".join([places.get((up, run), up) for up in upstream])
            pipeline = index.get((run, pipeline_file), pipeline_file)
            text = "\0".join([run, pipeline, stage, swept, ups])
            place = blake3(text.encode()).hexdigest()[:24]
            places[(job_id, run)] = place
            mine.append(place)
        result[job_id] = mine
    return result


def _pipelines(graph: JobGraph) -> dict[str, list[str]]:
    return {name: [p.file for p in r.run.pipelines] for name, r in graph.runs.items()}


def _graph_places(graph: JobGraph) -> dict[str, list[str]]:
    """The places of every job of ``graph``."""
    return places_of(((j.id, j.runs, j.pipeline_file, j.stage, j.params, j.param_sources,
                       j.upstream) for j in graph.jobs.values()), _pipelines(graph))


def _stage_entry(job: Job) -> dict[str, Any]:
    """The identity parts a stage variant shares with all of its jobs."""
    return {
        "stage": job.stage,
        "pipeline": job.pipeline_file,
        "pname": job.pname,
        "version": job.version,
        "hash_mode": job.hash_mode,
        "outputs": job.outputs,
        "files": {k: v["file"] for k, v in job.inputs.items() if "file" in v},
        "inter_run": {ir.run: job.inputs[ir.target]["jobs"] for ir in job.stage_def.inter_run},
        "scripts": {n: e.script for n, e in job.executables.items()},
        "bodies": {n: e.body for n, e in job.executables.items()},
        "deps": {n: list(e.run_dependencies) for n, e in job.executables.items()},
        "wiring": [[d.stage, [[m.source, m.target] for m in d.mappings]]
                   for d in job.stage_def.deps],
    }


def build_snapshot(graph: JobGraph) -> dict[str, Any]:
    """What later explanations need from this lab (see the module doc), as plain data."""
    stage_index: dict[tuple[Any, ...], int] = {}
    stages: list[dict[str, Any]] = []
    jobs: list[list[Any]] = []
    # The jobs of a stage variant share one StageShape, which holds everything the variant
    # key is made of: the key is made once per shape (ids are stable: the graph holds them).
    by_shape: dict[int, int] = {}
    for job in graph.jobs.values():
        index = by_shape.get(id(job.shape))
        if index is None:
            key = _variant_key(job)
            index = stage_index.get(key)
            if index is None:
                index = stage_index[key] = len(stages)
                stages.append(_stage_entry(job))
            by_shape[id(job.shape)] = index
        # Existing objects only: msgpack packs them in C, so a 10 000-job lab costs the
        # build a few tens of milliseconds, once per lab.
        jobs.append([job.id, index, job.params, job.param_sources, job.upstream, job.runs])
    return {"format": SNAPSHOT_FORMAT, "lab": str(graph.lab.path), "stages": stages,
            "pipelines": _pipelines(graph), "jobs": jobs}


def record_build(store: Store, graph: JobGraph) -> None:
    """Keep the snapshot of the lab being built (once per lab) and put it first in the
    store's build history. Failures to write are ignored: explanations are an aid."""
    lab_path = str(graph.lab.path)
    path = snapshot_path(store.root, lab_path)
    if not path.exists():
        try:
            data = msgpack.packb(build_snapshot(graph))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            return
    history = (store.get_meta(HISTORY_KEY) or {}).get("labs", [])
    if history[:1] != [lab_path]:
        labs = [lab_path, *[h for h in history if h != lab_path]][:HISTORY_LENGTH]
        store.set_meta(HISTORY_KEY, {"labs": labs})


@dataclass
class OldJob:
    """A job of an earlier build, as its snapshot keeps it."""

    id: str
    stage: dict[str, Any]
    params: dict[str, Any]
    upstream: list[str]
    run: str


class Snapshot:
    """A loaded snapshot: jobs by id and by place."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.lab: str = data["lab"]
        stages = data["stages"]
        self.jobs: dict[str, OldJob] = {}
        rows: list[PlaceRow] = []
        for job_id, index, params, sources, upstream, runs in data["jobs"]:
            stage = stages[index]
            self.jobs[job_id] = OldJob(job_id, stage, params, upstream, runs[0])
            rows.append((job_id, runs, stage["pipeline"], stage["stage"], params, sources,
                         upstream))
        self.places: dict[str, str] = {
            place: job_id
            for job_id, places in places_of(rows, data["pipelines"]).items()
            for place in places}

    @classmethod
    def load(cls, path: Path) -> Snapshot | None:
        """The snapshot at ``path``; None when it is missing or of another format."""
        try:
            data = msgpack.unpackb(path.read_bytes(), strict_map_key=False)
        except (OSError, ValueError, msgpack.ExtraData):
            return None
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            return None
        try:
            return cls(data)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            # Damaged or foreign: explanations fall back to older builds or "new".
            return None


def build_history(store: Store | None) -> list[Snapshot]:
    """Snapshots of the labs built into ``store``, newest first (the latest build's lab
    first even when that build was a no-op, which records nothing but ``last_build``)."""
    if store is None:
        return []
    labs: list[str] = []
    last = store.get_meta("last_build")
    if last and last.get("lab"):
        labs.append(last["lab"])
    labs += (store.get_meta(HISTORY_KEY) or {}).get("labs", [])
    snapshots: list[Snapshot] = []
    for lab in dict.fromkeys(labs):
        snap = Snapshot.load(snapshot_path(store.root, lab))
        if snap is not None:
            snapshots.append(snap)
    return snapshots


# ---------------------------------------------------------------------------- explaining


@dataclass
class Change:
    """One part of a job's identity that differs from the job at its place before.

    ``detail`` is what ``--json`` adds to ``kind`` and ``text``; keys starting with ``_``
    hold objects for rendering only (an upstream change's root ``Change`` list).
    """

    #: "script", "param", "upstream", "runDependencies", "hash mode", "wiring",
    #: "outputs", "input file", "inter-run", "version" or "identity".
    kind: str
    text: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text,
                **{k: v for k, v in self.detail.items() if not k.startswith("_")}}


@dataclass
class JobExplanation:
    """Why one job runs (or that it does not)."""

    job: str
    run: str
    stage: str
    pname: str
    #: The job's effective params (its upstream jobs', then its own).
    params: dict[str, Any]
    #: "changed", "new", "not run", "failed", "unfinished", "output", "forced",
    #: "no history" or "up to date".
    kind: str
    text: str
    changes: list[Change] = field(default_factory=list)
    #: The job that held the same place before (for "changed").
    compared_with: str | None = None

    def count_key(self) -> str:
        """The reason counted in the per-stage table: the first change's kind, else the
        explanation's kind."""
        return self.changes[0].kind if self.changes else self.kind

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "run": self.run, "stage": self.stage, "pname": self.pname,
                "params": self.params, "reason": self.kind, "text": self.text,
                "compared_with": self.compared_with,
                "changes": [c.to_json() for c in self.changes]}


@dataclass
class StageSummary:
    """One row of the plan's table: the jobs of a run's stage that run, by reason."""

    run: str
    stage: str
    jobs: int
    reasons: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "stage": self.stage, "jobs": self.jobs,
                "reasons": self.reasons}


@dataclass
class PlanExplanation:
    """An explained plan: the table per run and stage, and every job's reason."""

    summary: list[StageSummary]
    jobs: list[JobExplanation]
    up_to_date: list[str]
    #: The lab the comparison was made against (None: no earlier build is recorded).
    baseline: str | None

    def to_json(self) -> dict[str, Any]:
        return {"would_run": [j.job for j in self.jobs if j.kind != "up to date"],
                "up_to_date": self.up_to_date,
                "reasons": {j.job: j.text for j in self.jobs},
                "baseline_lab": self.baseline,
                "summary": [s.to_json() for s in self.summary],
                "jobs": [j.to_json() for j in self.jobs]}


class Explainer:
    """Compares jobs of ``graph`` with the jobs that held their places in earlier builds."""

    def __init__(self, graph: JobGraph, history: list[Snapshot],
                 store: Store | None = None) -> None:
        self.graph = graph
        self.history = history
        self.store = store
        self._places: dict[str, list[str]] | None = None
        self._memo: dict[tuple[str, str], list[Change]] = {}
        self._stage_memo: dict[tuple[Any, ...], tuple[list[Change], Change | None]] = {}

    @property
    def places(self) -> dict[str, list[str]]:
        if self._places is None:
            self._places = _graph_places(self.graph)
        return self._places

    def explain(self, job_id: str, plan_reason: str | None,
                status: Status | None) -> JobExplanation:
        """The explanation of one job; ``plan_reason`` is the plan's (None: up to date)."""
        job = self.graph.jobs[job_id]
        base = JobExplanation(job.id, job.run, job.stage, job.pname, job.params, "", "")
        if plan_reason is None:
            base.kind, base.text = "up to date", "up to date (succeeded, outputs present)"
            return base
        if plan_reason != "not in the store":
            base.kind = _status_kind(plan_reason, status)
            base.text = plan_reason
            return base
        if not self.history:
            base.kind = "no history"
            base.text = "not in the store (no earlier build of this lab is recorded)"
            return base
        # The newest build that had a job at this place decides: the same job means it was
        # not run then; another job means something in the identity changed.
        for snap in self.history:
            old_id = next((snap.places[p] for p in self.places[job_id] if p in snap.places),
                          None)
            if old_id is None:
                continue
            if old_id == job_id:
                base.kind, base.text = "not run", self._not_run_text(job)
                return base
            base.kind, base.compared_with = "changed", old_id
            base.changes = self.compare(job, snap.jobs[old_id], snap)
            base.text = "; ".join(c.text for c in base.changes)
            return base
        base.kind = "new"
        base.text = "new combination: no earlier build had a job at this place"
        return base

    def _not_run_text(self, job: Job) -> str:
        """Why a job the last build had did not run: a failed upstream job, if any."""
        failed = []
        if self.store is not None and job.depends_on:
            statuses = self.store.statuses(job.depends_on)
            failed = [u for u in job.depends_on if statuses.get(u) is Status.FAILED]
        if failed:
            names = ", ".join(f"{self.graph.jobs[u].pname} ({u})" for u in failed)
            return f"not run yet: blocked by its failed upstream {names}"
        return ("not run yet: the last build had this job but did not run it (other "
                "targets, stopped early, or blocked upstream)")

    def compare(self, job: Job, old: OldJob, snap: Snapshot) -> list[Change]:
        """What differs between ``job`` and ``old`` (the job at its place in ``snap``)."""
        key = (job.id, old.id)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = self._compare(job, old, snap)
        return found

    def _compare(self, job: Job, old: OldJob, snap: Snapshot) -> list[Change]:
        # What the stage variants differ in is the same for all of their jobs: computed once
        # per pair (a script edit in a 5 000-job stage is one diff, not 5 000).
        key = (*_variant_key(job), id(old.stage))
        cached = self._stage_memo.get(key)
        if cached is None:
            cached = self._stage_memo[key] = _stage_changes(job.pname, _stage_entry(job),
                                                            old.stage)
        stage_changes, wiring = cached
        changes = list(stage_changes)
        for name in sorted(set(job.params) | set(old.params)):
            a, b = old.params.get(name, _ABSENT), job.params.get(name, _ABSENT)
            if not _same_value(a, b):
                changes.append(Change("param", f"param {name}: {_show(a)} → {_show(b)}",
                                      {"param": name, "old": _plain(a), "new": _plain(b)}))
        if wiring is not None:
            changes.append(wiring)
        elif job.upstream != old.upstream:
            for up_new, up_old in zip(job.upstream, old.upstream, strict=True):
                if up_new != up_old and up_new in self.graph.jobs and up_old in snap.jobs:
                    changes.append(self._upstream_change(up_new, up_old, snap))
        if not changes:
            changes.append(Change("identity", "identity changed (no part of it that repx "
                                  "records differs; another repx version?)"))
        return changes

    def _upstream_change(self, up_new: str, up_old: str, snap: Snapshot) -> Change:
        """An upstream change, followed to its root: the first job up the chain whose own
        identity parts changed."""
        producer = self.graph.jobs[up_new]
        inner = self.compare(producer, snap.jobs[up_old], snap)
        chain = [producer.pname]
        roots, root_job = inner, up_new
        if len(inner) == 1 and inner[0].kind == "upstream":
            # Only its own upstream changed: name the chain and keep that one's root.
            chain += inner[0].detail["chain"]
            roots, root_job = inner[0].detail["_roots"], inner[0].detail["root_job"]
        cause = "; ".join(c.text for c in roots)
        return Change("upstream", f"upstream {' ← '.join(chain)} changed: {cause} "
                      f"({chain[-1]} job {root_job})",
                      {"upstream": up_new, "old_upstream": up_old, "chain": chain,
                       "root_job": root_job, "_roots": roots,
                       "root": [c.to_json() for c in roots]})


def _variant_key(job: Job) -> tuple[Any, ...]:
    """What tells a job's stage variant apart, cheaply: jobs of one variant share these
    objects (and so their input files and inter-run ids); the run and hash mode are added
    for a stage object two runs might share."""
    return (id(job.stage_def), id(job.executables), id(job.outputs), job.pname,
            job.hash_mode, job.run)


def _stage_changes(pname: str, new: dict[str, Any],
                   was: dict[str, Any]) -> tuple[list[Change], Change | None]:
    """The changes between two stage variants' identity parts, and a wiring change apart
    (it replaces the per-upstream comparison, whose pairs no longer correspond)."""
    changes: list[Change] = []
    if new["hash_mode"] != was["hash_mode"]:
        changes.append(Change("hash mode", f"hash mode {was['hash_mode']} → "
                              f"{new['hash_mode']}"))
    if (new["pname"], new["version"]) != (was["pname"], was["version"]):
        changes.append(Change("version", f"{was['pname']}-{was['version']} → "
                              f"{new['pname']}-{new['version']}"))
    if new["hash_mode"] == "pure" and was["hash_mode"] == "pure":
        changes += _script_changes(pname, new, was)
        if canonical_json(new["outputs"]) != canonical_json(was["outputs"]):
            changes.append(Change("outputs", f"declared outputs changed: "
                                  f"{canonical_json(was['outputs'])} → "
                                  f"{canonical_json(new['outputs'])}"))
    elif list(new["scripts"]) != list(was["scripts"]):
        changes.append(Change("wiring", f"executables {list(was['scripts'])} → "
                              f"{list(new['scripts'])}"))
    for name in sorted(set(new["files"]) | set(was["files"])):
        if new["files"].get(name) != was["files"].get(name):
            changes.append(Change("input file", f"input {name}: "
                                  f"{was['files'].get(name)} → {new['files'].get(name)}",
                                  {"input": name, "old": was["files"].get(name),
                                   "new": new["files"].get(name)}))
    for run in sorted(set(new["inter_run"]) | set(was["inter_run"])):
        before = set(was["inter_run"].get(run, []))
        now = set(new["inter_run"].get(run, []))
        if before != now:
            changes.append(Change("inter-run", f"the jobs of run '{run}' it reads changed "
                                  f"({len(now - before)} new, {len(before - now)} gone)",
                                  {"run": run}))
    wiring = None
    if canonical_json(new["wiring"]) != canonical_json(was["wiring"]):
        wiring = Change("wiring", f"dependencies changed: {canonical_json(was['wiring'])} → "
                        f"{canonical_json(new['wiring'])}")
    return changes, wiring


_ABSENT = object()
#: Types whose Python equality is canonical-JSON equality when both sides share the type.
_EXACT = (str, int, bool, type(None))


def _same_value(a: Any, b: Any) -> bool:
    """Whether two param values hash alike: equal strings, ints, booleans or nulls of the
    same type (1 == 1.0, True == 1 and -0.0 == 0.0 in Python, not in canonical JSON), else
    equal canonical JSON."""
    if type(a) is type(b) and type(a) in _EXACT and a == b:
        return True
    if a is _ABSENT or b is _ABSENT:
        return False
    return canonical_json(a) == canonical_json(b)


def _show(value: Any) -> str:
    return "(none)" if value is _ABSENT else canonical_json(value)


def _plain(value: Any) -> Any:
    return None if value is _ABSENT else value


def _status_kind(reason: str, status: Status | None) -> str:
    if reason == "forced":
        return "forced"
    if status is Status.FAILED:
        return "failed"
    if status is Status.SUCCEEDED:
        return "output"
    return "unfinished"


def _script_changes(pname: str, new: dict[str, Any], was: dict[str, Any]) -> list[Change]:
    """Script and runDependencies changes of a stage, one per executable that differs."""
    changes: list[Change] = []
    for exe in [*new["scripts"], *[e for e in was["scripts"] if e not in new["scripts"]]]:
        if new["scripts"].get(exe) == was["scripts"].get(exe):
            continue
        name = pname if exe == "main" else f"{pname}/{exe}"
        body_new, body_old = new["bodies"].get(exe), was["bodies"].get(exe)
        deps_new, deps_old = new["deps"].get(exe, []), was["deps"].get(exe, [])
        found = False
        if body_new != body_old:
            diff = "".join(difflib.unified_diff(
                (body_old or "").splitlines(keepends=True),
                (body_new or "").splitlines(keepends=True),
                f"{name} (before)", f"{name} (now)"))
            changes.append(Change("script", f"script of {name} changed",
                                  {"executable": exe, "diff": diff,
                                   "old_script": was["scripts"].get(exe),
                                   "new_script": new["scripts"].get(exe)}))
            found = True
        if deps_new != deps_old:
            added = [p for p in deps_new if p not in deps_old]
            removed = [p for p in deps_old if p not in deps_new]
            parts = [f"+{_short(p)}" for p in added] + [f"-{_short(p)}" for p in removed]
            detail: dict[str, Any] = {"executable": exe, "added": added, "removed": removed}
            text = f"runDependencies of {name} changed: {' '.join(parts) or 'order'}"
            closure = _closure_difference(tuple(deps_old), tuple(deps_new))
            if closure is not None:
                detail["closure_added"], detail["closure_removed"] = closure
                text += (f" (closure: {len(closure[0])} store paths added, "
                         f"{len(closure[1])} removed)")
            changes.append(Change("runDependencies", text, detail))
            found = True
        if not found:
            changes.append(Change("script", f"script of {name} changed outside its body "
                                  "(the header repx writes)",
                                  {"executable": exe, "diff": "",
                                   "old_script": was["scripts"].get(exe),
                                   "new_script": new["scripts"].get(exe)}))
    return changes


@functools.lru_cache(maxsize=64)
def _closure_difference(old: tuple[str, ...],
                        new: tuple[str, ...]) -> tuple[list[str], list[str]] | None:
    """(added, removed) store paths between the runtime closures of two runDependencies
    lists; None when either closure cannot be read (a path was garbage-collected, no
    ``nix-store``): the top-level paths then say what changed."""
    def closure(paths: tuple[str, ...]) -> set[str] | None:
        if not paths:
            return set()
        if shutil.which("nix-store") is None or not all(os.path.exists(p) for p in paths):
            return None
        try:
            done = subprocess.run(["nix-store", "--query", "--requisites", *paths],
                                  capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return set(done.stdout.split()) if done.returncode == 0 else None

    before, after = closure(old), closure(new)
    if before is None or after is None:
        return None
    return sorted(after - before), sorted(before - after)


def _short(store_path: str) -> str:
    """``/nix/store/<hash>-name`` → ``name (<hash[:8]>)``: readable, still distinct."""
    base = os.path.basename(store_path)
    digest, _, name = base.partition("-")
    return f"{name} ({digest[:8]})" if name else base


def explain_jobs(graph: JobGraph, store: Store | None, job_ids: list[str],
                 reasons: dict[str, str],
                 history: list[Snapshot] | None = None) -> list[JobExplanation]:
    """Explain ``job_ids``: each runs for ``reasons[id]`` (absent: up to date), compared
    with ``history`` (default: the store's :func:`build_history`)."""
    # The params shown are the effective ones (upstream jobs' then its own, as `repx list
    # jobs` shows them): a stage without params is told apart by its upstream's.
    from repx.report.lab_views import effective_params

    if history is None:
        history = build_history(store)
    explainer = Explainer(graph, history, store)
    statuses = store.statuses(job_ids) if store is not None else {}
    effective = effective_params(graph, job_ids)
    explained = []
    for job_id in job_ids:
        e = explainer.explain(job_id, reasons.get(job_id), statuses.get(job_id))
        e.params = effective[job_id]
        explained.append(e)
    return explained


def explain_plan(graph: JobGraph, store: Store | None, to_run: list[str],
                 up_to_date: list[str], reasons: dict[str, str]) -> PlanExplanation:
    """The explained plan of a build that would run ``to_run``."""
    history = build_history(store)
    jobs = explain_jobs(graph, store, to_run, reasons, history)
    rows: dict[tuple[str, str], Counter[str]] = {}
    for e in jobs:
        rows.setdefault((e.run, e.pname), Counter())[e.count_key()] += 1
    summary = [StageSummary(run, stage, sum(c.values()), dict(c.most_common()))
               for (run, stage), c in rows.items()]
    return PlanExplanation(summary, jobs, up_to_date, history[0].lab if history else None)


# ------------------------------------------------------------------------------ rendering


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={canonical_json(v)}" for k, v in params.items())


def render_plan(explained: PlanExplanation, *, diffs: bool = True) -> list[str]:
    """The text of ``--dry-run --explain``: the table, one reason per job, then each
    distinct script diff once."""
    lines: list[str] = []
    if explained.summary:
        header = ("RUN", "STAGE", "JOBS", "REASONS")
        rows = [(s.run, s.stage, str(s.jobs),
                 ", ".join(f"{n} {k}" for k, n in s.reasons.items()))
                for s in explained.summary]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
        for r in [header, *rows]:
            lines.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  "
                         f"{r[2]:>{widths[2]}}  {r[3]}".rstrip())
        lines.append("")
    shown: dict[str, str] = {}
    for e in explained.jobs:
        lines += render_job(e)
        for change in _all_changes(e.changes):
            if change.kind == "script" and change.detail.get("diff"):
                shown.setdefault(change.text, change.detail["diff"])
    if diffs and shown:
        lines.append("")
        for text, diff in shown.items():
            lines.append(f"{text}:")
            lines += diff.rstrip("\n").split("\n")
    return lines


def render_job(e: JobExplanation, *, with_diff: bool = False) -> list[str]:
    """One job's explanation: a heading line, then one indented line per change."""
    lines = [f"would run {e.job}  {e.run}/{e.pname}  {_params_text(e.params)}".rstrip()
             if e.kind != "up to date" else
             f"{e.job}  {e.run}/{e.pname}  {_params_text(e.params)}".rstrip()]
    if not e.changes:
        lines.append(f"    {e.text}")
    for change in e.changes:
        lines.append(f"    {change.text}")
        if with_diff:
            for inner in _all_changes([change]):
                if inner.kind == "script" and inner.detail.get("diff"):
                    lines += ["      " + d for d in inner.detail["diff"].rstrip("\n")
                              .split("\n")]
    if e.compared_with:
        lines.append(f"    (compared with {e.compared_with}, the job at its place before)")
    return lines


def _all_changes(changes: list[Change]) -> list[Change]:
    """``changes`` and, inside upstream changes, the root changes they lead to."""
    found: list[Change] = []
    for c in changes:
        found.append(c)
        if c.kind == "upstream":
            found += _all_changes(c.detail["_roots"])
    return found
