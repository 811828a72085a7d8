"""``Store.cancel_abandoned``: closes the queued and running records whose claimer is gone,
and leaves those a live process holds.

A ``repx cancel`` of a 10 000-task array closes 10 000 records in one transaction, and they
share one claimer: whether it is alive is looked up once per distinct claimer. These tests
mix claimers (this very process, a process that has exited, another host) and statuses in
one call and check every record afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from repx.store import JobRecord, Status, Store, owner_token, this_host


def job(n: int) -> str:
    return f"{n:032d}-stage-1"


def dead_token() -> tuple[int, str]:
    """The pid and owner token of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = owner_token(child.pid)
    child.wait()
    return child.pid, token


def test_only_records_whose_claimer_is_gone_are_cancelled(tmp_path: Path) -> None:
    dead_pid, dead = dead_token()
    live = owner_token()
    rows = {
        job(1): (Status.QUEUED, this_host(), dead_pid, dead),
        job(2): (Status.RUNNING, this_host(), dead_pid, dead),
        job(3): (Status.QUEUED, this_host(), os.getpid(), live),
        job(4): (Status.QUEUED, "elsewhere", 12345, "elsewhere:12345:1.000"),
        job(5): (Status.SUCCEEDED, this_host(), dead_pid, dead),
        job(6): (Status.QUEUED, this_host(), dead_pid, dead),
    }
    with Store(tmp_path / "store") as store:
        for job_id, (status, host, pid, owner) in rows.items():
            store.put(JobRecord(job_id, status, host=host, pid=pid, owner=owner,
                                slurm_id="7_1", reason="queued"))
        done = store.cancel_abandoned([*rows, job(99)], "canceller", "cancelled by test")
        after = store.get_many(list(rows))
    assert done == [job(1), job(2), job(6)]
    for job_id, (status, host, pid, owner) in rows.items():
        record = after[job_id]
        if job_id in done:
            assert (record.status, record.owner, record.reason) == (
                Status.CANCELLED, "canceller", "cancelled by test")
            assert record.finished is not None
            assert (record.host, record.pid, record.slurm_id) == (host, pid, "7_1")
        else:
            assert (record.status, record.owner, record.reason) == (status, owner, "queued")
