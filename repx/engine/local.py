"""The local scheduler: runs a build's units as processes on this machine.

One unit is one bash process (the stage script; no Python per job), started with
``posix_spawn`` in a session of its own (so that Ctrl-C can stop its whole process group,
and only repx decides when), its stdout and stderr going straight to the unit's log files.
The loop sleeps in ``epoll`` on one pidfd per running process plus a wakeup pipe for
signals, so it reacts to an exit at once without polling.

A unit is finished when its main process *and every process it started* are gone: the
scheduler is a child subreaper while it runs (:mod:`repx.engine.descendants`), so what a
job leaves running (``setsid``, ``nohup … &``, a double fork) is re-parented to it and
waited for with a pidfd too, up to :attr:`LocalOptions.descendant_timeout` seconds after
the main process exited; whatever is still running then is killed and the unit fails
saying so. A job whose main process failed, or a build being stopped, has its leftovers
killed at once.

Ordering: ready units are started by run (runs in the lab's order), then in topological
order; admission counts the units' ``cpus`` and ``mem`` hints against the machine; a unit
bigger than the machine still runs when nothing else does. Claims, outcome records and
scatter-gather expansion are the shared :class:`~repx.engine.scheduler.UnitScheduler`'s.
For millisecond jobs the next units are claimed before a slot frees
(:meth:`LocalScheduler._claim_ahead`), so that a slot never waits for a commit.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import select
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from repx.engine.contract import JOB_ID_ENV, job_argv, prepare_job_folder, write_json_lines
from repx.engine.descendants import (
    Children,
    child_subreaper,
    describe,
    job_of,
    set_child_subreaper,
)
from repx.engine.failures import FailureKind, may_retry
from repx.engine.jobserver import Jobserver
from repx.engine.plan import Plan
from repx.engine.runtimes import JobSandbox, Runtime
from repx.engine.runtimes.common import visible_inputs
from repx.engine.scheduler import (
    FOREIGN_POLL_SECONDS,
    Reporter,
    SchedulerOptions,
    UnitScheduler,
)
from repx.engine.units import Unit, UnitState
from repx.errors import RepxError, UsageError
from repx.lab.graph import JobGraph
from repx.store import Store, layout
from repx.store.errors import StoreError, StoreFullError

_SPAWN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC

#: How much work a build claims ahead of its free slots, in seconds per slot (each unit
#: counted at its stage's mean duration so far), and at most how many units per slot
#: (LocalScheduler._claim_ahead).
CLAIM_AHEAD_SECONDS = 0.05
CLAIM_AHEAD_PER_SLOT = 32
#: Seconds an outcome may wait to be committed with the next claims before it is committed
#: alone: how long a job that ended may still show as running to ``repx status``.
FINISH_COMMIT_DELAY = 0.2

#: The environment variable that sets :attr:`LocalOptions.descendant_timeout`.
DESCENDANT_TIMEOUT_ENV = "REPX_DESCENDANT_TIMEOUT"
#: Seconds a job's leftover processes may outlive its main process by default: enough for
#: a background writer to finish, short enough that a forgotten daemon costs a minute and
#: a clear error rather than a build that never ends.
DEFAULT_DESCENDANT_TIMEOUT = 60.0


def descendant_timeout_from_env() -> float:
    """``$REPX_DESCENDANT_TIMEOUT`` in seconds, else the default; a UsageError naming the
    variable when it is not a number >= 0."""
    text = os.environ.get(DESCENDANT_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_DESCENDANT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"{DESCENDANT_TIMEOUT_ENV}={text!r} is not a number of seconds >= 0")
    return value


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


def kill_orphans(out: str, unit_id: str) -> int:
    """Stop processes a killed ``repx build`` left running for a unit; how many were found.

    The unit's claim was abandoned (its owner is dead and we hold it now), but the job's
    process, or one it started, may still be writing into ``out/``. The job's main process
    is recognised by its command line, whose first argument is ``out/`` itself, and what
    it started by the ``REPX_JOB_ID`` it inherited, so no unrelated process is ever touched.
    Each one's process group goes with it (the scheduler starts every job with ``setsid``).
    This scans ``/proc`` — milliseconds — and only runs for units whose previous claim was
    abandoned.
    """
    needle = b"\0" + out.encode() + b"\0"
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if needle in cmdline or job_of(int(entry))[0] == unit_id:
            found.append(int(entry))
    for pid in found:
        _signal_tree(pid, signal.SIGKILL)
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
    #: Seconds the processes a job started may run on after its main process exited 0;
    #: then they are killed and the job fails (``REPX_DESCENDANT_TIMEOUT``, default 60).
    descendant_timeout: float = field(default_factory=descendant_timeout_from_env)
    #: How each job's process is run (native, bwrap, podman, docker: repx.engine.runtimes).
    runtime: Runtime = field(default_factory=Runtime)
    #: GNU make's jobserver when the build runs in a make recipe: one more admission limit
    #: (a token per unit running beyond the first); the scheduler closes it when done.
    jobserver: Jobserver | None = None


def _signal_tree(pid: int, sig: int) -> None:
    """Send ``sig`` to process ``pid`` and to the process group it leads, if any."""
    for send in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, sig)


@dataclass(eq=False)
class _Running:
    """A unit whose process runs, or whose main process exited and whose descendants
    still run (it keeps its slot until they are gone)."""

    unit: Unit
    pid: int
    pidfd: int
    started: float
    #: The main process's wait status once it exited.
    status: int | None = None
    #: When the descendants still running are killed (monotonic; set at the main's exit).
    deadline: float = 0.0
    #: The descendants waited for, re-parented to the scheduler: pidfd -> pid.
    descendants: dict[int, int] = field(default_factory=dict)
    #: The signal every descendant gets as soon as it is found (0 while none is due).
    kill_signal: int = 0
    #: Why the unit fails although its main process exited 0.
    problem: str = ""
    #: The main process's resource use (``os.wait4``), for the attempt's record.
    rusage: Any = None


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
        self.jobserver = options.jobserver
        # Under make's jobserver, make's -jN is the most that can run at once anyway.
        self.max_jobs = (options.jobs or (self.jobserver.make_jobs if self.jobserver else 0)
                         or machine_cpus())
        #: Ready units wait for a jobserver token (its read end is then in the epoll set).
        self._wants_token = False
        self._jobserver_watched: set[int] = set()
        self.cpu_budget = max(options.cpus or machine_cpus(), self.max_jobs)
        self.mem_budget = options.mem or machine_mem()
        #: Units being run, by unit id.
        self.running: dict[str, _Running] = {}
        #: Units claimed ahead of a free slot, in the order they start (:meth:`_claim_ahead`);
        #: the seconds each was counted at, by unit id, and their sum (kept as they come and
        #: go: the loop reads it once per job); the records their claims replaced (given
        #: back if they never start).
        self._ahead: deque[Unit] = deque()
        self._ahead_ids: dict[str, float] = {}
        self._ahead_seconds = 0.0
        self._ahead_replaced: dict[str, bytes | None] = {}
        #: When the oldest outcome not committed yet was reaped (0: none is waiting).
        self._finishes_since = 0.0
        #: The running mean of each stage's units' durations in seconds, by unit label.
        self._stage_seconds: dict[str, float] = {}
        #: Every pidfd in the epoll set (main processes and descendants): (unit, pid).
        self._pidfds: dict[int, tuple[_Running, int]] = {}
        #: The pids those pidfds watch (a child of ours listed there is already known).
        self._watched: set[int] = set()
        #: Running units by their main process's pid, which is their session id.
        self._sessions: dict[int, _Running] = {}
        #: Whether this process is a child subreaper (else leftovers cannot be waited for).
        self.subreaper = False
        self._children: Children | None = None
        self._env = dict(os.environ)
        self.runtime = options.runtime
        if self.runtime.isolating:
            self.runtime.check_runs(sorted({graph.jobs[j].run for j in plan.to_run}))

    def run(self) -> None:
        """Run every unit to its outcome (or until interrupted)."""
        self._build_units()
        self.reporter.begin(sum(1 for u in self.units.values() if u.role != "gate"))
        was_subreaper = child_subreaper()
        self.subreaper = set_child_subreaper(True)
        self._children = Children() if self.subreaper else None
        epoll = select.epoll()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        epoll.register(wake_r, select.EPOLLIN)
        previous = self._install_signals(wake_w)
        try:
            self._loop(epoll, wake_r)
        except StoreError as error:
            self._stop_for_store_error(error, epoll, wake_r)
            raise
        finally:
            self._restore_signals(previous)
            if self.jobserver is not None:
                self.jobserver.close()  # every token back, whatever ended the build
            for fd in self._pidfds:
                os.close(fd)
            self._pidfds.clear()
            epoll.close()
            os.close(wake_r)
            os.close(wake_w)
            if self._children is not None:
                self._children.close()
            if self.subreaper and not was_subreaper:
                set_child_subreaper(False)
            self.reporter.close()

    def _loop(self, epoll: select.epoll, wake_r: int) -> None:
        next_foreign = 0.0
        while True:
            if self.interrupted:
                self._stop_all(epoll, wake_r)
                break
            self.claims_refused = False
            self._start_admitted(epoll)
            refused = self.claims_refused
            self._claim_ahead()
            self.claims_refused = self.claims_refused or refused
            self._return_tokens()  # refused claims and failed spawns need none
            if not self.running and not self.foreign:
                if (self.ready or self._ahead) and not self.stopping:
                    continue
                break
            timeout = self.reporter.tick_interval
            if self.foreign:
                timeout = min(timeout or FOREIGN_POLL_SECONDS, FOREIGN_POLL_SECONDS)
            if (self.claims_refused and (self.ready or self._ahead) and not self.stopping
                    and len(self.running) < self.max_jobs):
                timeout = 0  # refused claims left slots free: fill them now
            deadline = self._next_deadline()
            if self._finishes:
                due = self._finishes_since + FINISH_COMMIT_DELAY
                deadline = due if deadline is None else min(deadline, due)
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            self._watch_jobserver(epoll)
            self.reporter.tick()  # here, with every slot filled: what runs is what shows
            self._handle(epoll.poll(-1 if timeout is None else timeout), epoll, wake_r)
            if deadline is not None:
                self._enforce_deadlines()
            if self.foreign and time.monotonic() >= next_foreign:
                self._poll_foreign()
                next_foreign = time.monotonic() + FOREIGN_POLL_SECONDS
        self._give_back_ahead()
        self._finish_remaining()

    def _start_admitted(self, epoll: select.epoll) -> None:
        """Start what fits in the free slots: units claimed ahead at once, others once their
        claims commit (with the outcomes reaped so far)."""
        starts = self._admit()
        fresh = [unit for unit in starts if unit.id not in self._ahead_ids]
        if fresh:
            self._commit(fresh)
        claimed = set(map(id, fresh))  # the claims refused are no longer in the list
        for unit in starts:
            if unit.id in self._ahead_ids:
                self._ahead_seconds -= self._ahead_ids.pop(unit.id)
                self._ahead_replaced.pop(unit.id, None)
            elif id(unit) not in claimed:
                continue
            self._spawn(unit, epoll)

    def _claim_ahead(self) -> None:
        """Claim the next ready units before a slot frees, so that a slot is filled the
        moment its job ends, without waiting for a commit; and commit the outcomes reaped.

        Claimed ahead is :data:`CLAIM_AHEAD_SECONDS` of work per slot, each unit counted at
        its stage's mean duration so far (at most :data:`CLAIM_AHEAD_PER_SLOT` units a
        slot), topped up once half of it has started: for millisecond jobs one commit (one
        disk flush) per dozens of jobs instead of one per job, the flush made while jobs
        run. A unit of a stage none of whose units has ended yet, or whose units last longer
        than that, is not claimed ahead (nor anything after it in the ready order): there
        is nothing to gain, and another build sharing the store is never kept waiting long
        on work this one has not started.
        The outcomes reaped in between ride along with the claims, or commit on their own
        once the oldest is :data:`FINISH_COMMIT_DELAY` seconds old (a job that ended shows
        as succeeded within that time). A claim taken ahead is a claim: another build waits
        for the job; if this build stops before the job starts, :meth:`_give_back_ahead`
        restores the record the claim replaced.
        """
        if self._finishes and not self._finishes_since:
            self._finishes_since = time.monotonic()
        budget = CLAIM_AHEAD_SECONDS * self.max_jobs
        most = CLAIM_AHEAD_PER_SLOT * self.max_jobs
        units: list[Unit] = []
        estimates: dict[str, float] = {}
        if (not self.stopping and self._ahead_seconds <= budget / 2
                and len(self._ahead) <= most // 2):
            ready = self.ready
            work = self._ahead_seconds
            while ready and len(self._ahead) + len(units) < most:
                unit = ready[0][3]
                if unit.state is not UnitState.READY:
                    heapq.heappop(ready)
                    continue
                seconds = self._ahead_estimate(unit)
                if seconds is None or work + seconds > budget:
                    break
                heapq.heappop(ready)
                units.append(unit)
                estimates[unit.id] = seconds
                work += seconds
        if units:
            replaced: dict[str, bytes | None] = {}
            self._commit(units, replaced)
            for unit in units:  # the claims refused are no longer in the list
                self._ahead.append(unit)
                self._ahead_ids[unit.id] = estimates[unit.id]
                self._ahead_seconds += estimates[unit.id]
                # A unit this build held already (a retry) keeps its claim when it stops.
                if unit.id in replaced and not self.attempts.get(unit.id):
                    self._ahead_replaced[unit.id] = replaced[unit.id]
        elif self._finishes and (
                not self.running
                or time.monotonic() >= self._finishes_since + FINISH_COMMIT_DELAY):
            self._commit([])

    def _ahead_estimate(self, unit: Unit) -> float | None:
        """The seconds ``unit`` counts for when claimed ahead: its stage's mean duration so
        far; None (not to be claimed ahead) while no unit of its stage has ended, or when
        they last longer than :data:`CLAIM_AHEAD_SECONDS`."""
        seconds = self._stage_seconds.get(unit.label)
        return seconds if seconds is not None and seconds <= CLAIM_AHEAD_SECONDS else None

    def _commit(self, starts: list[Unit],
                replaced: dict[str, bytes | None] | None = None) -> None:
        if self._finishes:
            self._finishes_since = 0.0
        super()._commit(starts, replaced)

    def _give_back_ahead(self) -> None:
        """The build stops: the units claimed ahead that never started get back the records
        their claims replaced (see :meth:`Store.unclaim`); they end as not started."""
        self._ahead.clear()
        self._ahead_ids.clear()
        self._ahead_seconds = 0.0
        replaced, self._ahead_replaced = self._ahead_replaced, {}
        if replaced:
            self.store.unclaim(self.owner, replaced)

    def _handle(self, events: list[tuple[int, int]], epoll: select.epoll, wake_r: int) -> None:
        """Reap the processes whose pidfd became readable, take on what they left running,
        finish the units with nothing left; drain the signal wakeup pipe."""
        changed: dict[str, _Running] = {}
        for fd, _mask in events:
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                continue
            entry = self._pidfds.pop(fd, None)
            if entry is None:
                continue
            running, pid = entry
            epoll.unregister(fd)
            os.close(fd)
            self._watched.discard(pid)
            running.descendants.pop(fd, None)
            try:
                _pid, status, rusage = os.wait4(pid, 0)
            except ChildProcessError:  # reaped by someone else: its status is lost
                status, rusage = 0, None
            if pid == running.pid:
                running.rusage = rusage
                self._main_exited(running, status)
            changed[running.unit.id] = running
        if not changed:
            return
        if self.subreaper:
            self._adopt(epoll)
        for running in changed.values():
            if running.status is not None and not running.descendants:
                self._finish(running)

    def _main_exited(self, running: _Running, status: int) -> None:
        """The unit's main process ended: its descendants get until the deadline, or are
        killed now when it failed (nobody needs what they would write)."""
        running.status = status
        running.deadline = time.monotonic() + self.options.descendant_timeout
        if not self.subreaper:
            # Without a subreaper leftovers cannot be waited for; what is left in the job's
            # session must at least not write into out/ once the outputs are hashed.
            _signal_tree(running.pid, signal.SIGKILL)
        elif os.waitstatus_to_exitcode(status) != 0 and not running.kill_signal:
            self._signal_unit(running, signal.SIGKILL)

    def _adopt(self, epoll: select.epoll) -> None:
        """Watch every child of this process that belongs to a running unit and is not
        watched yet: a job's process re-parented here when its parent died. Attribution:
        the ``REPX_JOB_ID`` it inherited, else its session (see repx.engine.descendants);
        children of no unit (this process's own, in a library caller) are left alone."""
        assert self._children is not None
        for pid in self._children.pids():
            if pid in self._watched:
                continue
            job_id, session = job_of(pid)
            owner = self.running.get(job_id) if job_id else None
            if owner is None and session is not None:
                owner = self._sessions.get(session)
            if owner is None:
                continue
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            epoll.register(fd, select.EPOLLIN)
            self._pidfds[fd] = (owner, pid)
            self._watched.add(pid)
            owner.descendants[fd] = pid
            if owner.kill_signal:
                _signal_tree(pid, owner.kill_signal)

    def _signal_unit(self, running: _Running, sig: int) -> None:
        """``sig`` to the unit's process group and every descendant found (now and later)."""
        running.kill_signal = sig
        _signal_tree(running.pid, sig)
        for pid in list(running.descendants.values()):
            _signal_tree(pid, sig)

    def _next_deadline(self) -> float | None:
        """The earliest deadline of a unit whose descendants run on past its main process."""
        deadlines = [r.deadline for r in self.running.values()
                     if r.status is not None and r.descendants and not r.kill_signal]
        return min(deadlines) if deadlines else None

    def _enforce_deadlines(self) -> None:
        """Kill what units left running past their deadline; each such unit fails."""
        now = time.monotonic()
        for running in list(self.running.values()):
            if (running.status is None or not running.descendants or running.kill_signal
                    or now < running.deadline):
                continue
            pids = sorted(running.descendants.values())
            shown = ", ".join(describe(pid) for pid in pids[:3])
            more = f" and {len(pids) - 3} more" if len(pids) > 3 else ""
            timeout = self.options.descendant_timeout
            running.problem = (
                f"its main process exited, but {len(pids)} process"
                f"{'es' if len(pids) > 1 else ''} it started "
                f"{'were' if len(pids) > 1 else 'was'} still running {timeout:g} s later "
                f"and killed: {shown}{more}. A job ends when every process it starts has "
                f"ended: wait for them in the script (`wait`), or allow more time with "
                f"{DESCENDANT_TIMEOUT_ENV}=SECONDS"
            )
            self._signal_unit(running, signal.SIGKILL)

    def _admit(self) -> list[Unit]:
        """Units that fit now: the ones claimed ahead first, then ready ones, each in
        (run, topological) order."""
        starts: list[Unit] = []
        if self.stopping:
            return starts
        cpus = sum(r.unit.cpus for r in self.running.values())
        mem = sum(r.unit.mem for r in self.running.values())
        ahead = self._ahead
        ready = self.ready
        while (ahead or ready) and len(self.running) + len(starts) < self.max_jobs:
            unit = ahead[0] if ahead else ready[0][3]
            busy = self.running or starts
            if busy and (cpus + unit.cpus > self.cpu_budget
                         or (self.mem_budget and unit.mem
                             and mem + unit.mem > self.mem_budget)):
                break
            if unit.state is UnitState.READY and not self._take_slot(len(starts)):
                break
            if ahead:
                ahead.popleft()
            else:
                heapq.heappop(ready)
            if unit.state is not UnitState.READY:
                self._ahead_seconds -= self._ahead_ids.pop(unit.id, 0.0)
                continue
            cpus += unit.cpus
            mem += unit.mem
            starts.append(unit)
        return starts

    def _take_slot(self, starting: int) -> bool:
        """Whether one more unit may start beside the running ones and ``starting`` others,
        as far as make's jobserver is concerned: the first unit uses the slot make gave this
        recipe, every further one a token taken now (never waiting for one)."""
        server = self.jobserver
        if server is None or len(self.running) + starting < 1 + server.tokens:
            return True
        if server.try_acquire():
            return True
        self._wants_token = True
        return False

    def _return_tokens(self) -> None:
        """Give make back every token beyond one per running unit past the first (a unit
        ended, or a unit admitted did not start)."""
        server = self.jobserver
        if server is not None:
            server.release(server.tokens - max(0, len(self.running) - 1))

    def _watch_jobserver(self, epoll: select.epoll) -> None:
        """Wake the loop when a token may be free, only while a ready unit waits for one
        (the read end is level-triggered: watched otherwise, it would spin the loop)."""
        server = self.jobserver
        if server is None:
            return
        wanted = self._wants_token and bool(self.ready) and not self.stopping
        watched = server.read_fd in self._jobserver_watched
        if wanted and not watched:
            epoll.register(server.read_fd, select.EPOLLIN)
            self._jobserver_watched.add(server.read_fd)
        elif watched and not wanted:
            epoll.unregister(server.read_fd)
            self._jobserver_watched.discard(server.read_fd)
        self._wants_token = False

    def _spawn(self, unit: Unit, epoll: select.epoll) -> None:
        folders = self.folders
        job_dir = folders.job_dir(unit.id)
        out = folders.out_dir(unit.id)
        meta = folders.meta_dir(unit.id)
        try:
            if unit.maybe_orphan:
                kill_orphans(out, unit.id)
                self.runtime.cleanup(unit.id)
            prepare_job_folder(job_dir, out, meta)
            inputs = self._inputs_for(unit, meta)
            inputs_json = f"{meta}/{layout.INPUTS_JSON}"
            params_json = f"{meta}/{layout.PARAMS_JSON}"
            write_json_lines(inputs_json, inputs)
            write_json_lines(params_json, unit.job.params)
            stdout_log, stderr_log = folders.logs(unit.id)
            env = self._env.copy()
            env[JOB_ID_ENV] = unit.id
            argv = job_argv(unit.script, out, inputs_json, params_json)
            if self.runtime.isolating:
                argv, env = self.runtime.wrap(JobSandbox(
                    unit_id=unit.id, run=unit.job.run, argv=argv, env=env, out_dir=out,
                    read_only=self._visible_inputs(unit, inputs), writable=[out, meta]))
            pid = os.posix_spawn(
                argv[0],
                argv,
                env,
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
        running = _Running(unit, pid, pidfd, time.monotonic())
        self.running[unit.id] = running
        self._pidfds[pidfd] = (running, pid)
        self._watched.add(pid)
        self._sessions[pid] = running
        self.reporter.started(unit)

    def _visible_inputs(self, unit: Unit, inputs: dict[str, str]) -> list[str]:
        """The host paths an isolating runtime shows a unit read-only
        (:func:`repx.engine.runtimes.common.visible_inputs`)."""
        return visible_inputs(unit, inputs, self.folders)

    def _finish(self, running: _Running) -> None:
        """The unit's main process and every descendant are gone: record its outcome."""
        unit = running.unit
        if self.interrupted or running.problem:
            # The job was killed, maybe its container engine's client with it, which leaves
            # the container running; a job that ended by itself took its container along.
            self.runtime.cleanup(unit.id)
        del self.running[unit.id]
        self._return_tokens()
        if self._sessions.get(running.pid) is running:
            del self._sessions[running.pid]
        assert running.status is not None
        seconds = self.unit_seconds[unit.id] = time.monotonic() - running.started
        mean = self._stage_seconds.get(unit.label)
        self._stage_seconds[unit.label] = (seconds if mean is None
                                           else 0.9 * mean + 0.1 * seconds)
        code = os.waitstatus_to_exitcode(running.status)
        if self.interrupted:
            self._cancel(unit, code)
            return
        failure = None
        kind = None
        if code != 0:
            failure = f"exit code {code}" if code > 0 else \
                f"killed by signal {signal.Signals(-code).name}"
            kind = FailureKind.SCRIPT_FAILURE if code > 0 else FailureKind.SIGNAL
        elif running.problem:
            failure = running.problem
        attempt = self._note_attempt(running, code, kind)
        self.failure_kinds.pop(unit.id, None)  # an earlier attempt's is not this one's
        if kind is not None:
            self.failure_kinds[unit.id] = kind.value
            if not self.stopping and may_retry(
                    kind, attempt=attempt, retries=self._retries_allowed(unit),
                    retry_failed=self.options.retry_failed):
                self.reporter.message(f"{unit.label} {unit.id}: {failure} on attempt "
                                      f"{attempt}; running it again")
                self.unit_graph.push_ready(unit)
                return
            if attempt > 1:
                failure += f" (attempt {attempt})"
        self._complete(unit, code, failure)

    def _note_attempt(self, running: _Running, code: int,
                      kind: FailureKind | None) -> int:
        """Add the attempt that just ended to its unit's attempts; its number (1, 2…).
        A local attempt has no time limit; its memory is the unit's ``mem`` hint (what
        admission counted), MaxRSS and CPU time the main process's and the descendants it
        waited for (``wait4``)."""
        unit = running.unit
        attempts = self.attempts.setdefault(unit.id, [])
        usage = running.rusage
        attempts.append({
            "attempt": len(attempts) + 1,
            "slurm_id": "",
            "node": self.host,
            "state": "COMPLETED" if code == 0 and not running.problem else "FAILED",
            "exit_code": code,
            "failure": kind.value if kind is not None else "",
            "mem": unit.mem or None,
            "time": None,
            "max_rss": usage.ru_maxrss * 1024 if usage is not None else None,
            "elapsed": self.unit_seconds.get(unit.id),
            "cpu_time": usage.ru_utime + usage.ru_stime if usage is not None else None,
        })
        return len(attempts)

    def _kill_all(self, sig: int) -> None:
        """``sig`` to every running unit's processes (also from the signal handler)."""
        for running in list(self.running.values()):
            self._signal_unit(running, sig)

    def _stop_for_store_error(self, error: StoreError, epoll: select.epoll,
                              wake_r: int) -> None:
        """The store refused a write (a full disk): no outcome can be trusted to be recorded,
        so stop. Every running job is stopped and recorded cancelled, and every claim this
        build still holds is released as failed with the cause: none outlives the build as
        a stale RUNNING record. Best effort: the store may refuse these writes too (the disk
        reserve of :mod:`repx.store.space` is there so that it does not)."""
        cause = "no space left on device" if isinstance(error, StoreFullError) else error.message
        self.stop_reason = f"the build stopped: {cause} (job store at {self.store.root})"
        self.interrupted = self.interrupted or signal.SIGTERM
        with contextlib.suppress(StoreError):
            self._stop_all(epoll, wake_r)
        with contextlib.suppress(StoreError):
            self._give_back_ahead()
        with contextlib.suppress(StoreError):
            self.store.release_claims(self.owner, list(self.units), self.stop_reason)

    def _stop_all(self, epoll: select.epoll, wake_r: int) -> None:
        """Interrupted: SIGTERM every running process group, SIGKILL after the grace time,
        and record each unit as cancelled."""
        self.stopping = True
        if self.running:
            name = ("the job store cannot be written" if self.stop_reason
                    else signal.Signals(self.interrupted).name)
            self.reporter.message(f"{name}: stopping {len(self.running)} running jobs")
        if self.subreaper:
            self._adopt(epoll)  # leftovers re-parented so far are stopped with their job
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
