"""The processes a job leaves behind, and how the local scheduler finds them (Linux).

A job is not finished until every process it started is gone: a child started with
``setsid``, ``nohup … &`` or a double fork outlives the job's main process and would keep
writing into ``$out`` after the outputs were checked, hashed and recorded. The local
scheduler therefore makes itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``)
while it runs jobs: a job's process whose parent dies is re-parented to the scheduler
instead of to init, so every leftover of a job ends up a direct child of repx, listed in
``/proc/self/task/<pid>/children`` and waitable with a pidfd like the job itself.

Why a subreaper rather than a cgroup or a PID namespace: it costs no process and no
privilege (a cgroup per job needs a delegated cgroup tree, which login nodes and containers
rarely give; a PID namespace needs user namespaces and makes the job's shell PID 1, which
ignores signals it has no handler for), and nothing per job beyond one read of the
children list when a job's main process exits (one ``pread`` of a ``/proc`` file).

A re-parented process is attributed to its job by what it inherits (:func:`job_of`): the
``REPX_JOB_ID`` variable the engine puts in every job's environment
(:data:`repx.engine.contract.JOB_ID_ENV`), else its session, which is the job's main process
id unless it called ``setsid``. A process that both leaves the job's session and drops the
variable from its environment cannot be told from other children of the repx process and is
not waited for (SLURM's cgroup process tracking, or a PID namespace, would catch it too).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

from repx.engine.contract import JOB_ID_ENV

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37

_JOB_ID_ENTRY = JOB_ID_ENV.encode() + b"="


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (None where there is none: not Linux, or no libc to load)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def child_subreaper() -> bool | None:
    """Whether this process is a child subreaper now (None when it cannot be known)."""
    prctl = _prctl()
    if prctl is None:
        return None
    value = ctypes.c_int(0)
    if prctl(_PR_GET_CHILD_SUBREAPER, ctypes.addressof(value), 0, 0, 0) != 0:
        return None
    return bool(value.value)


def set_child_subreaper(enabled: bool) -> bool:
    """Make this process a child subreaper (or stop being one); whether that worked."""
    prctl = _prctl()
    if prctl is None:
        return False
    return prctl(_PR_SET_CHILD_SUBREAPER, int(enabled), 0, 0, 0) == 0


def child_pids() -> list[int]:
    """The direct children of this process (of every thread), zombies included."""
    pids: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as handle:
                pids.extend(map(int, handle.read().split()))
        except (OSError, ValueError):
            continue
    return pids


class Children:
    """The children of this process's main thread, which is where the kernel re-parents
    a subreaper's orphans (to its first live thread), read again with one ``pread``
    (~1.5 µs) of a ``/proc`` file kept open. Falls back to :func:`child_pids` when that
    file cannot be read (the main thread is gone) or holds more than one buffer."""

    _BUFFER = 1 << 16

    def __init__(self) -> None:
        try:
            self._fd = os.open(f"/proc/self/task/{os.getpid()}/children",
                               os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = -1

    def pids(self) -> list[int]:
        """The pids of the children now."""
        if self._fd >= 0:
            try:
                data = os.pread(self._fd, self._BUFFER, 0)
                if len(data) < self._BUFFER:
                    return list(map(int, data.split()))
            except (OSError, ValueError):
                pass
        return child_pids()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def job_of(pid: int) -> tuple[str | None, int | None]:
    """What ties process ``pid`` to a job: (the ``REPX_JOB_ID`` of its environment, its
    session id); either is None when it cannot be read (a zombie has no environment, a
    setuid program's cannot be read, a process that is gone has neither)."""
    job_id = None
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        environ = b""
    if environ.startswith(_JOB_ID_ENTRY):
        start = len(_JOB_ID_ENTRY)
    else:
        found = environ.find(b"\0" + _JOB_ID_ENTRY)
        start = found + 1 + len(_JOB_ID_ENTRY) if found >= 0 else -1
    if start >= 0:
        end = environ.find(b"\0", start)
        job_id = environ[start:end if end >= 0 else len(environ)].decode("utf-8", "replace")
    return job_id, session_of(pid)


def session_of(pid: int) -> int | None:
    """The session id of process ``pid`` (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            # pid (comm) state ppid pgrp session …; comm may hold spaces and parentheses.
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[3])
    except (OSError, IndexError, ValueError):
        return None


def describe(pid: int) -> str:
    """``pid 123 (sleep 1000)``: a process as error messages name it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            words = handle.read().rstrip(b"\0").split(b"\0")
        command = " ".join(w.decode("utf-8", "replace") for w in words)
    except OSError:
        command = ""
    if len(command) > 80:
        command = command[:77] + "..."
    return f"pid {pid} ({command})" if command else f"pid {pid}"
