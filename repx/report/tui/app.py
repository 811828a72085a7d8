"""The Textual application of ``repx tui``: draws a :class:`~repx.report.tui.model.Dashboard`
and maps keys to its actions.

Left, the tree: runs → stages → jobs, each with its counts, refreshed from the store every
``refresh`` seconds (labels change in place, so the cursor stays where the user put it; the
tree is rebuilt only when the filter changes). Right, the highlighted node: a job's params,
resources and last attempt, and its log, followed while the job runs. Below, the rerun's
progress and what the last action did.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Input, Log, Static, Tree
from textual.widgets.tree import TreeNode

from repx.display import plural
from repx.errors import RepxError
from repx.report.tui.model import (
    MAX_JOBS_PER_STAGE,
    Dashboard,
    JobFilter,
    LogFollower,
    counts_text,
    parse_filter,
)

#: How each state is drawn in the tree.
STATE_STYLE = {"failed": "bold red", "running": "bold yellow", "queued": "cyan",
               "stale": "magenta", "cancelled": "red", "succeeded": "green",
               "not_run": "dim"}

#: Node data: ("run", run) / ("stage", run, stage) / ("job", id) / ("more", "").
NodeData = tuple[str, ...]


class DashboardApp(App[None]):
    """``repx tui``."""

    TITLE = "repx tui"
    CSS = """
    #main { height: 1fr; }
    #jobs { width: 55%; }
    #side { width: 45%; }
    #detail { height: auto; max-height: 50%; overflow-y: auto; padding: 0 1; }
    #log { height: 1fr; border: solid $accent; }
    #banner { height: auto; padding: 0 1; }
    #banner.readonly { background: $warning 30%; }
    #message { height: auto; padding: 0 1; color: $text-warning; }
    #activity { height: 6; border: solid $secondary; }
    #filter { dock: bottom; display: none; }
    #filter.shown { display: block; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("slash", "filter", "Filter"),
        Binding("n", "next_failed", "Next failed"),
        Binding("l", "log", "Log"),
        Binding("e", "toggle_stream", "stdout/stderr"),
        Binding("c", "cancel", "Cancel"),
        Binding("r", "rerun", "Rerun failed"),
    ]

    def __init__(self, dashboard: Dashboard, *, refresh: float = 1.0) -> None:
        super().__init__()
        self.dashboard = dashboard
        self.refresh_every = refresh
        self.job_filter = JobFilter()
        self._labelled: list[tuple[TreeNode[NodeData], NodeData]] = []
        self._job_nodes: dict[str, TreeNode[NodeData]] = {}
        self._shown_job: str | None = None
        self._stderr = True
        self._follower: LogFollower | None = None
        self._rerun_lines: list[str] = []
        #: Counts by (run,) and (run, stage), over all jobs: read once per refresh.
        self._counts: dict[tuple[str, ...], Counter[str]] = {}

    # ---------------------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="banner")
        with Horizontal(id="main"):
            yield Tree[NodeData](Text(self._lab_title()), id="jobs")
            with Vertical(id="side"):
                yield Static("Highlight a job (arrows) to see it; l shows its log.",
                             id="detail")
                yield Log(id="log", highlight=False, max_lines=5000)
        yield Static(id="message")
        yield Log(id="activity", highlight=False)
        yield Input(placeholder="status:failed stage:NAME PARAM=VALUE  (empty: all jobs)",
                    id="filter")
        yield Footer()

    def _lab_title(self) -> str:
        lab = self.dashboard.graph.lab
        # The lab file the user wrote names the lab better than its store path's hash.
        name = lab.lab_file or lab.path.name
        return f"lab {name}  version {lab.lab_version}  git {lab.git_hash[:12]}"

    def on_mount(self) -> None:
        tree = self.query_one("#jobs", Tree)
        tree.root.expand()
        self._build_tree()
        self._update_status()
        tree.focus()
        self.set_interval(self.refresh_every, self._tick)

    # ----------------------------------------------------------------------------- tree

    def _count_all(self) -> None:
        self._counts = {}
        for run in self.dashboard.runs():
            self._counts[(run.name,)] = run.counts
            for stage in run.stages:
                self._counts[(run.name, stage.stage)] = stage.counts

    def _build_tree(self) -> None:
        """Fill the tree from the model under the current filter."""
        self._count_all()
        tree = self.query_one("#jobs", Tree)
        tree.clear()
        tree.root.set_label(Text(self._lab_title()))
        self._labelled = []
        self._job_nodes = {}
        filtering = self.job_filter.active
        for run in self.dashboard.runs(self.job_filter):
            run_data: NodeData = ("run", run.name)
            run_node = tree.root.add(self._label(run_data), data=run_data, expand=True)
            self._labelled.append((run_node, run_data))
            for stage in run.stages:
                stage_data: NodeData = ("stage", run.name, stage.stage)
                stage_node = run_node.add(self._label(stage_data), data=stage_data,
                                          expand=filtering)
                self._labelled.append((stage_node, stage_data))
                for job_id in stage.job_ids[:MAX_JOBS_PER_STAGE]:
                    job_data: NodeData = ("job", job_id)
                    node = stage_node.add_leaf(self._label(job_data), data=job_data)
                    self._labelled.append((node, job_data))
                    self._job_nodes.setdefault(job_id, node)
                hidden = len(stage.job_ids) - MAX_JOBS_PER_STAGE
                if hidden > 0:
                    stage_node.add_leaf(f"… {hidden} more (filter to narrow: /)",
                                        data=("more", ""))

    def _label(self, data: NodeData) -> Text:
        kind = data[0]
        model = self.dashboard
        if kind == "job":
            state = model.state(data[1])
            text = Text(f"{state.replace('_', ' '):<10} ", style=STATE_STYLE.get(state, ""))
            text.append(model.job_label(data[1]))
            return text
        title = f"run {data[1]}" if kind == "run" else f"stage {data[2]}"
        counts = self._counts.get(data[1:], Counter())
        text = Text(f"{title}  ", style="bold")
        worst = next((s for s in ("failed", "running", "queued") if counts.get(s)), None)
        text.append(counts_text(counts), style=STATE_STYLE.get(worst or "", ""))
        return text

    def _selected(self) -> NodeData | None:
        node = self.query_one("#jobs", Tree).cursor_node
        return node.data if node is not None else None

    # --------------------------------------------------------------------------- refresh

    def _tick(self) -> None:
        try:
            self.dashboard.refresh()
        except RepxError as error:
            self._say(f"cannot read the store: {error.message}")
            return
        self._count_all()
        for node, data in self._labelled:
            node.set_label(self._label(data))
        self._update_status()
        self._show_detail()
        self._follow_log()

    def _update_status(self) -> None:
        model = self.dashboard
        banner = self.query_one("#banner", Static)
        owners = model.foreign_builds()
        total = counts_text(Counter(model.state(i) for i in model.job_ids))
        if owners:
            who = ", ".join(f"{owner} ({plural(n, 'job')})" for owner, n in owners.items())
            banner.update(f"READ-ONLY: another build owns jobs of this lab: {who}.  {total}")
            banner.add_class("readonly")
        else:
            banner.update(f"store {model.store_dir}  {total}")
            banner.remove_class("readonly")
        progress = model.rerun_progress()
        if model.rerun is not None:
            lines = [progress, *model.rerun.tail(3)]  # what the panel's 4 lines hold
            if lines != self._rerun_lines:
                self._rerun_lines = lines
                activity = self.query_one("#activity", Log)
                activity.clear()
                activity.write_lines(lines)

    def _say(self, message: str) -> None:
        """What the last action did (or why it did nothing), above the rerun's output."""
        self.query_one("#message", Static).update(Text(message))

    # ---------------------------------------------------------------------------- detail

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[NodeData]) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        data = self._selected()
        detail = self.query_one("#detail", Static)
        if data is None or data[0] == "more":
            return
        if data[0] != "job":
            detail.update(self._label(data))
            return
        info = self.dashboard.detail(data[1])
        lines = [f"job {info['id']}  [{info['state']}]  run {info['run']}  stage {info['stage']}"]
        if info["owner"]:
            lines.append(f"read-only: {info['owner']} owns this job")
        lines.append("params: " + _compact(info["params"]))
        lines.append("resources: " + _compact(info["resources"]))
        attempt = info["last attempt"]
        if attempt is None:
            lines.append("last attempt: none recorded")
        else:
            lines.append("last attempt: " + ", ".join(
                f"{k} {v}" for k, v in attempt.items() if v not in (None, "-")))
        if info["reruns started here"]:
            lines.append(f"reruns started here: {info['reruns started here']}")
        lines.append(f"log: {info['logs']['stderr' if self._stderr else 'stdout']}")
        detail.update(Text("\n".join(lines)))

    # ------------------------------------------------------------------------------- log

    def _open_log(self, job_id: str) -> None:
        self._shown_job = job_id
        path = self.dashboard.log_path(job_id, stderr=self._stderr)
        self._follower = LogFollower(path)
        log = self.query_one("#log", Log)
        log.clear()
        log.border_title = f"{'stderr' if self._stderr else 'stdout'} of {job_id[:12]}"
        if not path.exists():
            log.write_line(f"(no log yet at {path}; it shows here once the job starts)")
        self._follow_log()

    def _follow_log(self) -> None:
        """Append what the shown log gained since the last look (all of it after a rerun
        truncated it)."""
        if self._follower is None:
            return
        text, restarted = self._follower.read()
        log = self.query_one("#log", Log)
        if restarted:
            log.clear()
        if text:
            log.write(text)

    # --------------------------------------------------------------------------- actions

    def action_log(self) -> None:
        data = self._selected()
        if data is None or data[0] != "job":
            self._say("highlight a job to see its log")
            return
        self._open_log(data[1])

    def action_toggle_stream(self) -> None:
        self._stderr = not self._stderr
        if self._shown_job is not None:
            self._open_log(self._shown_job)
        self._show_detail()

    def action_next_failed(self) -> None:
        """Move the cursor to the next failed job the tree lists (after the cursor)."""
        failed = [i for i in self._job_nodes if self.dashboard.state(i) == "failed"]
        if not failed:
            self._say("no failed job listed")
            return
        data = self._selected()
        current = data[1] if data is not None and data[0] == "job" else None
        following = failed[(failed.index(current) + 1) % len(failed)] \
            if current in failed else failed[0]
        node = self._job_nodes[following]
        if node.parent is not None:
            node.parent.expand()
        tree = self.query_one("#jobs", Tree)
        # The expanded stage's lines exist only after the tree has laid itself out again.
        self.call_after_refresh(tree.move_cursor, node)
        self.call_after_refresh(self._show_detail)

    def action_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.add_class("shown")
        field.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            self.job_filter = parse_filter(event.value)
        except RepxError as error:
            self._say(error.message)
            return
        event.input.remove_class("shown")
        self._build_tree()
        self.query_one("#jobs", Tree).focus()
        self._say(f"filter: {event.value or '(none)'}")

    def action_cancel(self) -> None:
        data = self._selected()
        model = self.dashboard
        if data is None or data[0] not in ("job", "stage", "run"):
            self._say("highlight a job, stage or run to cancel")
            return
        if data[0] == "job":
            ids = [data[1]]
        else:
            ids = [i for i in model.graph.runs[data[1]].job_ids
                   if data[0] == "run" or model.graph.jobs[i].stage == data[2]]
        self._say("; ".join(model.cancel(ids)))

    def action_rerun(self) -> None:
        try:
            rerun = self.dashboard.start_rerun()
        except RepxError as error:
            self._say(error.message)
            return
        self._say(f"rerunning {len(rerun.job_ids)} failed job(s): repx build (pid {rerun.pid})")


def _compact(value: dict[str, Any]) -> str:
    """A dict on one line: ``a=1 b="x"`` (nested values as JSON)."""
    if not value:
        return "(none)"
    return " ".join(f"{k}={v if isinstance(v, str | int | float) else json.dumps(v)}"
                    for k, v in value.items())


def run_dashboard(dashboard: Dashboard, *, refresh: float = 1.0) -> None:
    """Run the dashboard in this terminal until the user quits."""
    DashboardApp(dashboard, refresh=refresh).run()
