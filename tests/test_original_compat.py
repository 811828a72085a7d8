"""A lab written for the original RepX builds and runs on repx unchanged.

``examples/original-style`` is written the way the original's own examples are
(``parameters``, ``{ repx }:`` pipelines, ``_: { … }`` runs, ``[ "${parameters.mode}" = slow ]``
in a script, dotted output names, and an analysis stage in a ``python3.withPackages``
interpreter that reads ``metadata__simulation-run`` through ``repx_py``). It is built and
run here with real Nix, the real store and the host's python3, from a copy of the folder,
and the analysis it produced is checked value by value. The build runs as it does for a
user who installed repx with pip: the CLI from this interpreter's installed repx with no
``PYTHONPATH``, which the jobs inherit, so the analysis stage's python3 can only get
``repx_py`` from the store (``ps.repx-py``). The manifest the analysis read is checked
against the original's shape, for a simple and for a scatter-gather stage.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repx import __version__ as REPX_VERSION
from repx.analysis import Experiment as RepxExperiment
from repx.engine.manifest import ManifestWriter
from repx.store.layout import JobFolders
from tests.buildutil import FAST_INPUTS
from tests.conftest import EXAMPLES, REPO, require_nix

pytestmark = pytest.mark.nix

EXAMPLE = EXAMPLES / "original-style"

#: analysis.csv: (mode, seed) -> (points, sum): y = seed * x for x = 1..points, 100 points
#: when slow, 10 when fast.
EXPECTED_ANALYSIS = {
    ("fast", 1): (10, 55), ("fast", 2): (10, 110),
    ("slow", 1): (100, 5050), ("slow", 2): (100, 10100),
}


def installed_repx_build(folder: Path, store: Path, *args: str) -> dict:
    """``repx build --json`` in ``folder`` as a pip user runs it: ``python -m repx`` from
    this interpreter's installed repx, with no ``PYTHONPATH`` (tests.buildutil's helper
    points it at the checkout, and jobs would inherit that). Returns the JSON summary."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "repx", "build", "--json", "--store",
                           str(store), *args], cwd=folder, env={**env, **FAST_INPUTS},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False, timeout=180)
    if "No module named repx" in proc.stderr:
        pytest.fail(f"{sys.executable} cannot import repx without PYTHONPATH: run the tests "
                    "with the venv's python, where `make setup` installed repx")
    assert proc.returncode == 0, f"repx build failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The example, copied, built and run: (folder, store, the build's JSON summary)."""
    require_nix()
    folder = tmp_path_factory.mktemp("original-style") / "lab"
    shutil.copytree(EXAMPLE, folder)
    store = folder / ".repx"
    return folder, store, installed_repx_build(folder, store, "-j", "2")


def analysis_job(folder: Path, store: Path) -> RepxExperiment:
    # The lab file is nix/lab.nix, as in the original's layout; its result link is beside it.
    return RepxExperiment(folder / "nix" / "result", store=store)


def test_original_style_lab_builds_runs_and_analyses_unchanged(ran) -> None:
    folder, store, summary = ran
    # 4 producers, 4 summers, the analysis: everything ran, nothing failed.
    assert len(summary["executed"]) == 9 and summary["failed"] == [], summary
    with analysis_job(folder, store) as exp:
        assert exp.runs == ["simulation-run", "analysis-run"]
        plotter = exp.jobs(stage="plotter")[0]
        with open(plotter.output_path("analysis.csv"), newline="") as handle:
            rows = list(csv.DictReader(handle))
        log = plotter.stdout_log.read_text()
    got = {(r["mode"], int(r["seed"])): (int(r["points"]), int(r["sum"])) for r in rows}
    assert got == EXPECTED_ANALYSIS
    assert "Loading experiment from" in log and "Saved 4 rows to" in log

    again = installed_repx_build(folder, store)
    assert again["executed"] == [] and len(again["up_to_date"]) == 9


def test_the_analysis_python_gets_repx_py_from_the_store(ran) -> None:
    """ps.repx-py is in the closure of the analysis stage's script, made from the checkout's
    repx_py, so the stage needs no PYTHONPATH and no repx installed for its python3."""
    folder, _, _ = ran
    [script] = (folder / "nix" / "result" / "scripts").glob("*-simple-plotter-script-*")
    closure = subprocess.run(["nix-store", "--query", "--requisites", str(script.resolve())],
                             capture_output=True, text=True, check=True).stdout.split()
    [package] = [Path(p) for p in closure if p.endswith(f"-host-repx-py-{REPX_VERSION}")]
    site = package / "lib" / "python3" / "site-packages"
    assert (site / "repx_py" / "models.py").read_text() == \
        (REPO / "repx_py" / "models.py").read_text()
    assert (site / "repx" / "analysis.py").is_file()


def test_the_manifest_the_analysis_read_has_the_originals_shape(ran) -> None:
    folder, store, _ = ran
    with analysis_job(folder, store) as exp:
        plotter = exp.jobs(stage="plotter")[0]
        manifest = plotter.stderr_log.parent / "metadata__simulation-run.json"
        producers = {j.id: j for j in exp.jobs(stage="producer")}
    document = json.loads(manifest.read_text())
    assert {k: document[k] for k in ("type", "name", "dependencies")} == {
        "type": "run", "name": "simulation-run", "dependencies": {}}
    assert isinstance(document["gitHash"], str) and document["gitHash"]
    assert len(document["jobs"]) == 8
    for job_id, producer in producers.items():
        entry = document["jobs"][job_id]
        assert entry["name"] == "simple-producer-1.1"
        assert entry["stage_type"] == "simple"
        assert entry["params"] == producer.params
        assert entry["executables"]["main"] == {"inputs": [],
                                                "outputs": {"data.csv": "$out/data.csv"}}
        slow = producer.params["mode"] == "slow"
        assert entry["resource_hints"] == {"mem": "1G" if slow else "512M", "cpus": 1}
        # repx's own keys, beside the original's.
        assert (entry["id"], entry["run"], entry["stage"], entry["pname"], entry["status"]) \
            == (job_id, "simulation-run", "producer", "simple-producer", "succeeded")
        assert entry["outputs"] == {"data.csv": str(store / "outputs" / job_id / "out"
                                                    / "data.csv")}
    summers = [e for e in document["jobs"].values() if e["name"] == "simple-summer-1.1"]
    assert sorted(m["job_id"] for e in summers for m in e["executables"]["main"]["inputs"]) \
        == sorted(producers)


def test_scatter_gather_jobs_in_a_manifest_are_where_the_original_looks(build) -> None:
    """A scatter-gather job: ``scatter`` holds its input mappings, ``gather`` its outputs."""
    graph = build(EXAMPLES / "scatter-gather")
    run = next(iter(graph.runs.values()))
    writer = ManifestWriter(graph, JobFolders("/store"))
    statuses = {job_id: "succeeded" for job_id in run.job_ids}
    document = json.loads(writer.text(run.name, run.job_ids, statuses))
    sg = [j for j in graph.jobs.values() if j.kind == "scatter-gather"]
    assert sg, "examples/scatter-gather has a scatter-gather stage"
    for job in sg:
        entry = document["jobs"][job.id]
        assert entry["stage_type"] == "scatter-gather"
        assert set(entry["executables"]) == {"scatter", "gather"}
        outputs = entry["executables"]["gather"]["outputs"]
        assert outputs and all(t.startswith("$out/") for t in outputs.values()), outputs
        assert [m["job_id"] for m in entry["executables"]["scatter"]["inputs"]
                if "job_id" in m] == job.depends_on
    # A second write reuses everything but the statuses, and says the new ones.
    statuses[run.job_ids[0]] = "failed"
    again = json.loads(writer.text(run.name, run.job_ids, statuses))
    assert again["jobs"][run.job_ids[0]]["status"] == "failed"
    assert {k: v for k, v in again["jobs"][run.job_ids[0]].items() if k != "status"} == \
        {k: v for k, v in document["jobs"][run.job_ids[0]].items() if k != "status"}
