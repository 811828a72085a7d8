"""Why a job's attempt failed, and whether (and how) it is tried again.

Both executors name a failure by one :class:`FailureKind`, recorded in the job's record
(``failure``, and per attempt in ``attempts``), so ``repx show``, ``repx status`` and the
analysis DataFrame say *why* without anyone reading SLURM's logs. The retry rules:

* ``OUT_OF_MEMORY``: retried with twice the memory, ``TIMEOUT`` with 1.5 times the time
  limit, each capped by the partition's limits (a job already at the cap is not retried:
  the same request would fail the same way);
* ``NODE_FAIL``, ``PREEMPTED``, ``BOOT_FAIL``: the job did nothing wrong; retried with the
  same resources, away from the node it was on (``--exclude``);
* ``SIGNAL`` (local: killed by a signal nobody in repx sent, such as the kernel's OOM
  killer): retried as is;
* ``SCRIPT_FAILURE`` (a non-zero exit): retried only with ``--retry-failed``, since a bug
  fails again;
* cancellations, unsatisfiable dependencies, deadlines and lost jobs are never retried.

Each job gets at most ``retries`` more attempts (``repx build --retries N``, or the stage's
``retries`` resource hint, which wins).
"""

from __future__ import annotations

from enum import StrEnum


class FailureKind(StrEnum):
    """How an attempt failed; the values are what records and displays show."""

    SCRIPT_FAILURE = "SCRIPT_FAILURE"
    SIGNAL = "SIGNAL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    CANCELLED_BY_USER = "CANCELLED_BY_USER"
    CANCELLED_BY_ADMIN = "CANCELLED_BY_ADMIN"
    DEPENDENCY_NEVER_SATISFIED = "DEPENDENCY_NEVER_SATISFIED"
    LOST = "LOST"

    @property
    def retry_action(self) -> str | None:
        """``"mem"``, ``"time"``, ``"exclude"``, ``"same"``, ``"script"`` (retried only with
        ``--retry-failed``) or None (never retried)."""
        return _RETRY_ACTIONS.get(self)


#: What a retry of each kind changes (kinds missing here are never retried).
_RETRY_ACTIONS = {
    FailureKind.OUT_OF_MEMORY: "mem",
    FailureKind.TIMEOUT: "time",
    FailureKind.NODE_FAIL: "exclude",
    FailureKind.PREEMPTED: "exclude",
    FailureKind.BOOT_FAIL: "exclude",
    FailureKind.SIGNAL: "same",
    FailureKind.SCRIPT_FAILURE: "script",
}

#: Memory of an out-of-memory job's retry, as a multiple of the attempt's.
MEM_FACTOR = 2.0
#: Time limit of a timed-out job's retry, as a multiple of the attempt's.
TIME_FACTOR = 1.5


def may_retry(kind: FailureKind | None, *, attempt: int, retries: int,
              retry_failed: bool) -> bool:
    """Whether attempt number ``attempt`` (1 for the first) that failed as ``kind`` gets
    another one, with ``retries`` retries allowed in all."""
    if kind is None or attempt > retries:
        return False
    action = kind.retry_action
    if action is None:
        return False
    return action != "script" or retry_failed
