"""The test cluster from tests/slurm/cluster.sh behaves like a production SLURM cluster.

These tests pin down the behaviour the SLURM executor will rely on (sacct verdicts, arrays,
dependency ordering, time limits, cancellation), so that a broken cluster shows up here, with
a clear cause, rather than as a mysterious executor failure. Every job gets a unique name and
writes into the test's tmp_path: the cluster and its accounting history are shared.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm_cluster import Slurm, cli, sacct_time, slurm_cluster_fixture

pytestmark = pytest.mark.slurm

slurm = slurm_cluster_fixture()


def unique(label: str) -> str:
    """A job name no other test (or earlier run) uses, to filter squeue/sacct by."""
    return f"repx-{label}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def timed_out_job(slurm: Slurm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running job whose time limit is already over, submitted when the module starts.

    Time limits are whole minutes and slurmctld checks them in a sweep every 30 s, so
    ``--time=1`` takes 75-90 s to end in TIMEOUT. Lowering a running job's limit to 0 minutes
    (its owner may lower it, only an admin may raise it) makes the very next sweep kill it
    through the same code path, within 30 s; and the wait overlaps with the other tests
    because this fixture is set up first.
    """
    cwd = tmp_path_factory.mktemp("timeout")
    job = slurm.sbatch("-J", unique("timeout"), "--time=1", "-o", "out.txt",
                       "--wrap", "sleep 300", cwd=cwd)
    slurm.wait_running(job)
    proc = cli("scontrol", "update", f"JobId={job}", "TimeLimit=0")
    assert proc.returncode == 0, proc.stderr
    yield job
    cli("scancel", job)


@pytest.fixture(autouse=True, scope="module")
def _start_timeout_early(timed_out_job: str) -> None:
    """Set up ``timed_out_job`` before the first test, so its 30-s sweep runs meanwhile."""


def test_node_advertises_many_cpus(slurm: Slurm) -> None:
    """Tiny jobs start about one per free slot and scheduler pass: the node needs many slots."""
    out = cli("sinfo", "-h", "-N", "-o", "%c %T")
    cpus, state = out.stdout.split()[:2]
    assert int(cpus) >= 16, out.stdout
    # sinfo marks transient flags with a suffix ("mixed-" while backfill plans ahead).
    assert state.rstrip("*~#!%$@^-+") in {"idle", "mixed", "allocated", "completing"}


def test_job_completes_in_sacct(slurm: Slurm, tmp_path: Path) -> None:
    name = unique("ok")
    job = slurm.sbatch("-J", name, "-o", "out.txt", "--wrap", "echo hello from $SLURM_JOB_ID",
                       cwd=tmp_path)
    assert slurm.wait_final(job) == {job: "COMPLETED"}
    [record] = slurm.sacct(job, name=name)
    assert record["jobid"] == job
    assert (record["state"], record["exitcode"]) == ("COMPLETED", "0:0")
    assert (tmp_path / "out.txt").read_text() == f"hello from {job}\n"


def test_failed_job_has_exit_code_in_sacct(slurm: Slurm, tmp_path: Path) -> None:
    """sacct's ExitCode is ``code:signal``: the executor reads the job's own exit status here."""
    job = slurm.sbatch("-J", unique("fail"), "-o", "out.txt", "--wrap", "exit 3", cwd=tmp_path)
    slurm.wait_final(job)
    [record] = slurm.sacct(job)
    assert (record["state"], record["exitcode"]) == ("FAILED", "3:0")


def test_array_of_20_tasks_completes(slurm: Slurm, tmp_path: Path) -> None:
    job = slurm.sbatch("-J", unique("array"), "--array=0-19", "-o", "arr-%A_%a.out",
                       "--wrap", "echo $SLURM_ARRAY_TASK_ID", cwd=tmp_path)
    states = slurm.wait_final(job, tasks=20)
    assert states == {f"{job}_{i}": "COMPLETED" for i in range(20)}
    records = slurm.sacct(job, rows=20)
    assert {r["jobid"] for r in records} == {f"{job}_{i}" for i in range(20)}
    assert {(r["state"], r["exitcode"]) for r in records} == {("COMPLETED", "0:0")}
    for i in range(20):
        assert (tmp_path / f"arr-{job}_{i}.out").read_text() == f"{i}\n"


def test_afterok_dependant_starts_after_its_parent_ends(slurm: Slurm, tmp_path: Path) -> None:
    parent = slurm.sbatch("-J", unique("parent"), "-o", "/dev/null",
                          "--wrap", "sleep 2; date +%s.%N > parent.end", cwd=tmp_path)
    child = slurm.sbatch("-J", unique("child"), "-o", "/dev/null",
                         f"--dependency=afterok:{parent}",
                         "--wrap", "date +%s.%N > child.start", cwd=tmp_path)
    assert slurm.squeue_reason(child) == "PENDING Dependency"
    slurm.wait_final(child)
    assert slurm.squeue(parent) == {parent: "COMPLETED"}
    assert slurm.squeue(child) == {child: "COMPLETED"}
    parent_end = float((tmp_path / "parent.end").read_text())
    child_start = float((tmp_path / "child.start").read_text())
    assert child_start >= parent_end
    [p], [c] = slurm.sacct(parent), slurm.sacct(child)
    assert sacct_time(c["start"]) >= sacct_time(p["end"])


def test_afterok_on_a_failed_job_cancels_the_dependant(slurm: Slurm, tmp_path: Path) -> None:
    """DependencyParameters=kill_invalid_depend: without it the dependant PENDs forever."""
    parent = slurm.sbatch("-J", unique("badparent"), "-o", "/dev/null", "--wrap", "exit 1",
                          cwd=tmp_path)
    child = slurm.sbatch("-J", unique("orphan"), "-o", "/dev/null",
                         f"--dependency=afterok:{parent}", "--wrap", "touch ran", cwd=tmp_path)
    assert slurm.wait_final(child) == {child: "CANCELLED"}
    assert slurm.squeue_reason(child) == "CANCELLED DependencyNeverSatisfied"
    assert slurm.squeue(parent) == {parent: "FAILED"}
    assert not (tmp_path / "ran").exists()


def test_scancel_leaves_nothing_queued(slurm: Slurm, tmp_path: Path) -> None:
    name = unique("cancel")
    running = slurm.sbatch("-J", name, "-o", "/dev/null", "--wrap", "sleep 300", cwd=tmp_path)
    slurm.wait_running(running)
    jobs = [
        running,
        slurm.sbatch("-J", name, "-o", "/dev/null", f"--dependency=afterok:{running}",
                     "--wrap", "touch ran", cwd=tmp_path),
        slurm.sbatch("-J", name, "-o", "/dev/null", "--hold", "--wrap", "touch ran",
                     cwd=tmp_path),
        slurm.sbatch("-J", name, "-o", "/dev/null", "--array=0-4", "--wrap", "sleep 300",
                     cwd=tmp_path),
    ]
    proc = cli("scancel", *jobs)
    assert proc.returncode == 0, proc.stderr
    for job in jobs:
        states = slurm.wait_final(job, timeout=30)
        assert {s.split()[0] for s in states.values()} == {"CANCELLED"}, states
    # Without -t, squeue lists only jobs that are pending, running or completing.
    assert cli("squeue", "-h", "-n", name, "-o", "%i %T").stdout == ""
    for job in jobs:
        # sacct adds the uid that cancelled: "CANCELLED by 0".
        assert all(r["state"].startswith("CANCELLED") for r in slurm.sacct(job))
    assert not (tmp_path / "ran").exists()


def test_time_limit_ends_in_timeout(slurm: Slurm, timed_out_job: str) -> None:
    """Last in the file: its job has been waiting for slurmctld's sweep since the start."""
    assert slurm.wait_final(timed_out_job, timeout=60) == {timed_out_job: "TIMEOUT"}
    [record] = slurm.sacct(timed_out_job)
    # The job line says TIMEOUT with exit code 0:0; its .batch step is CANCELLED 0:15.
    assert (record["state"], record["exitcode"]) == ("TIMEOUT", "0:0")
