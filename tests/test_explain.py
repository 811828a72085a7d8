"""Explained plans and the failure recap, on real Nix builds of one small sweep.

The lab: ``gen`` (swept ``seed`` 1 2) → ``train`` (swept ``lr`` a b) → ``report`` (no
params), so 2 + 4 + 4 jobs. It is built once per module; each test copies the lab folder
and the store, changes one thing, and checks that ``repx build --dry-run --explain`` (text
and ``--json``) gives the right reason for exactly the jobs it must, and no other.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.buildutil import build, out_dir, repx, write_lab
from tests.conftest import require_nix

RUN = """
{ pkgs, repx-lib, ... }:
{ name = "main"; pipelines = [ ./pipe.nix ]; hashMode = "@HASH_MODE@";
  params = { "gen.seed" = [ @SEEDS@ ]; "train.lr" = [ "a" "b" ]; }; }
"""

PIPE = """
{ repx, ... }:
repx.mkPipe rec {
  gen = repx.callStage ./gen.nix [ ];
  train = repx.callStage ./train.nix [ gen ];
  report = repx.callStage ./report.nix [ train ];
}
"""

GEN = """
{ pkgs }:
{
  pname = "gen";
  params = { seed = 0; scale = @SCALE@; };
  outputs = { data = "$out/data.txt"; };
  runDependencies = [ pkgs.coreutils ];
  run = { outputs, params, ... }: ''
    echo "@GEN_TEXT@ ${toString params.seed} ${toString params.scale}" > "${outputs.data}"
  '';
}
"""

TRAIN = """
{ pkgs }:
{
  pname = "train";
  params = { lr = "a"; bad = "@BAD@"; };
  inputs = { data = ""; };
  outputs = { model = "$out/model.txt"; };
  runDependencies = [ pkgs.coreutils ];
  run = { inputs, outputs, params, ... }: ''
    if [ "${params.lr}" = "${params.bad}" ]; then echo "lr ${params.lr} is bad" >&2; exit 3; fi
    cat "${inputs.data}" > "${outputs.model}"
    echo "@TRAIN_TEXT@ ${params.lr}" >> "${outputs.model}"
  '';
}
"""

REPORT = """
{ pkgs }:
{
  pname = "report";
  inputs = { model = ""; };
  outputs = { summary = "$out/summary.txt"; };
  runDependencies = [ pkgs.coreutils @REPORT_DEPS@ ];
  run = { inputs, outputs, ... }: ''
    wc -l < "${inputs.model}" > "${outputs.summary}"
  '';
}
"""

BASE = {"SEEDS": "1 2", "SCALE": "10", "GEN_TEXT": "data", "BAD": "none",
        "TRAIN_TEXT": "trained", "REPORT_DEPS": "", "HASH_MODE": "pure"}


def write_sweep(root: Path, **changes: str) -> Path:
    """The sweep lab with ``changes`` to its placeholders (see ``BASE``)."""
    return write_lab(root, {"run.nix": RUN, "pipe.nix": PIPE, "gen.nix": GEN,
                            "train.nix": TRAIN, "report.nix": REPORT}, **{**BASE, **changes})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """The base lab, built once: (lab folder, store, the build's --json)."""
    require_nix()
    root = tmp_path_factory.mktemp("sweep")
    lab = write_sweep(root / "lab")
    store = root / "store"
    first = build(lab, store, "-j", "2")
    assert len(first.executed) == 10, first.data
    return lab, store, first.data


@pytest.fixture
def changed(built: tuple[Path, Path, dict[str, Any]],
            tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """A copy of the built lab and its store, with placeholders changed."""
    lab, store, _ = built

    def make(**changes: str) -> tuple[Path, Path]:
        copy_store = tmp_path / "store"
        shutil.copytree(store, copy_store, symlinks=True)
        copy_lab = write_sweep(tmp_path / "lab", **changes)
        return copy_lab, copy_store

    return make


def explain_json(lab: Path, store: Path) -> dict[str, Any]:
    result = repx("build", "--dry-run", "--explain", "--json", "--store", str(store),
                  cwd=lab)
    return json.loads(result.stdout)


def explain_text(lab: Path, store: Path) -> str:
    return repx("build", "--dry-run", "--explain", "--store", str(store), cwd=lab).stdout


def by_stage(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The explained jobs per pname."""
    stages: dict[str, list[dict[str, Any]]] = {}
    for job in data["jobs"]:
        stages.setdefault(job["pname"], []).append(job)
    return stages


def first_change(job: dict[str, Any]) -> dict[str, Any]:
    assert job["reason"] == "changed", job
    return job["changes"][0]


def test_nothing_changed_explains_nothing(built: tuple[Path, Path, dict[str, Any]]) -> None:
    lab, store, _ = built
    data = explain_json(lab, store)
    assert data["would_run"] == [] and data["jobs"] == [] and len(data["up_to_date"]) == 10


def test_script_edit_names_the_script_and_its_downstream(
        changed: Callable[..., tuple[Path, Path]]) -> None:
    lab, store = changed(TRAIN_TEXT="fitted")
    data = explain_json(lab, store)
    stages = by_stage(data)
    assert sorted(stages) == ["report", "train"] and len(data["up_to_date"]) == 2
    assert len(stages["train"]) == 4 and len(stages["report"]) == 4
    for job in stages["train"]:
        change = first_change(job)
        assert change["kind"] == "script" and len(job["changes"]) == 1
        assert '-echo "trained ${params["lr"]}"' in change["diff"]
        assert '+echo "fitted ${params["lr"]}"' in change["diff"]
    for job in stages["report"]:
        change = first_change(job)
        assert change["kind"] == "upstream" and change["chain"] == ["train"]
        assert [c["kind"] for c in change["root"]] == ["script"]
    summary = {row["stage"]: row for row in data["summary"]}
    assert summary["train"]["reasons"] == {"script": 4}
    assert summary["report"]["reasons"] == {"upstream": 4}
    text = explain_text(lab, store)
    assert "script of train changed" in text
    assert "upstream train changed: script of train changed (train job " in text
    # The diff is printed once, not once per job.
    assert text.count('+echo "fitted ${params["lr"]}"') == 1
    assert "8 jobs would run, 2 up to date" in text


def test_param_change_and_upstream_root_cause(
        changed: Callable[..., tuple[Path, Path]]) -> None:
    lab, store = changed(SCALE="20")
    stages = by_stage(explain_json(lab, store))
    assert len(stages["gen"]) == 2 and len(stages["train"]) == 4 and len(stages["report"]) == 4
    for job in stages["gen"]:
        assert job["changes"] == [{"kind": "param", "text": "param scale: 10 → 20",
                                   "param": "scale", "old": 10, "new": 20}]
    for job in stages["report"]:
        change = first_change(job)
        # Followed to the root: report ← train ← gen, where the param changed.
        assert change["chain"] == ["train", "gen"]
        assert change["root"][0]["text"] == "param scale: 10 → 20"
    text = explain_text(lab, store)
    assert "upstream train ← gen" in text and "param scale: 10 → 20" in text


def test_upstream_script_edit(changed: Callable[..., tuple[Path, Path]]) -> None:
    lab, store = changed(GEN_TEXT="rows")
    stages = by_stage(explain_json(lab, store))
    assert [first_change(j)["kind"] for j in stages["gen"]] == ["script", "script"]
    for job in stages["train"] + stages["report"]:
        change = first_change(job)
        assert change["kind"] == "upstream" and change["chain"][-1] == "gen"
        # The root job is a gen job of the new lab, named for `repx explain`.
        assert change["root_job"] in {j["job"] for j in stages["gen"]}
        assert change["root"][0]["kind"] == "script"
        assert change["root"][0]["text"] == "script of gen changed"


def test_run_dependencies_change(changed: Callable[..., tuple[Path, Path]]) -> None:
    lab, store = changed(REPORT_DEPS="pkgs.gnused")
    data = explain_json(lab, store)
    stages = by_stage(data)
    assert sorted(stages) == ["report"] and len(stages["report"]) == 4
    for job in stages["report"]:
        assert [c["kind"] for c in job["changes"]] == ["runDependencies"]
        change = job["changes"][0]
        assert len(change["added"]) == 1 and "gnused" in change["added"][0]
        assert change["removed"] == []
        # The closure difference, from nix-store: gnused is in it, nothing left it.
        assert change["added"][0] in change["closure_added"]
        assert change["closure_removed"] == []
    assert "runDependencies of report changed: +host-gnused (" in explain_text(lab, store)


def test_new_sweep_value(changed: Callable[..., tuple[Path, Path]]) -> None:
    lab, store = changed(SEEDS="1 2 3")
    data = explain_json(lab, store)
    stages = by_stage(data)
    assert len(stages["gen"]) == 1 and len(stages["train"]) == 2 and len(stages["report"]) == 2
    assert {j["reason"] for j in data["jobs"]} == {"new"}
    assert stages["gen"][0]["params"]["seed"] == 3
    assert len(data["up_to_date"]) == 10
    assert "new combination" in explain_text(lab, store)


def test_deleted_output(built: tuple[Path, Path, dict[str, Any]],
                        changed: Callable[..., tuple[Path, Path]]) -> None:
    lab, store = changed()
    train = json.loads(repx("list", "jobs", "--json", cwd=lab).stdout)
    victim = next(j["id"] for j in train if j["pname"] == "train")
    (out_dir(store, victim) / "model.txt").unlink()
    data = explain_json(lab, store)
    assert data["would_run"] == [victim]
    assert data["jobs"][0]["reason"] == "output"
    assert "model" in data["jobs"][0]["text"]
    # The plain dry run's JSON carries the plan's reasons too.
    plain = json.loads(repx("build", "--dry-run", "--json", "--store", str(store),
                            cwd=lab).stdout)
    assert plain["would_run"] == [victim] and "missing" in plain["reasons"][victim]
    explained = json.loads(repx("explain", victim, "--json", "--store", str(store),
                                cwd=lab).stdout)
    assert explained[0]["reason"] == "output"


def test_failed_jobs_and_recap(changed: Callable[..., tuple[Path, Path]]) -> None:
    lab, store = changed(BAD="b")
    failing = build(lab, store, "-j", "2", "--keep-going", expect=1)
    failures = failing["failures"]
    assert len(failures) == 2
    for f in failures:
        assert f["pname"] == "train" and f["params"]["lr"] == "b" and f["run"] == "main"
        assert f["stage"] == "train" and f["stderr_log"].endswith("stderr.log")
        assert "lr b is bad" in Path(f["stderr_log"]).read_text()
    data = explain_json(lab, store)
    stages = by_stage(data)
    assert sorted(stages) == ["report", "train"]
    assert [j["reason"] for j in stages["train"]] == ["failed", "failed"]
    assert {j["params"]["lr"] for j in stages["train"]} == {"b"}
    # Their reports never ran (blocked): the same jobs were in the last build.
    assert len(stages["report"]) == 2
    assert {j["reason"] for j in stages["report"]} <= {"not run", "unfinished"}
    # The recap: the text build ends with a table of the failed jobs.
    text = repx("build", "--keep-going", "--store", str(store), cwd=lab, check=False)
    assert text.returncode == 1
    recap = text.stdout[text.stdout.index("2 failed jobs:"):]
    assert "STAGE" in recap and "PARAMS" in recap and "LOG" in recap
    assert recap.count('lr="b"') == 2 and recap.count("stderr.log") == 2
    explained = repx("explain", stages["train"][0]["job"], "--store", str(store), cwd=lab)
    assert "failed before" in explained.stdout
    # The store's views of the failures show their params too.
    listed = json.loads(repx("cache", "ls", "--status", "failed", "--json", "--store",
                             str(store), cwd=lab).stdout)
    assert sorted(r["id"] for r in listed) == sorted(f["job"] for f in failures)
    assert all(r["params"]["lr"] == "b" for r in listed)
    table = repx("cache", "ls", "--status", "failed", "--store", str(store), cwd=lab).stdout
    assert "PARAMS" in table and table.count('lr="b"') + table.count("lr=b") == 2
    jobs = repx("list", "jobs", "--status", "failed", "--store", str(store), cwd=lab).stdout
    assert "PARAMS" in jobs and jobs.count("lr=") == 2


def test_hash_mode_change(changed: Callable[..., tuple[Path, Path]]) -> None:
    lab, store = changed(HASH_MODE="params-only")
    data = explain_json(lab, store)
    assert len(data["jobs"]) == 10
    for job in data["jobs"]:
        assert first_change(job)["kind"] == "hash mode"
        assert first_change(job)["text"] == "hash mode pure → params-only"


def test_explain_needs_dry_run(built: tuple[Path, Path, dict[str, Any]]) -> None:
    lab, store, _ = built
    result = repx("build", "--explain", "--store", str(store), cwd=lab, check=False)
    assert result.returncode == 2
    assert "--explain goes with --dry-run" in result.stderr
