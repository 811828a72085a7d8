"""`repx build --scheduler slurm --no-wait` fully detached, on the real cluster.

What is pinned: a lab with a scatter-gather stage and a stage downstream of it is submitted
whole by a ``--no-wait`` build that returns at once (no watcher process is left); SLURM runs
the scatter, which submits its own branches and gather on its node and points the anchor job
(that the downstream stage waits for) at the gather; afterwards ``repx status`` records
every job as succeeded, and a second build executes nothing.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from repx.engine.slurm.detached import ANCHOR_FILE, SUBMITTED_FILE
from repx.store import Status, Store
from tests.conftest import require_nix
from tests.slurm_cluster import accounted_jobs, slurm_cluster_fixture
from tests.test_slurm_build import build_json, repx

slurm = slurm_cluster_fixture()

pytestmark = [pytest.mark.slurm, pytest.mark.nix]

#: A scatter of three work items (one step per branch), its gather, and a stage reading the
#: gather's output.
DETACHED_LAB = {
    "run.nix": """
        { pkgs, repx-lib, ... }:
        { name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }
    """,
    "pipe.nix": """
        { repx, pkgs, ... }:
        repx.mkPipe rec {
          fan = repx.callStage ./fan.nix [ ];
          report = repx.callStage ./report.nix [ fan ];
        }
    """,
    "fan.nix": """
        { pkgs }:
        {
          pname = "fan"; version = "1";
          scatter = {
            outputs = { work__items = "$out/items.json"; worker__arg = { index = 0; }; };
            runDependencies = [ pkgs.coreutils ];
            run = { outputs, ... }: ''
              echo '[{"index": 0}, {"index": 1}, {"index": 2}]' > "${outputs.work__items}"
            '';
          };
          worker = {
            inputs = { worker__item = ""; };
            outputs = { part = "$out/part.txt"; };
            runDependencies = [ pkgs.coreutils ];
            run = { inputs, outputs, ... }: ''
              sleep 2
              cat "${inputs.worker__item}" > "${outputs.part}"
            '';
          };
          gather = {
            inputs = { worker__outs = "[]"; };
            outputs = { all = "$out/all.txt"; };
            runDependencies = [ pkgs.coreutils ];
            run = { inputs, outputs, ... }: ''
              cat "${inputs.worker__outs}" > "${outputs.all}"
            '';
          };
        }
    """,
    "report.nix": """
        { pkgs }:
        {
          pname = "report"; version = "1";
          inputs = { all = ""; };
          outputs = { report = "$out/report.txt"; };
          runDependencies = [ pkgs.coreutils ];
          run = { inputs, outputs, ... }: ''
            test -s "${inputs.all}"
            cat "${inputs.all}" > "${outputs.report}"
          '';
        }
    """,
}


def queued_repx_jobs(store: Path) -> list[str]:
    """SLURM jobs of this store still queued or running (by their --chdir)."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %Z"], capture_output=True,
                         text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.split()[2] == str(store)]


def reconcile(folder: Path, store: Path, expected: int) -> dict:
    """``repx status --json`` until the store holds ``expected`` records, all ended (sacct
    can lag a few seconds behind squeue forgetting a job); its last output."""
    deadline = time.monotonic() + 60
    while True:
        status = json.loads(repx("status", "--store", str(store), "--json", cwd=folder).stdout)
        records = list(Store(store, readonly=True).records())
        if len(records) == expected and not any(r.status.active for r in records):
            return status
        assert time.monotonic() < deadline, [(r.stage, r.status.value) for r in records]
        time.sleep(1)


def test_no_wait_submits_past_scatter_gather_and_status_reconciles(slurm, make_lab) -> None:
    require_nix()
    folder = make_lab(DETACHED_LAB)
    store = folder / ".repx"
    started = time.monotonic()
    first = build_json(folder, "--scheduler", "slurm", "--no-wait")
    submit_seconds = time.monotonic() - started
    assert queued_repx_jobs(store), "the --no-wait build waited for its jobs"
    # Both graph jobs (the scatter-gather job and the one downstream) are on SLURM.
    assert first["executed"] == [] and len(first["submitted"]) == 2, first
    graph = {j["pname"]: j for j in json.loads(
        repx("list", "jobs", "--json", "--lab", "result", cwd=folder).stdout)}
    fan, report = graph["fan"]["id"], graph["report"]["id"]
    anchor = (store / "outputs" / fan / "repx" / ANCHOR_FILE).read_text().strip()
    assert anchor.isdigit()
    # A status while the branches run (the scatter submitted them) records the scatter
    # and adopts the branches; they are still running.
    submitted_file = store / "outputs" / fan / "repx" / SUBMITTED_FILE
    deadline = time.monotonic() + 300  # the cluster is shared: others' arrays
    while not submitted_file.exists():
        assert time.monotonic() < deadline, "the scatter never submitted its branches"
        time.sleep(0.2)
    repx("status", "--store", str(store), cwd=folder)
    mid_run = Store(store, readonly=True).get_many(
        json.loads(submitted_file.read_text())["units"])
    # No watcher: everything runs on SLURM alone.
    deadline = time.monotonic() + 300  # the cluster is shared: others' arrays
    while queued_repx_jobs(store):
        assert time.monotonic() < deadline, "the detached jobs never finished"
        time.sleep(0.5)
    submitted = json.loads((store / "outputs" / fan / "repx" / SUBMITTED_FILE).read_text())
    assert len(submitted["units"]) == 4 and submitted["anchor"] == anchor  # 3 branches + gather
    report_out = store / "outputs" / report / "out" / "report.txt"
    assert report_out.read_text().count("part.txt") == 3  # the gather's, of 3 branches
    status = reconcile(folder, store, 6)
    records = {r.job_id: r for r in Store(store, readonly=True).records()}
    assert len(records) == 6, sorted(r.stage for r in records.values())
    assert any(r.status.active for r in mid_run.values()) or len(mid_run) < 4, \
        "the branches ended before the status meant to catch them running"
    assert {r.status for r in records.values()} == {Status.SUCCEEDED}, \
        {r.stage: r.status.value for r in records.values()}
    assert status["total"]["succeeded"] == 2 and status["total"]["jobs"] == 2, status
    again = build_json(folder, "--scheduler", "slurm")
    assert again["executed"] == [] and sorted(again["up_to_date"]) == sorted([fan, report])
    assert submit_seconds < 30


def test_watching_build_adopts_what_the_scatter_submitted_on_its_node(
        slurm, make_lab) -> None:
    """A build after a detached one watches the branches and gather the node submitted
    (same SLURM ids, nothing submitted twice), with node-local scratch passed on to them."""
    require_nix()
    folder = make_lab(DETACHED_LAB)
    store = folder / ".repx"
    first = build_json(folder, "--scheduler", "slurm", "--no-wait", "--scratch", "node-local")
    assert len(first["submitted"]) == 2
    assert queued_repx_jobs(store), "the --no-wait build waited for its jobs"
    anchors = sorted(store.glob("outputs/*/repx/anchor"))
    assert len(anchors) == 1
    anchor = anchors[0].read_text()
    # A second --no-wait build adopts all of it: same anchor, nothing new on SLURM.
    scripts = sorted(p.name for p in (store / "slurm").glob("*.sbatch"))
    second = build_json(folder, "--scheduler", "slurm", "--no-wait", "--scratch", "node-local")
    assert sorted(second["submitted"]) == sorted(first["submitted"]), second
    assert anchors[0].read_text() == anchor
    # --retries: a node another test of this shared cluster kills is not our failure.
    done = build_json(folder, "--scheduler", "slurm", "--poll", "0.3",
                      "--retries", "2")
    assert done["failed"] == [] and sorted(done["executed"]) == sorted(first["submitted"]), done
    graph = {j["pname"]: j["id"] for j in json.loads(
        repx("list", "jobs", "--json", "--lab", "result", cwd=folder).stdout)}
    submitted = json.loads((store / "outputs" / graph["fan"] / "repx" / SUBMITTED_FILE)
                           .read_text())
    records = Store(store, readonly=True).get_many(list(submitted["units"]))
    assert {uid: r.slurm_id for uid, r in records.items()} == submitted["units"]
    assert {r.status for r in records.values()} == {Status.SUCCEEDED}
    # The branches ran on node-local scratch too: each left its node's manifest.
    assert all((store / "outputs" / uid / "repx" / "scratch_manifest.json").is_file()
               for uid in submitted["units"])
    assert (store / "outputs" / graph["report"] / "out" / "report.txt").stat().st_size > 0
    # Only the node wrote sbatch scripts after the first build (its branches and gather).
    later = sorted(p.name for p in (store / "slurm").glob("*.sbatch"))
    assert set(scripts) <= set(later) and len(later) - len(scripts) <= 2, (scripts, later)


#: Branch 1 of the scatter fails.
FAILING_BRANCH = DETACHED_LAB["fan.nix"].replace("sleep 2\n", """sleep 2
              if grep -q '"index": 1' "${inputs.worker__item}"; then exit 5; fi
""")
assert FAILING_BRANCH != DETACHED_LAB["fan.nix"]


def test_failed_branch_of_a_detached_build_cancels_its_downstream(slurm, make_lab) -> None:
    require_nix()
    folder = make_lab({**DETACHED_LAB, "fan.nix": FAILING_BRANCH})
    store = folder / ".repx"
    first = build_json(folder, "--scheduler", "slurm", "--no-wait")
    assert len(first["submitted"]) == 2
    deadline = time.monotonic() + 300  # the cluster is shared: others' arrays
    while queued_repx_jobs(store):
        assert time.monotonic() < deadline, "SLURM never cancelled what waits for the gather"
        time.sleep(0.5)
    reconcile(folder, store, 6)
    by_stage: dict[str, list[str]] = {}
    for record in Store(store, readonly=True).records():
        by_stage.setdefault(record.stage, []).append(record.status.value)
    assert by_stage["fan/scatter"] == ["succeeded"]
    assert sorted(by_stage["fan/worker"]) == ["failed", "succeeded", "succeeded"]
    # SLURM cancelled the gather, the anchor and the downstream job (dependency never
    # satisfied); nothing downstream of the failed branch ran.
    assert by_stage["fan"] == ["cancelled"] and by_stage["report"] == ["cancelled"], by_stage


def test_cancel_stops_what_the_nodes_submitted(slurm, make_lab) -> None:
    """``repx cancel`` after a detached build also cancels the branches, gather and anchor a
    compute node submitted (they are in no record yet, only in the scatter-gather job's
    ``detached.json`` and ``anchor``): nothing of the store is left on SLURM."""
    require_nix()
    slow = {**DETACHED_LAB, "fan.nix": DETACHED_LAB["fan.nix"].replace("sleep 2", "sleep 120")}
    folder = make_lab(slow)
    store = folder / ".repx"
    build_json(folder, "--scheduler", "slurm", "--no-wait")
    graph = {j["pname"]: j for j in json.loads(
        repx("list", "jobs", "--json", "--lab", "result", cwd=folder).stdout)}
    fan, report = graph["fan"]["id"], graph["report"]["id"]
    submitted_file = store / "outputs" / fan / "repx" / SUBMITTED_FILE
    deadline = time.monotonic() + 300  # the cluster is shared: others' arrays
    while not submitted_file.exists():
        assert time.monotonic() < deadline, "the scatter never submitted its branches"
        time.sleep(0.2)
    units = json.loads(submitted_file.read_text())["units"]
    assert len(units) == 4  # 3 branches + gather
    repx("cancel", "--store", str(store), cwd=folder)
    deadline = time.monotonic() + 60
    while queued_repx_jobs(store):
        assert time.monotonic() < deadline, f"still on SLURM: {queued_repx_jobs(store)}"
        time.sleep(0.5)
    jobs = accounted_jobs({u.split("_")[0] for u in units.values()})
    assert set(jobs.values()) == {"CANCELLED"}, jobs
    assert not (store / "outputs" / report / "out" / "report.txt").exists()
