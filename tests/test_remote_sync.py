"""``repx build --target`` over time: a changed param ships and runs only what changed,
``status``/``log``/``cancel`` and Ctrl-C act on the remote, and a transfer cut in the middle
(ssh killed) is resumed by the next build. A real sshd (tests/ssh/sshd.sh), no Nix there."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.buildutil import REPX, build, repx, repx_env, write_lab
from tests.conftest import require_nix
from tests.remoteutil import CHAIN_PIPE, COPY_CONSUMER, remote_jobs, shipped_line
from tests.ssh_target import SshRig, ssh_rig_fixture

ssh_rig = ssh_rig_fixture()

SHARED = "shared"


@pytest.fixture(scope="module")
def shared_base(ssh_rig: SshRig) -> str:
    require_nix()
    base = ssh_rig.fresh_base_path("r1-sync")
    yield base
    ssh_rig.wipe(base)


# ------------------------------------------------------------------- a changed param

RUN = """
{ pkgs, repx-lib, ... }:
{
  name = "main";
  pipelines = [ ./pipe.nix ];
  params = { a = [ @SWEEP@ ]; };
}
"""

PRODUCER = """
{ pkgs }:
{
  pname = "producer";
  params = { a = 0; blob = ./data.bin; };
  outputs = { data = "$out/data.txt"; };
  run = { outputs, params, ... }: ''
    @SLEEP@
    echo "WORD ${toString params.a}" > "${outputs.data}"
  '';
}
"""



def _chain_lab(folder: Path, sweep: str, *, sleep: str = "", data: bytes = b"data\n") -> Path:
    write_lab(folder, {"run.nix": RUN, "pipe.nix": CHAIN_PIPE, "producer.nix": PRODUCER,
                       "consumer.nix": COPY_CONSUMER}, SWEEP=sweep, SLEEP=sleep)
    (folder / "data.bin").write_bytes(data)
    return folder


def test_a_changed_param_ships_and_runs_only_what_changed(ssh_rig: SshRig, shared_base: str,
                                                          tmp_path: Path) -> None:
    folder = _chain_lab(tmp_path / "lab", "1 2")
    ssh_rig.write_target(folder, SHARED, base_path=shared_base)
    first = build(folder, tmp_path / "unused", "--target", SHARED)
    assert len(first.executed) == 4
    _chain_lab(folder, "1 2 3")
    local = build(folder, tmp_path / "local")  # what a local build of the new lab runs
    second = build(folder, tmp_path / "unused", "--target", SHARED)
    # Only the new combination's two jobs run; the earlier four are up to date.
    assert len(second.executed) == 2 and set(second.executed) <= set(local.executed)
    assert sorted(second["up_to_date"]) == sorted(first.executed)
    # Only the store paths the new lab has and the remote lacks were sent: the lab's own
    # description, not the stages' scripts and packages.
    summary = shipped_line(second.stderr)
    match = re.search(r"shipped (\d+) store paths? of (\d+)", summary)
    assert match is not None, summary
    sent, total = int(match.group(1)), int(match.group(2))
    assert 0 < sent <= 2 < total, summary
    # A remote gc keeping only the current lab (the last shipped) drops the first lab's
    # jobs, then the shipped lab they alone used and its own store paths; the current lab
    # stays whole and built.
    labs = Path(shared_base) / "labs"
    assert len([p for p in labs.iterdir() if p.is_dir()]) == 2
    collected = repx("gc", "--target", SHARED, "--keep-recent", "0", "-y", cwd=folder)
    assert "removed 1 shipped lab and" in collected.stderr, collected.stderr
    assert len([p for p in labs.iterdir() if p.is_dir()]) == 1
    assert len(list((Path(shared_base) / "paths").iterdir())) == total
    third = build(folder, tmp_path / "unused", "--target", SHARED)
    assert third.executed == [] and "shipped nothing" in shipped_line(third.stderr)


# ------------------------------------------------------------ status, log, Ctrl-C, cancel


def test_status_log_and_interrupt_act_on_the_remote(ssh_rig: SshRig, tmp_path: Path) -> None:
    base = ssh_rig.fresh_base_path("r1-interrupt")
    marker = f"remote-sleep-{os.getpid()}"
    # The job's sleep is told apart from any other by its length; "[s]leep …" matches it
    # but not the remote shell that runs pgrep.
    duration = f"317.{os.getpid()}"
    pattern = f"[s]leep {duration}"
    folder = _chain_lab(tmp_path / "lab", "1", sleep=f'echo "{marker} started"; sleep {duration}')
    ssh_rig.write_target(folder, "t", base_path=base)
    try:
        out = (tmp_path / "build.out").open("wb")
        err = (tmp_path / "build.err").open("wb")
        process = subprocess.Popen([*REPX, "build", "--target", "t"], cwd=folder,
                                   env=repx_env(), stdout=out, stderr=err,
                                   start_new_session=True)
        deadline = time.monotonic() + 120
        running = False
        while time.monotonic() < deadline and process.poll() is None and not running:
            time.sleep(0.3)
            running = ssh_rig.ssh(["pgrep", "-f", pattern], check=False).returncode == 0
        assert running, (tmp_path / "build.err").read_text()
        status = json.loads(repx("status", "--json", "--target", "t", cwd=folder).stdout)
        assert status["total"]["running"] == 1 and status["store"] == f"{base}/store"
        rows = json.loads(repx("cache", "ls", "--json", "--target", "t", cwd=folder).stdout)
        producer = next(row for row in rows if row["stage"] == "producer")
        log = repx("log", "--target", "t", producer["id"], cwd=folder)
        assert f"{marker} started" in log.stdout
        # Ctrl-C here: the remote build cancels its job, records it, and ends with 130.
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=60)
        out.close()
        err.close()
        assert code == 130, (tmp_path / "build.err").read_text()
        assert ssh_rig.ssh(["pgrep", "-f", pattern], check=False).returncode == 1
        assert remote_jobs(folder, "t")[producer["id"]] == "cancelled"
        # repx cancel over the target reaches the remote store (no SLURM jobs: none open).
        cancelled = repx("cancel", "--target", "t", cwd=folder)
        assert "0 SLURM jobs cancelled" in cancelled.stdout
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        ssh_rig.ssh(["pkill", "-f", pattern], check=False)
        ssh_rig.wipe(base)


# ---------------------------------------------------------- a cut connection, then resume


def test_a_cut_transfer_is_resumed_by_the_next_build(ssh_rig: SshRig, tmp_path: Path) -> None:
    base = ssh_rig.fresh_base_path("r1-cut")
    folder = _chain_lab(tmp_path / "lab", "1", data=os.urandom(64 << 20))
    ssh_rig.write_target(folder, "t", base_path=base)
    incoming = Path(base) / "paths"
    try:
        cut = False
        for _attempt in range(5):
            process = subprocess.Popen([*REPX, "build", "--target", "t"], cwd=folder,
                                       env=repx_env(), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and process.poll() is None:
                partial = list(incoming.glob(".incoming-*")) if incoming.exists() else []
                if partial and any(p.name.endswith("data.bin") for p in
                                   partial[0].joinpath("nix", "store").glob("*")):
                    os.killpg(process.pid, signal.SIGKILL)  # repx and its ssh, mid-tar
                    break
                time.sleep(0.002)
            process.wait(timeout=60)
            if process.returncode == -signal.SIGKILL:
                cut = True
                break
        assert cut, "the transfer finished every time before it could be cut"
        assert not any(p.name.endswith("data.bin") for p in incoming.iterdir()), \
            "a cut store path must not look complete"
        resumed = build(folder, tmp_path / "unused", "--target", "t")
        assert len(resumed.executed) == 2 and resumed["failed"] == []
        assert not list(incoming.glob(".incoming-*")), "the cut transfer's leftover stays"
        data = next(p for p in incoming.iterdir() if p.name.endswith("data.bin"))
        assert data.read_bytes() == (folder / "data.bin").read_bytes()
    finally:
        ssh_rig.wipe(base)




def test_no_wait_leaves_the_build_running_there_until_cancel(ssh_rig: SshRig,
                                                              tmp_path: Path) -> None:
    base = ssh_rig.fresh_base_path("r1-detach")
    duration = f"318.{os.getpid()}"
    pattern = f"[s]leep {duration}"
    folder = _chain_lab(tmp_path / "lab", "1", sleep=f"sleep {duration}")
    ssh_rig.write_target(folder, "t", base_path=base)
    try:
        started = repx("build", "--target", "t", "--no-wait", cwd=folder)
        assert "the build runs there on its own" in started.stderr
        # The ssh session is over; the remote repx and its job still run.
        deadline = time.monotonic() + 60
        while ssh_rig.ssh(["pgrep", "-f", pattern], check=False).returncode != 0:
            assert time.monotonic() < deadline, started.stderr
            time.sleep(0.3)
        status = json.loads(repx("status", "--json", "--target", "t", cwd=folder).stdout)
        assert status["total"]["running"] == 1
        cancelled = repx("cancel", "--target", "t", cwd=folder)
        assert "stopped the detached build" in cancelled.stdout
        assert ssh_rig.ssh(["pgrep", "-f", pattern], check=False).returncode == 1
        assert set(remote_jobs(folder, "t").values()) == {"cancelled"}
    finally:
        ssh_rig.ssh(["pkill", "-f", pattern], check=False)
        ssh_rig.wipe(base)
