"""``repx build`` under stress: ``kill -9`` mid-run, Ctrl-C, two builds on one store, and
resource admission.

Every job appends to a log outside the store (its path is a param), so how often each job
really ran is counted by the jobs themselves. Builds run in the background with Popen so
that the test can signal them; a ``finally`` kills whatever a failing test left behind.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from repx.store import Status
from tests.buildutil import (
    build,
    by_pname,
    intervals,
    list_jobs,
    log_lines,
    out_dir,
    process_alive,
    records,
    repx,
    start_build,
    wait_for,
    write_lab,
)
from tests.conftest import require_nix


def one_stage_lab(root: Path, stage: str, sweep: str, **placeholders: str) -> Path:
    """A lab with one run ``main`` sweeping ``sweep`` over the stage in ``stage.nix``."""
    files = {
        "run.nix": """
            { pkgs, repx-lib, ... }:
            { name = "main"; pipelines = [ ./pipe.nix ]; params = { SWEEP }; }
        """.replace("SWEEP", sweep),
        "pipe.nix": """
            { repx, ... }:
            repx.mkPipe rec { work = repx.callStage ./stage.nix [ ]; }
        """,
        "stage.nix": stage,
    }
    return write_lab(root / "lab", files, **placeholders)


# ------------------------------------------------------------------------- kill -9

# Writes its output in four parts with pauses (0.2-0.44 s in all): a build killed meanwhile
# leaves a half-written result.txt that must never be recorded as done.
SLOW_WRITER = """
{ pkgs }:
{
  pname = "writer";
  params = { i = 0; log = "@LOG@"; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    i="${toString params.i}"
    echo "start $i" >> "${params.log}"
    for part in 1 2 3 4; do
      echo "part $part" >> "${outputs.result}"
      sleep "0.0$(( i % 4 * 2 + 5 ))"
    done
    echo "end $i" >> "${params.log}"
  '';
}
"""

COMPLETE = "".join(f"part {k}\n" for k in range(1, 5))


@pytest.mark.nix
def test_kill_9_mid_run_then_the_next_build_finishes_the_rest(tmp_path: Path) -> None:
    require_nix()
    log = tmp_path / "executions.log"
    sweep = "i = [ " + " ".join(str(i) for i in range(1, 31)) + " ];"
    folder = one_stage_lab(tmp_path, SLOW_WRITER, sweep, LOG=str(log))
    store = tmp_path / ".repx"
    running = start_build(folder, store, "-j", "2", name="killed")
    try:
        wait_for(lambda: sum(r.status is Status.SUCCEEDED
                             for r in records(store).values()) >= 6,
                 "6 jobs recorded as succeeded")
        os.kill(running.proc.pid, signal.SIGKILL)
        killed = running.wait(timeout=10)
    finally:
        running.kill()
    assert killed.code == -signal.SIGKILL

    at_kill = records(store)
    done = {i for i, r in at_kill.items() if r.status is Status.SUCCEEDED}
    claimed = {i for i, r in at_kill.items() if r.status is Status.RUNNING}
    assert len(done) >= 6 and len(done) < 30
    assert claimed, "the kill came when no job was running"
    for job_id in done:  # recorded as done => complete on disk, as recorded
        record = at_kill[job_id]
        assert (out_dir(store, job_id) / "result.txt").read_text() == COMPLETE
        assert [(f.path, f.size) for f in record.outputs] == [("result.txt", len(COMPLETE))]

    second = build(folder, store, "-j", "2")
    jobs = list_jobs(folder)
    ids = {j["id"] for j in jobs}
    assert set(second.executed).isdisjoint(done)
    assert set(second.executed) | done == ids
    assert set(second["up_to_date"]) == done
    final = records(store)
    assert all(final[i].status is Status.SUCCEEDED for i in ids)
    assert all(final[i].finished == at_kill[i].finished for i in done)
    starts = Counter(line for line in log_lines(log) if line.startswith("start "))
    by_id = {j["id"]: j["params"]["i"] for j in jobs}
    assert all(starts[f"start {by_id[i]}"] == 1 for i in done)
    for job_id in ids:  # an orphan of the killed build never wrote into a rerun's output
        assert (out_dir(store, job_id) / "result.txt").read_text() == COMPLETE, job_id
    verify = repx("cache", "verify", "--store", str(store), cwd=folder, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# A job that writes 10 parts 0.2 s apart: still writing when its build is killed, and for
# a while after the next build has started.
LONG_WRITER = """
{ pkgs }:
{
  pname = "long-writer";
  params = { log = "@LOG@"; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    echo "start $$" >> "${params.log}"
    for part in 1 2 3 4 5 6 7 8 9 10; do
      echo "part $part" >> "${outputs.result}"
      sleep 0.2
    done
  '';
}
"""


@pytest.mark.nix
def test_orphan_of_a_killed_build_is_stopped_before_its_job_reruns(tmp_path: Path) -> None:
    """Jobs run in sessions of their own, so ``kill -9`` of ``repx build`` leaves them
    running. The next build must stop such an orphan before it reruns the job: otherwise
    the orphan keeps appending to the rerun's freshly emptied ``$out``."""
    require_nix()
    log = tmp_path / "executions.log"
    folder = one_stage_lab(tmp_path, LONG_WRITER, "", LOG=str(log))
    store = tmp_path / ".repx"
    running = start_build(folder, store, name="killed")
    try:
        wait_for(lambda: len(log_lines(log)) == 1, "the job to start")
        os.kill(running.proc.pid, signal.SIGKILL)
        running.wait(timeout=10)
    finally:
        running.kill()
    orphan = int(log_lines(log)[0].split()[1])
    assert process_alive(orphan), "the job should outlive its killed build"
    (job,) = list_jobs(folder)
    assert records(store)[job["id"]].status is Status.RUNNING

    result = build(folder, store)
    assert result.executed == [job["id"]]
    assert not process_alive(orphan)
    assert len(log_lines(log)) == 2
    expected = "".join(f"part {k}\n" for k in range(1, 11))
    assert (out_dir(store, job["id"]) / "result.txt").read_text() == expected
    time.sleep(0.5)  # an orphan left alive would append within 0.2 s
    assert (out_dir(store, job["id"]) / "result.txt").read_text() == expected
    record = records(store)[job["id"]]
    assert record.status is Status.SUCCEEDED
    assert [(f.path, f.size) for f in record.outputs] == [("result.txt", len(expected))]


# --------------------------------------------------------------------------- Ctrl-C

# While the marker exists each job sleeps (its child) and leaves its pid and its child's in
# PIDS: each file appears whole (written aside, then renamed), `.job` before `.child`, so a
# test that sees `N.child` can read both.
SLEEPER = """
{ pkgs }:
{
  pname = "sleeper";
  params = { i = 0; marker = "@MARKER@"; pids = "@PIDS@"; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    i="${toString params.i}"
    pids="${params.pids}"
    if [ -e "${params.marker}" ]; then
      sleep 30 &
      echo "$$" > "$pids/$i.job.partial" && mv "$pids/$i.job.partial" "$pids/$i.job"
      echo "$!" > "$pids/$i.child.partial" && mv "$pids/$i.child.partial" "$pids/$i.child"
      wait
    fi
    echo "$i" > "${outputs.result}"
  '';
}
"""


@pytest.mark.nix
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_stops_running_jobs_and_their_children(tmp_path: Path,
                                                         signum: signal.Signals) -> None:
    """Ctrl-C (or a SIGTERM from a batch system): every running job's process group is
    stopped, the jobs are recorded as cancelled, and the next build reruns them."""
    require_nix()
    marker = tmp_path / "marker"
    marker.touch()
    pids = tmp_path / "pids"
    pids.mkdir()
    folder = one_stage_lab(tmp_path, SLEEPER, "i = [ 1 2 3 ];", MARKER=str(marker),
                           PIDS=str(pids))
    store = tmp_path / ".repx"
    running = start_build(folder, store, "-j", "2", name="interrupted")
    try:
        wait_for(lambda: len(list(pids.glob("*.child"))) == 2, "two jobs to start sleeping")
        children = [int(p.read_text()) for p in pids.glob("*.child")]
        job_pids = [int(p.read_text()) for p in pids.glob("*.job")]
        assert all(process_alive(pid) for pid in children + job_pids)
        sent = time.monotonic()
        os.kill(running.proc.pid, signum)
        result = running.wait(timeout=20)
        took = time.monotonic() - sent
    finally:
        running.kill()
    assert result.code == 130, result.stderr
    # SIGTERM ended them, so the build never waited out the 5 s grace (a SIGKILL after it
    # would leave -9). The time only guards against a hang: a loaded machine is slow.
    assert len(job_pids) == 2
    assert took < 30, f"the build took {took:.1f} s to stop"
    assert "build interrupted" in result.stderr
    assert result["interrupted"] is True
    wait_for(lambda: not any(process_alive(pid) for pid in children + job_pids),
             "the jobs' processes (and their sleep 30 children) to be gone", timeout=30)

    jobs = {j["params"]["i"]: j["id"] for j in list_jobs(folder)}
    started = {jobs[int(p.stem)] for p in pids.glob("*.child")}
    assert sorted(result["cancelled"]) == sorted(started)
    assert result["not_started"] == [i for i in jobs.values() if i not in started]
    assert result.executed == [] and result["failed"] == []
    stored = records(store)
    for job_id in started:
        assert stored[job_id].status is Status.CANCELLED
        assert stored[job_id].reason == f"interrupted ({signum.name})"
        assert stored[job_id].exit_code == -signal.SIGTERM, stored[job_id]

    marker.unlink()
    again = build(folder, store)
    assert sorted(again.executed) == sorted(jobs.values())
    assert all(r.status is Status.SUCCEEDED for r in records(store).values())


# Ignores SIGTERM (so do its children: an ignored signal stays ignored across exec). Its
# pid files appear whole (written aside, renamed), `job` last.
STUBBORN = """
{ pkgs }:
{
  pname = "stubborn";
  params = { pids = "@PIDS@"; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    trap "" TERM
    sleep 30 &
    pids="${params.pids}"
    echo "$!" > "$pids/child.partial" && mv "$pids/child.partial" "$pids/child"
    echo "$$" > "$pids/job.partial" && mv "$pids/job.partial" "$pids/job"
    wait
    echo late > "${outputs.result}"
  '';
}
"""


@pytest.mark.nix
@pytest.mark.parametrize("second_sigint", [False, True], ids=["grace", "twice"])
def test_job_ignoring_sigterm_is_killed_after_the_grace_or_a_second_ctrl_c(
        tmp_path: Path, second_sigint: bool) -> None:
    """SIGTERM first, SIGKILL after the 5 s grace; a second Ctrl-C does not wait."""
    require_nix()
    pids = tmp_path / "pids"
    pids.mkdir()
    folder = one_stage_lab(tmp_path, STUBBORN, "", PIDS=str(pids))
    store = tmp_path / ".repx"
    running = start_build(folder, store, name="stubborn")
    try:
        wait_for(lambda: (pids / "job").exists(), "the job to start")
        job_pid, child = int((pids / "job").read_text()), int((pids / "child").read_text())
        sent = second = time.monotonic()
        os.kill(running.proc.pid, signal.SIGINT)
        if second_sigint:
            time.sleep(0.5)
            assert running.proc.poll() is None, "SIGTERM is ignored: the build must wait"
            second = time.monotonic()
            os.kill(running.proc.pid, signal.SIGINT)
        result = running.wait(timeout=60)
        ended = time.monotonic()
    finally:
        running.kill()
    assert result.code == 130, result.stderr
    grace = 5.0
    if second_sigint:
        # Waiting out the grace would end it `grace_left` s after the second Ctrl-C; the
        # margin is for a loaded machine.
        grace_left = grace - (second - sent)
        assert ended - second < grace_left - 0.5, \
            f"a second Ctrl-C should kill at once, took {ended - second:.1f} s"
    else:
        # Not before the grace; well before the job's own `sleep 30` ends (it was killed,
        # not waited for).
        assert grace - 0.5 < ended - sent < 25, \
            f"expected SIGKILL after the {grace:.0f} s grace, took {ended - sent:.1f} s"
    wait_for(lambda: not process_alive(job_pid) and not process_alive(child),
             "the job and its child to be gone", timeout=20)
    (job,) = list_jobs(folder)
    assert result["cancelled"] == [job["id"]]
    record = records(store)[job["id"]]
    assert record.status is Status.CANCELLED
    assert record.exit_code == -signal.SIGKILL, record  # it ignored SIGTERM


# The job itself dies of SIGTERM at once; its child ignores SIGTERM.
STUBBORN_CHILD = """
{ pkgs }:
{
  pname = "stubborn-child";
  params = { pids = "@PIDS@"; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    (trap "" TERM; exec sleep 30) &
    pids="${params.pids}"
    echo "$!" > "$pids/child.partial" && mv "$pids/child.partial" "$pids/child"
    echo "$$" > "$pids/job.partial" && mv "$pids/job.partial" "$pids/job"
    wait
    echo late > "${outputs.result}"
  '';
}
"""


@pytest.mark.nix
def test_interrupt_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    """The whole process group is stopped, not just the job's shell: a child that ignores
    SIGTERM must not outlive the interrupted build (it would keep using the machine, and
    could keep writing into ``$out``)."""
    require_nix()
    pids = tmp_path / "pids"
    pids.mkdir()
    folder = one_stage_lab(tmp_path, STUBBORN_CHILD, "", PIDS=str(pids))
    store = tmp_path / ".repx"
    running = start_build(folder, store, name="stubborn-child")
    child = 0
    try:
        wait_for(lambda: (pids / "job").exists(), "the job to start")
        child = int((pids / "child").read_text())
        os.kill(running.proc.pid, signal.SIGINT)
        result = running.wait(timeout=30)
        assert result.code == 130, result.stderr
        (job,) = list_jobs(folder)
        assert result["cancelled"] == [job["id"]]
        # Left alone it would live 30 s more; a SIGKILLed process may take a moment on a
        # loaded machine to be gone.
        wait_for(lambda: not process_alive(child),
                 "the job's child to be gone (it must not survive the interrupted build)",
                 timeout=10)
    finally:
        running.kill()
        if child and process_alive(child):
            os.kill(child, signal.SIGKILL)


# ---------------------------------------------------------------- two builds, one store

COUNTED = """
{ pkgs }:
{
  pname = "PNAME";
  params = { i = 0; log = "@LOG@"; };
  INPUTS
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    echo "PNAME ${toString params.i} $$" >> "${params.log}"
    sleep 0.25
    echo "${toString params.i}" > "${outputs.result}"
  '';
}
"""


@pytest.mark.nix
def test_two_concurrent_builds_on_one_store_run_each_job_once(tmp_path: Path) -> None:
    require_nix()
    log = tmp_path / "executions.log"
    files = {
        "run.nix": """
            { pkgs, repx-lib, ... }:
            { name = "main"; pipelines = [ ./pipe.nix ];
              params = { i = [ 1 2 3 4 5 6 7 8 9 10 ]; }; }
        """,
        "pipe.nix": """
            { repx, ... }:
            repx.mkPipe rec {
              first = repx.callStage ./first.nix [ ];
              second = repx.callStage ./second.nix [ first ];
            }
        """,
        "first.nix": COUNTED.replace("PNAME", "first").replace("INPUTS", ""),
        "second.nix": COUNTED.replace("PNAME", "second")
                             .replace("INPUTS", 'inputs = { result = ""; };'),
    }
    folder = write_lab(tmp_path / "lab", files, LOG=str(log))
    store = tmp_path / ".repx"
    builds = [start_build(folder, store, "-j", "2", name=f"build{n}") for n in (1, 2)]
    try:
        results = [b.wait(timeout=60) for b in builds]
    finally:
        for b in builds:
            b.kill()
    for result in results:
        assert result.code == 0, result.stderr
    ids = sorted(j["id"] for j in list_jobs(folder))
    assert len(ids) == 20
    runs = Counter(" ".join(line.split()[:2]) for line in log_lines(log))
    assert runs == Counter({f"{p} {i}": 1 for p in ("first", "second") for i in range(1, 11)})
    executed = results[0].executed + results[1].executed
    assert sorted(executed) == ids  # each job once, in one of the two builds
    for result in results:
        assert sorted(result.executed + result["up_to_date"]) == ids
    assert all(r.status is Status.SUCCEEDED for r in records(store).values())


# ---------------------------------------------------------------- resource admission

TIMED = """
{ pkgs }:
{
  pname = "NAME";
  params = { i = 0; log = "@LOG@"; };
  resources = { RESOURCES };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    echo "start NAME-${toString params.i} $(date +%s.%N)" >> "${params.log}"
    sleep 0.4
    echo "${toString params.i}" > "${outputs.result}"
    echo "end NAME-${toString params.i} $(date +%s.%N)" >> "${params.log}"
  '';
}
"""


def machine_mem_mib() -> int:
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.nix
def test_memory_and_cpu_hints_limit_what_runs_at_once(tmp_path: Path) -> None:
    require_nix()
    log = tmp_path / "times.log"
    huge = f"{machine_mem_mib() * 6 // 10}M"  # more than half of this machine
    giant = f"{machine_mem_mib() * 2}M"  # more than all of it: runs alone, but runs
    kinds = {
        "small": 'mem = "100M"; cpus = 1;',
        "big": 'mem = "600M"; cpus = 1;',
        "huge": f'mem = "{huge}"; cpus = 1;',
        "wide": 'mem = "10M"; cpus = 2;',
        "giant": f'mem = "{giant}"; cpus = 1;',
    }
    files = {
        "lab.nix": """
            { pkgs, repx-lib, gitHash ? "unknown", ... }:
            repx-lib.mkLab {
              inherit pkgs repx-lib gitHash;
              lab_version = "1.0";
              runs = {
                small = repx-lib.callRun ./run-small.nix [ ];
                big = repx-lib.callRun ./run-big.nix [ ];
                huge = repx-lib.callRun ./run-huge.nix [ ];
                wide = repx-lib.callRun ./run-wide.nix [ ];
                giant = repx-lib.callRun ./run-giant.nix [ ];
              };
            }
        """,
    }
    for kind, resources in kinds.items():
        files[f"run-{kind}.nix"] = f"""
            {{ pkgs, repx-lib, ... }}:
            {{ name = "{kind}"; pipelines = [ ./pipe-{kind}.nix ]; params = {{ i = [ 1 2 ]; }}; }}
        """
        files[f"pipe-{kind}.nix"] = f"""
            {{ repx, ... }}:
            repx.mkPipe rec {{ {kind} = repx.callStage ./{kind}.nix [ ]; }}
        """
        files[f"{kind}.nix"] = TIMED.replace("NAME", kind).replace("RESOURCES", resources)
    folder = write_lab(tmp_path / "lab", files, LOG=str(log))
    store = tmp_path / ".repx"

    def pair(run: str, *options: str) -> tuple[tuple[float, float], tuple[float, float]]:
        before = len(log_lines(log))
        result = build(folder, store, run, "-j", "2", *options)
        assert len(result.executed) == 2
        times = intervals(log_lines(log)[before:])
        return times[f"{run}-1"], times[f"{run}-2"]

    assert overlap(*pair("small", "--mem", "1G")), "two small jobs should run together"
    assert not overlap(*pair("big", "--mem", "1G")), "600M + 600M > --mem 1G"
    assert not overlap(*pair("huge")), f"{huge} twice is more than this machine's memory"
    assert not overlap(*pair("wide", "--cpus", "2")), "2 + 2 cpus > --cpus 2"
    assert not overlap(*pair("giant")), "a job bigger than the machine runs alone"
    jobs = list_jobs(folder)
    assert by_pname(jobs, "huge")[0]["resources"]["mem"] == huge
    assert by_pname(jobs, "big")[0]["resources"]["mem"] == "600M"
