"""How a SLURM task ended, in repx's words: a :class:`~repx.engine.failures.FailureKind`
and the reason recorded, from squeue's state and sacct's job and step records.

The job record alone is not enough: in cgroup mode a script that outlives its killed
process ends the job FAILED with only the ``.batch`` step OUT_OF_MEMORY; a CANCELLED job
says who cancelled it only in sacct's ``CANCELLED by UID``; one SLURM cancelled because its
dependency can never be satisfied says so in squeue's reason (``DependencyNeverSatisfied``)
or sacct's (``Dependency``).
"""

from __future__ import annotations

import contextlib
import pwd
from dataclasses import dataclass

from repx.engine.failures import FailureKind
from repx.engine.slurm.cli import ACTIVE_STATES, TaskAccount

#: SLURM job states that are their own failure kind (the name is the same).
_STATE_KINDS = {kind.value: kind for kind in (
    FailureKind.TIMEOUT, FailureKind.NODE_FAIL, FailureKind.PREEMPTED, FailureKind.BOOT_FAIL,
    FailureKind.DEADLINE)}

#: The reason recorded for a job SLURM cancelled because an upstream job failed.
UPSTREAM_FAILED = "an upstream job failed (SLURM cancelled it)"


@dataclass(frozen=True)
class TaskEnd:
    """A task's end: ``kind`` None for a success; ``reason`` as the record says it."""

    kind: FailureKind | None
    reason: str
    exit_code: int | None


def attempt_state(state: str, account: TaskAccount | None) -> str:
    """The state an ended attempt is recorded with: sacct's (``CANCELLED by 0``,
    ``OUT_OF_MEMORY``…), unless accounting still lags behind the task's end (sacct says
    RUNNING or COMPLETING, or has no record yet): then ``state``, the end the watcher saw."""
    recorded = account.state if account is not None else ""
    if not recorded or recorded.split()[0] in ACTIVE_STATES:
        return state
    return recorded


def classify(state: str, squeue_reason: str, exit_code: int | None,
             account: TaskAccount | None, uid: int) -> TaskEnd:
    """How a task ended. ``state``/``squeue_reason`` are the watcher's (squeue, or sacct
    once squeue forgot the task, ``LOST`` when neither knows it), ``exit_code`` the one its
    wrapper wrote (None: none), ``account`` sacct's job and step records (None: not there
    yet), ``uid`` the user this build runs as (a cancel by another uid is an admin's)."""
    code = exit_code
    if code is None and account is not None and account.exit_code:
        code = account.exit_code
    if state == "COMPLETED" and code in (0, None):
        return TaskEnd(None, "", 0)
    states = {state}
    if account is not None:
        states.add(account.state)
        states.update(account.step_states.values())
    if "OUT_OF_MEMORY" in states:
        return TaskEnd(FailureKind.OUT_OF_MEMORY, "OUT_OF_MEMORY", code)
    job_state = state if state in _STATE_KINDS or account is None else account.state
    if job_state in _STATE_KINDS:
        return TaskEnd(_STATE_KINDS[job_state], job_state, code)
    if state == "CANCELLED" or (account is not None and account.state == "CANCELLED"):
        if "Dependency" in squeue_reason or (
                account is not None and account.reason.startswith("Dependency")):
            return TaskEnd(FailureKind.DEPENDENCY_NEVER_SATISFIED, UPSTREAM_FAILED, code)
        by = account.cancelled_by if account is not None else None
        if by is None or by == uid:
            who = f" by user {_user_name(by)} (uid {by})" if by is not None else ""
            return TaskEnd(FailureKind.CANCELLED_BY_USER, f"CANCELLED{who}", code)
        return TaskEnd(FailureKind.CANCELLED_BY_ADMIN,
                       f"CANCELLED by an administrator ({_user_name(by)}, uid {by})", code)
    if state == "LOST":
        return TaskEnd(FailureKind.LOST, "the job vanished from squeue and sacct", code)
    if code:
        return TaskEnd(FailureKind.SCRIPT_FAILURE, f"exit code {code}", code)
    return TaskEnd(FailureKind.SCRIPT_FAILURE, state or "FAILED", code)


def _user_name(uid: int | None) -> str:
    if uid is None:
        return "?"
    with contextlib.suppress(KeyError):
        return pwd.getpwuid(uid).pw_name
    return str(uid)
