"""The SLURM executor: submit a build's units with sbatch, watch them, record outcomes.

How a build maps onto SLURM:

* **Arrays.** The units submittable in one round are grouped by stage (and step), script and
  sbatch options; each group is *one* ``sbatch --array`` call whatever its size (one sbatch
  per job reaches ~200 jobs/s; an array of 10 000 costs milliseconds). A group of one is a
  plain job named after the unit's id. Each array has a table file (one line per task: id,
  script, inputs JSON, params JSON) that its tasks read, so submitting a 10 000-job stage
  writes one file, not 20 000.
* **Dependencies.** A unit waits for its upstream units with ``afterok`` (hard) or
  ``afterany`` (soft inter-run dependencies), always with ``--kill-on-invalid-dep=yes``. When
  every task of an array depends on the task with the same index of one upstream array
  (chains of sweeps), the array is submitted with those indices and ``aftercorr``, so task
  *i* waits for task *i* only. Otherwise an array waits for the union of its tasks'
  dependencies (coarser, still correct).
* **Scatter-gather.** The scatter is a unit like any other. When it is done, the watcher
  reads its work items, and submits one array per step (branches as tasks, ``aftercorr``
  between steps of a branch) and the gather. Jobs downstream of a scatter-gather job are
  submitted once its gather is. A failed branch cancels the rest of that stage.
* **Watching.** ``squeue -r -t all`` every ``poll`` seconds says which tasks ended, and how
  (``sacct`` for the ones squeue forgot). Each task's wrapper writes its exit code beside its
  logs. The store (LMDB) is only ever written by this process, on the login node: compute
  nodes write outputs and logs to the shared store directory, never the database.
* **Never twice.** A unit is claimed in the store before its sbatch and recorded QUEUED with
  its SLURM id after; a later build that finds it QUEUED or RUNNING asks SLURM and adopts
  (watches) a job that is still pending or running instead of submitting it again.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import os
import select
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repx.engine.plan import Plan
from repx.engine.scheduler import (
    BLOCKED,
    CANCELLED,
    FAILED,
    Failure,
    Reporter,
    SchedulerOptions,
    UnitScheduler,
)
from repx.engine.units import Unit
from repx.errors import RepxError, UsageError
from repx.expand import JobGraph, parse_mem, parse_time, validate_resources
from repx.identity import canonical_json, hash_part
from repx.store import JobRecord, Status, Store, owner_alive, owner_token, this_host

#: SLURM states after which a job never changes again.
FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "BOOT_FAIL", "DEADLINE", "PREEMPTED",
})
ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
    "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED",
})
#: Keys a resources.toml section may set.
RESOURCE_KEYS = ("mem", "cpus", "time", "partition", "sbatch_opts")


class SlurmError(RepxError):
    """A SLURM command failed (its own message is kept)."""


# ---------------------------------------------------------------------------- the CLI


class SlurmCli:
    """The SLURM commands repx uses, with one clear error when one is missing or fails."""

    def __init__(self) -> None:
        for tool in ("sbatch", "squeue", "sacct", "scancel"):
            if shutil.which(tool) is None:
                raise SlurmError(
                    f"`{tool}` is not on PATH: `--scheduler slurm` needs a SLURM client "
                    "(run repx on the cluster's login node)"
                )
        self.sbatch_calls = 0

    def _run(self, args: list[str], stdin: str | None = None, timeout: float = 120) -> str:
        try:
            proc = subprocess.run(args, input=stdin, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SlurmError(f"`{' '.join(args[:2])}` did not answer within {timeout} s "
                             "(is slurmctld up?)") from None
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout).strip().splitlines()
            raise SlurmError(f"`{args[0]}` failed: {said[-1] if said else proc.returncode}",
                             detail=proc.stderr)
        return proc.stdout

    def sbatch(self, script: str, args: list[str]) -> str:
        """Submit ``script`` (a file); the job id."""
        self.sbatch_calls += 1
        out = self._run(["sbatch", "--parsable", *args, script])
        return out.strip().split(";")[0]

    def states(self, job_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """``{task id: (state, reason)}`` for every task squeue still knows (arrays expanded:
        ``123_4``)."""
        ids = sorted({j.split("_")[0] for j in job_ids})
        result: dict[str, tuple[str, str]] = {}
        for start in range(0, len(ids), 200):
            chunk = ",".join(ids[start:start + 200])
            try:
                out = self._run(["squeue", "-h", "-r", "-t", "all", "-j", chunk,
                                 "-o", "%i|%T|%r"])
            except SlurmError as exc:
                if "Invalid job id" in exc.message:  # all of them aged out
                    continue
                raise
            for line in out.splitlines():
                parts = line.strip().split("|")
                if len(parts) >= 2:
                    result[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
        return result

    def accounting(self, job_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """``{task id: (state, exit code)}`` from sacct (for tasks squeue has forgotten)."""
        ids = sorted({j.split("_")[0] for j in job_ids})
        result: dict[str, tuple[str, str]] = {}
        if not ids:
            return result
        try:
            out = self._run(["sacct", "-n", "-P", "-X", "-j", ",".join(ids),
                             "-o", "JobID,State,ExitCode"])
        except SlurmError:
            return result
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 3:
                result[parts[0]] = (parts[1].split()[0] if parts[1] else "", parts[2])
        return result

    def scancel(self, job_ids: Iterable[str]) -> None:
        """Cancel jobs and array tasks; the tasks of one array go as one ``123_[0-9999]``
        argument (one call for a whole stage, not one id per task)."""
        ids = _compress_tasks(job_ids)
        for start in range(0, len(ids), 200):
            with contextlib.suppress(SlurmError):
                self._run(["scancel", *ids[start:start + 200]])

    def max_array_size(self) -> int:
        try:
            out = self._run(["scontrol", "show", "config"])
        except SlurmError:
            return 1001
        for line in out.splitlines():
            if line.startswith("MaxArraySize"):
                with contextlib.suppress(ValueError, IndexError):
                    return int(line.split("=")[1].strip())
        return 1001


# ---------------------------------------------------------------------- resources.toml


@dataclass
class ResourceRules:
    """Per-cluster overrides of the lab's resource hints (``resources.toml``).

    ``[defaults]`` fill in what a job does not set; each ``[[rules]]`` entry whose ``match``
    glob matches the job's pname, stage key or id then overrides, later rules last.
    """

    defaults: dict[str, Any] = field(default_factory=dict)
    rules: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    source: str = ""

    @classmethod
    def load(cls, path: Path | None) -> ResourceRules:
        if path is None:
            return cls()
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path}: not valid TOML: {exc}") from None
        unknown = set(data) - {"defaults", "rules"}
        if unknown:
            raise UsageError(f"{path}: unknown sections {sorted(unknown)} (use [defaults] "
                             "and [[rules]])")
        defaults = cls._check(path, "defaults", data.get("defaults", {}))
        rules = []
        for i, rule in enumerate(data.get("rules", [])):
            if not isinstance(rule, dict) or not isinstance(rule.get("match"), str):
                raise UsageError(f"{path}: rules[{i}] needs a string `match` glob")
            body = {k: v for k, v in rule.items() if k != "match"}
            rules.append((rule["match"], cls._check(path, f"rules[{i}]", body)))
        return cls(defaults, rules, str(path))

    @staticmethod
    def _check(path: Path, where: str, values: Any) -> dict[str, Any]:
        if not isinstance(values, dict):
            raise UsageError(f"{path}: {where} must be a table")
        for key, value in values.items():
            if key not in RESOURCE_KEYS:
                raise UsageError(f"{path}: {where}: unknown key '{key}' (known: "
                                 f"{', '.join(RESOURCE_KEYS)})")
            try:
                if key == "mem":
                    parse_mem(value)
                elif key == "time":
                    parse_time(value)
                elif key == "cpus" and (not isinstance(value, int) or value < 1):
                    raise ValueError(value)
                elif key == "partition" and not isinstance(value, str):
                    raise ValueError(value)
                elif key == "sbatch_opts" and not (
                        isinstance(value, list) and all(isinstance(o, str) for o in value)):
                    raise ValueError(value)
            except ValueError:
                raise UsageError(f"{path}: {where}: invalid {key} {value!r}") from None
        return dict(values)

    def apply(self, hints: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
        merged = {**self.defaults, **{k: v for k, v in hints.items() if v is not None}}
        names = list(names)
        for pattern, values in self.rules:
            if any(fnmatch.fnmatchcase(n, pattern) for n in names):
                merged.update(values)
        return merged


def sbatch_directives(resources: dict[str, Any]) -> list[str]:
    """``--mem``/``--cpus-per-task``/``--time``/``--partition`` and the extra options."""
    args = []
    if resources.get("mem") is not None:
        args.append(f"--mem={max(1, math.ceil(parse_mem(resources['mem']) / 2**20))}M")
    if resources.get("cpus") is not None:
        args.append(f"--cpus-per-task={int(resources['cpus'])}")
    if resources.get("time") is not None:
        seconds = parse_time(resources["time"])
        minutes = max(1, math.ceil(seconds / 60))
        args.append(f"--time={minutes // 1440}-{minutes % 1440 // 60:02d}:{minutes % 60:02d}:00")
    if resources.get("partition"):
        args.append(f"--partition={resources['partition']}")
    args.extend(resources.get("sbatch_opts") or [])
    return args


# ---------------------------------------------------------------------- the scheduler


@dataclass
class SlurmOptions(SchedulerOptions):
    """How the SLURM executor submits and watches."""

    wait: bool = True
    poll: float = 1.0
    resources: ResourceRules = field(default_factory=ResourceRules)


WRAPPER = """#!/bin/bash
{directives}
# Generated by repx: task $SLURM_ARRAY_TASK_ID of this submission runs the unit on line
# (index + 1) of the table (id, script, inputs JSON, params JSON), under the execution
# contract. The store's database is never touched here; the watcher records the outcome.
set -uo pipefail
table={table}
index=${{SLURM_ARRAY_TASK_ID:-0}}
IFS=$'\\t' read -r id script inputs params < <(sed -n "$((index + 1))p" "$table")
job={outputs}/$id
mkdir -p "$job/out" "$job/repx"
printf '%s\\n' "$inputs" > "$job/repx/inputs.json"
printf '%s\\n' "$params" > "$job/repx/params.json"
rm -f "$job/repx/exit_code"
"$script" "$job/out" "$job/repx/inputs.json" "$job/repx/params.json" \\
  > "$job/repx/stdout.log" 2> "$job/repx/stderr.log"
code=$?
echo "$code" > "$job/repx/exit_code"
exit "$code"
"""


class SlurmScheduler(UnitScheduler):
    """Submits the ``to_run`` jobs of a plan to SLURM and (unless ``--no-wait``) watches
    them to their outcomes; see the module docstring."""

    options: SlurmOptions
    #: Records naming a live SLURM job were adopted (watched) before any claim.
    waits_for_slurm_jobs = False

    def __init__(self, graph: JobGraph, store: Store, plan: Plan, options: SlurmOptions,
                 reporter: Reporter | None = None, cli: SlurmCli | None = None) -> None:
        super().__init__(graph, store, plan, options, reporter)
        self.cli = cli or SlurmCli()
        self.max_array = self.cli.max_array_size()
        self.submit_dir = store.root / "slurm"
        #: Units submitted (or adopted) and not yet finished, by SLURM task id.
        self.watching: dict[str, Unit] = {}
        self.submitted: list[Unit] = []
        self._expanded: set[str] = set()
        self._missing_since: dict[str, float] = {}
        self._blocked_queued: list[Unit] = []

    # -- main loop

    def run(self) -> None:
        self._build_units()
        self.reporter.begin(sum(1 for u in self.units.values() if not u.gate))
        self.submit_dir.mkdir(parents=True, exist_ok=True)
        (self.submit_dir / "logs").mkdir(exist_ok=True)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous = self._install_signals(wake_w)
        try:
            self._adopt()
            self._loop(wake_r)
        finally:
            self._restore_signals(previous)
            os.close(wake_r)
            os.close(wake_w)
            self.reporter.close()

    def _loop(self, wake_r: int) -> None:
        while True:
            if self.interrupted:
                self._cancel_all(f"interrupted ({signal.Signals(self.interrupted).name})")
                break
            while not self.stopping and self._submit_round():
                pass  # each round can make the next stage submittable
            self._commit([])
            if not self.options.wait:
                break
            if not self.watching and not self.foreign:
                if self._submittable() and not self.stopping:
                    continue
                break
            with contextlib.suppress(InterruptedError):
                select.select([wake_r], [], [], self.options.poll)
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
            self._watch()
            if self.foreign:
                self._poll_foreign()
            self.reporter.tick()
        self._commit([])
        if self.options.wait:
            self._finish_remaining()

    def _kill_all(self, sig: int) -> None:
        """A second Ctrl-C: cancel at once (the loop records the outcomes)."""
        del sig
        self.cli.scancel(self.watching)

    # -- adoption of jobs submitted by an earlier build

    def _adopt(self) -> None:
        """Units the store says are QUEUED/RUNNING on SLURM from a build that is gone: watch
        them if SLURM still runs them, instead of submitting them again."""
        records = self.store.get_many(list(self.units))
        candidates = {uid: r for uid, r in records.items()
                      if r.status in (Status.QUEUED, Status.RUNNING) and r.slurm_id}
        if not candidates:
            return
        states = self.cli.states(r.slurm_id for r in candidates.values() if r.slurm_id)
        with self.store.batch():
            for uid, record in candidates.items():
                state = states.get(record.slurm_id or "", ("", ""))[0]
                unit = self.units[uid]
                if state not in ACTIVE_STATES and state not in FINAL_STATES:
                    continue
                if owner_alive(record.host, record.pid, record.owner):
                    continue  # its own build watches it; the claim below waits for it
                if not self.store.claim(uid, self.owner, host=self.host, pid=self.pid,
                                        lab=self.lab, run=unit.job.run,
                                        stage=self._stage(unit)):
                    continue
                self.store.update(JobRecord(uid, Status.QUEUED, owner=self.owner,
                                            slurm_id=record.slurm_id))
                unit.slurm_id = record.slurm_id
                unit.state = "submitted"
                self.watching[record.slurm_id or ""] = unit
                self.reporter.queued(unit)
                self.reporter.message(f"{unit.label} {uid} is already on SLURM as job "
                                      f"{record.slurm_id}; watching it")

    # -- submission

    def _dep_ids(self, unit: Unit) -> tuple[list[str], list[str]] | None:
        """(afterok ids, afterany ids) the unit must wait for; None when an upstream unit
        has no SLURM id yet (submit later)."""
        afterok: list[str] = []
        afterany: list[str] = []
        if unit.role == "gather" and unit.job.id not in self._expanded:
            return None
        for dep in unit.deps:
            members = dep.deps if dep.gate else [dep]
            bucket = afterany if dep.soft else afterok
            for member in members:
                if member.state == "done":
                    continue
                if member.slurm_id is None or member.state not in ("submitted", "foreign"):
                    return None
                bucket.append(member.slurm_id)
        return afterok, afterany

    def _submittable(self) -> list[tuple[Unit, list[str], list[str]]]:
        found = []
        for unit in self.units.values():
            if unit.gate or unit.state not in ("waiting", "ready"):
                continue
            deps = self._dep_ids(unit)
            if deps is not None:
                found.append((unit, *deps))
        return found

    def _resources(self, unit: Unit) -> dict[str, Any]:
        job = unit.job
        raw = job.resources
        if unit.role in ("scatter", "step", "gather"):
            exe = job.executables["scatter" if unit.role == "scatter" else
                                  "gather" if unit.role == "gather" else f"step-{unit.step}"]
            if exe.resources:
                raw = validate_resources(exe.resources,
                                         f"stage '{job.pname}' (file {job.stage_file})")
        hints = {
            "mem": raw.mem_bytes and f"{math.ceil(raw.mem_bytes / 2**20)}M",
            "cpus": raw.cpu_count,
            "time": raw.time_seconds,
            "partition": raw.get("partition"),
            "sbatch_opts": raw.get("sbatch_opts"),
        }
        names = [job.pname, job.stage, job.id]
        if unit.step:
            names.append(f"{job.pname}/{unit.step}")
        return self.options.resources.apply(hints, names)

    def _submit_round(self) -> bool:
        """Claim and submit every unit that can be submitted now, grouped into arrays;
        whether anything was."""
        ready = self._submittable()
        if not ready:
            return False
        groups: dict[tuple[Any, ...], list[tuple[Unit, list[str], list[str]]]] = {}
        for unit, afterok, afterany in ready:
            directives = sbatch_directives(self._resources(unit))
            key = (unit.role, unit.job.stage, unit.step, unit.script, tuple(directives))
            groups.setdefault(key, []).append((unit, afterok, afterany))
        units = [u for u, _a, _b in ready]
        claimed = self._claim(units)
        for key, members in groups.items():
            members = [m for m in members if m[0].id in claimed]
            if members:
                self._submit_group(list(key[4]), members)
        self._commit([])
        return True

    def _claim(self, units: list[Unit]) -> set[str]:
        """Claim ``units`` in one transaction; the ids we hold. Units another build holds are
        waited for; units the store already holds (scatter-gather parts) are done."""
        with self.store.batch():
            refused = self._claim_each(units)
        self._settle_refused(refused)
        taken = {u.id for u in refused}
        return {u.id for u in units if u.id not in taken}

    def _submit_group(self, directives: list[str],
                      members: list[tuple[Unit, list[str], list[str]]]) -> None:
        """One sbatch per chunk of ``members`` (aftercorr when the tasks line up)."""
        corr = _corresponding(members)
        if corr is not None:
            array_id, indexed = corr
            if max(indexed) < self.max_array:
                self._sbatch(directives, [(i, u) for i, u in indexed.items()],
                             [f"aftercorr:{array_id}"], [])
                return
        chunk = max(1, self.max_array - 1)
        for start in range(0, len(members), chunk):
            part = members[start:start + chunk]
            afterok = _collapse(d for _u, ok, _any in part for d in ok)
            afterany = _collapse(d for _u, _ok, anyd in part for d in anyd)
            self._sbatch(directives, list(enumerate(u for u, _a, _b in part)),
                         [f"afterok:{':'.join(afterok)}"] if afterok else [],
                         [f"afterany:{':'.join(afterany)}"] if afterany else [])

    def _sbatch(self, directives: list[str], tasks: list[tuple[int, Unit]],
                afterok: list[str], afterany: list[str]) -> None:
        first = tasks[0][1]
        rows = [""] * (max(i for i, _u in tasks) + 1)
        for index, unit in tasks:
            meta = self.resolver.meta_dir(unit.id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(meta + "/exit_code")  # an earlier attempt's, not this one's
            try:
                inputs = self._inputs_for(unit, meta, prepare=True)
            except RepxError as exc:
                self._fail(unit, exc.message)
                continue
            rows[index] = "\t".join([
                unit.id, unit.script,
                canonical_json(inputs), canonical_json(unit.job.params),
            ])
        tasks = [(i, u) for i, u in tasks if u.state != "done"]
        if not tasks:
            return
        key = hash_part("\n".join(rows) + repr(directives))
        table = self.submit_dir / f"{key}.tsv"
        script = self.submit_dir / f"{key}.sbatch"
        single = len(tasks) == 1 and tasks[0][0] == 0
        name = first.id if single else f"repx-{first.job.pname}-{len(tasks)}"
        log = "%j.out" if single else "%A_%a.out"
        lines = [f"#SBATCH --job-name={name}",
                 f"#SBATCH --output={self.submit_dir}/logs/{log}",
                 f"#SBATCH --chdir={self.store.root}"]
        lines += [f"#SBATCH {d}" for d in directives]
        table.write_text("\n".join(rows) + "\n")
        script.write_text(WRAPPER.format(directives="\n".join(lines), table=_sh(str(table)),
                                         outputs=_sh(self.outputs_root)))
        args = []
        dependency = ",".join(afterok + afterany)
        if dependency:
            args += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
        if not single:
            args.append("--array=" + _ranges([i for i, _u in tasks]))
        try:
            job_id = self.cli.sbatch(str(script), args)
        except SlurmError as exc:
            reason = f"sbatch refused it: {exc.message}"
            for _i, unit in tasks:
                self._fail(unit, reason, report=False)
            self.reporter.failed(Failure(
                first.id, first.job.id,
                f"{first.label} (and {len(tasks) - 1} more)" if len(tasks) > 1 else first.label,
                reason, str(script), str(table)))
            return
        for index, unit in tasks:
            unit.slurm_id = job_id if single else f"{job_id}_{index}"
            unit.state = "submitted"
            self.watching[unit.slurm_id] = unit
            self.submitted.append(unit)
            self.reporter.queued(unit)
        self.store.mark_queued(self.owner, {u.id: u.slurm_id or "" for _i, u in tasks})

    def _inputs_for(self, unit: Unit, meta: str, prepare: bool = False) -> dict[str, str]:
        """As the base class, making sure the folder for the files it writes exists."""
        if prepare and (unit.role != "job" or unit.job.inter_run):
            os.makedirs(meta, exist_ok=True)
        return super()._inputs_for(unit, meta)

    # -- watching

    def _watch(self) -> None:
        if not self.watching:
            return
        states = self.cli.states(self.watching)
        now = time.monotonic()
        lost = [t for t in self.watching if t not in states]
        if lost:
            accounted = self.cli.accounting(lost)
            for task in lost:
                if task in accounted:
                    states[task] = (accounted[task][0], "")
                    continue
                # Without accounting (no slurmdbd), the exit code the task's wrapper wrote
                # is the only trace of a job squeue has forgotten.
                unit = self.watching[task]
                code = _read_exit_code(f"{self.outputs_root}/{unit.id}/repx/exit_code")
                if code is not None:
                    states[task] = ("COMPLETED" if code == 0 else "FAILED", "")
                elif now - self._missing_since.setdefault(task, now) > 120:
                    states[task] = ("LOST", "")
        with self.store.batch():
            for task, (state, reason) in states.items():
                unit = self.watching.get(task)
                if unit is None:
                    continue
                if state in ("RUNNING", "COMPLETING") and unit.state == "submitted":
                    unit.state = "running-slurm"
                    self.reporter.started(unit)
                    self.store.update(JobRecord(unit.id, Status.RUNNING, owner=self.owner,
                                                slurm_id=task))
                if state in FINAL_STATES or state == "LOST":
                    del self.watching[task]
                    self._ended(unit, state, reason)
            self._commit([])

    def _make_ready(self, unit: Unit) -> None:
        """As the base class, but a unit already on SLURM stays as it is (its upstream
        finishing is what SLURM was waiting for)."""
        if unit.state in ("submitted", "running-slurm"):
            return
        super()._make_ready(unit)

    def _ended(self, unit: Unit, state: str, reason: str) -> None:
        if unit.state == "done":  # already given an outcome (blocked, cancelled)
            return
        unit.state = "running"
        meta = self.resolver.meta_dir(unit.id)
        code = _read_exit_code(meta + "/exit_code")
        slurm_log = self._keep_slurm_log(unit)
        if state == "COMPLETED" and code in (0, None):
            self._complete(unit, 0)
        elif state == "CANCELLED" and "Dependency" in reason:
            self._record_cancelled(unit, "an upstream job failed (SLURM cancelled it)")
            self._resolve(unit, BLOCKED, "an upstream job failed")
        elif state == "FAILED" and code:
            self._complete(unit, code, f"exit code {code}")
        else:
            why = state if state != "LOST" else "the job vanished from squeue and sacct"
            self._complete(unit, code, why)
            if slurm_log:
                self._finishes[-1].stderr_log = slurm_log
        if unit.role == "step" and unit.outcome == FAILED:
            self._cancel_stage(unit)
        if unit.outcome == FAILED and not self.options.keep_going:
            self._cancel_pending()

    def _keep_slurm_log(self, unit: Unit) -> str:
        """Copy SLURM's own log of the task beside the unit's logs (its messages about time
        limits and memory are the only trace of a job SLURM killed)."""
        task = unit.slurm_id or ""
        name = f"{task}.out"
        source = self.submit_dir / "logs" / name
        if not source.exists():
            return ""
        target = Path(f"{self.outputs_root}/{unit.id}/repx/slurm-{task}.out")
        with contextlib.suppress(OSError):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            return str(target)
        return ""

    def _record_cancelled(self, unit: Unit, reason: str) -> None:
        self._finishes.append(JobRecord(unit.id, Status.CANCELLED, owner=self.owner,
                                        reason=reason, slurm_id=unit.slurm_id))

    def _cancel_stage(self, failed: Unit) -> None:
        """A failed branch cancels the rest of its scatter-gather stage."""
        others = [u for u in self.job_units.get(failed.job.id, ())
                  if u is not failed and u.slurm_id and u.state != "done"]
        self._cancel_units(others, f"branch {failed.label} failed")

    def _cancel_pending(self) -> None:
        """Fail-fast: nothing new is submitted, and what has not started is cancelled."""
        self.stopping = True
        pending = [u for u in self.watching.values() if u.state == "submitted"]
        self._cancel_units(pending, "stopped after a failure (--keep-going runs it)")

    def _cancel_units(self, units: list[Unit], reason: str) -> None:
        if not units:
            return
        self.cli.scancel(u.slurm_id for u in units if u.slurm_id)
        for unit in units:
            self.watching.pop(unit.slurm_id or "", None)
            if unit.state != "done":
                self._record_cancelled(unit, reason)
                self._resolve(unit, CANCELLED, reason)

    def _cancel_all(self, reason: str) -> None:
        self.stopping = True
        self._cancel_units(list(self.watching.values()), reason)
        self._commit([])

    def _resolve(self, unit: Unit, outcome: str, reason: str) -> None:
        """As the base class; units blocked while queued (collected by :meth:`_resolved`)
        are cancelled on SLURM too, in one scancel (SLURM would cancel them itself through
        --kill-on-invalid-dep, but not those waiting with afterany)."""
        super()._resolve(unit, outcome, reason)
        blocked, self._blocked_queued = self._blocked_queued, []
        if blocked:
            self.cli.scancel(u.slurm_id for u in blocked if u.slurm_id)

    def _resolved(self, unit: Unit) -> None:
        if unit.outcome == BLOCKED and self.watching.get(unit.slurm_id or "") is unit:
            del self.watching[unit.slurm_id or ""]
            self._record_cancelled(unit, unit.reason or "blocked")
            self._blocked_queued.append(unit)

    def _expand(self, scatter: Unit) -> None:
        super()._expand(scatter)
        self._expanded.add(scatter.job.id)


# ------------------------------------------------------------------------------ helpers


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _read_exit_code(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _ranges(indices: list[int]) -> str:
    """``0-4,7,9-10`` for an sbatch --array list."""
    indices = sorted(set(indices))
    parts = []
    start = prev = indices[0]
    for i in indices[1:]:
        if i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = i
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)


def _compress_tasks(ids: Iterable[str]) -> list[str]:
    """Job ids with the tasks of each array written as one ``array_[ranges]`` id."""
    plain: set[str] = set()
    tasks: dict[str, list[int]] = {}
    for job_id in ids:
        array, _, index = job_id.partition("_")
        if index.isdigit():
            tasks.setdefault(array, []).append(int(index))
        elif job_id:
            plain.add(job_id)
    return sorted(plain) + [f"{array}_[{_ranges(indices)}]"
                            for array, indices in sorted(tasks.items())]


def _collapse(ids: Iterable[str]) -> list[str]:
    """Dependency ids, with several tasks of one array collapsed into the whole array."""
    by_array: dict[str, set[str]] = {}
    for task in ids:
        by_array.setdefault(task.split("_")[0], set()).add(task)
    out = []
    for array, tasks in by_array.items():
        out.extend([array] if len(tasks) > 1 else tasks)
    return sorted(out)


def _corresponding(
    members: list[tuple[Unit, list[str], list[str]]],
) -> tuple[str, dict[int, Unit]] | None:
    """When each member waits for exactly one task of one upstream array, all distinct:
    (that array's id, {task index: member})."""
    array = None
    indexed: dict[int, Unit] = {}
    if len(members) < 2:
        return None
    for unit, afterok, afterany in members:
        if afterany or len(afterok) != 1 or "_" not in afterok[0]:
            return None
        job, _, index = afterok[0].partition("_")
        if array is None:
            array = job
        if job != array or not index.isdigit() or int(index) in indexed:
            return None
        indexed[int(index)] = unit
    assert array is not None
    return array, indexed


def cancel_jobs(store: Store, job_ids: Iterable[str] | None = None,
                cli: SlurmCli | None = None) -> list[JobRecord]:
    """``repx cancel``: scancel what repx submitted (all, or ``job_ids`` and their
    scatter-gather units) and record it as cancelled; the records cancelled.

    A build still watching these jobs records the outcome itself when it sees SLURM cancel
    them; records whose build is gone (``--no-wait``) are taken over and closed here.
    """
    cli = cli or SlurmCli()
    if job_ids is None:
        records = [r for r in store.records() if r.status in (Status.QUEUED, Status.RUNNING)]
    else:
        wanted = list(dict.fromkeys(_with_units(store, job_ids)))
        records = list(store.get_many(wanted).values())
    active = [r for r in records if r.status in (Status.QUEUED, Status.RUNNING) and r.slurm_id]
    if not active:
        return []
    cli.scancel(r.slurm_id for r in active if r.slurm_id)
    me = owner_token()
    closed = []
    with store.batch():
        for record in active:
            if owner_alive(record.host, record.pid, record.owner):
                closed.append(record)  # its build records the cancellation
                continue
            if store.claim(record.job_id, me, host=this_host(), pid=os.getpid(),
                           lab=record.lab, run=record.run, stage=record.stage):
                store.finish(JobRecord(record.job_id, Status.CANCELLED, owner=me,
                                       reason="cancelled with `repx cancel`",
                                       slurm_id=record.slurm_id))
                closed.append(record)
    return closed


def _with_units(store: Store, job_ids: Iterable[str]) -> Iterator[str]:
    """Job ids plus the scatter/step units listed in each one's ``repx/units.json``."""
    for job_id in job_ids:
        yield job_id
        path = store.meta_dir(job_id) / "units.json"
        try:
            units = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        yield units.get("scatter", "")
        for branch in units.get("branches", []):
            yield from branch.get("steps", {}).values()
