"""``repx_py``, the original RepX's analysis API, over a lab that repx built and ran.

One lab, built and run once per module with real Nix and the real store: a ``sim`` run that
sweeps ``lr`` × ``model`` through ``train-model`` (a CSV of losses; the vgg/0.01 job fails
on purpose) and ``evaluate`` (declares no params, so its params are its model's), and a
``report`` run, soft on ``sim``, whose one job receives ``metadata__sim``. The same API is
then checked from a notebook (``Experiment(lab_path=…)``), from the manifest an analysis
stage receives (``Experiment.from_run_metadata``), from the original's own run metadata
and from the list that earlier repx versions wrote, and with nothing but the standard
library (the host's ``/usr/bin/python3``).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

import repx_py
from repx.analysis import AnalysisError, OutputMissingError
from repx_py import (
    Experiment,
    LocalCacheResolver,
    ManifestResolver,
    MetadataError,
    MetadataNotFoundError,
    NotFoundError,
)
from tests.buildutil import build, write_lab
from tests.conftest import REPO, require_nix

pytestmark = pytest.mark.nix

HOST_PYTHON = Path("/usr/bin/python3")

FILES = {
    "lab.nix": """
        { pkgs, repx-lib, gitHash ? "unknown", ... }:
        let
          sim = repx-lib.callRun ./run-sim.nix [ ];
          report = repx-lib.callRun ./run-report.nix [ [ sim "soft" ] ];
        in
        repx-lib.mkLab {
          inherit pkgs repx-lib gitHash;
          lab_version = "1.0";
          runs = { inherit sim report; };
        }
    """,
    "run-sim.nix": """
        _: {
          name = "sim";
          pipelines = [ ./pipe-sim.nix ];
          parameters = { lr = [ 0.1 0.01 ]; model = [ "resnet" "vgg" ]; };
        }
    """,
    "run-report.nix": """
        _: { name = "report"; pipelines = [ ./pipe-report.nix ]; parameters = { }; }
    """,
    "pipe-sim.nix": """
        { repx }:
        repx.mkPipe rec {
          train = repx.callStage ./train.nix [ ];
          evaluate = repx.callStage ./evaluate.nix [ train ];
        }
    """,
    "pipe-report.nix": """
        { repx }:
        repx.mkPipe { collect = repx.callStage ./collect.nix [ ]; }
    """,
    # loss at step s: lr * 100 / s (vgg: twice that); vgg with lr 0.01 fails.
    "train.nix": """
        { pkgs }:
        {
          pname = "train-model";
          parameters = { lr = 0.1; model = "resnet"; };
          resources = { mem = "256M"; cpus = 1; };
          outputs = { metrics = "$out/metrics.csv"; };
          runDependencies = [ pkgs.gawk ];
          run = { outputs, parameters, ... }: ''
            if [ "${parameters.model}" = vgg ] && [ "${parameters.lr}" = 0.01 ]; then
              echo "vgg diverged" >&2
              exit 1
            fi
            awk -v lr="${parameters.lr}" -v model="${parameters.model}" 'BEGIN {
              print "step,loss"
              for (s = 1; s <= 3; s++) print s "," lr * 100 / s * (model == "vgg" ? 2 : 1)
            }' > "${outputs.metrics}"
          '';
        }
    """,
    "evaluate.nix": """
        { pkgs }:
        {
          pname = "evaluate";
          inputs = { metrics = ""; };
          outputs = { score = "$out/score.json"; };
          runDependencies = [ pkgs.gawk ];
          run = { inputs, outputs, ... }: ''
            awk -F, 'NR > 1 { last = $2 } END { print "{\\"final_loss\\": " last "}" }' \\
              "${inputs.metrics}" > "${outputs.score}"
          '';
        }
    """,
    "collect.nix": """
        { pkgs }:
        {
          pname = "collect";
          inputs = { metadata__sim = ""; store__base = ""; };
          outputs = { copy = "$out/metadata.json"; };
          runDependencies = [ pkgs.coreutils ];
          run = { inputs, outputs, ... }: ''
            cp "${inputs.metadata__sim}" "${outputs.copy}"
          '';
        }
    """,
}

#: The final loss of each (model, lr) that trains: lr * 100 / 3, doubled for vgg.
FINAL_LOSS = {("resnet", 0.1): 10 / 3, ("resnet", 0.01): 1 / 3, ("vgg", 0.1): 20 / 3}


class Lab:
    """The built and run lab: its folder and store, and its job ids by (pname, model, lr)."""

    def __init__(self, folder: Path, store: Path, failed: list[str]) -> None:
        self.folder = folder
        self.store = store
        self.failed = failed

    @property
    def result(self) -> Path:
        return self.folder / "result"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    require_nix()
    folder = write_lab(tmp_path_factory.mktemp("repx-py") / "lab", FILES)
    store = folder / ".repx"
    result = build(folder, store, "-j", "2", "--keep-going", expect=1)
    assert len(result["failed"]) == 1 and "train-model" in result["failed"][0], result.data
    # 3 train, 3 evaluate and the report's collect ran; the failed model's evaluate did not.
    assert len(result.executed) == 7, result.data
    return Lab(folder, store, result["failed"])


@pytest.fixture
def exp(lab: Lab) -> Experiment:
    return Experiment(lab_path=lab.result, store=lab.store)


def by_params(jobs: repx_py.JobCollection) -> dict[tuple[Any, ...], repx_py.JobView]:
    return {(j.name, j.effective_params.get("model"), j.effective_params.get("lr")): j
            for j in jobs}


def manifest_received(lab: Lab, exp: Experiment) -> Path:
    """The metadata__sim file the report's collect job was started with."""
    collect = exp.jobs().filter(name="collect-1.1")[0]
    path = lab.store / "outputs" / collect.id / "repx" / "metadata__sim.json"
    assert path.is_file(), path
    return path


# ------------------------------------------------------------------- over a built lab


def test_filter_by_name_operators_and_params(exp: Experiment) -> None:
    jobs = exp.jobs()
    assert len(jobs) == 9 and len(exp.effective_params) == 9
    assert {j.name for j in jobs} == {"train-model-1.1", "evaluate-1.1", "collect-1.1"}
    assert len(jobs.filter(name__contains="train")) == 4
    assert len(jobs.filter(name__startswith="evaluate")) == 4
    assert len(jobs.filter(name__endswith="-1.1")) == 9
    assert len(jobs.filter(name="train-model-1.1")) == 4
    # param_<name> is the effective param: evaluate has lr through the model it evaluates.
    lr_small = jobs.filter(param_lr=0.01)
    assert sorted(j.name for j in lr_small) == ["evaluate-1.1", "evaluate-1.1",
                                                "train-model-1.1", "train-model-1.1"]
    picked = jobs.filter(name__contains="evaluate", param_model__contains="res")
    assert sorted(j.effective_params["lr"] for j in picked) == [0.01, 0.1]
    # A bare param name (the original's documentation: filter(seed=42)) and a predicate.
    assert len(jobs.filter(model="vgg", lr=0.1)) == 2
    assert len(jobs.filter(lambda j: j.effective_params.get("lr", 1) < 0.05,
                           stage_type="simple")) == 4
    # Chained filters and slices stay collections.
    assert len(jobs.filter(name__contains="train").filter(param_model="vgg")[:1]) == 1


def test_a_filter_on_nothing_says_what_exists(exp: Experiment) -> None:
    with pytest.raises(AnalysisError) as error:
        exp.jobs().filter(param_sed=1)
    message = str(error.value)
    assert "filter(param_sed=…): no job here has a param 'sed'" in message
    assert "params: lr, model" in message and "__contains" in message
    # A param that only some jobs have selects those that do (collect has no lr).
    assert "collect-1.1" not in {j.name for j in exp.jobs().filter(param_lr=0.1)}


def test_effective_params_params_and_dependencies(exp: Experiment) -> None:
    jobs = by_params(exp.jobs())
    evaluate = jobs[("evaluate-1.1", "vgg", 0.1)]
    train = jobs[("train-model-1.1", "vgg", 0.1)]
    assert evaluate.params == {} and evaluate.effective_params == {"lr": 0.1, "model": "vgg"}
    assert train.params == {"lr": 0.1, "model": "vgg"}
    assert [d.id for d in evaluate.dependencies] == [train.id]
    assert exp.effective_params[evaluate.id] == evaluate.effective_params
    assert evaluate.input_mappings == [{"job_id": train.id, "source_output": "metrics",
                                        "target_input": "metrics", "type": "intra-pipeline"}]
    # The rest of the metadata through attribute access, as in the original.
    assert train.resource_hints == {"mem": "256M", "cpus": 1}
    assert train.stage_type == "simple" and train.executable_path.endswith("/train-model")
    with pytest.raises(AttributeError, match="no attribute or data key 'nope'"):
        _ = train.nope


def test_get_output_path_load_csv_and_load_json(exp: Experiment, lab: Lab) -> None:
    train = exp.jobs().filter(name__contains="train", param_model="resnet", param_lr=0.1)[0]
    path = train.get_output_path("metrics")
    assert path == lab.store / "outputs" / train.id / "out" / "metrics.csv"
    assert train.outputs == {"metrics": "$out/metrics.csv"}
    frame = train.load_csv("metrics")
    assert list(frame.columns) == ["step", "loss"] and frame["step"].tolist() == [1, 2, 3]
    assert frame["loss"].tolist() == pytest.approx([10, 5, 10 / 3], rel=1e-5)
    # By file name, with read_csv's keyword arguments.
    assert train.load_csv("metrics.csv", usecols=["loss"]).shape == (3, 1)
    for job in exp.jobs().filter(name__startswith="evaluate"):
        key = (job.effective_params["model"], job.effective_params["lr"])
        if key in FINAL_LOSS:
            assert job.load_json("score")["final_loss"] == pytest.approx(FINAL_LOSS[key],
                                                                         rel=1e-5)
    with pytest.raises(KeyError, match=r"Available keys: \['metrics'\]"):
        train.get_output_path("weights")


def test_outputs_of_a_failed_job_say_why(exp: Experiment, lab: Lab) -> None:
    failed = exp.get_job(lab.failed[0])
    assert failed.status == "failed" and failed.effective_params == {"lr": 0.01, "model": "vgg"}
    # The original returns the path whether or not the file exists; reading it explains.
    assert not failed.get_output_path("metrics").exists()
    with pytest.raises(OutputMissingError) as error:
        failed.load_csv("metrics")
    assert isinstance(error.value, FileNotFoundError)
    assert "because the job is failed" in str(error.value)
    assert "stderr.log" in str(error.value)
    blocked = exp.jobs().filter(name__contains="evaluate", param_model="vgg", param_lr=0.01)[0]
    with pytest.raises(FileNotFoundError, match="repx build sim"):
        blocked.load_json("score")


def test_jobs_runs_and_lookup(exp: Experiment, lab: Lab) -> None:
    runs = exp.runs()
    assert sorted(runs) == ["report", "sim"]
    assert runs["sim"]["type"] == "run" and runs["sim"]["name"] == "sim"
    assert runs["report"]["dependencies"] == {"sim": "soft"}
    assert len(runs["sim"]["jobs"]) == 8
    train_id = lab.failed[0]
    assert exp.get_job(train_id[:12]).id == train_id
    assert exp.get_run_for_job(train_id)[0] == "sim"
    with pytest.raises(KeyError, match="Job ID 'nope' not found"):
        exp.get_job("nope")
    frame = exp.jobs().filter(name__contains="train").to_dataframe()
    assert frame.index.name == "job_id" and len(frame) == 4
    assert list(frame.columns) == ["name", "lr", "model"]


def test_resolvers_and_the_default_store(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    # Default: the store beside the lab (as repx build found it), ./result as the lab.
    monkeypatch.chdir(lab.folder)
    monkeypatch.delenv("REPX_STORE", raising=False)
    default = Experiment()
    train = default.jobs().filter(name__contains="train", param_model="resnet", param_lr=0.1)[0]
    assert default.resolver.cache_dir == lab.store / "outputs"
    expected = train.get_output_path("metrics")
    assert train.status == "succeeded"
    # An explicit resolver reads no store unless asked: same paths, statuses unknown.
    copy = Experiment(lab_path="result", resolver=LocalCacheResolver(lab.store / "outputs"))
    same = copy.get_job(train.id)
    assert same.get_output_path("metrics") == expected and same.status == "unknown"
    assert same.load_csv("metrics")["step"].tolist() == [1, 2, 3]
    mapped = Experiment(lab_path="result", store=lab.store,
                        resolver=ManifestResolver({train.id: lab.store / "outputs" / train.id
                                                   / "out"}))
    assert mapped.get_job(train.id).get_output_path("metrics") == expected
    assert mapped.get_job(train.id).status == "succeeded"
    with pytest.raises(FileNotFoundError, match="No output path recorded"):
        mapped.get_job(lab.failed[0]).get_output_path("metrics")


# ------------------------------------------------------------ inside an analysis stage


def test_from_run_metadata_reads_what_an_analysis_stage_receives(exp: Experiment,
                                                                 lab: Lab) -> None:
    manifest = manifest_received(lab, exp)
    inside = Experiment.from_run_metadata(manifest, lab.store)
    assert inside.resolver.cache_dir == lab.store / "outputs"
    assert len(inside.jobs()) == 8 and list(inside.runs()) == ["sim"]
    for job in inside.jobs():
        same = exp.get_job(job.id)
        # The store has no record of a blocked job; the manifest says why it did not run.
        status = "blocked" if same.status == "not run" else same.status
        assert (job.name, job.params, job.effective_params, job.status) == (
            same.name, same.params, same.effective_params, status)
        assert job.get_output_path(next(iter(job.outputs))) == \
            same.get_output_path(next(iter(same.outputs)))
    assert {j.status for j in inside.jobs()} == {"succeeded", "failed", "blocked"}
    train = inside.jobs().filter(name__contains="train", param_model="vgg", param_lr=0.1)[0]
    assert train.load_csv("metrics")["loss"].tolist() == pytest.approx([20, 10, 20 / 3], rel=1e-5)
    # The manifest's own keys are the original's, plus repx's.
    entry = json.loads(manifest.read_text())["jobs"][train.id]
    assert entry["executables"]["main"]["outputs"] == {"metrics": "$out/metrics.csv"}
    assert entry["outputs"]["metrics"] == str(train.get_output_path("metrics"))


def test_from_run_metadata_with_nothing_but_the_standard_library(exp: Experiment,
                                                                 lab: Lab) -> None:
    """What an analysis stage's plain python3 does: import repx_py, read, filter."""
    if not HOST_PYTHON.is_file():
        pytest.fail(f"{HOST_PYTHON} is missing: this test needs the host's bare python3 "
                    "(apt-get install python3)")
    script = textwrap.dedent("""
        import json, sys
        from repx_py import Experiment
        exp = Experiment.from_run_metadata(sys.argv[1], sys.argv[2])
        rows = sorted(
            [j.effective_params["model"], j.effective_params["lr"],
             json.load(open(j.get_output_path("score")))["final_loss"]]
            for j in exp.jobs().filter(name__contains="evaluate", status="succeeded"))
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("pandas", "lmdb", "msgpack", "blake3", "click"))
        print(json.dumps({"rows": rows, "heavy": heavy}))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONNOUSERSITE": "1"}
    out = subprocess.run([str(HOST_PYTHON), "-c", script, str(manifest_received(lab, exp)),
                          str(lab.store)], env=env, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["heavy"] == []
    assert [(m, lr) for m, lr, _ in got["rows"]] == sorted(FINAL_LOSS)
    for model, lr, loss in got["rows"]:
        assert loss == pytest.approx(FINAL_LOSS[(model, lr)], rel=1e-5)


def test_from_run_metadata_reads_the_originals_run_metadata(tmp_path: Path) -> None:
    """A ``revision/metadata-<run>.json`` as the original writes it: no statuses, no
    absolute paths; the outputs are found under store_base/outputs."""
    producer = "0" * 32 + "-stage-A-producer-1.1"
    consumer = "1" * 32 + "-stage-C-consumer-1.1"
    metadata = {
        "type": "run", "name": "simulation-run", "gitHash": "integration-test",
        "dependencies": {},
        "jobs": {
            producer: {"name": "stage-A-producer-1.1", "stage_type": "simple",
                       "params": {"offset": 2},
                       "executables": {"main": {
                           "path": f"jobs/{producer}/bin/stage-A-producer", "inputs": [],
                           "outputs": {"data.numbers": "$out/numbers.txt"}}}},
            consumer: {"name": "stage-C-consumer-1.1", "stage_type": "simple",
                       "params": {"mode": "fast"},
                       "executables": {"main": {
                           "inputs": [{"job_id": producer, "source_output": "data.numbers",
                                       "target_input": "numbers", "type": "intra-pipeline"}],
                           "outputs": {"data.combined": "$out/combined.txt"}}},
                       "resource_hints": {"mem": "1G"}},
        },
    }
    path = tmp_path / "metadata-simulation-run.json"
    path.write_text(json.dumps(metadata))
    store = tmp_path / "store"
    (store / "outputs" / producer / "out").mkdir(parents=True)
    (store / "outputs" / producer / "out" / "numbers.txt").write_text("1\n2\n")

    exp = Experiment.from_run_metadata(path, store)
    consumer_job = exp.jobs().filter(name__contains="consumer")[0]
    assert consumer_job.effective_params == {"offset": 2, "mode": "fast"}
    assert consumer_job.resource_hints == {"mem": "1G"}
    assert consumer_job.status == "unknown"
    producer_job = exp.get_job(producer)
    assert producer_job.get_output_path("data.numbers") == \
        store / "outputs" / producer / "out" / "numbers.txt"
    assert producer_job.executable_path == f"jobs/{producer}/bin/stage-A-producer"
    assert producer_job.load_csv("data.numbers", header=None)[0].tolist() == [1, 2]
    assert exp.runs()["simulation-run"]["gitHash"] == "integration-test"
    with pytest.raises(FileNotFoundError, match="status is unknown"):
        consumer_job.load_csv("data.combined")
    # repx's own API reads it too; without store_base the templates cannot resolve.
    from repx.analysis import Experiment as RepxExperiment

    assert RepxExperiment.from_manifest(path, store_base=store).jobs(
        stage="stage-A-producer")[0].load_text("numbers.txt") == "1\n2\n"
    with pytest.raises(AnalysisError, match="pass store_base="):
        RepxExperiment.from_manifest(path).job(producer).output_path("data.numbers")


def test_from_manifest_reads_the_list_earlier_repx_versions_wrote(tmp_path: Path) -> None:
    out = tmp_path / "store" / "outputs" / "abc-draw-1.0" / "out"
    out.mkdir(parents=True)
    (out / "value.txt").write_text("3\n")
    entries = [{"id": "abc-draw-1.0", "run": "sim", "stage": "draw", "pname": "draw",
                "params": {"seed": 1}, "status": "succeeded",
                "outputs": {"value": str(out / "value.txt")}}]
    path = tmp_path / "metadata__sim.json"
    path.write_text(json.dumps(entries))
    exp = Experiment.from_run_metadata(path, tmp_path / "store")
    job = exp.get_job("abc-draw-1.0")
    assert (job.name, job.effective_params, job.status) == ("draw-1.0", {"seed": 1},
                                                            "succeeded")
    assert job.get_output_path("value") == out / "value.txt"
    assert exp.runs()["sim"]["jobs"]["abc-draw-1.0"]["stage_type"] == "simple"


def test_from_run_metadata_errors_are_the_originals_types(tmp_path: Path) -> None:
    with pytest.raises(MetadataNotFoundError) as missing:
        Experiment.from_run_metadata(tmp_path / "nope.json", tmp_path)
    assert isinstance(missing.value, FileNotFoundError)
    assert isinstance(missing.value, AnalysisError)
    assert "metadata__<run> input" in str(missing.value)
    root = tmp_path / "metadata-top.json"
    root.write_text(json.dumps({"type": "root", "runs": [], "jobs": {}}))
    with pytest.raises(ValueError, match="'type' is 'root', expected 'run'") as wrong:
        Experiment.from_run_metadata(root, tmp_path)
    assert isinstance(wrong.value, MetadataError)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the run manifest"):
        Experiment.from_run_metadata(garbage, tmp_path)
    assert issubclass(NotFoundError, KeyError)

