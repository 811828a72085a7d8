"""``repx cancel``: stop what repx submitted to SLURM and record it as cancelled."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from repx.engine.slurm.cli import SlurmCli
from repx.store import JobRecord, Status, Store, StoreError, owner_alive, owner_token, this_host
from repx.store.layout import read_units, unit_ids


def cancel_jobs(store: Store, job_ids: Iterable[str] | None = None,
                cli: SlurmCli | None = None) -> list[JobRecord]:
    """``repx cancel``: scancel what repx submitted (all, or ``job_ids`` and their
    scatter-gather units) and record it as cancelled; the records cancelled.

    A build still watching these jobs records the outcome itself when it sees SLURM cancel
    them; records whose build is gone (``--no-wait``) are taken over and closed here.
    """
    cli = cli or SlurmCli()
    if job_ids is None:
        records = [r for r in store.records() if r.status.active]
    else:
        wanted = list(dict.fromkeys(_with_units(store, job_ids)))
        records = list(store.get_many(wanted).values())
    active = [r for r in records if r.status.active and r.slurm_id]
    if not active:
        return []
    cli.scancel(r.slurm_id for r in active if r.slurm_id)
    me = owner_token()
    closed = []
    with store.batch():
        for record in active:
            if owner_alive(record.host, record.pid, record.owner):
                closed.append(record)  # its build records the cancellation
                continue
            if store.claim(record.job_id, me, host=this_host(), pid=os.getpid(),
                           lab=record.lab, run=record.run, stage=record.stage):
                store.finish(JobRecord(record.job_id, Status.CANCELLED, owner=me,
                                       reason="cancelled with `repx cancel`",
                                       slurm_id=record.slurm_id))
                closed.append(record)
    return closed


def _with_units(store: Store, job_ids: Iterable[str]) -> Iterator[str]:
    """Job ids plus the scatter/step units listed in each one's ``units.json``."""
    for job_id in job_ids:
        yield job_id
        try:
            units = read_units(store.meta_dir(job_id), job_id)
        except StoreError:
            continue
        if units is not None:
            yield from unit_ids(units)
