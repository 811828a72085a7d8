"""`repx status`, `show`, `cache ls` and `gc` on work that is on SLURM with no build watching
it (`repx build --scheduler slurm --no-wait`), on the real shared cluster.

What is pinned: while the jobs are queued or running the commands say so (never "stale");
once SLURM is done, `repx status` records each outcome (succeeded with its manifest, failed
with its exit code) without another build, and `show` and `cache ls` agree with it; without
SLURM's commands they say so once and show what the store records; gc keeps the folders of
jobs SLURM still runs though no root reaches them.

Each job waits for a gate file the test creates once it has looked at them queued or
running (a fixed sleep may be over before a loaded machine gets there); then every wait on
SLURM has a generous deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from repx.store import JobRecord, Status, Store
from tests.conftest import REPO, require_nix
from tests.slurm_cluster import Slurm, slurm_cluster_fixture

slurm = slurm_cluster_fixture()

pytestmark = [pytest.mark.slurm, pytest.mark.nix]

#: Seconds to wait for SLURM to end the jobs once released (the machine is shared, loaded).
SLURM_DEADLINE = 240

#: The lab; ``GATE`` in the scripts is replaced by the gate file's path (:func:`gated_lab`).
LAB = {
    "run.nix": """
        { pkgs, repx-lib, ... }:
        { name = "main"; pipelines = [ ./pipe.nix ]; params = { n = [ 1 2 ]; }; }
    """,
    "pipe.nix": """
        { repx, pkgs, ... }:
        repx.mkPipe rec {
          ok = repx.callStage ./ok.nix [ ];
          bad = repx.callStage ./bad.nix [ ];
        }
    """,
    "ok.nix": """
        { pkgs }:
        {
          pname = "ok"; version = "1";
          params = { n = 0; };
          outputs = { out = "$out/out.txt"; };
          runDependencies = [ pkgs.coreutils ];
          run = { outputs, params, ... }: ''
            while [ ! -e "GATE" ]; do sleep 0.5; done
            echo "${toString params.n}" > "${outputs.out}"
          '';
        }
    """,
    "bad.nix": """
        { pkgs }:
        {
          pname = "bad"; version = "1";
          outputs = { out = "$out/out.txt"; };
          runDependencies = [ pkgs.coreutils ];
          run = { outputs, ... }: ''
            while [ ! -e "GATE" ]; do sleep 0.5; done
            echo "bad fails on purpose" >&2
            exit 3
          '';
        }
    """,
}


def gated_lab(make_lab, gate: Path) -> Path:
    """The lab, its jobs each waiting until ``gate`` exists (``gate.touch()`` releases them)."""
    return make_lab({name: text.replace("GATE", str(gate)) for name, text in LAB.items()})


def repx(*args: str, cwd: Path, code: int = 0,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI; assert its exit code and that no traceback reached the user."""
    proc = subprocess.run([sys.executable, "-m", "repx.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


def submit(folder: Path) -> dict[str, str]:
    """``repx build --scheduler slurm --no-wait``; ``{"ok1"|"ok2"|"bad": job id}``."""
    jobs = json.loads(repx("list", "jobs", "--json", cwd=folder).stdout)
    ids = {j["pname"] + str(j["params"].get("n", "")): j["id"] for j in jobs}
    built = json.loads(repx("build", "--scheduler", "slurm", "--no-wait", "--json", "-q",
                            cwd=folder).stdout)
    assert sorted(built["submitted"]) == sorted(ids.values()) and len(ids) == 3
    return ids


def records(folder: Path) -> dict[str, JobRecord]:
    with Store(folder / ".repx", readonly=True) as store:
        return {r.job_id: r for r in store.records()}


def wait_for_slurm(slurm: Slurm, folder: Path) -> None:
    """Until SLURM has ended every job the store recorded a SLURM id for."""
    tasks = [r.slurm_id for r in records(folder).values() if r.slurm_id]
    for parent in sorted({t.split("_")[0] for t in tasks}):
        slurm.wait_final(parent, tasks=sum(t.split("_")[0] == parent for t in tasks),
                         timeout=SLURM_DEADLINE)


def status(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return repx("status", "--lab", "result", "--json", cwd=folder, env=env)


def queued_or_running_on_slurm(folder: Path, ids: dict[str, str]) -> None:
    """While the (gated) jobs wait on SLURM: status, show and cache ls say queued or
    running, as SLURM says; never stale (the build that submitted them is gone)."""
    seen = status(folder)
    assert seen.stderr == ""
    total = json.loads(seen.stdout)["total"]
    assert total["queued"] + total["running"] == 3 and total["stale"] == 0, total
    shown = repx("show", ids["ok1"], "--lab", "result", cwd=folder).stdout
    state_line = next(line for line in shown.splitlines() if line.startswith("status"))
    assert "SLURM job" in state_line and "process is gone" not in state_line, shown
    listed = {r["id"]: r["status"] for r in json.loads(
        repx("cache", "ls", "--json", cwd=folder).stdout)}
    assert set(listed.values()) <= {"queued", "running"} and len(listed) == 3, listed


def test_status_show_and_cache_ls_follow_slurm_and_record_outcomes(
        slurm: Slurm, make_lab, tmp_path: Path) -> None:
    require_nix()
    gate = tmp_path / "release-jobs"
    folder = gated_lab(make_lab, gate)
    ids = submit(folder)
    try:
        queued_or_running_on_slurm(folder, ids)
    finally:
        gate.touch()

    # SLURM finishes them; no build watches, the store still says queued.
    wait_for_slurm(slurm, folder)
    assert {r.status for r in records(folder).values()} == {Status.QUEUED}

    # Without SLURM's commands: one note, and what the store records.
    empty = tmp_path / "no-slurm-bin"
    empty.mkdir()
    blind = status(folder, PATH=str(empty))
    assert blind.stderr.count("repx: note:") == 1, blind.stderr
    assert "3 jobs recorded as queued or running on SLURM, but SLURM's commands " \
           "(squeue, sacct) are not on PATH here" in blind.stderr
    assert json.loads(blind.stdout)["total"]["stale"] == 3
    assert json.loads(blind.stdout)["notes"] == [blind.stderr.strip()[len("repx: note: "):]]

    # `repx status` asks SLURM and records the outcomes.
    total = json.loads(status(folder).stdout)["total"]
    assert (total["succeeded"], total["failed"], total["queued"] + total["running"]) == \
        (2, 1, 0), total
    done = records(folder)
    for name in ("ok1", "ok2"):
        record = done[ids[name]]
        assert record.status is Status.SUCCEEDED and record.exit_code == 0
        assert [f.path for f in record.outputs] == ["out.txt"]
        assert record.outputs[0].size == 2 and record.slurm_id
    bad = done[ids["bad"]]
    assert bad.status is Status.FAILED and bad.exit_code == 3
    assert bad.reason == "exit code 3"
    assert "bad fails on purpose" in Path(bad.stderr_log).read_text()

    # show and cache ls agree with the records, and nothing is asked of SLURM any more.
    listed = {r["id"]: r["status"] for r in json.loads(
        repx("cache", "ls", "--json", cwd=folder).stdout)}
    assert listed == {ids["ok1"]: "succeeded", ids["ok2"]: "succeeded", ids["bad"]: "failed"}
    shown = repx("show", ids["bad"], "--lab", "result", cwd=folder).stdout
    assert "status    failed, exit code 3" in shown
    detail = json.loads(repx("show", ids["ok2"], "--json", cwd=folder).stdout)
    assert detail["status"] == "succeeded" and detail["files"][0]["path"] == "out.txt"
    # The next build takes the recorded jobs as they are.
    again = json.loads(repx("build", "--lab", "result", "--json", "-q", cwd=folder,
                            code=1).stdout)
    assert sorted(again["up_to_date"]) == sorted([ids["ok1"], ids["ok2"]]), again


def test_cache_show_records_a_finished_job_and_gc_keeps_jobs_slurm_runs(
        slurm: Slurm, make_lab, tmp_path: Path) -> None:
    require_nix()
    gate = tmp_path / "release-jobs"
    folder = gated_lab(make_lab, gate)
    ids = submit(folder)
    store = ["--store", str(folder / ".repx")]
    try:
        # No root reaches the jobs, and their build is gone; SLURM still runs them.
        (root,) = json.loads(repx("gc", "roots", "--json", cwd=folder).stdout)
        repx("gc", "unpin", root["name"], cwd=folder)
        out = repx("gc", "--dry-run", *store, cwd=tmp_path).stdout
        assert "would remove 0 jobs" in out and "and 3 running" in out, out
    finally:
        gate.touch()

    wait_for_slurm(slurm, folder)
    # `repx cache show` looks the one job up and records it, and only it.
    shown = repx("cache", "show", ids["ok1"], *store, cwd=tmp_path).stdout
    assert "status    succeeded" in shown
    now = records(folder)
    assert now[ids["ok1"]].status is Status.SUCCEEDED
    assert now[ids["bad"]].status is Status.QUEUED
    # SLURM is done with them all: gc (outside the lab's folder) may remove them now.
    out = repx("gc", "--dry-run", *store, cwd=tmp_path).stdout
    assert "would remove 3 jobs" in out and "running" not in out, out


#: One job that says ``started``, waits for ``GATE`` and says its last line.
TALKER = {
    "run.nix": """
        { pkgs, repx-lib, ... }:
        { name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }
    """,
    "pipe.nix": """
        { repx, pkgs, ... }:
        repx.mkPipe rec { talk = repx.callStage ./talk.nix [ ]; }
    """,
    "talk.nix": """
        { pkgs }:
        {
          pname = "talk"; version = "1";
          outputs = { out = "$out/out.txt"; };
          runDependencies = [ pkgs.coreutils ];
          run = { outputs, ... }: ''
            echo started
            while [ ! -e "GATE" ]; do sleep 0.5; done
            echo "the final line"
            echo finished > "${outputs.out}"
          '';
        }
    """,
}


def next_line(lines: queue.Queue[str], proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line ``proc`` printed, or "" once it exited without one (or at timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            return lines.get(timeout=0.5)
        if proc.poll() is not None and lines.empty():
            return ""
    return ""


def test_log_follow_keeps_following_a_job_only_slurm_watches(
        slurm: Slurm, make_lab, tmp_path: Path) -> None:
    """`repx log -f` of a `--no-wait` job: the build that submitted it is gone, but SLURM
    still runs it, so -f follows until SLURM is done, then records the outcome and exits."""
    require_nix()
    gate = tmp_path / "release-job"
    folder = make_lab({name: text.replace("GATE", str(gate)) for name, text in TALKER.items()})
    built = json.loads(repx("build", "--scheduler", "slurm", "--no-wait", "--json", "-q",
                            cwd=folder).stdout)
    (job_id,) = built["submitted"]
    follower = subprocess.Popen(
        [sys.executable, "-m", "repx.cli", "log", "-f", job_id, "--store",
         str(folder / ".repx")], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout],
                              daemon=True)
    reader.start()
    try:
        # The job runs on SLURM and -f has shown its first line while still following.
        first = next_line(lines, follower, SLURM_DEADLINE)
        assert first == "started\n", (first, follower.poll())
        assert follower.poll() is None
    finally:
        gate.touch()
    try:
        follower.wait(timeout=SLURM_DEADLINE)
    finally:
        follower.kill()
    reader.join(timeout=10)
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    stderr = follower.stderr.read() if follower.stderr else ""
    assert follower.returncode == 0, (follower.returncode, rest, stderr)
    assert rest == ["the final line\n"], (rest, stderr)
    # -f recorded what SLURM said, so it did not end on a job it still thought running.
    assert "Traceback" not in stderr and f"job {job_id} is" not in stderr, stderr
    assert records(folder)[job_id].status is Status.SUCCEEDED
