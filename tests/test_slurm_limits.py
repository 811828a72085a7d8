"""Site limits and packing on the real test cluster (tests/slurm/cluster.sh).

What is pinned:

* a stage wider than the cluster's MaxArraySize is split into arrays no wider than it,
  every job succeeds, and a second build submits nothing; a downstream stage is split
  alike, each chunk waiting (``aftercorr``) for its upstream chunk;
* under a MaxSubmitJobs limit (set with sacctmgr on the test user's ``repx`` association,
  restored afterwards) the build submits in waves: squeue never holds more than the limit,
  and every job succeeds; with ``--no-wait`` it submits what fits and says what is left;
* ``--pack K`` runs K jobs per array task: 2 000 jobs in at most 40 tasks (sacct), each
  job with its own record and logs; a failing job fails alone, and one that fails once
  succeeds on its retry;
* the pure parts (limits parsing, packed ids and their states) without SLURM.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from repx.engine.slurm.arrays import (
    collapse_to_arrays,
    compress_task_ids,
    corresponding_arrays,
    packed_id,
    task_of,
)
from repx.engine.slurm.cli import SiteLimits, packed_job_state
from repx.engine.slurm.resources import packed_resources
from repx.engine.slurm.scheduler import account_of, wrapper_script
from repx.store import Status, Store
from tests.conftest import REPO, require_nix
from tests.slurm_cluster import QUEUE_AHEAD, accounted_jobs, cli, slurm_cluster_fixture

slurm = slurm_cluster_fixture()

pytestmark = [pytest.mark.slurm, pytest.mark.nix]

#: The account whose association the MaxSubmitJobs test limits (tests/slurm/cluster.sh
#: gives root an association with it, so other root jobs on the shared cluster are not
#: throttled).
LIMITED_ACCOUNT = "repx"

RUN = """
    { pkgs, repx-lib, ... }:
    { name = "main"; pipelines = [ ./pipe.nix ]; params = { i = builtins.genList (x: x) N; }; }
"""

PIPE = """
    { repx, pkgs, ... }:
    repx.mkPipe rec { work = repx.callStage ./stage.nix [ ]; }
"""

#: One line per job: its own value in its output and its stdout. Jobs 7 (always) and 8, 9
#: (on their first attempt only: a marker beside the job folder's out/) fail.
STAGE = """
    { pkgs }:
    {
      pname = "work"; version = "1";
      params = { i = 0; };
      outputs = { value = "$out/value.txt"; };
      runDependencies = [ pkgs.coreutils ];
      run = { outputs, params, ... }: ''
        i=${toString params.i}
        SLEEP
        if [ "$i" = FAILING ]; then echo "job $i fails" >&2; exit 3; fi
        marker="$(dirname "$(dirname "${outputs.value}")")/attempted"
        if [ "$i" = FLAKY_A ] || [ "$i" = FLAKY_B ]; then
          if [ ! -e "$marker" ]; then touch "$marker"; echo "first try of $i" >&2; exit 4; fi
        fi
        echo "value $i"
        echo "$i" > "${outputs.value}"
      '';
    }
"""


def sweep_lab(make_lab, n: int, *, sleep: str = "", failing: int = -1,
              flaky: tuple[int, int] = (-1, -1), account: str | None = None) -> Path:
    """A one-stage lab sweeping ``i`` over ``n`` values; its jobs go ahead of the shared
    queue (``--nice``, as the cluster's own tests do) and, with ``account``, are charged
    to it (resources.toml)."""
    stage = (STAGE.replace("SLEEP", sleep or ":").replace("FAILING", str(failing))
             .replace("FLAKY_A", str(flaky[0])).replace("FLAKY_B", str(flaky[1])))
    options = [*QUEUE_AHEAD, *([f"--account={account}"] if account else [])]
    files = {"run.nix": RUN.replace("N", str(n)), "pipe.nix": PIPE, "stage.nix": stage}
    if options:
        files["resources.toml"] = f"[defaults]\nsbatch_opts = {json.dumps(options)}\n"
    return make_lab(files)


def repx(*args: str, cwd: Path, check: bool = True,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "repx.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if check and proc.returncode != 0:
        raise AssertionError(f"repx {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def build_json(folder: Path, *args: str, check: bool = True) -> dict:
    proc = repx("build", "--store", str(folder / ".repx"), "--scheduler", "slurm", "--json",
                "-q", *args, cwd=folder, check=check)
    return json.loads(proc.stdout)


def sbatch_scripts(store: Path) -> list[Path]:
    return sorted((store / "slurm").glob("*.sbatch"))


def cluster_config(key: str) -> str:
    out = cli("scontrol", "show", "config").stdout
    for line in out.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == key:
            return value.strip()
    raise AssertionError(f"scontrol show config has no {key}")


# ------------------------------------------------------------------ MaxArraySize: split


def test_stage_wider_than_max_array_size_is_split(slurm, make_lab) -> None:
    """5 000 jobs, 4 per task (1 250 tasks: the run of 5 000 one-job tasks takes the
    shared 2-core cluster minutes): split into arrays of at most MaxArraySize tasks."""
    require_nix()
    limit = int(cluster_config("MaxArraySize"))
    jobs, pack = 5000, 4
    tasks = math.ceil(jobs / pack)
    assert limit < tasks, f"MaxArraySize is {limit}: the test needs fewer than {tasks}"
    folder = sweep_lab(make_lab, jobs)
    store = folder / ".repx"
    done = build_json(folder, "--pack", str(pack), "--poll", "0.5")
    assert done["failed"] == [] and len(done["executed"]) == jobs, done["failures"][:3]
    scripts = sbatch_scripts(store)
    assert len(scripts) == math.ceil(tasks / limit), "one sbatch per MaxArraySize chunk"
    rows = sorted(len(s.with_suffix(".tsv").read_text().splitlines()) for s in scripts)
    assert sum(rows) == jobs and max(rows) <= limit * pack, rows
    records = list(Store(store, readonly=True).records())
    assert {r.status for r in records} == {Status.SUCCEEDED} and len(records) == jobs
    task_ids = {task_of(r.slurm_id or "") for r in records}
    assert len(task_ids) == tasks
    assert max(int(t.split("_")[1]) for t in task_ids) < limit, "an index over the limit"
    again = build_json(folder)
    assert again["executed"] == [] and len(again["up_to_date"]) == jobs
    assert sbatch_scripts(store) == scripts, "the second build submitted again"


CHAIN_PIPE = """
    { repx, pkgs, ... }:
    repx.mkPipe rec {
      work = repx.callStage ./stage.nix [ ];
      after = repx.callStage ./after.nix [ work ];
    }
"""

AFTER = """
    { pkgs }:
    {
      pname = "after"; version = "1";
      inputs = { value = ""; };
      outputs = { copy = "$out/copy.txt"; };
      runDependencies = [ pkgs.coreutils ];
      run = { inputs, outputs, ... }: ''
        cat "${inputs.value}" > "${outputs.copy}"
      '';
    }
"""


def test_split_chain_keeps_aftercorr_per_chunk(slurm, make_lab) -> None:
    """Chunk k of the downstream stage waits (aftercorr) for chunk k of the upstream one,
    with the same task indices, so job i still waits for its own upstream job only."""
    require_nix()
    limit = int(cluster_config("MaxArraySize"))
    width = limit + 5
    folder = sweep_lab(make_lab, width, sleep="sleep 60")
    write = {"pipe.nix": CHAIN_PIPE, "after.nix": AFTER}
    for name, text in write.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    store = folder / ".repx"
    try:
        first = build_json(folder, "--no-wait")
        assert len(first["submitted"]) == 2 * width
        records = {r.job_id: r for r in Store(store, readonly=True).records()}
        graph = json.loads(repx("list", "jobs", "--json", "--lab", "result",
                                cwd=folder).stdout)
        deps = array_dependencies({task_of(r.slurm_id or "").split("_")[0]
                                   for r in records.values()})
        checked = 0
        for job in graph:
            if job["pname"] != "after":
                continue
            mine = records[job["id"]].slurm_id or ""
            upstream = records[job["depends_on"][0]].slurm_id or ""
            array, _, index = mine.partition("_")
            up_array, _, up_index = upstream.partition("_")
            assert index == up_index, (mine, upstream)
            assert deps[array] in (f"aftercorr:{up_array}", f"aftercorr:{up_array}_*"), deps[array]
            checked += 1
        assert checked == width
        assert len({r.slurm_id.split("_")[0] for r in records.values() if r.slurm_id}) == 4
    finally:
        repx("cancel", "--store", str(store), cwd=folder, check=False)


def array_dependencies(arrays: set[str]) -> dict[str, str]:
    """``{array id: its dependency}`` as squeue shows it (``aftercorr:123``), state suffix
    such as ``(unfulfilled)`` removed."""
    out = cli("squeue", "-h", "-j", ",".join(sorted(arrays)), "-o", "%F|%E").stdout
    found = {}
    for line in out.splitlines():
        array, _, dependency = line.partition("|")
        found[array.strip()] = dependency.strip().split("(")[0]
    return found


# ---------------------------------------------------------------- MaxSubmitJobs: waves


def set_max_submit(value: int) -> None:
    """MaxSubmitJobs of root's association with the test account (-1: none)."""
    proc = cli("sacctmgr", "-i", "modify", "user", "where", "name=root",
               f"account={LIMITED_ACCOUNT}", "set", f"MaxSubmitJobs={value}")
    assert proc.returncode == 0, proc.stderr


def queued_in_account() -> int:
    out = cli("squeue", "-h", "-r", "-u", "root", "-A", LIMITED_ACCOUNT, "-o", "%i",
              "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING").stdout
    return sum(1 for line in out.splitlines() if line.strip())


def test_max_submit_jobs_waves_never_exceed_the_limit(slurm, make_lab) -> None:
    require_nix()
    enforce = cluster_config("AccountingStorageEnforce")
    assert "limits" in enforce, (
        f"AccountingStorageEnforce = {enforce}: SLURM would not enforce MaxSubmitJobs "
        "(tests/slurm/cluster.sh sets associations,limits)")
    limit, jobs = 500, 800
    folder = sweep_lab(make_lab, jobs, account=LIMITED_ACCOUNT)
    assert queued_in_account() == 0, "jobs of another run are queued in the test account"
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], queued_in_account())
            stop.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    set_max_submit(limit)
    try:
        watcher.start()
        started = time.monotonic()
        proc = repx("build", "--store", str(folder / ".repx"), "--scheduler", "slurm",
                    "--poll", "0.5", "--keep-going", cwd=folder, check=False)
        seconds = time.monotonic() - started
    finally:
        stop.set()
        watcher.join()
        set_max_submit(-1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 0 < peak[0] <= limit, f"up to {peak[0]} jobs queued under MaxSubmitJobs {limit}"
    assert f"(MaxSubmitJobs {limit})" in proc.stderr, proc.stderr[-2000:]
    records = Store(folder / ".repx", readonly=True).records()
    assert sorted({r.status for r in records}) == [Status.SUCCEEDED]
    assert len(list(Store(folder / ".repx", readonly=True).records())) == jobs
    print(f"{jobs} jobs under MaxSubmitJobs {limit}: {seconds:.1f} s, peak queued {peak[0]}")


def test_no_wait_submits_what_fits_and_says_what_is_left(slurm, make_lab) -> None:
    require_nix()
    limit, jobs = 30, 50
    folder = sweep_lab(make_lab, jobs, sleep="sleep 30", account=LIMITED_ACCOUNT)
    store = folder / ".repx"
    assert queued_in_account() == 0, "jobs of another run are queued in the test account"
    set_max_submit(limit)
    try:
        proc = repx("build", "--store", str(store), "--scheduler", "slurm", "--no-wait",
                    "--json", cwd=folder, check=False)
        summary = json.loads(proc.stdout)
        assert len(summary["submitted"]) == limit, proc.stderr
        assert queued_in_account() == limit
        left = jobs - limit
        assert f"{left} jobs not submitted (MaxSubmitJobs {limit} reached)" in proc.stderr
        assert len(summary["not_started"]) == left
    finally:
        set_max_submit(-1)
        repx("cancel", "--store", str(store), cwd=folder, check=False)


# ----------------------------------------------------------------------------- packing


def test_packed_jobs_keep_their_own_records_logs_and_outcomes(slurm, make_lab) -> None:
    require_nix()
    jobs, pack = 2000, 50
    folder = sweep_lab(make_lab, jobs, sleep="sleep 0.1", failing=7, flaky=(8, 9))
    store = folder / ".repx"
    result = build_json(folder, "--pack", str(pack), "--keep-going", "--retries", "1",
                        "--retry-failed", "--poll", "0.5", check=False)
    graph = json.loads(repx("list", "jobs", "--json", "--lab", "result", cwd=folder).stdout)
    value_of = {job["id"]: job["params"]["i"] for job in graph}
    failed = [value_of[j] for j in result["failed"]]
    assert failed == [7], result["failures"]
    assert [f["reason"].split(" (")[0] for f in result["failures"]] == ["exit code 3"]
    assert len(result["executed"]) == jobs - 1 and result["blocked"] == []
    records = {r.job_id: r for r in Store(store, readonly=True).records()}
    assert len(records) == jobs
    first_tasks = {task_of(r.attempts[0]["slurm_id"]) if r.attempts else task_of(r.slurm_id)
                   for r in records.values()}
    assert len(first_tasks) <= jobs // pack, f"{len(first_tasks)} array tasks"
    tasks = list(accounted_jobs({task_of(r.slurm_id or "").split("_")[0]
                                  for r in records.values()}))
    retry_tasks = {task_of(r.slurm_id or "") for r in records.values()} - first_tasks
    assert len(tasks) <= jobs // pack + len(retry_tasks), f"sacct lists {len(tasks)} tasks"
    for job_id, record in records.items():
        i = value_of[job_id]
        stdout = Path(record.stdout_log).read_text()
        if i == 7:
            assert "job 7 fails" in Path(record.stderr_log).read_text()
            continue
        assert stdout.strip() == f"value {i}", (job_id, stdout)
        assert record.status is Status.SUCCEEDED
    flaky = [r for j, r in records.items() if value_of[j] in (8, 9)]
    assert all(len(r.attempts) == 2 for r in flaky), [r.attempts for r in flaky]


# -------------------------------------------------------------------- without SLURM


def test_packed_ids_name_their_task() -> None:
    """A packed job's id names its task and place; SLURM is only told about the task."""
    job = packed_id("123_4", 2)
    assert job == "123_4#2" and task_of(job) == "123_4" and task_of("123_4") == "123_4"
    assert compress_task_ids(["123_4#0", "123_4#1", "123_5#0", "9#1"]) == ["9",
                                                                          "123_[4-5]"]
    assert collapse_to_arrays(["123_4#0"]) == ["123_4"]
    assert collapse_to_arrays(["123_4#0", "123_5#1"]) == ["123"]


def test_corresponding_arrays_per_upstream_chunk() -> None:
    """Members waiting for tasks of two upstream chunks: one aftercorr array per chunk,
    same indices (and places in packed tasks)."""
    members = [("a", ["10_0"], []), ("b", ["10_1"], []), ("c", ["11_0"], [])]
    assert corresponding_arrays(members) == {"10": {(0, None): "a", (1, None): "b"},
                                             "11": {(0, None): "c"}}
    packed = [("a", ["10_0#0"], []), ("b", ["10_0#1"], [])]
    assert corresponding_arrays(packed) == {"10": {(0, 0): "a", (0, 1): "b"}}
    assert corresponding_arrays([("a", ["10_0"], []), ("b", ["10_0"], [])]) is None
    assert corresponding_arrays([("a", ["10_0"], ["9"]), ("b", ["10_1"], [])]) is None


def test_packed_job_state_from_its_exit_code() -> None:
    """A packed job's outcome is its own exit code; without one it shares its task's."""
    assert packed_job_state(("RUNNING", ""), 0) == ("COMPLETED", "")
    assert packed_job_state(("COMPLETED", ""), 3) == ("FAILED", "")
    assert packed_job_state(("PENDING", "Priority"), None) == ("PENDING", "Priority")
    assert packed_job_state(("TIMEOUT", ""), None) == ("TIMEOUT", "")
    assert packed_job_state(None, None) is None
    state, reason = packed_job_state(("COMPLETED", ""), None) or ("", "")
    assert state == "CANCELLED" and "Dependency" in reason  # skipped: upstream failed


def test_submit_limit_and_account() -> None:
    """The tighter of MaxSubmitJobs and MaxJobCount bounds a wave; accounts come from the
    sbatch options."""
    assert SiteLimits().submit_limit() is None
    assert SiteLimits(max_job_count=100000, max_submit_jobs=500).submit_limit() == (
        500, "MaxSubmitJobs")
    assert SiteLimits(max_job_count=10000).submit_limit() == (10000, "MaxJobCount")
    assert account_of(["--mem=1G", "--account=repx"]) == "repx"
    assert account_of(["-A lab"]) == "lab" and account_of(["-Alab"]) == "lab"
    assert account_of(["--partition=debug"]) is None


def test_packed_time_and_wrapper_rows() -> None:
    """A packed task asks for K times the time; its script runs K rows, each in a subshell,
    and exits 0 (its jobs' outcomes are their exit codes)."""
    assert packed_resources({"time": "00:10:00", "mem": "1G"}, 3) == {"time": 1800,
                                                                      "mem": "1G"}
    assert packed_resources({"mem": "1G"}, 3) == {"mem": "1G"}
    script = wrapper_script("#SBATCH --x", "/t.tsv", "/out", pack=4)
    assert "pack=4" in script and 'sed -n "${first_row},$((first_row + pack - 1))p"' in script
    assert "if (( pack > 1 )); then exit 0; fi" in script
    assert "superseded-$this_task ]] && continue" in script  # taken off this task
    assert script.count("# -- one row") == 1 and "# -- end of one row" in script


def test_packed_wrapper_runs_each_row_alone(tmp_path: Path) -> None:
    """The packed wrapper itself, run by bash as SLURM would run task 0: a failing row
    does not stop the next, each row gets its own logs and exit code, a row whose upstream
    failed and a row taken off the task are skipped, and the task exits 0."""
    outputs = tmp_path / "outputs"
    job = tmp_path / "job.sh"
    job.write_text('#!/bin/bash\necho "out of $(basename "$(dirname "$1")")"\n'
                   '[[ $1 != *bad* ]]\n')
    job.chmod(0o755)
    (outputs / "up-1" / "repx").mkdir(parents=True)
    (outputs / "up-1" / "repx" / "exit_code").write_text("3\n")
    (outputs / "gone-1" / "repx").mkdir(parents=True)
    (outputs / "gone-1" / "repx" / "superseded-77_0").touch()
    rows = [["ok-1", str(job), "{}", "{}"], ["bad-1", str(job), "{}", "{}"],
            ["down-1", str(job), "{}", "{}", "-", "-", "-", "up-1"],
            ["gone-1", str(job), "{}", "{}"]]
    table = tmp_path / "t.tsv"
    table.write_text("".join("\t".join(r) + "\n" for r in rows))
    script = tmp_path / "task.sh"
    script.write_text(wrapper_script("", str(table), str(outputs), pack=4))
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env={**os.environ, "SLURM_ARRAY_TASK_ID": "0",
                               "SLURM_ARRAY_JOB_ID": "77"}, timeout=60)
    assert proc.returncode == 0, proc.stderr

    def code(job_id: str) -> str | None:
        path = outputs / job_id / "repx" / "exit_code"
        return path.read_text().strip() if path.exists() else None

    assert (code("ok-1"), code("bad-1"), code("down-1"), code("gone-1")) == ("0", "1",
                                                                             None, None)
    assert (outputs / "ok-1" / "repx" / "stdout.log").read_text() == "out of ok-1\n"
