"""``repx tui`` driven headless with Textual's pilot, on a real lab, store and build.

The lab sweeps ``i`` over 1, 2, 3; the job with ``i = 2`` fails while a marker file exists.
A real ``repx build`` leaves it failed; the dashboard is opened on that store, the user
filters to the failed jobs, goes to the failed one, reads its log, removes the cause and
reruns: the store must then hold the job as succeeded, written by the rerun the dashboard
started. A second test holds a live claim of another process on a job and checks that the
dashboard turns read-only and refuses to act on it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

# Textual is a dev dependency: without it this import fails the module, never skips it.
from repx.errors import UsageError
from repx.lab import LabOptions, open_lab
from repx.report.tui.app import DashboardApp
from repx.report.tui.model import Dashboard, parse_filter
from repx.store import Status, Store, owner_token, this_host
from tests.buildutil import build, write_lab
from tests.conftest import require_nix

FILES = {
    "run.nix": """
        { pkgs, repx-lib, ... }:
        { name = "main"; pipelines = [ ./pipe.nix ]; params = { i = [ 1 2 3 ]; }; }
    """,
    "pipe.nix": """
        { repx, ... }:
        repx.mkPipe rec { work = repx.callStage ./work.nix [ ]; }
    """,
    "work.nix": """
        { pkgs }:
        {
          pname = "work";
          params = { i = 0; marker = "@MARKER@"; hold = "@HOLD@"; };
          outputs = { result = "$out/result.txt"; };
          run = { outputs, params, ... }: ''
            echo "working on i=${toString params.i}"
            if [ -e "${params.hold}" ]; then echo "holding"; sleep 60; fi
            if [ "${toString params.i}" = 2 ] && [ -e "${params.marker}" ]; then
              echo "boom: the marker for i=2 is present" >&2
              exit 3
            fi
            echo "done i=${toString params.i}"
            echo "${toString params.i}" > "${outputs.result}"
          '';
        }
    """,
}

#: The pilot's terminal: wide enough for the tree and the side panel side by side.
SIZE = (160, 48)


class FailedLab:
    """The lab built and run once: two jobs succeeded, the ``i = 2`` one failed."""

    def __init__(self, root: Path) -> None:
        require_nix()
        self.marker = root / "marker"
        self.marker.touch()
        #: While this file exists every job sleeps a minute first (to be cancelled).
        self.hold = root / "hold"
        self.store = root / ".repx"
        self.folder = write_lab(root / "lab", FILES, MARKER=str(self.marker),
                                HOLD=str(self.hold))
        first = build(self.folder, self.store, "--keep-going", expect=1)
        (self.failed,) = first["failed"]
        assert len(first.executed) == 2
        self.graph = open_lab(LabOptions(lab_dir=str(self.folder / "result")),
                              validate=False)

    def status(self, job_id: str) -> Status | None:
        with Store(self.store, readonly=True) as store:
            record = store.get(job_id)
        return record.status if record is not None else None


@pytest.fixture
def lab(tmp_path: Path) -> FailedLab:
    return FailedLab(tmp_path)


def text_of(app: DashboardApp, selector: str) -> str:
    """What a Static or Log widget shows now, as plain text."""
    widget = app.query_one(selector)
    lines = getattr(widget, "lines", None)
    if lines is not None:
        return "\n".join(str(line) for line in lines)
    return str(widget.content)  # type: ignore[attr-defined]


@pytest.mark.nix
def test_navigate_to_the_failed_job_read_its_log_and_rerun_it(lab: FailedLab) -> None:
    dashboard = Dashboard(lab.graph, lab.store)

    async def scenario() -> None:
        app = DashboardApp(dashboard, refresh=0.2)
        async with app.run_test(size=SIZE) as pilot:
            tree_text = str(app.query_one("#jobs").root.children[0].label)
            assert "run main" in tree_text and "1 failed" in tree_text
            assert "2 succeeded" in tree_text

            # Filter to the failed jobs, then go to the (only) one.
            await pilot.press("slash")
            await pilot.press(*"status:failed", "enter")
            await pilot.press("n")
            await pilot.pause(0.3)
            detail = text_of(app, "#detail")
            assert f"job {lab.failed}" in detail and "[failed]" in detail
            assert "i=2" in detail and "exit code 3" in detail

            # Its log (stderr first) says why it failed.
            await pilot.press("l")
            await pilot.pause(0.3)
            assert "boom: the marker for i=2 is present" in text_of(app, "#log")

            # Fix the cause and rerun the failed jobs; wait for the store to say so.
            lab.marker.unlink()
            await pilot.press("r")
            deadline = time.monotonic() + 90
            while lab.status(lab.failed) is not Status.SUCCEEDED:
                assert time.monotonic() < deadline, text_of(app, "#activity")
                await pilot.pause(0.3)
            rerun = dashboard.rerun
            assert rerun is not None and rerun.job_ids == [lab.failed]
            assert rerun.process.wait(timeout=60) == 0
            await pilot.pause(0.6)  # a refresh or two
            assert "finished, exit code 0" in text_of(app, "#activity")
            assert "1 succeeded" in text_of(app, "#activity")
            job_label = str(app.query_one("#jobs").cursor_node.label)
            assert job_label.startswith("succeeded")
            # The log view followed the rerun: stdout now shows the successful attempt.
            await pilot.press("e")
            await pilot.pause(0.3)
            assert "done i=2" in text_of(app, "#log")
            await pilot.press("q")

    try:
        asyncio.run(scenario())
    finally:
        dashboard.close()
    with Store(lab.store, readonly=True) as store:
        record = store.get(lab.failed)
        assert record is not None and record.status is Status.SUCCEEDED
        assert record.pid == dashboard.rerun.pid  # recorded by the rerun started here
        assert all(s is Status.SUCCEEDED for s in store.statuses(lab.graph.jobs).values())


@pytest.mark.nix
def test_cancel_a_job_of_the_rerun_started_here(lab: FailedLab) -> None:
    """``c`` on a job the dashboard's own rerun is running stops it; the build records it
    failed by the signal, and the dashboard shows that."""
    dashboard = Dashboard(lab.graph, lab.store)
    lab.marker.unlink()
    lab.hold.touch()

    async def scenario() -> None:
        app = DashboardApp(dashboard, refresh=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("n")  # the failed job
            await pilot.press("r")
            log = lab.store / "outputs" / lab.failed / "repx" / "stdout.log"
            deadline = time.monotonic() + 60
            while not (log.exists() and "holding" in log.read_text()):
                assert time.monotonic() < deadline, text_of(app, "#activity")
                await pilot.pause(0.2)
            await pilot.pause(0.3)  # a refresh: the dashboard sees the claim
            assert "[running]" in text_of(app, "#detail")
            started = time.monotonic()
            await pilot.press("c")
            assert "cancelled " + lab.failed[:12] in text_of(app, "#message")
            rerun = dashboard.rerun
            assert rerun is not None and rerun.process.wait(timeout=30) == 1
            assert time.monotonic() - started < 20  # not the minute the job would sleep
            await pilot.pause(0.5)
            assert "[failed]" in text_of(app, "#detail")
            await pilot.press("q")

    try:
        asyncio.run(scenario())
    finally:
        dashboard.close()
    with Store(lab.store, readonly=True) as store:
        record = store.get(lab.failed)
    assert record is not None and record.status is Status.FAILED
    assert record.pid == dashboard.rerun.pid


@pytest.mark.nix
def test_jobs_another_live_build_owns_are_read_only(lab: FailedLab) -> None:
    """A live claim by another process (here a sleeping child standing in for a build):
    the banner says read-only, and rerun and cancel leave the job alone."""
    holder = subprocess.Popen(["sleep", "60"])
    try:
        with Store(lab.store) as store:
            assert store.claim(lab.failed, owner_token(holder.pid), host=this_host(),
                               pid=holder.pid, lab=str(lab.graph.lab.path), run="main",
                               stage="work")
        dashboard = Dashboard(lab.graph, lab.store)

        async def scenario() -> None:
            app = DashboardApp(dashboard, refresh=0.2)
            async with app.run_test(size=SIZE) as pilot:
                await pilot.pause(0.3)
                banner = text_of(app, "#banner")
                assert "READ-ONLY" in banner and f"build pid {holder.pid}" in banner
                await pilot.press("r")
                await pilot.pause(0.2)
                assert "read-only" in text_of(app, "#message")
                assert dashboard.rerun is None
                await pilot.press("q")

        try:
            asyncio.run(scenario())
            assert dashboard.cancel([lab.failed]) == [
                f"{lab.failed[:12]}: read-only, build pid {holder.pid} on {this_host()} owns it"]
        finally:
            dashboard.close()
        assert holder.poll() is None  # nothing was signalled
        assert lab.status(lab.failed) is Status.RUNNING
    finally:
        holder.kill()
        holder.wait()
    assert os.path.exists(lab.store)


def test_filter_syntax_errors_name_the_word_at_fault() -> None:
    assert parse_filter("status:not-run stage:work i=2").params == (("i", "2"),)
    with pytest.raises(UsageError, match="filter 'status:bogus': unknown status"):
        parse_filter("status:bogus")
    with pytest.raises(UsageError, match="filter 'lonely': write status:STATE"):
        parse_filter("lonely")
