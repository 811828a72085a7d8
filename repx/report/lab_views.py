"""A lab's jobs as the listing commands show them, as plain data: the library behind
``repx list jobs``, ``repx list deps``, ``repx trace-params`` and ``repx show output`` (the
CLI in :mod:`repx.cli` only prints it).

These are the views the original RepX offers over a lab (``--status``, ``-p KEY``,
``--output-paths``, the dependency tree, a job's output folder). What the store says comes
from :mod:`repx.report.store_views`; nothing here writes to the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repx.errors import UsageError
from repx.lab.graph import Job, JobGraph
from repx.report import store_views as ins
from repx.store import Store, layout

#: What ``repx list jobs --status`` can select. The recorded states, plus the two states of a
#: job the store holds nothing for (or whose claim is gone): *pending* when everything it
#: needs has succeeded (the next build runs it), *blocked* while an upstream job has not.
JOB_STATES = ("succeeded", "failed", "cancelled", "running", "queued", "pending", "blocked")

#: Recorded states that end a job (a soft inter-run dependency waits for these only).
_FINISHED = frozenset({"succeeded", "failed", "cancelled"})


# --------------------------------------------------------------------------- params


def effective_params(graph: JobGraph, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The effective params of ``job_ids`` (and of their upstream jobs): the upstream jobs'
    effective params, in dependency order, then the job's own on top.

    This is what the original RepX calls a job's effective params (``trace-params``,
    ``list jobs -p``): a training job sees the ``lr`` its preprocessing job ran with.
    """
    effective: dict[str, dict[str, Any]] = {}
    for job_id in graph.upstream_closure(job_ids):
        job = graph.jobs[job_id]
        merged: dict[str, Any] = {}
        for up in job.depends_on:
            merged.update(effective[up])
        merged.update(job.params)
        effective[job_id] = merged
    return effective


_MISSING = object()


def param_value(params: dict[str, Any], key: str) -> Any:
    """``params[key]``, else ``key`` read as a dotted path into nested objects (``a.b``);
    :data:`_MISSING` when neither exists."""
    if key in params:
        return params[key]
    value: Any = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def is_missing(value: Any) -> bool:
    """True for what :func:`param_value` returns when the key is not there."""
    return value is _MISSING


# --------------------------------------------------------------------------- states


def lab_job_states(graph: JobGraph, store_dir: str | os.PathLike[str],
                   job_ids: Sequence[str]) -> dict[str, str]:
    """One of :data:`JOB_STATES` for each of ``job_ids``.

    Recorded states come from the store (read-only; no store: nothing is recorded). A job
    without a live record is *pending* when its producers have succeeded and the runs it
    reads are done (succeeded for a hard dependency, finished for a soft one), else
    *blocked*.
    """
    recorded: dict[str, str] = {}
    if Store.exists(store_dir):
        # The jobs, their producers and the jobs of the runs they read.
        needed = graph.upstream_closure(job_ids)
        with Store(store_dir, readonly=True) as store:
            recorded = ins.job_states(store, needed)
    states: dict[str, str] = {}
    for job_id in job_ids:
        state = recorded.get(job_id)
        if state is None or state == "stale":  # no record, or its process is gone: not run
            state = "pending" if _inputs_ready(graph, graph.jobs[job_id], recorded) else "blocked"
        states[job_id] = state
    return states


def _inputs_ready(graph: JobGraph, job: Job, recorded: dict[str, str]) -> bool:
    if any(recorded.get(up) != "succeeded" for up in job.depends_on):
        return False
    for run, kind in job.inter_run:
        wanted = {"succeeded"} if kind == "hard" else _FINISHED
        if any(recorded.get(i) not in wanted for i in graph.runs[run].job_ids):
            return False
    return True


# ---------------------------------------------------------------------------- stages


def jobs_of_stage(graph: JobGraph, jobs: list[Job], stage: str) -> list[Job]:
    """The jobs of ``jobs`` whose stage is ``stage`` (a pname or a pipeline key).

    A stage that none of them has is an error listing the stages they do have: a typo would
    otherwise print an empty list, indistinguishable from a stage without jobs.
    """
    chosen = [job for job in jobs if stage in (job.pname, job.stage)]
    if chosen:
        return chosen
    names: dict[str, None] = {}
    for job in jobs:
        names[job.stage if job.stage == job.pname else f"{job.stage} (pname {job.pname})"] = None
    scope = "the selected jobs" if len(jobs) < len(graph.jobs) else f"lab {graph.lab.path}"
    raise UsageError(f"unknown stage '{stage}': no job of {scope} has it; stages: "
                     f"{', '.join(names) or '(none)'}")


def stage_label(job: Job) -> str:
    """The job's stage as listings name it: its pipeline key, and its pname in parentheses
    when the two differ (``gen (data-generator)``).

    Both names select the stage (``-s``) and both appear elsewhere (the key in lab files and
    ``-g`` headings, the pname in store folders and ``repx status``), so a listing that
    showed only one would leave the other unexplained.
    """
    return job.stage if job.stage == job.pname else f"{job.stage} ({job.pname})"


def stage_counts(jobs: Iterable[Job]) -> dict[str, int]:
    """How many of ``jobs`` each stage has, by :func:`stage_label`, in order of first job."""
    counts: dict[str, int] = {}
    for job in jobs:
        label = stage_label(job)
        counts[label] = counts.get(label, 0) + 1
    return counts


def group_by_stage(jobs: Iterable[Job]) -> dict[str, list[Job]]:
    """``jobs`` by pipeline key, stages in order of their first job."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.stage, []).append(job)
    return groups


def output_dir(store_dir: str | os.PathLike[str], job_id: str) -> Path:
    """Where ``job_id``'s ``$out`` is in the store at ``store_dir`` (whether it exists or not)."""
    return Path(layout.JobFolders(os.path.abspath(store_dir)).out_dir(job_id))


# ------------------------------------------------------------------------------ deps


@dataclass
class DependencyNode:
    """One job of a dependency tree: its upstream jobs, and the runs whose manifest it reads.

    ``repeated`` marks a job already shown higher up the tree (its subtree is not repeated:
    in a diamond-shaped lab, the full tree would grow exponentially).
    """

    job: Job
    state: str | None
    repeated: bool = False
    children: list[DependencyNode] = field(default_factory=list)
    runs: list[tuple[str, str, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.job.id, "stage": self.job.stage, "run": self.job.run}
        if self.state is not None:
            data["status"] = self.state
        if self.repeated:
            data["repeated"] = True
            return data
        data["depends_on"] = [child.to_dict() for child in self.children]
        data["reads_runs"] = [{"run": run, "type": kind, "jobs": count}
                              for run, kind, count in self.runs]
        return data


def dependency_tree(graph: JobGraph, job: Job, states: dict[str, str] | None) -> DependencyNode:
    """The upstream jobs of ``job``, transitively, as a tree (each job expanded once)."""
    shown: set[str] = set()

    def node(current: Job) -> DependencyNode:
        state = states.get(current.id) if states is not None else None
        if current.id in shown:
            return DependencyNode(current, state, repeated=True)
        shown.add(current.id)
        children = [node(graph.jobs[up]) for up in current.depends_on]
        runs = [(run, kind, len(graph.runs[run].job_ids)) for run, kind in current.inter_run]
        return DependencyNode(current, state, children=children, runs=runs)

    return node(job)


# ---------------------------------------------------------------------------- output


@dataclass(frozen=True)
class OutputEntry:
    """A file or folder under a job's ``$out``: its path relative to what was listed."""

    path: str
    is_dir: bool
    size: int | None


def output_target(out: Path, relative: str | None) -> Path:
    """``out`` or ``relative`` inside it; a path that leaves ``out`` is an error.

    Resolved with symlinks followed, so a link in the job's outputs that points elsewhere
    (``/etc``, another job's folder) is not read through ``repx show output``.
    """
    if not relative:
        return out
    if os.path.isabs(relative):
        raise UsageError(f"'{relative}' is an absolute path; give a path inside the job's "
                         f"output folder {out} (e.g. results/summary.csv)")
    target = out / relative
    real_out = os.path.realpath(out)
    real = os.path.realpath(target)
    if real != real_out and not real.startswith(real_out + os.sep):
        raise UsageError(f"'{relative}' is outside the job's output folder {out}")
    return target


def list_output(folder: Path) -> list[OutputEntry]:
    """Every file and folder under ``folder``, sorted, with file sizes (links not followed)."""
    entries: list[OutputEntry] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        base = Path(root)
        rel_root = base.relative_to(folder)
        for name in dirs:
            entries.append(OutputEntry(str(rel_root / name), True, None))
        for name in sorted(files):
            try:
                size: int | None = os.lstat(base / name).st_size
            except OSError:
                size = None
            entries.append(OutputEntry(str(rel_root / name), False, size))
    entries.sort(key=lambda e: e.path)
    return entries


# ------------------------------------------------------------------------------- log


def tail_offset(path: Path, lines: int, block: int = 1 << 16) -> int:
    """The byte offset where the last ``lines`` lines of ``path`` start (0: the whole file).

    Read backwards in blocks, so the tail of a log of gigabytes costs one block or two. A
    final newline ends the last line; it does not start another.
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if lines <= 0:
                return size
            end = size
            fh.seek(max(0, size - 1))
            if size and fh.read(1) == b"\n":
                end -= 1  # the file's last newline ends the last line
            seen = 0
            pos = end
            while pos > 0:
                start = max(0, pos - block)
                fh.seek(start)
                chunk = fh.read(pos - start)
                index = len(chunk)
                while True:
                    index = chunk.rfind(b"\n", 0, index)
                    if index < 0:
                        break
                    seen += 1
                    if seen == lines:
                        return start + index + 1
                pos = start
            return 0
    except FileNotFoundError:
        return 0
