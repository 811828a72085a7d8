"""Every example lab builds with real Nix and lists the right jobs with the right params.

The examples are driven through the real ``repx`` CLI (``repx list jobs --json``
in the example's folder, as a user would type it), so these tests also pin the
CLI's lab discovery and JSON output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO, require_nix

EXPECTED = json.loads((EXAMPLES / "expected.json").read_text())
REPX = [sys.executable, "-m", "repx.cli"]


def repx(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([*REPX, *args], cwd=cwd, env=env, capture_output=True, text=True,
                            check=False)
    if check and result.returncode != 0:
        pytest.fail(f"repx {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def list_jobs(example: str, tmp_path: Path) -> list[dict]:
    require_nix()
    link = tmp_path / f"{example}-result"
    repx("lab", "build", "-o", str(link), cwd=EXAMPLES / example)
    out = repx("list", "jobs", "--json", "--lab", str(link), cwd=EXAMPLES / example)
    return json.loads(out.stdout)


@pytest.mark.nix
@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_job_counts(example: str, tmp_path: Path) -> None:
    jobs = list_jobs(example, tmp_path)
    expected = EXPECTED[example]
    assert len(jobs) == expected["total"]
    assert len({job["id"] for job in jobs}) == expected["total"]
    per_run = Counter(run for job in jobs for run in job["runs"])
    assert dict(per_run) == expected["runs"]
    assert dict(Counter(job["pname"] for job in jobs)) == expected["stages"]
    for job in jobs:
        for field in ("id", "run", "stage", "pname", "version", "params", "resources",
                      "depends_on"):
            assert field in job
        assert job["id"].endswith(f"-{job['pname']}-{job['version']}")


def by_pname(jobs: list[dict], pname: str) -> list[dict]:
    return [job for job in jobs if job["pname"] == pname]


@pytest.mark.nix
def test_param_sweep_effective_params(tmp_path: Path) -> None:
    jobs = list_jobs("param-sweep", tmp_path)
    train = by_pname(jobs, "train-model")
    combos = {(j["params"]["learning_rate"], j["params"]["optimizer"]) for j in train}
    assert combos == {(lr, opt) for lr in (0.1, 0.01, 0.001) for opt in ("adam", "sgd")}
    for job in train:
        # Not swept: the stage default, recorded as such.
        assert job["params"]["batch_size"] == 32
        assert job["param_sources"]["batch_size"] == "default"
        assert job["param_sources"]["learning_rate"].endswith("train-model.learning_rate")
        generate = by_pname(jobs, "generate")[0]
        assert job["depends_on"] == [generate["id"]]
    evaluate = by_pname(jobs, "evaluate")
    assert sorted(e["depends_on"][0] for e in evaluate) == sorted(t["id"] for t in train)


@pytest.mark.nix
def test_zip_sweep_pairs_in_lockstep(tmp_path: Path) -> None:
    jobs = list_jobs("zip-sweep", tmp_path)
    process = by_pname(jobs, "process")
    pairs = {(j["params"]["mode"], j["params"]["multiplier"]) for j in process}
    assert pairs == {("fast", 2), ("slow", 3)}
    assert {j["params"]["workload"] for j in process} == {"a", "b", "c"}
    for job in process:
        # Dynamic attributes are resolved per combination, not once per run.
        assert job["outputs"]["result"] == f"$out/result-{job['params']['mode']}.txt"
        assert job["resources"]["mem"] == ("2G" if job["params"]["mode"] == "slow" else "1G")


@pytest.mark.nix
def test_dirs_and_files_sweep_over_store_copies(tmp_path: Path) -> None:
    jobs = list_jobs("dirs-files", tmp_path)
    grade = by_pname(jobs, "grade")
    submissions = {Path(j["params"]["submission"]).name.split("-", 1)[1] for j in grade}
    configs = {Path(j["params"]["config"]).name.split("-", 1)[1] for j in grade}
    assert submissions == {"alice", "bob", "carol"}
    assert configs == {"small.json", "large.json"}
    for job in grade:
        assert job["params"]["submission"].startswith("/nix/store/")
        assert (Path(job["params"]["submission"]) / "answer.txt").is_file()


@pytest.mark.nix
def test_inter_run_manifests_and_groups(tmp_path: Path) -> None:
    jobs = list_jobs("inter-run", tmp_path)
    simulation = {j["id"] for j in jobs if "simulation" in j["runs"]}
    aggregate = by_pname(jobs, "aggregate")[0]
    manifest = aggregate["inputs"]["metadata__simulation"]
    assert manifest["run_manifest"] == "simulation"
    assert set(manifest["jobs"]) == simulation
    groups = json.loads(repx("list", "groups", "--json", "--lab",
                             str(tmp_path / "inter-run-result"),
                             cwd=EXAMPLES / "inter-run").stdout)
    assert groups == {"all": ["simulation", "analysis", "report"], "compute": ["simulation"]}


@pytest.mark.nix
def test_scatter_gather_blueprint(tmp_path: Path) -> None:
    jobs = list_jobs("scatter-gather", tmp_path)
    partial = by_pname(jobs, "partial-sums")[0]
    assert partial["kind"] == "scatter-gather"
    assert set(partial["scripts"]) == {"scatter", "step-square", "step-double",
                                      "step-combine", "gather"}
    legacy = by_pname(jobs, "legacy-worker")[0]
    assert set(legacy["scripts"]) == {"scatter", "step-worker", "gather"}
