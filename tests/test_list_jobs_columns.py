"""``repx list jobs``: one name for each stage in the table and its total line, and the
effective params of every job, downstream ones included.

The lab's first stage has pipeline key ``gen`` and pname ``data-generator``: both select it
(``-s``), so the listing shows both; its ``train`` jobs declare only ``lr`` and see the
``seed`` of their ``gen`` job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.buildutil import repx
from tests.conftest import require_nix

FILES = {
    "run.nix": """
        { pkgs, repx-lib, ... }:
        { name = "main"; pipelines = [ ./pipe.nix ]; params = { seed = [ 1 2 ]; }; }
    """,
    "pipe.nix": """
        { repx, ... }:
        repx.mkPipe rec {
          gen = repx.callStage ./gen.nix [ ];
          train = repx.callStage ./train.nix [ gen ];
        }
    """,
    "gen.nix": """
        { pkgs }:
        {
          pname = "data-generator";
          params = { seed = 7; };
          outputs = { data = "$out/data.txt"; };
          run = { outputs, params, ... }: ''
            echo "${toString params.seed}" > "${outputs.data}"
          '';
        }
    """,
    "train.nix": """
        { pkgs }:
        {
          pname = "train";
          params = { lr = "0.1"; };
          inputs = { data = ""; };
          outputs = { model = "$out/model.txt"; };
          run = { inputs, outputs, params, ... }: ''
            cat "${inputs.data}" > "${outputs.model}"
          '';
        }
    """,
}


def table_rows(stdout: str) -> tuple[list[str], list[list[str]], str]:
    """The header, the rows (split on the two-space column gaps) and the total line."""
    lines = stdout.splitlines()
    split = [[cell.strip() for cell in line.split("  ") if cell.strip()] for line in lines[:-1]]
    return split[0], split[1:], lines[-1]


@pytest.mark.nix
def test_stage_column_and_total_name_key_and_pname(make_lab) -> None:
    require_nix()
    folder: Path = make_lab(FILES)
    header, rows, total = table_rows(repx("list", "jobs", cwd=folder).stdout)
    assert header == ["JOB", "RUN", "STAGE", "PARAMS"]
    assert sorted(row[2] for row in rows) == ["gen (data-generator)"] * 2 + ["train"] * 2
    assert total == "4 jobs: 2 gen (data-generator), 2 train"
    # Each name the column shows selects the stage.
    for name in ("gen", "data-generator"):
        _, chosen, line = table_rows(repx("list", "jobs", "-s", name, cwd=folder).stdout)
        assert [row[2] for row in chosen] == ["gen (data-generator)"] * 2
        assert line == "2 jobs: 2 gen (data-generator)"
    # -g headings already gave both names; they agree with the column.
    grouped = repx("list", "jobs", "-g", cwd=folder).stdout
    assert "[gen] 2 jobs (pname data-generator)" in grouped


@pytest.mark.nix
def test_params_column_shows_effective_params(make_lab) -> None:
    require_nix()
    folder: Path = make_lab(FILES)
    jobs = {job["id"]: job for job in json.loads(repx("list", "jobs", "--json",
                                                      cwd=folder).stdout)}
    _, rows, _ = table_rows(repx("list", "jobs", cwd=folder).stdout)
    params = {row[0]: row[3] for row in rows}
    for job_id, job in jobs.items():
        if job["pname"] == "train":
            [upstream] = job["depends_on"]
            seed = jobs[upstream]["params"]["seed"]
            assert job["params"] == {"lr": "0.1"}  # its own: what JSON `params` keeps
            assert params[job_id] == f"seed={seed} lr=0.1"  # effective: upstream's first
        else:
            assert params[job_id] == f"seed={job['params']['seed']}"
    # The JSON is unchanged: effective params only with -p.
    assert all("effective_params" not in job for job in jobs.values())
