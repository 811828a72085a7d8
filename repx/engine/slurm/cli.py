"""The SLURM commands repx calls (sbatch, squeue, sacct, scancel, scontrol), in one place.

Every call goes through :meth:`SlurmCli._run`, which turns a missing tool, a time-out or a
non-zero exit into one :class:`SlurmError` that keeps SLURM's own words. Ids are batched
(200 per call, arrays compressed) so that watching or cancelling 10 000 tasks is a handful
of calls.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from repx.engine.slurm.arrays import compress_task_ids, task_of
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
        self._count_lock = threading.Lock()
        self._limits: dict[str | None, SiteLimits] = {}
        self._config: dict[str, str] | None = None
        self._prefetch: threading.Thread | None = None

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
        """Submit ``script`` (a file); the job id.

        Always ``--no-requeue`` (on the command line, so no ``sbatch_opts`` directive undoes
        it): repx retries failed jobs itself (:mod:`repx.engine.failures`), and SLURM
        requeueing a job under the same id would make the two fight over one attempt."""
        with self._count_lock:  # sbatch may be called from several threads at once
            self.sbatch_calls += 1
        out = self._run(["sbatch", "--parsable", "--no-requeue", *args, script])
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

    def task_accounts(self, task_ids: Iterable[str]) -> dict[str, TaskAccount]:
        """``{task id: TaskAccount}`` from sacct's job *and* step records of ``task_ids``
        (one call per 200 jobs; tasks sacct does not know yet are left out).

        Steps matter: in cgroup mode a job whose script outlived the killed process can
        end FAILED while only its ``.batch`` step says OUT_OF_MEMORY, and MaxRSS is
        measured per step only."""
        wanted = set(task_ids)
        # The tasks themselves, not their arrays: sacct -j of a 5 000-task array takes
        # seconds, of the 200 tasks asked about a fraction of one.
        ids = sorted(wanted)
        result: dict[str, TaskAccount] = {}
        for start in range(0, len(ids), 200):
            try:
                out = self._run(["sacct", "-n", "-P", "-j", ",".join(ids[start:start + 200]),
                                 "-o", ",".join(_ACCOUNT_FIELDS)])
            except SlurmError:
                continue
            for line in out.splitlines():
                parts = line.strip().split("|")
                if len(parts) < len(_ACCOUNT_FIELDS):
                    continue
                task, _, step = parts[0].partition(".")
                if task not in wanted:
                    continue
                account = result.get(task)
                if not step:
                    if account is None:
                        account = result[task] = TaskAccount(task)
                    account.fill(parts)
                else:
                    if account is None:
                        account = result[task] = TaskAccount(task)
                    account.add_step(step, parts)
        return {t: a for t, a in result.items() if a.state}

    def nodes(self, task_ids: Iterable[str]) -> dict[str, str]:
        """``{task id: node}`` for the tasks squeue still knows that ran on a node (what a
        task's account says when sacct has not recorded it yet)."""
        wanted = set(task_ids)
        # Whole jobs, filtered here: squeue reads ``123_[3]`` as the wrong task.
        ids = sorted({t.split("_")[0] for t in wanted})
        result: dict[str, str] = {}
        for start in range(0, len(ids), 200):
            try:
                out = self._run(["squeue", "-h", "-r", "-t", "all", "-j",
                                 ",".join(ids[start:start + 200]), "-o", "%i|%N"])
            except SlurmError:
                continue
            for line in out.splitlines():
                task, _, node = line.strip().partition("|")
                if task in wanted and node and not node.startswith("("):
                    result[task] = node
        return result

    def partition_limits(self, partition: str | None) -> tuple[int | None, int | None]:
        """(memory in bytes, time in seconds) a job of ``partition`` (None: the default
        one) may ask for at most: MaxMemPerNode and the largest RealMemory of its nodes,
        and MaxTime; None where SLURM sets no limit or cannot be asked. The caps of
        retries' escalated requests."""
        try:
            out = self._run(["scontrol", "show", "partition", "-o",
                             *([partition] if partition else [])])
        except SlurmError:
            return None, None
        fields: dict[str, str] = {}
        for line in out.splitlines():
            items = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if partition is None and items.get("Default") != "YES":
                continue
            fields = items
            break
        if not fields:
            return None, None
        mem: int | None = None
        with contextlib.suppress(ValueError):
            mem = parse_sacct_mem(fields.get("MaxMemPerNode", ""))
        name = fields.get("PartitionName", partition or "")
        with contextlib.suppress(SlurmError):
            node_mem = [int(m) * 2**20 for m in self._run(
                ["sinfo", "-h", "-N", "-p", name, "-o", "%m"]).split() if m.isdigit()]
            if node_mem:
                mem = min(mem, max(node_mem)) if mem is not None else max(node_mem)
        return mem, parse_sacct_duration(fields.get("MaxTime", ""))

    def max_array_size(self) -> int:
        """SLURM's MaxArraySize (1001, SLURM's default, when it cannot be read)."""
        return self.site_limits().max_array_size

    def site_limits(self, account: str | None = None) -> SiteLimits:
        """The limits a submission charged to ``account`` (None: the user's default
        account) must stay under: slurmctld's MaxArraySize and MaxJobCount (``scontrol
        show config``), and the MaxSubmitJobs / MaxJobs of this user's association with
        that account (then its QOS's per-user limits; the tighter wins). Asked once per
        account and SlurmCli: a build reads them once."""
        if self._prefetch is not None:
            self._prefetch.join()
            self._prefetch = None
        if account not in self._limits:
            self._limits[account] = self._read_limits(account)
        return self._limits[account]

    def prefetch_limits(self) -> None:
        """Start reading the default account's limits in the background (three SLURM
        commands, at once: :meth:`_read_limits`), so that a build's first submission finds
        them read while it was expanding its units."""
        if self._prefetch is None and None not in self._limits:
            def read() -> None:
                self._limits[None] = self._read_limits(None)

            self._prefetch = threading.Thread(target=read, name="repx-slurm-limits",
                                              daemon=True)
            self._prefetch.start()

    def _read_limits(self, account: str | None) -> SiteLimits:
        """The limits of :meth:`site_limits`, from three SLURM commands run at once: each
        sacctmgr call is a round trip to slurmdbd and its database (~0.2 s on the test
        cluster), so one after another they were most of a 10 000-job submission."""
        limits = SiteLimits()
        have_sacctmgr = shutil.which("sacctmgr") is not None
        user = current_user()
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="repx-slurm-limits") as pool:
            config_text = (pool.submit(self._answer, ["scontrol", "show", "config"])
                           if self._config is None else None)
            # The user's associations with their default account on every row, and every
            # QOS's per-user limits (the few the associations name are picked below).
            assoc_text = pool.submit(self._answer, [
                "sacctmgr", "-n", "-P", "show", "user", user, "withassoc",
                "format=DefaultAccount,Account,MaxSubmitJobs,MaxJobs,QOS"]) \
                if have_sacctmgr else None
            qos_text = pool.submit(self._answer, [
                "sacctmgr", "-n", "-P", "show", "qos",
                "format=Name,MaxSubmitJobsPerUser,MaxJobsPerUser"]) if have_sacctmgr else None
        if config_text is not None:
            self._config = {}
            for line in (config_text.result() or "").splitlines():
                key, _, value = line.partition("=")
                self._config[key.strip()] = value.strip()
        config = self._config or {}
        with contextlib.suppress(ValueError, KeyError):
            limits.max_array_size = int(config["MaxArraySize"])
        with contextlib.suppress(ValueError, KeyError):
            limits.max_job_count = int(config["MaxJobCount"])
        if assoc_text is None or qos_text is None:
            return limits
        assoc = assoc_text.result()
        if assoc is None:
            return limits
        rows = [line.strip().split("|") for line in assoc.splitlines()]
        rows = [row for row in rows if len(row) >= 5]
        if account is None:
            account = (rows[0][0] or None) if rows else None
        limits.account = account
        # The association of that account (one per partition: the tightest applies); all
        # of the user's when the account is not known.
        mine = [row for row in rows if row[1] == account] or rows
        qos_names: set[str] = set()
        for row in mine:
            limits.max_submit_jobs = _tighter(limits.max_submit_jobs, row[2])
            limits.max_jobs = _tighter(limits.max_jobs, row[3])
            qos_names.update(q for q in row[4].split(",") if q)
        if qos_names:
            for line in (qos_text.result() or "").splitlines():
                parts = line.strip().split("|")
                if len(parts) >= 3 and parts[0] in qos_names:
                    limits.max_submit_jobs = _tighter(limits.max_submit_jobs, parts[1])
                    limits.max_jobs = _tighter(limits.max_jobs, parts[2])
        return limits

    def _answer(self, argv: list[str]) -> str | None:
        """What a limits query printed; None when SLURM could not answer it (the limit is
        then unknown, and a submission finds it out from sbatch's refusal)."""
        try:
            return self._run(argv, timeout=30)
        except SlurmError:
            return None

    def user_jobs(self, account: str | None = None) -> int:
        """How many jobs of this user (charged to ``account``, when given) slurmctld holds
        pending or running, array tasks counted one by one as MaxSubmitJobs counts them."""
        args = ["squeue", "-h", "-r", "-u", current_user(), "-o", "%i",
                "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED,REQUEUED"]
        if account:
            args += ["-A", account]
        return sum(1 for line in self._run(args).splitlines() if line.strip())


@dataclass
class SiteLimits:
    """What the site lets one user submit (None: no limit set)."""

    #: Largest array index + 1 (SLURM's default 1001: indices 0-1000).
    max_array_size: int = 1001
    #: Jobs slurmctld holds at once, all users (finished ones until MinJobAge).
    max_job_count: int | None = None
    #: Jobs (array tasks one by one) this user may have pending or running.
    max_submit_jobs: int | None = None
    #: Jobs this user may have running (the rest pend; nothing to do at submit time).
    max_jobs: int | None = None
    #: The account whose association the user limits are (None: not known).
    account: str | None = None

    def submit_limit(self) -> tuple[int, str] | None:
        """(how many jobs may be queued at once, the limit's name), the tighter of
        MaxSubmitJobs and MaxJobCount; None without either."""
        found = [(n, name) for n, name in ((self.max_submit_jobs, "MaxSubmitJobs"),
                                           (self.max_job_count, "MaxJobCount"))
                 if n is not None]
        return min(found) if found else None


def _tighter(current: int | None, text: str) -> int | None:
    """The smaller of ``current`` and the limit in ``text`` (empty: no limit)."""
    try:
        value = int(text.strip())
    except ValueError:
        return current
    return value if current is None else min(current, value)


def current_user() -> str:
    """The login name SLURM knows this process by (``$USER`` may be unset in batch jobs)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or str(os.getuid())


def task_states(cli: SlurmCli, tasks: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``{task id: (state, reason)}`` for ``tasks`` (``{task id: its unit's exit-code
    file}``): squeue for the tasks it still knows, then one sacct call for those it has
    forgotten, then, on a cluster without accounting (no slurmdbd), the exit code the task's
    wrapper wrote (COMPLETED or FAILED). Tasks none of them knows are left out; other tasks
    of the same arrays may be in the answer too.

    A build's watcher and adoption and ``repx status`` all ask SLURM through this one
    function, so they agree on what a task's end was.

    The jobs of a packed task (``123_4#2``) are answered one by one
    (:func:`packed_job_state`): SLURM knows only the task, its jobs' exit codes say which of
    them ended and how.
    """
    packed = {job: task_of(job) for job in tasks if task_of(job) != job}
    asked = {t: path for t, path in tasks.items() if t not in packed}
    asked.update((task, "") for task in packed.values() if task not in asked)
    states = cli.states(asked)
    lost = [t for t in asked if t not in states]
    if lost:
        accounted = cli.accounting(lost)
        for task in lost:
            if task in accounted:
                states[task] = (accounted[task][0], "")
                continue
            code = read_exit_code(asked[task]) if asked[task] else None
            if code is not None:
                states[task] = ("COMPLETED" if code == 0 else "FAILED", "")
    for job, task in packed.items():
        state = packed_job_state(states.get(task), read_exit_code(tasks[job]))
        if state is not None:
            states[job] = state
    return states


def packed_job_state(task_state: tuple[str, str] | None,
                     code: int | None) -> tuple[str, str] | None:
    """The (state, reason) of one job of a packed task, from the task's state and the exit
    code the job's wrapper wrote (None: not yet, or never). A job with an exit code has
    ended however its task goes on (COMPLETED or FAILED by its code); one without shares its
    task's state: waiting or running with it, or killed with it (TIMEOUT, OUT_OF_MEMORY,
    NODE_FAIL...). A task that ended well while one of its jobs wrote no exit code skipped
    that job because one of its upstream jobs failed (:func:`..scheduler.wrapper_script`):
    reported as SLURM reports a job whose dependency failed."""
    if code is not None:
        return ("COMPLETED" if code == 0 else "FAILED", "")
    if task_state is None:
        return None
    if task_state[0] == "COMPLETED":
        return ("CANCELLED", "DependencyNeverSatisfied (an upstream job failed)")
    return task_state


#: The sacct fields :meth:`SlurmCli.task_accounts` reads, in this order.
_ACCOUNT_FIELDS = ("JobID", "State", "ExitCode", "NodeList", "ReqMem", "Timelimit",
                   "Elapsed", "TotalCPU", "MaxRSS", "Reason")


@dataclass
class TaskAccount:
    """What sacct says about one ended task: its job record, plus what its steps add."""

    task: str
    #: The job record's state word (``CANCELLED by 0`` gives CANCELLED and uid 0).
    state: str = ""
    cancelled_by: int | None = None
    #: ``ExitCode`` of the job record: the script's code and the signal that ended it.
    exit_code: int | None = None
    exit_signal: int | None = None
    reason: str = ""
    node: str = ""
    req_mem: int | None = None
    time_limit: int | None = None
    elapsed: float | None = None
    cpu_time: float | None = None
    #: The largest MaxRSS of its steps (bytes).
    max_rss: int | None = None
    #: ``{step name: state word}`` (``batch``, ``extern``, ``0``…).
    step_states: dict[str, str] = field(default_factory=dict)

    def fill(self, parts: list[str]) -> None:
        """Take the job record's fields (a line of :data:`_ACCOUNT_FIELDS`)."""
        state_words = parts[1].split()
        self.state = state_words[0] if state_words else ""
        if len(state_words) == 3 and state_words[1] == "by" and state_words[2].isdigit():
            self.cancelled_by = int(state_words[2])
        self.exit_code, self.exit_signal = _exit_pair(parts[2])
        node = parts[3].strip()
        self.node = "" if not node or node.startswith("None") else node
        with contextlib.suppress(ValueError):
            self.req_mem = parse_sacct_mem(parts[4])
        self.time_limit = parse_sacct_duration(parts[5])
        self.elapsed = parse_sacct_duration(parts[6], fractions=True)
        self.cpu_time = parse_sacct_duration(parts[7], fractions=True)
        self._rss(parts[8])
        self.reason = "" if parts[9] in ("None", "") else parts[9]

    def add_step(self, step: str, parts: list[str]) -> None:
        """Take what a step record adds: its state and its MaxRSS."""
        words = parts[1].split()
        self.step_states[step] = words[0] if words else ""
        self._rss(parts[8])
        if not self.node and parts[3].strip() and not parts[3].startswith("None"):
            self.node = parts[3].strip()

    def _rss(self, text: str) -> None:
        with contextlib.suppress(ValueError):
            rss = parse_sacct_mem(text)
            if rss is not None and (self.max_rss is None or rss > self.max_rss):
                self.max_rss = rss


_MEM_SUFFIX = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


def parse_sacct_mem(text: str) -> int | None:
    """Bytes of a SLURM memory figure (``1076K``, ``64M``, ``64Mn``, ``2G``; a plain number is
    MiB as in ``--mem``); None for an empty or ``UNLIMITED`` one. ValueError otherwise."""
    text = text.strip()
    if not text or text.upper() == "UNLIMITED" or text == "0":
        return None
    if text[-1] in "nc":  # per node / per cpu (older SLURMs)
        text = text[:-1]
    unit = text[-1].upper()
    if unit in _MEM_SUFFIX:
        return int(float(text[:-1]) * _MEM_SUFFIX[unit])
    return int(float(text) * 2**20)


def parse_sacct_duration(text: str, *, fractions: bool = False) -> float | None:
    """Seconds of a SLURM duration (``D-HH:MM:SS``, ``HH:MM:SS``, ``MM:SS.mmm``; a time
    limit's bare number is minutes); None for an empty, ``UNLIMITED`` or
    ``Partition_Limit`` one or one that is not a duration."""
    text = text.strip()
    if not text:
        return None
    days = 0
    if "-" in text:
        head, _, text = text.partition("-")
        if not head.isdigit():
            return None
        days = int(head)
    pieces = text.split(":")
    try:
        numbers = [float(p) for p in pieces]
    except ValueError:
        return None
    if len(pieces) == 1 and not fractions:
        seconds = numbers[0] * 60  # a limit in minutes
    else:
        seconds = 0.0
        for number in numbers:
            seconds = seconds * 60 + number
    total = days * 86400 + seconds
    return total if fractions else int(total)


def _exit_pair(text: str) -> tuple[int | None, int | None]:
    code, _, sig = text.partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, None


def read_exit_code(path: str) -> int | None:
    """The exit code a task's wrapper wrote beside its logs; None when there is none yet."""
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None
