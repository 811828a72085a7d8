"""The test cluster from tests/slurm/cluster.sh behaves like a production SLURM cluster.

These tests pin down the behaviour the SLURM executor will rely on (sacct verdicts, arrays,
dependency ordering, time limits, cancellation, several nodes with node-local scratch, a node
that crashes and comes back), so that a broken cluster shows up here, with a clear cause,
rather than as a mysterious executor failure. Every job gets a unique name and writes into
the test's tmp_path: the cluster and its accounting history are shared.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm_cluster import (
    SCRATCH_MOUNT,
    USABLE_NODE_STATES,
    Slurm,
    cli,
    node_down,
    node_names,
    node_scratch,
    node_state,
    node_up,
    nodes_restored,
    sacct_time,
    slurm_cluster_fixture,
)

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
    try:
        slurm.wait_running(job)
    except AssertionError:
        cli("scancel", job)
        raise
    proc = cli("scontrol", "update", f"JobId={job}", "TimeLimit=0")
    assert proc.returncode == 0, proc.stderr
    yield job
    cli("scancel", job)


@pytest.fixture(autouse=True, scope="module")
def _start_timeout_early(timed_out_job: str) -> None:
    """Set up ``timed_out_job`` before the first test, so its 30-s sweep runs meanwhile."""


def test_three_nodes_advertise_many_cpus_together(slurm: Slurm) -> None:
    """Tiny jobs start about one per free slot and scheduler pass: the nodes need many slots."""
    out = cli("sinfo", "-h", "-N", "-o", "%N %c %P")
    rows = [line.split() for line in out.stdout.splitlines()]
    assert len(rows) >= 3, out.stdout
    assert sum(int(cpus) for _, cpus, _ in rows) >= 16, out.stdout
    # One default partition holds every node.
    assert {partition for _, _, partition in rows} == {"debug*"}, out.stdout
    # Another test may have crashed a node for a moment; the others take jobs meanwhile.
    assert {node_state(node) for node, _, _ in rows} & USABLE_NODE_STATES, out.stdout


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


def test_array_tasks_spread_over_nodes(slurm: Slurm, tmp_path: Path) -> None:
    """LLN puts each job on the least loaded node: six tasks use more than one node."""
    job = slurm.sbatch("-J", unique("spread"), "--array=0-5", "-o", "arr-%a.out",
                       "--wrap", "echo $SLURMD_NODENAME; sleep 2", cwd=tmp_path)
    records = slurm.sacct(job, rows=6)
    assert {r["state"] for r in records} == {"COMPLETED"}, records
    nodes = {r["nodelist"] for r in records}
    assert len(nodes) >= 2, records
    assert nodes <= set(node_names())
    # Each task ran where accounting says it did.
    for r in records:
        task = r["jobid"].split("_")[1]
        assert (tmp_path / f"arr-{task}.out").read_text() == f"{r['nodelist']}\n"


def test_node_local_scratch_is_private_to_its_node(slurm: Slurm, tmp_path: Path) -> None:
    """A file a job writes to its node's scratch ($TMPDIR) is there for that node's later
    jobs and on the host under that node's directory, and absent on every other node."""
    first, second = node_names()[:2]
    marker = f"{unique('scratch')}.txt"
    probe = (f'echo "$SLURMD_NODENAME $TMPDIR"; '
             f'if [ -e {SCRATCH_MOUNT}/{marker} ]; then echo seen; else echo absent; fi')
    try:
        writer = slurm.sbatch("-J", unique("write"), "-w", first, "-o", "write.out", "--wrap",
                              f'echo data > "$TMPDIR/{marker}"; {probe}', cwd=tmp_path)
        slurm.wait_final(writer)
        other = slurm.sbatch("-J", unique("other"), "-w", second, "-o", "other.out",
                             "--wrap", probe, cwd=tmp_path)
        same = slurm.sbatch("-J", unique("same"), "-w", first, "-o", "same.out",
                            "--wrap", probe, cwd=tmp_path)
        assert slurm.wait_final(other) == {other: "COMPLETED"}
        assert slurm.wait_final(same) == {same: "COMPLETED"}
        lines = {name: (tmp_path / f"{name}.out").read_text().splitlines()
                 for name in ("write", "other", "same")}
        assert lines == {"write": [f"{first} {SCRATCH_MOUNT}", "seen"],
                         "other": [f"{second} {SCRATCH_MOUNT}", "absent"],
                         "same": [f"{first} {SCRATCH_MOUNT}", "seen"]}
        assert (node_scratch(first) / marker).read_text() == "data\n"
        assert not (node_scratch(second) / marker).exists()
        # The host's own /scratch/repx is none of the nodes' directories.
        assert not (Path(SCRATCH_MOUNT) / marker).exists()
    finally:
        (node_scratch(first) / marker).unlink(missing_ok=True)


def test_job_over_its_memory_ends_out_of_memory(slurm: Slurm, tmp_path: Path) -> None:
    """cgroup mode on every node: --mem is a hard limit, the verdict is OUT_OF_MEMORY."""
    job = slurm.sbatch("-J", unique("oom"), "--mem=64M", "-o", "out.txt", "--wrap",
                       "python3 -c 'import time; a = bytearray(200 << 20); time.sleep(1)'",
                       cwd=tmp_path)
    assert slurm.wait_final(job) == {job: "OUT_OF_MEMORY"}
    [record] = slurm.sacct(job)
    assert (record["state"], record["exitcode"]) == ("OUT_OF_MEMORY", "0:125")


def test_associations_are_enforced(slurm: Slurm, tmp_path: Path) -> None:
    """AccountingStorageEnforce=associations: an account the user has no association in is
    refused at submission, as a user without any is; root's `repx` association works."""
    refused = cli("sbatch", "--account=nosuchaccount", "-o", "/dev/null", "--wrap", "true",
                  cwd=tmp_path)
    assert "nosuchaccount" not in cli("sacctmgr", "-n", "-P", "list", "account",
                                      "format=account").stdout.split()
    assert refused.returncode == 1
    assert "Invalid account" in refused.stderr, refused.stderr
    job = slurm.sbatch("-J", unique("acct"), "--account=repx", "-o", "/dev/null",
                       "--wrap", "true", cwd=tmp_path)
    assert slurm.wait_final(job) == {job: "COMPLETED"}


def _drain(node: str, timeout: float) -> None:
    """Take no new jobs on ``node`` and give the jobs of other tests on it ``timeout`` s to
    end, so that crashing it kills as little of theirs as possible (the cluster is shared)."""
    proc = cli("scontrol", "update", f"NodeName={node}", "State=DRAIN", "Reason=test-crash")
    assert proc.returncode == 0, proc.stderr
    end = time.monotonic() + timeout
    while cli("squeue", "-h", "-w", node, "-o", "%i").stdout.strip():
        if time.monotonic() > end:
            return
        time.sleep(0.5)


def test_crashed_node_fails_its_job_and_comes_back(slurm: Slurm, tmp_path: Path) -> None:
    """node-down kills a node's slurmd and jobs: its job ends NODE_FAIL, a job pinned to the
    node waits; node-up brings the node back and the waiting job runs there."""
    node = node_names()[-1]
    with nodes_restored():
        victim = slurm.sbatch("-J", unique("victim"), "-w", node, "--no-requeue",
                              "-o", "victim.out", "--wrap", "sleep 300", cwd=tmp_path)
        slurm.wait_running(victim)
        _drain(node, timeout=10)
        node_down(node)
        assert slurm.wait_final(victim, timeout=30) == {victim: "NODE_FAIL"}
        # "drained" when the drain above came first: both take no jobs.
        assert node_state(node) in {"down", "drained"}
        waiting = slurm.sbatch("-J", unique("waiting"), "-w", node, "-o", "waiting.out",
                               "--wrap", "echo $SLURMD_NODENAME", cwd=tmp_path)
        time.sleep(1)
        assert slurm.squeue_reason(waiting).startswith("PENDING"), slurm.squeue_reason(waiting)
        started = time.monotonic()
        node_up(node)
        assert time.monotonic() - started < 30
        assert node_state(node) in USABLE_NODE_STATES
        assert slurm.wait_final(waiting, timeout=30) == {waiting: "COMPLETED"}
        assert (tmp_path / "waiting.out").read_text() == f"{node}\n"
    [record] = slurm.sacct(victim)
    assert record["state"] == "NODE_FAIL" and record["nodelist"] == node, record


def test_time_limit_ends_in_timeout(slurm: Slurm, timed_out_job: str) -> None:
    """Last in the file: its job has been waiting for slurmctld's sweep since the start."""
    assert slurm.wait_final(timed_out_job, timeout=60) == {timed_out_job: "TIMEOUT"}
    [record] = slurm.sacct(timed_out_job)
    # The job line says TIMEOUT with exit code 0:0; its .batch step is CANCELLED 0:15.
    assert (record["state"], record["exitcode"]) == ("TIMEOUT", "0:0")
