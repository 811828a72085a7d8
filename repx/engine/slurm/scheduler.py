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
  submitted once its gather is. A failed branch cancels the rest of that stage. With
  ``--no-wait`` nobody watches: the scatter's own wrapper does that on its node, and an
  anchor job stands for the gather meanwhile (:mod:`.detached`).
* **Scratch.** ``--scratch node-local``: a job writes ``$out`` on its node's disk; it is
  copied into the job folder and renamed to ``out/`` only after it succeeded, and the
  watcher checks it against the node's BLAKE3 manifest (:mod:`.scratch`).
* **Watching.** ``squeue -r -t all`` every ``poll`` seconds says which tasks ended, and how
  (``sacct`` for the ones squeue forgot). Each task's wrapper writes its exit code beside its
  logs. The store (LMDB) is only ever written by this process, on the login node: compute
  nodes write outputs and logs to the shared store directory, never the database.
* **Runtimes.** Under an isolating runtime each task's sandboxed command line is made here,
  at submit time, by the runtime the local scheduler uses (the same binds,
  :func:`repx.engine.runtimes.common.visible_inputs`), and written to the table; the node
  runs it with bash alone (podman/docker: loading the run's image there first when the
  engine lacks it). ``--artifact-store node-local`` has each node unpack the lab's export
  on its own disk and use that as /nix/store (:mod:`.node_local`).
* **Never twice.** A unit is claimed in the store before its sbatch and recorded QUEUED with
  its SLURM id after; a later build that finds it QUEUED or RUNNING asks SLURM and adopts
  (watches) a job that is still pending or running instead of submitting it again, and
  records the outcome of one that finished meanwhile. ``repx status``, ``show`` and
  ``cache ls`` adopt finished jobs the same way (:mod:`.adopt`), without a build.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import select
import shlex
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from repx.display import plural
from repx.engine.contract import JOB_ID_ENV, job_argv, prepare_job_folder
from repx.engine.failures import MEM_FACTOR, TIME_FACTOR, FailureKind, may_retry
from repx.engine.plan import Plan
from repx.engine.runtimes import JobSandbox, Runtime
from repx.engine.runtimes.common import NIX_STORE, sandbox_env, visible_inputs
from repx.engine.runtimes.containers import ContainerRuntime
from repx.engine.scheduler import Failure, Reporter, SchedulerOptions, UnitScheduler
from repx.engine.slurm.arrays import (
    PACK_SEPARATOR,
    array_ranges,
    collapse_to_arrays,
    corresponding_arrays,
    packed_id,
    task_of,
)
from repx.engine.slurm.cli import (
    ACTIVE_STATES,
    FINAL_STATES,
    SiteLimits,
    SlurmCli,
    SlurmError,
    TaskAccount,
    read_exit_code,
    task_states,
)
from repx.engine.slurm.detached import (
    ANCHOR_FILE,
    HOOK_FILE,
    OPTIONS_FILE,
    SUBMITTED_FILE,
    hook_text,
    write_atomically,
)
from repx.engine.slurm.node_local import (
    NODE_ENV_PLACEHOLDER,
    NODE_STORE_PLACEHOLDER,
    NodeLab,
    unpack_script,
)
from repx.engine.slurm.outcomes import TaskEnd, attempt_state, classify
from repx.engine.slurm.resources import ResourceRules, packed_resources, sbatch_directives
from repx.engine.slurm.scratch import (
    NODE_PYTHON_ENV,
    SCRATCH_MANIFEST,
    Scratch,
    commit_script,
    manifest_mismatch,
    prepare_script,
)
from repx.engine.units import Outcome, Unit, UnitState
from repx.errors import RepxError
from repx.identity import canonical_json, hash_part, scatter_id
from repx.lab.graph import JobGraph
from repx.lab.resources import parse_mem, parse_time
from repx.store import JobRecord, OutputFile, Status, Store, layout, owner_alive

#: A packed task skips a job whose folder holds this marker followed by the task's id
#: (:meth:`SlurmScheduler._supersede`).
SUPERSEDED_PREFIX = "superseded-"
#: sbatch calls of one round made at once (the chunks of arrays split by MaxArraySize).
PARALLEL_SBATCH = 8
#: Seconds a watching build waits for a slurmctld that does not answer before it gives up.
CONTROLLER_PATIENCE = 600.0


@dataclass
class SlurmOptions(SchedulerOptions):
    """How the SLURM executor submits and watches."""

    wait: bool = True
    poll: float = 1.0
    resources: ResourceRules = field(default_factory=ResourceRules)
    #: How each job's process runs on its node (repx.engine.runtimes).
    runtime: Runtime = field(default_factory=Runtime)
    #: ``--artifact-store node-local``: the export each node unpacks (None: shared).
    node_lab: NodeLab | None = None
    #: ``--scratch node-local``: jobs write ``$out`` on their node's disk (None: in the
    #: shared store).
    scratch: Scratch | None = None
    #: ``--pack K``: jobs one array task runs one after another (1: one job per task).
    pack: int = 1
    #: ``--min-task-time``: seconds an array task should last at least; the pack size of a
    #: stage then comes from the Elapsed of its earlier jobs in the store (None: off).
    min_task_time: float | None = None


@dataclass
class SubmitGroup:
    """Units one round submits together: the same stage, script and sbatch options, each
    array task running ``pack`` of them."""

    directives: list[str]
    members: list[tuple[Unit, list[str], list[str]]]
    pack: int = 1


@dataclass
class PreparedArray:
    """One sbatch call, written and ready: its script, table, arguments, and the units it
    submits by table row."""

    script: str
    table: str
    args: list[str]
    tasks: list[tuple[int, Unit]]
    pack: int
    single: bool


def wrapper_script(directives: str, table: str, outputs_root: str, *,
                   job_env: Mapping[str, str] | None = None,
                   node_lab: NodeLab | None = None,
                   engine: Sequence[str] | None = None,
                   scratch: Scratch | None = None, pack: int = 1) -> str:
    """The sbatch script of one submission: task ``$SLURM_ARRAY_TASK_ID`` runs the units on
    lines (index x ``pack`` + 1) to (index x ``pack`` + ``pack``) of ``table``, one after
    another (an empty line is a job that failed before its submission: skipped). Each line
    is one job (id, script, inputs JSON, params JSON; under an isolating
    runtime also the job's whole command line, shell-quoted, and for podman/docker its
    image ID and docker-archive directory) under the execution
    contract, in the job folder of :mod:`repx.store.layout`. The store's database is never
    touched here; the watcher records the outcome.

    The script needs bash, coreutils and sed on the node, never repx or Nix: the runtime's
    command line is made on the login node (``job_env`` is what it sets in the job's
    environment), and a node-local lab is unpacked by bash (:mod:`.node_local`). With a
    container ``engine`` (its command line) the row's image is loaded on the node unless
    the engine has it (once per node: a lock), and checked to have the lab's image ID.
    With node-local ``scratch`` the job's ``$out`` is on the node's disk and is committed
    into the job folder only after it succeeded (:mod:`.scratch`).

    Each row runs in a subshell of its own (the block between the ``one row`` markers): its
    ``exit`` and failures end that row only, so every job of a packed task gets its own
    folder, logs and exit code, and a failing job leaves its siblings to run. An unpacked
    task exits with its job's exit code; a packed one exits 0 whatever its jobs did (their
    outcomes are their exit codes), so that a job's failure does not make SLURM cancel the
    downstream task of its siblings. A row may name, in an eighth column, upstream jobs of
    packed tasks (comma separated): it is skipped, writing no exit code, unless each of them
    exited 0 (the watcher records it blocked: :func:`.cli.packed_job_state`).
    """
    meta = f"$job/{layout.META}"
    inputs, params = f"{meta}/{layout.INPUTS_JSON}", f"{meta}/{layout.PARAMS_JSON}"
    exit_code = f"{meta}/{layout.EXIT_CODE}"
    out_dir = "$out_dir" if scratch is not None else f"$job/{layout.OUT}"
    argv = " ".join(f'"{arg}"' for arg in job_argv("$script", out_dir, inputs, params))
    stdout_log, stderr_log = f"{meta}/{layout.STDOUT_LOG}", f"{meta}/{layout.STDERR_LOG}"
    setup = ""
    if node_lab is not None:
        setup += unpack_script(node_lab)
    if job_env is not None:
        # The row's command line (the runtime's, made at submit time); the node's unpacked
        # store replaces its placeholder.
        setup += f"""eval "command_line=($wrapped)" || fail "bad command line in $table"
expanded=()
container=
previous=
for arg in "${{command_line[@]}}"; do
  if [[ $previous == --name && -z $container ]]; then container=$arg; fi
  previous=$arg
  if [[ $arg == {NODE_STORE_PLACEHOLDER} ]]; then
    expanded+=("${{node_store:?}}")
  elif [[ $arg == {NODE_ENV_PLACEHOLDER} ]]; then
    while read -r name; do
      [[ $name == HOME || $name == TMPDIR ]] || expanded+=(-e "$name")
    done < <(compgen -e)
  else
    expanded+=("$arg")
  fi
done
command_line=("${{expanded[@]}}")
"""
        setup += "".join(f"export {key}={_sh(value)}\n"
                         for key, value in sorted(job_env.items()))
    if engine is not None:
        setup += f"""engine=({shlex.join(engine)})
if [[ $image_dir == {NODE_STORE_PLACEHOLDER}/* ]]; then
  image_dir=${{node_store:?}}${{image_dir#{NODE_STORE_PLACEHOLDER}}}
fi
has_image() {{ "${{engine[@]}}" image inspect "$image_id" > /dev/null 2>&1; }}
if ! has_image; then
  image_lock=${{TMPDIR:-/tmp}}/repx-image-$image_id.lock
  exec 8> "$image_lock" || fail "cannot open $image_lock"
  flock -w 1800 8 || fail "waited too long for another load of image $image_id"
  if ! has_image; then
    tar -ch -C "$image_dir" . | "${{engine[@]}}" load >> "{stderr_log}" 2>&1 \\
      || fail "cannot load the image in $image_dir"
    has_image || fail "$image_dir did not load as image $image_id (a damaged lab?)"
  fi
  exec 8>&-
fi
# A container a killed attempt of this job left behind.
if [[ -n $container ]]; then "${{engine[@]}}" rm -f "$container" > /dev/null 2>&1; fi
"""
        argv = '"${command_line[@]}"'
    # How one row runs and commits its outputs: straight into the job folder's out/, or
    # (node-local scratch) on the node's disk, committed after success.
    commit = ""
    if scratch is not None:
        setup += prepare_script(scratch, "$job", meta, stderr_log)
        commit = commit_script(scratch, "$job", meta, stderr_log)
    # A scatter of a --no-wait build submits its own branches and gather (.detached).
    commit += f"""if (( code == 0 )) && [[ -f "{meta}/{HOOK_FILE}" ]]; then
  bash "{meta}/{HOOK_FILE}" >> "{stderr_log}" 2>&1 \\
    || fail "the scatter succeeded but its branches could not be submitted (see above)"
fi
"""
    return f"""#!/bin/bash
{directives}
# Generated by repx: runs one unit of the table under the execution contract.
set -uo pipefail
table={_sh(table)}
pack={pack}
index=${{SLURM_ARRAY_TASK_ID:-0}}
first_row=$((index * pack + 1))
this_task=${{SLURM_ARRAY_JOB_ID:-}}_$index
task_code=0
# Whether every upstream job named (comma separated) exited 0.
upstream_ok() {{
  local up code
  for up in ${{1//,/ }}; do
    code=
    {{ read -r code < {_sh(outputs_root)}/"$up/{layout.META}/{layout.EXIT_CODE}"; }} 2> /dev/null
    [[ $code == 0 ]] || return 1
  done
}}
# Which rows this task runs: `pack` consecutive rows of the table, read on fd 3 so that a
# job's stdin is never the table.
while IFS=$'\\t' read -r -u 3 id script inputs params wrapped image_id image_dir upstream
do
[[ -n $id ]] || continue
# The watcher took this job off this task (blocked, or resubmitted behind a retry).
[[ -e {_sh(outputs_root)}/$id/{layout.META}/{SUPERSEDED_PREFIX}$this_task ]] && continue
if [[ -n $upstream ]] && ! upstream_ok "$upstream"; then continue; fi
(
# -- one row: how the job of this row runs and commits, under the execution contract
job={_sh(outputs_root)}/$id
export {JOB_ID_ENV}=$id
# Real directories: a symlink or file a previous run left in their place is removed
# itself, never followed (repx.engine.contract.prepare_job_folder).
for dir in "$job" "$job/{layout.OUT}" "{meta}"; do
  if [[ -L $dir || ( -e $dir && ! -d $dir ) ]]; then rm -f -- "$dir"; fi
  mkdir -p -- "$dir"
done
printf '%s\\n' "$inputs" > "{inputs}"
printf '%s\\n' "$params" > "{params}"
rm -f "{exit_code}" "{meta}/{SCRATCH_MANIFEST}"
# A setup step that fails says why in the job's stderr log, and the job fails.
fail() {{ printf 'repx (SLURM wrapper on %s): %s\\n' "${{HOSTNAME:-node}}" "$1" >> "{stderr_log}"
        echo 1 > "{exit_code}"; exit 1; }}
: > "{stderr_log}"
{setup}{argv} \\
  > "{stdout_log}" 2>> "{stderr_log}"
code=$?
{commit}echo "$code" > "{exit_code}"
exit "$code"
# -- end of one row
) 3<&-
row_code=$?
if (( row_code != 0 && task_code == 0 )); then task_code=$row_code; fi
done 3< <(sed -n "${{first_row}},$((first_row + pack - 1))p" "$table")
if (( pack > 1 )); then exit 0; fi
exit "$task_code"
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
        self.cli.prefetch_limits()  # read while the units are built (site limits)
        self.submit_dir = store.root / "slurm"
        #: Units submitted (or adopted) and not yet finished, by SLURM task id.
        self.watching: dict[str, Unit] = {}
        self.submitted: list[Unit] = []
        self._expanded: set[str] = set()
        #: Scatters this build armed to expand themselves on their node (``--no-wait``).
        self._armed: set[str] = set()
        #: Whether this scheduler runs on a compute node (:mod:`.detached`): it neither
        #: arms scatters nor adopts what nodes submitted.
        self.on_node = False
        self._missing_since: dict[str, float] = {}
        self._blocked_queued: list[Unit] = []
        #: Escalated resources of units being retried (merged over their own).
        self._retry_overrides: dict[str, dict[str, Any]] = {}
        #: Units put back to be submitted again (a retry, or queued behind one).
        self._requeued: set[str] = set()
        self._caps: dict[str | None, tuple[int | None, int | None]] = {}
        self._uid = os.getuid()
        #: Since when squeue has failed (None: it answers).
        self._controller_silent_since: float | None = None
        #: Units a submit limit (MaxSubmitJobs...) held back in the last round, and its name.
        self._held_back = 0
        self._limit_name = ""
        #: The pack size each array this build submitted was made with, by SLURM job id.
        self._array_pack: dict[str, int] = {}
        #: ``--min-task-time``: the median Elapsed of each stage's earlier jobs (None: none).
        self._stage_elapsed: dict[str, float | None] = {}
        #: The job folders that exist, listed once per round (only those can hold an
        #: earlier attempt's exit code).
        self._existing_folders: set[str] = set()
        from repx.lab.export import unpacked_lab_of

        unpacked = unpacked_lab_of(Path(graph.lab.path))
        #: Where the lab's store is on this machine (an unpack's, or /nix/store).
        self._login_store = str(unpacked.store_dir) if unpacked is not None else NIX_STORE

    @property
    def max_array(self) -> int:
        """SLURM's MaxArraySize, asked when the first array is submitted (adopting what
        SLURM already runs never needs it)."""
        return self.limits.max_array_size

    # -- main loop

    def run(self) -> None:
        self._build_units()
        self.reporter.begin(sum(1 for u in self.units.values() if not u.gate))
        self.submit_dir.mkdir(parents=True, exist_ok=True)
        (self.submit_dir / "logs").mkdir(exist_ok=True)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous = self._install_signals(wake_w)
        try:
            self._adopt(building=True)
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
            while not self.stopping and (self._submit_round() or self._submit_anchors()):
                pass  # each round can make the next stage submittable
            self._commit([])
            if not self.options.wait:
                break
            if not self.watching and not self.foreign:
                if not self._submittable() or self.stopping:
                    break
                if not self._held_back:
                    continue
                # Held back by a submit limit that other jobs of this user fill: wait.
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
        else:
            self._left_for_next_build()

    def _kill_all(self, sig: int) -> None:
        """A second Ctrl-C: cancel at once (the loop records the outcomes)."""
        del sig
        self.cli.scancel(self.watching)

    # -- adoption of jobs submitted by an earlier build

    def record_ended(self, states: Mapping[str, tuple[str, str]]) -> list[Unit]:
        """Without building: adopt the plan's units whose SLURM tasks ``states`` says have
        ended, and record their outcomes exactly as a build's adoption does (claim, output
        check, manifest, record; a scatter also writes its units). Tasks still pending or
        running are left alone, so nothing is written for them. The units recorded.

        ``repx status``, ``show`` and ``cache ls`` call it (:mod:`repx.engine.slurm.adopt`)
        for the work a ``--no-wait`` build left on SLURM.
        """
        self._build_units()
        self._expand_detached_done()
        recorded = self._adopt({t: st for t, st in states.items() if st[0] in FINAL_STATES})
        self._record_detached_ended()
        return recorded

    def _adopt(self, states: Mapping[str, tuple[str, str]] | None = None, *,
               building: bool = False) -> list[Unit]:
        """Units the store says are QUEUED/RUNNING on SLURM from a build that is gone: watch
        them if SLURM knows them, instead of submitting them again; the units adopted.

        ``states`` are SLURM's (:func:`task_states`); asked here when not given. A task
        missing from them is not adopted (the build runs it again). The outcome of a task
        that has ended is recorded at once, so what waits for it can be submitted now.

        When ``building``, a task that ended without success (failed, cancelled for its
        dependency, killed with its node...) is not adopted but recorded as ``repx status``
        records it, and then run again like any job an earlier build left failed: what a
        build does never depends on whether ``repx status`` looked in between.
        """
        records = self.store.get_many(list(self.units))
        candidates = {uid: r for uid, r in records.items()
                      if r.status.active and r.slurm_id}
        if not candidates:
            return []
        if states is None:
            states = task_states(self.cli, {
                r.slurm_id or "": self.folders.meta_file(uid, layout.EXIT_CODE)
                for uid, r in candidates.items()})
        if building:
            candidates = self._record_earlier_failures(candidates, states)
        adopted: list[Unit] = []
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
                # The submission time stays the job's start: the claim restamped it.
                self.store.update(JobRecord(uid, Status.QUEUED, owner=self.owner,
                                            slurm_id=record.slurm_id, started=record.started))
                unit.slurm_id = record.slurm_id
                unit.state = UnitState.SUBMITTED
                self.watching[record.slurm_id or ""] = unit
                adopted.append(unit)
                self.reporter.queued(unit)
                self.reporter.message(f"{unit.label} {uid} is already on SLURM as job "
                                      f"{record.slurm_id}; watching it")
        ended = {u.slurm_id: states[u.slurm_id] for u in adopted
                 if u.slurm_id and states[u.slurm_id][0] in FINAL_STATES}
        if ended:
            self._apply_states(ended)
        return adopted

    def _record_earlier_failures(self, candidates: dict[str, JobRecord],
                                 states: Mapping[str, tuple[str, str]]
                                 ) -> dict[str, JobRecord]:
        """Record how the ``candidates`` whose SLURM tasks ended without success ended,
        through a scheduler of their jobs alone (:meth:`record_ended`, as ``repx status``
        does); the candidates left to adopt. The recorded ones stay this build's units to
        submit: their records are no longer active."""
        failed = {uid: r for uid, r in candidates.items()
                  if states.get(r.slurm_id or "", ("", ""))[0] in FINAL_STATES - {"COMPLETED"}
                  and not owner_alive(r.host, r.pid, r.owner)}
        if not failed:
            return candidates
        jobs = list(dict.fromkeys(self.units[uid].job.id for uid in failed))
        recorder = SlurmScheduler(self.graph, self.store, Plan(jobs, [], jobs),
                                  replace(self.options, keep_going=True, wait=False),
                                  cli=self.cli)
        recorder.record_ended({r.slurm_id or "": states[r.slurm_id or ""]
                               for r in failed.values()})
        ended: dict[str, int] = {}
        for record in failed.values():
            state = states[record.slurm_id or ""][0]
            ended[state] = ended.get(state, 0) + 1
        how = ", ".join(f"{state} {count}" for state, count in sorted(ended.items()))
        first = next(iter(failed))
        self.reporter.message(
            f"{plural(len(failed), 'job')} of an earlier build ended on SLURM without success "
            f"({how}; e.g. {self.units[first].label} {first}): recorded, and run again")
        return {uid: r for uid, r in candidates.items() if uid not in failed}

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
                if member.state is UnitState.DONE:
                    continue
                if member.slurm_id is None or member.state not in (UnitState.SUBMITTED,
                                                                   UnitState.FOREIGN):
                    return None
                bucket.append(member.slurm_id)
        return afterok, afterany

    def _submittable(self) -> list[tuple[Unit, list[str], list[str]]]:
        found = []
        for unit in self.units.values():
            if unit.gate or unit.state not in (UnitState.WAITING, UnitState.READY):
                continue
            deps = self._dep_ids(unit)
            if deps is not None:
                found.append((unit, *deps))
        return found

    def _resources(self, unit: Unit) -> dict[str, Any]:
        job = unit.job
        raw = unit.resources
        hints = {
            "mem": raw.mem_bytes and f"{math.ceil(raw.mem_bytes / 2**20)}M",
            "cpus": raw.cpu_count,
            "time": raw.time_seconds,
            "partition": raw.get("partition"),
            "sbatch_opts": raw.get("sbatch_opts"),
            "retries": raw.get("retries"),
        }
        names = [job.pname, job.stage, job.id]
        if unit.step:
            names.append(f"{job.pname}/{unit.step}")
        merged = self.options.resources.apply(hints, names)
        # A retry's escalated memory or time, and the nodes it avoids.
        merged.update(self._retry_overrides.get(unit.id, {}))
        return merged

    def _submit_round(self) -> bool:
        """Claim and submit every unit that can be submitted now, grouped into arrays (and
        packed: :meth:`_pack_size`), as far as the site's submit limit lets; whether
        anything was."""
        ready = self._submittable()
        if not ready:
            return False
        by_key: dict[tuple[Any, ...], list[tuple[Unit, list[str], list[str]]]] = {}
        resources_of: dict[tuple[Any, ...], dict[str, Any]] = {}
        for unit, afterok, afterany in ready:
            resources = self._resources(unit)
            key = (unit.role, unit.job.stage, unit.step, unit.script,
                   tuple(sbatch_directives(resources)))
            by_key.setdefault(key, []).append((unit, afterok, afterany))
            resources_of.setdefault(key, resources)
        groups: list[SubmitGroup] = []
        for key, members in by_key.items():
            pack = min(self._pack_size(members[0][0]), len(members))
            directives = sbatch_directives(packed_resources(resources_of[key], pack))
            groups.append(SubmitGroup(directives, members, pack))
        groups = self._within_submit_limit(groups)
        if not groups:
            self._report_limit()
            return False
        claimed = self._claim([m[0] for group in groups for m in group.members])
        try:
            self._existing_folders = set(os.listdir(self.folders.outputs_root))
        except OSError:
            self._existing_folders = set()
        arrays: list[PreparedArray] = []
        for group in groups:
            members = [m for m in group.members if m[0].id in claimed]
            if members:
                arrays += self._submit_group(group.directives, members, group.pack)
        self._launch(arrays)
        self._commit([])
        self._report_limit()
        return True

    @property
    def limits(self) -> SiteLimits:
        """The site's limits for the user's default account (MaxArraySize, MaxJobCount,
        MaxSubmitJobs, MaxJobs), read once per build, when the first submission needs
        them."""
        return self.cli.site_limits()

    def _within_submit_limit(self, groups: list[SubmitGroup]) -> list[SubmitGroup]:
        """The part of ``groups`` that fits under the submit limit now, in order; the rest
        waits for a later round (``_held_back``), after earlier jobs have finished.

        SLURM counts every array task as one job against MaxSubmitJobs, pending or running,
        whoever submitted it: the user's jobs are counted with squeue. Against MaxJobCount
        (all users, finished jobs too until MinJobAge) only this build's own queued tasks
        are counted, so one build never fills slurmctld alone.

        While jobs of this build are queued, a wave waits until a quarter of the limit is
        free (or all that is left fits): topping the queue up one job per poll would cost
        one sbatch per job.
        """
        self._held_back = 0
        by_account: dict[str | None, list[SubmitGroup]] = {}
        for group in groups:
            by_account.setdefault(account_of(group.directives), []).append(group)
        kept: list[SubmitGroup] = []
        for account, mine in by_account.items():
            kept += self._within_limit_of(account, mine)
        return kept

    def _within_limit_of(self, account: str | None,
                         groups: list[SubmitGroup]) -> list[SubmitGroup]:
        """:meth:`_within_submit_limit` for the groups charged to one account (MaxSubmitJobs
        is a limit of the user's association with an account)."""
        limits = self.cli.site_limits(account)
        limit = limits.submit_limit()
        if limit is None:
            return groups
        allowed, name = limit
        if allowed <= 0:
            raise SlurmError(f"SLURM's {name} for this user is {allowed}: nothing can be "
                             "submitted (ask the cluster's admins)")
        if name == "MaxSubmitJobs":
            queued = self.cli.user_jobs(limits.account)
        else:
            queued = len({task_of(task) for task in self.watching})
        room = allowed - queued
        wanted = sum(math.ceil(len(g.members) / g.pack) for g in groups)
        if self.watching and room < min(wanted, max(1, allowed // 4)):
            room = 0
        kept: list[SubmitGroup] = []
        for group in groups:
            take = group.members[:max(0, room) * group.pack]
            if take:
                kept.append(SubmitGroup(group.directives, take, group.pack))
                room -= math.ceil(len(take) / group.pack)
            self._held_back += len(group.members) - len(take)
        if self._held_back:
            self._limit_name = f"{name} {allowed}"
        return kept

    def _report_limit(self) -> None:
        """Tell the display how far a submit limit holds the build back (cleared once it
        no longer does)."""
        if self._held_back:
            submitted = len(self.submitted)
            left = sum(1 for u in self.units.values()
                       if not u.gate and u.state in (UnitState.WAITING, UnitState.READY))
            self.reporter.limited(f"submitted {submitted} of {submitted + left} "
                                  f"({self._limit_name})")
        elif self._limit_name:
            self.reporter.limited("")

    def _left_for_next_build(self) -> None:
        """``--no-wait`` under a submit limit: say what was not submitted."""
        if self._held_back:
            self.reporter.message(
                f"{self._held_back} job{'s' if self._held_back != 1 else ''} not submitted "
                f"({self._limit_name} reached): a later `repx build` submits them")

    def _pack_size(self, unit: Unit) -> int:
        """How many jobs of the unit's stage one array task runs: ``--pack``, or with
        ``--min-task-time`` enough jobs of the stage's usual length to last that long (the
        median Elapsed of its earlier jobs in the store; ``--pack`` when none is known)."""
        wanted = self.options.min_task_time
        if wanted is None:
            return max(1, self.options.pack)
        stage = self._stage(unit)
        if stage not in self._stage_elapsed:
            self._stage_elapsed[stage] = self._earlier_elapsed(stage)
        elapsed = self._stage_elapsed[stage]
        if elapsed is None:
            return max(1, self.options.pack)
        return max(1, math.ceil(wanted / max(elapsed, 0.01)))

    def _earlier_elapsed(self, stage: str) -> float | None:
        """The median wall time of the stage's earlier jobs: SLURM's Elapsed of their last
        attempt when it was a task of its own, else the time between the wrapper writing
        the job's inputs and its exit code (a job of a packed task, a local run)."""
        seconds: list[float] = []
        records = getattr(self.store, "records", None)  # a node's files-only store has none
        for record in records() if records is not None else ():
            if record.stage != stage or not record.status.terminal:
                continue
            last = record.attempts[-1] if record.attempts else {}
            elapsed = last.get("elapsed")
            if isinstance(elapsed, (int, float)) and PACK_SEPARATOR not in str(
                    last.get("slurm_id") or ""):
                seconds.append(float(elapsed))
            else:
                meta = self.folders.meta_dir(record.job_id)
                try:
                    seconds.append(os.stat(f"{meta}/{layout.EXIT_CODE}").st_mtime
                                   - os.stat(f"{meta}/{layout.INPUTS_JSON}").st_mtime)
                except OSError:
                    continue
            if len(seconds) >= 200:
                break
        return statistics.median(seconds) if seconds else None

    def _claim(self, units: list[Unit]) -> set[str]:
        """Claim ``units`` in one transaction; the ids we hold. Units another build holds are
        waited for; units the store already holds (scatter-gather parts) are done."""
        with self.store.batch():
            refused = self._claim_each(units)
        self._settle_refused(refused)
        taken = {u.id for u in refused}
        return {u.id for u in units if u.id not in taken}

    def _submit_group(self, directives: list[str],
                      members: list[tuple[Unit, list[str], list[str]]],
                      pack: int = 1) -> list[PreparedArray]:
        """One sbatch per chunk of ``members``: with ``aftercorr`` on each upstream array
        when every member waits for one task of one (task *i* of chunk *k* waits for task
        *i* of upstream chunk *k*), else chunks of MaxArraySize tasks waiting for the union
        of their members' dependencies. Member *j* of a chunk is table row *j*, run by task
        *j* // ``pack``. The arrays are prepared here and submitted by :meth:`_launch`."""
        arrays: list[PreparedArray | None] = []
        corr = corresponding_arrays(members)
        if corr is not None and self._lines_up(corr, pack):
            for array_id, indexed in corr.items():
                rows = [(index * pack + (slot or 0), unit)
                        for (index, slot), unit in indexed.items()]
                arrays.append(self._sbatch(directives, rows, [f"aftercorr:{array_id}"], [],
                                           pack))
            return [a for a in arrays if a is not None]
        chunk = max(1, self.limits.max_array_size * pack)
        for start in range(0, len(members), chunk):
            part = members[start:start + chunk]
            afterok = collapse_to_arrays(d for _u, ok, _any in part for d in ok)
            afterany = collapse_to_arrays(d for _u, _ok, anyd in part for d in anyd)
            arrays.append(self._sbatch(
                directives, list(enumerate(u for u, _a, _b in part)),
                [f"afterok:{':'.join(afterok)}"] if afterok else [],
                [f"afterany:{':'.join(afterany)}"] if afterany else [], pack))
        return [a for a in arrays if a is not None]

    def _lines_up(self, corr: dict[str, dict[tuple[int, int | None], Unit]],
                  pack: int) -> bool:
        """Whether ``aftercorr`` can follow ``corr``: each upstream array was packed as
        this group is (so a job keeps its upstream's task index and place) and its indices
        fit under MaxArraySize."""
        for array_id, indexed in corr.items():
            if self._array_pack.get(array_id, 1) != pack:
                return False
            if any((slot is None) != (pack == 1) for _index, slot in indexed):
                return False
            if max(index for index, _slot in indexed) >= self.limits.max_array_size:
                return False
        return True

    def _sbatch(self, directives: list[str], tasks: list[tuple[int, Unit]],
                afterok: list[str], afterany: list[str],
                pack: int = 1) -> PreparedArray | None:
        """Write the table and script that submit ``tasks`` (``(table row, unit)``) as one
        array (one plain job for a lone unpacked unit at row 0; task *i* runs rows *i* x
        ``pack`` to *i* x ``pack`` + ``pack`` - 1), for :meth:`_launch`; None when no unit
        is left (each failed to prepare)."""
        first = tasks[0][1]
        rows = [""] * (max(i for i, _u in tasks) + 1)
        existing = self._existing_folders
        for index, unit in tasks:
            meta = self.folders.meta_dir(unit.id)
            if unit.id in existing:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{meta}/{layout.EXIT_CODE}")  # an earlier attempt's
            try:
                inputs = self._inputs_for(unit, meta, prepare=True)
            except RepxError as exc:
                self._fail(unit, exc.message)
                continue
            row = [unit.id, unit.script, canonical_json(inputs),
                   canonical_json(unit.job.params)]
            if self.options.runtime.isolating:
                try:
                    row += self._command_line(unit, inputs)
                except RepxError as exc:
                    self._fail(unit, exc.message)
                    continue
            upstream = self._packed_upstream(unit)
            if upstream:
                # Eighth column; "-" fills the unused ones (bash's read joins empty
                # tab-separated fields, tab being whitespace to IFS).
                row += ["-"] * (7 - len(row)) + [",".join(upstream)]
            rows[index] = "\t".join(row)
        tasks = [(i, u) for i, u in tasks if u.state is not UnitState.DONE]
        if not tasks:
            return None
        key = hash_part("\n".join(rows) + repr(directives) + f"pack {pack}")
        table = self.submit_dir / f"{key}.tsv"
        script = self.submit_dir / f"{key}.sbatch"
        single = len(tasks) == 1 and tasks[0][0] == 0 and pack == 1
        name = first.id if single else f"repx-{first.job.pname}-{len(tasks)}"
        log = "%j.out" if single else "%A_%a.out"
        lines = [f"#SBATCH --job-name={name}",
                 f"#SBATCH --output={self.submit_dir}/logs/{log}",
                 f"#SBATCH --chdir={self.store.root}"]
        lines += [f"#SBATCH {d}" for d in directives]
        table.write_text("\n".join(rows) + "\n")
        runtime = self.options.runtime
        engine = runtime if isinstance(runtime, ContainerRuntime) else None
        job_env = None
        if engine is not None:
            # The engine client's own settings (podman's containers.conf); the container
            # gets HOME and TMPDIR at its /tmp through -e.
            job_env = {k: v for k, v in engine.engine_env.items() if k == "CONTAINERS_CONF"}
        elif runtime.isolating:
            job_env = sandbox_env({})
        script.write_text(wrapper_script(
            "\n".join(lines), str(table), self.folders.outputs_root, job_env=job_env,
            node_lab=self.options.node_lab,
            engine=engine.command if engine is not None else None,
            scratch=self.options.scratch, pack=pack))
        args = []
        dependency = ",".join(afterok + afterany)
        if dependency:
            args += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
        if not single:
            args.append("--array=" + array_ranges([row // pack for row, _u in tasks]))
        return PreparedArray(str(script), str(table), args, tasks, pack, single)

    def _launch(self, arrays: list[PreparedArray]) -> None:
        """sbatch the arrays of one round, several at once (they never wait for one
        another: what waits for an array is submitted in a later round, once it has an id;
        slurmctld answers submissions in parallel), then record every unit QUEUED with its
        SLURM id in one store transaction."""
        if not arrays:
            return
        if len(arrays) == 1:
            results = [self._try_sbatch(arrays[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(PARALLEL_SBATCH, len(arrays))) as pool:
                results = list(pool.map(self._try_sbatch, arrays))
        queued: dict[str, str] = {}
        for array, (job_id, error) in zip(arrays, results, strict=True):
            tasks, first = array.tasks, array.tasks[0][1]
            if error is not None:
                reason = f"sbatch refused it: {error.message}"
                for _i, unit in tasks:
                    self._fail(unit, reason, report=False)
                label = (f"{first.label} (and {len(tasks) - 1} more)" if len(tasks) > 1
                         else first.label)
                self.reporter.failed(Failure(first.id, first.job.id, label, reason,
                                             array.script, array.table))
                continue
            pack = array.pack
            self._array_pack[job_id] = pack
            for row, unit in tasks:
                if array.single:
                    unit.slurm_id = job_id
                elif pack == 1:
                    unit.slurm_id = f"{job_id}_{row}"
                else:
                    unit.slurm_id = packed_id(f"{job_id}_{row // pack}", row % pack)
                unit.state = UnitState.SUBMITTED
                self.watching[unit.slurm_id] = unit
                self.submitted.append(unit)
                self.reporter.queued(unit)
                queued[unit.id] = unit.slurm_id
        if queued:
            self.store.mark_queued(self.owner, queued)

    def _try_sbatch(self, array: PreparedArray) -> tuple[str, SlurmError | None]:
        """(job id, None) or ("", why sbatch refused the array)."""
        try:
            return self.cli.sbatch(array.script, array.args), None
        except SlurmError as exc:
            return "", exc

    def _supersede(self, units: list[Unit]) -> None:
        """Tell the packed tasks of ``units`` not to run them: a marker naming the task in
        each job's folder, which its row checks before it starts. The job is no longer
        watched under that task (blocked, or submitted again behind a retry); without the
        marker a task that reaches its row late, after an upstream retry succeeded, would
        run it a second time beside its new submission."""
        for unit in units:
            if not unit.slurm_id or PACK_SEPARATOR not in unit.slurm_id:
                continue
            meta = self.folders.meta_dir(unit.id)
            with contextlib.suppress(OSError):
                os.makedirs(meta, exist_ok=True)
                Path(meta, f"{SUPERSEDED_PREFIX}{task_of(unit.slurm_id)}").touch()

    @staticmethod
    def _packed_upstream(unit: Unit) -> list[str]:
        """The ids of the unit's hard upstream units that run in packed tasks: a packed task
        ends COMPLETED whatever its jobs did, so SLURM's dependency does not stop this unit
        when one of them failed; its row checks their exit codes on the node instead."""
        found = []
        for dep in unit.deps:
            if dep.soft:
                continue
            for member in dep.deps if dep.gate else [dep]:
                if (member.state is not UnitState.DONE and member.slurm_id
                        and PACK_SEPARATOR in member.slurm_id):
                    found.append(member.id)
        return found

    def _command_line(self, unit: Unit, inputs: dict[str, str]) -> list[str]:
        """The table columns of the unit's command line under the runtime: the command
        line, shell-quoted (the same sandbox as a local job's: :func:`visible_inputs`), and
        for podman/docker the image ID and its docker-archive directory (loaded on the node
        when missing there). With a node-local artifact store, the store that bwrap binds
        at /nix/store and the image's directory are under a placeholder the node fills in;
        a container's environment is the node's, passed by name (another placeholder)."""
        folders = self.folders
        runtime = self.options.runtime
        out, meta = folders.out_dir(unit.id), folders.meta_dir(unit.id)
        sandbox = JobSandbox(
            unit_id=unit.id, run=unit.job.run,
            argv=job_argv(unit.script, out, f"{meta}/{layout.INPUTS_JSON}",
                          f"{meta}/{layout.PARAMS_JSON}"),
            env={}, out_dir=out, writable=[out, meta],
            read_only=visible_inputs(unit, inputs, folders, existing_only=False))
        if isinstance(runtime, ContainerRuntime):
            image = runtime.image_of(unit.job.run)
            if image is None:
                raise RepxError(f"run {unit.job.run} has no image (containerMode = \"none\")")
            env_args = [arg for key, value in sandbox_env({}).items()
                        for arg in ("-e", f"{key}={value}")]
            argv = runtime.run_argv(sandbox, image.image_id, [*env_args, NODE_ENV_PLACEHOLDER])
            archive = str(image.archive_dir)
            if self.options.node_lab is not None:
                if not archive.startswith(self._login_store + "/"):
                    raise RepxError(f"image {image.name}: {archive} is not in the lab's "
                                    f"store {self._login_store}")
                archive = NODE_STORE_PLACEHOLDER + archive[len(self._login_store):]
            columns = [image.image_id, archive]
        else:
            argv, _env = runtime.wrap(sandbox)
            columns = []
            if self.options.node_lab is not None:
                # bwrap's ``--ro-bind STORE /nix/store``: STORE is the node's unpack.
                for i in range(len(argv) - 2):
                    if argv[i] == "--ro-bind" and argv[i + 2] == NIX_STORE:
                        argv[i + 1] = NODE_STORE_PLACEHOLDER
                        break
                else:
                    raise RepxError(f"--runtime {runtime.name} cannot use a node-local "
                                    "artifact store (it binds no /nix/store)")
        bad = [arg for arg in [*argv, *columns] if "\n" in arg or "\t" in arg]
        if bad:
            raise RepxError(f"{bad[0]!r}: a path with a tab or newline cannot be passed to "
                            "a SLURM job; rename it")
        return [shlex.join(argv), *columns]

    def _inputs_for(self, unit: Unit, meta: str, prepare: bool = False) -> dict[str, str]:
        """As the base class, making sure the folder for the files it writes exists."""
        if prepare and (unit.role != "job" or unit.job.inter_run):
            folders = self.folders
            prepare_job_folder(folders.job_dir(unit.id), folders.out_dir(unit.id), meta)
        inputs = super()._inputs_for(unit, meta)
        if prepare and unit.role == "scatter" and not self.on_node:
            self._arm_detached(unit, meta)
        return inputs

    # -- watching

    def _watch(self) -> None:
        """One look at SLURM. While slurmctld does not answer (restarted, failed over) the
        build keeps watching: the jobs run on without it, and squeue answers again once it
        is back; only after :data:`CONTROLLER_PATIENCE` seconds of silence does it stop."""
        if not self.watching:
            return
        try:
            states = task_states(self.cli, {
                task: self.folders.meta_file(unit.id, layout.EXIT_CODE)
                for task, unit in self.watching.items()})
        except SlurmError as exc:
            now = time.monotonic()
            if self._controller_silent_since is None:
                self._controller_silent_since = now
                self.reporter.message(f"SLURM does not answer ({exc.message}); still "
                                      "watching")
            elif now - self._controller_silent_since > CONTROLLER_PATIENCE:
                raise
            return
        if self._controller_silent_since is not None:
            self._controller_silent_since = None
            self.reporter.message("SLURM answers again")
        now = time.monotonic()
        for task in self.watching:
            if task not in states and now - self._missing_since.setdefault(task, now) > 120:
                states[task] = ("LOST", "")
        self._apply_states(states)

    def _apply_states(self, states: Mapping[str, tuple[str, str]]) -> None:
        """Move the watched units on by SLURM's ``states``: record RUNNING when one starts,
        the outcome when one ended (one store transaction). The tasks that ended are looked
        up in sacct first, in one call, for their step records and resource use."""
        ended = {t: state for t, (state, _r) in states.items()
                 if t in self.watching and (state in FINAL_STATES or state == "LOST")}
        accounts = self._accounts(ended)
        # Tasks SLURM cancelled for their dependency last: a retry of their upstream task,
        # decided in this same round, puts them back to be submitted again.
        order = sorted(states.items(), key=lambda item: "Dependency" in item[1][1])
        with self.store.batch():
            for task, (state, reason) in order:
                unit = self.watching.get(task)
                if unit is None:
                    continue
                if state in ("RUNNING", "COMPLETING") and unit.state is UnitState.SUBMITTED:
                    unit.state = UnitState.ON_SLURM
                    self.reporter.started(unit)
                    self.store.update(JobRecord(unit.id, Status.RUNNING, owner=self.owner,
                                                slurm_id=task,
                                                attempts=self.attempts.get(unit.id, [])))
                if state in FINAL_STATES or state == "LOST":
                    del self.watching[task]
                    self._ended(unit, state, reason, accounts.get(task))
            self._commit([])

    def _accounts(self, tasks: Mapping[str, str]) -> dict[str, TaskAccount]:
        """sacct's records of ``tasks`` that ended (``{task: watcher's state}``). Those
        that did not complete and that slurmdbd has not written yet (it lags squeue, by
        seconds for a node failure) are asked about once more after a moment: their steps
        may say OUT_OF_MEMORY. One still missing then gets an account of its node alone
        (squeue's), which is what a retry must avoid. A success is not waited for: its
        account only fills in the resource report."""
        if not tasks:
            return {}
        slurm_tasks = {task_of(t) for t in tasks}  # a packed job is its task's
        accounts = self.cli.task_accounts(slurm_tasks)
        late = sorted({task_of(t) for t, state in tasks.items()
                       if state != "COMPLETED" and task_of(t) not in accounts})
        if late:
            time.sleep(0.5)
            accounts.update(self.cli.task_accounts(late))
            late = [t for t in late if t not in accounts]
        if late:
            for task, node in self.cli.nodes(late).items():
                accounts[task] = TaskAccount(task, node=node)
        return {t: accounts[task_of(t)] for t in tasks if task_of(t) in accounts}

    def _ended(self, unit: Unit, state: str, reason: str,
               account: TaskAccount | None = None) -> None:
        """Record how a task ended (:func:`.outcomes.classify`), or submit the unit again
        when its failure is retried (:mod:`repx.engine.failures`)."""
        if unit.state is UnitState.DONE:  # already given an outcome (blocked, cancelled)
            return
        code = read_exit_code(self.folders.meta_file(unit.id, layout.EXIT_CODE))
        # A job of a packed task that wrote its exit code ended by it, whatever the task
        # (the account of its siblings) went on to do.
        packed_own_end = code is not None and PACK_SEPARATOR in (unit.slurm_id or "")
        end = classify(state, reason, code, None if packed_own_end else account, self._uid)
        if end.kind is FailureKind.DEPENDENCY_NEVER_SATISFIED:
            if self._upstream_may_succeed(unit):
                self._requeue(unit)  # its upstream task is being retried
                return
            unit.state = UnitState.RUNNING
            self.failure_kinds[unit.id] = end.kind.value
            self._record_off_slurm(unit, Outcome.BLOCKED, end.reason)
            self._resolve(unit, Outcome.BLOCKED, "an upstream job failed")
            return
        attempt = self._note_attempt(unit, state, end, account)
        self.failure_kinds.pop(unit.id, None)  # an earlier attempt's is not this one's
        if end.kind is not None:
            self.failure_kinds[unit.id] = end.kind.value
            if self._retry(unit, end, account, attempt):
                return
        unit.state = UnitState.RUNNING
        slurm_log = self._keep_slurm_log(unit)
        if end.kind is None:
            self._complete(unit, 0)
        else:
            why = end.reason if attempt == 1 else f"{end.reason} (attempt {attempt})"
            self._complete(unit, end.exit_code, why)
            if slurm_log and end.kind is not FailureKind.SCRIPT_FAILURE:
                # SLURM's log says why it killed the job; the unit's own record points
                # there (the records of the jobs its failure blocked come after it).
                for record in reversed(self._finishes):
                    if record.job_id == unit.id:
                        record.stderr_log = slurm_log
                        break
        if unit.role == "step" and unit.outcome is Outcome.FAILED:
            self._cancel_stage(unit)
        if unit.outcome is Outcome.FAILED and not self.options.keep_going:
            self._cancel_pending()

    # -- retries

    def _note_attempt(self, unit: Unit, state: str, end: TaskEnd,
                      account: TaskAccount | None) -> int:
        """Add the attempt that just ended to the unit's attempts; its number (1, 2…).
        The requested memory and time are what this build asked for (SLURM's own figure
        when it asked for none); node, MaxRSS, Elapsed and CPU time are sacct's."""
        attempts = self.attempts.setdefault(unit.id, [])
        hints = self._resources(unit)
        mem = parse_mem(hints["mem"]) if hints.get("mem") else None
        limit = parse_time(hints["time"]) if hints.get("time") else None
        if limit is not None:
            limit = max(60, math.ceil(limit / 60) * 60)  # sbatch's --time is whole minutes
        if account is not None:
            mem = mem if mem is not None else account.req_mem
            limit = limit if limit is not None else account.time_limit
        attempts.append({
            "attempt": len(attempts) + 1,
            "slurm_id": unit.slurm_id or "",
            "node": account.node if account is not None else "",
            "state": attempt_state(state, account),
            "exit_code": end.exit_code,
            "failure": end.kind.value if end.kind is not None else "",
            "mem": mem,
            "time": limit,
            "max_rss": account.max_rss if account is not None else None,
            "elapsed": account.elapsed if account is not None else None,
            "cpu_time": account.cpu_time if account is not None else None,
        })
        return len(attempts)

    def _retry(self, unit: Unit, end: TaskEnd, account: TaskAccount | None,
               attempt: int) -> bool:
        """Submit ``unit`` again (in this build: the watcher picks it up) when its failure
        is retried and attempts are left, with the resources the failure asks for; whether
        it was. A retry that could change nothing (memory or time already at the
        partition's limit, or unknown) is not made: it would fail the same way."""
        assert end.kind is not None
        hints = self._resources(unit)
        # Only a watching build resubmits (not --no-wait, not `repx status` recording ends).
        if not self.options.wait or self.stopping or self.interrupted or not may_retry(
                end.kind, attempt=attempt, retries=self._retries_allowed(unit, hints),
                retry_failed=self.options.retry_failed):
            return False
        override = dict(self._retry_overrides.get(unit.id, {}))
        action = end.kind.retry_action
        change = "the same resources"
        if action in ("mem", "time"):
            mem_cap, time_cap = self._partition_caps(hints.get("partition"))
            last = self.attempts[unit.id][-1]
            current = last["mem"] if action == "mem" else last["time"]
            if not current:
                return False
            factor, cap = (MEM_FACTOR, mem_cap) if action == "mem" else (TIME_FACTOR, time_cap)
            new = math.ceil(current * factor)
            new = min(new, cap) if cap else new
            shown = _mib if action == "mem" else _seconds
            if new <= current:
                self.reporter.message(f"{unit.label} {unit.id}: {end.reason} with {action} "
                                      f"{shown(current)}, the partition's limit: not retried")
                return False
            override[action] = _mib(new) if action == "mem" else new
            change = f"{action} {shown(current)} -> {shown(new)}"
        elif action == "exclude" and account is not None and account.node:
            override["exclude"] = sorted({*override.get("exclude", ()), account.node})
            change = f"the same resources, not on {', '.join(override['exclude'])}"
        self._retry_overrides[unit.id] = override
        self.reporter.message(f"{unit.label} {unit.id}: {end.reason} on attempt {attempt} "
                              f"(SLURM job {unit.slurm_id}); retrying with {change}")
        self._requeue(unit)
        self._requeue_dependents(unit)
        return True

    def _requeue(self, unit: Unit) -> None:
        """Make ``unit`` submittable again (its claim is kept; the next round claims it
        anew as the same owner and submits it)."""
        unit.state = UnitState.READY if unit.deps_left == 0 else UnitState.WAITING
        unit.slurm_id = None
        self._requeued.add(unit.id)

    def _requeue_dependents(self, unit: Unit) -> None:
        """The units queued on SLURM behind ``unit`` (directly or through queued units):
        their dependency on its failed attempt can never be satisfied, so they are
        cancelled there and submitted again behind the retry, in one scancel."""
        stack, seen, queued = list(unit.dependents), set(), []
        while stack:
            dep = stack.pop()
            if id(dep) in seen:
                continue
            seen.add(id(dep))
            if dep.gate:
                stack.extend(dep.dependents)
            elif dep.state is UnitState.SUBMITTED and dep.slurm_id:
                queued.append(dep)
                stack.extend(dep.dependents)
        if not queued:
            return
        # A job of a packed task is left to its row, which skips it on the node (its
        # upstream's exit code is not 0): cancelling it would cancel its siblings.
        self.cli.scancel(d.slurm_id for d in queued
                         if d.slurm_id and PACK_SEPARATOR not in d.slurm_id)
        self._supersede(queued)
        for dep in queued:
            self.watching.pop(dep.slurm_id or "", None)
            self._requeue(dep)

    def _upstream_may_succeed(self, unit: Unit) -> bool:
        """Whether ``unit``, cancelled by SLURM for its dependency, waits on a retry: an
        upstream unit was put back to be submitted again and none has failed for good."""
        upstream = [m for dep in unit.deps for m in (dep.deps if dep.gate else [dep])]
        if not any(m.id in self._requeued for m in upstream):
            return False
        return all(m.state is not UnitState.DONE or (m.outcome is not None and m.outcome.ok)
                   for m in upstream)

    def _partition_caps(self, partition: str | None) -> tuple[int | None, int | None]:
        """The partition's memory and time caps for escalated retries (asked once each)."""
        if partition not in self._caps:
            self._caps[partition] = self.cli.partition_limits(partition)
        return self._caps[partition]

    def _verify_outputs(self, unit: Unit, manifest: list[OutputFile]) -> str | None:
        """A job that ran on node-local scratch (its node left a manifest) succeeds only
        when the store's copy is what it wrote there (:mod:`.scratch`)."""
        node_manifest = self.folders.meta_file(unit.id, SCRATCH_MANIFEST)
        if not os.path.exists(node_manifest):
            return None
        problem = manifest_mismatch(node_manifest,
                                    [(f.path, f.size, f.blake3) for f in manifest])
        return None if problem is None else f"exited 0 but {problem}"

    def _keep_slurm_log(self, unit: Unit) -> str:
        """Copy SLURM's own log of the task beside the unit's logs (its messages about time
        limits and memory are the only trace of a job SLURM killed)."""
        task = unit.slurm_id or ""
        name = f"{task}.out"
        source = self.submit_dir / "logs" / name
        if not source.exists():
            return ""
        target = Path(self.folders.meta_file(unit.id, f"slurm-{task}.out"))
        with contextlib.suppress(OSError):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            return str(target)
        return ""

    def _record_off_slurm(self, unit: Unit, outcome: Outcome, reason: str) -> None:
        """Queue the record of a unit SLURM will not run (``outcome`` is CANCELLED, or
        BLOCKED for one whose upstream failed while it was queued)."""
        self._record(unit, outcome, logs=False, reason=reason, slurm_id=unit.slurm_id)

    def _cancel_stage(self, failed: Unit) -> None:
        """A failed branch cancels the rest of its scatter-gather stage."""
        others = [u for u in self.job_units.get(failed.job.id, ())
                  if u is not failed and u.slurm_id and u.state is not UnitState.DONE]
        self._cancel_units(others, f"branch {failed.label} failed")

    def _cancel_pending(self) -> None:
        """Fail-fast: nothing new is submitted, and what has not started is cancelled."""
        self.stopping = True
        pending = [u for u in self.watching.values() if u.state is UnitState.SUBMITTED]
        self._cancel_units(pending, "stopped after a failure (--keep-going runs it)")

    def _cancel_units(self, units: list[Unit], reason: str) -> None:
        if not units:
            return
        self.cli.scancel(u.slurm_id for u in units if u.slurm_id)
        for unit in units:
            self.watching.pop(unit.slurm_id or "", None)
            if unit.state is not UnitState.DONE:
                self._record_off_slurm(unit, Outcome.CANCELLED, reason)
                self._resolve(unit, Outcome.CANCELLED, reason)

    def _cancel_all(self, reason: str) -> None:
        self.stopping = True
        self._cancel_units(list(self.watching.values()), reason)
        self._commit([])

    def _resolve(self, unit: Unit, outcome: str, reason: str) -> None:
        """As the base class; units blocked while queued (collected by :meth:`_resolved`)
        are cancelled on SLURM too, in one scancel (SLURM would cancel them itself through
        --kill-on-invalid-dep, but not those waiting with afterany). A job of a packed task
        is not: cancelling it would cancel its siblings; its row skips it on the node."""
        super()._resolve(unit, outcome, reason)
        blocked, self._blocked_queued = self._blocked_queued, []
        if blocked:
            self.cli.scancel(u.slurm_id for u in blocked
                             if u.slurm_id and PACK_SEPARATOR not in u.slurm_id)
            self._supersede(blocked)

    def _resolved(self, unit: Unit) -> None:
        if unit.outcome is Outcome.BLOCKED:
            # Queued behind a job that failed for good: SLURM can never start it.
            self.failure_kinds[unit.id] = FailureKind.DEPENDENCY_NEVER_SATISFIED.value
        if unit.outcome is Outcome.BLOCKED and self.watching.get(unit.slurm_id or "") is unit:
            del self.watching[unit.slurm_id or ""]
            self._record_off_slurm(unit, Outcome.BLOCKED, unit.reason or "blocked")
            self._blocked_queued.append(unit)
        elif unit.outcome is Outcome.BLOCKED and unit.id in self._requeued:
            # Taken off SLURM behind a retry that then failed: its QUEUED record ends too.
            self._record_off_slurm(unit, Outcome.BLOCKED, unit.reason or "blocked")

    def _expand(self, scatter: Unit) -> None:
        super()._expand(scatter)
        self._expanded.add(scatter.job.id)
        if not self.on_node:
            self._adopt_detached(scatter)

    # -- fully detached --no-wait: scatter-gather jobs expand on SLURM (.detached)

    def _arm_detached(self, scatter: Unit, meta: str) -> None:
        """Before a scatter's sbatch: with ``--no-wait``, leave it the hook and options with
        which its wrapper submits the branches and gather on the node; otherwise remove
        those of an earlier ``--no-wait`` build (this build expands it itself). The anchor
        and node submissions of an earlier scatter run are forgotten either way."""
        job_meta = self.folders.meta_dir(scatter.job.id)
        hook, options = f"{meta}/{HOOK_FILE}", f"{meta}/{OPTIONS_FILE}"
        for stale in (f"{job_meta}/{ANCHOR_FILE}", f"{job_meta}/{SUBMITTED_FILE}", hook,
                      options):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        if self.options.wait:
            return
        os.makedirs(job_meta, exist_ok=True)
        try:
            pickled = pickle.dumps((self.lab, scatter.job.id, self.options))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise RepxError(f"--no-wait cannot hand this build's SLURM options to the "
                            f"scatter of {scatter.job.pname} ({exc}); build without "
                            "--no-wait") from exc
        write_atomically(options, pickled)
        python = os.environ.get(NODE_PYTHON_ENV, "").strip() or sys.executable
        write_atomically(hook, hook_text(python, str(self.store.root), scatter.id).encode())
        self._armed.add(scatter.id)

    def _submit_anchors(self) -> bool:
        """``--no-wait``: give each scatter-gather job whose scatter is on SLURM and whose
        gather is not yet known a SLURM id downstream jobs can depend on: a new anchor job
        (``afterok`` on the scatter, repointed at the gather by the node) for a scatter
        armed by this build, the recorded anchor of one an earlier build submitted.
        Whether any gather got one (the next round can submit what waits for it)."""
        if self.options.wait:
            return False
        anchored = False
        for job_id, gather in self.final.items():
            if (gather.role != "gather" or gather.slurm_id or job_id in self._expanded
                    or gather.state not in (UnitState.WAITING, UnitState.READY)):
                continue
            scatter = self.units.get(scatter_id(gather.job))
            if scatter is None or scatter.state is not UnitState.SUBMITTED:
                continue
            anchor_file = f"{self.folders.meta_dir(job_id)}/{ANCHOR_FILE}"
            if scatter.id in self._armed:
                anchor = self._sbatch_anchor(gather, scatter.slurm_id or "")
                if anchor is None:
                    continue
                write_atomically(anchor_file, f"{anchor}\n".encode())
            else:
                try:
                    anchor = Path(anchor_file).read_text().strip()
                except OSError:
                    continue
                if not anchor:
                    continue
            gather.slurm_id = anchor
            gather.state = UnitState.SUBMITTED
            anchored = True
        return anchored

    def _sbatch_anchor(self, gather: Unit, scatter_task: str) -> str | None:
        """Submit the anchor of ``gather``'s job: ``true`` after the scatter, on the
        gather's partition; its SLURM id (None, the stage failed, when sbatch refuses)."""
        script = self.submit_dir / "anchor.sbatch"
        if not script.exists():
            write_atomically(str(script), b"#!/bin/bash\n# A repx anchor: stands for a "
                             b"scatter-gather job's gather (repx.engine.slurm.detached).\n"
                             b"true\n")
        partition = [d for d in sbatch_directives(self._resources(gather))
                     if d.startswith(("--partition", "-p"))]
        args = [f"--job-name=repx-anchor-{gather.id[:16]}", "--output=/dev/null",
                "--cpus-per-task=1", "--mem=16M", "--time=1", f"--chdir={self.store.root}",
                *partition, f"--dependency=afterok:{scatter_task}", "--kill-on-invalid-dep=yes"]
        try:
            return self.cli.sbatch(str(script), args)
        except SlurmError as exc:
            self._fail(gather, f"sbatch refused its anchor job: {exc.message}")
            return None

    def _adopt_detached(self, scatter: Unit) -> None:
        """After expanding a scatter: adopt the branches and gather its node submitted (its
        ``detached.json``, when it names this scatter's SLURM id) instead of submitting
        them again: claimed, recorded QUEUED with their SLURM ids, watched. Units already
        recorded as ended under the same SLURM id are left to the usual checks."""
        path = f"{self.folders.meta_dir(scatter.job.id)}/{SUBMITTED_FILE}"
        try:
            with open(path, encoding="utf-8") as handle:
                submitted = json.load(handle)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.reporter.message(f"{path} cannot be read ({exc}); the branches of "
                                  f"{scatter.job.pname} are submitted again")
            return
        task = scatter.slurm_id
        if task is None:
            record = self.store.get(scatter.id)
            task = record.slurm_id if record is not None else None
        units = submitted.get("units") if isinstance(submitted, dict) else None
        if not task or submitted.get("scatter") != task or not isinstance(units, dict):
            return
        records = self.store.get_many(list(units))
        with self.store.batch():
            for uid, slurm_task in units.items():
                unit = self.units.get(uid)
                if (unit is None or unit.state is UnitState.DONE
                        or not isinstance(slurm_task, str)):
                    continue
                record = records.get(uid)
                if (record is not None and record.slurm_id == slurm_task
                        and not record.status.active):
                    continue
                if not self.store.claim(uid, self.owner, host=self.host, pid=self.pid,
                                        lab=self.lab, run=unit.job.run,
                                        stage=self._stage(unit), force=True):
                    continue
                self.store.update(JobRecord(uid, Status.QUEUED, owner=self.owner,
                                            slurm_id=slurm_task))
                unit.slurm_id = slurm_task
                unit.state = UnitState.SUBMITTED
                self.watching[slurm_task] = unit
                self.reporter.queued(unit)

    def _expand_detached_done(self) -> None:
        """Without building: expand the succeeded scatters whose node submitted branches
        (a ``detached.json``), so that branches an earlier ``repx status`` adopted while
        they ran are adopted again and recorded now (:meth:`_adopt_detached`)."""
        scatters = [u for u in self.units.values() if u.role == "scatter" and os.path.exists(
            f"{self.folders.meta_dir(u.job.id)}/{SUBMITTED_FILE}")]
        if not scatters:
            return
        statuses = self.store.statuses([u.id for u in scatters])
        for scatter in scatters:
            if statuses.get(scatter.id) is Status.SUCCEEDED:
                with contextlib.suppress(RepxError):
                    self._expand(scatter)

    def _record_detached_ended(self) -> None:
        """Without building (:meth:`record_ended`): record the branches and gathers adopted
        from detached scatters that have ended, asking SLURM until nothing more ends (a
        gather is looked at after its branches)."""
        order = {"scatter": 0, "step": 1, "gather": 2}
        while self.watching:
            states = task_states(self.cli, {
                task: self.folders.meta_file(unit.id, layout.EXIT_CODE)
                for task, unit in self.watching.items()})
            ended = sorted(((t, st) for t, st in states.items()
                            if st[0] in FINAL_STATES and t in self.watching),
                           key=lambda item: order.get(self.watching[item[0]].role, 3))
            if not ended:
                return
            self._apply_states(dict(ended))


def _mib(size: int) -> str:
    """A memory request as sbatch takes it (whole MiB, rounded up)."""
    return f"{max(1, math.ceil(size / 2**20))}M"


def _seconds(seconds: int) -> str:
    """A time limit as people read it (``1:30:00``)."""
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def account_of(directives: Sequence[str]) -> str | None:
    """The account sbatch options charge a job to (``--account=X``, ``-A X``); None for the
    user's default account."""
    words = [w for d in directives for w in d.split()]
    for i, word in enumerate(words):
        if word.startswith("--account="):
            return word.split("=", 1)[1]
        if word in ("--account", "-A") and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("-A") and len(word) > 2:
            return word[2:]
    return None


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
