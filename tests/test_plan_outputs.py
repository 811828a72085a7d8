"""The plan's one-pass output check says what the job-by-job check says.

:meth:`repx.engine.plan._OutputPaths.incomplete` settles most jobs of a large plan in one
C-level loop when every stage has a single file output, and falls back to
:meth:`~repx.engine.plan._OutputPaths.missing` per job otherwise. Both must name the same
jobs, whichever outputs exist on disk (synthetic labs as in tests/test_expand.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from repx.engine.plan import _OutputPaths
from repx.lab.blueprint import load_lab
from repx.lab.expand import expand_lab
from repx.lab.graph import JobGraph
from tests.test_expand import axis, dep, run, stage, write_lab


def graph_with(tmp_path: Path, outputs: dict[str, str]) -> JobGraph:
    gen = stage("gen", params={"x": 0}, outputs=outputs)
    use = stage("use", inputs={"d": ""}, outputs={"u": "$out/u.txt"},
                deps=[dep("gen", (next(iter(outputs)), "d"))])
    return expand_lab(load_lab(write_lab(tmp_path, run("r", [gen, use],
                                                      axes=[axis("x", [1, 2, 3, 4])]))))


def make_outputs(root: Path, graph: JobGraph, skip: set[tuple[str, str]]) -> None:
    """Create every declared output under ``root`` except the (job, name) pairs in skip."""
    for job in graph.jobs.values():
        for name, template in job.outputs.items():
            if (job.id, name) in skip:
                continue
            path = root / job.id / "out" / template.removeprefix("$out/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)


@pytest.mark.parametrize("outputs", [
    pytest.param({"d": "$out/d.txt"}, id="one-output-per-stage"),
    pytest.param({"d": "$out/d.txt", "e": "$out/sub/e.txt"}, id="two-outputs"),
])
def test_one_pass_names_the_jobs_the_job_by_job_check_names(tmp_path: Path,
                                                            outputs: dict[str, str]) -> None:
    graph = graph_with(tmp_path / "lab", outputs)
    ids = list(graph.jobs)
    gens = [j for j in ids if graph.jobs[j].stage == "gen"]
    root = tmp_path / "outputs"
    last = sorted(outputs)[-1]
    make_outputs(root, graph, {(gens[1], last), (ids[-1], "u")})
    paths = _OutputPaths(str(root))
    try:
        one_pass = paths.incomplete(graph.jobs, ids)
        by_job = {j for j in ids if paths.missing(graph.jobs[j].outputs, j) is not None}
    finally:
        paths.close()
    assert one_pass == by_job == {gens[1], ids[-1]}


def test_no_outputs_folder_means_every_job_is_incomplete(tmp_path: Path) -> None:
    graph = graph_with(tmp_path / "lab", {"d": "$out/d.txt"})
    paths = _OutputPaths(str(tmp_path / "never-made"))
    assert paths.incomplete(graph.jobs, list(graph.jobs)) == set(graph.jobs)
    paths.close()
