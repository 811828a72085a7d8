"""Scatter-gather units: each branch step is cached on its own, so a failed branch blocks
only the gather, and after a fix only that branch (and the gather) runs again.

The stage ``sums`` scatters 10 items; each branch runs ``square`` then ``combine``
(x² + 1); ``square`` fails for item 7 while a marker file exists. The gather adds the
partials (Σ x² + 1 for x = 1..10 = 395). Every unit appends a line to an execution log
outside the store, which is how "only branch 7 ran" is observed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from repx.store import Status
from tests.buildutil import (
    build,
    by_pname,
    list_jobs,
    log_lines,
    out_dir,
    records,
    start_build,
    write_lab,
)
from tests.conftest import require_nix

FILES = {
    "run.nix": """
        { pkgs, repx-lib, ... }:
        { name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }
    """,
    "pipe.nix": """
        { repx, ... }:
        repx.mkPipe rec {
          source = repx.callStage ./source.nix [ ];
          sums = repx.callStage ./sums.nix [ source ];
          report = repx.callStage ./report.nix [ sums ];
        }
    """,
    "source.nix": """
        { pkgs }:
        {
          pname = "source";
          outputs = { data = "$out/numbers.txt"; };
          run = { outputs, ... }: ''
            seq 1 10 > "${outputs.data}"
          '';
        }
    """,
    "sums.nix": """
        { pkgs }:
        let
          square = {
            pname = "square";
            inputs = { worker__item = ""; data = ""; };
            outputs = { sq = "$out/square.txt"; };
            deps = [ ];
            run = { inputs, outputs, params, ... }: ''
              index=$(jq -r '.index' "${inputs.worker__item}")
              echo "square $index" >> "${params.log}"
              if [ "$index" -eq 7 ] && [ -e "${params.marker}" ]; then
                echo "branch 7 fails while the marker exists" >&2
                exit 5
              fi
              x=$(sed -n "$((index + 1))p" "${inputs.data}")
              echo "$((x * x))" > "${outputs.sq}"
            '';
          };
          combine = {
            pname = "combine";
            inputs = { worker__item = ""; sq = ""; };
            outputs = { partial = "$out/partial.txt"; };
            deps = [ square ];
            run = { inputs, outputs, params, ... }: ''
              index=$(jq -r '.index' "${inputs.worker__item}")
              echo "combine $index" >> "${params.log}"
              read -r sq < "${inputs.sq}"
              echo "$((sq + 1))" > "${outputs.partial}"
            '';
          };
        in
        {
          pname = "sums";
          params = { chunks = 10; marker = "@MARKER@"; log = "@LOG@"; };
          scatter = {
            inputs = { data = ""; };
            outputs = {
              work__items = "$out/items.json";
              worker__arg = { index = 0; };
            };
            run = { inputs, outputs, params, ... }: ''
              echo "scatter" >> "${params.log}"
              test -s "${inputs.data}"
              jq -n --argjson n "${toString params.chunks}" '[range($n) | {index: .}]' \\
                > "${outputs.work__items}"
            '';
          };
          steps = { inherit square combine; };
          gather = {
            inputs = { worker__outs = "[]"; };
            outputs = { total = "$out/total.txt"; };
            run = { inputs, outputs, params, ... }: ''
              echo "gather" >> "${params.log}"
              total=0
              while read -r partial; do
                read -r value < "$partial"
                total=$((total + value))
              done < <(jq -r '.[].partial' "${inputs.worker__outs}")
              echo "$total" > "${outputs.total}"
            '';
          };
        }
    """,
    "report.nix": """
        { pkgs }:
        {
          pname = "report";
          params = { log = "@LOG@"; };
          inputs = { total = ""; };
          outputs = { report = "$out/report.txt"; };
          run = { inputs, outputs, params, ... }: ''
            echo "report" >> "${params.log}"
            echo "total $(cat "${inputs.total}")" > "${outputs.report}"
          '';
        }
    """,
}


@pytest.mark.nix
def test_failed_branch_blocks_gather_then_only_that_branch_reruns(tmp_path: Path) -> None:
    require_nix()
    marker = tmp_path / "marker"
    marker.touch()
    log = tmp_path / "units.log"
    folder = write_lab(tmp_path / "lab", FILES, MARKER=str(marker), LOG=str(log))
    store = tmp_path / ".repx"

    first = build(folder, store, "-j", "2", "--keep-going", expect=1)
    jobs = list_jobs(folder)
    (source,), (sums,), (report,) = (by_pname(jobs, p) for p in ("source", "sums", "report"))
    assert first.executed == [source["id"]]
    assert first["failed"] == [sums["id"]]
    assert first["blocked"] == [report["id"]]
    units = json.loads((store / "outputs" / sums["id"] / "repx" / "units.json").read_text())
    branches = {b["item"]["index"]: b["steps"] for b in units["branches"]}
    assert sorted(branches) == list(range(10))
    (failure,) = first["failures"]
    assert failure["unit"] == branches[7]["square"] and failure["job"] == sums["id"]
    assert failure["reason"] == "exit code 5"

    stored = records(store)
    assert stored[units["scatter"]].status is Status.SUCCEEDED
    for index, steps in branches.items():
        if index == 7:
            assert stored[steps["square"]].status is Status.FAILED
            assert steps["combine"] not in stored  # blocked: never claimed
        else:
            assert stored[steps["square"]].status is Status.SUCCEEDED
            assert stored[steps["combine"]].status is Status.SUCCEEDED
    gather = stored.get(sums["id"])
    assert gather is None or gather.status is not Status.SUCCEEDED
    ran = log_lines(log)
    assert "gather" not in ran and "report" not in ran
    assert sorted(ran) == sorted(["scatter"] + [f"square {i}" for i in range(10)]
                                 + [f"combine {i}" for i in range(10) if i != 7])

    marker.unlink()
    second = build(folder, store, "-j", "2")
    assert sorted(second.executed) == sorted([sums["id"], report["id"]])
    assert second["up_to_date"] == [source["id"]]
    assert sorted(log_lines(log)[len(ran):]) == ["combine 7", "gather", "report", "square 7"]
    after = records(store)
    for uid in [units["scatter"]] + [s for i, b in branches.items() if i != 7
                                     for s in b.values()]:
        assert after[uid].finished == stored[uid].finished, uid
    assert (out_dir(store, sums["id"]) / "total.txt").read_text() == "395\n"
    assert (out_dir(store, report["id"]) / "report.txt").read_text() == "total 395\n"
    assert build(folder, store).executed == []


@pytest.mark.nix
def test_scatter_with_no_items_gathers_an_empty_list(tmp_path: Path) -> None:
    """Zero branches is a valid scatter (the gather still runs, on ``[]``)."""
    require_nix()
    files = dict(FILES)
    files["run.nix"] = """
        { pkgs, repx-lib, ... }:
        { name = "main"; pipelines = [ ./pipe.nix ]; params = { chunks = [ 0 3 ]; }; }
    """
    log = tmp_path / "units.log"
    folder = write_lab(tmp_path / "lab", files, MARKER=str(tmp_path / "no-marker"),
                       LOG=str(log))
    store = tmp_path / ".repx"
    result = build(folder, store, "-j", "2")
    jobs = list_jobs(folder)
    assert sorted(result.executed) == sorted(j["id"] for j in jobs)
    totals = {j["params"]["chunks"]: (out_dir(store, j["id"]) / "total.txt").read_text()
              for j in by_pname(jobs, "sums")}
    assert totals == {0: "0\n", 3: "17\n"}  # (1+1) + (4+1) + (9+1)
    assert log_lines(log).count("gather") == 2


EVERY_UNIT = Counter(["scatter", "gather", "report"] + [f"square {i}" for i in range(10)]
                     + [f"combine {i}" for i in range(10)])


@pytest.mark.nix
def test_force_a_scatter_gather_stage_reruns_all_its_units_only(tmp_path: Path) -> None:
    require_nix()
    log = tmp_path / "units.log"
    folder = write_lab(tmp_path / "lab", FILES, MARKER=str(tmp_path / "no-marker"),
                       LOG=str(log))
    store = tmp_path / ".repx"
    build(folder, store, "-j", "2")
    assert Counter(log_lines(log)) == EVERY_UNIT
    jobs = list_jobs(folder)
    forced = build(folder, store, "-j", "2", "--force", "sums")
    assert forced.executed == [by_pname(jobs, "sums")[0]["id"]]
    assert Counter(log_lines(log)) == EVERY_UNIT + EVERY_UNIT - Counter(["report"])


@pytest.mark.nix
def test_two_concurrent_builds_share_scatter_gather_units(tmp_path: Path) -> None:
    """The second build waits for units the first one claimed, expands the scatter it did
    not run itself, and neither build runs any unit twice."""
    require_nix()
    log = tmp_path / "units.log"
    folder = write_lab(tmp_path / "lab", FILES, MARKER=str(tmp_path / "no-marker"),
                       LOG=str(log))
    store = tmp_path / ".repx"
    builds = [start_build(folder, store, "-j", "2", name=f"build{n}") for n in (1, 2)]
    try:
        results = [b.wait(timeout=60) for b in builds]
    finally:
        for b in builds:
            b.kill()
    for result in results:
        assert result.code == 0, result.stderr
    assert Counter(log_lines(log)) == EVERY_UNIT
    ids = sorted(j["id"] for j in list_jobs(folder))
    assert sorted(results[0].executed + results[1].executed) == ids
    (sums,) = by_pname(list_jobs(folder), "sums")
    assert (out_dir(store, sums["id"]) / "total.txt").read_text() == "395\n"
