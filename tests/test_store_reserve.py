"""The disk reserve ahead of the data file is kept once, not once per process.

Each process used to allocate the reserve again on its first write (``fallocate``, and the
import of ctypes to reach it): a few ms of every no-op build. The blocks an earlier process
allocated are the file's, so a new process that finds them counts them instead. Real LMDB,
real ``fallocate`` on the temporary directory's filesystem; each "process" is a Store opened
after the last one closed (its environment, and what it knew of the reserve, gone).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from repx.store import JobRecord, Status, Store, space


def test_a_reserve_kept_by_an_earlier_open_is_counted_not_made_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    reserve = space.reserve

    def counted(fd: int, end: int) -> int | None:
        calls.append(end)
        return reserve(fd, end)

    monkeypatch.setattr(space, "reserve", counted)
    root = tmp_path / "store"
    with Store(root) as store:
        store.put(JobRecord("a-stage-1", Status.SUCCEEDED))
        h = store._handle()
        used = h.used_bytes()
        assert h.data_fd is not None
        if space.allocated_bytes(h.data_fd) < used + space.RESERVE_BYTES // 2:
            pytest.fail("this filesystem keeps no blocks beyond a file's end (fallocate "
                        "KEEP_SIZE); the reserve cannot be tested here")
    assert len(calls) == 1  # the first store of all allocates it
    with Store(root) as store:
        store.put(JobRecord("b-stage-1", Status.SUCCEEDED))
    assert len(calls) == 1  # the next open finds it
    with Store(root) as store:
        with store.batch():  # the data grows past half the reserve
            for i in range(3000):
                store.put(JobRecord(f"c{i}-stage-1", Status.SUCCEEDED, reason="x" * 300))
        assert store._handle().used_bytes() > used + space.RESERVE_BYTES // 2
        assert len(calls) == 1
        store.put(JobRecord("d-stage-1", Status.SUCCEEDED))  # the next write reserves
    assert len(calls) == 2
