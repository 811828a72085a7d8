"""The closure mark: a no-op build that found its closure succeeded lets the next one skip
the records, and only while nothing has written to the store since.

Real LMDB in temporary directories. The write "by another version of repx" is made with
py-lmdb directly, in its own process (one process may not open an environment twice).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from repx.engine.build import BuildOptions, run_build
from repx.engine.noop_index import index_path
from repx.lab import LabOptions, open_lab
from repx.lab.open import cache_dir
from repx.store import JobRecord, Status, Store
from tests.conftest import EXAMPLES, require_nix

IDS = [f"{n:032d}-stage-1.0" for n in range(50)]
MARK = "closure-of-test"


def filled(root: Path) -> Store:
    """A store holding a SUCCEEDED record for every id of ``IDS``."""
    store = Store(root)
    with store.batch():
        for job_id in IDS:
            store.put(JobRecord(job_id, Status.SUCCEEDED, exit_code=0))
    return store


def marked(store: Store) -> int:
    """Record the mark of ``IDS`` the way a no-op build does; the mark's transaction id."""
    succeeded, snapshot = store.closure_succeeded(IDS, MARK)
    assert succeeded
    store.set_meta("last_build", {"lab": "x"}, closure_mark=(MARK, snapshot))
    return snapshot + 1


def test_without_a_mark_the_records_answer(tmp_path: Path) -> None:
    with filled(tmp_path / "store") as store:
        assert store.closure_succeeded(IDS, MARK)[0]
        store.put(JobRecord(IDS[7], Status.FAILED, exit_code=1))
        assert not store.closure_succeeded(IDS, MARK)[0]
        assert not store.closure_succeeded([*IDS, "9" * 32 + "-missing-1.0"], MARK)[0]


def test_the_mark_answers_for_its_closure_only(tmp_path: Path) -> None:
    """Right after the no-op's write the mark vouches for its closure without reading a
    record (ids the store does not hold prove it), and for no other closure."""
    with filled(tmp_path / "store") as store:
        written = marked(store)
        assert store.closure_succeeded(IDS, MARK) == (True, written)
        assert store.closure_succeeded(["0" * 32 + "-never-stored-1.0"], MARK)[0]
        assert not store.closure_succeeded(["0" * 32 + "-never-stored-1.0"], "other")[0]


@pytest.mark.parametrize("write", ["put", "meta", "root", "batch", "delete"])
def test_any_other_write_removes_the_mark(tmp_path: Path, write: str) -> None:
    with filled(tmp_path / "store") as store:
        marked(store)
        if write == "put":
            store.put(JobRecord(IDS[3], Status.FAILED, exit_code=2))
        elif write == "meta":
            store.set_meta("something", {"a": 1})
        elif write == "root":
            store.add_root("/nix/store/" + "a" * 32 + "-repx-lab")
        elif write == "batch":
            with store.batch():
                store.put(JobRecord(IDS[3], Status.FAILED, exit_code=2))
        else:
            store.delete([IDS[3]])
        # Each of these makes the answer depend on the records again.
        assert not store.closure_succeeded(["0" * 32 + "-never-stored-1.0"], MARK)[0]
        expected = write in ("meta", "root")
        assert store.closure_succeeded(IDS, MARK)[0] is expected


def test_a_write_that_knows_nothing_of_the_mark_still_voids_it(tmp_path: Path) -> None:
    """A write by a program that leaves the mark in place (an older repx, a raw LMDB
    client) still moves the transaction id on, and the mark no longer matches."""
    root = tmp_path / "store"
    with filled(root) as store:
        marked(store)
    script = textwrap.dedent(f"""
        import blake3, lmdb
        env = lmdb.open({str(root / "db")!r}, max_dbs=8, subdir=True)
        jobs = env.open_db(b"jobs")
        with env.begin(write=True) as txn:
            txn.delete(blake3.blake3({IDS[5]!r}.encode()).digest(), db=jobs)
        env.close()
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    with Store(root) as store:
        assert not store.closure_succeeded(IDS, MARK)[0]


def test_a_compacted_copy_that_numbers_transactions_again_cannot_revive_the_mark(
        tmp_path: Path) -> None:
    """``mdb_copy -c`` (py-lmdb ``copy(compact=True)``) restarts the transaction ids at 1:
    the copy's later writes reach the mark's id again, and only their deleting the mark
    keeps it from vouching for records those writes changed."""
    root = tmp_path / "store"
    with filled(root) as store:
        for n in range(5):  # the mark's id well above the copy's first ones
            store.set_meta("padding", {"n": n})
        written = marked(store)
    copy = tmp_path / "copy"
    (copy / "db").mkdir(parents=True)
    script = textwrap.dedent(f"""
        import lmdb
        env = lmdb.open({str(root / "db")!r}, max_dbs=8, subdir=True, readonly=True)
        env.copy({str(copy / "db")!r}, compact=True)
        print(lmdb.open({str(copy / "db")!r}, max_dbs=8).info()["last_txnid"])
    """)
    restarted = int(subprocess.run([sys.executable, "-c", script], check=True,
                                   capture_output=True, text=True).stdout)
    assert restarted < written
    with Store(copy) as store:
        # The copy's content is the marked state itself: the mark still tells the truth.
        store.put(JobRecord(IDS[2], Status.FAILED, exit_code=1))
        for _ in range(written + 2):
            assert not store.closure_succeeded(IDS, MARK)[0]
            store.set_meta("padding", {"n": 0})


def test_a_write_between_the_check_and_the_record_keeps_no_mark(tmp_path: Path) -> None:
    with filled(tmp_path / "store") as store:
        succeeded, snapshot = store.closure_succeeded(IDS, MARK)
        assert succeeded
        store.put(JobRecord(IDS[1], Status.FAILED, exit_code=1))
        store.set_meta("last_build", {"lab": "x"}, closure_mark=(MARK, snapshot))
        assert not store.closure_succeeded(IDS, MARK)[0]


@pytest.mark.nix
def test_a_job_failed_after_a_marked_no_op_runs_again(tmp_path: Path) -> None:
    """Two no-op builds (the second answered by the mark), then a record changed by
    another writer: the next build runs that job again."""
    require_nix()
    folder = tmp_path / "simple"
    shutil.copytree(EXAMPLES / "simple", folder, symlinks=True,
                    ignore=shutil.ignore_patterns("result", "result-*", ".repx"))
    store_dir = folder / ".repx"
    options = LabOptions(lab_file=str(folder / "lab.nix"))
    first = run_build(options, store_dir, BuildOptions(jobs=2))
    graph = open_lab(LabOptions(lab_dir=str(folder / "result")), validate=False)
    assert first.exit_code == 0 and sorted(first.executed) == sorted(graph.jobs)
    for _ in range(2):
        again = run_build(options, store_dir, BuildOptions(jobs=2))
        assert again.executed == [] and sorted(again.up_to_date) == sorted(graph.jobs)
    index = index_path(cache_dir(), (folder / "result").resolve(), ())
    victim = sorted(graph.jobs)[0]
    with Store(store_dir) as store:
        # The no-op left its mark: the closure is vouched for without its records.
        assert store.closure_succeeded(["0" * 32 + "-never-stored-1.0"], index.name)[0]
        # ...and its up-to-date ids, the index's own text, in the last build's record.
        last = store.get_meta("last_build") or {}
        assert last.get("up_to_date_count") == len(graph.jobs)
        blob = store.get_meta_blob("last_build", last["up_to_date_blob"]) or b""
        assert sorted(blob.decode().split("\n")) == sorted(graph.jobs)
        record = store.get(victim)
        assert record is not None
        store.put(JobRecord(victim, Status.FAILED, exit_code=1, lab=record.lab,
                            run=record.run, stage=record.stage))
    rerun = run_build(options, store_dir, BuildOptions(jobs=2))
    assert rerun.exit_code == 0
    assert victim in rerun.executed
    assert sorted([*rerun.executed, *rerun.up_to_date]) == sorted(graph.jobs)


def test_ids_found_succeeded_in_the_current_snapshot_need_no_record(tmp_path: Path) -> None:
    """``statuses(succeeded=(ids, snapshot))``: ids :meth:`closure_succeeded` vouched for in
    a snapshot count as SUCCEEDED while no transaction has been committed since. An id that
    never had a record proves that none was read."""
    unstored = "0" * 32 + "-never-stored-1.0"
    with filled(tmp_path / "store") as store:
        succeeded, snapshot = store.closure_succeeded(IDS, MARK)
        assert succeeded
        vouched = frozenset([*IDS, unstored])
        statuses = store.statuses([*IDS[:3], unstored], succeeded=(vouched, snapshot))
        assert statuses == dict.fromkeys([*IDS[:3], unstored], Status.SUCCEEDED)


@pytest.mark.parametrize("write", ["put", "meta"])
def test_a_write_after_the_snapshot_makes_the_records_answer(tmp_path: Path,
                                                             write: str) -> None:
    """Any commit after the vouching snapshot (another build failing a job, a meta record)
    and the records are read again: the failed job is seen, the unstored id has no status."""
    unstored = "0" * 32 + "-never-stored-1.0"
    with filled(tmp_path / "store") as store:
        _, snapshot = store.closure_succeeded(IDS, MARK)
        if write == "put":
            store.put(JobRecord(IDS[1], Status.FAILED, exit_code=1))
        else:
            store.set_meta("something", {"a": 1})
        vouched = frozenset([*IDS, unstored])
        statuses = store.statuses([*IDS[:3], unstored], succeeded=(vouched, snapshot))
        failed = Status.FAILED if write == "put" else Status.SUCCEEDED
        assert statuses == {IDS[0]: Status.SUCCEEDED, IDS[1]: failed, IDS[2]: Status.SUCCEEDED}
