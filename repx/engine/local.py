"""The local scheduler: runs a build's units as processes on this machine.

One unit is one bash process (the stage script; no Python per job), started with
``posix_spawn`` in a session of its own (so that Ctrl-C can stop its whole process group,
and only repx decides when), its stdout and stderr going straight to the unit's log files.
The loop sleeps in ``epoll`` on one pidfd per running process plus a wakeup pipe for
signals, so it reacts to an exit at once without polling.

Ordering: ready units are started by run (runs in the lab's order), then in topological
order; admission counts the units' ``cpus`` and ``mem`` hints against the machine; a unit
bigger than the machine still runs when nothing else does. Claims, outcome records and
scatter-gather expansion are the shared :class:`~repx.engine.scheduler.UnitScheduler`'s.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import select
import signal
import time
from dataclasses import dataclass

from repx.engine.contract import job_argv, write_json_lines
from repx.engine.plan import Plan
from repx.engine.scheduler import (
    FOREIGN_POLL_SECONDS,
    Reporter,
    SchedulerOptions,
    UnitScheduler,
)
from repx.engine.units import Unit, UnitState
from repx.errors import RepxError
from repx.lab.graph import JobGraph
from repx.store import Store, layout

_SPAWN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def machine_cpus() -> int:
    """CPUs this process may use (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_mem() -> int:
    """Total memory in bytes (MemTotal), 0 when unknown (no memory admission then)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def kill_orphans(out: str) -> int:
    """Stop processes a killed ``repx build`` left running for a unit; how many were found.

    The unit's claim was abandoned (its owner is dead and we hold it now), but the job's
    process may still be writing into ``out/``. It is recognised by its command line, whose
    first argument is ``out/`` itself, so no unrelated process is ever touched. Such a
    process leads its own session (the scheduler starts every job with ``setsid``), so its
    whole process group goes. This scans ``/proc`` — milliseconds — and only runs for units
    whose previous claim was abandoned.
    """
    needle = b"\0" + out.encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry))
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    alive = found
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if os.path.exists(f"/proc/{pid}")]
        if alive:
            time.sleep(0.02)
    return len(found)


@dataclass
class LocalOptions(SchedulerOptions):
    """How the local scheduler runs a build."""

    #: Units running at once (``-j``); default: the machine's CPUs.
    jobs: int = 0
    #: Machine budgets for admission (default: this machine).
    cpus: int = 0
    mem: int = 0
    #: Seconds between SIGTERM and SIGKILL when a build is interrupted.
    grace: float = 5.0


@dataclass
class _Running:
    unit: Unit
    pid: int
    pidfd: int
    started: float


class LocalScheduler(UnitScheduler):
    """Runs the ``to_run`` jobs of a plan on this machine; see the module docstring."""

    options: LocalOptions

    def __init__(
        self,
        graph: JobGraph,
        store: Store,
        plan: Plan,
        options: LocalOptions,
        reporter: Reporter | None = None,
    ) -> None:
        super().__init__(graph, store, plan, options, reporter)
        self.max_jobs = options.jobs or machine_cpus()
        self.cpu_budget = max(options.cpus or machine_cpus(), self.max_jobs)
        self.mem_budget = options.mem or machine_mem()
        self.running: dict[int, _Running] = {}
        self._env = dict(os.environ)

    def run(self) -> None:
        """Run every unit to its outcome (or until interrupted)."""
        self._build_units()
        self.reporter.begin(sum(1 for u in self.units.values() if u.role != "gate"))
        epoll = select.epoll()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        epoll.register(wake_r, select.EPOLLIN)
        previous = self._install_signals(wake_w)
        try:
            self._loop(epoll, wake_r)
        finally:
            self._restore_signals(previous)
            epoll.close()
            os.close(wake_r)
            os.close(wake_w)
            self.reporter.close()

    def _loop(self, epoll: select.epoll, wake_r: int) -> None:
        next_foreign = 0.0
        while True:
            if self.interrupted:
                self._stop_all(epoll, wake_r)
                break
            starts = self._admit()
            self._commit(starts)
            for unit in starts:
                self._spawn(unit, epoll)
            if self._finishes:  # spawn failures are recorded at once
                self._commit([])
            if not self.running and not self.foreign:
                if self.ready and not self.stopping:
                    continue
                break
            timeout = self.reporter.tick_interval
            if self.foreign:
                timeout = min(timeout or FOREIGN_POLL_SECONDS, FOREIGN_POLL_SECONDS)
            if self.claims_refused and self.ready and not self.stopping:
                timeout = 0  # refused claims left slots free: fill them now
            self.reporter.tick()  # here, with every slot filled: what runs is what shows
            self._handle(epoll.poll(-1 if timeout is None else timeout), epoll, wake_r)
            if self.foreign and time.monotonic() >= next_foreign:
                self._poll_foreign()
                next_foreign = time.monotonic() + FOREIGN_POLL_SECONDS
        self._finish_remaining()

    def _handle(self, events: list[tuple[int, int]], epoll: select.epoll, wake_r: int) -> None:
        """Reap the processes whose pidfd became readable; drain the signal wakeup pipe."""
        for fd, _mask in events:
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                continue
            running = self.running.pop(fd, None)
            if running is not None:
                self._reap(running, epoll)

    def _admit(self) -> list[Unit]:
        """Ready units that fit now, in (run, topological) order."""
        starts: list[Unit] = []
        if self.stopping:
            return starts
        cpus = sum(r.unit.cpus for r in self.running.values())
        mem = sum(r.unit.mem for r in self.running.values())
        ready = self.ready
        while ready and len(self.running) + len(starts) < self.max_jobs:
            unit = ready[0][3]
            busy = self.running or starts
            if busy and (cpus + unit.cpus > self.cpu_budget
                         or (self.mem_budget and unit.mem
                             and mem + unit.mem > self.mem_budget)):
                break
            heapq.heappop(ready)
            if unit.state is not UnitState.READY:
                continue
            cpus += unit.cpus
            mem += unit.mem
            starts.append(unit)
        return starts

    def _spawn(self, unit: Unit, epoll: select.epoll) -> None:
        folders = self.folders
        job_dir = folders.job_dir(unit.id)
        out = folders.out_dir(unit.id)
        meta = folders.meta_dir(unit.id)
        try:
            for path in (job_dir, out, meta):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path)
            if unit.maybe_orphan:
                kill_orphans(out)
            inputs = self._inputs_for(unit, meta)
            inputs_json = f"{meta}/{layout.INPUTS_JSON}"
            params_json = f"{meta}/{layout.PARAMS_JSON}"
            write_json_lines(inputs_json, inputs)
            write_json_lines(params_json, unit.job.params)
            stdout_log, stderr_log = folders.logs(unit.id)
            pid = os.posix_spawn(
                unit.script,
                job_argv(unit.script, out, inputs_json, params_json),
                self._env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, stdout_log, _SPAWN_FLAGS, 0o644),
                    (os.POSIX_SPAWN_OPEN, 2, stderr_log, _SPAWN_FLAGS, 0o644),
                ],
                setsid=True,
            )
        except (OSError, RepxError) as exc:
            reason = exc.message if isinstance(exc, RepxError) else f"cannot start: {exc}"
            self._fail(unit, reason)
            return
        pidfd = os.pidfd_open(pid)
        epoll.register(pidfd, select.EPOLLIN)
        unit.state = UnitState.RUNNING
        self.running[pidfd] = _Running(unit, pid, pidfd, time.monotonic())
        self.reporter.started(unit)

    def _reap(self, running: _Running, epoll: select.epoll) -> None:
        unit = running.unit
        epoll.unregister(running.pidfd)
        os.close(running.pidfd)
        _pid, status = os.waitpid(running.pid, 0)
        # Whatever the job left running in its session (a background child, one that ignored
        # SIGTERM) must not keep writing into out/ once the outputs are checked and hashed.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(running.pid, signal.SIGKILL)
        seconds = time.monotonic() - running.started
        self.unit_seconds[unit.id] = seconds
        code = os.waitstatus_to_exitcode(status)
        if self.interrupted:
            self._cancel(unit, code)
            return
        failure = None
        if code != 0:
            failure = f"exit code {code}" if code > 0 else \
                f"killed by signal {signal.Signals(-code).name}"
        self._complete(unit, code, failure)

    def _kill_all(self, sig: int) -> None:
        for running in self.running.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(running.pid, sig)

    def _stop_all(self, epoll: select.epoll, wake_r: int) -> None:
        """Interrupted: SIGTERM every running process group, SIGKILL after the grace time,
        and record each unit as cancelled."""
        self.stopping = True
        if self.running:
            name = signal.Signals(self.interrupted).name
            self.reporter.message(f"{name}: stopping {len(self.running)} running jobs")
        self._kill_all(signal.SIGTERM)
        deadline = time.monotonic() + self.options.grace
        while self.running:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill_all(signal.SIGKILL)
                left = 5.0
                deadline = time.monotonic() + left
            self._handle(epoll.poll(left), epoll, wake_r)
        self.foreign.clear()
        self._commit([])
