"""The part of a build's scheduler that does not depend on where units run.

:class:`UnitScheduler` turns a plan into a graph of units (:class:`~.units.UnitGraph`, which
owns the rules by which outcomes propagate), claims units in the store before they run and
records their outcomes after, writes each unit's input files and expands scatter-gather
jobs once their scatter is done. The executors subclass it:
:class:`repx.engine.local.LocalScheduler` starts processes on this machine,
:class:`repx.engine.slurm.SlurmScheduler` submits to SLURM and watches.

Store discipline: a unit is *claimed* before it runs (two ``repx
build`` on one store never run the same unit: the second waits for the first's outcome)
and its outcome is recorded as soon as it is known — after its outputs were checked and
hashed, so a record never says "succeeded" for incomplete outputs. Outcomes and claims are
written in batches, one transaction per scheduler iteration, not one per job.

Inter-run dependencies are gate nodes: a hard gate opens when every job of the run it waits
for succeeded, a soft gate when they all finished, whatever the outcome.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from repx.engine.contract import (
    InputResolver,
    resolve_output,
    step_inputs,
    write_json,
)
from repx.engine.manifest import ManifestWriter
from repx.engine.plan import Plan, missing_output
from repx.engine.units import (
    Outcome,
    Unit,
    UnitGraph,
    UnitState,
    branch_steps,
    read_work_items,
)
from repx.errors import RepxError
from repx.identity import canonical_json, scatter_id
from repx.lab.graph import Job, JobGraph
from repx.lab.resources import Resources, validate_resources
from repx.store import (
    ACTIVE_STATUSES,
    JobRecord,
    OutputFile,
    Status,
    Store,
    layout,
    owner_alive,
    owner_token,
    this_host,
)

#: How often units claimed by another live ``repx build`` are looked up again.
FOREIGN_POLL_SECONDS = 0.25


@dataclass
class SchedulerOptions:
    """What every executor needs to know about a build (what to run is in the plan)."""

    #: Keep running everything independent of a failure (``--keep-going``).
    keep_going: bool = False
    #: More attempts a failed job may get (``--retries``; a stage's ``retries`` resource
    #: hint wins): what is retried and how is :mod:`repx.engine.failures`'.
    retries: int = 0
    #: Retry script failures (a non-zero exit) too (``--retry-failed``).
    retry_failed: bool = False


@dataclass
class Failure:
    """A unit that did not succeed, for the report: what, why, and where its logs are."""

    unit: str
    job: str
    label: str
    reason: str
    stdout_log: str
    stderr_log: str


class Reporter:
    """What the scheduler tells its display; the base class shows nothing."""

    def begin(self, total: int) -> None:
        """The build starts with ``total`` units to run (scatter-gather adds more later)."""

    def add_units(self, count: int) -> None:
        """A scatter expanded into ``count`` more units."""

    def queued(self, unit: Unit) -> None:
        """A unit was submitted to a batch system and waits there (SLURM)."""

    def started(self, unit: Unit) -> None:
        """A unit's process started."""

    def finished(self, unit: Unit, seconds: float) -> None:
        """A unit reached its outcome (``unit.outcome``); ``seconds`` it ran (0 if not)."""

    def failed(self, failure: Failure) -> None:
        """A unit failed (called once per failed unit, right away)."""

    def message(self, text: str) -> None:
        """A line worth showing (interrupts, waits on another build)."""

    def limited(self, text: str) -> None:
        """A site limit holds submissions back (``text`` says how far; empty: no more)."""

    def tick(self) -> None:
        """Periodic refresh (live displays redraw here)."""

    def close(self) -> None:
        """The build is over."""

    #: Seconds between ticks while something runs; None when the display needs none.
    tick_interval: float | None = None


class UnitScheduler:
    """The executor-independent half of a scheduler; see the module docstring."""

    def __init__(
        self,
        graph: JobGraph,
        store: Store,
        plan: Plan,
        options: SchedulerOptions,
        reporter: Reporter | None = None,
    ) -> None:
        self.graph = graph
        self.store = store
        self.plan = plan
        self.options = options
        self.reporter = reporter or Reporter()
        self.owner = owner_token()
        self.host = this_host()
        self.pid = os.getpid()
        self.lab = str(graph.lab.path)
        self.folders = store.folders
        self.resolver = InputResolver(graph.jobs, self.folders)
        self.manifests = ManifestWriter(graph, self.folders)
        self.run_index = {name: i for i, name in enumerate(graph.runs)}
        self.unit_graph = UnitGraph(self._unit_done)
        #: Every unit by id (gates excluded), and the ready queue: the unit graph's own.
        self.units: dict[str, Unit] = self.unit_graph.units
        self.ready = self.unit_graph.ready
        #: graph job id -> the unit whose outcome is the job's (simple unit or gather)
        self.final: dict[str, Unit] = {}
        #: graph job id -> every unit of that job (scatter-gather jobs have many)
        self.job_units: dict[str, list[Unit]] = {}
        self.gates: dict[tuple[str, str], Unit] = {}
        self.foreign: dict[str, Unit] = {}
        self.failures: list[Failure] = []
        self.stopping = False
        #: The last commit refused a claim (another build holds the unit).
        self.claims_refused = False
        self.interrupted = 0
        #: Why the build is stopping when it is not a signal (the store cannot be written):
        #: the reason recorded for the jobs it cancels.
        self.stop_reason: str | None = None
        self.unit_seconds: dict[str, float] = {}
        #: Each unit's attempts in this build (dicts as ``JobRecord.attempts`` holds them)
        #: and the failure kind of its last one, for the record of its outcome.
        self.attempts: dict[str, list[dict[str, Any]]] = {}
        self.failure_kinds: dict[str, str] = {}
        self._order = 0
        self._finishes: list[JobRecord] = []
        self._static_inputs: dict[str, dict[str, str]] = {}
        self._branch_ids: dict[tuple[str, int], dict[str, str]] = {}
        self._up_to_date = set(plan.up_to_date)

    # ------------------------------------------------------------------ graph of units

    def _new_unit(self, job: Job, role: str, uid: str, label: str, script: str,
                  outputs: dict[str, Any], resources: Resources | dict[str, Any],
                  **extra: Any) -> Unit:
        """A unit of ``job`` with its own hints (an executable's, else the job's merged ones);
        admission falls back to the job's cpus/mem for what those hints leave unset."""
        parsed = resources if isinstance(resources, Resources) else validate_resources(
            resources, f"stage '{job.pname}' (file {job.stage_file})")
        cpus = parsed.cpu_count or job.resources.cpu_count or 1
        mem = parsed.mem_bytes or job.resources.mem_bytes or 0
        self._order += 1
        unit = Unit(
            id=uid, job=job, role=role, label=label, script=script, outputs=outputs,
            cpus=int(cpus), mem=int(mem), run_index=self.run_index.get(job.run, 0),
            order=self._order, resources=parsed, **extra,
        )
        self.unit_graph.add(unit)
        self.job_units.setdefault(job.id, []).append(unit)
        return unit

    def _build_units(self) -> None:
        jobs = self.graph.jobs
        firsts: dict[str, Unit] = {}
        for job_id in self.plan.to_run:
            job = jobs[job_id]
            if job.kind == "scatter-gather":
                scatter_exe = job.executables["scatter"]
                gather_exe = job.executables["gather"]
                scatter = self._new_unit(
                    job, "scatter", scatter_id(job), f"{job.pname}/scatter", scatter_exe.script,
                    scatter_exe.outputs, scatter_exe.resources or job.resources)
                gather = self._new_unit(
                    job, "gather", job.id, f"{job.pname}/gather", gather_exe.script,
                    job.outputs, gather_exe.resources or job.resources)
                self._link(gather, [scatter])
                firsts[job_id] = scatter
                self.final[job_id] = gather
            else:
                unit = self._new_unit(job, "job", job.id, job.pname,
                                      job.executables["main"].script, job.outputs, job.resources)
                firsts[job_id] = unit
                self.final[job_id] = unit
        for job_id in self.plan.to_run:
            job = jobs[job_id]
            deps = [self.final[d] for d in job.depends_on if d in self.final]
            deps.extend(self._gates_of(job))
            self._link(firsts[job_id], deps)

    def _gates_of(self, job: Job) -> list[Unit]:
        """The inter-run gates a job waits on: the dependencies shared by all its runs."""
        runs = self.graph.runs
        common: set[tuple[str, str]] | None = None
        for name in job.runs:
            deps = set(runs[name].dependencies) if name in runs else set()
            common = deps if common is None else common & deps
        gates = []
        for dep_run, kind in sorted(common or ()):
            key = (dep_run, kind)
            gate = self.gates.get(key)
            if gate is None:
                self._order += 1
                gate = Unit(id=f"gate:{kind}:{dep_run}", job=job, role="gate",
                            label=f"{kind} dependency on run {dep_run}", script="", outputs={},
                            cpus=0, mem=0, run_index=0, order=self._order, gate=True,
                            soft=kind == "soft")
                self.gates[key] = gate
                members = [self.final[j] for j in runs[dep_run].job_ids if j in self.final]
                self._link(gate, members)
            gates.append(gate)
        return gates

    def _link(self, unit: Unit, deps: list[Unit]) -> None:
        self.unit_graph.link(unit, deps)

    def _resolve(self, unit: Unit, outcome: Outcome, reason: str) -> None:
        """Give ``unit`` its outcome and pass it on (:meth:`UnitGraph.resolve`)."""
        self.unit_graph.resolve(unit, outcome, reason)

    def _unit_done(self, unit: Unit) -> None:
        self.reporter.finished(unit, self.unit_seconds.get(unit.id, 0.0))
        self._resolved(unit)

    #: Whether a unit whose record names a live SLURM job is waited for instead of claimed
    #: (the local executor; the SLURM executor adopts such jobs before it claims).
    waits_for_slurm_jobs = True

    def _resolved(self, unit: Unit) -> None:
        """Hook: ``unit`` just got its outcome (executors with queued work react here)."""

    def _commit(self, starts: list[Unit],
                replaced: dict[str, bytes | None] | None = None) -> None:
        """One transaction: the outcomes reaped so far, then claims for ``starts``.

        Units whose claim is refused are taken out of ``starts``: done by another build
        (up to date) or being run by one (waited for). ``replaced`` receives the records
        the claims replaced (see :meth:`Store.claim`).
        """
        finishes, self._finishes = self._finishes, []
        if not finishes and not starts:
            return
        with self.store.batch():
            for record in finishes:
                self.store.finish(record)
            refused = self._claim_each(starts, replaced) if starts else []
        if starts or refused:
            self.claims_refused = bool(refused)
        for unit in refused:
            starts.remove(unit)
        self._settle_refused(refused)

    def _claim_each(self, units: list[Unit],
                    replaced: dict[str, bytes | None] | None = None) -> list[Unit]:
        """Claim ``units`` (inside the caller's batch); the ones not claimed. A refused unit
        is marked ``cached`` when the store already holds it complete; ``replaced`` as for
        :meth:`_commit`."""
        store = self.store
        refused: list[Unit] = []
        before = store.statuses([u.id for u in units])
        for unit in units:
            status = before.get(unit.id)
            if self._cached(unit, status):
                unit.state = UnitState.CACHED
                refused.append(unit)
            elif (self.waits_for_slurm_jobs and status in ACTIVE_STATUSES
                  and self._on_slurm(unit.id)):
                refused.append(unit)
            elif not store.claim(unit.id, self.owner, host=self.host, pid=self.pid,
                                 lab=self.lab, run=unit.job.run, stage=self._stage(unit),
                                 force=self._takes_over(unit, status),
                                 replaced=replaced):
                refused.append(unit)
            elif status in ACTIVE_STATUSES:
                unit.maybe_orphan = True  # an abandoned claim: see local.kill_orphans
        return refused

    def _settle_refused(self, refused: list[Unit]) -> None:
        """Units not claimed: done when the store holds them, else waited for."""
        for unit in refused:
            if unit.state is UnitState.CACHED:
                self._done_elsewhere(unit)
            else:
                self._claimed_elsewhere(unit)

    def _cached(self, unit: Unit, status: Status | None) -> bool:
        """A scatter or step unit the store already holds, complete (the plan only looked
        at graph jobs; these units are known once their scatter ran)."""
        return (status is Status.SUCCEEDED and unit.role in ("scatter", "step")
                and unit.job.id not in self.plan.forced
                and self._outputs_missing(unit) is None)

    def _takes_over(self, unit: Unit, status: Status | None) -> bool:
        """Whether claiming ``unit`` may replace a *succeeded* record: when it was forced, when
        the plan found the job's outputs missing or changed, or for a scatter/step unit that
        reaches the claim (a complete one is taken as cached before). A job another build
        finished since the plan is not taken over (it is up to date)."""
        if status is not Status.SUCCEEDED:
            return False
        return (unit.job.id in self.plan.forced or unit.id in self.plan.stale
                or unit.role in ("scatter", "step"))

    def _on_slurm(self, unit_id: str) -> bool:
        """Whether the unit's record names a SLURM job that is still pending or running
        (submitted by a ``--no-wait`` build nobody watches): such a unit is waited for,
        never run a second time here."""
        record = self.store.get(unit_id)
        if record is None or not record.slurm_id or shutil.which("squeue") is None:
            return False
        proc = subprocess.run(["squeue", "-h", "-r", "-j", record.slurm_id.split("_")[0],
                               "-o", "%i %T"], capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            task, _, state = line.strip().partition(" ")
            if task == record.slurm_id and state in ("PENDING", "RUNNING", "CONFIGURING",
                                                     "COMPLETING", "SUSPENDED"):
                return True
        return False

    def _stage(self, unit: Unit) -> str:
        if unit.role == "scatter":
            return f"{unit.job.pname}/scatter"
        if unit.role == "step":
            return f"{unit.job.pname}/{unit.step}"
        return unit.job.pname

    def _done_elsewhere(self, unit: Unit) -> None:
        """The store already holds this unit: take it as done without running it."""
        unit.state = UnitState.READY
        if unit.role == "scatter":
            try:
                self._expand(unit)
            except RepxError as exc:
                self._fail(unit, exc.message, record=False)
                return
        self._resolve(unit, Outcome.UP_TO_DATE, "")

    def _claimed_elsewhere(self, unit: Unit) -> None:
        record = self.store.get(unit.id)
        if record is not None and record.status is Status.SUCCEEDED:
            self._done_elsewhere(unit)
            return
        unit.state = UnitState.FOREIGN
        self.foreign[unit.id] = unit
        who = f"{record.host} pid {record.pid}" if record else "another build"
        self.reporter.message(f"{unit.label} {unit.id} is being run by another repx build "
                              f"({who}); waiting for it")

    def _poll_foreign(self) -> None:
        records = self.store.get_many(list(self.foreign))
        for uid, unit in list(self.foreign.items()):
            record = records.get(uid)
            if record is not None and record.status is Status.SUCCEEDED:
                del self.foreign[uid]
                self._done_elsewhere(unit)
            elif record is not None and record.status in (Status.FAILED, Status.CANCELLED):
                del self.foreign[uid]
                self._fail(unit, f"{record.status.value} in another repx build "
                                 f"({record.host} pid {record.pid}): {record.reason}",
                           record=False)
            elif record is None or not owner_alive(record.host, record.pid, record.owner):
                del self.foreign[uid]
                unit.maybe_orphan = True
                self.unit_graph.push_ready(unit)

    def _outputs_missing(self, unit: Unit) -> str | None:
        missing = missing_output(unit.outputs, self.folders.out_dir(unit.id), unit.id)
        if missing is None:
            return None
        return f"did not write its declared output '{missing[0]}' ({missing[1]})"

    def _fail(self, unit: Unit, reason: str, exit_code: int | None = None, *,
              record: bool = True, report: bool = True) -> None:
        """Give ``unit`` the outcome FAILED: recorded in the store when this build holds its
        claim (``record``), shown at once unless the caller reports a group (``report``)."""
        failure = Failure(unit.id, unit.job.id, unit.label, reason, *self.folders.logs(unit.id))
        self.failures.append(failure)
        if record and unit.state in (UnitState.RUNNING, UnitState.READY, UnitState.WAITING):
            self._record(unit, Outcome.FAILED, exit_code=exit_code, reason=reason)
        if report:
            self.reporter.failed(failure)
        self._resolve(unit, Outcome.FAILED, reason)
        if not self.options.keep_going:
            self.stopping = True

    def _cancel(self, unit: Unit, code: int) -> None:
        name = signal.Signals(self.interrupted).name if self.interrupted else "interrupt"
        reason = self.stop_reason or f"interrupted ({name})"
        self._record(unit, Outcome.CANCELLED, exit_code=code, reason=reason)
        self._resolve(unit, Outcome.CANCELLED, reason)

    def _record(self, unit: Unit, outcome: Outcome, *, logs: bool = True,
                **fields: Any) -> None:
        """Queue the store record of ``unit``'s outcome (written at the next commit), with
        the status :attr:`Outcome.store_status` gives it and, unless ``logs`` is false, the
        paths of its logs."""
        status = outcome.store_status
        assert status is not None, f"{outcome} is never recorded"
        if logs:
            fields["stdout_log"], fields["stderr_log"] = self.folders.logs(unit.id)
        fields.setdefault("attempts", self.attempts.get(unit.id, []))
        if outcome is not Outcome.SUCCEEDED:
            fields.setdefault("failure", self.failure_kinds.get(unit.id, ""))
        self._finishes.append(JobRecord(unit.id, status, owner=self.owner, **fields))

    def _retries_allowed(self, unit: Unit, hints: dict[str, Any] | None = None) -> int:
        """How many retries ``unit`` may have: its ``retries`` hint (``hints``: the merged
        ones the executor uses, else the unit's own), else ``--retries``."""
        value = (hints if hints is not None else unit.resources).get("retries")
        return self.options.retries if value is None else int(value)

    def _finish_remaining(self) -> None:
        """Units that never started: blocked by a failure, or left after a stop. A retry
        that a stop kept from starting fails as its last attempt did (its claim ends)."""
        for unit in list(self.units.values()):
            attempts = self.attempts.get(unit.id)
            if attempts and unit.state is UnitState.READY:
                last = attempts[-1]
                self._fail(unit, f"{last['failure'] or 'failed'} (attempt {len(attempts)}; "
                                 "the build stopped before its retry)",
                           exit_code=last["exit_code"], report=False)
        if self._finishes:
            self._commit([])
        why = ("interrupted" if self.interrupted
               else "stopped after a failure (--keep-going runs it)")
        for unit in self.units.values():
            if unit.state is not UnitState.DONE and not unit.gate:
                self._resolve(unit, Outcome.NOT_STARTED, why)

    def _inputs_for(self, unit: Unit, meta: str) -> dict[str, str]:
        job = unit.job
        if unit.role == "job":
            return self.resolver.resolve(job, self._manifest_writer(meta))
        static = self._static(job, meta)
        if unit.role == "scatter":
            return static
        if unit.role == "step":
            assert unit.step is not None and unit.branch is not None
            item_path = f"{meta}/{layout.WORKER_ITEM_JSON}"
            write_json(item_path, unit.item)
            ids = self._branch_ids[(job.id, unit.branch)]
            exe = job.stage_def.steps[unit.step]
            dep_dirs = {d.stage: self.folders.out_dir(ids[d.stage]) for d in exe.deps}
            return step_inputs(job, exe, static_inputs=static, item_path=item_path,
                               dep_out_dirs=dep_dirs)
        # gather: the job's inputs plus worker__outs
        resolved = dict(static)
        resolved["worker__outs"] = f"{meta}/{layout.WORKER_OUTS_JSON}"
        return resolved

    def _static(self, job: Job, meta: str) -> dict[str, str]:
        static = self._static_inputs.get(job.id)
        if static is None:
            static = self.resolver.resolve(job, self._manifest_writer(meta))
            self._static_inputs[job.id] = static
        return static

    def _manifest_writer(self, meta: str) -> Callable[[str, list[str]], str]:
        def write(run: str, job_ids: list[str]) -> str:
            path = f"{meta}/{layout.manifest_file(run)}"
            statuses = {j: self.job_outcome(j) for j in job_ids}
            self.manifests.write(path, run, job_ids, statuses)
            return path

        return write

    def job_outcome(self, job_id: str) -> Outcome:
        """A graph job's outcome in this build, as manifests and summaries name it."""
        if job_id in self._up_to_date:
            return Outcome.SUCCEEDED
        final = self.final.get(job_id)
        if final is None:
            return Outcome.NOT_STARTED
        if final.outcome is Outcome.UP_TO_DATE:
            return Outcome.SUCCEEDED
        if final.outcome is Outcome.BLOCKED and any(
                u.outcome is Outcome.FAILED for u in self.job_units.get(job_id, ())):
            return Outcome.FAILED
        return final.outcome or Outcome.NOT_STARTED

    def _expand(self, scatter: Unit) -> None:
        """After the scatter: one unit per (branch, step), and the gather's inputs."""
        job = scatter.job
        sg = job.stage_def.scatter_gather
        assert sg is not None
        gather = self.final[job.id]
        template = job.executables["scatter"].outputs.get("work__items", sg.work_items)
        items_path = resolve_output(template, self.folders.out_dir(scatter.id),
                                    job=scatter.id, name="work__items")
        items = read_work_items(items_path, job)
        branches = [(item, branch_steps(job, item)) for item in items]
        job_meta = self.folders.meta_dir(job.id)
        os.makedirs(job_meta, exist_ok=True)
        manifest = layout.units_manifest(
            scatter.id, [(item, {s.step: s.id for s in steps}) for item, steps in branches])
        _write_atomically(f"{job_meta}/{layout.UNITS_JSON}", canonical_json(manifest))
        steps = job.stage_def.steps
        sinks: list[Unit] = []
        sink_outputs: list[dict[str, str]] = []
        new = 0
        for index, (item, branch) in enumerate(branches):
            self._branch_ids[(job.id, index)] = {s.step: s.id for s in branch}
            for s in branch:
                unit = self.units.get(s.id)
                if unit is None:
                    exe = steps[s.step]
                    unit = self._new_unit(
                        job, "step", s.id, f"{job.pname}/{s.step}[{index}]", exe.script,
                        exe.outputs, exe.resources or job.resources,
                        step=s.step, branch=index, item=item)
                    new += 1
                    self._link(unit, [self.units[d] for d in s.deps])
                if s.step == sg.sink:
                    sinks.append(unit)
                    template = steps[s.step].outputs[sg.sink_output]
                    sink_outputs.append({sg.sink_output: resolve_output(
                        template, self.folders.out_dir(s.id), job=s.id,
                        name=sg.sink_output)})
        write_json(f"{job_meta}/{layout.WORKER_OUTS_JSON}", sink_outputs)
        self.reporter.add_units(new)
        # The gather waits for the scatter (resolved by the caller) and every sink; the
        # sinks were all created above, so none has an outcome yet.
        self.unit_graph.wait_for(gather, sinks)

    def _install_signals(self, wake_w: int) -> dict[int, Any]:
        previous: dict[int, Any] = {}

        def handler(signum: int, _frame: Any) -> None:
            if self.interrupted:
                self._kill_all(signal.SIGKILL)
            self.interrupted = signum

        try:
            previous[-1] = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: no signal handling, no wakeup fd
            previous.clear()
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        if not previous:
            return
        signal.set_wakeup_fd(previous.pop(-1))
        for sig, old in previous.items():
            signal.signal(sig, old)


    def _complete(self, unit: Unit, exit_code: int | None, failure: str | None = None) -> None:
        """A unit's work ended: record it as failed (``failure`` says why), or check its
        outputs, hash them, expand a scatter, and record it as succeeded."""
        if failure is not None:
            self._fail(unit, failure, exit_code=exit_code)
            return
        problem = self._outputs_missing(unit)
        if problem is not None:
            self._fail(unit, f"exited 0 but {problem}", exit_code=exit_code)
            return
        try:
            manifest = self.store.manifest(unit.id)
            problem = self._verify_outputs(unit, manifest)
            if problem is not None:
                self._fail(unit, problem, exit_code=exit_code)
                return
            if unit.role == "scatter":
                self._expand(unit)
        except RepxError as exc:
            self._fail(unit, exc.message, exit_code=exit_code)
            return
        self._record(unit, Outcome.SUCCEEDED, exit_code=exit_code, outputs=manifest,
                     slurm_id=unit.slurm_id)
        self._resolve(unit, Outcome.SUCCEEDED, "")

    def _verify_outputs(self, unit: Unit, manifest: list[OutputFile]) -> str | None:
        """Hook: why the outputs just hashed (``manifest``) cannot be recorded as the
        unit's, or None (an executor that moved them from elsewhere checks the move)."""
        del unit, manifest
        return None


def _write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (readers never see half of it)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
