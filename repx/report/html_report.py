"""``repx report``: one self-contained HTML file about a lab and what its jobs did.

The report is meant to be handed to a colleague, mailed, or opened years later on a laptop
without the store's machine: everything it shows is inside the one file (CSS, JavaScript,
the data, the plots as inline SVG), and it loads nothing from the network. What it cannot
carry (logs, outputs) it links to, relative to where the report is written (so a report
kept beside the store keeps working when both are moved) or, with ``links="absolute"``, as
``file://`` URLs.

It has: the lab and its provenance (lab id, gitHash, versions, hosts, dates), the runs with
their counts, the failures with their params and the end of their stderr, a per-stage
duration plot, the lab's graph (:mod:`repx.report.viz` rendered by Graphviz) and the sweep
as a table, one row per job.

Why it is built the way it is:

* **Big sweeps stay usable.** The job table is not written as HTML rows: the jobs are one
  JSON document in the page, and a little inline script renders one page of rows at a time,
  filtered (status, run, stage, any text) and sorted on demand. A 10 000-job lab is then a
  few MB that opens in a second; 10 000 ``<tr>`` would be larger and slow to lay out.
* **Params as columns.** The params whose value differs between jobs (the sweep) each get a
  column; params with one value in the whole lab are listed once, above the table.
* **What the store does not know is not invented.** The store keeps one record per job (its
  latest attempt), so the report shows that attempt; resource use is what is recorded (wall
  time, output size) beside what the stage asked for (cpus, mem, time).
"""

from __future__ import annotations

import html
import json
import math
import os
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from repx import __version__
from repx.display import plural
from repx.engine.contract import declared_outputs
from repx.errors import RepxError, UsageError
from repx.lab.graph import Job, JobGraph
from repx.report import lab_views, viz
from repx.report import store_views as ins
from repx.store import JobRecord, Store, layout

#: How links to logs and outputs are written: relative to the report's folder, or absolute
#: ``file://`` URLs (for a report that is copied away from the store).
LINK_STYLES = ("relative", "absolute")

#: Failed jobs listed in the failures section (all of them stay in the job table).
MAX_FAILURES_LISTED = 200
#: Failed jobs whose last stderr lines are copied into the report, and how much of each.
MAX_LOG_TAILS = 30
LOG_TAIL_LINES = 15
LOG_TAIL_BYTES = 4096
#: Swept params shown as their own column; the others go into one "other params" column.
MAX_PARAM_COLUMNS = 8
#: Points drawn per stage in the duration plot (beyond, an even sample: the box still
#: summarises every job).
MAX_POINTS_PER_STAGE = 300

#: Statuses of jobs without a live record: *blocked* when an upstream job failed or was
#: cancelled (it cannot run until that is fixed), else *not run*.
BLOCKED = "blocked"
NOT_RUN = "not run"

#: Row colours by status, shared with the graph's fill colours.
STATUS_COLOURS: dict[str, str] = {**viz.STATUS_COLOURS, BLOCKED: "#d0d0d0", "stale": "#f0f0f0"}


@dataclass
class ReportSummary:
    """What :func:`write_report` wrote: for the command's one-line answer and for tests."""

    path: Path
    jobs: int
    failed: int
    bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------- data


def lab_name(graph: JobGraph) -> str:
    """What people call the lab: the folder of its lab file (``repx init`` names the lab
    after it), else the lab directory's name."""
    lab_file = graph.lab.lab_file
    if lab_file:
        return Path(lab_file).parent.name or Path(lab_file).name
    return graph.lab.path.name


def lab_id(graph: JobGraph) -> str:
    """The hash part of the lab's Nix store path (the same lab, the same id); ``-`` for a lab
    that is not in a Nix store (an unpacked export)."""
    name = graph.lab.path.name
    head, sep, _ = name.partition("-")
    return head if sep and str(graph.lab.path).startswith("/nix/store/") else "-"


def _value_text(value: Any) -> str:
    """A param value as the table shows it: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _job_states(graph: JobGraph, store: Store | None,
                ids: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """A state per job (recorded, as SLURM sees it for work on SLURM; else blocked or not
    run) and what could not be found out."""
    recorded: dict[str, str] = {}
    notes: list[str] = []
    needed = graph.upstream_closure(ids)  # producers first: state() recurses one level
    if store is not None:
        recorded, slurm = ins.slurm_states(store, needed, graph)
        notes += slurm.notes
    states: dict[str, str] = {}

    def state(job_id: str) -> str:
        known = states.get(job_id)
        if known is not None:
            return known
        found = recorded.get(job_id)
        if found is None or found == "stale":
            job = graph.jobs[job_id]
            stuck = any(state(up) in ("failed", "cancelled", BLOCKED) for up in job.depends_on)
            found = BLOCKED if stuck else NOT_RUN
        states[job_id] = found
        return found

    for job_id in needed:
        state(job_id)
    return {i: states[i] for i in ids}, notes


def _swept_params(params: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """The params whose value differs between jobs (in first-seen order), and the others
    with their one value."""
    values: dict[str, set[str]] = {}
    first: dict[str, Any] = {}
    for job_params in params.values():
        for key, value in job_params.items():
            values.setdefault(key, set()).add(_value_text(value))
            first.setdefault(key, value)
    swept = [k for k, v in values.items() if len(v) > 1]
    return swept, {k: first[k] for k in values if k not in swept}


class _Links:
    """Hrefs of files in the store, relative to the report's folder or absolute."""

    def __init__(self, report_dir: Path, style: str) -> None:
        if style not in LINK_STYLES:
            raise UsageError(f"--links {style}: use one of {', '.join(LINK_STYLES)}")
        self.report_dir = report_dir
        self.style = style

    def href(self, path: Path | str) -> str:
        absolute = os.path.abspath(path)
        if self.style == "absolute":
            return Path(absolute).as_uri()
        return quote(os.path.relpath(absolute, self.report_dir))


def _job_row(job: Job, state: str, record: JobRecord | None, params: Mapping[str, Any],
             store: Store | None, links: _Links) -> dict[str, Any]:
    """One job as the page's script reads it (short keys: a 10 000-job lab repeats them)."""
    row: dict[str, Any] = {
        "id": job.id, "run": job.run, "stage": lab_views.stage_label(job), "s": state,
        "p": {k: _value_text(v) for k, v in params.items()},
        "res": {k: _value_text(v) for k, v in dict(job.resources).items()},
    }
    if len(job.runs) > 1:
        row["runs"] = list(job.runs)
    if record is not None:
        if record.started is not None:
            row["t0"] = round(record.started, 3)
        if record.started is not None and record.finished is not None:
            row["dur"] = round(record.finished - record.started, 3)
        if record.exit_code is not None:
            row["exit"] = record.exit_code
        if record.reason:
            row["why"] = record.reason
        if record.host:
            row["host"] = record.host
        if record.slurm_id:
            row["slurm"] = record.slurm_id
        if record.outputs:
            row["bytes"] = sum(f.size for f in record.outputs)
    if store is not None and record is not None:  # a job never run has no files to link
        row["dir"] = links.href(store.job_dir(job.id))
        logs = ins.log_paths(store, job.id, record)
        default = (store.meta_dir(job.id) / layout.STDOUT_LOG,
                   store.meta_dir(job.id) / layout.STDERR_LOG)
        if (logs["stdout"], logs["stderr"]) != default:  # recorded elsewhere: say where
            row["logs"] = [links.href(logs["stdout"]), links.href(logs["stderr"])]
        # Relative to the job's folder (``out/data.txt``): a 10 000-job page would repeat
        # the folder in every output otherwise.
        outputs = declared_outputs(job.outputs, layout.OUT, job.id)
        row["o"] = {name: quote(path) for name, path in outputs.items()}
    return row


@dataclass
class _Failure:
    """A failed or cancelled job as the failures section lists it (``tail``: the end of its
    stderr, read for the first :data:`MAX_LOG_TAILS` only)."""

    job: Job
    state: str
    record: JobRecord | None
    params: Mapping[str, Any]
    stderr: Path | None
    tail: str | None = None


def _log_tail(path: Path) -> str | None:
    """The last lines of a log (at most :data:`LOG_TAIL_BYTES`), None when it is unreadable."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            data = fh.read()
    except OSError:
        return None
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > LOG_TAIL_BYTES and lines:
        lines = lines[1:]  # the first line was cut by the byte limit
    return "\n".join(lines[-LOG_TAIL_LINES:])


# ------------------------------------------------------------------------- duration plot


def _nice_step(span: float, ticks: int = 6) -> float:
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def duration_svg(rows: Iterable[Mapping[str, Any]]) -> str:
    """An inline SVG: per run and stage, the jobs' durations as points over a box (quartiles,
    median, min-max whiskers), on one linear time axis; "" when no job has a duration."""
    groups: dict[tuple[str, str], list[tuple[float, str, str]]] = {}
    for row in rows:
        if "dur" in row:
            groups.setdefault((row["run"], row["stage"]), []).append(
                (float(row["dur"]), row["s"], row["id"]))
    if not groups:
        return ""
    top = max(d for members in groups.values() for d, _, _ in members) or 1.0
    step = _nice_step(top)
    axis_max = math.ceil(top / step) * step
    label_w, plot_w, right_w, row_h, pad = 230, 560, 340, 34, 28
    width = label_w + plot_w + right_w
    height = pad * 2 + row_h * len(groups)

    def x(seconds: float) -> float:
        return label_w + plot_w * seconds / axis_max

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="durations" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           'aria-label="job durations per stage">']
    ticks = int(round(axis_max / step))
    for i in range(ticks + 1):
        tx = x(i * step)
        out.append(f'<line x1="{tx:.1f}" y1="{pad - 6}" x2="{tx:.1f}" y2="{height - pad}" '
                   'stroke="#e4e4e4"/>')
        out.append(f'<text x="{tx:.1f}" y="{height - pad + 16}" text-anchor="middle" '
                   f'class="tick">{html.escape(_seconds_text(i * step))}</text>')
    for index, ((run, stage), members) in enumerate(groups.items()):
        y = pad + index * row_h + row_h / 2
        values = sorted(d for d, _, _ in members)
        q1, median, q3 = (_quantile(values, q) for q in (0.25, 0.5, 0.75))
        total = sum(values)
        out.append(f'<text x="{label_w - 8}" y="{y + 4:.1f}" text-anchor="end" class="label">'
                   f'{html.escape(_clip(f"{run} / {stage}", 34))}</text>')
        out.append(f'<line x1="{x(values[0]):.1f}" y1="{y:.1f}" x2="{x(values[-1]):.1f}" '
                   f'y2="{y:.1f}" stroke="#888"/>')
        out.append(f'<rect x="{x(q1):.1f}" y="{y - 8:.1f}" '
                   f'width="{max(x(q3) - x(q1), 1.5):.1f}" height="16" fill="#dbe8f6" '
                   'stroke="#6a8fbf"/>')
        out.append(f'<line x1="{x(median):.1f}" y1="{y - 9:.1f}" x2="{x(median):.1f}" '
                   f'y2="{y + 9:.1f}" stroke="#1f4f8f" stroke-width="2"/>')
        shown = members if len(members) <= MAX_POINTS_PER_STAGE else \
            [members[i * len(members) // MAX_POINTS_PER_STAGE]
             for i in range(MAX_POINTS_PER_STAGE)]
        for k, (seconds, state, job_id) in enumerate(shown):
            jitter = ((k * 7919) % 13 - 6) * 0.9
            colour = STATUS_COLOURS.get(state, "#999")
            out.append(f'<circle cx="{x(seconds):.1f}" cy="{y + jitter:.1f}" r="2.6" '
                       f'fill="{colour}" stroke="#444" stroke-width="0.4"><title>'
                       f'{html.escape(job_id)}: {_seconds_text(seconds)} ({state})'
                       '</title></circle>')
        summary = (f"{len(values)} job{'s' if len(values) != 1 else ''} · median "
                   f"{_seconds_text(median)} · max {_seconds_text(values[-1])} · "
                   f"sum {_seconds_text(total)}")
        out.append(f'<text x="{label_w + plot_w + 10}" y="{y + 4:.1f}" class="stat">'
                   f'{html.escape(summary)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _seconds_text(seconds: float) -> str:
    """A duration for the plot: sub-second ones in ms (quick stages are the common case in
    tests and small sweeps, and "0.0s" on every tick says nothing)."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return ins.fmt_duration(seconds)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------------- graph


def graph_svg(graph: JobGraph, states: Mapping[str, str],
              runs: Sequence[str]) -> tuple[str, str | None]:
    """The lab's stage graph as ``repx viz -o x.svg`` draws it, as inline SVG markup; or ""
    and why not (Graphviz missing, or failing)."""
    recorded = {i: s for i, s in states.items() if s not in (NOT_RUN, BLOCKED)}
    dot_text = viz.lab_dot(graph, recorded, runs=runs)
    with tempfile.TemporaryDirectory(prefix="repx-report-") as folder:
        target = Path(folder) / "graph.svg"
        try:
            viz.render(dot_text, target, "svg")
        except RepxError as error:
            return "", error.message
        text = target.read_text(encoding="utf-8")
    start = text.find("<svg")  # drop the XML prolog and DOCTYPE: invalid inside HTML
    return (text[start:], None) if start >= 0 else ("", "Graphviz wrote no <svg> element")


# ---------------------------------------------------------------------------------- html


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def _json_for_script(data: Any) -> str:
    """JSON that is safe inside ``<script>``: no ``</script>``, no ``<!--``."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029",
                                                                            "\\u2029")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """A static table; cells are HTML already (callers escape)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def _badge(state: str) -> str:
    colour = STATUS_COLOURS.get(state, "#eee")
    return f'<span class="badge" style="background:{colour}">{_e(state)}</span>'


def _params_html(params: Mapping[str, Any]) -> str:
    if not params:
        return '<span class="dim">(none)</span>'
    return " ".join(f'<code>{_e(k)}={_e(_clip(_value_text(v), 80))}</code>'
                    for k, v in params.items())


def _provenance(graph: JobGraph, store: Store | None, records: Mapping[str, JobRecord],
                generated: float) -> str:
    starts = [r.started for r in records.values() if r.started is not None]
    ends = [r.finished for r in records.values() if r.finished is not None]
    hosts = Counter(r.host for r in records.values() if r.host)
    lab = graph.lab
    rows: list[tuple[str, str]] = [
        ("lab", f"<b>{_e(lab_name(graph))}</b> version {_e(lab.lab_version or '-')}"),
        ("lab id", f"<code>{_e(lab_id(graph))}</code>"),
        ("lab directory", f"<code>{_e(lab.path)}</code>"),
        ("lab file", f"<code>{_e(lab.lab_file or '-')}</code>"),
        ("gitHash", f"<code>{_e(lab.git_hash or '-')}</code>"),
        ("format", _e(lab.format)),
        ("repx version", _e(__version__)),
        ("store", f"<code>{_e(store.root) if store is not None else '(none)'}</code>"),
        ("jobs ran on", _e(", ".join(f"{h} ({n})" for h, n in hosts.most_common(8))
                           + (" …" if len(hosts) > 8 else "")) if hosts else "-"),
        ("first job started", _e(_when(min(starts) if starts else None))),
        ("last job finished", _e(_when(max(ends) if ends else None))),
    ]
    last = store.get_meta("last_build") if store is not None else None
    # The store's last build may be of another lab sharing the store: shown only when it
    # built this one (recorded as the lab directory, a ./result link or its target).
    built = last.get("lab") if last is not None else None
    if last is not None and (not isinstance(built, str)
                             or os.path.realpath(built) == os.path.realpath(lab.path)):
        summary = ins.last_build_summary(last, {})
        rows.append(("last build", _e(
            f"{_when(summary['started'])} → {_when(summary['finished'])}: "
            f"{summary['executed']} executed, {summary['up_to_date']} up to date, "
            f"{summary['failed']} failed, {summary['blocked']} blocked")))
    rows.append(("report written", _e(f"{_when(generated)} on {socket.gethostname()}")))
    return _table(["", ""], ([f"<b>{_e(k)}</b>", v] for k, v in rows), "kv")


def _runs_table(graph: JobGraph, runs: Sequence[str], states: Mapping[str, str]) -> str:
    order = ("succeeded", "failed", "cancelled", "running", "queued", BLOCKED, NOT_RUN)
    rows = []
    for name in runs:
        rj = graph.runs[name]
        counts = Counter(states.get(i, NOT_RUN) for i in rj.job_ids)
        deps = ", ".join(f"{d} ({kind})" for d, kind in rj.dependencies) or "-"
        rows.append([f"<b>{_e(name)}</b>", str(len(rj.job_ids)),
                     *(str(counts.get(s, 0)) if counts.get(s) else '<span class="dim">0</span>'
                       for s in order),
                     _e(rj.hash_mode), _e(deps)])
    return _table(["run", "jobs", *order, "hash", "depends on"], rows, "runs")


def _failures_html(failures: Sequence[_Failure], links: _Links, blocked: int) -> str:
    if not failures:
        return '<p class="ok" id="no-failures">No job failed.</p>'
    items = []
    for index, failure in enumerate(failures[:MAX_FAILURES_LISTED]):
        record = failure.record
        why = (record.reason if record is not None and record.reason else
               f"exit code {record.exit_code}" if record is not None else "-")
        log = (f'<a href="{_e(links.href(failure.stderr))}">stderr</a>'
               if failure.stderr is not None else "")
        tail = ""
        if failure.tail:
            tail = (f"<details{' open' if index < 3 else ''}><summary>last lines of stderr"
                    f"</summary><pre>{_e(failure.tail)}</pre></details>")
        items.append(
            f'<li class="failure" data-job="{_e(failure.job.id)}">{_badge(failure.state)} '
            f"<b>{_e(failure.job.run)} / {_e(lab_views.stage_label(failure.job))}</b> "
            f'<code class="jid">{_e(failure.job.id)}</code><br>'
            f"<span class=\"why\">{_e(why)}</span> · finished "
            f"{_e(_when(record.finished if record else None))} · {log}"
            f'<div class="params">{_params_html(failure.params)}</div>{tail}</li>')
    more = len(failures) - MAX_FAILURES_LISTED
    notes = []
    if more > 0:
        notes.append(f"and {more} more: filter the job table by status.")
    if blocked:
        notes.append(f"{blocked} job{'s' if blocked != 1 else ''} downstream of these "
                     "did not run (blocked).")
    note = f'<p class="dim">{_e(" ".join(notes))}</p>' if notes else ""
    return f'<ol class="failures" id="failure-list">{"".join(items)}</ol>{note}'


def report_html(graph: JobGraph, store: Store | None, *, report_dir: Path,
                runs: Sequence[str] = (), links: str = "relative", graph_drawing: bool = True,
                generated: float | None = None) -> tuple[str, dict[str, Any]]:
    """The report page of ``graph``'s ``runs`` (or @groups; default every run) as one HTML
    string, with links to the store's files written for a report in ``report_dir``; and
    numbers about it (jobs, failed, notes)."""
    generated = time.time() if generated is None else generated
    hrefs = _Links(report_dir, links)
    chosen = viz.selected_runs(graph, runs)
    ids = list(dict.fromkeys(i for r in chosen for i in graph.runs[r].job_ids))
    states, notes = _job_states(graph, store, ids)
    records: dict[str, JobRecord] = store.get_many(ids) if store is not None else {}
    params = lab_views.effective_params(graph, ids)
    swept, fixed = _swept_params({i: params[i] for i in ids})
    rows = [_job_row(graph.jobs[i], states[i], records.get(i), params[i], store, hrefs)
            for i in ids]
    failures = []
    for job_id in ids:
        if states[job_id] in ("failed", "cancelled"):
            stderr = ins.log_paths(store, job_id, records.get(job_id))["stderr"] \
                if store is not None else None
            failures.append(_Failure(graph.jobs[job_id], states[job_id], records.get(job_id),
                                     params[job_id], stderr))
    for failure in failures[:MAX_LOG_TAILS]:
        if failure.stderr is not None:
            failure.tail = _log_tail(failure.stderr)
    blocked = sum(1 for s in states.values() if s == BLOCKED)

    svg_graph, graph_note = graph_svg(graph, states, runs) if graph_drawing else \
        ("", "not drawn (--no-graph)")
    if graph_note and graph_drawing:
        notes.append(f"the graph is not in the report: {graph_note}")
    plot = duration_svg(rows)
    counts = Counter(states.values())
    title = f"{lab_name(graph)} {graph.lab.lab_version}".strip()
    data = {"columns": swept[:MAX_PARAM_COLUMNS], "jobs": rows,
            "colours": STATUS_COLOURS}
    cards = "".join(
        f'<div class="card" data-status="{_e(s)}"><b>{counts.get(s, 0)}</b>'
        f'<span>{_e(s)}</span></div>'
        for s in ("succeeded", "failed", "cancelled", "running", "queued", BLOCKED, NOT_RUN)
        if counts.get(s) or s in ("succeeded", "failed"))
    fixed_html = _params_html(fixed) if fixed else '<span class="dim">(none)</span>'
    page = _PAGE.format(
        title=_e(f"repx report: {title}"),
        heading=_e(title),
        generated=_e(_when(generated)),
        css=_CSS,
        script=_SCRIPT,
        data=_json_for_script(data),
        total=plural(len(ids), "job"),
        cards=cards,
        provenance=_provenance(graph, store, records, generated),
        runs=_runs_table(graph, chosen, states),
        failures=_failures_html(failures, hrefs, blocked),
        failure_count=len(failures),
        plot=plot or '<p class="dim">No job has a recorded duration yet.</p>',
        graph=svg_graph or f'<p class="dim">No graph: {_e(graph_note or "nothing to draw")}.</p>',
        fixed=fixed_html,
        swept=_e(", ".join(swept) or "(none)"),
        notes="".join(f'<p class="note">note: {_e(n)}</p>' for n in notes),
    )
    return page, {"jobs": len(ids), "failed": len(failures), "notes": notes}


def write_report(graph: JobGraph, store_dir: str | os.PathLike[str], output: str | Path, *,
                 runs: Sequence[str] = (), links: str = "relative",
                 graph_drawing: bool = True) -> ReportSummary:
    """Write the report of ``graph`` (the jobs as the store at ``store_dir`` has them) to
    ``output``. A store that does not exist yet is not an error: the report then shows every
    job as not run, and says so in its notes."""
    clock = time.monotonic()
    target = Path(output)
    if target.is_dir():
        raise UsageError(f"-o {output}: is a folder; give the report's file name "
                         f"(e.g. {Path(output) / 'report.html'})")
    if not target.parent.is_dir():
        raise UsageError(f"-o {output}: folder {target.parent} does not exist")
    report_dir = target.parent.resolve()
    early_notes: list[str] = []
    if Store.exists(store_dir):
        with Store(store_dir, readonly=True) as store:
            page, info = report_html(graph, store, report_dir=report_dir, runs=runs,
                                     links=links, graph_drawing=graph_drawing)
    else:
        early_notes.append(f"{ins.no_store_message(os.path.abspath(store_dir))}: every job "
                           "is shown as not run")
        page, info = report_html(graph, None, report_dir=report_dir, runs=runs,
                                 links=links, graph_drawing=graph_drawing)
    data = page.encode("utf-8")
    try:
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(data)
        partial.replace(target)  # a reader never sees half a report
    except OSError as error:
        raise RepxError(f"cannot write the report to {output}: {error.strerror}") from error
    return ReportSummary(path=target, jobs=info["jobs"], failed=info["failed"],
                         bytes=len(data), seconds=time.monotonic() - clock,
                         notes=early_notes + info["notes"])


# ---------------------------------------------------------------------------- templates

_CSS = """
:root { --fg:#1d1d1f; --dim:#777; --line:#ddd; --accent:#1f4f8f; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color: var(--fg); margin: 0 auto; padding: 16px 24px 48px; max-width: 1400px; }
h1 { font-size: 22px; margin: 4px 0 2px; } h2 { font-size: 17px; margin: 28px 0 8px;
     border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.sub, .dim { color: var(--dim); } code { font: 12px/1.3 ui-monospace, Menlo, Consolas,
     monospace; background: #f4f4f6; padding: 1px 4px; border-radius: 3px; }
table { border-collapse: collapse; } th, td { padding: 4px 8px; text-align: left;
     border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f7f7f9; font-weight: 600; white-space: nowrap; }
table.kv td:first-child { white-space: nowrap; }
.cards { display: flex; gap: 10px; flex-wrap: wrap; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 6px 14px; min-width: 90px; }
.card b { display: block; font-size: 20px; } .card span { color: var(--dim); }
.card[data-status=failed] b { color: #c0392b; }
.badge { padding: 0 6px; border-radius: 8px; font-size: 12px; white-space: nowrap;
     border: 1px solid rgba(0,0,0,.15); }
ol.failures li { margin-bottom: 10px; } .why { color: #c0392b; }
pre { background: #1e1e1e; color: #eee; padding: 8px; overflow: auto; max-height: 280px;
     font-size: 12px; }
.scroll { overflow: auto; border: 1px solid var(--line); } .graph svg { max-width: none; }
.note { background: #fff6d5; padding: 4px 8px; border-radius: 4px; }
.controls { display: flex; gap: 8px; flex-wrap: wrap; align-items: center; margin: 8px 0; }
.controls input[type=search] { width: 260px; }
#jobs td { white-space: nowrap; max-width: 340px; overflow: hidden; text-overflow: ellipsis; }
#jobs th { cursor: pointer; user-select: none; } #jobs tr.detail td { white-space: normal;
     max-width: none; background: #fafafa; }
#jobs td.id code { cursor: pointer; color: var(--accent); }
svg.durations text { font: 11px system-ui, sans-serif; fill: #333; }
svg.durations text.tick { fill: #777; }
.ok { color: #2e7d32; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("jobs-data").textContent);
  var jobs = data.jobs, columns = data.columns, colours = data.colours;
  var state = {page: 0, size: 100, sort: null, desc: false, open: {}};
  var el = function (id) { return document.getElementById(id); };
  var fmtDur = function (s) {
    if (s === undefined) return "-";
    if (s < 1) return Math.round(s * 1000) + "ms";
    if (s < 60) return s.toFixed(1) + "s";
    var m = Math.floor(Math.round(s) / 60), sec = Math.round(s) % 60, h = Math.floor(m / 60);
    m = m % 60;
    var two = function (n) { return (n < 10 ? "0" : "") + n; };
    return h ? h + "h" + two(m) + "m" + two(sec) + "s" : m + "m" + two(sec) + "s";
  };
  var fmtBytes = function (n) {
    if (n === undefined) return "-";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i ? n.toFixed(1) + " " + units[i] : n + " B";
  };
  var fmtTime = function (t) {
    if (t === undefined) return "-";
    var d = new Date(t * 1000), p = function (n) { return (n < 10 ? "0" : "") + n; };
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
      p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  };
  var others = function (j) {
    return Object.keys(j.p).filter(function (k) { return columns.indexOf(k) < 0; })
      .map(function (k) { return k + "=" + j.p[k]; }).join(" ");
  };
  var resources = function (j) {
    return Object.keys(j.res).map(function (k) { return k + "=" + j.res[k]; }).join(" ");
  };
  // Every column: header, value for sorting, text shown.
  var cols = [
    {h: "job", v: function (j) { return j.id; }},
    {h: "run", v: function (j) { return j.run; }},
    {h: "stage", v: function (j) { return j.stage; }},
    {h: "status", v: function (j) { return j.s; }}
  ].concat(columns.map(function (c) {
    return {h: c, v: function (j) { return j.p[c] === undefined ? "" : j.p[c]; }, param: c};
  })).concat([
    {h: "other params", v: others},
    {h: "started", v: function (j) { return j.t0; }, t: fmtTime},
    {h: "duration", v: function (j) { return j.dur; }, t: fmtDur},
    {h: "outputs", v: function (j) { return j.bytes; }, t: fmtBytes},
    {h: "requested", v: resources},
    {h: "exit", v: function (j) { return j.exit === undefined ? "" : j.exit; }},
    {h: "links", v: function () { return ""; }, links: true}
  ]);
  var text = function (tag, content, cls) {
    var node = document.createElement(tag);
    if (content !== undefined) node.textContent = content;
    if (cls) node.className = cls;
    return node;
  };
  var link = function (href, label) {
    var a = text("a", label); a.href = href; return a;
  };
  var searchText = jobs.map(function (j) {
    return [j.id, j.run, j.stage, j.s, others(j)].concat(columns.map(function (c) {
      return c + "=" + (j.p[c] === undefined ? "" : j.p[c]);
    })).join(" ").toLowerCase();
  });
  var options = function (select, values) {
    values.forEach(function (v) { var o = text("option", v); o.value = v; select.appendChild(o); });
  };
  var uniq = function (f) {
    var seen = {}; jobs.forEach(function (j) { seen[f(j)] = true; });
    return Object.keys(seen).sort();
  };
  options(el("f-status"), uniq(function (j) { return j.s; }));
  options(el("f-run"), uniq(function (j) { return j.run; }));
  options(el("f-stage"), uniq(function (j) { return j.stage; }));
  var head = el("jobs").querySelector("thead tr");
  cols.forEach(function (c, i) {
    var th = text("th", c.h); th.title = "sort by " + c.h;
    th.addEventListener("click", function () {
      state.desc = state.sort === i ? !state.desc : false; state.sort = i; state.page = 0;
      render();
    });
    head.appendChild(th);
  });
  var selected = function () {
    var s = el("f-status").value, r = el("f-run").value, g = el("f-stage").value;
    var words = el("f-text").value.toLowerCase().split(/\s+/).filter(Boolean);
    var out = [];
    for (var i = 0; i < jobs.length; i++) {
      var j = jobs[i];
      if ((s && j.s !== s) || (r && j.run !== r) || (g && j.stage !== g)) continue;
      if (words.some(function (w) { return searchText[i].indexOf(w) < 0; })) continue;
      out.push(j);
    }
    if (state.sort !== null) {
      var c = cols[state.sort], sign = state.desc ? -1 : 1;
      out.sort(function (a, b) {
        var x = c.v(a), y = c.v(b);
        if (x === undefined) return 1; if (y === undefined) return -1;
        var nx = Number(x), ny = Number(y);
        if (x !== "" && y !== "" && !isNaN(nx) && !isNaN(ny)) return sign * (nx - ny);
        return sign * String(x).localeCompare(String(y));
      });
    }
    return out;
  };
  var detail = function (j) {
    var td = document.createElement("td"); td.colSpan = cols.length;
    var add = function (label, value) {
      var p = text("div"); p.appendChild(text("b", label + ": ")); p.appendChild(value);
      td.appendChild(p);
    };
    add("id", text("code", j.id));
    add("params", text("span", Object.keys(j.p).map(function (k) {
      return k + "=" + j.p[k]; }).join("  ") || "(none)"));
    add("requested resources", text("span", resources(j) || "(none)"));
    add("recorded", text("span", "exit " + (j.exit === undefined ? "-" : j.exit) +
      (j.why ? " (" + j.why + ")" : "") + " · host " + (j.host || "-") +
      (j.slurm ? " · SLURM job " + j.slurm : "") + (j.runs ? " · runs " + j.runs.join(", ") : "")));
    if (j.o && j.dir !== undefined) {
      var outs = text("span");
      Object.keys(j.o).forEach(function (k) {
        outs.appendChild(link(j.dir + "/" + j.o[k], k));
        outs.appendChild(document.createTextNode(" "));
      });
      add("outputs", outs);
    }
    var tr = text("tr", undefined, "detail"); tr.appendChild(td); return tr;
  };
  var render = function () {
    var rows = selected(), body = el("jobs").querySelector("tbody");
    var size = state.size || rows.length || 1, pages = Math.max(1, Math.ceil(rows.length / size));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * size, shown = rows.slice(start, start + size);
    var fragment = document.createDocumentFragment();
    shown.forEach(function (j) {
      var tr = text("tr", undefined, "job"); tr.dataset.job = j.id; tr.dataset.status = j.s;
      cols.forEach(function (c) {
        var td = document.createElement("td");
        if (c.links) {
          if (j.dir !== undefined) {
            var logs = j.logs || [j.dir + "/repx/stdout.log", j.dir + "/repx/stderr.log"];
            td.appendChild(link(logs[0], "stdout")); td.appendChild(document.createTextNode(" "));
            td.appendChild(link(logs[1], "stderr")); td.appendChild(document.createTextNode(" "));
            td.appendChild(link(j.dir + "/out/", "out"));
          }
        } else if (c.h === "job") {
          var code = text("code", j.id.slice(0, 12)); code.title = j.id + " (click: details)";
          code.addEventListener("click", function () {
            state.open[j.id] = !state.open[j.id]; render();
          });
          td.appendChild(code); td.className = "id";
        } else if (c.h === "status") {
          var badge = text("span", j.s, "badge"); badge.style.background = colours[j.s] || "#eee";
          td.appendChild(badge);
        } else {
          var v = c.v(j), shownText = c.t ? c.t(v) : (v === undefined ? "" : String(v));
          td.textContent = shownText; td.title = shownText;
        }
        tr.appendChild(td);
      });
      fragment.appendChild(tr);
      if (state.open[j.id]) fragment.appendChild(detail(j));
    });
    body.replaceChildren(fragment);
    el("page-info").textContent = rows.length ? "jobs " + (start + 1) + "–" +
      (start + shown.length) + " of " + rows.length +
      (rows.length < jobs.length ? " (filtered from " + jobs.length + ")" : "") : "no job matches";
    el("prev").disabled = state.page === 0;
    el("next").disabled = state.page >= pages - 1;
  };
  ["f-status", "f-run", "f-stage", "f-size"].forEach(function (id) {
    el(id).addEventListener("change", function () {
      state.size = Number(el("f-size").value); state.page = 0; render();
    });
  });
  el("f-text").addEventListener("input", function () { state.page = 0; render(); });
  el("prev").addEventListener("click", function () { state.page--; render(); });
  el("next").addEventListener("click", function () { state.page++; render(); });
  document.querySelectorAll(".card").forEach(function (card) {
    card.addEventListener("click", function () {
      el("f-status").value = card.dataset.status; state.page = 0; render();
      el("jobs-section").scrollIntoView();
    });
  });
  render();
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="repx report">
<title>{title}</title>
<style>{css}</style></head>
<body>
<h1>{heading}</h1>
<div class="sub">repx report written {generated} · {total}</div>
<div class="cards">{cards}</div>
{notes}
<h2 id="provenance">Lab and provenance</h2>
{provenance}
<h2 id="runs">Runs</h2>
{runs}
<h2 id="failures">Failures ({failure_count})</h2>
{failures}
<h2 id="durations">Duration per stage</h2>
<div class="scroll">{plot}</div>
<h2 id="graph">Graph</h2>
<div class="scroll graph">{graph}</div>
<h2 id="jobs-section">Jobs</h2>
<p>Swept params (one column each): {swept}.<br>Params with one value in every job: {fixed}</p>
<div class="controls">
<label>status <select id="f-status"><option value="">all</option></select></label>
<label>run <select id="f-run"><option value="">all</option></select></label>
<label>stage <select id="f-stage"><option value="">all</option></select></label>
<input type="search" id="f-text" placeholder="filter: id, stage, lr=0.1 …">
<label>rows <select id="f-size"><option>50</option><option selected>100</option>
<option>500</option><option value="0">all</option></select></label>
<button id="prev" type="button">◀</button><button id="next" type="button">▶</button>
<span id="page-info"></span>
</div>
<noscript><p class="note">The job table needs JavaScript; the data is in this file's
<code>jobs-data</code> script element as JSON.</p></noscript>
<div class="scroll"><table id="jobs"><thead><tr></tr></thead><tbody></tbody></table></div>
<script type="application/json" id="jobs-data">{data}</script>
<script>{script}</script>
</body></html>
"""
