"""``repx viz``: DOT of runs, stages and jobs with status colours, rendered by Graphviz."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from repx.lab import LabOptions, open_lab
from repx.report.viz import STATUS_COLOURS, group_status, lab_dot
from tests.conftest import EXAMPLES, require_nix
from tests.test_examples import repx


def require_dot() -> str:
    """Fail (never skip) without Graphviz: `make setup` installs it."""
    dot = shutil.which("dot")
    if dot is None:
        pytest.fail("Graphviz `dot` is not installed: run `make setup` (installs Debian's "
                    "graphviz)")
    return dot


@pytest.fixture
def inter_run(tmp_path: Path) -> Path:
    require_nix()
    folder = tmp_path / "inter-run"
    shutil.copytree(EXAMPLES / "inter-run", folder, ignore=shutil.ignore_patterns("result"))
    return folder


def fill_of(dot: str, label_start: str) -> str:
    match = re.search(r'\[label="' + re.escape(label_start) + r'[^"]*", fillcolor="([^"]+)"',
                      dot)
    assert match, f"no node labelled {label_start!r} in:\n{dot}"
    return match.group(1)


@pytest.mark.nix
def test_stage_graph_before_and_after_a_build_renders_to_svg(inter_run: Path) -> None:
    dot_exe = require_dot()
    before = repx("viz", cwd=inter_run).stdout
    assert before.startswith("digraph repx {")
    assert fill_of(before, "simulate\\n3 jobs") == STATUS_COLOURS["not run"]

    repx("build", "-j2", "--quiet", "--lab", "result", cwd=inter_run)
    dot = repx("viz", "--lab", "result", cwd=inter_run).stdout
    for run, jobs in (("simulation", "6 jobs"), ("analysis", "2 jobs"), ("report", "1 job")):
        count = jobs.split()[0]
        assert f'label="run {run} ({jobs}: {count} succeeded; hash pure)"' in dot
    assert fill_of(dot, "simulate\\n3 jobs: 3 succeeded") == STATUS_COLOURS["succeeded"]
    assert fill_of(dot, "write-report\\n1 job: 1 succeeded") == STATUS_COLOURS["succeeded"]
    # The pipeline edge carries the input it feeds; inter-run edges their manifest and type.
    assert re.search(r'"stage:simulation:0:simulate" -> "stage:simulation:0:summarize" '
                     r'\[label="samples"\]', dot)
    assert re.search(r'-> "stage:report:0:write-report" \[label="metadata__simulation \(soft\)"'
                     r', style="dashed"', dot)
    assert re.search(r'-> "stage:analysis:0:aggregate" \[label="metadata__simulation \(hard\)"'
                     r', style="solid"', dot)

    # Graphviz renders the DOT text as it is...
    svg = subprocess.run([dot_exe, "-Tsvg"], input=dot, capture_output=True, text=True,
                         check=True).stdout
    assert "<svg" in svg and "aggregate" in svg and "write&#45;report" in svg
    # ...and repx viz renders it itself, by extension or --format.
    repx("viz", "--lab", "result", "-o", "lab.svg", cwd=inter_run)
    text = (inter_run / "lab.svg").read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and "aggregate" in text
    repx("viz", "--lab", "result", "--jobs", "-o", "jobs.out", "--format", "png",
         cwd=inter_run)
    assert (inter_run / "jobs.out").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    repx("viz", "--lab", "result", "-o", "lab.dot", cwd=inter_run)
    assert (inter_run / "lab.dot").read_text() == dot


@pytest.mark.nix
def test_job_graph_shows_varying_params_and_collapses_large_stages(inter_run: Path) -> None:
    require_dot()
    repx("build", "-j2", "--quiet", "simulation", cwd=inter_run)
    dot = repx("viz", "--jobs", "simulation", "--lab", "result", cwd=inter_run).stdout
    nodes = re.findall(r'"job:([^"]+)" \[label="([^"]+)"', dot)
    assert len(nodes) == 6
    label_of = dict(nodes)
    seeds = sorted(label.split("\\n")[2] for label in label_of.values()
                   if label.startswith("summarize"))
    assert seeds == ["seed=1", "seed=2", "seed=3"]
    # summarize declares no param: its seed is its upstream simulate job's.
    for tail, head in re.findall(r'"job:([^"]+)" -> "job:([^"]+)"', dot):
        assert label_of[tail].startswith("simulate") and label_of[head].startswith("summarize")
        assert label_of[tail].split("\\n")[2] == label_of[head].split("\\n")[2]
    assert "run analysis" not in dot
    assert dot.count(" -> \"job:") == 3  # simulate -> summarize, per seed

    collapsed = repx("viz", "--jobs", "--max-jobs", "2", "--lab", "result",
                     cwd=inter_run).stdout
    assert "simulate ×3\\n3 jobs: 3 succeeded" in collapsed
    assert "summarize ×3" in collapsed
    assert "aggregate\\n" in collapsed and "job:" in collapsed  # small stages stay jobs
    assert fill_of(collapsed, "aggregate") == STATUS_COLOURS["not run"]
    # One edge per pair of nodes, however many jobs a collapsed node stands for.
    assert collapsed.count('"group:simulation:') >= 2
    edges = re.findall(r'^  ("[^"]+") -> ("[^"]+")', collapsed, re.M)
    assert len(edges) == len(set(edges))
    assert subprocess.run(["dot", "-Tsvg", "-o", "/dev/null"], input=collapsed, text=True,
                          check=False).returncode == 0


@pytest.mark.nix
def test_status_colours_of_partial_and_failed_stages(tmp_path: Path) -> None:
    require_nix()
    graph = open_lab(LabOptions(lab_file=str(EXAMPLES / "param-sweep" / "lab.nix"),
                                out_link=None), validate=False)
    train = [j.id for j in graph.jobs.values() if j.pname == "train-model"]
    evaluate = [j.id for j in graph.jobs.values() if j.pname == "evaluate"]
    generate = [j.id for j in graph.jobs.values() if j.pname == "generate"]
    statuses = {generate[0]: "succeeded", train[0]: "failed", evaluate[0]: "succeeded",
                **{t: "succeeded" for t in train[1:]}}
    dot = lab_dot(graph, statuses)
    assert fill_of(dot, "train-model\\n6 jobs: 5 succeeded, 1 failed") == \
        STATUS_COLOURS["failed"]
    assert fill_of(dot, "evaluate\\n6 jobs: 1 succeeded, 5 not run") == \
        STATUS_COLOURS["partial"]
    assert group_status({"running": 1, "succeeded": 3}) == "running"
    assert group_status({}) == "not run"


@pytest.mark.nix
def test_errors(inter_run: Path) -> None:
    bad = repx("viz", "no-such-run", cwd=inter_run, check=False)
    assert bad.returncode == 2 and "unknown run 'no-such-run'" in bad.stderr
    assert "simulation" in bad.stderr and "@compute" in bad.stderr
    needs_file = repx("viz", "--format", "svg", "--lab", "result", cwd=inter_run, check=False)
    assert needs_file.returncode == 2 and "needs an output file" in needs_file.stderr
    group = repx("viz", "@compute", "--lab", "result", cwd=inter_run).stdout
    assert "run simulation" in group and "run report" not in group


@pytest.mark.nix
def test_the_title_is_the_labs_name_and_version_not_its_hash(inter_run: Path) -> None:
    dot = repx("viz", cwd=inter_run).stdout
    title = re.search(r'labelloc=t, label="([^"]*)"', dot)
    assert title and title.group(1) == "lab inter-run, version 1.0.0", dot[:300]
    store_hash = (inter_run / "result").resolve().name.split("-")[0]
    assert store_hash not in dot


@pytest.mark.nix
def test_a_scatter_gather_stage_shows_its_scatter_steps_and_gather() -> None:
    require_dot()
    graph = open_lab(LabOptions(lab_file=str(EXAMPLES / "scatter-gather" / "lab.nix"),
                                out_link=None), validate=False)
    dot = lab_dot(graph, {})
    # partial-sums: scatter -> square, double (the roots, fed the work item) -> combine (the
    # sink) -> gather, all inside one box labelled with the stage.
    box = re.search(r'subgraph "cluster_stage:chunked-sum:0:partial_sums" \{(.*?)\n    \}',
                    dot, re.S)
    assert box, dot
    assert 'label="partial-sums (scatter-gather)\\n1 job"' in box.group(1)
    inside = set(re.findall(r'"stage:chunked-sum:0:partial_sums:([^"]+)" \[', box.group(1)))
    assert inside == {"scatter", "gather", "step:square", "step:double", "step:combine"}
    edges = set(re.findall(r'"stage:chunked-sum:0:partial_sums:([^"]+)" -> '
                           r'"stage:chunked-sum:0:partial_sums:([^"]+)"', dot))
    assert edges == {("scatter", "step:square"), ("scatter", "step:double"),
                     ("step:square", "step:combine"), ("step:double", "step:combine"),
                     ("step:combine", "gather")}
    assert re.search(r'partial_sums:step:combine" -> "[^"]+:gather" '
                     r'\[label="worker__outs \(partial\)"\]', dot)
    # The pipeline's edges reach the box: into the scatter, out of the gather.
    assert re.search(r'"stage:chunked-sum:0:source" -> "stage:chunked-sum:0:partial_sums:'
                     r'scatter" \[label="data", lhead="cluster_stage:chunked-sum:0:'
                     r'partial_sums"\]', dot)
    assert re.search(r'"stage:chunked-sum:0:partial_sums:gather" -> "stage:chunked-sum:0:'
                     r'report" \[label="total", ltail=', dot)
    assert subprocess.run(["dot", "-Tsvg", "-o", "/dev/null"], input=dot, text=True,
                          capture_output=True, check=False).returncode == 0


@pytest.mark.nix
def test_output_formats_come_from_the_file_name_or_are_refused(inter_run: Path) -> None:
    require_dot()
    repx("viz", "-o", "lab.jpg", cwd=inter_run)
    assert (inter_run / "lab.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG, not DOT
    repx("viz", "--lab", "result", "-o", "lab.jpeg", cwd=inter_run)
    assert (inter_run / "lab.jpeg").read_bytes()[:3] == b"\xff\xd8\xff"
    repx("viz", "--lab", "result", "-o", "lab.gv", cwd=inter_run)
    assert (inter_run / "lab.gv").read_text().startswith("digraph repx {")
    refused = repx("viz", "--lab", "result", "-o", "lab.webp", cwd=inter_run, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "repx viz cannot write .webp files" in refused.stderr
    assert ".svg" in refused.stderr and "--format" in refused.stderr
    assert not (inter_run / "lab.webp").exists()
