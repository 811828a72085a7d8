"""``repx build`` as a library call: plan against the store, run what is missing, report.

>>> graph = open_lab(LabOptions(lab_file="lab.nix"))          # doctest: +SKIP
>>> with Store(".repx") as store:                              # doctest: +SKIP
...     result = run_build(graph, store, BuildOptions(jobs=2))
>>> result.exit_code, result.summary_line()                    # doctest: +SKIP
(0, '13 executed, 0 up to date, 0 failed')

The result lists graph job ids (what ``repx list jobs`` shows); a scatter-gather job counts
as one job whatever its number of branches, and its failed units are in ``failures``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repx.engine.local import (
    BLOCKED,
    CANCELLED,
    FAILED,
    NOT_STARTED,
    SUCCEEDED,
    UP_TO_DATE,
    Failure,
    LocalOptions,
    LocalScheduler,
    Reporter,
)
from repx.engine.plan import Plan, plan_build
from repx.engine.scheduler import UnitScheduler
from repx.errors import UsageError
from repx.expand import JobGraph
from repx.gc import register_build_root
from repx.graph_index import up_to_date_ids
from repx.store import Store

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
    #: "local" (this machine) or "slurm" (submit with sbatch and watch).
    scheduler: str = "local"
    #: SLURM: return after submitting instead of watching the jobs to their end.
    wait: bool = True
    #: SLURM: per-cluster resource overrides (resources.toml).
    resources_file: Path | None = None
    #: SLURM: seconds between two looks at squeue.
    poll: float = 1.0


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
            "failures": [
                {"unit": f.unit, "job": f.job, "label": f.label, "reason": f.reason,
                 "stderr_log": f.stderr_log, "stdout_log": f.stdout_log}
                for f in self.failures
            ],
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
        }


def dry_run(graph: JobGraph, store: Store | None, options: BuildOptions) -> Plan:
    """The plan without running anything; with no store, everything would run."""
    if store is None:
        from repx.engine.plan import selection_closure

        closure = selection_closure(graph, list(options.targets))
        return Plan(closure, [], list(closure), dict.fromkeys(closure, "not in the store"))
    return plan_build(graph, store, list(options.targets), force=options.force,
                      verify=options.verify)


def run_build(
    graph: JobGraph,
    store: Store,
    options: BuildOptions,
    reporter: Reporter | None = None,
) -> BuildResult:
    """Run every job of the selection that the store does not hold; record each outcome."""
    started = time.time()
    clock = time.monotonic()
    plan = plan_build(graph, store, list(options.targets), force=options.force,
                      verify=options.verify)
    result = BuildResult(up_to_date=list(plan.up_to_date))
    register_build_root(store, graph)
    if plan.to_run:
        scheduler = _scheduler(graph, store, plan, options, reporter)
        scheduler.run()
        buckets = {SUCCEEDED: result.executed, FAILED: result.failed,
                   BLOCKED: result.blocked, CANCELLED: result.cancelled,
                   NOT_STARTED: result.not_started}
        for job_id in plan.to_run:
            final = scheduler.final[job_id]
            if final.outcome == UP_TO_DATE:
                result.up_to_date.append(job_id)
                continue
            if not options.wait and final.slurm_id and final.state != "done":
                result.submitted.append(job_id)
                continue
            buckets.get(scheduler.job_outcome(job_id), result.not_started).append(job_id)
        result.failures = scheduler.failures
        result.interrupted = bool(scheduler.interrupted)
    result.seconds = time.monotonic() - clock
    _record_last_build(store, str(graph.lab.path), options.targets, started, result)
    return result


def run_noop_build(lab_dir: str, store: Store, index: Path,
                   targets: tuple[str, ...]) -> BuildResult | None:
    """The result of a build with nothing to do, from the lab's cached job index alone
    (:mod:`repx.graph_index`); None when anything is missing (run the full build then).

    Only taken when the lab is already a gc root of this store, so skipping
    :func:`register_build_root` loses nothing.
    """
    clock = time.monotonic()
    started = time.time()
    if not any(root.lab_path == lab_dir for root in store.roots()):
        return None
    ids = up_to_date_ids(index, store)
    if ids is None:
        return None
    result = BuildResult(up_to_date=ids, seconds=time.monotonic() - clock)
    _record_last_build(store, lab_dir, targets, started, result)
    return result


def _record_last_build(store: Store, lab: str, targets: tuple[str, ...], started: float,
                       result: BuildResult) -> None:
    """What ``repx cache stats`` reports as the last build (hit rates)."""
    store.set_meta("last_build", {
        "lab": lab,
        "targets": list(targets),
        "started": started,
        "finished": time.time(),
        "executed": result.executed,
        "up_to_date": result.up_to_date,
        "failed": result.failed,
        "blocked": result.blocked,
        "cancelled": result.cancelled,
        "not_started": result.not_started,
    })


def _scheduler(graph: JobGraph, store: Store, plan: Plan, options: BuildOptions,
               reporter: Reporter | None) -> UnitScheduler:
    if options.scheduler == "slurm":
        from repx.engine.slurm import ResourceRules, SlurmOptions, SlurmScheduler

        slurm = SlurmOptions(keep_going=options.keep_going, wait=options.wait,
                             poll=options.poll,
                             resources=ResourceRules.load(options.resources_file))
        return SlurmScheduler(graph, store, plan, slurm, reporter)
    if options.scheduler != "local":
        raise UsageError(f"unknown scheduler '{options.scheduler}' (use local or slurm)")
    local = LocalOptions(
        jobs=options.jobs, keep_going=options.keep_going, cpus=options.cpus,
        mem=options.mem, grace=options.grace,
    )
    return LocalScheduler(graph, store, plan, local, reporter)
