"""``repx viz``: the lab as a Graphviz graph: runs, stages (or jobs), and their status.

The DOT text is produced here, in Python, with no Graphviz needed; only rendering to SVG or
PNG calls ``dot``. Two levels of detail:

* **stages** (default): one cluster per run, one node per stage of each pipeline, labelled
  with its job count and how many of them succeeded, failed, are running or have not run,
  and filled with the colour of the worst of those; edges are the pipeline's dependencies
  (labelled with the inputs they feed) and the inter-run dependencies (solid for hard,
  dashed for soft). A scatter-gather stage is a box of its own holding what runs inside
  it: the scatter, the steps of each branch with their dependencies, and the gather.
* **jobs** (``--jobs``): one node per job with its short id and the params that vary
  within its stage, edges from each job's producers. A stage with more than ``max_jobs``
  jobs in a run is collapsed into one node with a count, so a 10 000-job sweep stays a
  readable picture (and a graph Graphviz can lay out in seconds, not hours).
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repx.errors import RepxError, UsageError
from repx.lab.blueprint import Pipeline, Stage
from repx.lab.graph import Job, JobGraph
from repx.report.store_views import select_runs

#: What ``--format`` takes; a file name ending in one of these (or ``.gv``, ``.jpeg``)
#: picks it.
FORMATS = ("dot", "svg", "png", "pdf", "jpg")
#: Other file name endings and the format they mean.
_SUFFIX_FORMATS = {"gv": "dot", "jpeg": "jpg"}

#: Fill colours by status (ColorBrewer-like, readable in print and on screen).
STATUS_COLOURS = {
    "succeeded": "#a6d96a",
    "partial": "#d9f0a3",  # some jobs succeeded, the others have not run yet
    "failed": "#f46d43",
    "cancelled": "#fdae61",
    "running": "#fee08b",
    "queued": "#abd9e9",
    "not run": "#f0f0f0",
}

#: Which status colours a group of jobs: the first one present (worst first).
_PRECEDENCE = ("failed", "cancelled", "running", "queued")

#: Params shown on a job node (the rest are summarised as "…").
_MAX_PARAMS_SHOWN = 4


def dot_quote(text: str) -> str:
    """A DOT double-quoted string (backslashes and quotes escaped; newlines as ``\\n``)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _short(value: object, width: int = 24) -> str:
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) \
        else str(value).lower() if isinstance(value, bool) else str(value)
    if "/nix/store/" in text:  # a path param: its name says more than its hash
        text = text.rsplit("/", 1)[-1]
    return text if len(text) <= width else text[: width - 1] + "…"


def group_status(counts: Mapping[str, int]) -> str:
    """The status a group of jobs is drawn with (its fill colour)."""
    for status in _PRECEDENCE:
        if counts.get(status):
            return status
    total = sum(counts.values())
    done = counts.get("succeeded", 0)
    if total and done == total:
        return "succeeded"
    return "partial" if done else "not run"


def _count_line(counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    order = ("succeeded", "failed", "cancelled", "running", "queued", "not run")
    parts = [f"{counts[s]} {s}" for s in order if counts.get(s)]
    jobs = f"{total} job" + ("" if total == 1 else "s")
    if list(counts) == ["not run"] or not parts:
        return jobs
    return f"{jobs}: " + ", ".join(parts)


@dataclass
class _Dot:
    """A DOT document under construction."""

    lines: list[str] = field(default_factory=list)
    edges: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    def add(self, line: str, indent: int = 1) -> None:
        self.lines.append("  " * indent + line)

    def node(self, name: str, attrs: Mapping[str, str], indent: int) -> None:
        self.add(f"{dot_quote(name)} [{_attrs(attrs)}];", indent)

    def edge(self, tail: str, head: str, **attrs: str) -> None:
        key = (tail, head)
        if key in self.edges:
            old = self.edges[key].get("label")
            new = attrs.get("label")
            if old and new and new not in old.split(", "):
                self.edges[key]["label"] = f"{old}, {new}"
            return
        self.edges[key] = dict(attrs)

    def text(self) -> str:
        out = list(self.lines)
        for (tail, head), attrs in self.edges.items():
            suffix = f" [{_attrs(attrs)}]" if attrs else ""
            out.append(f"  {dot_quote(tail)} -> {dot_quote(head)}{suffix};")
        out.append("}")
        return "\n".join(out) + "\n"


def _attrs(attrs: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={dot_quote(v)}" for k, v in attrs.items())


def _header(title: str) -> _Dot:
    doc = _Dot()
    doc.lines.append("digraph repx {")
    doc.add(f"graph [rankdir=LR, compound=true, fontname=Helvetica, fontsize=12, "
            f"labelloc=t, label={dot_quote(title)}];")
    doc.add('node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10, '
            'fillcolor="#f0f0f0"];')
    doc.add("edge [fontname=Helvetica, fontsize=9, color=\"#555555\"];")
    return doc


def _legend(doc: _Dot, used: Iterable[str]) -> None:
    shown = [s for s in STATUS_COLOURS if s in set(used)]
    if not shown:
        return
    doc.add('subgraph "cluster_legend" {')
    doc.add('label="status"; style="rounded,dashed"; color="#999999"; fontsize=10;', 2)
    for status in shown:
        doc.node(f"legend:{status}", {"label": status, "fillcolor": STATUS_COLOURS[status],
                                      "fontsize": "9"}, 2)
    for a, b in zip(shown, shown[1:], strict=False):
        doc.add(f"{dot_quote('legend:' + a)} -> {dot_quote('legend:' + b)} [style=invis];", 2)
    doc.add("}")


def _open_run_cluster(doc: _Dot, graph: JobGraph, run: str, index: int,
                      statuses: Mapping[str, str]) -> None:
    """Start the box of one run, labelled with its status counts."""
    counts: Counter[str] = Counter(statuses.get(i, "not run") for i in graph.runs[run].job_ids)
    doc.add(f"subgraph {dot_quote(f'cluster_run_{index}')} {{")
    doc.add(f"label={dot_quote(_run_label(graph, run, counts))}; style=rounded; "
            'color="#888888";', 2)


def selected_runs(graph: JobGraph, targets: Iterable[str]) -> list[str]:
    """Run names named by RUN or @GROUP arguments (every run when none), in lab order."""
    wanted = set(select_runs(graph, targets))
    return [r for r in graph.runs if r in wanted]


def lab_dot(
    graph: JobGraph,
    statuses: Mapping[str, str],
    *,
    runs: Iterable[str] = (),
    jobs: bool = False,
    max_jobs: int = 12,
) -> str:
    """The DOT text of ``graph`` (or of the named runs / @groups).

    ``statuses`` maps job ids to ``succeeded``, ``failed``… (missing: not run).
    """
    chosen = selected_runs(graph, runs)
    title = lab_title(graph)
    if jobs:
        return _jobs_dot(graph, statuses, chosen, max_jobs, title)
    return _stages_dot(graph, statuses, chosen, title)


def lab_name(graph: JobGraph) -> str:
    """What people call the lab: the folder of its lab file (``repx init`` names the lab
    after it; for ``nix/lab.nix`` the folder above), else the built lab's name without its
    store hash. Never the hash: it says nothing to a reader and changes with every edit."""
    lab_file = Path(graph.lab.lab_file) if graph.lab.lab_file else None
    if lab_file is not None:
        folder = lab_file.parent
        if folder.name == "nix" and lab_file.name == "lab.nix" and folder.parent.name:
            folder = folder.parent
        if folder.name:
            return folder.name
    head, sep, rest = graph.lab.path.name.partition("-")
    return rest if sep and len(head) == 32 else graph.lab.path.name


def lab_title(graph: JobGraph) -> str:
    """The graph's title: ``lab NAME, version V`` (no version when the lab declares none)."""
    version = graph.lab.lab_version
    return f"lab {lab_name(graph)}" + (f", version {version}" if version else "")


def _run_label(graph: JobGraph, run: str, counts: Counter[str]) -> str:
    mode = graph.runs[run].hash_mode
    return f"run {run} ({_count_line(counts)}; hash {mode})"


def _stages_dot(graph: JobGraph, statuses: Mapping[str, str], chosen: list[str],
                title: str) -> str:
    doc = _header(title)
    used: set[str] = set()
    anchors: dict[str, str] = {}  # run -> a node inside its cluster (for compound edges)
    readers: list[tuple[str, list[tuple[str, str]]]] = []  # node, its (run, type) edges
    for ri, run in enumerate(chosen):
        rj = graph.runs[run]
        by_stage: dict[tuple[str, str], list[Job]] = {}
        for job_id in rj.job_ids:
            job = graph.jobs[job_id]
            by_stage.setdefault((job.pipeline_file, job.stage), []).append(job)
        _open_run_cluster(doc, graph, run, ri, statuses)
        for pi, pipeline in enumerate(rj.run.pipelines):
            keys = {s.key: f"stage:{run}:{pi}:{s.key}" for s in pipeline.stages}
            # Where edges into and out of a stage attach: the stage's node, or for a
            # scatter-gather stage its scatter and its gather.
            heads = {k: _sg_node(v, "scatter") if _is_sg(pipeline, k) else v
                     for k, v in keys.items()}
            tails = {k: _sg_node(v, "gather") if _is_sg(pipeline, k) else v
                     for k, v in keys.items()}
            for stage in pipeline.stages:
                node = keys[stage.key]
                members = by_stage.get((pipeline.file, stage.key), [])
                counts = Counter(statuses.get(j.id, "not run") for j in members)
                status = group_status(counts)
                used.add(status)
                pnames = sorted({j.pname for j in members}) or [stage.pname]
                name = pnames[0] if len(pnames) == 1 else f"{stage.key} ({len(pnames)} pnames)"
                label = f"{name}\n{_count_line(counts)}"
                if stage.kind == "scatter-gather":
                    label = f"{name} (scatter-gather)\n{_count_line(counts)}"
                    _scatter_gather_cluster(doc, stage, node, label, status)
                else:
                    doc.node(node, {"label": label, "fillcolor": STATUS_COLOURS[status]}, 2)
                anchors.setdefault(run, heads[stage.key])
                for dep in stage.deps:
                    inputs = ", ".join(m.target for m in dep.mappings)
                    attrs = {"label": inputs} if inputs else {}
                    if _is_sg(pipeline, dep.stage):
                        attrs["ltail"] = _sg_cluster(keys[dep.stage])
                    if stage.kind == "scatter-gather":
                        attrs["lhead"] = _sg_cluster(node)
                    doc.edge(tails[dep.stage], heads[stage.key], **attrs)
                if stage.inter_run:
                    readers.append((heads[stage.key],
                                    [(ir.run, ir.type) for ir in stage.inter_run]))
        doc.add("}")
    _inter_run_edges(doc, chosen, anchors, readers)
    _legend(doc, used)
    return doc.text()


def _is_sg(pipeline: Pipeline, key: str) -> bool:
    return any(s.key == key and s.kind == "scatter-gather" for s in pipeline.stages)


def _sg_node(stage_node: str, part: str) -> str:
    """The node of ``part`` (``scatter``, ``gather``, ``step:NAME``) of a scatter-gather
    stage drawn as ``stage_node``."""
    return f"{stage_node}:{part}"


def _sg_cluster(stage_node: str) -> str:
    return f"cluster_{stage_node}"


def _scatter_gather_cluster(doc: _Dot, stage: Stage, node: str, label: str,
                            status: str) -> None:
    """A scatter-gather stage as a box (its name, job counts and status colour) around
    what runs inside each of its jobs: the scatter, which writes the work items; per work
    item (branch) the steps, joined by their dependencies; the gather, which receives the
    sink step's output of every branch."""
    doc.add(f"subgraph {dot_quote(_sg_cluster(node))} {{", 2)
    doc.add(f"label={dot_quote(label)}; style=\"rounded,filled\"; "
            f"fillcolor={dot_quote(STATUS_COLOURS[status])}; color=\"#666666\";", 3)
    inner = {"fillcolor": "white", "fontsize": "9"}
    doc.node(_sg_node(node, "scatter"), {"label": "scatter", **inner}, 3)
    doc.node(_sg_node(node, "gather"), {"label": "gather", **inner}, 3)
    steps = stage.steps
    layout = stage.scatter_gather
    order = list(layout.step_order) if layout else sorted(steps)
    sink = layout.sink if layout else (order[-1] if order else None)
    for name in order:
        step = steps.get(name)
        doc.node(_sg_node(node, f"step:{name}"),
                 {"label": f"step {name}", **inner, "shape": "box", "style": "filled"}, 3)
        deps = step.deps if step is not None else ()
        if not deps:  # a root step reads its branch's work item
            doc.edge(_sg_node(node, "scatter"), _sg_node(node, f"step:{name}"),
                     label="worker__item")
        for dep in deps:
            doc.edge(_sg_node(node, f"step:{dep.stage}"), _sg_node(node, f"step:{name}"))
    if sink is not None:
        output = layout.sink_output if layout else ""
        doc.edge(_sg_node(node, f"step:{sink}"), _sg_node(node, "gather"),
                 label=f"worker__outs ({output})" if output else "worker__outs")
    else:
        doc.edge(_sg_node(node, "scatter"), _sg_node(node, "gather"))
    doc.add("}", 2)


def _inter_run_edges(doc: _Dot, chosen: list[str], anchors: dict[str, str],
                     readers: list[tuple[str, list[tuple[str, str]]]]) -> None:
    """Edges from a run (its cluster) to the nodes that read its manifest: solid for a
    hard dependency, dashed for a soft one."""
    index = {run: i for i, run in enumerate(chosen)}
    for node, edges in readers:
        for upstream, kind in edges:
            attrs = {"label": f"metadata__{upstream} ({kind})",
                     "style": "dashed" if kind == "soft" else "solid",
                     "color": "#3366aa", "fontcolor": "#3366aa"}
            if upstream in anchors:
                attrs["ltail"] = f"cluster_run_{index[upstream]}"
                doc.edge(anchors[upstream], node, **attrs)
            else:  # a run not drawn: a plain node stands for it
                outside = f"run:{upstream}"
                doc.node(outside, {"label": f"run {upstream}\n(not shown)",
                                   "style": "rounded,dashed", "fillcolor": "white"}, 1)
                doc.edge(outside, node, **attrs)


def effective_params(graph: JobGraph, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each job's upstream params (dependency order) with its own on top: what tells the
    six ``evaluate`` jobs of a sweep apart, although they declare no param themselves."""
    effective: dict[str, dict[str, Any]] = {}
    for job_id in graph.upstream_closure(job_ids):
        job = graph.jobs[job_id]
        merged: dict[str, Any] = {}
        for dep in job.depends_on:
            merged.update(effective.get(dep, {}))
        merged.update(job.params)
        effective[job_id] = merged
    return effective


def _varying(members: list[Job], params: Mapping[str, dict[str, Any]]) -> list[str]:
    """Params whose value differs between the jobs of a stage (the ones worth showing)."""
    keys: dict[str, None] = {}
    for job in members:
        keys.update(dict.fromkeys(params[job.id]))
    first = params[members[0].id] if members else {}
    missing = object()
    return [k for k in keys
            if any(params[j.id].get(k, missing) != first.get(k, missing) for j in members)]


def _jobs_dot(graph: JobGraph, statuses: Mapping[str, str], chosen: list[str],
              max_jobs: int, title: str) -> str:
    doc = _header(title)
    used: set[str] = set()
    placed: dict[str, str] = {}  # job id -> node
    anchors: dict[str, str] = {}
    readers: dict[str, list[tuple[str, str]]] = {}  # node -> (run, type), one per node
    for ri, run in enumerate(chosen):
        rj = graph.runs[run]
        by_stage: dict[tuple[str, str], list[Job]] = {}
        for job_id in rj.job_ids:
            if job_id in placed:
                continue  # shared with a run drawn before: drawn there
            job = graph.jobs[job_id]
            by_stage.setdefault((job.pipeline_file, job.stage), []).append(job)
        _open_run_cluster(doc, graph, run, ri, statuses)
        for (_pipeline, stage_key), members in by_stage.items():
            if len(members) > max_jobs:
                node = f"group:{run}:{_pipeline}:{stage_key}"
                counts = Counter(statuses.get(j.id, "not run") for j in members)
                status = group_status(counts)
                used.add(status)
                pnames = sorted({j.pname for j in members})
                name = pnames[0] if len(pnames) == 1 else stage_key
                doc.node(node, {"label": f"{name} ×{len(members)}\n{_count_line(counts)}",
                                "fillcolor": STATUS_COLOURS[status], "peripheries": "2"}, 2)
                for job in members:
                    placed[job.id] = node
                anchors.setdefault(run, node)
                continue
            params = effective_params(graph, [j.id for j in members])
            varying = _varying(members, params)
            for job in members:
                status = statuses.get(job.id, "not run")
                used.add(status)
                lines = [job.pname, job.id[:8]]
                if job.kind == "scatter-gather":
                    lines.insert(1, "scatter-gather")
                shown = varying[:_MAX_PARAMS_SHOWN]
                lines += [f"{k}={_short(params[job.id][k])}" for k in shown
                          if k in params[job.id]]
                if len(varying) > len(shown):
                    lines.append("…")
                node = f"job:{job.id}"
                doc.node(node, {"label": "\n".join(lines), "fillcolor": STATUS_COLOURS[status],
                                "tooltip": job.id}, 2)
                placed[job.id] = node
                anchors.setdefault(run, node)
        doc.add("}")
        for job_id in rj.job_ids:
            job = graph.jobs[job_id]
            if job.inter_run and job_id in placed:
                readers.setdefault(placed[job_id], list(job.inter_run))
    for job_id, node in placed.items():
        for dep in graph.jobs[job_id].depends_on:
            tail = placed.get(dep)
            if tail is not None and tail != node:
                doc.edge(tail, node)
    # One edge per reading node, not one per job of a collapsed group.
    _inter_run_edges(doc, chosen, anchors, list(readers.items()))
    _legend(doc, used)
    return doc.text()


def format_for(path: str | None, fmt: str | None) -> str:
    """The output format: ``--format``, else the file's extension (``.dot``/``.gv``: DOT,
    ``.svg``, ``.png``, ``.pdf``, ``.jpg``/``.jpeg``), else DOT for a name without one.

    An extension repx cannot render is an error, never DOT text in a file whose name says
    it is a picture.
    """
    if fmt:
        return fmt
    if not path or path == "-":
        return "dot"
    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        return "dot"
    if suffix in FORMATS:
        return suffix
    if suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffix]
    known = ", ".join(f".{s}" for s in [*FORMATS, *_SUFFIX_FORMATS])
    raise UsageError(f"-o {path}: repx viz cannot write .{suffix} files (it writes {known}); "
                     "name the file with one of these or pass --format")


def render(dot_text: str, output: Path, fmt: str) -> None:
    """Write ``dot_text`` to ``output`` as ``fmt`` (``dot`` writes the text itself)."""
    if fmt == "dot":
        output.write_text(dot_text, encoding="utf-8")
        return
    exe = shutil.which("dot")
    if exe is None:
        raise UsageError(
            "rendering to " + fmt + " needs Graphviz's `dot`, which is not installed: "
            "apt-get install graphviz (or `make setup`), or write DOT with --format dot")
    proc = subprocess.run([exe, f"-T{fmt}", "-o", str(output)], input=dot_text.encode(),
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise RepxError(f"dot -T{fmt} failed (exit code {proc.returncode}): "
                        f"{proc.stderr.decode(errors='replace').strip()}")
