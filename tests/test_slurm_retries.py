"""Failures classified and retried with more resources, on the real test cluster
(tests/slurm/cluster.sh; no fake sbatch), and the local scheduler's ``--retries``.

What is pinned: a job that needs 150 MB with ``mem = "64M"`` ends OUT_OF_MEMORY, and
``repx status``, ``repx show`` and the analysis DataFrame say so (its queued downstream
job: DEPENDENCY_NEVER_SATISFIED); with ``--retries 2`` the same build doubles its memory
until it succeeds (64M, 128M, 256M), its downstream job is submitted again behind the
retry, and every attempt is in the record (node, state, requested mem, MaxRSS, Elapsed).
A job SLURM cancelled for its dependency after a ``--no-wait`` build is submitted again by
the next build, behind its upstream job that build runs again.
A job over its ``time = "00:01:00"`` (a stage's ``retries`` hint, no flag) succeeds on a
retry with 1.5 times the time. A script failure is not retried, unless ``--retry-failed``.
A job cancelled with scancel is CANCELLED_BY_USER. Killing a node's slurmd while jobs run
on it makes them NODE_FAIL, rerun elsewhere in the same build; a slurmctld restart in the
middle of a build does not stop it. Locally, ``--retries`` reruns a job killed by a signal,
and with ``--retry-failed`` one that exited non-zero. Records of an older repx (without
attempts) stay readable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repx.engine.failures import FailureKind, may_retry
from repx.engine.slurm.cli import TaskAccount, parse_sacct_duration, parse_sacct_mem
from repx.engine.slurm.outcomes import attempt_state, classify
from repx.report.analysis import Experiment
from repx.store import JobRecord, Status, Store
from tests.conftest import REPO, require_nix
from tests.slurm_cluster import (
    node_down,
    node_names,
    nodes_restored,
    restart_slurmctld,
    slurm_cluster_fixture,
)

slurm = slurm_cluster_fixture()

pytestmark = [pytest.mark.slurm, pytest.mark.nix]

MIB = 2**20

RUN = """
{ pkgs, repx-lib, ... }:
{ name = "main"; pipelines = [ ./pipe.nix ]; %(params)s }
"""


def stage_file(pname: str, body: str, *, resources: str = "", params: str = "",
               deps: str = "[ pkgs.coreutils ]", inputs: str = "") -> str:
    """A stage writing ``$out/out.txt`` after ``body`` (bash)."""
    return f"""
        {{ pkgs }}:
        {{
          pname = "{pname}"; version = "1";
          {f"params = {{ {params} }};" if params else ""}
          {f"inputs = {{ {inputs} }};" if inputs else ""}
          {f"resources = {{ {resources} }};" if resources else ""}
          outputs = {{ out = "$out/out.txt"; }};
          runDependencies = {deps};
          run = {{ inputs, outputs, params, ... }}: ''
            {body}
            echo finished > "${{outputs.out}}"
          '';
        }}
    """


def repx(*args: str, cwd: Path, code: int | None = 0,
         timeout: float = 400) -> subprocess.CompletedProcess[str]:
    """Run the CLI; assert its exit code (unless None) and that no traceback escaped."""
    proc = subprocess.run([sys.executable, "-m", "repx.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert code is None or proc.returncode == code, (args, proc.returncode, proc.stdout,
                                                     proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def build(folder: Path, *args: str, code: int = 0, timeout: float = 400) -> dict:
    proc = repx("build", "--store", str(folder / ".repx"), "--json", "-q", "--poll", "0.3",
                *args, cwd=folder, code=code, timeout=timeout)
    return json.loads(proc.stdout)


def records_by_stage(folder: Path) -> dict[str, JobRecord]:
    """The store's records by stage (pname): each test lab has one job per stage."""
    return {r.stage: r for r in Store(folder / ".repx", readonly=True).records()}


def make_pipe(make_lab, stages: dict[str, str], links: dict[str, str] | None = None,
              params: str = "params = { };") -> Path:
    """A lab of one run whose pipeline has ``stages`` (name -> stage file text);
    ``links`` names a stage's dependency list (default none)."""
    links = links or {}
    pipe = "{ repx, pkgs, ... }:\nrepx.mkPipe rec {\n" + "".join(
        f"  {name} = repx.callStage ./{name}.nix {links.get(name, '[ ]')};\n"
        for name in stages) + "}\n"
    return make_lab({"run.nix": RUN % {"params": params}, "pipe.nix": pipe,
                     **{f"{name}.nix": text for name, text in stages.items()}})


#: Touches 150 MB (a bytes object is written, so the pages are resident).
HOG = 'python3 -c "b = b\'x\' * (150 * 1024 * 1024); print(len(b))"'


def test_out_of_memory_is_recorded_then_retried_with_twice_the_memory(slurm,
                                                                      make_lab) -> None:
    require_nix()
    folder = make_pipe(make_lab, {
        "hog": stage_file("hog", HOG, resources='mem = "64M";',
                          deps="[ pkgs.coreutils pkgs.python3 ]"),
        "after": stage_file("after", 'cat "${inputs.out}"', inputs='out = "";'),
    }, links={"after": "[ hog ]"})
    # No retries: OUT_OF_MEMORY, and the downstream job SLURM held for it never starts.
    result = build(folder, "--scheduler", "slurm", "--keep-going", code=1)
    assert len(result["failed"]) == 1, result
    records = records_by_stage(folder)
    hog, after = records["hog"], records["after"]
    assert (hog.status, hog.failure, hog.reason) == (
        Status.FAILED, "OUT_OF_MEMORY", "OUT_OF_MEMORY"), hog
    assert len(hog.attempts) == 1
    first = hog.attempts[0]
    assert (first["attempt"], first["state"], first["failure"], first["mem"]) == (
        1, "OUT_OF_MEMORY", "OUT_OF_MEMORY", 64 * MIB), first
    assert first["node"] in node_names() and first["elapsed"] is not None
    assert (after.status, after.failure) == (Status.CANCELLED, "DEPENDENCY_NEVER_SATISFIED")

    status = repx("status", "--store", str(folder / ".repx"), cwd=folder)
    assert "failures: 1 DEPENDENCY_NEVER_SATISFIED, 1 OUT_OF_MEMORY" in status.stdout, \
        status.stdout
    show = repx("show", hog.job_id, "--store", str(folder / ".repx"), cwd=folder).stdout
    assert "failure   OUT_OF_MEMORY" in show and "#1 SLURM job" in show, show
    frame = Experiment(folder / "result", store=folder / ".repx").jobs().to_dataframe()
    row = frame.set_index("stage").loc["hog"]
    assert (row["failure"], row["attempts"], row["req_mem"]) == ("OUT_OF_MEMORY", 1, 64 * MIB)

    # --retries 2: 64M and 128M are too small for 150 MB, 256M is enough; the downstream
    # job, cancelled on SLURM behind each failed attempt, is submitted again and runs.
    started = time.monotonic()
    result = build(folder, "--scheduler", "slurm", "--retries", "2")
    took = time.monotonic() - started
    assert len(result["executed"]) == 2 and not result["failed"], result
    records = records_by_stage(folder)
    hog = records["hog"]
    assert (hog.status, hog.failure) == (Status.SUCCEEDED, ""), hog
    assert [(a["attempt"], a["state"], a["mem"]) for a in hog.attempts] == [
        (1, "OUT_OF_MEMORY", 64 * MIB), (2, "OUT_OF_MEMORY", 128 * MIB),
        (3, "COMPLETED", 256 * MIB)], hog.attempts
    assert len({a["slurm_id"] for a in hog.attempts}) == 3
    assert hog.attempts[-1]["max_rss"] is None or hog.attempts[-1]["max_rss"] > 0
    assert records["after"].status is Status.SUCCEEDED
    show = repx("show", hog.job_id, "--store", str(folder / ".repx"), cwd=folder).stdout
    assert "attempts  3" in show and "#2 SLURM job" in show and "256.0 MiB" in show, show
    frame = Experiment(folder / "result", store=folder / ".repx").jobs().to_dataframe()
    row = frame.set_index("stage").loc["hog"]
    assert (row["status"], row["attempts"], row["req_mem"]) == ("succeeded", 3, 256 * MIB)
    assert row["node"] in node_names() and row["elapsed"] >= 0
    print(f"three attempts and the downstream job: {took:.1f} s")


def test_script_failure_is_retried_only_when_asked(slurm, make_lab, tmp_path) -> None:
    require_nix()
    marker = tmp_path / "first-attempt-ran"
    # Fails on its first attempt only (a marker outside the store remembers it).
    body = f'if [ ! -e {marker} ]; then touch {marker}; echo flaky >&2; exit 3; fi'
    folder = make_pipe(make_lab, {"flaky": stage_file("flaky", body)})
    build(folder, "--scheduler", "slurm", "--retries", "2", code=1)
    flaky = records_by_stage(folder)["flaky"]
    assert (flaky.status, flaky.failure, flaky.reason, flaky.exit_code) == (
        Status.FAILED, "SCRIPT_FAILURE", "exit code 3", 3)
    assert [a["failure"] for a in flaky.attempts] == ["SCRIPT_FAILURE"]

    marker.unlink()
    result = build(folder, "--scheduler", "slurm", "--retries", "2", "--retry-failed")
    assert not result["failed"], result
    flaky = records_by_stage(folder)["flaky"]
    assert flaky.status is Status.SUCCEEDED
    assert [(a["state"], a["exit_code"]) for a in flaky.attempts] == [
        ("FAILED", 3), ("COMPLETED", 0)], flaky.attempts


def sacct_state(task: str) -> str:
    """The state word sacct has for ``task`` ("" while it has no record)."""
    proc = subprocess.run(["sacct", "-n", "-P", "-X", "-j", task, "-o", "State"],
                          capture_output=True, text=True, check=False)
    return (proc.stdout.split() or [""])[0]


def test_a_job_slurm_cancelled_for_its_dependency_is_rerun_behind_its_upstream(
        slurm, make_lab, tmp_path) -> None:
    """A ``--no-wait`` build leaves a job queued behind one that fails; SLURM cancels it
    for its dependency while no repx command looks. The next build, which runs the failed
    job again, submits the cancelled one again behind it: it is not recorded blocked."""
    require_nix()
    fail = tmp_path / "fail"
    fail.touch()
    folder = make_pipe(make_lab, {
        "first": stage_file("first", f'if [ -e {fail} ]; then exit 5; fi'),
        "second": stage_file("second", 'cat "${inputs.out}"', inputs='out = "";'),
    }, links={"second": "[ first ]"})
    submitted = build(folder, "--scheduler", "slurm", "--no-wait")
    assert len(submitted["submitted"]) == 2, submitted
    queued = records_by_stage(folder)["second"]
    assert queued.status is Status.QUEUED and queued.slurm_id
    deadline = time.monotonic() + 120
    while sacct_state(queued.slurm_id) != "CANCELLED":
        assert time.monotonic() < deadline, "SLURM never cancelled the dependent job"
        time.sleep(0.5)
    assert records_by_stage(folder)["second"].status is Status.QUEUED  # nobody looked
    fail.unlink()
    said = repx("build", "--store", str(folder / ".repx"), "--poll", "0.3", "--scheduler",
                "slurm", cwd=folder)
    assert "2 jobs of an earlier build ended on SLURM without success (CANCELLED 1, " \
        "FAILED 1" in said.stdout + said.stderr, said.stdout + said.stderr
    result = build(folder, "--scheduler", "slurm")
    assert (result["executed"], result["failed"], result["blocked"]) == ([], [], []), result
    assert len(result["up_to_date"]) == 2
    records = records_by_stage(folder)
    assert {s: r.status for s, r in records.items()} == {
        "first": Status.SUCCEEDED, "second": Status.SUCCEEDED}
    assert records["second"].slurm_id != queued.slurm_id


def test_cancelled_by_the_user_is_its_own_reason(slurm, make_lab) -> None:
    require_nix()
    folder = make_pipe(make_lab, {"slow": stage_file("slow", "sleep 60")})
    store = folder / ".repx"
    proc = subprocess.Popen(
        [sys.executable, "-m", "repx.cli", "build", "--scheduler", "slurm", "--store",
         str(store), "--json", "-q", "--poll", "0.3", "--retries", "3"], cwd=folder,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        task = wait_for_running(store, 1, timeout=60)[0]
        subprocess.run(["scancel", task], check=True)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    slow = records_by_stage(folder)["slow"]
    assert slow.failure == "CANCELLED_BY_USER", slow  # and never retried
    assert slow.reason.startswith("CANCELLED by user ") and len(slow.attempts) == 1


def test_time_limit_is_retried_with_one_and_a_half_times_the_time(slurm, make_lab) -> None:
    """The one slow test: SLURM ends a --time=1 job ~75-90 s in; the retry's 90 s (2 min:
    sbatch takes minutes) lets the 70 s job finish. The stage's own ``retries`` hint
    allows the retry: no --retries."""
    require_nix()
    folder = make_pipe(make_lab, {
        "long": stage_file("long", "sleep 70", resources='time = "00:01:00"; retries = 1;'),
    })
    started = time.monotonic()
    result = build(folder, "--scheduler", "slurm", timeout=400)
    took = time.monotonic() - started
    assert not result["failed"], result
    long = records_by_stage(folder)["long"]
    assert long.status is Status.SUCCEEDED
    assert [(a["state"], a["time"]) for a in long.attempts] == [
        ("TIMEOUT", 60), ("COMPLETED", 120)], long.attempts
    assert long.attempts[0]["elapsed"] >= 60
    limits = subprocess.run(["sacct", "-n", "-P", "-X", "-j", long.attempts[1]["slurm_id"],
                             "-o", "Timelimit"], capture_output=True, text=True, check=True)
    assert limits.stdout.strip() == "00:02:00"
    print(f"TIMEOUT then success: {took:.1f} s")


def wait_for_running(store: Path, count: int, timeout: float) -> list[str]:
    """The SLURM ids of ``count`` jobs the store records RUNNING (fails after
    ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if not (store / "db" / "data.mdb").exists():
            continue
        running = [r.slurm_id for r in Store(store, readonly=True).records()
                   if r.status is Status.RUNNING and r.slurm_id]
        if len(running) >= count:
            return running
    raise AssertionError(f"fewer than {count} jobs ever ran within {timeout} s")


def victim_node(ours: list[str]) -> str:
    """A node that runs one of our tasks ``ours``, preferably none of anyone else's: the
    cluster is shared, and taking a node down kills every job on it."""
    out = subprocess.run(["squeue", "-h", "-r", "-t", "R", "-o", "%i %N"],
                         capture_output=True, text=True, check=True).stdout
    jobs: dict[str, set[str]] = {}
    for line in out.splitlines():
        task, _, node = line.strip().partition(" ")
        jobs.setdefault(node, set()).add(task)
    mine = [node for node, tasks in jobs.items() if tasks & set(ours)]
    assert mine, f"none of {ours} runs on a node: {out}"
    return min(mine, key=lambda node: (len(jobs[node] - set(ours)), node))


SWEEP_PARAMS = "params = { n = [ 1 2 3 4 ]; };"


def test_node_failure_reruns_its_jobs_elsewhere_in_the_same_build(slurm, make_lab) -> None:
    require_nix()
    folder = make_pipe(make_lab, {
        "work": stage_file("work", 'sleep 8; echo "${toString params.n}"', params="n = 0;"),
    }, params=SWEEP_PARAMS)
    store = folder / ".repx"
    proc = subprocess.Popen(
        [sys.executable, "-m", "repx.cli", "build", "--scheduler", "slurm", "--store",
         str(store), "--json", "-q", "--poll", "0.3", "--retries", "1"], cwd=folder,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    with nodes_restored():
        try:
            running = wait_for_running(store, 4, timeout=60)
            victim = victim_node(running)
            node_down(victim)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, (out, err)
    result = json.loads(out)
    assert len(result["executed"]) == 4 and not result["failed"], result
    records = Store(store, readonly=True).records()
    failed_over = [r for r in records if len(r.attempts) == 2]
    assert failed_over, [r.attempts for r in records]
    for record in failed_over:
        first, second = record.attempts
        assert (first["state"], first["failure"], first["node"]) == (
            "NODE_FAIL", "NODE_FAIL", victim), first
        assert second["state"] == "COMPLETED" and second["node"] != victim, second
    assert all(r.status is Status.SUCCEEDED for r in records)


def test_slurmctld_restart_mid_build_keeps_watching(slurm, make_lab) -> None:
    require_nix()
    folder = make_pipe(make_lab, {
        "first": stage_file("first", "sleep 6"),
        "second": stage_file("second", "sleep 2", inputs='out = "";'),
    }, links={"second": "[ first ]"})
    store = folder / ".repx"
    proc = subprocess.Popen(
        [sys.executable, "-m", "repx.cli", "build", "--scheduler", "slurm", "--store",
         str(store), "--json", "-q", "--poll", "0.3"], cwd=folder,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    with nodes_restored():
        try:
            wait_for_running(store, 1, timeout=60)
            restart_slurmctld()
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, (out, err)
    result = json.loads(out)
    assert len(result["executed"]) == 2 and not result["failed"], result


# ------------------------------------------------------------------------------ local


def test_local_retries(make_lab, tmp_path) -> None:
    require_nix()
    killed, failed = tmp_path / "killed-once", tmp_path / "failed-once"
    folder = make_pipe(make_lab, {
        # Killed by a signal on its first attempt: retried with --retries alone.
        "sig": stage_file("sig", f'if [ ! -e {killed} ]; then touch {killed}; kill -9 $$; fi'),
        # Exits 3 on its first attempt: retried only with --retry-failed.
        "code": stage_file("code", f'if [ ! -e {failed} ]; then touch {failed}; exit 3; fi'),
    })
    build(folder, "--retries", "1", "--keep-going", code=1)
    records = records_by_stage(folder)
    sig, code = records["sig"], records["code"]
    assert sig.status is Status.SUCCEEDED
    assert [(a["state"], a["failure"], a["exit_code"]) for a in sig.attempts] == [
        ("FAILED", "SIGNAL", -9), ("COMPLETED", "", 0)], sig.attempts
    assert sig.attempts[0]["node"] and sig.attempts[0]["elapsed"] is not None
    assert (code.status, code.failure, code.reason) == (Status.FAILED, "SCRIPT_FAILURE",
                                                        "exit code 3")
    assert len(code.attempts) == 1

    failed.unlink()
    build(folder, "--retries", "1", "--retry-failed")
    code = records_by_stage(folder)["code"]
    assert code.status is Status.SUCCEEDED
    assert [a["exit_code"] for a in code.attempts] == [3, 0]
    frame = Experiment(folder / "result", store=folder / ".repx").jobs().to_dataframe()
    assert dict(zip(frame["stage"], frame["attempts"], strict=True)) == {"sig": 2, "code": 2}


# --------------------------------------------------------- classification of sacct records


def account(state: str, steps: dict[str, str] | None = None, **fields: object) -> TaskAccount:
    return TaskAccount("1", state=state, step_states=steps or {}, **fields)  # type: ignore[arg-type]


def test_classify_reads_steps_cancellers_and_dependencies() -> None:
    # In cgroup mode a script that outlives its OOM-killed process fails the job; only
    # the .batch step says OUT_OF_MEMORY.
    end = classify("FAILED", "", 137, account("FAILED", {"batch": "OUT_OF_MEMORY"}), 1000)
    assert (end.kind, end.exit_code) == (FailureKind.OUT_OF_MEMORY, 137)
    assert classify("FAILED", "", 3, account("FAILED", {"batch": "FAILED"}), 1000).reason \
        == "exit code 3"
    assert classify("NODE_FAIL", "", None, None, 1000).kind is FailureKind.NODE_FAIL
    assert classify("PREEMPTED", "", None, None, 1000).kind is FailureKind.PREEMPTED
    assert classify("BOOT_FAIL", "", None, None, 1000).kind is FailureKind.BOOT_FAIL
    mine = classify("CANCELLED", "", None, account("CANCELLED", cancelled_by=1000), 1000)
    admin = classify("CANCELLED", "", None, account("CANCELLED", cancelled_by=0), 1000)
    assert (mine.kind, admin.kind) == (FailureKind.CANCELLED_BY_USER,
                                       FailureKind.CANCELLED_BY_ADMIN)
    assert "administrator" in admin.reason and "uid 0" in admin.reason
    never = classify("CANCELLED", "DependencyNeverSatisfied", None, None, 1000)
    assert never.kind is FailureKind.DEPENDENCY_NEVER_SATISFIED
    assert classify("COMPLETED", "", 0, account("COMPLETED"), 1000).kind is None
    # What is retried, and how often.
    assert may_retry(FailureKind.OUT_OF_MEMORY, attempt=2, retries=2, retry_failed=False)
    assert not may_retry(FailureKind.OUT_OF_MEMORY, attempt=3, retries=2, retry_failed=False)
    assert not may_retry(FailureKind.SCRIPT_FAILURE, attempt=1, retries=2, retry_failed=False)
    assert may_retry(FailureKind.SCRIPT_FAILURE, attempt=1, retries=2, retry_failed=True)
    assert not may_retry(FailureKind.CANCELLED_BY_USER, attempt=1, retries=5,
                         retry_failed=True)
    # sacct's figures.
    assert parse_sacct_mem("1076K") == 1076 * 1024 and parse_sacct_mem("64Mn") == 64 * MIB
    assert parse_sacct_mem("") is None
    assert parse_sacct_duration("365-00:00:00") == 365 * 86400
    assert parse_sacct_duration("00:00.161", fractions=True) == pytest.approx(0.161)
    assert parse_sacct_duration("UNLIMITED") is None and parse_sacct_duration("30") == 1800


def test_an_attempt_is_recorded_as_it_ended_when_accounting_lags() -> None:
    """sacct can still say RUNNING for a task squeue already saw end (accounting is written
    after the job): the attempt then takes the watcher's state, never an active one.
    (The lag cannot be caused on demand on the test cluster, so it is given here.)"""
    assert attempt_state("COMPLETED", account("RUNNING")) == "COMPLETED"
    assert attempt_state("COMPLETED", account("COMPLETING")) == "COMPLETED"
    assert attempt_state("TIMEOUT", account("")) == "TIMEOUT"
    assert attempt_state("COMPLETED", None) == "COMPLETED"
    assert attempt_state("CANCELLED", account("CANCELLED by 0")) == "CANCELLED by 0"
    assert attempt_state("FAILED", account("OUT_OF_MEMORY")) == "OUT_OF_MEMORY"


def test_records_without_attempts_stay_readable() -> None:
    """A record written before attempts existed (15 body fields, no ``attempts`` in its
    record.json) reads with no failure kind and no attempts; a new one round-trips."""
    import msgpack

    from repx.store.records import record_from_json, record_to_json

    old_body = ["job-1", 3, 1.0, 2.0, "host", 7, "lab", "run", "stage", None, "o", "e",
                "exit code 3", "12_3", "owner"]
    old = JobRecord.from_msgpack(bytes((1, 3)) + msgpack.packb(old_body, use_bin_type=True))
    assert (old.status, old.reason, old.failure, old.attempts) == (
        Status.FAILED, "exit code 3", "", [])
    old_json = record_to_json(old)
    del old_json["attempts"], old_json["failure"]
    assert record_from_json(old_json, "record.json").attempts == []
    new = JobRecord("job-2", Status.FAILED, failure="OUT_OF_MEMORY",
                    attempts=[{"attempt": 1, "state": "OUT_OF_MEMORY", "mem": 64 * MIB}])
    assert JobRecord.from_msgpack(new.to_msgpack()) == new
    assert record_from_json(record_to_json(new), "record.json") == new
