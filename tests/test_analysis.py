"""The analysis API over a finished sweep: rows, columns and values of its DataFrames,
output access, clear errors for jobs that have not run, no pandas unless asked for, and the
same API inside an analysis stage from the manifest it receives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from repx.analysis import (
    AnalysisError,
    Experiment,
    JobNotRunError,
    OutputMissingError,
)
from tests.conftest import EXAMPLES, REPO, require_nix, write_files
from tests.test_examples import REPX

#: evaluate/evaluation.json per (optimizer, learning_rate): final_loss, grade
#: (examples/param-sweep/README.md, "Expected results").
EXPECTED_EVALUATION = {
    ("adam", 0.1): (1.2e-05, "good"),
    ("adam", 0.01): (0.005394, "fair"),
    ("adam", 0.001): (0.040087, "poor"),
    ("sgd", 0.1): (0.001318, "fair"),
    ("sgd", 0.01): (0.009167, "fair"),
    ("sgd", 0.001): (0.054645, "poor"),
}


def run_repx(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*REPX, *args], cwd=cwd, env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        pytest.fail(f"repx {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cache = tmp_path_factory.getbasetemp() / "cache"
    return {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(cache)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """The param-sweep example, built and run to the end (13 jobs) in a private folder."""
    require_nix()
    folder = tmp_path_factory.mktemp("analysis") / "param-sweep"
    shutil.copytree(EXAMPLES / "param-sweep", folder)
    run_repx("build", "-j2", "--quiet", cwd=folder, env=env)
    return folder


@pytest.fixture
def exp(sweep: Path) -> Experiment:
    with Experiment(sweep / "result", store=sweep / ".repx") as experiment:
        yield experiment


@pytest.mark.nix
def test_dataframe_of_a_stage_has_one_row_per_job_with_params_status_and_timings(
        exp: Experiment, sweep: Path, env: dict[str, str]) -> None:
    listed = json.loads(run_repx("list", "jobs", "--json", "--stage", "train-model",
                                 "--lab", "result", cwd=sweep, env=env).stdout)
    df = exp.jobs(stage="train-model").to_dataframe()

    assert list(df.columns) == ["id", "run", "stage", "pname", "status", "started",
                                "finished", "duration", "failure", "attempts", "node",
                                "req_mem", "req_time", "max_rss", "elapsed", "cpu_time",
                                "samples", "seed", "batch_size", "learning_rate", "optimizer"]
    assert len(df) == 6
    assert sorted(df["id"]) == sorted(j["id"] for j in listed)
    assert set(df["run"]) == {"hyperparam-sweep"}
    assert set(df["stage"]) == {"train"} and set(df["pname"]) == {"train-model"}
    assert set(df["status"]) == {"succeeded"}
    assert set(zip(df["optimizer"], df["learning_rate"], strict=True)) == set(EXPECTED_EVALUATION)
    # Stage defaults, and the upstream generate job's params (effective params).
    assert set(df["batch_size"]) == {32}
    assert set(df["samples"]) == {100} and set(df["seed"]) == {42}
    assert (df["finished"] >= df["started"]).all()
    assert (df["duration"] >= 0).all() and (df["duration"] < 60).all()
    assert str(df["started"].dtype).startswith("datetime64")
    # The params of each row are the ones repx list jobs shows for that id.
    by_id = {j["id"]: j["params"] for j in listed}
    for row in df.itertuples():
        assert by_id[row.id] == {"batch_size": row.batch_size,
                                 "learning_rate": row.learning_rate,
                                 "optimizer": row.optimizer}

    own = exp.jobs(stage="train-model").to_dataframe(params="own")
    assert list(own.columns)[16:] == ["batch_size", "learning_rate", "optimizer"]

    everything = exp.jobs().to_dataframe()
    assert len(everything) == 13
    assert everything["pname"].value_counts().to_dict() == {"train-model": 6, "evaluate": 6,
                                                             "generate": 1}


@pytest.mark.nix
def test_filters_by_run_stage_and_param_values(exp: Experiment) -> None:
    picked = exp.jobs(run="hyperparam-sweep", stage="train", learning_rate=0.01)
    assert len(picked) == 2
    assert {job.params["optimizer"] for job in picked} == {"adam", "sgd"}
    assert all(job.pname == "train-model" and job.status == "succeeded" for job in picked)

    # Effective params reach downstream stages that declare none.
    evaluate = exp.jobs(stage="evaluate", learning_rate=0.01, optimizer="sgd")
    assert len(evaluate) == 1
    assert evaluate[0].params == {}
    assert evaluate[0].effective_params["learning_rate"] == 0.01
    assert [up.id for up in evaluate[0].depends_on] == [
        exp.jobs(stage="train-model", learning_rate=0.01, optimizer="sgd")[0].id]

    assert len(exp.jobs(stage="train-model", learning_rate=[0.1, 0.001])) == 4
    assert len(exp.jobs(stage="train-model", learning_rate=lambda v: v < 0.05)) == 4
    assert len(exp.jobs(lambda j: j.pname == "generate")) == 1
    assert len(exp.jobs(status="succeeded")) == 13
    assert len(exp.jobs(stage="train-model").filter(optimizer="adam")) == 3
    assert exp.job(picked[0].id[:10]).id == picked[0].id

    with pytest.raises(AnalysisError, match="no selected job has a param 'lr'.*learning_rate"):
        exp.jobs(stage="train-model", lr=0.01)
    with pytest.raises(AnalysisError, match="no stage 'trian'.*train-model"):
        exp.jobs(stage="trian")
    with pytest.raises(AnalysisError, match="no run 'sweep'.*hyperparam-sweep"):
        exp.jobs(run="sweep")


@pytest.mark.nix
def test_outputs_by_name_and_by_file(exp: Experiment, sweep: Path) -> None:
    generate = exp.jobs(stage="generate")[0]
    path = generate.output_path("dataset")
    assert path == (sweep / ".repx" / "outputs" / generate.id / "out" / "dataset.csv").resolve()
    data = generate.load_csv("dataset")
    assert list(data.columns) == ["x", "y"] and len(data) == 100
    assert generate.load_csv("dataset.csv").equals(data)

    train = exp.jobs(stage="train-model", learning_rate=0.1, optimizer="adam")[0]
    metrics = train.load_json("metrics")
    assert metrics["optimizer"] == "adam" and metrics["learning_rate"] == 0.1
    assert train.load_text("model.txt").startswith("w=")
    assert set(train.output_paths()) == {"metrics", "model"}
    with pytest.raises(AnalysisError, match="declares no output 'weights'.*metrics, model"):
        train.output_path("weights")


@pytest.mark.nix
def test_collect_concatenates_one_output_of_a_stage_with_its_params(exp: Experiment) -> None:
    df = exp.collect("evaluation")
    assert len(df) == 6
    assert list(df.columns[:3]) == ["id", "samples", "seed"]
    # evaluation.json repeats learning_rate/optimizer/batch_size with the same values:
    # they are not doubled as params.<name> columns.
    assert not [c for c in df.columns if c.startswith("params.")]
    assert set(df.columns) == {"id", "samples", "seed", "optimizer", "learning_rate",
                               "batch_size", "final_loss", "grade"}
    got = {(r.optimizer, r.learning_rate): (r.final_loss, r.grade) for r in df.itertuples()}
    assert got == EXPECTED_EVALUATION
    assert set(df["id"]) == set(exp.jobs(stage="evaluate").ids)

    # A loader of one's own; a dict becomes one row.
    losses = exp.collect("metrics", loader=lambda p: {"loss": json.loads(p.read_text())
                                                      ["final_loss"]},
                         optimizer="sgd")
    assert list(losses.columns) == ["id", "samples", "seed", "batch_size", "learning_rate",
                                    "optimizer", "loss"]
    assert sorted(losses["loss"]) == sorted(v[0] for k, v in EXPECTED_EVALUATION.items()
                                            if k[0] == "sgd")
    # CSV outputs concatenate their rows.
    dataset = exp.collect("dataset")
    assert len(dataset) == 100 and list(dataset.columns) == ["id", "samples", "seed", "x", "y"]
    with pytest.raises(AnalysisError, match="no selected job declares an output 'loss'"):
        exp.collect("loss")


@pytest.mark.nix
def test_asking_for_outputs_of_a_job_that_has_not_run_says_so(
        sweep: Path, tmp_path: Path, env: dict[str, str]) -> None:
    store = tmp_path / "store"
    shutil.copytree(sweep / ".repx", store)
    with Experiment(sweep / "result", store=store) as exp:
        gone = exp.jobs(stage="evaluate", learning_rate=0.001, optimizer="adam")[0]
    run_repx("cache", "rm", gone.id, "--store", str(store), cwd=sweep, env=env)

    with Experiment(sweep / "result", store=store) as exp:
        job = exp.job(gone.id)
        assert job.status == "not run" and job.record is None and job.duration is None
        with pytest.raises(JobNotRunError, match=r"has not run: the store at .* has no record "
                                                 r"of it.*repx build hyperparam-sweep"):
            job.output_path("evaluation")
        with pytest.raises(JobNotRunError, match="1 of 6 jobs with output 'evaluation' have "
                                                 r"not run successfully \(1 not run\)"):
            exp.collect("evaluation")
        with pytest.warns(UserWarning, match="left out 1 of 6"):
            partial = exp.collect("evaluation", missing="skip")
        assert len(partial) == 5 and gone.id not in set(partial["id"])
        df = exp.jobs(stage="evaluate").to_dataframe()
        row = df[df["id"] == gone.id].iloc[0]
        assert row["status"] == "not run" and str(row["started"]) == "NaT"
        assert exp.jobs(stage="evaluate", status="not run").ids == [gone.id]

    # Succeeded, but its file deleted by hand.
    with Experiment(sweep / "result", store=store) as exp:
        other = exp.jobs(stage="evaluate", learning_rate=0.1, optimizer="sgd")[0]
        other.output_path("evaluation").unlink()
        with pytest.raises(OutputMissingError, match="missing.*cache verify"):
            other.load_json("evaluation")


@pytest.mark.nix
def test_core_api_works_without_pandas(sweep: Path, env: dict[str, str]) -> None:
    script = textwrap.dedent("""
        import sys
        sys.modules["pandas"] = None  # as if it were not installed
        from repx.analysis import Experiment
        exp = Experiment("result", store=".repx")
        jobs = exp.jobs(stage="train-model", learning_rate=0.01)
        assert len(jobs) == 2
        assert jobs[0].load_json("metrics")["learning_rate"] == 0.01
        assert jobs[0].output_path("model").is_file()
        try:
            jobs.to_dataframe()
        except ImportError as exc:
            print("ImportError:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=sweep, env=env,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "ImportError: DataFrames need pandas" in out.stdout
    assert "pip install 'repx[analysis]'" in out.stdout

    # Importing the module and listing jobs never imports pandas.
    check = ("import sys, repx.analysis as a; e = a.Experiment('result'); e.jobs(seed=42); "
             "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", check], cwd=sweep, env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------- inside an analysis stage

ANALYSIS_LAB = {
    "lab.nix": """
        { pkgs, repx-lib, gitHash ? "unknown", ... }:
        let
          sim = repx-lib.callRun ./runs/sim.nix [ ];
          analysis = repx-lib.callRun ./runs/analysis.nix [ sim ];
        in
        repx-lib.mkLab {
          inherit pkgs repx-lib gitHash;
          lab_version = "1.0";
          runs = { inherit sim analysis; };
        }
    """,
    "runs/sim.nix": """
        { pkgs, repx-lib, ... }:
        { name = "sim"; pipelines = [ ../pipelines/sim.nix ]; params = { seed = [ 1 2 3 ]; }; }
    """,
    "runs/analysis.nix": """
        { pkgs, repx-lib, ... }:
        { name = "analysis"; pipelines = [ ../pipelines/analysis.nix ]; params = { }; }
    """,
    "pipelines/sim.nix": """
        { repx, pkgs, ... }:
        repx.mkPipe rec {
          draw = repx.callStage ../stages/draw.nix [ ];
          square = repx.callStage ../stages/square.nix [ draw ];
        }
    """,
    "pipelines/analysis.nix": """
        { repx, pkgs, ... }:
        repx.mkPipe rec { table = repx.callStage ../stages/table.nix [ ]; }
    """,
    "stages/draw.nix": """
        { pkgs }:
        {
          pname = "draw";
          params = { seed = 1; };
          outputs = { value = "$out/value.txt"; };
          runDependencies = [ pkgs.coreutils ];
          run = { outputs, params, ... }: ''
            echo "$(( ${toString params.seed} * 7 % 5 ))" > "${outputs.value}"
          '';
        }
    """,
    "stages/square.nix": """
        { pkgs }:
        {
          pname = "square";
          inputs = { value = ""; };
          outputs = { result = "$out/result.json"; };
          runDependencies = [ pkgs.coreutils ];
          run = { inputs, outputs, ... }: ''
            read -r v < "${inputs.value}"
            echo "{\\"square\\": $((v * v))}" > "${outputs.result}"
          '';
        }
    """,
    # The analysis stage uses repx.analysis itself (PYTHONPATH comes from the build's
    # environment) with the host's python3, which has no pandas: the manifest API is
    # standard library only.
    "stages/table.nix": """
        { pkgs }:
        {
          pname = "table";
          inputs = { metadata__sim = ""; };
          outputs = { table = "$out/table.json"; };
          runDependencies = [ pkgs.python3 ];
          run = { inputs, outputs, ... }: ''
            python3 - "${inputs.metadata__sim}" "${outputs.table}" <<'PY'
            import json, sys
            from repx.analysis import Experiment
            exp = Experiment.from_manifest(sys.argv[1])
            rows = [{"seed": j.effective_params["seed"], "params": j.params,
                     "square": j.load_json("result")["square"], "status": j.status}
                    for j in exp.jobs(stage="square")]
            json.dump(sorted(rows, key=lambda r: r["seed"]), open(sys.argv[2], "w"))
            PY
          '';
        }
    """,
}


@pytest.mark.nix
def test_the_same_api_inside_an_analysis_stage_from_its_manifest(
        tmp_path: Path, env: dict[str, str]) -> None:
    require_nix()
    folder = tmp_path / "lab"
    write_files(folder, ANALYSIS_LAB)
    run_repx("build", "-j2", "--quiet", cwd=folder, env=env)

    with Experiment(folder / "result", store=folder / ".repx") as exp:
        table = exp.jobs(stage="table")[0]
        rows = table.load_json("table")
        manifest = table.stderr_log.parent / "metadata__sim.json"
        expected = exp.collect("result", run="sim")
    # seed lives in the upstream draw job: the stage found it through the manifest's
    # input mappings.
    assert rows == [{"seed": s, "params": {}, "square": (s * 7 % 5) ** 2, "status": "succeeded"}
                    for s in (1, 2, 3)]

    # The same manifest, read here: the same jobs, params and outputs as lab + store give.
    from_manifest = Experiment.from_manifest(manifest)
    assert from_manifest.runs == ["sim"]
    got = from_manifest.collect("result")
    assert sorted(got["id"]) == sorted(expected["id"])
    assert got.sort_values("id")[["seed", "square"]].values.tolist() == \
        expected.sort_values("id")[["seed", "square"]].values.tolist()
    df = from_manifest.jobs(stage="draw").to_dataframe()
    assert sorted(df["seed"]) == [1, 2, 3] and set(df["status"]) == {"succeeded"}
    with pytest.raises(AnalysisError, match="cannot read the run manifest"):
        Experiment.from_manifest(tmp_path / "nope.json")
