"""The test suite's real multi-node SLURM cluster, as seen from pytest.

``tests/slurm/cluster.sh`` installs and starts the cluster (``make test`` runs it through
``make slurm-up``): compute nodes ``node1``..``nodeN`` (3 by default) on this one machine,
each slurmd in a mount namespace of its own where ``/scratch/repx`` (the jobs' ``$TMPDIR``)
is that node's private scratch. This module is the test side:

* :func:`require_slurm` fails, never skips, when the cluster cannot run jobs: a suite that
  turned green by skipping its SLURM tests would hide exactly the breakage it exists to find;
* :func:`slurm_cluster_fixture` makes a session fixture that first (re)starts the cluster
  through the script if it is down, so ``pytest tests/test_x.py`` works on its own too;
* :class:`Slurm` holds the few CLI helpers every SLURM test needs, written once with the
  cluster's quirks in mind (finished jobs vanish from plain ``squeue``; ``sacct`` lags);
* :func:`node_names`, :func:`node_scratch`, :func:`node_down`, :func:`node_up`,
  :func:`restart_slurmctld`, :func:`wait_nodes_usable` and :func:`nodes_restored` let a test
  crash a node or restart slurmctld and put the shared cluster back afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Literal

import pytest

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"
LOG_DIR = Path("/var/log/repx-slurm")
#: ``<NODES_DIR>/<node>/scratch`` is a node's scratch as the host (and a test) sees it.
NODES_DIR = Path("/var/lib/repx-slurm/nodes")
#: Where a job sees its own node's scratch (also its ``$TMPDIR``); on the host it is empty.
SCRATCH_MOUNT = "/scratch/repx"

#: States after which a job never changes again (``CANCELLED by 0`` is matched by its prefix).
FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "BOOT_FAIL", "DEADLINE", "PREEMPTED",
})
#: Node states in which the node accepts and runs jobs.
USABLE_NODE_STATES = frozenset({"idle", "mixed", "allocated", "completing"})
#: sbatch options that put a test's job ahead of the queue (root only; see Slurm.sbatch).
QUEUE_AHEAD = ("--nice=-10000",) if os.geteuid() == 0 else ()
SACCT_FIELDS = ("jobid", "jobname", "state", "exitcode", "start", "end", "nodelist")

Proc = subprocess.CompletedProcess[str]


def cli(*args: str, timeout: float = 30, cwd: Path | None = None) -> Proc:
    """Run a SLURM command, capturing its text output; the caller checks returncode."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _said(proc: Proc) -> str:
    """The last line a failed command printed, for a one-line reason.

    Lines starting with ``*`` are skipped: ``scontrol ping`` frames its verdict in them.
    """
    lines = [line for line in (proc.stderr + proc.stdout).splitlines()
             if line.strip() and not line.startswith("*")]
    return lines[-1].strip() if lines else f"exit {proc.returncode}"


def slurm_problem() -> str | None:
    """Why the cluster cannot run and account for jobs right now, or None if it can.

    ``scontrol ping`` goes first because it answers at once; ``sinfo``, ``squeue`` and
    ``sbatch`` retry for about ten seconds when slurmctld is down.
    """
    for tool in ("sbatch", "squeue", "sinfo", "sacct", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        ping = cli("scontrol", "ping", timeout=15)
        if ping.returncode != 0 or "UP" not in ping.stdout:
            return f"slurmctld does not answer ({_said(ping)})"
        nodes = cli("sinfo", "-h", "-N", "-o", "%T")
        if nodes.returncode != 0:
            return f"sinfo failed ({_said(nodes)})"
        states = set(nodes.stdout.split())
        if not states & USABLE_NODE_STATES:
            return f"no usable node (node states: {sorted(states) or 'none'})"
        acct = cli("sacct", "-n", "-X", "-S", "now-1minutes", "-o", "jobid")
        if acct.returncode != 0:
            return f"sacct does not answer ({_said(acct)})"
    except subprocess.TimeoutExpired as exc:
        return f"{exc.cmd[0]} timed out after {exc.timeout:.0f}s"
    return None


def require_slurm() -> None:
    """Fail the calling test when the cluster cannot run jobs, saying why and what to run."""
    problem = slurm_problem()
    if problem:
        pytest.fail(
            f"SLURM test cluster unavailable: {problem}. Start it as root with "
            f"`make slurm-up` ({CLUSTER_SCRIPT.relative_to(REPO)} start); logs in {LOG_DIR}",
            pytrace=False,
        )


def start_cluster() -> None:
    """Run ``cluster.sh start`` (idempotent), failing the test with its own error message."""
    if os.geteuid() != 0:
        pytest.fail(
            f"SLURM test cluster is down ({slurm_problem()}) and only root can start it: "
            f"run `sudo {CLUSTER_SCRIPT} start`",
            pytrace=False,
        )
    proc = cli("bash", str(CLUSTER_SCRIPT), "start", timeout=900)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        pytest.fail(f"{CLUSTER_SCRIPT} start failed:\n{tail}", pytrace=False)


def _cluster_script(*args: str, timeout: float = 120) -> None:
    """Run ``cluster.sh ARGS`` as root; a failure raises with the script's own last lines."""
    if os.geteuid() != 0:
        raise AssertionError(f"`{CLUSTER_SCRIPT.name} {' '.join(args)}` needs root")
    proc = cli("bash", str(CLUSTER_SCRIPT), *args, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise AssertionError(f"{CLUSTER_SCRIPT.name} {' '.join(args)} failed:\n{tail}")


def node_names() -> list[str]:
    """The compute nodes, as slurmctld knows them (``node1``, ``node2``, ...)."""
    proc = cli("sinfo", "-h", "-N", "-o", "%N")
    if proc.returncode != 0:
        raise AssertionError(f"sinfo failed: {_said(proc)}")
    return sorted(set(proc.stdout.split()), key=lambda name: (len(name), name))


def node_scratch(node: str) -> Path:
    """Where the host sees ``node``'s scratch, which that node's jobs see at SCRATCH_MOUNT."""
    return NODES_DIR / node / "scratch"


def node_state(node: str) -> str:
    """``node``'s state without sinfo's flag suffixes (``idle*`` = not responding -> idle)."""
    state = cli("sinfo", "-h", "-N", "-n", node, "-o", "%T").stdout.strip()
    return state.rstrip("*~#!%$@^-+")


def wait_nodes_usable(nodes: list[str] | None = None, timeout: float = 60) -> None:
    """Wait until every node (default: all) accepts jobs; raise naming those that do not."""
    wanted = nodes or node_names()
    end = time.monotonic() + timeout
    while True:
        states = {node: node_state(node) for node in wanted}
        if all(state in USABLE_NODE_STATES for state in states.values()):
            return
        if time.monotonic() > end:
            raise AssertionError(f"nodes not usable after {timeout:.0f}s: {states}")
        time.sleep(0.2)


def node_down(node: str, *, mark: bool = True) -> None:
    """Crash ``node``: SIGKILL its slurmd and every process of its jobs.

    With ``mark`` the node is then set DOWN at once, so its jobs end NODE_FAIL (or are
    requeued, unless submitted with ``--no-requeue``) within about a second; without it
    slurmctld notices by itself after ``SlurmdTimeout`` (about 45 s). The cluster is shared:
    every job on the node dies, not only the test's. Undo with :func:`node_up`.
    """
    _cluster_script("node-down", node, *(() if mark else ("--no-mark",)))


def node_up(node: str) -> None:
    """Start ``node``'s slurmd again and wait until the node accepts jobs (about 1 s)."""
    _cluster_script("node-up", node)


def restart_slurmctld() -> None:
    """Restart slurmctld and wait until every node is usable; running jobs go on meanwhile."""
    _cluster_script("restart-ctld")


@contextmanager
def nodes_restored() -> Iterator[None]:
    """Bring back every node that is not usable when the block ends, however it ends.

    A test that crashes a node or restarts slurmctld wraps that in this, so that the shared
    cluster is whole again for the next test (and for the other engineers' runs).
    """
    try:
        yield
    finally:
        if slurm_problem() is not None:
            start_cluster()
        for node in node_names():
            if node_state(node) not in USABLE_NODE_STATES:
                node_up(node)


class Slurm:
    """Thin wrappers over the SLURM CLI with the cluster's timing quirks built in."""

    def sbatch(self, *args: str, cwd: Path) -> str:
        """Submit and return the job id. ``cwd`` is where relative ``-o`` paths land.

        The job goes ahead of every job already queued (``--nice`` below 0, which only root
        may give): a test of SLURM's behaviour must not wait behind another run's 10 000-job
        sweep on the shared cluster. (-10000 keeps the priority below 2^32, where it wraps.)
        """
        proc = cli("sbatch", "--parsable", *QUEUE_AHEAD, *args, cwd=cwd)
        if proc.returncode != 0:
            raise AssertionError(f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}")
        # --parsable prints "ID" or, on a federated cluster, "ID;CLUSTER".
        return proc.stdout.strip().split(";")[0]

    def squeue(self, job_id: str) -> dict[str, str]:
        """``{job or array task id: state}`` from slurmctld's memory.

        ``-t all`` keeps finished jobs (for ``MinJobAge``, 10 min here); without it squeue
        prints nothing for them. A not-yet-started part of an array shows as ``ID_[5-19]``.
        """
        proc = cli("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%i %T")
        return dict(line.split(maxsplit=1) for line in proc.stdout.splitlines() if line.strip())

    def squeue_reason(self, job_id: str) -> str:
        """``STATE REASON`` of a job, e.g. ``PENDING Dependency``."""
        return cli("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T %r").stdout.strip()

    def wait_final(self, job_id: str, *, tasks: int = 1, timeout: float = 60) -> dict[str, str]:
        """Wait until ``tasks`` jobs or array tasks under ``job_id`` are all final.

        Polls squeue, which knows first; sacct learns asynchronously and may lag.
        """
        end = time.monotonic() + timeout
        while True:
            states = self.squeue(job_id)
            final = {k: v for k, v in states.items() if v.split()[0] in FINAL_STATES}
            if len(final) >= tasks and len(final) == len(states):
                return states
            if time.monotonic() > end:
                raise AssertionError(f"job {job_id} not final after {timeout:.0f}s: {states}")
            time.sleep(0.1)

    def sacct(self, job_id: str, *, rows: int = 1, name: str | None = None,
              timeout: float = 30) -> list[dict[str, str]]:
        """One dict per job or array task (``sacct -X``) once ``rows`` of them are final.

        slurmdbd learns about jobs asynchronously and in pieces: state, exit code and times
        arrive within about half a second of the job's end, but until slurmctld's next
        periodic push (every ~5 s) a short job's record carries the placeholder name
        ``allocation`` and may say PENDING while it runs. So: poll, match rows by job id, and
        pass ``name`` to also wait for the full record.
        """
        end = time.monotonic() + timeout
        while True:
            proc = cli("sacct", "-X", "-n", "-P", "-j", job_id, "-o", ",".join(SACCT_FIELDS))
            records = [dict(zip(SACCT_FIELDS, line.split("|"), strict=True))
                       for line in proc.stdout.splitlines() if line]
            done = [r for r in records if r["state"].split()[0] in FINAL_STATES
                    and (name is None or r["jobname"] == name)]
            if len(done) >= rows and len(done) == len(records):
                return records
            if time.monotonic() > end:
                raise AssertionError(f"sacct: job {job_id} not final after {timeout:.0f}s: "
                                     f"{records} {proc.stderr.strip()}")
            time.sleep(0.2)

    def wait_running(self, job_id: str, timeout: float = 30) -> None:
        """Wait until the job runs (tests that cancel or time out need it started)."""
        end = time.monotonic() + timeout
        while self.squeue(job_id).get(job_id) != "RUNNING":
            if time.monotonic() > end:
                raise AssertionError(f"job {job_id} not RUNNING after {timeout:.0f}s: "
                                     f"{self.squeue(job_id)}")
            time.sleep(0.1)


def accounted_jobs(job_ids: set[str], timeout: float = 60) -> dict[str, str]:
    """``{job or array task: state word}`` sacct (``-X``) has for ``job_ids``, once final.

    slurmdbd learns of jobs asynchronously: right after a cancel or an end it may list a job
    not at all, or still as PENDING. So poll until every job has a row and every row is
    final.
    """
    end = time.monotonic() + timeout
    while True:
        out = cli("sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j",
                  ",".join(sorted(job_ids))).stdout
        states = {job: state.split()[0] for job, state in
                  (line.split("|") for line in out.splitlines() if line.strip())}
        if ({job.split("_")[0] for job in states} >= job_ids
                and all(state in FINAL_STATES for state in states.values())):
            return states
        if time.monotonic() > end:
            raise AssertionError(f"sacct does not account for {sorted(job_ids)}: {out!r}")
        time.sleep(0.5)


def sacct_time(value: str) -> datetime:
    """sacct's ``Start``/``End`` (``2026-11-22T00:26:25``, local time, whole seconds)."""
    return datetime.fromisoformat(value)


def slurm_cluster_fixture(
    name: str = "slurm", scope: Literal["session", "package", "module"] = "session",
) -> Callable[..., Iterator[Slurm]]:
    """Make a fixture ``name`` that yields a :class:`Slurm` once the cluster is usable.

    A test module opts in with ``slurm = slurm_cluster_fixture()``. A factory in a plain
    module (not conftest.py) means only the modules that use SLURM pay for the probe, and a
    module whose first test finds the cluster down starts it instead of failing.
    """

    @pytest.fixture(name=name, scope=scope)
    def slurm_cluster() -> Iterator[Slurm]:
        if slurm_problem() is not None:
            start_cluster()
        require_slurm()
        yield Slurm()

    return slurm_cluster
