"""Every example lab runs end to end with ``repx build`` and gives the results its README
promises; a second build runs nothing; the exit codes mean what the CLI says.

Each test works on a private copy of the example (builds write ./result into the lab
folder) and a store of its own, so the tests are independent of one another and of
whatever a user ran in ``examples/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from repx.store import Status
from tests.buildutil import (
    JSON_KEYS,
    build,
    by_pname,
    copy_example,
    list_jobs,
    output_file,
    records,
    repx,
)
from tests.conftest import EXAMPLES, require_nix

EXPECTED = json.loads((EXAMPLES / "expected.json").read_text())

Jobs = list[dict[str, Any]]


def check_simple(jobs: Jobs, store: Path) -> None:
    (consumer,) = by_pname(jobs, "consumer")
    assert output_file(store, consumer, "sum").read_text() == "55\n"
    (plotter,) = by_pname(jobs, "plotter")
    lines = output_file(store, plotter, "plot").read_text().splitlines()
    assert lines[0] == "value | bar"
    assert lines[1:11] == [f"{v:5d} | {'#' * v}" for v in range(1, 11)]
    assert lines[11:] == ["sum = 55"]


def check_param_sweep(jobs: Jobs, store: Path) -> None:
    expected = {  # README: (optimizer, learning_rate) -> (final_loss, grade)
        ("adam", 0.1): (1.2e-05, "good"), ("adam", 0.01): (0.005394, "fair"),
        ("adam", 0.001): (0.040087, "poor"), ("sgd", 0.1): (0.001318, "fair"),
        ("sgd", 0.01): (0.009167, "fair"), ("sgd", 0.001): (0.054645, "poor"),
    }
    train = {job["id"]: job for job in by_pname(jobs, "train-model")}
    seen = {}
    for evaluate in by_pname(jobs, "evaluate"):
        params = train[evaluate["depends_on"][0]]["params"]
        result = json.loads(output_file(store, evaluate, "evaluation").read_text())
        assert (result["optimizer"], result["learning_rate"]) == (params["optimizer"],
                                                                  params["learning_rate"])
        seen[(params["optimizer"], params["learning_rate"])] = (result["final_loss"],
                                                               result["grade"])
    assert seen == expected


def check_zip_sweep(jobs: Jobs, store: Path) -> None:
    expected = {("a", "fast"): 30, ("a", "slow"): 45, ("b", "fast"): 120,
                ("b", "slow"): 180, ("c", "fast"): 1020, ("c", "slow"): 1530}
    process = {job["id"]: job for job in by_pname(jobs, "process")}
    seen = {}
    for tally in by_pname(jobs, "tally"):
        params = process[tally["depends_on"][0]]["params"]
        text = output_file(store, tally, "tally").read_text()
        workload, value = text.split(" (from", 1)[0].removeprefix("workload ").split(": ")
        assert workload == params["workload"]
        seen[(workload, params["mode"])] = int(value)
    assert seen == expected


def check_scatter_gather(jobs: Jobs, store: Path) -> None:
    (partial,) = by_pname(jobs, "partial-sums")
    assert output_file(store, partial, "total").read_text() == "495\n"
    squares = [f"c{i}: {i}^2 = {i * i}" for i in range(10)]
    (legacy,) = by_pname(jobs, "legacy-worker")
    assert output_file(store, legacy, "final").read_text().splitlines() == squares
    (report,) = by_pname(jobs, "report")
    assert output_file(store, report, "report").read_text().splitlines() == [
        "sum over all chunks of x*x + 2*x: 495", "legacy worker chunks: 10", *squares]


def check_inter_run(jobs: Jobs, store: Path) -> None:
    (aggregate,) = by_pname(jobs, "aggregate")
    assert json.loads(output_file(store, aggregate, "table").read_text()) == [
        {"seed": 1, "count": 5, "mean": 206, "min": 44, "max": 305},
        {"seed": 2, "count": 5, "mean": 548.4, "min": 224, "max": 925},
        {"seed": 3, "count": 5, "mean": 290.8, "min": 30, "max": 552},
    ]
    (report,) = by_pname(jobs, "write-report")
    assert output_file(store, report, "report").read_text() == (
        "# Simulation report\n\nsimulate jobs: 3, summaries present: 3\n\n"
        "1. seed 2: mean 548.4\n2. seed 3: mean 290.8\n3. seed 1: mean 206\n")


def check_dirs_files(jobs: Jobs, store: Path) -> None:
    expected = {("alice", "small"): 10, ("alice", "large"): 100, ("bob", "small"): 6,
                ("bob", "large"): 80, ("carol", "small"): 4, ("carol", "large"): 70}
    seen = {}
    for grade in by_pname(jobs, "grade"):
        result = json.loads(output_file(store, grade, "grade").read_text())
        seen[(result["student"], result["config"])] = result["score"]
    assert seen == expected
    for check in by_pname(jobs, "check-submission"):
        assert output_file(store, check, "status").read_text().strip() == "ok"


CHECKS: dict[str, Callable[[Jobs, Path], None]] = {
    "simple": check_simple,
    "param-sweep": check_param_sweep,
    "zip-sweep": check_zip_sweep,
    "scatter-gather": check_scatter_gather,
    "inter-run": check_inter_run,
    "dirs-files": check_dirs_files,
}


def test_every_example_has_a_check() -> None:
    """A new example must come with its expected results here."""
    assert sorted(CHECKS) == sorted(EXPECTED)


@pytest.mark.nix
@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_runs_end_to_end_then_nothing_reruns(example: str, tmp_path: Path) -> None:
    require_nix()
    folder = copy_example(example, tmp_path)
    store = tmp_path / ".repx"
    first = build(folder, store, "-j", "2")
    assert JSON_KEYS <= first.data.keys()
    jobs = list_jobs(folder)
    ids = {job["id"] for job in jobs}
    assert len(ids) == EXPECTED[example]["total"]
    assert sorted(first.executed) == sorted(ids)
    for key in ("up_to_date", "failed", "blocked", "cancelled", "not_started", "failures"):
        assert first[key] == [], key
    stored = records(store)
    assert all(stored[i].status is Status.SUCCEEDED for i in ids)
    CHECKS[example](jobs, store)

    second = build(folder, store)
    assert second.executed == []
    assert sorted(second["up_to_date"]) == sorted(ids)
    assert records(store)[jobs[0]["id"]].finished == stored[jobs[0]["id"]].finished
    CHECKS[example](jobs, store)


@pytest.mark.nix
def test_human_summary_and_unknown_target_exit_code_2(tmp_path: Path) -> None:
    require_nix()
    folder = copy_example("simple", tmp_path)
    store = tmp_path / ".repx"
    plain = repx("build", "--store", str(store), cwd=folder)
    assert "3 executed, 0 up to date, 0 failed" in plain.stdout
    unknown = repx("build", "no-such-run", "--store", str(store), cwd=folder, check=False)
    assert unknown.returncode == 2
    assert "no-such-run" in unknown.stderr and "simulation" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad_force = repx("build", "--force", "no-such-stage", "--store", str(store), cwd=folder,
                     check=False)
    assert bad_force.returncode == 2
    assert "--force no-such-stage" in bad_force.stderr
    bad_mem = repx("build", "--mem", "lots", "--store", str(store), cwd=folder, check=False)
    assert bad_mem.returncode == 2 and "--mem lots" in bad_mem.stderr
    again = repx("build", "--store", str(store), cwd=folder)
    assert "0 executed, 3 up to date, 0 failed" in again.stdout
