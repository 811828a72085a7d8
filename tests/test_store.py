"""The job store, against real LMDB in temporary directories (no mocks).

What matters here is what a crash or a concurrent ``repx build`` would do to the store, so
the tests use real processes: racing claimers, a writer killed with SIGKILL, dead pids.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import msgpack
import pytest

from repx.errors import RepxError, UsageError
from repx.store import (
    RECORD_FORMAT,
    JobRecord,
    OutputFile,
    Root,
    Status,
    Store,
    StoreError,
    hash_file,
    job_key,
    owner_alive,
    owner_token,
    this_host,
)
from repx.store.lmdb_store import process_start_time

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / ".repx")
    yield s
    s.close()


def full_record(job_id: str = "abc-stage-1.0") -> JobRecord:
    return JobRecord(
        job_id=job_id,
        status=Status.FAILED,
        exit_code=1,
        started=1700000000.25,
        finished=1700000012.5,
        host="node1",
        pid=4242,
        lab="/nix/store/aaaa-lab",
        run="main",
        stage="train",
        outputs=[OutputFile("a.csv", 10, "00" * 32), OutputFile("sub/b.bin", 0, "ff" * 32)],
        stdout_log="outputs/x/repx/stdout.log",
        stderr_log="outputs/x/repx/stderr.log",
        reason="exit code 1",
        slurm_id="123_4",
        owner="node1:4242:1700000000.000",
    )


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def claim(store: Store, job_id: str, owner: str, pid: int, host: str | None = None) -> bool:
    return store.claim(
        job_id, owner, host=host or this_host(), pid=pid, lab="lab", run="run", stage="stage"
    )


# -- records -----------------------------------------------------------------------------------


def test_record_round_trip_bytes() -> None:
    rec = full_record()
    data = rec.to_msgpack()
    assert data[0] == RECORD_FORMAT
    back = JobRecord.from_msgpack(data)
    assert back == rec
    assert back.outputs == rec.outputs
    assert isinstance(back.status, Status)
    # A memoryview (what LMDB hands out with buffers=True) decodes the same.
    assert JobRecord.from_msgpack(memoryview(data)) == rec
    # Re-encoding an undecoded record reuses its encoded outputs verbatim.
    assert JobRecord.from_msgpack(data).to_msgpack() == data


def test_record_defaults_and_each_status() -> None:
    for status in Status:
        rec = JobRecord("j", status)
        back = JobRecord.from_msgpack(rec.to_msgpack())
        assert back == rec and back.outputs == [] and back.status is status


def test_record_accepts_newer_appended_fields_and_rejects_newer_format() -> None:
    data = full_record().to_msgpack()
    body = msgpack.unpackb(data[2:])
    extended = data[:2] + msgpack.packb([*body, "a field from the future", 7])
    assert JobRecord.from_msgpack(extended) == full_record()
    # An older, shorter body: missing fields take their defaults.
    short = data[:2] + msgpack.packb(body[:5])
    rec = JobRecord.from_msgpack(short)
    assert rec.host == "node1" and rec.outputs == [] and rec.owner == ""
    with pytest.raises(StoreError, match="newer repx"):
        JobRecord.from_msgpack(bytes([RECORD_FORMAT + 1]) + data[1:])
    with pytest.raises(StoreError, match="status code"):
        JobRecord.from_msgpack(data[:1] + bytes([99]) + data[2:])


def test_record_non_utf8_output_name_round_trips() -> None:
    name = os.fsdecode(b"caf\xe9.txt")  # Latin-1 name: not valid UTF-8
    rec = JobRecord("j", Status.SUCCEEDED, outputs=[OutputFile(name, 1, "ab" * 32)])
    assert JobRecord.from_msgpack(rec.to_msgpack()).outputs[0].path == name


def test_root_record_round_trip() -> None:
    root = Root("aaaa-lab", "/nix/store/aaaa-lab", True, 12.5)
    assert Root.from_msgpack(root.to_msgpack()) == root


def test_store_round_trip(store: Store) -> None:
    rec = full_record()
    store.put(rec)
    assert store.get(rec.job_id) == rec
    assert store.get("nope") is None
    assert store.statuses([rec.job_id, "nope"]) == {rec.job_id: Status.FAILED}
    assert [r.job_id for r in store.records()] == [rec.job_id]
    assert (store.root / "db" / "data.mdb").is_file()
    assert store.out_dir(rec.job_id) == store.root / "outputs" / rec.job_id / "out"
    assert store.meta_dir(rec.job_id) == store.root / "outputs" / rec.job_id / "repx"


def test_corrupt_record_error_names_job_and_store(store: Store) -> None:
    with store.batch():  # write a damaged value under a real key, past the API
        txn = store._h.local.txn  # type: ignore[union-attr]
        txn.put(job_key("bad-s-1"), b"\x01\x02\xc1 not msgpack", db=store._h.jobs)  # type: ignore
    for read in (store.get, lambda j: store.get_many([j])):
        with pytest.raises(StoreError, match=f"job bad-s-1: corrupt.*{store.root}"):
            read("bad-s-1")


def test_job_key_is_blake3_of_id() -> None:
    import blake3

    assert job_key("x-y-1") == blake3.blake3(b"x-y-1").digest()
    assert len(job_key("x-y-1")) == 32


def test_records_iterates_across_chunks(store: Store) -> None:
    ids = {f"{i:05d}-s-1" for i in range(2600)}  # more than two read chunks
    with store.batch():
        for job_id in ids:
            store.put(JobRecord(job_id, Status.SUCCEEDED))
    seen = [r.job_id for r in store.records()]
    assert len(seen) == len(ids) and set(seen) == ids


def test_records_of_some_statuses_across_chunks(store: Store) -> None:
    """Only the records of the statuses asked for, across read chunks (one queued job in
    every 500, the rest finished), each once and decoded whole."""
    statuses = {f"{i:05d}-s-1": Status.QUEUED if i % 500 == 0 else
                (Status.FAILED if i % 3 else Status.SUCCEEDED) for i in range(2600)}
    with store.batch():
        for job_id, status in statuses.items():
            store.put(JobRecord(job_id, status, slurm_id=job_id[:5]))
    queued = list(store.records((Status.QUEUED, Status.RUNNING)))
    assert sorted(r.job_id for r in queued) == sorted(
        j for j, s in statuses.items() if s is Status.QUEUED)
    assert all(r.status is Status.QUEUED and r.slurm_id == r.job_id[:5] for r in queued)
    succeeded = [r.job_id for r in store.records((Status.SUCCEEDED,))]
    assert len(succeeded) == len(set(succeeded)) == sum(
        s is Status.SUCCEEDED for s in statuses.values())
    assert list(store.records(())) == []


def test_get_many_and_statuses_of_20000(store: Store) -> None:
    ids = [f"{i:032d}-stage{i % 7}-1.0" for i in range(20_000)]
    outs = [OutputFile(f"f{k}.csv", 100 + k, "ab" * 32) for k in range(3)]
    with store.batch():
        for i, job_id in enumerate(ids):
            status = Status.SUCCEEDED if i % 10 else Status.FAILED
            store.put(JobRecord(job_id, status, exit_code=0, host="h", outputs=outs, owner="o"))
    wanted = [*ids, "absent-1", "absent-2"]
    t0 = time.perf_counter()
    records = store.get_many(wanted)
    t1 = time.perf_counter()
    statuses = store.statuses(wanted)
    t2 = time.perf_counter()
    print(f"\nget_many(20 000): {1000 * (t1 - t0):.1f} ms; statuses(20 000): "
          f"{1000 * (t2 - t1):.1f} ms")
    assert len(records) == len(statuses) == 20_000
    assert records[ids[3]].outputs == outs and records[ids[3]].status is Status.SUCCEEDED
    assert statuses[ids[0]] is Status.FAILED and statuses[ids[1]] is Status.SUCCEEDED
    assert all(statuses[j] is r.status for j, r in records.items())


# -- opening -----------------------------------------------------------------------------------


def test_readonly_missing_store_raises_naming_path(tmp_path: Path) -> None:
    where = tmp_path / "nothing-here"
    with pytest.raises(StoreError, match=str(where)) as info:
        Store(where, readonly=True)
    assert isinstance(info.value, RepxError) and info.value.exit_code == 2
    assert not where.exists()  # readonly creates nothing


def test_readonly_store_reads_but_refuses_writes(tmp_path: Path) -> None:
    with Store(tmp_path / "s") as rw:
        rw.put(JobRecord("a-s-1", Status.SUCCEEDED))
    with Store(tmp_path / "s", readonly=True) as ro:
        assert ro.get("a-s-1") is not None
        with pytest.raises(StoreError, match="read-only"):
            ro.put(JobRecord("b-s-1", Status.SUCCEEDED))


def test_readonly_then_writable_in_one_process(tmp_path: Path) -> None:
    Store(tmp_path / "s").close()
    ro = Store(tmp_path / "s", readonly=True)  # the process's environment is now read-only
    with Store(tmp_path / "s") as rw:  # ... and is upgraded in place for this one
        rw.put(JobRecord("a-s-1", Status.SUCCEEDED))
        assert ro.get("a-s-1") is not None
    assert ro.get("a-s-1") is not None
    ro.close()


def test_garbage_database_raises_naming_path(tmp_path: Path) -> None:
    db = tmp_path / "bad" / "db"
    db.mkdir(parents=True)
    (db / "data.mdb").write_bytes(b"this is not an LMDB file" * 1000)
    with pytest.raises(StoreError, match=str(db)):
        Store(tmp_path / "bad")


def test_two_store_objects_share_one_environment(tmp_path: Path) -> None:
    a = Store(tmp_path / "s")
    b = Store(str(tmp_path / "s") + "/")  # another spelling of the same path
    a.put(JobRecord("a-s-1", Status.SUCCEEDED))
    assert b.get("a-s-1") is not None
    a.close()
    assert b.get("a-s-1") is not None  # closing one handle keeps the shared env open
    b.close()
    with pytest.raises(StoreError, match="closed"):
        b.get("a-s-1")


def test_threads_share_a_store(store: Store) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(200):
                job_id = f"t{n}-{i}-s-1"
                store.put(JobRecord(job_id, Status.SUCCEEDED, exit_code=n))
                assert store.get(job_id).exit_code == n  # type: ignore[union-attr]
                if i % 50 == 0:
                    with store.batch():
                        store.put(JobRecord(job_id + "b", Status.FAILED))
                        assert store.get(job_id + "b").status is Status.FAILED  # type: ignore
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(1 for _ in store.records()) == 8 * 200 + 8 * 4


def test_store_after_fork_must_be_reopened(store: Store) -> None:
    store.put(JobRecord("a-s-1", Status.SUCCEEDED))
    pid = os.fork()
    if pid == 0:  # child: the inherited handle is refused; a new Store works
        code = 0
        try:
            try:
                store.get("a-s-1")
                code = 1
            except StoreError:
                pass
            with Store(store.root) as fresh:
                if fresh.get("a-s-1") is None:
                    code = 2
        except BaseException:  # noqa: BLE001
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get("a-s-1") is not None  # the parent's handle is unharmed


# -- claims ------------------------------------------------------------------------------------


def test_claim_refused_while_owner_alive_then_allowed_when_dead(store: Store) -> None:
    me = os.getpid()
    assert claim(store, "j-s-1", "first", me)
    rec = store.get("j-s-1")
    assert rec is not None and rec.status is Status.RUNNING and rec.owner == "first"
    assert rec.pid == me and rec.started is not None and rec.stage == "stage"
    assert not claim(store, "j-s-1", "second", me)  # first owner (this process) is alive

    gone = dead_pid()
    assert claim(store, "k-s-1", "ghost", gone)
    assert claim(store, "k-s-1", "second", me)  # the ghost's pid is dead: taken over
    assert store.get("k-s-1").owner == "second"  # type: ignore[union-attr]


def test_claim_refused_once_succeeded_and_retaken_after_failure(store: Store) -> None:
    me = os.getpid()
    assert claim(store, "j-s-1", "a", me)
    store.finish(JobRecord("j-s-1", Status.SUCCEEDED, exit_code=0, owner="a"))
    assert not claim(store, "j-s-1", "a", me)
    assert not claim(store, "j-s-1", "b", me)
    assert claim(store, "f-s-1", "a", me)
    store.finish(JobRecord("f-s-1", Status.FAILED, exit_code=1, reason="exit code 1", owner="a"))
    assert claim(store, "f-s-1", "b", me)  # a failed job runs again
    assert claim(store, "c-s-1", "a", me)
    store.finish(JobRecord("c-s-1", Status.CANCELLED, reason="interrupted", owner="a"))
    assert claim(store, "c-s-1", "b", me)


def test_claim_other_host_counts_as_alive(store: Store) -> None:
    assert claim(store, "j-s-1", "elsewhere:1:0", dead_pid(), host="another-host.invalid")
    assert not claim(store, "j-s-1", "here", os.getpid())


def test_claim_queued_on_slurm_respects_owner(store: Store) -> None:
    me = os.getpid()
    assert claim(store, "q-s-1", "a", me)
    store.update(JobRecord("q-s-1", Status.QUEUED, slurm_id="77", owner="a"))
    rec = store.get("q-s-1")
    assert rec is not None and rec.status is Status.QUEUED and rec.slurm_id == "77"
    assert rec.stage == "stage" and rec.pid == me  # kept from the claim
    assert not claim(store, "q-s-1", "b", me)
    assert claim(store, "q-s-1", "a", me)  # the same owner may claim again


def test_claim_detects_pid_reuse_by_start_time(store: Store) -> None:
    me = os.getpid()
    token = owner_token()
    assert owner_alive(this_host(), me, token)
    # A token for this pid made an hour before this process started: the pid was reused.
    started = process_start_time(me)
    assert started is not None and started <= time.time() + 5
    stale = f"{this_host()}:{me}:{started - 3600:.3f}"
    assert not owner_alive(this_host(), me, stale)
    # A token whose start is not an epoch time (another clock) never counts as reuse.
    assert owner_alive(this_host(), me, f"{this_host()}:{me}:1000.000")
    # No pid at all: not a claim made by claim(); treated as abandoned.
    assert not owner_alive(this_host(), None, "")
    store.put(JobRecord("r-s-1", Status.RUNNING, host=this_host(), pid=me, owner=stale))
    assert claim(store, "r-s-1", token, me)


def _race_claimer(root: str, ids: list[str], seed: int, start: object, done: object,
                  out: object) -> None:
    """Child process of the race test: claim every id (in an order of its own, so that the
    two processes collide all along rather than one trailing the other), stay alive until
    both have finished."""
    ids = list(ids)
    random.Random(seed).shuffle(ids)
    store = Store(root)
    owner = owner_token()
    start.wait()  # type: ignore[attr-defined]
    won = []
    for job_id in ids:
        if store.claim(job_id, owner, host=this_host(), pid=os.getpid(), lab="l", run="r",
                       stage="s"):
            won.append(job_id)
        time.sleep(0.0005)  # a build does work between claims: let the two interleave
    done.wait()  # type: ignore[attr-defined]  # both owners alive until both are done
    out.put((owner, won))  # type: ignore[attr-defined]
    store.close()


def test_two_processes_race_to_claim(tmp_path: Path) -> None:
    root = str(tmp_path / "s")
    Store(root).close()
    ids = [f"{i:04d}-race-1" for i in range(200)]
    ctx = mp.get_context("spawn")
    start, done, out = ctx.Barrier(2), ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_claimer, args=(root, ids, seed, start, done, out))
             for seed in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (owner_a, won_a), (owner_b, won_b) = results
    print(f"\nrace: {len(won_a)} + {len(won_b)} claims")
    assert not set(won_a) & set(won_b)
    assert sorted(won_a + won_b) == ids  # every id claimed exactly once
    with Store(root, readonly=True) as s:
        owners = {j: r.owner for j, r in s.get_many(ids).items()}
    assert all(owners[j] == owner_a for j in won_a)
    assert all(owners[j] == owner_b for j in won_b)


def test_claim_cost(store: Store) -> None:
    owner = owner_token()
    n = 300
    t0 = time.perf_counter()
    for i in range(n):
        claim(store, f"{i}-cost-1", owner, os.getpid())
    t1 = time.perf_counter()
    for i in range(n):
        store.finish(JobRecord(f"{i}-cost-1", Status.SUCCEEDED, exit_code=0, owner=owner))
    t2 = time.perf_counter()
    for i in range(n):
        claim(store, f"{i}-batch-1", owner, os.getpid())
    t3 = time.perf_counter()
    with store.batch():
        for i in range(n):
            store.finish(JobRecord(f"{i}-batch-1", Status.SUCCEEDED, exit_code=0, owner=owner))
    t4 = time.perf_counter()
    print(f"\nclaim: {1000 * (t1 - t0) / n:.3f} ms/job; finish (one durable commit each): "
          f"{1000 * (t2 - t1) / n:.3f} ms; finish in a batch: {1000 * (t4 - t3) / n:.3f} ms/job")
    assert store.statuses([f"{i}-batch-1" for i in range(n)]) == {
        f"{i}-batch-1": Status.SUCCEEDED for i in range(n)
    }


# -- finish ------------------------------------------------------------------------------------


def test_finish_only_by_owner(store: Store) -> None:
    me = os.getpid()
    assert claim(store, "j-s-1", "owner-a", me)
    with pytest.raises(StoreError, match="claimed by owner-a"):
        store.finish(JobRecord("j-s-1", Status.SUCCEEDED, owner="owner-b"))
    assert store.get("j-s-1").status is Status.RUNNING  # type: ignore[union-attr]
    with pytest.raises(StoreError, match="not claimed"):
        store.finish(JobRecord("never-s-1", Status.SUCCEEDED, owner="owner-a"))
    with pytest.raises(StoreError, match="use update"):
        store.finish(JobRecord("j-s-1", Status.QUEUED, owner="owner-a"))
    outs = [OutputFile("x", 1, "aa" * 32)]
    store.finish(JobRecord("j-s-1", Status.SUCCEEDED, exit_code=0, outputs=outs, owner="owner-a"))
    rec = store.get("j-s-1")
    assert rec is not None and rec.status is Status.SUCCEEDED and rec.outputs == outs
    assert rec.finished is not None and rec.started is not None and rec.finished >= rec.started
    assert rec.run == "run" and rec.pid == me  # merged from the claim


def test_batch_is_one_transaction_and_keeps_writes_on_error(store: Store) -> None:
    me = os.getpid()
    for i in range(3):
        assert claim(store, f"{i}-b-1", "o", me)
    with pytest.raises(RuntimeError), store.batch():
        store.finish(JobRecord("0-b-1", Status.SUCCEEDED, owner="o"))
        with store.batch():  # nested: joins the outer one
            store.finish(JobRecord("1-b-1", Status.SUCCEEDED, owner="o"))
        # Not committed yet: another process (a fresh reader) does not see it.
        code = f"""
from repx.store import Store
with Store({str(store.root)!r}, readonly=True) as s:
    print(s.statuses(['0-b-1'])['0-b-1'])
"""
        seen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
        assert seen.stdout.strip() == "running"
        raise RuntimeError("the caller fails after two finishes")
    statuses = store.statuses(["0-b-1", "1-b-1", "2-b-1"])
    assert statuses == {"0-b-1": Status.SUCCEEDED, "1-b-1": Status.SUCCEEDED,
                        "2-b-1": Status.RUNNING}


# -- crash safety ------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    from repx.store import JobRecord, OutputFile, Status, Store
    store = Store(sys.argv[1])
    big = [OutputFile(f"f{k}", k, "ab" * 32) for k in range(200)]
    i = 0
    while True:
        with store.batch():  # several records per transaction: SIGKILL lands inside one
            for _ in range(5):
                store.put(JobRecord(f"{i:06d}-w-1", Status.SUCCEEDED, exit_code=i, outputs=big))
                i += 1
        print(i, flush=True)
""")


@pytest.mark.parametrize("kill_after", [3, 40, 200])
def test_sigkill_of_writer_leaves_committed_records_intact(tmp_path: Path,
                                                           kill_after: int) -> None:
    root = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    committed = 0
    for _ in range(kill_after):
        line = proc.stdout.readline()
        assert line, "writer died on its own"
        committed = int(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with Store(root) as store:
        ids = [f"{i:06d}-w-1" for i in range(committed)]
        records = store.get_many(ids)
        assert len(records) == committed
        for i, job_id in enumerate(ids):
            rec = records[job_id]
            assert rec.exit_code == i and rec.status is Status.SUCCEEDED
            assert len(rec.outputs) == 200
        total = sum(1 for _ in store.records())
        assert total >= committed and total % 5 == 0  # whole transactions only
        store.put(JobRecord("after-w-1", Status.SUCCEEDED))  # the writer lock was released
        assert store.get("after-w-1") is not None


# -- outputs -----------------------------------------------------------------------------------


def make_outputs(store: Store, job_id: str) -> Path:
    out = store.out_dir(job_id)
    (out / "sub" / "deep").mkdir(parents=True)
    (out / "a.csv").write_text("x,y\n1,2\n")
    (out / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    (out / "sub" / "deep" / "c.txt").write_text("deep")
    (out / "empty").write_bytes(b"")
    (out / "slurm-123.out").write_text("SLURM's own log")
    (out / "sub" / "slurm-9.out").write_text("a real output that merely looks like a log")
    (out / "link.txt").symlink_to("a.csv")
    (out / "dangling").symlink_to("nowhere")
    (out / "loop").symlink_to("loop")
    meta = store.meta_dir(job_id)
    meta.mkdir(parents=True)
    (meta / "stdout.log").write_text("log")
    return out


def test_manifest(store: Store) -> None:
    out = make_outputs(store, "j-s-1")
    files = store.manifest("j-s-1")
    assert [f.path for f in files] == [
        "a.csv", "empty", "link.txt", "sub/b.bin", "sub/deep/c.txt", "sub/slurm-9.out"
    ]
    by_path = {f.path: f for f in files}
    assert by_path["sub/b.bin"].size == 25600
    assert by_path["a.csv"].blake3 == hash_file(out / "a.csv") == by_path["link.txt"].blake3
    import blake3

    assert by_path["empty"].blake3 == blake3.blake3(b"").hexdigest()
    assert by_path["sub/deep/c.txt"].blake3 == blake3.blake3(b"deep").hexdigest()
    with pytest.raises(StoreError, match="no output directory"):
        store.manifest("missing-s-1")


def test_verify_detects_changed_truncated_and_missing_files(store: Store) -> None:
    out = make_outputs(store, "j-s-1")
    rec = JobRecord("j-s-1", Status.SUCCEEDED, outputs=store.manifest("j-s-1"))
    assert store.verify(rec) == []
    (out / "extra.txt").write_text("added later")  # new files are not a problem
    assert store.verify(rec) == []

    (out / "a.csv").write_text("x,y\n9,9\n")  # same size, other content
    problems = store.verify(rec)
    assert len(problems) == 2 and all("content changed" in p for p in problems)  # + link.txt
    assert store.verify(rec, checksums=False) == []  # a stat-only check cannot see it

    with open(out / "sub" / "b.bin", "r+b") as fh:
        fh.truncate(100)
    (out / "sub" / "deep" / "c.txt").unlink()
    problems = store.verify(rec)
    text = "\n".join(problems)
    assert "b.bin: size is 100 bytes, recorded 25600" in text
    assert "c.txt: missing" in text
    assert len(problems) == 4
    assert len(store.verify(rec, checksums=False)) == 2

    import shutil

    shutil.rmtree(out)
    assert store.verify(rec) == [f"output directory {out} is missing"]


def test_delete_removes_records_and_outputs(store: Store) -> None:
    out = make_outputs(store, "j-s-1")
    (out / "sub").chmod(0o500)  # read-only folders (as Nix-copied inputs are) still go
    store.put(JobRecord("j-s-1", Status.SUCCEEDED))
    store.put(JobRecord("k-s-1", Status.FAILED))
    store.out_dir("orphan-s-1").mkdir(parents=True)  # a folder without a record
    assert store.delete(["j-s-1", "k-s-1", "orphan-s-1", "absent-s-1", "j-s-1"]) == 3
    assert store.get("j-s-1") is None and store.get("k-s-1") is None
    assert not (store.root / "outputs" / "j-s-1").exists()
    assert not (store.root / "outputs" / "orphan-s-1").exists()
    assert (store.root / "outputs").is_dir()
    assert store.delete([]) == 0


def test_job_ids_cannot_escape_outputs(store: Store) -> None:
    for bad in ["", ".", "..", "../x", "a/b"]:
        with pytest.raises(StoreError, match="invalid job id"):
            store.out_dir(bad)
        with pytest.raises(StoreError, match="invalid job id"):
            store.delete([bad])


# -- roots and meta ----------------------------------------------------------------------------


def test_roots(store: Store) -> None:
    assert store.roots() == []
    store.add_root("/nix/store/aaaa1111-lab")
    store.add_root("/nix/store/aaaa2222-lab/", pinned=True)
    store.add_root("/nix/store/bbbb3333-lab", name="paper")
    names = [r.name for r in store.roots()]
    assert names == ["aaaa1111-lab", "aaaa2222-lab", "paper"]
    assert [r.pinned for r in store.roots()] == [False, True, False]
    # Re-registering a pinned lab (as the next build does) keeps the pin.
    store.add_root("/nix/store/aaaa2222-lab/")
    assert {r.name: r.pinned for r in store.roots()}["aaaa2222-lab"] is True

    with pytest.raises(UsageError, match="ambiguous"):
        store.remove_root("aaaa")
    with pytest.raises(UsageError, match="no gc root"):
        store.remove_root("zzzz")
    removed = store.remove_root("aaaa1")
    assert removed.name == "aaaa1111-lab" and removed.lab_path == "/nix/store/aaaa1111-lab"
    assert store.remove_root("/nix/store/bbbb3333-lab").name == "paper"  # by lab path
    assert store.remove_root("aaaa2222-lab").pinned
    assert store.roots() == []


def test_meta(store: Store) -> None:
    assert store.get_meta("last_build") is None
    stats = {"jobs": 12, "ran": 3, "seconds": 1.5, "lab": "/nix/store/x", "by_stage": {"a": 1}}
    store.set_meta("last_build", stats)
    assert store.get_meta("last_build") == stats
    store.set_meta("last_build", {"jobs": 0})
    assert store.get_meta("last_build") == {"jobs": 0}


def test_meta_blobs_are_kept_with_their_record_and_rewritten_only_when_changed(
        store: Store) -> None:
    """A no-op build names the same up-to-date ids every time: the store writes them once.

    LMDB copies every page a transaction writes, so a rewritten 400 KB blob takes ~100 new
    pages each time, and an unchanged one none: the database's extent says which happened.
    """
    blob = os.urandom(400_000)
    store.set_meta("last_build", {"run": 0}, blobs={"up_to_date": blob})
    assert store.get_meta("last_build") == {"run": 0}
    assert store.get_meta_blob("last_build", "up_to_date") == blob
    assert store.get_meta_blob("last_build", "executed") is None
    assert store.get_meta_blob("other", "up_to_date") is None

    handle = store._handle()
    before = handle.used_bytes()
    for run in range(1, 11):
        store.set_meta("last_build", {"run": run}, blobs={"up_to_date": blob})
    unchanged_growth = handle.used_bytes() - before
    assert store.get_meta("last_build") == {"run": 10}
    assert store.get_meta_blob("last_build", "up_to_date") == blob
    assert unchanged_growth < len(blob) // 4, unchanged_growth

    before = handle.used_bytes()
    for run in range(11, 21):
        changed = os.urandom(400_000)
        store.set_meta("last_build", {"run": run}, blobs={"up_to_date": changed})
    assert store.get_meta_blob("last_build", "up_to_date") == changed
    assert handle.used_bytes() - before > len(blob), "a changed blob was not written"
    # A blob never stands in for a record of the same name.
    assert store.get_meta("up_to_date") is None
