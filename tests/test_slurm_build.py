"""`repx build --scheduler slurm` on the real shared cluster (tests/slurm/cluster.sh).

What is pinned: the examples give the same job ids and outputs as the local scheduler; a
second build submits nothing; a job over its time limit is recorded as TIMEOUT and its
downstream never runs; a second build while the first's jobs are queued submits nothing
new and adopts them; `repx cancel` leaves nothing queued; a wide sweep is submitted as one
array per stage.

The cluster is shared and the machine loaded, so nothing here relies on a job still being
queued or running after some delay: a job that must be seen so either waits for a gate file
the test creates (:func:`slow_lab`) or is submitted held, and every wait is on a condition
with a generous deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from repx.engine.slurm.resources import ResourceRules, sbatch_directives
from repx.errors import UsageError
from repx.store import Status, Store
from tests.conftest import EXAMPLES, REPO, require_nix, write_files
from tests.slurm_cluster import slurm_cluster_fixture

slurm = slurm_cluster_fixture()

pytestmark = [pytest.mark.slurm, pytest.mark.nix]


def repx(*args: str, cwd: Path, check: bool = True,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "repx.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if check and proc.returncode not in (0,):
        raise AssertionError(f"repx {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def build_json(folder: Path, *args: str, check: bool = True) -> dict:
    proc = repx("build", "--store", str(folder / ".repx"), "--json", "-q", *args, cwd=folder,
                check=check)
    return json.loads(proc.stdout)


def outputs_digest(store: Path) -> dict[str, str]:
    """Every output file under the store, by path relative to outputs/, with its md5."""
    found = {}
    for path in sorted((store / "outputs").glob("*/out/**/*")):
        if path.is_file():
            found[str(path.relative_to(store / "outputs"))] = \
                hashlib.md5(path.read_bytes()).hexdigest()
    return found


def sbatch_scripts(store: Path) -> int:
    folder = store / "slurm"
    return len(list(folder.glob("*.sbatch"))) if folder.is_dir() else 0


def copy_example(name: str, dest: Path) -> Path:
    folder = dest / name
    shutil.copytree(EXAMPLES / name, folder, ignore=shutil.ignore_patterns("result", ".repx"))
    return folder


@pytest.mark.parametrize("example", ["simple", "scatter-gather", "inter-run", "param-sweep",
                                     "zip-sweep", "dirs-files"])
def test_example_matches_local_and_second_build_submits_nothing(
        slurm, example: str, tmp_path: Path) -> None:
    require_nix()
    on_slurm = copy_example(example, tmp_path / "slurm")
    local = copy_example(example, tmp_path / "local")
    done = build_json(on_slurm, "--scheduler", "slurm", "--poll", "0.3")
    assert done["failed"] == [] and done["blocked"] == [], done["failures"]
    here = build_json(local)
    assert sorted(done["executed"]) == sorted(here["executed"])  # same identities
    assert outputs_digest(on_slurm / ".repx") == outputs_digest(local / ".repx")
    records = Store(on_slurm / ".repx", readonly=True).get_many(done["executed"])
    assert all(r.status is Status.SUCCEEDED and r.slurm_id for r in records.values())
    if example == "param-sweep":  # a stage's array tasks spread over the cluster's nodes
        nodes = {a["node"] for r in records.values() for a in r.attempts}
        assert len(nodes) >= 2, nodes
    scripts = sbatch_scripts(on_slurm / ".repx")
    again = build_json(on_slurm, "--scheduler", "slurm")
    assert again["executed"] == [] and sorted(again["up_to_date"]) == sorted(done["executed"])
    assert sbatch_scripts(on_slurm / ".repx") == scripts


SLOW_LAB = {
    "run.nix": """
        { pkgs, repx-lib, ... }:
        { name = "main"; pipelines = [ ./pipe.nix ]; params = { n = [ 1 2 3 ]; }; }
    """,
    "pipe.nix": """
        { repx, pkgs, ... }:
        repx.mkPipe rec {
          slow = repx.callStage ./slow.nix [ ];
          after = repx.callStage ./after.nix [ slow ];
        }
    """,
    "slow.nix": """
        { pkgs }:
        {
          pname = "slow"; version = "1";
          params = { n = 0; seconds = SECONDS; };
          outputs = { out = "$out/out.txt"; };
          resources = { time = "00:05:00"; };
          runDependencies = [ pkgs.coreutils ];
          run = { outputs, params, ... }: ''
            GATE
            sleep "${toString params.seconds}"
            echo "${toString params.n}" > "${outputs.out}"
          '';
        }
    """,
    "after.nix": """
        { pkgs }:
        {
          pname = "after"; version = "1";
          inputs = { out = ""; };
          outputs = { done = "$out/done.txt"; };
          runDependencies = [ pkgs.coreutils ];
          run = { inputs, outputs, ... }: ''
            cat "${inputs.out}" > "${outputs.done}"
          '';
        }
    """,
}


def slow_lab(make_lab, seconds: int, gate: Path | None = None) -> Path:
    """SLOW_LAB whose ``slow`` jobs sleep ``seconds``; with a ``gate``, each first waits
    until that file exists, so it stays queued or running until the test releases it (a
    fixed sleep may end before a loaded machine gets to look)."""
    wait = f'while [ ! -e "{gate}" ]; do sleep 0.5; done' if gate else ""
    files = {k: v.replace("SECONDS", str(seconds)).replace("GATE", wait)
             for k, v in SLOW_LAB.items()}
    return make_lab(files)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 180,
             every: float = 0.3) -> Any:
    """Poll ``condition()`` until it returns something truthy (returned), else fail
    naming ``what`` after ``timeout`` seconds (generous: the machine is shared and loaded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (waited {timeout:.0f} s; last saw {value!r})")
        time.sleep(every)


def active_tasks(store: Path) -> list[str]:
    """SLURM ids of the store's records still queued or running on SLURM."""
    records = Store(store, readonly=True).records()
    ids = [r.slurm_id for r in records if r.status in (Status.QUEUED, Status.RUNNING)]
    if not ids:
        return []
    out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join({i.split("_")[0] for i in ids
                                                              if i}), "-o", "%i %T"],
                         capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split()[1] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")]


def cancel_leftovers(store: Path) -> None:
    """scancel whatever of the store's jobs a failing test left on the shared cluster (a
    gated job would otherwise hold its CPU until its time limit)."""
    if (store / "db").exists():
        left = active_tasks(store)
        if left:
            subprocess.run(["scancel", *left], capture_output=True, check=False)


def test_second_build_while_queued_submits_nothing_and_adopts(slurm, make_lab,
                                                            tmp_path: Path) -> None:
    require_nix()
    gate = tmp_path / "release-slow-jobs"
    folder = slow_lab(make_lab, 0, gate=gate)
    store = folder / ".repx"
    first = build_json(folder, "--scheduler", "slurm", "--no-wait")
    try:
        assert len(first["submitted"]) == 6 and first["executed"] == []
        scripts = sbatch_scripts(store)
        assert scripts == 2  # one array per stage
        second = build_json(folder, "--scheduler", "slurm", "--no-wait")
        assert second["executed"] == [] and \
            sorted(second["submitted"]) == sorted(first["submitted"])
        assert sbatch_scripts(store) == scripts, "the second build submitted again"
    finally:
        gate.touch()  # only now may the slow jobs end: both builds above saw them on SLURM
    watched = build_json(folder, "--scheduler", "slurm", "--poll", "0.3")
    assert sorted(watched["executed"]) == sorted(first["submitted"])
    assert sbatch_scripts(store) == scripts
    done = {r.job_id: r for r in Store(store, readonly=True).records()}
    assert sorted(r.status.value for r in done.values()) == ["succeeded"] * 6
    # afterok (here aftercorr) ordering: each `after` task started once its own `slow`
    # task had ended, as SLURM's accounting saw it.
    times = slurm_times([r.slurm_id or "" for r in done.values()])
    graph = json.loads(repx("list", "jobs", "--json", "--lab", "result", cwd=folder).stdout)
    for job in graph:
        if job["pname"] == "after":
            upstream = done[job["depends_on"][0]].slurm_id
            assert times[done[job["id"]].slurm_id][0] >= times[upstream][1]


def slurm_times(tasks: list[str]) -> dict[str, tuple[str, str]]:
    """``{task: (start, end)}`` from sacct (ISO times sort as text), waiting for its lag."""
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j",
                              ",".join({t.split("_")[0] for t in tasks}),
                              "-o", "JobID,Start,End"], capture_output=True, text=True).stdout
        found = {}
        for line in out.splitlines():
            task, start, end = line.split("|")
            found[task] = (start, end)
        if all(t in found and found[t][1] not in ("", "Unknown") for t in tasks):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"sacct does not know all of {tasks}: {found}")
        time.sleep(0.5)


SG_LAB = {
    "pipe.nix": """
        { repx, pkgs, ... }:
        repx.mkPipe rec { fan = repx.callStage ./fan.nix [ ]; }
    """,
    "run.nix": """
        { pkgs, repx-lib, ... }:
        { name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }
    """,
    "fan.nix": """
        { pkgs }:
        {
          pname = "fan"; version = "1";
          scatter = {
            outputs = { work__items = "$out/items.json"; worker__arg = { index = 0; }; };
            runDependencies = [ pkgs.coreutils ];
            run = { outputs, ... }: ''
              items='[{"index": 0}, {"index": 1}, {"index": 2}, {"index": 3}]'
              echo "$items" > "${outputs.work__items}"
            '';
          };
          worker = {
            inputs = { worker__item = ""; };
            outputs = { part = "$out/part.txt"; };
            runDependencies = [ pkgs.coreutils pkgs.gnugrep ];
            run = { inputs, outputs, ... }: ''
              if grep -q '"index": *2' "${inputs.worker__item}"; then
                echo "branch 2 fails" >&2
                exit 3
              fi
              sleep 60
              echo finished > "${outputs.part}"
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
}


def test_failed_branch_cancels_the_rest_of_its_stage(slurm, make_lab) -> None:
    require_nix()
    folder = make_lab(SG_LAB)
    store = folder / ".repx"
    started = time.monotonic()
    result = build_json(folder, "--scheduler", "slurm", "--keep-going", "--poll", "0.3",
                        check=False)
    assert time.monotonic() - started < 50, "the other branches were not cancelled"
    assert result["failed"] and result["executed"] == []
    failures = {f["label"]: f["reason"] for f in result["failures"]}
    assert failures == {"fan/worker[2]": "exit code 3"}
    records = Store(store, readonly=True).records()
    by_stage: dict[str, list[str]] = {}
    for record in records:
        by_stage.setdefault(record.stage, []).append(record.status.value)
    assert by_stage["fan/scatter"] == ["succeeded"]
    assert sorted(by_stage["fan/worker"]) == ["cancelled", "cancelled", "cancelled", "failed"]
    assert by_stage["fan"] == ["cancelled"]
    assert active_tasks(store) == []


def test_cancel_leaves_nothing_queued(slurm, make_lab, tmp_path: Path) -> None:
    require_nix()
    folder = slow_lab(make_lab, 0, gate=tmp_path / "never-created")  # ends by cancel only
    store = folder / ".repx"
    try:
        build_json(folder, "--scheduler", "slurm", "--no-wait")
        assert len(active_tasks(store)) == 6
        out = repx("cancel", "--store", str(store), cwd=folder).stdout
        assert "6 SLURM jobs cancelled" in out
        wait_for(lambda: active_tasks(store) == [], "cancelled jobs still on SLURM",
                 timeout=120)
    finally:
        cancel_leftovers(store)
    records = Store(store, readonly=True).records()
    assert {r.status for r in records} == {Status.CANCELLED}


def test_timeout_is_recorded_and_downstream_never_runs(slurm, make_lab) -> None:
    require_nix()
    folder = slow_lab(make_lab, 300)
    store = folder / ".repx"
    proc = subprocess.Popen(
        [sys.executable, "-m", "repx.cli", "build", "--scheduler", "slurm", "--store",
         str(store), "--json", "-q", "--keep-going", "--poll", "0.3"], cwd=folder,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        # Once the slow tasks run, lower their limit so SLURM's next check (every 30 s)
        # kills them as TIMEOUT, instead of waiting out a real minute-long limit.
        def running_tasks() -> list[str]:
            if not store.joinpath("db", "data.mdb").exists():
                return []
            recs = Store(store, readonly=True).records()
            found = [r.slurm_id for r in recs if r.status is Status.RUNNING and r.slurm_id]
            return found if len(found) == 3 else []

        running = wait_for(running_tasks, "the 3 slow jobs never all ran", every=0.5)
        for task in running:
            subprocess.run(["scontrol", "update", f"JobId={task}", "TimeLimit=0"], check=True,
                           capture_output=True)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        cancel_leftovers(store)
    assert proc.returncode == 1, err
    result = json.loads(out)
    assert len(result["failed"]) == 3
    assert all(f["reason"] == "TIMEOUT" for f in result["failures"]), result["failures"]
    records = Store(store, readonly=True).get_many(result["failed"])
    assert all(r.status is Status.FAILED and r.reason == "TIMEOUT" for r in records.values())
    assert not list(store.glob("outputs/*-after-1/out/done.txt")), "downstream ran"
    # SLURM's own log of the task is the only trace of why it was killed: each failed
    # job's record points its stderr log at its copy beside the job's logs.
    for record in records.values():
        log = Path(record.stderr_log)
        assert log.name == f"slurm-{record.slurm_id}.out", (record.job_id, log)
        assert "DUE TO TIME LIMIT" in log.read_text(), (log, log.read_text())


def test_wide_sweep_is_one_array_per_stage(slurm, make_lab) -> None:
    require_nix()
    files = {k: v.replace("SECONDS", "0").replace("GATE", "") for k, v in SLOW_LAB.items()}
    files["run.nix"] = files["run.nix"].replace("[ 1 2 3 ]", "(builtins.genList (x: x) 500)")
    # Submitted held (through resources.toml, as a site would add any sbatch option): all
    # 1000 tasks stay PENDING for squeue to count, and none takes a CPU of the shared
    # cluster (0-second tasks that ran would be gone before the count).
    files["resources.toml"] = '[defaults]\nsbatch_opts = ["--hold"]\n'
    folder = make_lab(files)
    store = folder / ".repx"
    first = build_json(folder, "--scheduler", "slurm", "--no-wait")
    try:
        assert len(first["submitted"]) == 1000
        assert sbatch_scripts(store) == 2, "expected one sbatch per stage"
        assert len(active_tasks(store)) == 1000
        tables = sorted((store / "slurm").glob("*.tsv"))
        assert sorted(len(t.read_text().splitlines()) for t in tables) == [500, 500]
    finally:
        repx("cancel", "--store", str(store), cwd=folder)


def test_resources_toml_overrides_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "resources.toml"
    write_files(tmp_path, {"resources.toml": """
        [defaults]
        partition = "debug"
        time = "00:10:00"

        [[rules]]
        match = "train-*"
        mem = "8G"
        sbatch_opts = ["--gres=gpu:1"]
    """})
    rules = ResourceRules.load(path)
    train = rules.apply({"mem": "1G", "cpus": 2}, ["train-model", "train", "abc-train-1"])
    assert sbatch_directives(train) == ["--mem=8192M", "--cpus-per-task=2",
                                        "--time=0-00:10:00", "--partition=debug",
                                        "--gres=gpu:1"]
    other = rules.apply({"mem": "1G", "time": "2-00:00:00"}, ["evaluate"])
    assert sbatch_directives(other) == ["--mem=1024M", "--time=2-00:00:00",
                                        "--partition=debug"]
    write_files(tmp_path, {"bad.toml": "[defaults]\nmemory = \"1G\"\n"})
    with pytest.raises(UsageError, match=r"bad.toml: defaults: unknown key 'memory'"):
        ResourceRules.load(tmp_path / "bad.toml")


def test_ctrl_c_cancels_what_the_build_submitted(slurm, make_lab, tmp_path: Path) -> None:
    require_nix()
    folder = slow_lab(make_lab, 0, gate=tmp_path / "never-created")  # ends by cancel only
    store = folder / ".repx"
    proc = subprocess.Popen(
        [sys.executable, "-m", "repx.cli", "build", "--scheduler", "slurm", "--store",
         str(store), "--json", "-q", "--poll", "0.3"], cwd=folder,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_for(lambda: (store / "db").exists() and len(active_tasks(store)) == 6,
                 "the 6 jobs were never all on SLURM")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # it never stopped: this test failed, clean up the cluster
            proc.kill()
            cancel_leftovers(store)
    try:
        assert proc.returncode == 130, err
        result = json.loads(out)
        assert result["interrupted"] is True and len(result["cancelled"]) == 3
        wait_for(lambda: active_tasks(store) == [], "cancelled jobs still on SLURM",
                 timeout=120)
    finally:
        cancel_leftovers(store)
    records = Store(store, readonly=True).records()
    assert {r.status for r in records} == {Status.CANCELLED}
