"""Nothing a lab declares or a job does makes repx touch files outside the job's folder.

* An output template that does not name a file of the job's ``out/`` (``/etc/passwd``,
  ``$out/../../escape``, ``../x``, a list, a number; static, from a ``{ params }:``
  function, or a scatter-gather step's) is a lab build error naming the stage, its file,
  the output and the rule, and the store is not even created.
* A job folder whose ``out/`` and ``repx/`` a previous run replaced with symlinks to another
  directory: the rerun (local, or the SLURM task wrapper) replaces the links, and the
  directory they pointed at is untouched.
* A process a job leaves running (``setsid``, ``nohup … &``, one that drops REPX_JOB_ID from
  its environment) is waited for: the job is recorded only once they are gone, and their
  files are in its manifest. One that never ends is killed at the bound and the job fails
  saying so; Ctrl-C stops such processes with their job.

Every case runs the real CLI on a real lab (Nix, the stage scripts, LMDB).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from repx.engine.slurm.scheduler import wrapper_script
from repx.lab.outputs import OUTPUT_RULE
from repx.store import Status
from tests.buildutil import (
    build,
    list_jobs,
    out_dir,
    process_alive,
    records,
    repx,
    start_build,
    wait_for,
    write_lab,
)
from tests.conftest import require_nix

RUN_NIX = """
    { pkgs, repx-lib, ... }:
    { name = "main"; pipelines = [ ./pipe.nix ]; params = { SWEEP }; }
"""

PIPE_NIX = """
    { repx, ... }:
    repx.mkPipe rec { work = repx.callStage ./stage.nix [ ]; }
"""


def one_stage_lab(root: Path, stage: str, sweep: str = "", **placeholders: str) -> Path:
    """A lab with one run ``main`` (sweeping ``sweep``) over the stage in ``stage.nix``."""
    files = {"run.nix": RUN_NIX.replace("SWEEP", sweep), "pipe.nix": PIPE_NIX,
             "stage.nix": stage}
    return write_lab(root / "lab", files, **placeholders)


# ------------------------------------------------------------------ output templates

SIMPLE_STAGE = """
{ pkgs }:
{
  pname = "leaky";
  outputs = { good = "$out/good.txt"; bad = BAD; };
  run = { outputs, ... }: ''
    echo ok > "$out/good.txt"
  '';
}
"""

DYNAMIC_STAGE = """
{ pkgs }:
{
  pname = "leaky";
  params = { sub = "fine"; };
  outputs = { params }: { bad = "$out/${params.sub}/x.txt"; };
  run = { outputs, ... }: ''
    echo ok > "$out/ok.txt"
  '';
}
"""

SCATTER_STAGE = """
{ pkgs }:
{
  pname = "leaky";
  scatter = {
    outputs = { work__items = "$out/items.json"; worker__arg = { i = 0; }; };
    run = { outputs, ... }: ''
      echo '[{"i": 1}]' > "${outputs.work__items}"
    '';
  };
  steps = {
    part = {
      pname = "part";
      deps = [ ];
      inputs = { worker__item = ""; };
      outputs = { bad = "/tmp/shared-part.txt"; };
      run = { outputs, ... }: ''
        echo part > "$out/part.txt"
      '';
    };
  };
  gather = {
    inputs = { worker__outs = "[]"; };
    outputs = { total = "$out/total.txt"; };
    run = { outputs, ... }: ''
      echo finished > "${outputs.total}"
    '';
  };
}
"""

BAD_TEMPLATES = [
    pytest.param(SIMPLE_STAGE.replace("BAD", '"$out/../../escape"'), "",
                 "output 'bad' = \"$out/../../escape\" climbs out of the job's $out folder",
                 id="escape"),
    pytest.param(SIMPLE_STAGE.replace("BAD", '"/etc/passwd"'), "",
                 "output 'bad' = \"/etc/passwd\" is an absolute path", id="absolute"),
    pytest.param(SIMPLE_STAGE.replace("BAD", '"../x"'), "",
                 "output 'bad' = \"../x\" climbs out of the job's $out folder", id="beside-out"),
    pytest.param(SIMPLE_STAGE.replace("BAD", '[ "$out/a" "$out/b" ]'), "",
                 "output 'bad' is not a path template but a list", id="list"),
    pytest.param(SIMPLE_STAGE.replace("BAD", "3"), "",
                 "output 'bad' is not a path template but a number (3)", id="int"),
    pytest.param(DYNAMIC_STAGE, 'sub = [ "fine" "../.." ];',
                 'for params {"sub":"../.."}: output \'bad\' = "$out/../../x.txt" climbs out',
                 id="dynamic"),
    pytest.param(SCATTER_STAGE, "",
                 "step 'part': output 'bad' = \"/tmp/shared-part.txt\" is an absolute path",
                 id="scatter-gather-step"),
]


@pytest.mark.nix
@pytest.mark.parametrize(("stage", "sweep", "problem"), BAD_TEMPLATES)
def test_output_outside_out_is_a_lab_build_error(tmp_path: Path, stage: str, sweep: str,
                                                 problem: str) -> None:
    """The build stops before any job with one message: the stage, its file, the output,
    what is wrong, the rule. No store is created and no job folder written."""
    require_nix()
    folder = one_stage_lab(tmp_path, stage, sweep)
    store = tmp_path / ".repx"
    result = build(folder, store, expect=2)
    message = result.stderr
    assert "Traceback" not in message, message
    assert f"stage 'leaky' (file {folder / 'stage.nix'})" in message, message
    assert problem in message, message
    assert OUTPUT_RULE in message, message
    assert not store.exists(), "a lab that cannot build must not create a store"
    assert not (tmp_path / "escape").exists() and not (tmp_path / "x").exists()


@pytest.mark.nix
def test_scatter_shape_and_outputs_inside_out_still_build(tmp_path: Path) -> None:
    """The rule rejects only what leaves ``out/``: ``${out}``, a relative path, ``..`` that
    stays inside and the scatter's ``worker__arg`` shape all build and run."""
    require_nix()
    stage = SCATTER_STAGE.replace('"/tmp/shared-part.txt"', '"sub/../part.txt"').replace(
        'outputs = { total = "$out/total.txt"; };',
        'outputs = { total = "\\${out}/total.txt"; folder = "$out"; rel = "total.txt"; };')
    folder = one_stage_lab(tmp_path, stage)
    store = tmp_path / ".repx"
    result = build(folder, store)
    (job,) = list_jobs(folder)
    assert result.executed == [job["id"]]
    assert (out_dir(store, job["id"]) / "total.txt").read_text() == "finished\n"


# ------------------------------------------------------------------ a symlinked job folder

SWAPPER = """
{ pkgs }:
{
  pname = "swapper";
  params = { victim = "@VICTIM@"; marker = "@MARKER@"; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    echo fresh > "${outputs.result}"
    if [ -e "${params.marker}" ]; then
      job=$(dirname "$out")
      cd /
      rm -rf -- "$out" "$job/repx"
      ln -s "${params.victim}" "$out"
      ln -s "${params.victim}" "$job/repx"
    fi
  '';
}
"""


def assert_verify_clean(folder: Path, store: Path) -> None:
    """``repx cache verify`` finds every recorded output as recorded (exit 0, no problem)."""
    verify = repx("cache", "verify", "--json", "--store", str(store), cwd=folder)
    results = json.loads(verify.stdout)
    assert results and all(not r["problems"] for r in results), verify.stdout


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content (the state a victim must keep)."""
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.nix
def test_rerun_replaces_a_symlinked_out_and_repx_folder_not_what_they_point_at(
        tmp_path: Path) -> None:
    """A job replaced its ``out/`` and ``repx/`` with links to another directory. The forced
    rerun removes the links themselves: the header does not empty the directory, the
    engine writes no inputs, params or logs into it, and the job's outputs are in a real
    ``out/`` again."""
    require_nix()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "result.txt").write_text("the victim's own result\n")
    (victim / "precious.txt").write_text("keep me\n")
    (victim / "stdout.log").write_text("a log that is not repx's\n")
    before = tree(victim)
    marker = tmp_path / "marker"
    marker.touch()
    folder = one_stage_lab(tmp_path, SWAPPER, VICTIM=str(victim), MARKER=str(marker))
    store = tmp_path / ".repx"
    build(folder, store)
    (job,) = list_jobs(folder)
    job_dir = store / "outputs" / job["id"]
    assert (job_dir / "out").is_symlink() and (job_dir / "repx").is_symlink()

    marker.unlink()
    again = build(folder, store, "--force", "main")
    assert again.executed == [job["id"]]
    assert tree(victim) == before, "the rerun touched the directory the links pointed at"
    for name in ("out", "repx"):
        assert not (job_dir / name).is_symlink() and (job_dir / name).is_dir()
    assert (job_dir / "out" / "result.txt").read_text() == "fresh\n"
    assert (job_dir / "repx" / "params.json").is_file()
    assert_verify_clean(folder, store)


def test_slurm_wrapper_replaces_a_symlinked_job_folder_without_following_it(
        tmp_path: Path) -> None:
    """The SLURM task wrapper (run by bash as a task would run it) does on the node what the
    local engine does: links in place of the job folder's ``out/`` and ``repx/`` are removed
    and real directories made; the job gets REPX_JOB_ID."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me\n")
    (victim / "stdout.log").write_text("a log that is not repx's\n")
    before = tree(victim)
    outputs_root = tmp_path / "outputs"
    job_dir = outputs_root / "job-1"
    job_dir.mkdir(parents=True)
    (job_dir / "out").symlink_to(victim)
    (job_dir / "repx").symlink_to(victim)
    script = tmp_path / "job.sh"
    script.write_text('#!/bin/bash\necho "$REPX_JOB_ID" > "$1/result.txt"\n')
    script.chmod(0o755)
    table = tmp_path / "table.tsv"
    table.write_text(f"job-1\t{script}\t{{}}\t{{}}\n")
    wrapper = tmp_path / "task.sbatch"
    wrapper.write_text(wrapper_script("#SBATCH --job-name=t", str(table), str(outputs_root)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "REPX_"))}
    done = subprocess.run(["bash", str(wrapper)], env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert tree(victim) == before, "the wrapper wrote through the links"
    for name in ("out", "repx"):
        assert not (job_dir / name).is_symlink() and (job_dir / name).is_dir()
    assert (job_dir / "out" / "result.txt").read_text() == "job-1\n"
    assert (job_dir / "repx" / "exit_code").read_text() == "0\n"


# ------------------------------------------------------------------ leftover processes

LATE_WRITERS = """
{ pkgs }:
{
  pname = "late";
  runDependencies = [ pkgs.util-linux ];
  outputs = { result = "$out/result.txt"; };
  run = { outputs, ... }: ''
    # A new session (REPX_JOB_ID inherited), a nohup'd child, and one that drops
    # REPX_JOB_ID but stays in the job's session: all outlive this script.
    setsid bash -c 'sleep 1; echo late > "$1/late"' _ "$out" &
    nohup bash -c 'sleep 1; echo nohup > "$1/nohup"' _ "$out" > /dev/null 2>&1 &
    env -u REPX_JOB_ID bash -c 'sleep 1; echo quiet > "$1/quiet"' _ "$out" &
    echo early > "${outputs.result}"
  '';
}
"""


@pytest.mark.nix
def test_job_ends_when_the_processes_it_started_have_ended(tmp_path: Path) -> None:
    """The job is recorded succeeded only after its leftovers wrote their files (they are
    in its manifest), its duration covers their second, and ``cache verify`` is clean."""
    require_nix()
    folder = one_stage_lab(tmp_path, LATE_WRITERS)
    store = tmp_path / ".repx"
    result = build(folder, store)
    (job,) = list_jobs(folder)
    assert result.executed == [job["id"]]
    out = out_dir(store, job["id"])
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "result.txt": "early\n", "late": "late\n", "nohup": "nohup\n", "quiet": "quiet\n"}
    record = records(store)[job["id"]]
    assert record.status is Status.SUCCEEDED
    assert sorted(f.path for f in record.outputs) == ["late", "nohup", "quiet", "result.txt"]
    assert record.started is not None and record.finished is not None
    assert record.finished - record.started >= 1.0
    assert_verify_clean(folder, store)


NEVER_ENDING = """
{ pkgs }:
{
  pname = "daemon";
  runDependencies = [ pkgs.util-linux ];
  params = { pids = "@PIDS@"; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    setsid bash -c 'echo "$$" > "$1/daemon"; exec sleep 1000' _ "${params.pids}" &
    echo finished > "${outputs.result}"
  '';
}
"""


@pytest.mark.nix
def test_a_leftover_that_never_ends_is_killed_at_the_bound_and_the_job_fails(
        tmp_path: Path) -> None:
    """With REPX_DESCENDANT_TIMEOUT=1 the leftover ``sleep 1000`` is killed a second after
    the script ended, and the job is recorded failed with a reason naming it and the
    setting."""
    require_nix()
    pids = tmp_path / "pids"
    pids.mkdir()
    folder = one_stage_lab(tmp_path, NEVER_ENDING, PIDS=str(pids))
    store = tmp_path / ".repx"
    started = time.monotonic()
    result = build(folder, store, expect=1, env={"REPX_DESCENDANT_TIMEOUT": "1"})
    took = time.monotonic() - started
    (job,) = list_jobs(folder)
    daemon = int((pids / "daemon").read_text())
    assert not process_alive(daemon), "the leftover process outlived the build"
    assert result["failed"] == [job["id"]]
    (failure,) = result["failures"]
    reason = failure["reason"]
    assert "was still running 1 s later and killed" in reason, reason
    assert f"pid {daemon} (sleep 1000)" in reason, reason
    assert "REPX_DESCENDANT_TIMEOUT" in reason, reason
    record = records(store)[job["id"]]
    assert record.status is Status.FAILED and record.reason == reason
    assert took < 60, f"the build waited {took:.0f} s: the bound was not applied"


CTRL_C = """
{ pkgs }:
{
  pname = "interrupted";
  runDependencies = [ pkgs.util-linux ];
  params = { pids = "@PIDS@"; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    # A double fork: the setsid'd process is an orphan while the job still runs.
    ( setsid bash -c 'echo "$$" > "$1/daemon"; exec sleep 1000' _ "${params.pids}" & )
    sleep 30
    echo finished > "${outputs.result}"
  '';
}
"""


@pytest.mark.nix
def test_ctrl_c_stops_the_processes_a_job_left_in_other_sessions(tmp_path: Path) -> None:
    """Ctrl-C during the job: its own process group and the process it moved to another
    session are both stopped; the job is recorded cancelled."""
    require_nix()
    pids = tmp_path / "pids"
    pids.mkdir()
    folder = one_stage_lab(tmp_path, CTRL_C, PIDS=str(pids))
    store = tmp_path / ".repx"
    running = start_build(folder, store, name="ctrl-c")
    daemon = 0
    try:
        wait_for(lambda: (pids / "daemon").is_file() and (pids / "daemon").read_text() != "",
                 "the job to start its setsid'd process")
        daemon = int((pids / "daemon").read_text())
        os.kill(running.proc.pid, signal.SIGINT)
        result = running.wait(timeout=30)
        survived = process_alive(daemon)
    finally:
        running.kill()
        if daemon and process_alive(daemon):
            os.kill(daemon, signal.SIGKILL)
    assert not survived, "the setsid'd process survived the interrupted build"
    assert result.code == 130, result.stderr
    (job,) = list_jobs(folder)
    assert result["cancelled"] == [job["id"]]
    assert records(store)[job["id"]].status is Status.CANCELLED
