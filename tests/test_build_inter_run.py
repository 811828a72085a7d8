"""Inter-run dependencies as the scheduler orders them, observed with timestamps the jobs
write themselves.

Run ``first`` has three ``work`` jobs of different lengths (0.2, 0.3, 0.4 s); ``hard``
depends on it hard, ``soft`` softly; both read ``metadata__first``. With free slots
(``-j 4``) a gate that opened too early would let the dependent jobs start while a
``work`` job still runs, so "starts after the last end" is a real check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.buildutil import (
    build,
    by_pname,
    intervals,
    list_jobs,
    log_lines,
    out_dir,
    write_lab,
)
from tests.conftest import require_nix

LAB = """
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
let
  first = repx-lib.callRun ./run-first.nix [ ];
  hard = repx-lib.callRun ./run-hard.nix [ first ];
  soft = repx-lib.callRun ./run-soft.nix [ [ first "soft" ] ];
in
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "1.0";
  runs = { inherit first hard soft; };
}
"""


def after_stage(name: str) -> str:
    """A dependent run's stage: records when it ran and the manifest it received."""
    return """
        { pkgs }:
        {
          pname = "NAME";
          params = { log = "@LOG@"; };
          inputs = { metadata__first = ""; };
          outputs = { manifest = "$out/manifest.json"; };
          run = { inputs, outputs, params, ... }: ''
            echo "start NAME $(date +%s.%N)" >> "${params.log}"
            cp "${inputs.metadata__first}" "${outputs.manifest}"
            echo "end NAME $(date +%s.%N)" >> "${params.log}"
          '';
        }
    """.replace("NAME", name)


FILES = {
    "lab.nix": LAB,
    "run-first.nix": """
        { pkgs, repx-lib, ... }:
        { name = "first"; pipelines = [ ./pipe-first.nix ]; params = { i = [ 1 2 3 ]; }; }
    """,
    "run-hard.nix": """
        { pkgs, repx-lib, ... }:
        { name = "hard"; pipelines = [ ./pipe-hard.nix ]; params = { }; }
    """,
    "run-soft.nix": """
        { pkgs, repx-lib, ... }:
        { name = "soft"; pipelines = [ ./pipe-soft.nix ]; params = { }; }
    """,
    "pipe-first.nix": """
        { repx, ... }:
        repx.mkPipe rec { work = repx.callStage ./work.nix [ ]; }
    """,
    "pipe-hard.nix": """
        { repx, ... }:
        repx.mkPipe rec { after-hard = repx.callStage ./after-hard.nix [ ]; }
    """,
    "pipe-soft.nix": """
        { repx, ... }:
        repx.mkPipe rec { after-soft = repx.callStage ./after-soft.nix [ ]; }
    """,
    "work.nix": """
        { pkgs }:
        {
          pname = "work";
          params = { i = 0; marker = "@MARKER@"; log = "@LOG@"; };
          outputs = { result = "$out/result.txt"; };
          run = { outputs, params, ... }: ''
            i="${toString params.i}"
            echo "start work-$i $(date +%s.%N)" >> "${params.log}"
            sleep "0.$((i + 1))"
            echo "$i" > "${outputs.result}"
            echo "end work-$i $(date +%s.%N)" >> "${params.log}"
            if [ "$i" -eq 2 ] && [ -e "${params.marker}" ]; then
              echo "work 2 fails while the marker exists" >&2
              exit 1
            fi
          '';
        }
    """,
    "after-hard.nix": after_stage("after-hard"),
    "after-soft.nix": after_stage("after-soft"),
}


def make(tmp_path: Path, *, failing: bool) -> tuple[Path, Path, Path]:
    require_nix()
    marker = tmp_path / "marker"
    if failing:
        marker.touch()
    log = tmp_path / "times.log"
    folder = write_lab(tmp_path / "lab", FILES, MARKER=str(marker), LOG=str(log))
    return folder, tmp_path / ".repx", log


def manifest_statuses(store: Path, job: dict) -> dict[int, str]:
    manifest = json.loads((out_dir(store, job["id"]) / "manifest.json").read_text())
    assert manifest["type"] == "run" and manifest["name"] == "first"
    return {entry["params"]["i"]: entry["status"] for entry in manifest["jobs"].values()}


@pytest.mark.nix
def test_dependent_runs_start_after_every_job_they_depend_on(tmp_path: Path) -> None:
    folder, store, log = make(tmp_path, failing=False)
    result = build(folder, store, "-j", "4")
    jobs = list_jobs(folder)
    assert sorted(result.executed) == sorted(j["id"] for j in jobs)
    times = intervals(log_lines(log))
    last_work_end = max(end for name, (_, end) in times.items() if name.startswith("work-"))
    assert times["after-hard"][0] >= last_work_end
    assert times["after-soft"][0] >= last_work_end
    for pname in ("after-hard", "after-soft"):
        (job,) = by_pname(jobs, pname)
        assert manifest_statuses(store, job) == {1: "succeeded", 2: "succeeded",
                                                 3: "succeeded"}


@pytest.mark.nix
def test_failed_dependency_blocks_hard_dependents_but_not_soft_ones(tmp_path: Path) -> None:
    folder, store, log = make(tmp_path, failing=True)
    result = build(folder, store, "-j", "4", "--keep-going", expect=1)
    jobs = list_jobs(folder)
    work = {j["params"]["i"]: j["id"] for j in by_pname(jobs, "work")}
    (hard,), (soft,) = by_pname(jobs, "after-hard"), by_pname(jobs, "after-soft")
    assert result["failed"] == [work[2]]
    assert result["blocked"] == [hard["id"]]
    assert sorted(result.executed) == sorted([work[1], work[3], soft["id"]])
    times = intervals(log_lines(log))
    assert "after-hard" not in times
    last_work_end = max(end for name, (_, end) in times.items() if name.startswith("work-"))
    assert times["after-soft"][0] >= last_work_end
    # The soft dependent is told which of the jobs it waited for failed.
    assert manifest_statuses(store, soft) == {1: "succeeded", 2: "failed", 3: "succeeded"}


@pytest.mark.nix
def test_building_one_run_builds_the_runs_it_depends_on_and_nothing_else(
        tmp_path: Path) -> None:
    folder, store, log = make(tmp_path, failing=False)
    hard = build(folder, store, "hard", "-j", "4")
    jobs = list_jobs(folder)
    work = sorted(j["id"] for j in by_pname(jobs, "work"))
    (after_hard,), (after_soft,) = by_pname(jobs, "after-hard"), by_pname(jobs, "after-soft")
    assert sorted(hard.executed) == sorted([*work, after_hard["id"]])
    assert "after-soft" not in intervals(log_lines(log))
    soft = build(folder, store, "soft")
    assert soft.executed == [after_soft["id"]]
    assert sorted(soft["up_to_date"]) == work
