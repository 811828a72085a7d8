"""``repx status``, ``show``, ``log`` and ``cache``: real labs (real Nix), real LMDB stores.

Until ``repx build`` can fill a store, the tests write the records the executor would:
claim each job, write its ``out/`` and logs, and finish it (see :func:`record_job`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from repx.errors import UsageError
from repx.lab import LabOptions, open_lab
from repx.lab.graph import Job, JobGraph
from repx.report import store_views as ins
from repx.store import JobRecord, Status, Store, StoreError, owner_token, this_host
from tests.conftest import EXAMPLES, REPO, require_nix
from tests.test_examples import REPX, repx

# ------------------------------------------------------------------------------- helpers


@dataclass
class BuiltLab:
    """An example lab copied to a temporary folder and built there."""

    folder: Path
    graph: JobGraph

    @property
    def path(self) -> str:
        return str(self.graph.lab.path)

    def jobs(self, pname: str) -> list[Job]:
        return [j for j in self.graph.jobs.values() if j.pname == pname]


def build_example(name: str, base: Path) -> BuiltLab:
    require_nix()
    folder = base / name
    shutil.copytree(EXAMPLES / name, folder, symlinks=True,
                    ignore=shutil.ignore_patterns("result", "result-*"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(base / "cache"))
        graph = open_lab(LabOptions(lab_file=str(folder / "lab.nix"),
                                    out_link=str(folder / "result")))
    return BuiltLab(folder, graph)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def record_job(store: Store, job_id: str, *, status: Status = Status.SUCCEEDED,
               run: str = "main", stage: str = "stage", lab: str = "",
               files: dict[str, bytes] | None = None, stdout: bytes = b"",
               stderr: bytes = b"", pid: int | None = None, reason: str = "") -> JobRecord:
    """Write what the executor writes for a job: a claim, out/ files, logs, the outcome.

    ``pid`` names the claiming process (default: this one, which is alive); a RUNNING or
    QUEUED job is left claimed by it.
    """
    pid = os.getpid() if pid is None else pid
    owner = owner_token(pid)
    assert store.claim(job_id, owner, host=this_host(), pid=pid, lab=lab, run=run,
                       stage=stage)
    out = store.out_dir(job_id)
    out.mkdir(parents=True, exist_ok=True)
    for rel, data in (files or {}).items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    meta = store.meta_dir(job_id)
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "stdout.log").write_bytes(stdout)
    (meta / "stderr.log").write_bytes(stderr)
    logs = {"stdout_log": str(meta / "stdout.log"), "stderr_log": str(meta / "stderr.log")}
    if status is Status.RUNNING:
        record = store.get(job_id)
        assert record is not None
        return record
    if status is Status.QUEUED:
        return store.update(JobRecord(job_id, Status.QUEUED, owner=owner, slurm_id="4242",
                                      **logs))
    record = JobRecord(job_id, status, exit_code=0 if status is Status.SUCCEEDED else 1,
                       outputs=store.manifest(job_id), owner=owner, reason=reason, **logs)
    store.finish(record)
    result = store.get(job_id)
    assert result is not None
    return result


def record_graph_job(store: Store, graph: JobGraph, job: Job, *, size: int = 100,
                     **kwargs: object) -> JobRecord:
    """Record a job of a lab, writing each declared output with ``size`` bytes."""
    files = {}
    for template in job.outputs.values():
        path = ins.output_path(store, job.id, template)
        assert path is not None
        files[str(path.relative_to(store.out_dir(job.id)))] = b"x" * size
    return record_job(store, job.id, run=job.run, stage=job.pname, lab=str(graph.lab.path),
                      files=files, stdout=f"stdout of {job.id}\n".encode(),
                      stderr=f"stderr of {job.id}\n".encode(), **kwargs)  # type: ignore[arg-type]


def run_repx(*args: str, cwd: Path, code: int = 0) -> tuple[str, str]:
    """Run the CLI; assert its exit code and that no traceback reached the user."""
    result = repx(*args, cwd=cwd, check=False)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout, result.stderr


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> BuiltLab:
    return build_example("param-sweep", tmp_path_factory.mktemp("inspect"))


@pytest.fixture(scope="module")
def sg_lab(tmp_path_factory: pytest.TempPathFactory) -> BuiltLab:
    return build_example("scatter-gather", tmp_path_factory.mktemp("inspect-sg"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / ".repx")
    yield s
    s.close()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """Another live process, to own claims that this one must not take over."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


# -------------------------------------------------------------------------------- status


@pytest.mark.nix
def test_status_counts_every_state_per_run(sweep: BuiltLab, store: Store) -> None:
    g = sweep.graph
    train, evaluate = sweep.jobs("train-model"), sweep.jobs("evaluate")
    record_graph_job(store, g, sweep.jobs("generate")[0])
    for job in train[:4]:
        record_graph_job(store, g, job)
    record_graph_job(store, g, train[4], status=Status.FAILED, reason="exit code 1")
    record_graph_job(store, g, train[5], status=Status.CANCELLED, reason="interrupted")
    record_graph_job(store, g, evaluate[0], status=Status.RUNNING)
    record_graph_job(store, g, evaluate[1], status=Status.QUEUED)
    record_graph_job(store, g, evaluate[2], status=Status.RUNNING, pid=dead_pid())

    data = ins.run_status(g, store)
    expected = {"run": "hyperparam-sweep", "jobs": 13, "succeeded": 5, "failed": 1,
                "cancelled": 1, "running": 1, "queued": 1, "stale": 1, "not_run": 3}
    assert data["runs"] == [expected]
    assert data["total"] == {k: v for k, v in expected.items() if k != "run"}

    out, _ = run_repx("status", "--lab", "result", "--store", str(store.root), "--json",
                      cwd=sweep.folder)
    assert json.loads(out)["runs"] == [expected]
    out, _ = run_repx("status", "hyperparam-sweep", "--lab", "result",
                      "--store", str(store.root), cwd=sweep.folder)
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["RUN", "JOBS", "SUCCEEDED", "FAILED", "RUNNING", "NOT", "RUN"]
    # FAILED counts the cancelled job, RUNNING the queued one, NOT RUN the stale claim.
    assert lines[1] == ["hyperparam-sweep", "13", "5", "2", "2", "4"]
    assert lines[2] == ["total", "13", "5", "2", "2", "4"]
    assert "1 stale claims" in out


@pytest.mark.nix
def test_status_errors_name_the_run_and_the_store(sweep: BuiltLab, store: Store,
                                                  tmp_path: Path) -> None:
    _, err = run_repx("status", "no-such-run", "--lab", "result", "--store", str(store.root),
                      cwd=sweep.folder, code=2)
    assert "unknown run 'no-such-run'" in err and "hyperparam-sweep" in err
    missing = tmp_path / "nowhere"
    for args in (["status", "--lab", "result"], ["cache", "ls"], ["cache", "stats"],
                 ["log", "abc"], ["cache", "rm", "abc"], ["gc"], ["gc", "--dry-run"],
                 ["gc", "roots"], ["gc", "unpin", "x"]):
        _, err = run_repx(*args, "--store", str(missing), cwd=sweep.folder, code=2)
        assert err.strip() == (f"repx: no repx store at {missing}; run `repx build` first "
                               "or pass --store"), args
    assert not missing.exists()  # nothing created by a write command either


# ---------------------------------------------------------------------------------- show


@pytest.mark.nix
def test_show_joins_the_lab_and_the_store(sweep: BuiltLab, store: Store) -> None:
    g = sweep.graph
    gen = sweep.jobs("generate")[0]
    train = next(j for j in sweep.jobs("train-model")
                 if j.params == {"batch_size": 32, "learning_rate": 0.01, "optimizer": "sgd"})
    evaluate = next(j for j in sweep.jobs("evaluate") if j.depends_on == [train.id])
    record_graph_job(store, g, gen, size=1000)
    record_graph_job(store, g, train, size=2048)

    d = ins.job_detail(g, store, train)
    assert d["status"] == "succeeded" and d["in_lab"] is True
    assert d["params"] == train.params
    assert d["param_sources"]["batch_size"] == "default"
    assert d["resources"] == dict(train.resources)
    (name, source), = d["inputs"].items()
    assert source["job"] == gen.id and source["status"] == "succeeded"
    produced = Path(source["path"])
    assert produced.is_file() and produced.stat().st_size == 1000
    assert produced.is_relative_to(store.out_dir(gen.id))
    for out_name, out in d["outputs"].items():
        assert out["template"] == train.outputs[out_name]
        assert out["exists"] and out["size"] == 2048
    assert d["outputs_bytes"] == 2048 * len(train.outputs)
    assert d["record"]["exit_code"] == 0 and d["record"]["duration"] >= 0
    assert d["logs"]["stdout"]["size"] == len(f"stdout of {train.id}\n")
    assert d["depends_on"] == [{"id": gen.id, "status": "succeeded"}]
    assert d["dependents"] == [{"id": evaluate.id, "status": "not run"}]

    out, _ = run_repx("show", train.id[:12], "--lab", "result", "--store", str(store.root),
                      cwd=sweep.folder)
    assert f"job       {train.id}" in out
    assert "status    succeeded, exit code 0" in out
    assert 'optimizer = "sgd"' in out and "batch_size = 32    [default]" in out
    assert f"{name} <- {gen.id} (succeeded)" in out
    assert f"{evaluate.id}  not run" in out
    assert str(store.meta_dir(train.id) / "stderr.log") in out
    js = json.loads(run_repx("show", evaluate.id, "--lab", "result", "--json",
                             "--store", str(store.root), cwd=sweep.folder)[0])
    assert js["status"] == "not run" and js["record"] is None
    assert all(not o["exists"] for o in js["outputs"].values())

    _, err = run_repx("show", "zzzz", "--lab", "result", "--store", str(store.root),
                      cwd=sweep.folder, code=2)
    assert err.strip() == (f"repx: no job of lab {sweep.path} and none in the store at "
                           f"{store.root} has an id starting with 'zzzz'")


@pytest.mark.nix
def test_show_lists_scatter_gather_units_and_finds_them_in_the_store(
        sg_lab: BuiltLab, store: Store, tmp_path: Path) -> None:
    g = sg_lab.graph
    sg = next(j for j in g.jobs.values() if j.pname == "partial-sums")
    assert sg.kind == "scatter-gather"
    lab = sg_lab.path
    scatter = record_job(store, "s" * 32 + "-partial-sums-scatter", run=sg.run,
                         stage="partial-sums/scatter", lab=lab, files={"items.json": b"[1,2]"})
    units = {"scatter": scatter.job_id, "branches": []}
    for i in range(2):
        steps = {}
        for step in ("square", "double"):
            unit_id = f"{i}{step[0]}" + "u" * 30 + f"-partial-sums-{step}"
            status = Status.FAILED if (i, step) == (1, "double") else Status.SUCCEEDED
            record_job(store, unit_id, run=sg.run, stage=f"partial-sums/{step}", lab=lab,
                       status=status, files={"v.txt": b"1"}, stdout=b"unit out\n")
            steps[step] = unit_id
        units["branches"].append({"item": i, "steps": steps})
    store.meta_dir(sg.id).mkdir(parents=True, exist_ok=True)
    (store.meta_dir(sg.id) / "units.json").write_text(json.dumps(units))

    d = ins.job_detail(g, store, sg)
    assert d["units"]["scatter"] == {"id": scatter.job_id, "status": "succeeded"}
    assert [sorted(b["steps"]) for b in d["units"]["branches"]] == [["double", "square"]] * 2
    assert d["units"]["counts"] == {"succeeded": 4, "failed": 1}
    out, _ = run_repx("show", sg.id, "--lab", "result", "--store", str(store.root),
                      cwd=sg_lab.folder)
    assert "units     2 branches; 1 failed, 4 succeeded" in out
    assert f"[1] double 1d{'u' * 30}-partial-sums-double  failed" in out

    # A unit is not a job of the lab: show falls back to what the store knows (no lab at all
    # in an empty folder works too).
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    out, _ = run_repx("show", "0s", "--store", str(store.root), cwd=empty)
    assert f"job       0s{'u' * 30}-partial-sums-square" in out
    assert "(not a job of this lab" in out and "stage partial-sums/square" in out


# ----------------------------------------------------------------------------------- log


def test_log_prints_stdout_or_stderr_by_unique_prefix(store: Store, tmp_path: Path) -> None:
    record_job(store, "aaa1" + "x" * 28 + "-a-1.0", stdout=b"line one\nline two\n",
               stderr=b"warning: \xff binary\n")
    record_job(store, "aaa2" + "x" * 28 + "-a-1.0", stdout=b"other\n")
    out = repx("log", "aaa1", "--store", str(store.root), cwd=tmp_path).stdout
    assert out == "line one\nline two\n"
    raw = subprocess.run([*REPX, "log", "aaa1", "--stderr", "--store", str(store.root)],
                         cwd=tmp_path, capture_output=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert raw.stdout == b"warning: \xff binary\n"  # bytes as the job wrote them
    _, err = run_repx("log", "aaa", "--store", str(store.root), cwd=tmp_path, code=2)
    assert "ambiguous" in err and "aaa1" in err and "aaa2" in err
    _, err = run_repx("log", "bbb", "--store", str(store.root), cwd=tmp_path, code=2)
    assert f"no job in the store at {store.root} has an id starting with 'bbb'" in err
    os.unlink(store.meta_dir("aaa2" + "x" * 28 + "-a-1.0") / "stdout.log")
    _, err = run_repx("log", "aaa2", "--store", str(store.root), cwd=tmp_path, code=2)
    assert "(succeeded) has no stdout log at" in err


def test_log_follow_returns_at_once_for_a_finished_job(store: Store, tmp_path: Path) -> None:
    job_id = "f" * 32 + "-done-1.0"
    record_job(store, job_id, status=Status.FAILED, stdout=b"partial\n", reason="exit code 3")
    chunks: list[bytes] = []
    started = time.monotonic()
    record = ins.follow_log(store, job_id, store.meta_dir(job_id) / "stdout.log", chunks.append)
    assert time.monotonic() - started < 0.1
    assert b"".join(chunks) == b"partial\n"
    assert record is not None and record.status is Status.FAILED
    out, err = run_repx("log", "-f", "fff", "--store", str(store.root), cwd=tmp_path)
    assert out == "partial\n"
    assert f"job {job_id} is failed: exit code 3" in err


def test_log_follow_streams_a_running_job_until_it_ends(store: Store) -> None:
    job_id = "r" * 32 + "-running-1.0"
    record = record_job(store, job_id, status=Status.RUNNING, stdout=b"start\n")
    log = store.meta_dir(job_id) / "stdout.log"
    chunks: list[bytes] = []
    polls: list[float] = []

    def job() -> None:
        for i in range(3):
            time.sleep(0.15)
            with open(log, "ab") as fh:
                fh.write(f"step {i}\n".encode())
        store.finish(JobRecord(job_id, Status.SUCCEEDED, exit_code=0, outputs=[],
                               owner=record.owner))

    worker = threading.Thread(target=job)
    worker.start()

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        time.sleep(seconds)

    final = ins.follow_log(store, job_id, log, chunks.append, sleep=sleep)
    worker.join()
    assert b"".join(chunks) == b"start\nstep 0\nstep 1\nstep 2\n"
    assert final is not None and final.status is Status.SUCCEEDED
    assert polls and set(polls) == {ins.FOLLOW_POLL}
    assert len(polls) >= 2  # it waited while the job ran


def test_log_follow_stops_when_the_owner_is_gone(store: Store) -> None:
    job_id = "d" * 32 + "-dead-1.0"
    record_job(store, job_id, status=Status.RUNNING, pid=dead_pid(), stdout=b"before crash\n")
    chunks: list[bytes] = []
    record = ins.follow_log(store, job_id, store.meta_dir(job_id) / "stdout.log",
                            chunks.append, sleep=lambda s: pytest.fail("must not wait"))
    assert record is not None and record.status is Status.RUNNING
    assert chunks == [b"before crash\n"]


# --------------------------------------------------------------------------------- cache


def _three_jobs(store: Store) -> list[str]:
    ids = ["a" * 32 + "-gen-1.0", "b" * 32 + "-train-1.0", "c" * 32 + "-train-1.0"]
    record_job(store, ids[0], run="one", stage="gen", files={"d.csv": b"1" * 300})
    record_job(store, ids[1], run="two", stage="train",
               files={"m/model.bin": b"2" * 5000, "log.txt": b"ok"})
    record_job(store, ids[2], run="two", stage="train", status=Status.FAILED,
               files={"partial": b"3" * 7}, reason="exit code 1")
    return ids


def test_cache_ls_lists_and_filters_records(store: Store, tmp_path: Path) -> None:
    ids = _three_jobs(store)
    rows = ins.cache_list(store)
    assert [r["id"] for r in rows] == ids  # oldest first
    assert [r["bytes"] for r in rows] == [300, 5002, 7]
    assert [r["files"] for r in rows] == [1, 2, 1]
    assert [r["id"] for r in ins.cache_list(store, run="two")] == ids[1:]
    assert [r["id"] for r in ins.cache_list(store, statuses=["failed"])] == ids[2:]
    assert [r["id"] for r in ins.cache_list(store, stage="gen")] == ids[:1]
    out, _ = run_repx("cache", "ls", "--status", "succeeded", "--run", "two",
                      "--store", str(store.root), cwd=tmp_path)
    assert ids[1] in out and ids[0] not in out and ids[2] not in out
    assert "1 job, 4.9 KiB of outputs" in out
    js = json.loads(run_repx("cache", "ls", "--json", "--store", str(store.root),
                             cwd=tmp_path)[0])
    assert {r["id"]: r["status"] for r in js} == {ids[0]: "succeeded", ids[1]: "succeeded",
                                                  ids[2]: "failed"}
    _, err = run_repx("cache", "ls", "--status", "bogus", "--store", str(store.root),
                      cwd=tmp_path, code=2)
    assert "bogus" in err


def test_cache_stats_sizes_and_last_build_hit_rate(store: Store, tmp_path: Path) -> None:
    ids = _three_jobs(store)
    (store.root / "outputs" / "orphan-x-1.0").mkdir()
    store.set_meta("last_build", {
        "lab": "/nix/store/abc-repx-lab", "targets": ["two"], "started": 100.0,
        "finished": 160.0, "executed": [ids[0]], "up_to_date": [ids[1], "gone-x-1.0"],
        "failed": [ids[2]], "blocked": ["z-1"], "cancelled": []})
    stats = ins.cache_stats(store)
    assert stats["records"] == 3
    assert stats["by_status"]["succeeded"] == 2 and stats["by_status"]["failed"] == 1
    assert stats["outputs_bytes"] == 5309
    assert stats["by_run"] == {"one": {"records": 1, "bytes": 300},
                               "two": {"records": 2, "bytes": 5009}}
    assert stats["orphan_folders"] == 1
    last = stats["last_build"]
    assert last["hit_rate"] == pytest.approx(2 / 4)
    assert (last["executed"], last["up_to_date"], last["failed"], last["blocked"]) == (1, 2, 1, 1)
    assert last["duration"] == 60.0
    assert last["executed_bytes"] == 300 and last["reused_bytes"] == 5002
    out, _ = run_repx("cache", "stats", "--store", str(store.root), cwd=tmp_path)
    assert "jobs      3 (2 succeeded, 1 failed)" in out
    assert "hit rate   50.0%: 2 up to date" in out
    assert "1 output folders without a record" in out
    js = json.loads(run_repx("cache", "stats", "--json", "--store", str(store.root),
                             cwd=tmp_path)[0])
    assert js["last_build"]["hit_rate"] == 0.5
    # A build writes its up-to-date ids as one newline-joined text: read the same.
    store.set_meta("last_build", {
        "lab": "/nix/store/abc-repx-lab", "executed": [ids[0]],
        "up_to_date": "\n".join([ids[1], "gone-x-1.0"]), "failed": [ids[2]]})
    joined = ins.cache_stats(store)["last_build"]
    assert (joined["up_to_date"], joined["reused_bytes"]) == (2, 5002)
    assert joined["hit_rate"] == pytest.approx(2 / 4)
    # ...which the build keeps in a blob of the record, with their count.
    store.set_meta("last_build", {
        "lab": "/nix/store/abc-repx-lab", "executed": [ids[0]],
        "up_to_date_blob": "up_to_date", "up_to_date_count": 2, "failed": [ids[2]]},
        blobs={"up_to_date": "\n".join([ids[1], "gone-x-1.0"]).encode()})
    in_blob = ins.cache_stats(store)["last_build"]
    assert (in_blob["up_to_date"], in_blob["reused_bytes"]) == (2, 5002)
    assert in_blob["hit_rate"] == pytest.approx(2 / 4)
    assert "hit rate   50.0%: 2 up to date" in run_repx(
        "cache", "stats", "--store", str(store.root), cwd=tmp_path)[0]
    # Without the blob (the report's summary needs no sizes), the count stands alone.
    assert ins.last_build_summary(store.get_meta("last_build") or {}, {})["up_to_date"] == 2


def test_cache_show_lists_files_with_sizes_and_digests(store: Store, tmp_path: Path) -> None:
    ids = _three_jobs(store)
    (store.meta_dir(ids[1]) / "params.json").write_text('{"lr": 0.1}')
    d = json.loads(run_repx("cache", "show", "bbb", "--json", "--store", str(store.root),
                            cwd=tmp_path)[0])
    assert d["id"] == ids[1] and d["status"] == "succeeded"
    assert [(f["path"], f["size"]) for f in d["files"]] == [("log.txt", 2),
                                                           ("m/model.bin", 5000)]
    assert all(len(f["blake3"]) == 64 for f in d["files"])
    assert d["params_json"] == {"lr": 0.1} and d["inputs_json"] is None
    out, _ = run_repx("cache", "show", "ccc", "--store", str(store.root), cwd=tmp_path)
    assert "status    failed, exit code 1, exit code 1" not in out  # reason said once
    assert "status    failed, exit code 1" in out and "partial  7 B" in out


def test_cache_verify_reports_changed_outputs_and_exits_1(store: Store,
                                                         tmp_path: Path) -> None:
    ids = _three_jobs(store)
    out, _ = run_repx("cache", "verify", "--store", str(store.root), cwd=tmp_path)
    assert "verified 2 jobs (3 files, 5.2 KiB): all as recorded" in out  # failed job skipped
    model = store.out_dir(ids[1]) / "m" / "model.bin"
    model.write_bytes(b"9" * 5000)  # same size, other content
    out, _ = run_repx("cache", "verify", "--store", str(store.root), cwd=tmp_path, code=1)
    assert f"{model}: content changed" in out and "1 with problems" in out
    out, _ = run_repx("cache", "verify", "--quick", "--store", str(store.root), cwd=tmp_path)
    assert "all as recorded" in out  # sizes only
    (store.out_dir(ids[0]) / "d.csv").unlink()
    js = json.loads(run_repx("cache", "verify", "aaa", "--json", "--quick",
                             "--store", str(store.root), cwd=tmp_path, code=1)[0])
    assert js == [{"id": ids[0], "status": "succeeded", "files": 1, "bytes": 300,
                   "problems": [f"{store.out_dir(ids[0]) / 'd.csv'}: missing"]}]


def test_cache_rm_removes_records_and_folders_but_not_live_jobs(
        store: Store, tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    ids = _three_jobs(store)
    busy = "e" * 32 + "-busy-1.0"
    record_job(store, busy, status=Status.RUNNING, pid=sleeper.pid, files={"x": b"1234"})
    out, _ = run_repx("cache", "rm", "bbb", "--store", str(store.root), cwd=tmp_path)
    assert f"removed {ids[1]}" in out and "removed 1 job," in out
    assert store.get(ids[1]) is None and not store.job_dir(ids[1]).exists()
    _, err = run_repx("cache", "rm", "eee", "aaa", "--store", str(store.root), cwd=tmp_path,
                      code=2)
    assert f"job {busy} is running" in err and f"pid {sleeper.pid}" in err
    assert store.get(ids[0]) is not None  # nothing removed when one job is refused
    js = json.loads(run_repx("cache", "rm", "--status", "failed", "--json",
                             "--store", str(store.root), cwd=tmp_path)[0])
    assert [r["id"] for r in js["removed"]] == [ids[2]]
    assert js["freed_bytes"] >= 7
    sleeper.kill()
    sleeper.wait()
    run_repx("cache", "rm", busy, "--store", str(store.root), cwd=tmp_path)
    assert store.get(busy) is None
    _, err = run_repx("cache", "rm", "--store", str(store.root), cwd=tmp_path, code=2)
    assert "name the jobs to remove" in err


def test_store_errors_are_clear(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"no repx store at .*; run `repx build` first"):
        ins.open_store(tmp_path / "none")
    with pytest.raises(UsageError, match="not a job id"):
        ins.resolve_stored_job(store, "a/b")
    (tmp_path / "broken" / "db").mkdir(parents=True)
    (tmp_path / "broken" / "db" / "data.mdb").write_bytes(b"not lmdb" * 100)
    _, err = run_repx("cache", "ls", "--store", str(tmp_path / "broken"), cwd=tmp_path,
                      code=2)
    assert str(tmp_path / "broken") in err


def test_human_sizes_and_durations() -> None:
    assert ins.human_bytes(0) == "0 B"
    assert ins.human_bytes(1023) == "1023 B"
    assert ins.human_bytes(1536) == "1.5 KiB"
    assert ins.human_bytes(5 * 1024**3) == "5.0 GiB"
    assert ins.fmt_duration(2.5) == "2.5s"
    assert ins.fmt_duration(125) == "2m05s"
    assert ins.fmt_duration(3 * 3600 + 61) == "3h01m01s"


# ----------------------------------------------------------------------- with repx build

FLAKY_STAGE = """
{ pkgs }:
{
  pname = "flaky";
  version = "1.0";
  params = { ok = "yes"; };
  outputs = { result = "$out/result.txt"; };
  runDependencies = [ pkgs.coreutils ];
  run = { outputs, params, ... }: ''
    ok="${params.ok}"
    echo "working on $ok"
    echo "complaint $ok" >&2
    if [ "$ok" != "yes" ]; then exit 3; fi
    echo finished > "${outputs.result}"
  '';
}
"""

FLAKY_RUN = """
{ pkgs, repx-lib, ... }:
{ name = "main"; pipelines = [ ./pipe.nix ]; params = { ok = [ "yes" "no" ]; }; }
"""


@pytest.mark.nix
def test_commands_on_what_repx_build_recorded(make_lab, tmp_path: Path) -> None:
    require_nix()
    folder = make_lab({"stage.nix": FLAKY_STAGE, "run.nix": FLAKY_RUN})
    result = repx("build", cwd=folder, check=False)
    assert result.returncode == 1, result.stderr
    jobs = {j["params"]["ok"]: j["id"] for j in
            json.loads(repx("list", "jobs", "--json", "--lab", "result", cwd=folder).stdout)}
    good, bad = jobs["yes"], jobs["no"]

    status = json.loads(run_repx("status", "--json", "--lab", "result", cwd=folder)[0])
    assert status["total"]["succeeded"] == 1 and status["total"]["failed"] == 1
    assert run_repx("log", good, cwd=folder)[0] == "working on yes\n"
    stderr_log = run_repx("log", bad[:8], "--stderr", "-f", cwd=folder)[0]
    assert "\ncomplaint no\n" in stderr_log and "exit 3" in stderr_log  # with the xtrace
    out, _ = run_repx("show", bad, "--lab", "result", cwd=folder)
    assert "status    failed, exit code 3" in out
    assert 'ok = "no"    [sweep:ok]' in out
    detail = json.loads(run_repx("show", good, "--json", "--lab", "result", cwd=folder)[0])
    assert detail["outputs"]["result"]["size"] == len("finished\n")
    assert detail["record"]["run"] == "main" and detail["record"]["stage"] == "flaky"
    failed = json.loads(run_repx("cache", "ls", "--status", "failed", "--json", cwd=folder)[0])
    assert [r["id"] for r in failed] == [bad]
    run_repx("cache", "verify", cwd=folder)
    stats = json.loads(run_repx("cache", "stats", "--json", cwd=folder)[0])
    assert stats["last_build"]["hit_rate"] == 0.0  # nothing was up to date
    repx("build", cwd=folder, check=False)  # the failed job runs (and fails) again
    stats = json.loads(run_repx("cache", "stats", "--json", cwd=folder)[0])
    assert stats["last_build"]["up_to_date"] == 1 and stats["last_build"]["failed"] == 1
    assert stats["last_build"]["hit_rate"] == 0.5


def test_every_store_command_has_an_example_in_its_help() -> None:
    from click.testing import CliRunner

    from repx.cli import main

    commands = [["status"], ["show"], ["log"], ["cache"], ["cache", "ls"], ["cache", "stats"],
                ["cache", "show"], ["cache", "verify"], ["cache", "rm"], ["gc"],
                ["gc", "roots"], ["gc", "pin"], ["gc", "unpin"]]
    for words in commands:
        result = CliRunner().invoke(main, [*words, "--help"])
        assert result.exit_code == 0, words
        assert f"Example: repx {words[0]}" in result.output, words
