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
import functools
import math
import os
import select
import shlex
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repx.engine.contract import JOB_ID_ENV, job_argv, prepare_job_folder
from repx.engine.plan import Plan
from repx.engine.runtimes import JobSandbox, Runtime
from repx.engine.runtimes.common import NIX_STORE, sandbox_env, visible_inputs
from repx.engine.runtimes.containers import ContainerRuntime
from repx.engine.scheduler import Failure, Reporter, SchedulerOptions, UnitScheduler
from repx.engine.slurm.arrays import array_ranges, collapse_to_arrays, corresponding_array
from repx.engine.slurm.cli import (
    ACTIVE_STATES,
    FINAL_STATES,
    SlurmCli,
    SlurmError,
    read_exit_code,
    task_states,
)
from repx.engine.slurm.node_local import (
    NODE_ENV_PLACEHOLDER,
    NODE_STORE_PLACEHOLDER,
    NodeLab,
    unpack_script,
)
from repx.engine.slurm.resources import ResourceRules, sbatch_directives
from repx.engine.units import Outcome, Unit, UnitState
from repx.errors import RepxError
from repx.identity import canonical_json, hash_part
from repx.lab.graph import JobGraph
from repx.store import JobRecord, Status, Store, layout, owner_alive


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


def wrapper_script(directives: str, table: str, outputs_root: str, *,
                   job_env: Mapping[str, str] | None = None,
                   node_lab: NodeLab | None = None,
                   engine: Sequence[str] | None = None) -> str:
    """The sbatch script of one submission: task ``$SLURM_ARRAY_TASK_ID`` runs the unit on
    line (index + 1) of ``table`` (id, script, inputs JSON, params JSON; under an isolating
    runtime also the job's whole command line, shell-quoted, and for podman/docker its
    image ID and docker-archive directory) under the execution
    contract, in the job folder of :mod:`repx.store.layout`. The store's database is never
    touched here; the watcher records the outcome.

    The script needs bash, coreutils and sed on the node, never repx or Nix: the runtime's
    command line is made on the login node (``job_env`` is what it sets in the job's
    environment), and a node-local lab is unpacked by bash (:mod:`.node_local`). With a
    container ``engine`` (its command line) the row's image is loaded on the node unless
    the engine has it (once per node: a lock), and checked to have the lab's image ID.
    """
    meta = f"$job/{layout.META}"
    inputs, params = f"{meta}/{layout.INPUTS_JSON}", f"{meta}/{layout.PARAMS_JSON}"
    exit_code = f"{meta}/{layout.EXIT_CODE}"
    argv = " ".join(f'"{arg}"' for arg in job_argv("$script", f"$job/{layout.OUT}", inputs,
                                                     params))
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
    return f"""#!/bin/bash
{directives}
# Generated by repx: runs one unit of the table under the execution contract.
set -uo pipefail
table={_sh(table)}
index=${{SLURM_ARRAY_TASK_ID:-0}}
IFS=$'\\t' read -r id script inputs params wrapped image_id image_dir \\
  < <(sed -n "$((index + 1))p" "$table")
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
rm -f "{exit_code}"
# A setup step that fails says why in the job's stderr log, and the job fails.
fail() {{ printf 'repx (SLURM wrapper on %s): %s\\n' "${{HOSTNAME:-node}}" "$1" >> "{stderr_log}"
        echo 1 > "{exit_code}"; exit 1; }}
: > "{stderr_log}"
{setup}{argv} \\
  > "{stdout_log}" 2>> "{stderr_log}"
code=$?
echo "$code" > "{exit_code}"
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
        self.submit_dir = store.root / "slurm"
        #: Units submitted (or adopted) and not yet finished, by SLURM task id.
        self.watching: dict[str, Unit] = {}
        self.submitted: list[Unit] = []
        self._expanded: set[str] = set()
        self._missing_since: dict[str, float] = {}
        self._blocked_queued: list[Unit] = []
        from repx.lab.export import unpacked_lab_of

        unpacked = unpacked_lab_of(Path(graph.lab.path))
        #: Where the lab's store is on this machine (an unpack's, or /nix/store).
        self._login_store = str(unpacked.store_dir) if unpacked is not None else NIX_STORE

    @functools.cached_property
    def max_array(self) -> int:
        """SLURM's MaxArraySize, asked when the first array is submitted (adopting what
        SLURM already runs never needs it)."""
        return self.cli.max_array_size()

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

    def record_ended(self, states: Mapping[str, tuple[str, str]]) -> list[Unit]:
        """Without building: adopt the plan's units whose SLURM tasks ``states`` says have
        ended, and record their outcomes exactly as a build's adoption does (claim, output
        check, manifest, record; a scatter also writes its units). Tasks still pending or
        running are left alone, so nothing is written for them. The units recorded.

        ``repx status``, ``show`` and ``cache ls`` call it (:mod:`repx.engine.slurm.adopt`)
        for the work a ``--no-wait`` build left on SLURM.
        """
        self._build_units()
        return self._adopt({t: st for t, st in states.items() if st[0] in FINAL_STATES})

    def _adopt(self, states: Mapping[str, tuple[str, str]] | None = None) -> list[Unit]:
        """Units the store says are QUEUED/RUNNING on SLURM from a build that is gone: watch
        them if SLURM knows them, instead of submitting them again; the units adopted.

        ``states`` are SLURM's (:func:`task_states`); asked here when not given. A task
        missing from them is not adopted (the build runs it again). The outcome of a task
        that has ended is recorded at once, so what waits for it can be submitted now.
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
        corr = corresponding_array(members)
        if corr is not None:
            array_id, indexed = corr
            if max(indexed) < self.max_array:
                self._sbatch(directives, [(i, u) for i, u in indexed.items()],
                             [f"aftercorr:{array_id}"], [])
                return
        chunk = max(1, self.max_array - 1)
        for start in range(0, len(members), chunk):
            part = members[start:start + chunk]
            afterok = collapse_to_arrays(d for _u, ok, _any in part for d in ok)
            afterany = collapse_to_arrays(d for _u, _ok, anyd in part for d in anyd)
            self._sbatch(directives, list(enumerate(u for u, _a, _b in part)),
                         [f"afterok:{':'.join(afterok)}"] if afterok else [],
                         [f"afterany:{':'.join(afterany)}"] if afterany else [])

    def _sbatch(self, directives: list[str], tasks: list[tuple[int, Unit]],
                afterok: list[str], afterany: list[str]) -> None:
        first = tasks[0][1]
        rows = [""] * (max(i for i, _u in tasks) + 1)
        for index, unit in tasks:
            meta = self.folders.meta_dir(unit.id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{meta}/{layout.EXIT_CODE}")  # an earlier attempt's, not this one's
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
            rows[index] = "\t".join(row)
        tasks = [(i, u) for i, u in tasks if u.state is not UnitState.DONE]
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
            engine=engine.command if engine is not None else None))
        args = []
        dependency = ",".join(afterok + afterany)
        if dependency:
            args += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
        if not single:
            args.append("--array=" + array_ranges([i for i, _u in tasks]))
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
            unit.state = UnitState.SUBMITTED
            self.watching[unit.slurm_id] = unit
            self.submitted.append(unit)
            self.reporter.queued(unit)
        self.store.mark_queued(self.owner, {u.id: u.slurm_id or "" for _i, u in tasks})

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
        return super()._inputs_for(unit, meta)

    # -- watching

    def _watch(self) -> None:
        if not self.watching:
            return
        states = task_states(self.cli, {
            task: self.folders.meta_file(unit.id, layout.EXIT_CODE)
            for task, unit in self.watching.items()})
        now = time.monotonic()
        for task in self.watching:
            if task not in states and now - self._missing_since.setdefault(task, now) > 120:
                states[task] = ("LOST", "")
        self._apply_states(states)

    def _apply_states(self, states: Mapping[str, tuple[str, str]]) -> None:
        """Move the watched units on by SLURM's ``states``: record RUNNING when one starts,
        the outcome when one ended (one store transaction)."""
        with self.store.batch():
            for task, (state, reason) in states.items():
                unit = self.watching.get(task)
                if unit is None:
                    continue
                if state in ("RUNNING", "COMPLETING") and unit.state is UnitState.SUBMITTED:
                    unit.state = UnitState.ON_SLURM
                    self.reporter.started(unit)
                    self.store.update(JobRecord(unit.id, Status.RUNNING, owner=self.owner,
                                                slurm_id=task))
                if state in FINAL_STATES or state == "LOST":
                    del self.watching[task]
                    self._ended(unit, state, reason)
            self._commit([])

    def _ended(self, unit: Unit, state: str, reason: str) -> None:
        if unit.state is UnitState.DONE:  # already given an outcome (blocked, cancelled)
            return
        unit.state = UnitState.RUNNING
        code = read_exit_code(self.folders.meta_file(unit.id, layout.EXIT_CODE))
        slurm_log = self._keep_slurm_log(unit)
        if state == "COMPLETED" and code in (0, None):
            self._complete(unit, 0)
        elif state == "CANCELLED" and "Dependency" in reason:
            self._record_off_slurm(unit, Outcome.BLOCKED,
                                   "an upstream job failed (SLURM cancelled it)")
            self._resolve(unit, Outcome.BLOCKED, "an upstream job failed")
        elif state == "FAILED" and code:
            self._complete(unit, code, f"exit code {code}")
        else:
            why = state if state != "LOST" else "the job vanished from squeue and sacct"
            self._complete(unit, code, why)
            if slurm_log:
                self._finishes[-1].stderr_log = slurm_log
        if unit.role == "step" and unit.outcome is Outcome.FAILED:
            self._cancel_stage(unit)
        if unit.outcome is Outcome.FAILED and not self.options.keep_going:
            self._cancel_pending()

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
        --kill-on-invalid-dep, but not those waiting with afterany)."""
        super()._resolve(unit, outcome, reason)
        blocked, self._blocked_queued = self._blocked_queued, []
        if blocked:
            self.cli.scancel(u.slurm_id for u in blocked if u.slurm_id)

    def _resolved(self, unit: Unit) -> None:
        if unit.outcome is Outcome.BLOCKED and self.watching.get(unit.slurm_id or "") is unit:
            del self.watching[unit.slurm_id or ""]
            self._record_off_slurm(unit, Outcome.BLOCKED, unit.reason or "blocked")
            self._blocked_queued.append(unit)

    def _expand(self, scatter: Unit) -> None:
        super()._expand(scatter)
        self._expanded.add(scatter.job.id)


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
