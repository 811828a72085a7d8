"""The CLI as a user types it: lab discovery, ./result, prefixes, dry runs, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, require_nix
from tests.test_examples import repx


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A private copy of the param-sweep example (commands write ./result into it)."""
    require_nix()
    folder = tmp_path / "param-sweep"
    shutil.copytree(EXAMPLES / "param-sweep", folder)
    return folder


@pytest.mark.nix
def test_list_jobs_in_a_lab_folder_builds_and_links_result(sweep: Path) -> None:
    out = repx("list", "jobs", cwd=sweep)
    assert (sweep / "result" / "lab.json").is_file()
    # Stages by pipeline key, with the pname where it differs (`train` is train-model).
    assert "13 jobs: 1 generate, 6 train (train-model), 6 evaluate" in out.stdout
    runs = json.loads(repx("list", "runs", "--json", "--lab", "result", cwd=sweep).stdout)
    assert runs == [{"name": "hyperparam-sweep", "jobs": 13, "hash_mode": "pure",
                     "dependencies": {}}]


@pytest.mark.nix
def test_trace_params_by_unique_prefix(sweep: Path) -> None:
    jobs = json.loads(repx("list", "jobs", "--json", "--stage", "train-model", cwd=sweep).stdout)
    job = next(j for j in jobs if j["params"] == {"batch_size": 32, "learning_rate": 0.001,
                                                  "optimizer": "sgd"})
    traced = json.loads(repx("trace-params", job["id"][:10], "--json", "--lab", "result",
                             cwd=sweep).stdout)
    assert traced["job"] == job["id"]
    assert traced["params"]["batch_size"] == {"value": 32, "source": "default"}
    assert traced["params"]["optimizer"]["value"] == "sgd"
    assert "train-model.optimizer" in traced["params"]["optimizer"]["source"]
    assert len(traced["upstream"]) == 1  # the generate job
    text = repx("trace-params", job["id"][:10], "--lab", "result", cwd=sweep).stdout
    assert "batch_size = 32    [default]" in text


@pytest.mark.nix
def test_build_dry_run_lists_the_closure_of_a_target(sweep: Path) -> None:
    jobs = json.loads(repx("list", "jobs", "--json", cwd=sweep).stdout)
    evaluate = next(j for j in jobs if j["pname"] == "evaluate")
    out = json.loads(repx("build", evaluate["id"], "--dry-run", "--json", "--lab", "result",
                          cwd=sweep).stdout)
    pnames = sorted(next(j["pname"] for j in jobs if j["id"] == i) for i in out["would_run"])
    assert pnames == ["evaluate", "generate", "train-model"]


@pytest.mark.nix
def test_errors_are_one_message_with_exit_code_2(sweep: Path, tmp_path: Path) -> None:
    unknown = repx("list", "jobs", "no-such-run", cwd=sweep, check=False)
    assert unknown.returncode == 2
    assert "no-such-run" in unknown.stderr and "hyperparam-sweep" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    missing = repx("list", "runs", cwd=tmp_path, check=False)
    assert missing.returncode == 2
    assert "no lab found" in missing.stderr

    stage = sweep / "stages" / "train.nix"
    stage.write_text(stage.read_text().replace("pname =", "colour = 1;\n  pname ="))
    broken = repx("list", "jobs", cwd=sweep, check=False)
    assert broken.returncode == 2
    assert "train.nix" in broken.stderr and '"colour"' in broken.stderr
    assert "Traceback" not in broken.stderr and "--show-trace" not in broken.stderr


@pytest.mark.nix
def test_lab_build_prints_a_summary(sweep: Path) -> None:
    out = json.loads(repx("lab", "build", "--json", cwd=sweep).stdout)
    assert out["runs"] == {"hyperparam-sweep": 13}
    assert out["jobs"] == 13
    assert Path(out["lab"]).resolve() == (sweep / "result").resolve()
