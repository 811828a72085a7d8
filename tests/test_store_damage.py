"""A damaged or unusable store is reported, never crashed on, never silently discarded.

Every case is caused for real: a ``data.mdb`` cut short with ``truncate``, a database deleted
or emptied beside its job folders, an address space limited with ``ulimit -v`` in the
shell that runs repx, and a disk that fills up (a small tmpfs, mounted for the test; root is
needed and its absence is a failure, not a skip). Builds are real ``repx build`` processes
on a real lab (:mod:`tests.buildutil`). The one check that uses a constructed error instead
of a real one says so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from repx.store import JobRecord, OutputFile, Status, Store, StoreError, layout, space
from repx.store.errors import StoreDamagedError, StoreFullError
from repx.store.health import check_data_file, read_meta
from repx.store.lmdb_store import this_host
from repx.store.records import record_to_json
from repx.store.recover import recover
from tests.buildutil import (
    CONSUMER,
    PRODUCER,
    build,
    list_jobs,
    log_lines,
    records,
    repx,
    repx_env,
    write_lab,
)
from tests.conftest import require_nix

RUN = """
{ pkgs, repx-lib, ... }:
{
  name = "main";
  pipelines = [ ./pipe.nix ];
  params = { a = [ 1 2 3 ]; };
}
"""

PIPE = """
{ repx, ... }:
repx.mkPipe rec {
  producer = repx.callStage ./producer.nix [ ];
  consumer = repx.callStage ./consumer.nix [ producer ];
}
"""


class Lab:
    """A lab of 3 producers and 3 consumers, its store, and the log its jobs append to."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "lab"
        self.store = root / ".repx"
        self.log = root / "executions.log"
        write_lab(self.folder, {"run.nix": RUN, "pipe.nix": PIPE, "producer.nix": PRODUCER,
                                "consumer.nix": CONSUMER}, LOG=str(self.log))

    def build(self, *args: str) -> list[str]:
        """Build; the log lines the jobs appended (what really ran). Once the lab is built,
        its ./result is used as it is (the same job ids whatever happens to the checkout's
        Nix library meanwhile)."""
        before = len(log_lines(self.log))
        built = ("--lab", "result") if (self.folder / "result").exists() else ()
        build(self.folder, self.store, *built, *args)
        return sorted(log_lines(self.log)[before:])

    def repx(self, *args: str, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
        return repx(*args, "--store", str(self.store), cwd=self.folder, check=False, env=env)

    @property
    def data(self) -> Path:
        return self.store / "db" / "data.mdb"


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    require_nix()
    lab = Lab(tmp_path)
    assert len(lab.build()) == 6
    return lab


def one_paragraph_error(result: subprocess.CompletedProcess[str], *phrases: str) -> str:
    """The command failed with exit code 2 and one ``repx: …`` line containing ``phrases``
    (no traceback, no signal)."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("repx: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in errors[0], (phrase, errors[0])
    return errors[0]


# ------------------------------------------------------------------ truncated data.mdb


def fill_disk(path: Path) -> None:
    """Write zeros to ``path`` until its filesystem has no space left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        with pytest.raises(OSError):
            while True:
                os.write(fd, b"\0" * 65536)
    finally:
        os.close(fd)


@pytest.mark.nix
def test_a_truncated_database_is_reported_and_recovered(lab: Lab) -> None:
    whole = lab.data.read_bytes()
    fd = os.open(lab.data, os.O_RDONLY)
    try:
        main_root = read_meta(fd).main_root  # type: ignore[union-attr]
    finally:
        os.close(fd)
    assert main_root >= 2
    # One page (only the first meta page: LMDB says it is not an LMDB file), two pages
    # (both meta pages, no tree) and a cut through the main tree's root page: with both
    # meta pages there, LMDB would map the file and die of SIGBUS on the missing page.
    for size in (4096, 2 * 4096, main_root * 4096):
        lab.data.write_bytes(whole[:size])
        for command in (["build", "--lab", "result"], ["status", "--lab", "result"],
                        ["cache", "ls"],
                        ["gc", "--dry-run", "--lab", "result"]):
            result = lab.repx(*command)
            assert result.returncode != -signal.SIGBUS and result.returncode != 135
            message = one_paragraph_error(result, "is damaged", str(lab.data),
                                          "repx cache recover")
            assert size < 2 * 4096 or f"is {size} bytes" in message, message
    assert len(log_lines(lab.log)) == 6  # nothing ran again

    recovered = lab.repx("cache", "recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    report = json.loads(recovered.stdout)
    assert report["database"] == "damaged" and len(report["recovered"]["succeeded"]) == 6
    aside = Path(report["moved_to"])
    assert aside.name.startswith("db.damaged-")
    assert (aside / "data.mdb").stat().st_size == main_root * 4096  # kept as it was
    assert lab.build() == []  # every job is up to date again
    assert {r.status for r in records(lab.store).values()} == {Status.SUCCEEDED}


def test_the_size_check_walks_every_tree_and_never_lets_lmdb_fault(tmp_path: Path) -> None:
    """A store with a deep jobs tree and values on overflow pages, cut at a dozen points:
    each cut is either refused before LMDB maps the file, or (only free pages lost) fully
    readable; no reader process ever dies of a signal."""
    root = tmp_path / "s"
    big = [OutputFile(f"file-{i:05d}.dat", i, "ab" * 32) for i in range(300)]  # ~20 KB value
    with Store(root) as store, store.batch():
        for i in range(3000):
            store.put(JobRecord(f"{i:05d}-stage-1", Status.SUCCEEDED, lab="/nix/store/x-lab",
                                outputs=big if i % 100 == 0 else []))
    data = root / "db" / "data.mdb"
    t0 = time.perf_counter()
    assert check_data_file(str(data), str(root)) is not None
    print(f"\nsize check of a whole {data.stat().st_size} B store: "
          f"{1e6 * (time.perf_counter() - t0):.0f} µs")
    whole = data.read_bytes()
    reader = textwrap.dedent("""
        import sys
        from repx.store import Store, StoreError
        try:
            with Store(sys.argv[1], readonly=True) as s:
                n = sum(1 for _ in s.records())
            print("read", n)
        except StoreError as exc:
            print("refused", type(exc).__name__)
    """)
    outcomes = {}
    for pages in range(2, len(whole) // 4096, max(1, len(whole) // 4096 // 12)):
        data.write_bytes(whole[:pages * 4096])
        run = subprocess.run([sys.executable, "-c", reader, str(root)], capture_output=True,
                             text=True, env=repx_env(), timeout=60, check=False)
        assert run.returncode == 0, (pages, run.returncode, run.stderr)
        outcomes[pages] = run.stdout.split()
    assert all(o == ["refused", "StoreDamagedError"] or o == ["read", "3000"]
               for o in outcomes.values()), outcomes
    assert outcomes[2] == ["refused", "StoreDamagedError"]


# ----------------------------------------------------- deleted or emptied data.mdb


@pytest.mark.nix
def test_a_lost_database_is_refused_then_recovered_from_the_job_folders(lab: Lab) -> None:
    pinned = lab.repx("gc", "pin", "paper", "--lab", "result")
    assert pinned.returncode == 0, pinned.stderr
    jobs = {r.job_id: r for r in records(lab.store).values()}
    listed = {j["id"]: j for j in list_jobs(lab.folder)}
    param_a = {j: (listed[j]["params"].get("a") or listed[listed[j]["depends_on"][0]]
                   ["params"]["a"]) for j in jobs}
    folders = lab.store / "outputs"
    for job_id in jobs:
        saved = json.loads((folders / job_id / "repx" / "record.json").read_text())
        assert saved["status"] == "succeeded" and saved["job_id"] == job_id
        assert saved["outputs"] == [[f.path, f.size, f.blake3] for f in jobs[job_id].outputs]

    for lose in ("delete", "empty"):
        if lose == "delete":
            shutil.rmtree(lab.store / "db")
        else:
            lab.data.parent.mkdir()
            lab.data.write_bytes(b"")
        for command in (["build", "--lab", "result"], ["build", "--dry-run", "--lab", "result"],
                        ["status", "--lab", "result"], ["gc", "--yes", "--lab", "result"]):
            one_paragraph_error(lab.repx(*command), "lost its database",
                                "holds 6 job folders", "repx cache recover")
        assert not lab.data.exists() or lab.data.stat().st_size == 0  # nothing created
        assert len(log_lines(lab.log)) == 6  # nothing ran

    # One folder's output was changed, one folder has no record.json (an older repx), one
    # job failed: none of them comes back as succeeded.
    producers = sorted(j for j, r in jobs.items() if r.stage == "producer")
    consumers = sorted(j for j, r in jobs.items() if r.stage == "consumer")
    (folders / producers[0] / "out" / "data.txt").write_text("WORD 9\n")  # same size
    (folders / producers[1] / "repx" / "record.json").unlink()
    failed = json.loads((folders / consumers[0] / "repx" / "record.json").read_text())
    failed.update(status="failed", exit_code=1, reason="exit code 1")
    (folders / consumers[0] / "repx" / "record.json").write_text(json.dumps(failed))

    dry = lab.repx("cache", "recover", "--dry-run")
    assert dry.returncode == 0 and "would recover 4 jobs" in dry.stdout, dry.stdout
    assert lab.data.stat().st_size == 0
    result = lab.repx("cache", "recover")
    assert result.returncode == 0, result.stderr
    assert "recover 4 jobs (1 failed, 3 succeeded)" in result.stdout, result.stdout
    assert f"skipped {producers[0]}: its outputs are not the ones it recorded" in result.stdout
    assert f"skipped {producers[1]}: no repx/record.json" in result.stdout
    assert "restore gc root paper (pinned)" in result.stdout, result.stdout
    again = lab.repx("cache", "recover", "--json")  # idempotent: all known now
    assert json.loads(again.stdout)["recovered"] == {}

    statuses = {j: r.status for j, r in records(lab.store).items()}
    assert statuses[consumers[0]] is Status.FAILED
    assert producers[0] not in statuses and producers[1] not in statuses
    roots = json.loads(lab.repx("gc", "roots", "--json").stdout)
    assert [(r["name"], r["pinned"]) for r in roots if r["pinned"]] == [("paper", True)]

    # What was not recovered as succeeded runs again; nothing else does.
    assert lab.build() == sorted([f"producer {param_a[producers[0]]}",
                                  f"producer {param_a[producers[1]]}",
                                  f"consumer {param_a[consumers[0]]}"])
    assert (folders / producers[0] / "out" / "data.txt").read_text() != "WORD 9\n"
    assert {r.status for r in records(lab.store).values()} == {Status.SUCCEEDED}
    assert len(records(lab.store)) == 6 and lab.build() == []


def test_recover_refuses_to_move_a_database_another_process_has_open(tmp_path: Path) -> None:
    root = tmp_path / "s"
    Store(root).close()
    (root / "outputs" / "a-stage-1").mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from repx.store import Store; "
         "s = Store(sys.argv[1], readonly=True); print('open', flush=True); time.sleep(60)",
         str(root)], stdout=subprocess.PIPE, text=True, env=repx_env())
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        data = root / "db" / "data.mdb"
        data.write_bytes(b"this is not an LMDB file" * 400)
        result = repx("cache", "recover", "--store", str(root), cwd=tmp_path, check=False)
        one_paragraph_error(result, "another process has the job store", "open")
        assert data.exists()  # not moved
    finally:
        holder.kill()
        holder.wait()
    result = repx("cache", "recover", "--store", str(root), cwd=tmp_path, check=False)
    assert result.returncode == 0 and "damaged" in result.stdout, result.stderr
    assert "skipped a-stage-1: no repx/record.json" in result.stdout


def test_recover_replaces_a_stale_claim_with_the_folders_record(tmp_path: Path) -> None:
    """A job whose outcome reached its record.json but not the database (the commit met a
    full disk, then the build died) is a stale claim; recover takes the folder's word."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    owner = f"{this_host()}:{gone.pid}:{time.time() - 5:.3f}"
    with Store(tmp_path / "s") as store:
        assert store.claim("j-stage-1", owner, host=this_host(), pid=gone.pid, lab="/nix/lab",
                           run="main", stage="stage")
        store.out_dir("j-stage-1").mkdir(parents=True)
        store.meta_dir("j-stage-1").mkdir()
        (store.out_dir("j-stage-1") / "result.txt").write_text("42\n")
        done = JobRecord("j-stage-1", Status.SUCCEEDED, exit_code=0, finished=time.time(),
                         outputs=store.manifest("j-stage-1"), owner=owner, run="main")
        (store.meta_dir("j-stage-1") / layout.RECORD_JSON).write_text(
            json.dumps(record_to_json(done)))
        assert store.get("j-stage-1").status is Status.RUNNING  # type: ignore[union-attr]
    result = recover(tmp_path / "s")
    assert result.database == "whole" and result.stale_replaced == ["j-stage-1"]
    with Store(tmp_path / "s", readonly=True) as store:
        record = store.get("j-stage-1")
    assert record is not None and record.status is Status.SUCCEEDED
    assert record.outputs == done.outputs


# ------------------------------------------------------------- address-space limit


@pytest.mark.nix
def test_a_limited_address_space_sizes_and_grows_the_map(lab: Lab) -> None:
    limited = "ulimit -v 4000000; "
    cmd = " ".join([sys.executable, "-m", "repx.cli"])
    store = str(lab.store)

    def shell(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", script], cwd=lab.folder, capture_output=True,
                              text=True, env=repx_env(env), timeout=180, check=False)

    lab.data.unlink()
    shutil.rmtree(lab.store / "outputs")
    first = shell(f"{limited} {cmd} build --json --lab result --store {store}")
    assert first.returncode == 0, first.stderr
    assert len(json.loads(first.stdout)["executed"]) == 6
    status = shell(f"{limited} {cmd} status --json --lab result --store {store}")
    assert status.returncode == 0 and json.loads(status.stdout)["total"]["succeeded"] == 6

    too_big = shell(f"{limited} {cmd} status --store {store}", {"REPX_STORE_MAP_SIZE": "8G"})
    one_paragraph_error(too_big, "cannot map 8.0 GiB", "ulimit -v 4000000",
                        "REPX_STORE_MAP_SIZE", "--store-map-size")
    bad = shell(f"{cmd} --store-map-size 12parsecs status --store {store}")
    assert bad.returncode == 2 and "is not a size" in bad.stderr
    small = shell(f"{limited} {cmd} --store-map-size 32M status --store {store}")
    assert small.returncode == 0, small.stderr

    # The map grows as the data does: 16 MiB to start, ~63 MB of records written, with
    # the room made before each write switched off so that writes really fill the map.
    grow = textwrap.dedent("""
        import sys
        from repx.store import JobRecord, OutputFile, Status, Store, space
        space.MAP_HEADROOM = 0
        files = [OutputFile(f"f{i:05d}", i, "cd" * 32) for i in range(7000)]
        # Decoded once, the record keeps its outputs encoded: each put is just a write.
        record = JobRecord.from_msgpack(JobRecord("x", Status.SUCCEEDED, outputs=files)
                                        .to_msgpack())
        with Store(sys.argv[1]) as s:
            start = s._h.map_size
            for i in range(200):
                record.job_id = f"{i:05d}-big-1"
                s.put(record)
            print(start, s._h.map_size, sum(1 for _ in s.records()))
    """)
    grown = shell(f"{limited} {sys.executable} -c '{grow}' {lab.store.parent / 'big'}",
                  {"REPX_STORE_MAP_SIZE": "16M"})
    assert grown.returncode == 0, grown.stderr
    start, end, count = map(int, grown.stdout.split())
    assert start == 16 << 20 and end > 60_000_000 and count == 200, grown.stdout


def test_a_reader_follows_a_map_another_process_grew(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader opened with a 16 MiB map; a writer in another process commits ~30 MB: the
    reader's next transaction meets MDB_MAP_RESIZED, grows its map, and reads it all."""
    root = tmp_path / "s"
    Store(root).close()
    monkeypatch.setenv("REPX_STORE_MAP_SIZE", "16M")
    with Store(root, readonly=True) as reader:
        assert reader._h.map_size == 16 << 20  # type: ignore[union-attr]
        writer = textwrap.dedent("""
            import sys
            from repx.store import JobRecord, OutputFile, Status, Store
            files = [OutputFile(f"f{i:05d}", i, "cd" * 32) for i in range(7000)]
            record = JobRecord.from_msgpack(JobRecord("x", Status.SUCCEEDED, outputs=files)
                                            .to_msgpack())
            with Store(sys.argv[1]) as s, s.batch():
                for i in range(100):
                    record.job_id = f"{i:05d}-big-1"
                    s.put(record)
        """)
        env = {k: v for k, v in repx_env().items() if k != "REPX_STORE_MAP_SIZE"}
        subprocess.run([sys.executable, "-c", writer, str(root)], env=env, check=True,
                       timeout=120)
        assert sum(1 for _ in reader.records()) == 100
        assert reader._h.map_size > 30_000_000  # type: ignore[union-attr]


# ----------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards (even when the test fails)."""
    if os.geteuid() != 0:
        pytest.fail("the full-disk tests mount a tmpfs: run them as root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


SLOW = """
{ pkgs }:
{
  pname = "slow";
  params = { filler = "@FILLER@"; pidfile = "@PIDFILE@"; };
  outputs = { data = "$out/data.txt"; };
  run = { outputs, params, ... }: ''
    if [ ! -e "${params.pidfile}" ]; then  # the first build: run until stopped
      echo $$ > "${params.pidfile}"
      for _ in $(seq 200); do [ -e "${params.filler}" ] && break; sleep 0.05; done
      sleep 60
    fi
    echo slow > "${outputs.data}"
  '';
}
"""

FILL = """
{ pkgs }:
{
  pname = "fill";
  params = { filler = "@FILLER@"; marker = "@MARKER@"; };
  outputs = { data = "$out/data.txt"; };
  run = { outputs, params, ... }: ''
    echo filled > "${outputs.data}"
    if [ ! -e "${params.marker}" ]; then  # the first build: fill the disk
      touch "${params.marker}"
      head -c 100000000 /dev/zero > "${params.filler}" 2>/dev/null || true
    fi
  '';
}
"""

AFTER = """
{ pkgs }:
{
  pname = "after";
  inputs = { data = ""; };
  outputs = { result = "$out/result.txt"; };
  run = { inputs, outputs, ... }: ''
    cat "${inputs.data}" > "${outputs.result}"
  '';
}
"""

FULL_PIPE = """
{ repx, ... }:
repx.mkPipe rec {
  slow = repx.callStage ./slow.nix [ ];
  fill = repx.callStage ./fill.nix [ ];
  after = repx.callStage ./after.nix [ fill ];
}
"""


@pytest.mark.nix
def test_a_full_disk_stops_the_build_and_leaves_no_running_record(small_disk: Path,
                                                                  tmp_path: Path) -> None:
    """``fill`` fills the disk while ``slow`` runs; ``after`` cannot start. The build says
    "no space left on device", stops ``slow``, and records every job it claimed."""
    require_nix()
    folder = tmp_path / "lab"
    filler = small_disk / "filler"
    pidfile = tmp_path / "slow.pid"
    write_lab(folder, {"run.nix": RUN.replace("params = { a = [ 1 2 3 ]; };", "params = { };"),
                       "pipe.nix": FULL_PIPE, "slow.nix": SLOW, "fill.nix": FILL,
                       "after.nix": AFTER}, FILLER=str(filler), PIDFILE=str(pidfile),
              MARKER=str(tmp_path / "filled"))
    store = small_disk / "store"
    result = build(folder, store, "-j", "2", expect=2)
    message = [line for line in result.stderr.splitlines() if line.startswith("repx: ")]
    assert len(message) == 1 and "no space left on device" in message[0], result.stderr
    assert str(store) in message[0]

    held = records(store)
    by_stage = {r.stage: r for r in held.values()}
    assert set(by_stage) == {"slow", "fill"}, held  # `after` was never claimed
    assert not [r for r in held.values() if r.status.active], held
    assert by_stage["fill"].status is Status.FAILED
    assert "record.json: no space left on device" in by_stage["fill"].reason
    assert by_stage["slow"].status is Status.CANCELLED
    assert "the build stopped: no space left on device" in by_stage["slow"].reason
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # slow's script was stopped with the build

    filler.unlink()
    again = build(folder, store, "-j", "2", "--lab", "result")
    assert len(again.executed) == 3  # space again: all run


def test_a_commit_on_a_full_disk_says_so(small_disk: Path) -> None:
    """Beyond the disk reserve, a commit meets the full disk for real."""
    root = small_disk / "store"
    with Store(root) as store:
        store.put(JobRecord("a-stage-1", Status.SUCCEEDED))
        fill_disk(small_disk / "filler")
        assert space.disk_is_full(str(root))
        big = [OutputFile(f"f{i:06d}", i, "ef" * 32) for i in range(20000)]  # ~1.5 MB
        with pytest.raises(StoreFullError) as info:
            with store.batch():
                for i in range(3):
                    store.put(JobRecord(f"b{i}-stage-1", Status.SUCCEEDED, outputs=big))
        assert "no space left on device" in info.value.message
        assert str(root) in info.value.message
        with pytest.raises(StoreFullError, match="cannot start job c-stage-1: no space"):
            store.claim("c-stage-1", "me", host="h", pid=os.getpid(), lab="", run="",
                        stage="")
        assert store.get("a-stage-1") is not None  # what was committed is intact
        assert store.get("c-stage-1") is None


def test_eio_counts_as_no_space_only_on_a_full_disk(small_disk: Path, tmp_path: Path) -> None:
    """LMDB reports a short write as EIO. A real EIO cannot be caused on demand, so this one
    check builds the error LMDB raises (its text) instead of provoking it."""
    eio = lmdb.Error("mdb_txn_commit: Input/output error")
    assert not space.is_no_space(eio, str(tmp_path))  # a disk with room: a real I/O error
    fill_disk(small_disk / "filler")
    assert space.is_no_space(eio, str(small_disk))


def test_the_record_file_costs_little(tmp_path: Path) -> None:
    """Each finished job writes its folder's record.json: measured against the same finish
    without a folder (where there is nothing to write)."""
    owner = "me"
    timings = {}
    with Store(tmp_path / "s") as store:
        for with_folder in (False, True):
            ids = [f"{i}-{'f' if with_folder else 'n'}-1" for i in range(300)]
            for job_id in ids:
                store.claim(job_id, owner, host="h", pid=os.getpid(), lab="l", run="r",
                            stage="s")
                if with_folder:
                    store.meta_dir(job_id).mkdir(parents=True)
            files = [OutputFile(f"out-{k}.csv", 100 * k, "12" * 32) for k in range(5)]
            t0 = time.perf_counter()
            with store.batch():
                for job_id in ids:
                    store.finish(JobRecord(job_id, Status.SUCCEEDED, exit_code=0,
                                           outputs=files, owner=owner))
            timings[with_folder] = (time.perf_counter() - t0) / len(ids)
        written = json.loads((store.meta_dir("0-f-1") / layout.RECORD_JSON).read_text())
    assert written["status"] == "succeeded" and written["run"] == "r" and len(
        written["outputs"]) == 5
    extra = timings[True] - timings[False]
    print(f"\nfinish in a batch: {1e6 * timings[False]:.0f} µs/job without a folder, "
          f"{1e6 * timings[True]:.0f} µs/job writing record.json (+{1e6 * extra:.0f} µs)")
    assert extra < 1e-3


def test_damage_errors_are_store_errors_with_exit_code_2() -> None:
    for cls in (StoreDamagedError, StoreFullError):
        assert issubclass(cls, StoreError) and cls("x").exit_code == 2
