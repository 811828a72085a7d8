"""The execution contract (nix/lib/internal/script.nix), point by point, on job processes that
``repx build`` starts: arguments, ``$inputs``, working directory, the cleaning of ``$out``,
the PATH, ``set -euxo pipefail``, per-job logs and the input-readiness wait.

test_script_contract.py runs a script by hand; these tests check that the engine calls it
the way the contract says (right arguments, right files, right environment).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from repx.store import Status
from tests.buildutil import (
    build,
    by_pname,
    list_jobs,
    out_dir,
    records,
    repx,
    start_build,
    wait_for,
    write_lab,
)
from tests.conftest import require_nix

RUN_ONE = """
{ pkgs, repx-lib, ... }:
{ name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }
"""

PROBE_PIPE = """
{ repx, pkgs, ... }:
repx.mkPipe rec {
  producer = repx.callStage ./producer.nix [ ];
  probe = repx.callStage ./probe.nix [ producer ];
}
"""

PRODUCER = """
{ pkgs }:
{
  pname = "producer";
  outputs = { data = "$out/data.txt"; };
  run = { outputs, ... }: ''
    echo "payload" > "${outputs.data}"
  '';
}
"""

# Records what the job sees. "$tool" hides python3 from the build-time check (it is on
# the host's /usr/bin): at run time it must still not be found, with exit code 127.
PROBE = """
{ pkgs }:
{
  pname = "probe";
  params = { label = "x y"; };
  inputs = { data = ""; };
  outputs = { result = "$out/result.txt"; };
  runDependencies = [ pkgs.gawk ];
  run = { inputs, outputs, params, ... }: ''
    printf '%s\\n' "$1" "$2" "$3" > args.txt
    printf '%s\\n' "''${inputs[data]}" "''${params[label]}" > arrays.txt
    pwd > cwd.txt
    printf '%s\\n' "$PATH" > path.txt
    awk 'BEGIN { print "awk runs" }' > awk.txt
    tool=python3
    if "$tool" -c pass 2> /dev/null; then
      echo found > tool.txt
    else
      echo "missing $?" > tool.txt
    fi
    if read -r line; then echo "stdin: $line" > stdin.txt; else echo "stdin: eof" > stdin.txt; fi
    label="${params.label}"
    { cat "${inputs.data}"; echo "$label"; } > "${outputs.result}"
  '';
}
"""


@pytest.fixture
def probed(tmp_path: Path) -> tuple[Path, dict, dict]:
    """A built probe lab: (store, the probe job, the producer job)."""
    require_nix()
    folder = write_lab(tmp_path / "lab", {"run.nix": RUN_ONE, "pipe.nix": PROBE_PIPE,
                                          "producer.nix": PRODUCER, "probe.nix": PROBE})
    store = tmp_path / ".repx"
    build(folder, store)
    jobs = list_jobs(folder)
    return store, by_pname(jobs, "probe")[0], by_pname(jobs, "producer")[0]


@pytest.mark.nix
def test_arguments_input_and_param_arrays_and_cwd(probed: tuple[Path, dict, dict]) -> None:
    store, probe, producer = probed
    out = out_dir(store, probe["id"])
    meta = store / "outputs" / probe["id"] / "repx"
    args = (out / "args.txt").read_text().splitlines()
    assert args == [str(out), str(meta / "inputs.json"), str(meta / "params.json")]
    data = str(out_dir(store, producer["id"]) / "data.txt")
    assert json.loads((meta / "inputs.json").read_text()) == {"data": data}
    assert json.loads((meta / "params.json").read_text()) == {"label": "x y"}
    assert (out / "arrays.txt").read_text().splitlines() == [data, "x y"]
    assert (out / "cwd.txt").read_text().strip() == str(out)
    assert (out / "stdin.txt").read_text() == "stdin: eof\n"  # stdin is /dev/null
    assert (out / "result.txt").read_text() == "payload\nx y\n"


@pytest.mark.nix
def test_path_holds_only_run_dependencies_and_core_tools(
        probed: tuple[Path, dict, dict]) -> None:
    store, probe, _ = probed
    out = out_dir(store, probe["id"])
    dirs = (out / "path.txt").read_text().strip().split(":")
    assert all(re.fullmatch(r"/nix/store/[a-z0-9]{32}-host-[a-z0-9]+/bin", d) for d in dirs), dirs
    names = {d.split("-host-", 1)[1].removesuffix("/bin") for d in dirs}
    assert names == {"gawk", "bash", "coreutils", "findutils", "gnused", "gnugrep", "jq"}
    assert (out / "awk.txt").read_text() == "awk runs\n"
    # python3 is installed on this machine, but not declared: not found at run time.
    assert (out / "tool.txt").read_text() == "missing 127\n"


@pytest.mark.nix
def test_undeclared_command_fails_the_lab_build_naming_stage_and_command(
        tmp_path: Path) -> None:
    require_nix()
    stage = """
    { pkgs }:
    {
      pname = "needs-awk";
      outputs = { result = "$out/result.txt"; };
      run = { outputs, ... }: ''
        awk 'BEGIN { print 1 }' > "${outputs.result}"
      '';
    }
    """
    pipe = """
    { repx, pkgs, ... }:
    repx.mkPipe rec { work = repx.callStage ./stage.nix [ ]; }
    """
    folder = write_lab(tmp_path / "lab", {"run.nix": RUN_ONE, "pipe.nix": pipe,
                                          "stage.nix": stage})
    store = tmp_path / ".repx"
    result = repx("build", "--store", str(store), cwd=folder, check=False)
    assert result.returncode == 2
    assert "stage 'needs-awk'" in result.stderr
    assert "runDependencies do not provide: awk" in result.stderr
    assert "Traceback" not in result.stderr
    assert records(store) == {}


ONE_STAGE_PIPE = """
{ repx, pkgs, ... }:
repx.mkPipe rec { work = repx.callStage ./stage.nix [ ]; }
"""


@pytest.mark.nix
def test_failing_command_inside_a_pipeline_fails_the_job(tmp_path: Path) -> None:
    """pipefail + errexit: ``false | cat`` stops the script; xtrace: the log shows it."""
    require_nix()
    stage = """
    { pkgs }:
    {
      pname = "pipefail";
      outputs = { result = "$out/result.txt"; };
      run = { outputs, ... }: ''
        echo "before" | cat > before.txt
        false | cat
        echo "after" > "${outputs.result}"
      '';
    }
    """
    folder = write_lab(tmp_path / "lab", {"run.nix": RUN_ONE, "pipe.nix": ONE_STAGE_PIPE,
                                          "stage.nix": stage})
    store = tmp_path / ".repx"
    result = build(folder, store, expect=1)
    (job,) = list_jobs(folder)
    assert result["failed"] == [job["id"]]
    out = out_dir(store, job["id"])
    assert (out / "before.txt").is_file() and not (out / "result.txt").exists()
    record = records(store)[job["id"]]
    assert record.status is Status.FAILED and record.exit_code == 1
    stderr = Path(record.stderr_log).read_text()
    assert "+ false" in stderr and "+ cat" in stderr and "after" not in stderr


@pytest.mark.nix
def test_out_is_emptied_before_a_rerun_except_slurm_logs(tmp_path: Path) -> None:
    require_nix()
    marker = tmp_path / "fail-marker"
    marker.touch()
    stage = """
    { pkgs }:
    {
      pname = "cleaned";
      params = { marker = "@MARKER@"; };
      outputs = { result = "$out/result.txt"; };
      run = { outputs, params, ... }: ''
        seen=$(ls -A)
        echo "$seen" > listing.txt
        if [ -e "${params.marker}" ]; then echo "marker present" >&2; exit 4; fi
        echo finished > "${outputs.result}"
      '';
    }
    """
    folder = write_lab(tmp_path / "lab", {"run.nix": RUN_ONE, "pipe.nix": ONE_STAGE_PIPE,
                                          "stage.nix": stage}, MARKER=str(marker))
    store = tmp_path / ".repx"
    first = build(folder, store, expect=1)
    (job,) = list_jobs(folder)
    assert first["failed"] == [job["id"]]
    stderr_log = store / "outputs" / job["id"] / "repx" / "stderr.log"
    assert "marker present" in stderr_log.read_text().splitlines()
    out = out_dir(store, job["id"])
    (out / "stale.txt").write_text("from the failed attempt")
    (out / "sub").mkdir()
    (out / "sub" / "old.txt").write_text("old")
    (out / ".hidden").write_text("old")
    (out / "slurm-1.out").write_text("scheduler log")
    marker.unlink()
    second = build(folder, store)
    assert second.executed == [job["id"]]
    assert sorted(p.name for p in out.iterdir()) == ["listing.txt", "result.txt",
                                                     "slurm-1.out"]
    # What the job saw when it started: only the SLURM log survived the cleaning.
    assert (out / "listing.txt").read_text().split() == ["slurm-1.out"]
    assert (out / "slurm-1.out").read_text() == "scheduler log"
    record = records(store)[job["id"]]
    assert record.status is Status.SUCCEEDED
    assert sorted(f.path for f in record.outputs) == ["listing.txt", "result.txt"]
    # The logs are the rerun's alone (truncated, not appended to).
    assert "marker present" not in Path(record.stderr_log).read_text().splitlines()


@pytest.mark.nix
def test_each_job_has_its_own_logs_never_interleaved(tmp_path: Path) -> None:
    require_nix()
    run = """
    { pkgs, repx-lib, ... }:
    { name = "main"; pipelines = [ ./pipe.nix ]; params = { i = [ 1 2 3 4 ]; }; }
    """
    stage = """
    { pkgs }:
    {
      pname = "chatty";
      params = { i = 0; };
      outputs = { result = "$out/result.txt"; };
      run = { outputs, params, ... }: ''
        i="${toString params.i}"
        for k in $(seq 1 300); do
          echo "out $i $k"
          echo "err $i $k" >&2
          if (( k % 100 == 0 )); then sleep 0.05; fi
        done
        echo "$i" > "${outputs.result}"
      '';
    }
    """
    folder = write_lab(tmp_path / "lab", {"run.nix": run, "pipe.nix": ONE_STAGE_PIPE,
                                          "stage.nix": stage})
    store = tmp_path / ".repx"
    result = build(folder, store, "-j", "4")
    jobs = list_jobs(folder)
    assert sorted(result.executed) == sorted(j["id"] for j in jobs)
    stored = records(store)
    for job in jobs:
        i = job["params"]["i"]
        meta = store / "outputs" / job["id"] / "repx"
        record = stored[job["id"]]
        assert record.stdout_log == str(meta / "stdout.log")
        assert record.stderr_log == str(meta / "stderr.log")
        stdout = (meta / "stdout.log").read_text().splitlines()
        assert stdout == [f"out {i} {k}" for k in range(1, 301)]
        stderr = (meta / "stderr.log").read_text().splitlines()
        errs = [line for line in stderr if line.startswith("err ")]
        assert errs == [f"err {i} {k}" for k in range(1, 301)]
        # The xtrace lines are this job's too (one "+": the body runs inline, not in eval).
        traced = [line for line in stderr if line.startswith("+ echo 'out ")]
        assert traced and all(line.startswith(f"+ echo 'out {i} ") for line in traced)


WAITER = """
{ pkgs }:
{
  pname = "waiter";
  inputs = { data = "@DATA@"; };
  outputs = { result = "$out/result.txt"; };
  run = { inputs, outputs, ... }: ''
    cat "${inputs.data}" > "${outputs.result}"
  '';
}
"""


@pytest.mark.nix
def test_missing_input_fails_after_the_readiness_timeout(tmp_path: Path) -> None:
    require_nix()
    data = tmp_path / "never.txt"
    folder = write_lab(tmp_path / "lab", {"run.nix": RUN_ONE, "pipe.nix": ONE_STAGE_PIPE,
                                          "stage.nix": WAITER}, DATA=str(data))
    store = tmp_path / ".repx"
    result = build(folder, store, expect=1)  # REPX_INPUT_TIMEOUT=1 (buildutil)
    (job,) = list_jobs(folder)
    assert result["failed"] == [job["id"]]
    message = f"repx: inputs not readable after 1 s: data={data}"
    record = records(store)[job["id"]]
    assert record.status is Status.FAILED and record.exit_code == 1
    assert message in Path(record.stderr_log).read_text()
    assert message in result.stderr  # the failure report shows the stderr tail


@pytest.mark.nix
def test_job_waits_for_an_input_that_appears_late(tmp_path: Path) -> None:
    require_nix()
    data = tmp_path / "late.txt"
    folder = write_lab(tmp_path / "lab", {"run.nix": RUN_ONE, "pipe.nix": ONE_STAGE_PIPE,
                                          "stage.nix": WAITER}, DATA=str(data))
    store = tmp_path / ".repx"
    running = start_build(folder, store, env={"REPX_INPUT_TIMEOUT": "20"})
    try:
        wait_for(lambda: Status.RUNNING in {r.status for r in records(store).values()},
                 "the waiter job to start")
        data.write_text("arrived late\n")
        result = running.wait(timeout=30)
    finally:
        running.kill()
    assert result.code == 0, result.stderr
    (job,) = list_jobs(folder)
    assert result.executed == [job["id"]]
    assert (out_dir(store, job["id"]) / "result.txt").read_text() == "arrived late\n"


SELF = """
{ pkgs }:
{
  pname = "self";
  outputs = { result = "$out/stat.txt"; };
  run = { outputs, ... }: ''
    read -r -a stat < /proc/self/stat
    echo "$$ ''${stat[0]} ''${stat[3]} ''${stat[4]} ''${stat[5]}" > "${outputs.result}"
  '';
}
"""


@pytest.mark.nix
def test_job_is_a_direct_child_of_repx_in_a_session_of_its_own(tmp_path: Path) -> None:
    """One bash process per job, started by repx itself (no wrapper in between), leading
    its own session and process group (what lets Ctrl-C stop all of a job, and only it)."""
    require_nix()
    folder = write_lab(tmp_path / "lab", {"run.nix": RUN_ONE, "pipe.nix": ONE_STAGE_PIPE,
                                          "stage.nix": SELF})
    store = tmp_path / ".repx"
    running = start_build(folder, store)
    try:
        result = running.wait(timeout=60)
    finally:
        running.kill()
    assert result.code == 0, result.stderr
    (job,) = list_jobs(folder)
    shell, pid, ppid, pgrp, sid = map(
        int, (out_dir(store, job["id"]) / "stat.txt").read_text().split())
    assert pid == shell  # `read` is a builtin: /proc/self is the job's bash
    assert ppid == running.proc.pid
    assert pgrp == sid == pid
