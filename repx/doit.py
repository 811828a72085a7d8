"""A repx lab as doit tasks: every job a task of your ``dodo.py``, beside your own tasks.

>>> from repx.doit import RepxLab                                  # doctest: +SKIP
>>> LAB = RepxLab("lab", store=".repx")                            # doctest: +SKIP
>>> def task_lab():                                                # doctest: +SKIP
...     yield from LAB.tasks()
>>> def task_summary():                                            # doctest: +SKIP
...     return {"actions": [...], "targets": ["summary.txt"], **LAB.needs("main")}

(``yield from lab_tasks("lab", store=".repx")`` is the same as ``LAB.tasks()`` when no task
of yours needs the lab.) ``docs/doit.md`` is the user's guide; the rules, and why:

* **One task per job**, named ``<basename>:<run>/<stage>/<8 id characters>``, plus one
  action-less task per run (``<basename>:<run>``) and doit's group task (``<basename>``).
  ``task_dep`` mirrors the job graph: a job's producers, and every job of each run whose
  manifest it reads (the prerequisites of ``repx makefile``).
* **Up to date is the store's answer**, never doit's saved state: a job task is up to date
  exactly when :func:`repx.engine.plan.plan_build` puts the job in ``up_to_date`` (succeeded
  record, outputs present). The plan is made once per doit run, at the first question, for
  the whole lab (one status read and a ``stat`` per output, as ``repx build`` does); a job
  it says must run has its action run, and that action asks the store again.
* **The action is repx**: :func:`repx.engine.build.run_build` with the job's id as the one
  target, so the job gets the contract, record and outputs ``repx build`` gives it (its
  upstream closure was built by the tasks it depends on, so it is only checked). A job that
  does not succeed fails its task with repx's reason and the tail of the job's stderr.
* **Depending on the lab.** ``task_dep`` orders tasks but never makes a task out of date, so
  :meth:`RepxLab.needs` adds an ``uptodate`` entry keyed on the *ids* of the jobs you name: a
  job's id covers everything its result depends on (scripts, params, upstream ids), so your
  task reruns exactly when one of those jobs became a different job. :meth:`RepxLab.outputs`
  gives output paths (they are the job tasks' ``targets``, so a ``file_dep`` on them orders
  your task too and reruns it when a file's content changes).
* **Once per doit run.** The lab is built (``nix-build``) and expanded once per
  :class:`RepxLab` object, at the first question asked of it; a ``dodo.py`` is imported
  afresh by every ``doit`` command, so that is once per doit run. ``lab_tasks`` makes its own
  object.
* **Errors are doit failures.** A lab that does not build or expand becomes one failing task,
  ``<basename>:error``, with repx's message (your other tasks still load and run; tasks that
  need the lab depend on it and do not run); a wrong argument in ``dodo.py`` (an unknown run
  or stage) is a :class:`DoitLabError`, which doit prints as ``ERROR: …`` without a traceback.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from repx.engine.build import EXIT_INTERRUPTED, BuildOptions, BuildResult, run_build
from repx.engine.contract import declared_outputs
from repx.engine.plan import plan_build
from repx.engine.progress import STDERR_TAIL, tail
from repx.errors import RepxError, UsageError
from repx.lab import LabOptions, open_lab
from repx.lab.graph import Job, JobGraph
from repx.lab.open import is_lab_dir
from repx.store import DEFAULT_STORE, Store
from repx.store.layout import JobFolders

try:
    from doit.exceptions import InvalidTask, TaskFailed
except ImportError as missing:  # pragma: no cover - doit is a dependency of repx
    raise ImportError(
        "repx.doit needs doit (pip install doit); it is only imported by dodo.py files"
    ) from missing

__all__ = ["DoitLabError", "RepxLab", "lab_tasks"]

#: Characters of a job id's hash part shown in a task name (more when two jobs of one run and
#: stage share them).
SHORT_ID = 8

#: Name of the task a lab that cannot be loaded turns into (a run cannot have it: a broken
#: lab has no runs).
ERROR_TASK = "error"

#: Longest ``doc`` line shown by ``doit list``.
_DOC_WIDTH = 100


class DoitLabError(UsageError, InvalidTask):
    """A ``dodo.py`` asked for something the lab does not have (unknown run, stage, output).

    Both a repx error and doit's ``InvalidTask``, so doit prints its message without a
    traceback while a library caller can catch it as any other ``RepxError``.
    """


class RepxLab:
    """A repx lab seen from a ``dodo.py``: its job tasks, and what your tasks need of it.

    ``lab`` is a lab folder or file (``lab.nix``, ``flake.nix[#ATTR]``, built with Nix as
    ``repx build`` would), a built lab directory (``./result``, used as it is), or a
    :class:`~repx.lab.LabOptions` for anything else (lab arguments, ``--impure``). Relative
    paths, here and for ``store``, are relative to doit's working directory (the folder of
    ``dodo.py`` unless ``doit -d``). ``basename`` names the tasks (``<basename>:…``, whatever
    your task generator is called); ``jobs`` bounds the processes of one job (the branches of
    a scatter-gather job; 0 means this machine's CPUs), doit's ``-n`` how many jobs run at
    once.
    """

    def __init__(self, lab: str | os.PathLike[str] | LabOptions = ".", *,
                 store: str | os.PathLike[str] = DEFAULT_STORE, nixpkgs: str | None = None,
                 basename: str = "lab", jobs: int = 0) -> None:
        if not basename or any(c in basename for c in ":/ =") or basename.startswith("_"):
            raise DoitLabError(
                f"RepxLab(basename={basename!r}): a doit task name, without ':', '/', '=', "
                "spaces or a leading '_' (doit hides those)")
        if jobs < 0:
            raise DoitLabError(f"RepxLab(jobs={jobs}): give 0 (all CPUs) or more")
        self.options = _lab_options(lab, nixpkgs)
        self.store = Path(os.path.abspath(store))
        self.basename = basename
        self.jobs = jobs
        self._graph: JobGraph | None = None
        self._error: str | None = None
        self._names: dict[str, str] = {}
        self._done: set[str] | None = None

    def __repr__(self) -> str:
        where = self.options.lab_dir or self.options.lab_file
        return f"RepxLab({where!r}, store={str(self.store)!r}, basename={self.basename!r})"

    # ---- the lab, loaded once

    @property
    def graph(self) -> JobGraph | None:
        """The lab's job graph, building and expanding the lab the first time; None when the
        lab cannot be loaded (:attr:`error` says why)."""
        if self._graph is None and self._error is None:
            try:
                self._graph = open_lab(self.options)
            except RepxError as error:
                self._error = error.message
            else:
                self._names = _task_names(self._graph)
        return self._graph

    @property
    def error(self) -> str | None:
        """Why the lab cannot be loaded (repx's message), or None when it loads."""
        _ = self.graph
        return self._error

    def reload(self) -> None:
        """Forget the loaded lab and the store's answers: the next question builds and expands
        the lab again (for a process that runs doit more than once)."""
        self._graph, self._error, self._names, self._done = None, None, {}, None

    # ---- the lab's tasks

    def tasks(self) -> Iterator[dict[str, Any]]:
        """The doit tasks of the lab: one per job, one per run, or the error task.

        Yield them from a task generator: ``def task_lab(): yield from LAB.tasks()``.
        """
        # A new doit run is asking for tasks: what the store said in an earlier run is old.
        self._done = None
        graph = self.graph
        if graph is None:
            yield {
                "basename": self.basename,
                "name": ERROR_TASK,
                "doc": "the repx lab cannot be loaded (run it to see why)",
                "actions": [(_fail, [f"repx: {self._error}"])],
                "uptodate": [False],
            }
            return
        folders = JobFolders(self.store)
        outputs = {job_id: list(declared_outputs(job.outputs, folders.out_dir(job_id),
                                                 job_id).values())
                   for job_id, job in graph.jobs.items()}
        # Two jobs declaring one path (an absolute output template) cannot both have it as a
        # doit target: doit refuses a target made by two tasks.
        declared = Counter(path for paths in outputs.values() for path in paths)
        for job_id in graph.topological_order():
            job = graph.jobs[job_id]
            yield {
                "basename": self.basename,
                "name": self._names[job_id],
                "doc": _job_doc(job),
                "actions": [(self._run_job, [job_id])],
                "uptodate": [_JobUpToDate(self, job_id)],
                "task_dep": [self._full_name(up) for up in _upstream(graph, job)],
                "targets": [p for p in outputs[job_id] if declared[p] == 1],
            }
        for run, run_jobs in graph.runs.items():
            yield {
                "basename": self.basename,
                "name": run,
                "doc": f"every job of run {run} ({len(run_jobs.job_ids)})",
                "actions": None,
                "task_dep": [self._full_name(job_id) for job_id in run_jobs.job_ids],
            }

    def task_name(self, job_id: str) -> str:
        """The full doit name of a job's task (``lab:main/train/0a1b2c3d``)."""
        graph = self._loaded()
        try:
            return self._full_name(graph.resolve_job(job_id).id)
        except UsageError as error:
            raise DoitLabError(f"repx: {error.message}") from None

    def _full_name(self, job_id: str) -> str:
        return f"{self.basename}:{self._names[job_id]}"

    def _run_job(self, job_id: str) -> TaskFailed | None:
        """The action of a job task: ``repx build`` of exactly that job, into the store."""
        graph = self.graph
        assert graph is not None  # a task exists only for a loaded lab
        job = graph.jobs[job_id]
        try:
            result = run_build(graph, self.store,
                               BuildOptions(targets=(job_id,), jobs=self.jobs))
        except RepxError as error:
            return TaskFailed(f"repx: {error.message}")
        if result.interrupted:
            # repx stopped the job and recorded it as cancelled; doit must stop too, not go on
            # to the next task. SystemExit passes doit's handlers (which catch Exception) and
            # its runner still saves its state on the way out; the message goes to the real
            # stderr because doit may be capturing the action's.
            stderr = sys.__stderr__ or sys.stderr
            stderr.write("repx: build interrupted; the running job was stopped and recorded "
                         "as cancelled\n")
            raise SystemExit(EXIT_INTERRUPTED)
        if result.exit_code != 0:
            return TaskFailed(_failure_message(job, result))
        return None

    def _is_done(self, job_id: str) -> bool:
        """The store's answer for one job, from the plan of the whole lab (made once)."""
        if self._done is None:
            graph = self.graph
            assert graph is not None
            if not Store.exists(self.store):
                self._done = set()
            else:
                with Store(self.store, readonly=True) as store:
                    self._done = set(plan_build(graph, store, []).up_to_date)
        return job_id in self._done

    # ---- what your own tasks need of the lab

    def jobs_of(self, *targets: str, stage: str | None = None) -> list[Job]:
        """The jobs that ``targets`` (run names, ``@group``, job ids or unique id prefixes;
        none: every job) select, keeping those of ``stage`` (pname or pipeline key) if given.

        The lab must load (:class:`DoitLabError` otherwise); :meth:`needs`, :meth:`task_dep`
        and :meth:`uptodate` cope with a broken lab instead.
        """
        return self._select(self._loaded(), targets, stage)

    def task_dep(self, *targets: str, stage: str | None = None) -> list[str]:
        """doit names of the job tasks of ``targets`` (see :meth:`jobs_of`), for ``task_dep``;
        the error task when the lab cannot be loaded."""
        graph = self.graph
        if graph is None:
            return [f"{self.basename}:{ERROR_TASK}"]
        return [self._full_name(job.id) for job in self._select(graph, targets, stage)]

    def uptodate(self, *targets: str, stage: str | None = None) -> _JobsUnchanged:
        """An ``uptodate`` entry: true while the jobs of ``targets`` (see :meth:`jobs_of`) are
        the jobs your task last succeeded with (compared by id)."""
        graph = self.graph
        ids = [] if graph is None else [job.id for job in self._select(graph, targets, stage)]
        key = f"repx:{self.basename}:{' '.join(targets)}:{stage or ''}"
        return _JobsUnchanged(key, None if graph is None else ids)

    def needs(self, *targets: str, stage: str | None = None) -> dict[str, list[Any]]:
        """``task_dep`` and ``uptodate`` for a task that uses the results of ``targets``
        (see :meth:`jobs_of`): it runs after their jobs, and again whenever one of them became
        a different job. Merge it into your task: ``{"actions": …, **LAB.needs("main")}``
        (or add ``LAB.task_dep(…)`` and ``LAB.uptodate(…)`` to lists of your own)."""
        return {"task_dep": self.task_dep(*targets, stage=stage),
                "uptodate": [self.uptodate(*targets, stage=stage)]}

    def outputs(self, *targets: str, output: str | None = None,
                stage: str | None = None) -> list[str]:
        """Absolute paths of output ``output`` (default: every declared output) of each job of
        ``targets`` (see :meth:`jobs_of`), in job order (the files exist once the jobs ran).

        Use them in your actions, or as ``file_dep`` (file outputs only: doit hashes them; they
        are targets of the job tasks, so doit also runs those first). The lab must load.
        """
        graph = self._loaded()
        folders = JobFolders(self.store)
        paths: list[str] = []
        for job in self._select(graph, targets, stage):
            resolved = declared_outputs(job.outputs, folders.out_dir(job.id), job.id)
            if output is None:
                paths.extend(resolved.values())
            elif output in resolved:
                paths.append(resolved[output])
            else:
                raise DoitLabError(
                    f"job {job.id} ({job.run}/{job.stage}) has no output '{output}'; it "
                    f"declares: {', '.join(sorted(resolved)) or '(none)'}")
        return paths

    # ---- helpers

    def _loaded(self) -> JobGraph:
        graph = self.graph
        if graph is None:
            raise DoitLabError(f"repx: {self._error}")
        return graph

    @staticmethod
    def _select(graph: JobGraph, targets: tuple[str, ...], stage: str | None) -> list[Job]:
        try:
            jobs = graph.select(list(targets))
        except UsageError as error:
            raise DoitLabError(f"repx: {error.message}") from None
        if stage is None:
            return jobs
        chosen = [job for job in jobs if stage in (job.pname, job.stage)]
        if not chosen:
            stages = sorted({job.stage for job in jobs})
            raise DoitLabError(
                f"repx: no job of {' '.join(targets) or 'the lab'} is of stage '{stage}'; "
                f"stages: {', '.join(stages) or '(none)'}")
        return chosen


def lab_tasks(lab: str | os.PathLike[str] | LabOptions = ".", *,
              store: str | os.PathLike[str] = DEFAULT_STORE, nixpkgs: str | None = None,
              basename: str = "lab", jobs: int = 0) -> Iterator[dict[str, Any]]:
    """The doit tasks of a lab (see :class:`RepxLab` for the arguments), for a ``dodo.py``
    where no task of yours depends on the lab: ``yield from lab_tasks("lab")``."""
    return RepxLab(lab, store=store, nixpkgs=nixpkgs, basename=basename, jobs=jobs).tasks()


class _JobUpToDate:
    """The ``uptodate`` entry of a job task: the store's answer (see the module doc)."""

    def __init__(self, lab: RepxLab, job_id: str) -> None:
        self.lab = lab
        self.job_id = job_id

    def __call__(self) -> bool:
        try:
            return self.lab._is_done(self.job_id)
        except RepxError:
            # A store repx cannot read: the action runs and fails with repx's message, which
            # doit shows as a task failure (an exception here would be a traceback).
            return False

    def __repr__(self) -> str:
        return f"repx store has {self.job_id}"


class _JobsUnchanged:
    """doit ``uptodate`` calculator: the digest of a set of job ids, saved when the task
    succeeds, compared on the next run. ``ids`` None (a broken lab) is never up to date.

    Not doit's ``config_changed``: that one saves every instance under one key, so two in one
    task (yours and this) would overwrite each other and the task would always rerun.
    """

    def __init__(self, key: str, ids: list[str] | None) -> None:
        self.key = key
        self.digest = None if ids is None else hashlib.sha256(
            "\n".join(sorted(set(ids))).encode()).hexdigest()

    def configure_task(self, task: Any) -> None:
        task.value_savers.append(lambda: {self.key: self.digest})

    def __call__(self, task: Any, values: dict[str, Any]) -> bool:
        return self.digest is not None and values.get(self.key) == self.digest

    def __repr__(self) -> str:
        return f"repx job ids of {self.key}"


def _lab_options(lab: str | os.PathLike[str] | LabOptions, nixpkgs: str | None) -> LabOptions:
    """LabOptions for a path as given to :class:`RepxLab` (made absolute now, while doit's
    working directory is the one the user means)."""
    if isinstance(lab, LabOptions):
        return lab if nixpkgs is None else replace(lab, nixpkgs=nixpkgs)
    text = os.fspath(lab)
    path_text, hash_sign, attr = text.partition("#")
    path = Path(os.path.abspath(path_text or "."))
    if not hash_sign and is_lab_dir(path):
        return LabOptions(lab_dir=str(path), nixpkgs=nixpkgs)
    return LabOptions(lab_file=f"{path}{hash_sign}{attr}", nixpkgs=nixpkgs)


def _task_names(graph: JobGraph) -> dict[str, str]:
    """``<run>/<stage>/<short id>`` of every job, the id longer where two names would clash."""
    names = {job_id: f"{job.run}/{job.stage}/{job_id[:SHORT_ID]}"
             for job_id, job in graph.jobs.items()}
    clashing = Counter(names.values())
    for job_id, name in names.items():
        if clashing[name] > 1:
            job = graph.jobs[job_id]
            names[job_id] = f"{job.run}/{job.stage}/{job_id}"
    return names


def _upstream(graph: JobGraph, job: Job) -> list[str]:
    """The jobs a job's task waits for: its producers, and every job of each run whose
    manifest it reads (what run dependencies add to a build's closure reaches the job through
    these, transitively)."""
    ids = dict.fromkeys(job.depends_on)
    for run, _kind in job.inter_run:
        ids.update(dict.fromkeys(graph.runs[run].job_ids))
    return list(ids)


def _job_doc(job: Job) -> str:
    """What ``doit list`` shows for a job: its stage and params (``doit info`` shows its
    targets, which name its full id)."""
    params = " ".join(f"{k}={v}" for k, v in job.params.items())
    text = f"{job.pname} {params}".strip().replace("\n", " ")
    return text if len(text) <= _DOC_WIDTH else text[:_DOC_WIDTH - 1] + "…"


def _failure_message(job: Job, result: BuildResult) -> str:
    """repx's account of a job that did not succeed: each failed unit, its stderr tail and
    where its logs are (what ``repx build`` prints for it)."""
    lines = [f"repx: job {job.id} ({job.run}/{job.stage}) did not succeed: "
             f"{result.summary_line()}"]
    for failure in result.failures:
        lines.append(f"FAILED {failure.label} {failure.unit}: {failure.reason}")
        lines += [f"  | {line}" for line in tail(failure.stderr_log, STDERR_TAIL)]
        lines.append(f"  logs: {failure.stderr_log} (stdout: {failure.stdout_log})")
    return "\n".join(lines)


def _fail(message: str) -> TaskFailed:
    """The action of the error task."""
    return TaskFailed(message)
