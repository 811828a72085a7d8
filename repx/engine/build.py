"""``repx build`` as a library call: decide what must run, run it, report.

>>> result = run_build(LabOptions(lab_file="lab.nix"), ".repx",   # doctest: +SKIP
...                    BuildOptions(jobs=2))
>>> result.exit_code, result.summary_line()                        # doctest: +SKIP
(0, '13 executed, 0 up to date, 0 failed')

The result lists graph job ids (what ``repx list jobs`` shows); a scatter-gather job counts
as one job whatever its number of branches, and its failed units are in ``failures``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from repx.engine.noop_index import (
    NoopCheck,
    UpToDate,
    expansion_memo,
    index_path,
    indexed_ids,
    up_to_date_ids,
    write_index,
)
from repx.engine.plan import Plan, plan_build
from repx.errors import RepxError, UsageError
from repx.lab.graph import JobGraph, selection_closure
from repx.lab.open import (
    LabLocation,
    LabOptions,
    cache_dir,
    open_lab,
    start_locating_lab,
)
from repx.store import Store, layout

if TYPE_CHECKING:
    # Imported where used: a no-op build (the lab's index, a status byte and a stat per
    # job) never needs the schedulers, runtimes or explanations, and it is timed in ms.
    from repx.engine.explain import JobExplanation, PlanExplanation
    from repx.engine.recap import FailedJob
    from repx.engine.runtimes import Mount
    from repx.engine.scheduler import Failure, Reporter, UnitScheduler
    from repx.lab.expansion_memo import ExpansionMemo

_T = TypeVar("_T")

#: Exit code of a build stopped by SIGINT/SIGTERM (the shell's 128 + SIGINT).
EXIT_INTERRUPTED = 130


@dataclass
class BuildOptions:
    """What to build and how (the ``repx build`` options)."""

    targets: tuple[str, ...] = ()
    jobs: int = 0
    keep_going: bool = False
    force: tuple[str, ...] = ()
    verify: bool = False
    cpus: int = 0
    mem: int = 0
    grace: float = 5.0
    #: Local: seconds a job's leftover processes may outlive its main process before they
    #: are killed and the job fails (None: ``$REPX_DESCENDANT_TIMEOUT``, else 60).
    descendant_timeout: float | None = None
    #: "local" (this machine) or "slurm" (submit with sbatch and watch).
    scheduler: str = "local"
    #: SLURM: return after submitting instead of watching the jobs to their end.
    wait: bool = True
    #: SLURM: per-cluster resource overrides (resources.toml).
    resources_file: Path | None = None
    #: SLURM: seconds between two looks at squeue.
    poll: float = 1.0
    #: How jobs run: "native", "bwrap", "podman" or "docker" (repx.engine.runtimes;
    #: None: ``$REPX_RUNTIME``, else native).
    runtime: str | None = None
    #: Host paths every job sees under an isolating runtime (``--mount PATH[:ro|rw]``).
    mounts: tuple[Mount, ...] = ()
    #: Whether jobs under an isolating runtime may use the network (default: none).
    network: bool = False
    #: SLURM: where the nodes find the jobs' closures: "shared" (where this machine has
    #: them) or "node-local" (each node unpacks the lab's export; None: env, else shared).
    artifact_store: str | None = None
    #: SLURM node-local: the folder on each node to unpack into (None:
    #: ``$REPX_ARTIFACT_DIR``, else the node's ``$TMPDIR``).
    artifact_dir: str | None = None
    #: SLURM: where jobs write ``$out`` while they run: "shared" (the store, default) or
    #: "node-local" (the node's disk, committed to the store after success and verified).
    scratch: str | None = None
    #: SLURM node-local scratch: the folder on each node (None: ``$REPX_SCRATCH_DIR``,
    #: else the node's ``$TMPDIR``).
    scratch_dir: str | None = None
    #: SLURM node-local scratch: archive a failed job's scratch into its job folder.
    keep_failed_scratch: bool = False
    #: SLURM: jobs one array task runs one after another (``--pack``).
    pack: int = 1
    #: SLURM: seconds one array task should last at least (``--min-task-time``; None: off).
    min_task_time: float | None = None
    #: Touch ``<store>/outputs/<id>/repx/make.stamp`` of every selected job (not their
    #: upstream: each stamp is its own recipe's) that is done when the build ends (the
    #: targets of a ``repx makefile`` Makefile).
    make_stamps: bool = False
    #: More attempts a failed job may get (``--retries``; a stage's ``retries`` hint wins)
    #: and whether script failures are among them (``--retry-failed``):
    #: :mod:`repx.engine.failures`.
    retries: int = 0
    retry_failed: bool = False


@dataclass
class BuildResult:
    """The outcome of a build, per graph job id."""

    executed: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)
    #: SLURM --no-wait: jobs queued or running on SLURM when repx returned.
    submitted: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    #: The failures with their jobs' run, stage and params (the recap at the end).
    recap: list[FailedJob] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when everything asked for is done, 1 when something failed or did not run,
        130 when the build was interrupted."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.failed or self.blocked or self.cancelled or self.not_started:
            return 1
        return 0

    def summary_line(self) -> str:
        """``N executed, M up to date, K failed`` (+ blocked / not started when any)."""
        line = (f"{len(self.executed)} executed, {len(self.up_to_date)} up to date, "
                f"{len(self.failed)} failed")
        extra = [(self.blocked, "blocked"), (self.cancelled, "cancelled"),
                 (self.not_started, "not started"), (self.submitted, "submitted to SLURM")]
        line += "".join(f", {len(ids)} {word}" for ids, word in extra if ids)
        return line

    def to_json(self) -> dict[str, Any]:
        """The ``repx build --json`` object."""
        return {
            "executed": self.executed,
            "up_to_date": self.up_to_date,
            "failed": self.failed,
            "blocked": self.blocked,
            "cancelled": self.cancelled,
            "not_started": self.not_started,
            "submitted": self.submitted,
            "failures": [row.to_json() for row in self.recap] if self.recap else [
                {"unit": f.unit, "job": f.job, "label": f.label, "reason": f.reason,
                 "stderr_log": f.stderr_log, "stdout_log": f.stdout_log}
                for f in self.failures
            ],
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
        }


def run_build(
    lab: LabOptions | LabLocation | JobGraph,
    store: Store | str | os.PathLike[str],
    options: BuildOptions,
    reporter: Reporter | None = None,
    *,
    make_reporter: Callable[[], Reporter] | None = None,
) -> BuildResult:
    """Run every job of the selection that the store does not hold; record each outcome.

    ``lab`` is where the lab comes from (a lab file to build, a built lab directory), one
    whose Nix build is under way (:func:`repx.lab.open.start_locating_lab`: this call
    waits for it, or cancels it) or an already expanded graph; ``store`` an open store or
    its directory (created only once the lab has loaded, so a broken lab leaves no empty
    store behind). A build with nothing to do is answered from the lab's cached job index
    (:mod:`repx.engine.noop_index`) without expanding the lab; anything else expands it,
    plans, and runs what is missing.
    ``make_reporter`` makes the reporter (when ``reporter`` is None) only once something is
    to run: the no-op answer then never imports the display.
    """
    # Make stamps need the selection, which the no-op index does not keep (a recipe that
    # runs found something out of date anyway).
    may_be_noop = not (options.force or options.verify or options.make_stamps)
    lab_dir, index, ahead = _lab_checked_ahead(lab, store, options.targets,
                                               check=may_be_noop, readonly=False)
    try:
        if may_be_noop:
            opened = ahead.store if ahead.store is not None else store
            noop = _noop_build(lab_dir, opened, index, options.targets, ahead)
            if noop is not None:
                return noop
    finally:
        if ahead.store is not None and ahead.store is not store:
            ahead.store.close()
    graph = _expanded(lab, lab_dir, index, options.targets, store, ahead.memo)
    if reporter is None and make_reporter is not None:
        reporter = make_reporter()
    present = ahead.present()
    if isinstance(store, Store):
        return _full_build(graph, store, options, reporter, present)
    with Store(store) as opened:
        return _full_build(graph, opened, options, reporter, present)


def _touch_make_stamps(graph: JobGraph, store: Store, targets: tuple[str, ...],
                       result: BuildResult) -> None:
    """A make stamp for every selected job the build leaves done (ran now or before); a
    failed or blocked job gets none, so make runs it again. Upstream jobs are left alone:
    touching them would make their dependents' stamps look older than them."""
    done = {*result.executed, *result.up_to_date}
    outputs = Path(store.root) / layout.OUTPUTS
    for job in graph.select(list(targets)):
        if job.id not in done:
            continue
        stamp = outputs / job.id / layout.META / layout.MAKE_STAMP
        try:
            os.utime(stamp)
        except FileNotFoundError:
            if stamp.parent.is_dir():  # gone with its job folder: not done any more
                stamp.touch()


def dry_run(
    lab: LabOptions | LabLocation | JobGraph,
    store: Store | str | os.PathLike[str] | None,
    options: BuildOptions,
) -> Plan:
    """What :func:`run_build` would run, and why, without running anything.

    With nothing to do the answer comes from the cached job index, as for a build; with no
    store (or none at ``store``) everything would run.
    """
    may_be_noop = not (options.force or options.verify)
    lab_dir, index, ahead = _lab_checked_ahead(lab, store, options.targets,
                                               check=may_be_noop, readonly=True)
    opened = ahead.store if ahead.store is not None else _open_existing(store, readonly=True)
    try:
        if opened is not None and may_be_noop:
            found = ahead.up_to_date(index, opened)
            if found is not None:
                return Plan(closure=found.ids, up_to_date=found.ids, to_run=[])
        graph = _expanded(lab, lab_dir, index, options.targets, opened, ahead.memo)
        if opened is None:
            closure = selection_closure(graph, list(options.targets))
            return Plan(closure, [], list(closure), dict.fromkeys(closure, "not in the store"))
        return plan_build(graph, opened, list(options.targets), force=options.force,
                          verify=options.verify, marked=_marked_ids(), present=ahead.present())
    finally:
        if opened is not None and opened is not store:
            opened.close()


def explain_build(
    lab: LabOptions | LabLocation | JobGraph,
    store: Store | str | os.PathLike[str] | None,
    options: BuildOptions,
) -> PlanExplanation:
    """:func:`dry_run` with every job's reason explained (:mod:`repx.engine.explain`):
    what changed compared with the job that held its place in an earlier build.

    Always expands the lab (the no-op index keeps no identities).
    """
    from repx.engine.explain import explain_plan

    def explained(graph: JobGraph, opened: Store | None, plan: Plan) -> PlanExplanation:
        return explain_plan(graph, opened, plan.to_run, plan.up_to_date, plan.reasons)

    return _with_plan(lab, store, options, explained)


def explain_targets(
    lab: LabOptions | JobGraph,
    store: Store | str | os.PathLike[str] | None,
    targets: tuple[str, ...],
) -> list[JobExplanation]:
    """The explanation of every job ``targets`` select (``repx explain JOB``): why it
    would run, or that it is up to date."""
    from repx.engine.explain import explain_jobs

    def explained(graph: JobGraph, opened: Store | None, plan: Plan) -> list[JobExplanation]:
        selected = [job.id for job in graph.select(list(targets))]
        return explain_jobs(graph, opened, selected, plan.reasons)

    return _with_plan(lab, store, BuildOptions(targets=targets), explained)


def _with_plan(lab: LabOptions | LabLocation | JobGraph,
               store: Store | str | os.PathLike[str] | None, options: BuildOptions,
               then: Callable[[JobGraph, Store | None, Plan], _T]) -> _T:
    """Expand the lab, plan against the store (everything runs without one) and hand both
    to ``then`` while the store is open."""
    lab_dir, index = _lab_and_index(lab, options.targets)
    opened = _open_existing(store, readonly=True)
    try:
        graph = _expanded(lab, lab_dir, index, options.targets)
        if opened is None:
            closure = selection_closure(graph, list(options.targets))
            plan = Plan(closure, [], list(closure), dict.fromkeys(closure, "not in the store"))
        else:
            plan = plan_build(graph, opened, list(options.targets), force=options.force,
                              verify=options.verify, marked=_marked_ids())
        return then(graph, opened, plan)
    finally:
        if opened is not None and opened is not store:
            opened.close()


def _marked_ids() -> Callable[[str], frozenset[str] | None]:
    """The ids a closure mark names, read from the no-op indexes of this cache."""
    return partial(indexed_ids, cache_dir())


def _open_existing(store: Store | str | os.PathLike[str] | None, *,
                   readonly: bool) -> Store | None:
    """``store`` itself, or the store at that directory when one exists there (else None)."""
    if store is None or isinstance(store, Store):
        return store
    return Store(store, readonly=readonly) if Store.exists(store) else None


def _lab_and_index(lab: LabOptions | LabLocation | JobGraph,
                   targets: tuple[str, ...]) -> tuple[Path, Path]:
    """The built lab directory (building the lab file first if need be) and where the no-op
    index of ``targets`` in it lives."""
    with _location(lab) as location:
        lab_dir = location.wait()
    return lab_dir, index_path(cache_dir(), lab_dir, targets)


def _location(lab: LabOptions | LabLocation | JobGraph) -> LabLocation:
    """Where ``lab`` is: its Nix build started now if it is a lab file's."""
    if isinstance(lab, LabLocation):
        return lab
    if isinstance(lab, JobGraph):
        return LabLocation(Path(lab.lab.path))
    return start_locating_lab(lab)


class _CheckedAhead:
    """The store, opened while Nix builds the lab, and the no-op answer for the lab the
    store built last with the same targets (or the lab itself when its directory was
    given): most builds are of that very lab, and on two cores the check then costs no
    time of its own.

    While Nix runs, the outputs are checked by a thread of the lowest CPU priority, so that
    a lab whose own build keeps every core busy (a large edited lab) is not slowed by a
    check it may not need. Once Nix has given that lab, this thread works on the rest of
    the check with it; for another lab (or none) the thread stops after its chunk.

    ``store`` is None when no store exists or it could not be opened (the caller opens it
    again and reports why, after the lab's own errors, as without the check). The caller
    closes ``store`` unless it is the store it passed in.
    """

    def __init__(self, store: Store | None, expected: Path | None = None,
                 index: Path | None = None, check: NoopCheck | None = None) -> None:
        self.store = store
        self.expected = expected
        self.index = index
        self.found: UpToDate | None = None
        #: The answer for ``expected`` when Nix gave another lab (an edit of it, mostly),
        #: and the expansion memo its index holds (read by the check already).
        self.elsewhere: UpToDate | None = None
        self.memo: ExpansionMemo | None = None
        self.seconds = 0.0
        self._check = check
        self._started = time.monotonic()
        self._unwanted = threading.Event()
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        """Start checking in the background (a thread of the lowest priority)."""
        if self._check is not None:
            self._worker = threading.Thread(target=self._work_in_background, daemon=True,
                                            name="repx no-op check")
            self._worker.start()

    def _work_in_background(self) -> None:
        _lowest_priority()
        assert self._check is not None
        with contextlib.suppress(OSError):  # the foreground's own share reports it
            self._check.work(stop=self._unwanted.is_set)

    def settle(self, lab_dir: Path | None) -> None:
        """Nix gave ``lab_dir`` (None: no lab). For the lab expected the check is finished
        here, else it is stopped and its answer dropped; either way it is over on return."""
        check, self._check = self._check, None
        wanted = lab_dir is not None and lab_dir == self.expected
        if not wanted:
            self._unwanted.set()
        try:
            if wanted and check is not None:
                check.work()
        finally:
            if self._worker is not None:
                self._worker.join()
                self._worker = None
            if check is not None:
                if not wanted and lab_dir is not None:
                    # Whole only when the worker finished before Nix did: it is not
                    # finished here, since the answer is not this lab's.
                    self.elsewhere = check.answer()
                    self.memo = check.expansion_memo()
                check.close()
        if not wanted:
            self.index = None
        elif check is not None:  # (no check: the index or the store said no already)
            self.found = check.answer()
            self.seconds = time.monotonic() - self._started

    def present(self) -> UpToDate | None:
        """The closure this check found up to date, outputs and all: the lab expected, or
        the lab Nix gave instead of it. An edited lab shares most of its jobs with the one
        it replaces, and the plan then needs to look only at the others
        (:func:`repx.engine.plan.plan_build`'s ``present``)."""
        return self.found or self.elsewhere

    def up_to_date(self, index: Path, store: Store) -> UpToDate | None:
        """:func:`up_to_date_ids` of ``index``: the answer found ahead when it is of that
        index, else found now."""
        if self.index is not None and index == self.index:
            return self.found
        return up_to_date_ids(index, store)


def _lowest_priority() -> None:
    """Give the calling thread the lowest CPU priority. Linux keeps a nice value per thread;
    elsewhere the call would renice the whole process, so it is left out there."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _lab_checked_ahead(lab: LabOptions | LabLocation | JobGraph,
                       store: Store | str | os.PathLike[str] | None,
                       targets: tuple[str, ...], *, check: bool,
                       readonly: bool) -> tuple[Path, Path, _CheckedAhead]:
    """:func:`_lab_and_index`, with the no-op check of the lab expected (``check``) done
    while Nix builds it (see :class:`_CheckedAhead`)."""
    location = _location(lab)
    ahead = _CheckedAhead(None)
    try:
        if check:
            ahead = _check_ahead(store, targets, location, readonly=readonly)
        lab_dir = location.wait()
        ahead.settle(lab_dir)
    except BaseException:
        location.cancel()
        try:
            ahead.settle(None)
        finally:
            if ahead.store is not None and ahead.store is not store:
                ahead.store.close()
        raise
    return lab_dir, index_path(cache_dir(), lab_dir, targets), ahead


def _check_ahead(store: Store | str | os.PathLike[str] | None, targets: tuple[str, ...],
                 location: LabLocation, *, readonly: bool) -> _CheckedAhead:
    """The store opened, and the no-op check of the lab when its directory is known, else
    of the lab of the store's last build of ``targets``, started (:class:`_CheckedAhead`)."""
    try:
        opened = _open_existing(store, readonly=readonly)
    except RepxError:
        return _CheckedAhead(None)
    if opened is None:
        return _CheckedAhead(None)
    try:
        lab_dir = location.known
        if lab_dir is None:
            last = opened.get_meta("last_build") or {}
            lab_path = last.get("lab")
            if not isinstance(lab_path, str) or last.get("targets") != list(targets):
                return _CheckedAhead(opened)
            lab_dir = Path(lab_path)
        index = index_path(cache_dir(), lab_dir, targets)
        ahead = _CheckedAhead(opened, lab_dir, index, NoopCheck.open(index, opened))
    except RepxError:
        if opened is not store:
            opened.close()
        return _CheckedAhead(None)
    except BaseException:
        if opened is not store:
            opened.close()
        raise
    if location.known is None:  # Nix is still building: check beside it
        ahead.start()
    return ahead


def _expanded(lab: LabOptions | LabLocation | JobGraph, lab_dir: Path, index: Path,
              targets: tuple[str, ...],
              store: Store | str | os.PathLike[str] | None = None,
              memo: ExpansionMemo | None = None) -> JobGraph:
    """The job graph of the lab (expanded and validated now unless given), after writing the
    no-op index of a selection of whole runs (a Makefile recipe per job would leave one
    index per job, so single jobs are not indexed).

    A lab of all runs not indexed yet is usually an edit of the one ``store`` built last:
    its expansion reuses that lab's ids where they apply (:mod:`repx.lab.expansion_memo`),
    and its own index keeps the memo for the next edit. ``memo`` is that lab's memo when
    the check ahead read it already.
    """
    if isinstance(lab, JobGraph):
        graph = lab
    else:
        options = lab.options if isinstance(lab, LabLocation) else lab
        assert options is not None, "a lab located from options"
        reuse = None if targets or index.exists() else (
            memo if memo is not None else _last_expansion(store, lab_dir))
        graph = open_lab(replace(options, lab_dir=str(lab_dir)), reuse=reuse)
    if not index.exists() and all(t.startswith("@") or t in graph.runs for t in targets):
        write_index(index, graph, selection_closure(graph, list(targets)),
                    everything=not targets)
    return graph


def _last_expansion(store: Store | str | os.PathLike[str] | None,
                    lab_dir: Path) -> ExpansionMemo | None:
    """The expansion memo of the lab the store's last build of all runs built, when that
    was another lab (None: no store, no such build, or its index is gone)."""
    try:
        opened = _open_existing(store, readonly=True)
    except RepxError:
        return None  # the build reports an unusable store itself, later
    if opened is None:
        return None
    try:
        last = opened.get_meta("last_build") or {}
    finally:
        if opened is not store:
            opened.close()
    lab_path = last.get("lab")
    if not isinstance(lab_path, str) or last.get("targets") or lab_path == str(lab_dir):
        return None
    return expansion_memo(index_path(cache_dir(), Path(lab_path), ()))


def _full_build(graph: JobGraph, store: Store, options: BuildOptions,
                reporter: Reporter | None, present: UpToDate | None = None) -> BuildResult:
    """Plan against the store (``present``: see :func:`plan_build`) and run what the plan
    says must run."""
    started = time.time()
    clock = time.monotonic()
    plan = plan_build(graph, store, list(options.targets), force=options.force,
                      verify=options.verify, marked=_marked_ids(), present=present)
    result = BuildResult(up_to_date=list(plan.up_to_date))
    from repx.engine.explain import record_build
    from repx.engine.units import Outcome, UnitState
    from repx.store.gc import register_build_root

    register_build_root(store, graph)

    record_build(store, graph)
    if plan.to_run:
        scheduler = _scheduler(graph, store, plan, options, reporter)
        scheduler.run()
        buckets = {Outcome.SUCCEEDED: result.executed, Outcome.FAILED: result.failed,
                   Outcome.BLOCKED: result.blocked, Outcome.CANCELLED: result.cancelled,
                   Outcome.NOT_STARTED: result.not_started}
        for job_id in plan.to_run:
            final = scheduler.final[job_id]
            if final.outcome is Outcome.UP_TO_DATE:
                result.up_to_date.append(job_id)
                continue
            if not options.wait and final.slurm_id and final.state is not UnitState.DONE:
                result.submitted.append(job_id)
                continue
            buckets.get(scheduler.job_outcome(job_id), result.not_started).append(job_id)
        result.failures = scheduler.failures
        if scheduler.failures:
            from repx.engine.recap import failed_jobs

            result.recap = failed_jobs(graph, scheduler.failures)
        result.interrupted = bool(scheduler.interrupted)
    result.seconds = time.monotonic() - clock
    _record_last_build(store, str(graph.lab.path), options.targets, started, result)
    if options.make_stamps:
        _touch_make_stamps(graph, store, options.targets, result)
    return result


#: The blob of the ``last_build`` meta record that holds its up-to-date ids.
UP_TO_DATE_BLOB = "up_to_date"


def _noop_build(lab_dir: str | Path, store: Store | str | os.PathLike[str], index: Path,
                targets: tuple[str, ...], ahead: _CheckedAhead) -> BuildResult | None:
    """The result of a build with nothing to do, from the lab's cached job index alone
    (or the answer ``ahead`` found for it); None when anything is missing (run the full
    build then).

    Only taken when the lab is already a gc root of this store, so skipping
    :func:`register_build_root` loses nothing.
    """
    opened = _open_existing(store, readonly=False)
    if opened is None:
        return None
    try:
        clock = time.monotonic()
        started = time.time()
        if not any(root.lab_path == str(lab_dir) for root in opened.roots()):
            return None
        found = ahead.up_to_date(index, opened)
        if found is None:
            return None
        seconds = time.monotonic() - clock + (ahead.seconds if index == ahead.index else 0.0)
        result = BuildResult(up_to_date=found.ids, seconds=seconds)
        _record_last_build(opened, str(lab_dir), targets, started, result, noop=found)
        return result
    finally:
        if opened is not store:
            opened.close()


def _record_last_build(store: Store, lab: str, targets: tuple[str, ...], started: float,
                       result: BuildResult, *, noop: UpToDate | None = None) -> None:
    """What ``repx cache stats`` reports as the last build (hit rates); a no-op build
    (``noop``: the closure it found up to date) also keeps that closure's mark
    (:meth:`Store.closure_succeeded`).

    The up-to-date ids, all of the lab's jobs on a no-op, are one newline-joined text in the
    record's blob ``up_to_date_blob`` names, which the store rewrites only when it changed
    (a no-op after a no-op writes none); the record keeps their count. A no-op's text is
    the index's own, not joined again. :func:`repx.report.store_views.last_build_summary`
    reads that and the inline shape.
    """
    up_to_date_text = noop.ids_text if noop is not None else "\n".join(result.up_to_date)
    store.set_meta("last_build", {
        "lab": lab,
        "targets": list(targets),
        "started": started,
        "finished": time.time(),
        "executed": result.executed,
        "up_to_date_blob": UP_TO_DATE_BLOB,
        "up_to_date_count": len(result.up_to_date),
        "failed": result.failed,
        "blocked": result.blocked,
        "cancelled": result.cancelled,
        "not_started": result.not_started,
    }, blobs={UP_TO_DATE_BLOB: up_to_date_text.encode()},
        closure_mark=noop.mark if noop is not None else None)


def _scheduler(graph: JobGraph, store: Store, plan: Plan, options: BuildOptions,
               reporter: Reporter | None) -> UnitScheduler:
    from repx.engine.jobserver import JobserverUnavailable, jobserver_from_env
    from repx.engine.local import LocalOptions, LocalScheduler
    from repx.engine.runtimes import make_runtime, runtime_from_env

    runtime = runtime_from_env(options.runtime)
    from repx.engine.slurm.node_local import artifact_dir_from, artifact_store_from

    artifact_store = artifact_store_from(options.artifact_store)
    if options.scheduler == "slurm":
        from repx.engine.slurm.node_local import prepare_node_lab
        from repx.engine.slurm.resources import ResourceRules
        from repx.engine.slurm.scheduler import SlurmOptions, SlurmScheduler
        from repx.engine.slurm.scratch import scratch_from

        if artifact_store == "node-local" and runtime == "native":
            raise UsageError("--artifact-store node-local needs an isolating runtime "
                             "(--runtime bwrap binds each node's unpacked lab at "
                             "/nix/store; podman and docker load its images from there)")
        slurm = SlurmOptions(keep_going=options.keep_going, wait=options.wait,
                             retries=options.retries, retry_failed=options.retry_failed,
                             poll=options.poll, pack=options.pack,
                             min_task_time=options.min_task_time,
                             resources=ResourceRules.load(options.resources_file),
                             runtime=make_runtime(runtime, Path(graph.lab.path),
                                                  mounts=options.mounts,
                                                  network=options.network))
        if slurm.runtime.isolating:
            slurm.runtime.check_runs(sorted({graph.jobs[j].run for j in plan.to_run}))
        slurm.scratch = scratch_from(options.scratch, options.scratch_dir,
                                     options.keep_failed_scratch)
        if slurm.scratch is not None and slurm.runtime.isolating:
            raise UsageError(f"--scratch node-local runs jobs natively; --runtime "
                             f"{runtime} binds the store's out/ into the sandbox")
        if artifact_store == "node-local":
            slurm.node_lab = prepare_node_lab(Path(graph.lab.path), store.root,
                                              artifact_dir_from(options.artifact_dir))
        return SlurmScheduler(graph, store, plan, slurm, reporter)
    if options.artifact_store not in (None, "shared") or options.artifact_dir is not None:
        raise UsageError("--artifact-store and --artifact-dir are for --scheduler slurm "
                         "(a local build uses this machine's store or unpack cache)")
    if options.scratch not in (None, "shared") or options.scratch_dir is not None \
            or options.keep_failed_scratch:
        raise UsageError("--scratch, --scratch-dir and --keep-failed-scratch are for "
                         "--scheduler slurm (a local job writes its outputs in place)")
    if options.scheduler != "local":
        raise UsageError(f"unknown scheduler '{options.scheduler}' (use local or slurm)")
    local = LocalOptions(
        jobs=options.jobs, keep_going=options.keep_going, cpus=options.cpus,
        mem=options.mem, grace=options.grace, retries=options.retries,
        retry_failed=options.retry_failed,
        runtime=make_runtime(runtime, Path(graph.lab.path), mounts=options.mounts,
                             network=options.network),
    )
    if options.descendant_timeout is not None:
        local.descendant_timeout = options.descendant_timeout
    server = jobserver_from_env()
    if isinstance(server, JobserverUnavailable):
        # What a sub-make does in the same case: more would exceed make's -j.
        sys.stderr.write(f"repx: warning: {server.reason}; running one job at a time\n")
        local.jobs = 1
    else:
        local.jobserver = server
    return LocalScheduler(graph, store, plan, local, reporter)
