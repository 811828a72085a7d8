"""The SLURM commands repx calls (sbatch, squeue, sacct, scancel, scontrol), in one place.

Every call goes through :meth:`SlurmCli._run`, which turns a missing tool, a time-out or a
non-zero exit into one :class:`SlurmError` that keeps SLURM's own words. Ids are batched
(200 per call, arrays compressed) so that watching or cancelling 10 000 tasks is a handful
of calls.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterable, Mapping

from repx.engine.slurm.arrays import compress_task_ids
from repx.errors import RepxError

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


class SlurmError(RepxError):
    """A SLURM command failed (its own message is kept)."""



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
        ids = compress_task_ids(job_ids)
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


def task_states(cli: SlurmCli, tasks: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``{task id: (state, reason)}`` for ``tasks`` (``{task id: its unit's exit-code
    file}``): squeue for the tasks it still knows, then one sacct call for those it has
    forgotten, then, on a cluster without accounting (no slurmdbd), the exit code the task's
    wrapper wrote (COMPLETED or FAILED). Tasks none of them knows are left out; other tasks
    of the same arrays may be in the answer too.

    A build's watcher and adoption and ``repx status`` all ask SLURM through this one
    function, so they agree on what a task's end was.
    """
    states = cli.states(tasks)
    lost = [t for t in tasks if t not in states]
    if lost:
        accounted = cli.accounting(lost)
        for task in lost:
            if task in accounted:
                states[task] = (accounted[task][0], "")
                continue
            code = read_exit_code(tasks[task])
            if code is not None:
                states[task] = ("COMPLETED" if code == 0 else "FAILED", "")
    return states


def read_exit_code(path: str) -> int | None:
    """The exit code a task's wrapper wrote beside its logs; None when there is none yet."""
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None
