"""A failing job: what is blocked, what still runs, what the user is told, what the store
keeps, and that fixing the cause reruns only the failed job and its downstream.

The lab has two runs. ``a-fail`` holds ``flaky`` (fails while a marker file exists) and its
downstream ``down``; ``b-other`` holds four independent jobs. Runs are started in the lab's
order, so with ``-j 1`` the failure happens before any independent job starts, which makes
fail-fast observable: those jobs end up "not started".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repx.store import Status
from tests.buildutil import build, by_pname, list_jobs, log_lines, records, repx, write_lab
from tests.conftest import require_nix

LAB = """
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "1.0";
  runs = {
    a-fail = repx-lib.callRun ./run-fail.nix [ ];
    b-other = repx-lib.callRun ./run-other.nix [ ];
  };
}
"""

FILES = {
    "lab.nix": LAB,
    "run-fail.nix": """
        { pkgs, repx-lib, ... }:
        { name = "a-fail"; pipelines = [ ./pipe-fail.nix ]; params = { }; }
    """,
    "run-other.nix": """
        { pkgs, repx-lib, ... }:
        { name = "b-other"; pipelines = [ ./pipe-other.nix ]; params = { i = [ 1 2 3 4 ]; }; }
    """,
    "pipe-fail.nix": """
        { repx, ... }:
        repx.mkPipe rec {
          flaky = repx.callStage ./flaky.nix [ ];
          down = repx.callStage ./down.nix [ flaky ];
        }
    """,
    "pipe-other.nix": """
        { repx, ... }:
        repx.mkPipe rec { other = repx.callStage ./other.nix [ ]; }
    """,
    "flaky.nix": """
        { pkgs }:
        {
          pname = "flaky";
          params = { marker = "@MARKER@"; log = "@LOG@"; };
          outputs = { data = "$out/data.txt"; };
          run = { outputs, params, ... }: ''
            echo "flaky" >> "${params.log}"
            if [ -e "${params.marker}" ]; then
              echo "boom: marker present" >&2
              exit 3
            fi
            echo fixed > "${outputs.data}"
          '';
        }
    """,
    "down.nix": """
        { pkgs }:
        {
          pname = "down";
          params = { log = "@LOG@"; };
          inputs = { data = ""; };
          outputs = { result = "$out/result.txt"; };
          run = { inputs, outputs, params, ... }: ''
            echo "down" >> "${params.log}"
            cat "${inputs.data}" > "${outputs.result}"
          '';
        }
    """,
    "other.nix": """
        { pkgs }:
        {
          pname = "other";
          params = { i = 0; log = "@LOG@"; };
          outputs = { result = "$out/result.txt"; };
          run = { outputs, params, ... }: ''
            sleep 0.1
            echo "other ${toString params.i}" >> "${params.log}"
            echo "${toString params.i}" > "${outputs.result}"
          '';
        }
    """,
}


class FailLab:
    def __init__(self, root: Path) -> None:
        require_nix()
        self.marker = root / "marker"
        self.marker.touch()
        self.log = root / "executions.log"
        self.store = root / ".repx"
        self.folder = write_lab(root / "lab", FILES, MARKER=str(self.marker),
                                LOG=str(self.log))

    def ids(self, pname: str) -> list[str]:
        return sorted(j["id"] for j in by_pname(list_jobs(self.folder), pname))


@pytest.fixture
def lab(tmp_path: Path) -> FailLab:
    return FailLab(tmp_path)


@pytest.mark.nix
def test_fail_fast_blocks_downstream_and_starts_nothing_else(lab: FailLab) -> None:
    result = build(lab.folder, lab.store, "-j", "1", expect=1)
    (flaky,), (down,), others = lab.ids("flaky"), lab.ids("down"), lab.ids("other")
    assert result["failed"] == [flaky]
    assert result["blocked"] == [down]
    assert result.executed == []
    assert sorted(result["not_started"]) == others
    assert log_lines(lab.log) == ["flaky"]
    stderr_log = lab.store / "outputs" / flaky / "repx" / "stderr.log"
    (failure,) = result["failures"]
    assert failure["unit"] == failure["job"] == flaky
    assert failure["label"] == "flaky" and failure["reason"] == "exit code 3"
    assert failure["stderr_log"] == str(stderr_log)
    # Shown on stderr: what failed, why, the tail of its stderr and where the log is.
    assert f"FAILED flaky {flaky}: exit code 3" in result.stderr
    assert "  | boom: marker present" in result.stderr
    assert f"logs: {stderr_log}" in result.stderr
    assert "boom: marker present" in stderr_log.read_text()
    stored = records(lab.store)
    assert stored[flaky].status is Status.FAILED
    assert down not in stored and not any(o in stored for o in others)


@pytest.mark.nix
def test_keep_going_runs_independent_jobs_then_a_fix_reruns_only_the_failed_part(
        lab: FailLab) -> None:
    result = build(lab.folder, lab.store, "-j", "2", "--keep-going", expect=1)
    (flaky,), (down,), others = lab.ids("flaky"), lab.ids("down"), lab.ids("other")
    assert result["failed"] == [flaky]
    assert result["blocked"] == [down]
    assert sorted(result.executed) == others
    assert result["not_started"] == [] and result["cancelled"] == []
    assert sorted(log_lines(lab.log)) == ["flaky", "other 1", "other 2", "other 3", "other 4"]

    # The failure is in the store, for `repx show` and `repx log`.
    shown = json.loads(repx("show", flaky, "--json", "--lab", "result", "--store",
                            str(lab.store), cwd=lab.folder).stdout)
    assert shown["status"] == "failed"
    assert shown["record"]["exit_code"] == 3
    assert shown["record"]["reason"] == "exit code 3"
    logged = repx("log", flaky, "--stderr", "--store", str(lab.store), cwd=lab.folder)
    assert "boom: marker present" in logged.stdout

    # A failed job is not up to date: the next build retries it (and fails again).
    again = build(lab.folder, lab.store, "--keep-going", expect=1)
    assert again["failed"] == [flaky] and again["blocked"] == [down]
    assert sorted(again["up_to_date"]) == others
    assert log_lines(lab.log).count("flaky") == 2

    lab.marker.unlink()
    before = records(lab.store)
    fixed = build(lab.folder, lab.store)
    assert sorted(fixed.executed) == sorted([flaky, down])
    assert sorted(fixed["up_to_date"]) == others
    assert sorted(log_lines(lab.log)[6:]) == ["down", "flaky"]
    after = records(lab.store)
    assert after[flaky].status is Status.SUCCEEDED and after[down].status is Status.SUCCEEDED
    assert all(after[o].finished == before[o].finished for o in others)
    assert (lab.store / "outputs" / down / "out" / "result.txt").read_text() == "fixed\n"


ONE_RUN = """
{ pkgs, repx-lib, ... }:
{ name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }
"""

TWO_STAGES = """
{ repx, ... }:
repx.mkPipe rec {
  liar = repx.callStage ./liar.nix [ ];
  killed = repx.callStage ./killed.nix [ ];
}
"""


@pytest.mark.nix
def test_missing_declared_output_or_a_signal_is_a_failure(tmp_path: Path) -> None:
    """Exit code 0 is not enough: a job that did not write a declared output failed (and
    its record must not say succeeded); a job killed by a signal failed, named by it."""
    require_nix()
    files = {
        "run.nix": ONE_RUN,
        "pipe.nix": TWO_STAGES,
        "liar.nix": """
            { pkgs }:
            {
              pname = "liar";
              outputs = { result = "$out/result.txt"; other = "$out/other.txt"; };
              run = { outputs, ... }: ''
                echo "only one of two" > "${outputs.result}"
              '';
            }
        """,
        "killed.nix": """
            { pkgs }:
            {
              pname = "killed";
              outputs = { result = "$out/result.txt"; };
              run = { outputs, ... }: ''
                kill -KILL $$
                echo "not reached" > "${outputs.result}"
              '';
            }
        """,
    }
    folder = write_lab(tmp_path / "lab", files)
    store = tmp_path / ".repx"
    result = build(folder, store, "--keep-going", expect=1)
    jobs = list_jobs(folder)
    (liar,), (killed,) = by_pname(jobs, "liar"), by_pname(jobs, "killed")
    assert sorted(result["failed"]) == sorted([liar["id"], killed["id"]])
    reasons = {f["job"]: f["reason"] for f in result["failures"]}
    assert reasons[liar["id"]].startswith("exited 0 but did not write its declared output "
                                          "'other'")
    assert reasons[killed["id"]] == "killed by signal SIGKILL"
    stored = records(store)
    assert stored[liar["id"]].status is Status.FAILED
    assert stored[killed["id"]].status is Status.FAILED
    again = build(folder, store, "--keep-going", expect=1)
    assert sorted(again["failed"]) == sorted([liar["id"], killed["id"]])
