"""``repx cancel``: stop what repx submitted to SLURM and record it as cancelled."""

from __future__ import annotations

import functools
import glob
import json
import os
from collections.abc import Iterable, Iterator

from repx.engine.slurm.arrays import task_of
from repx.engine.slurm.cli import SlurmCli
from repx.engine.slurm.detached import ANCHOR_FILE, SUBMITTED_FILE
from repx.store import ACTIVE_STATUSES, JobRecord, Store, StoreError, owner_alive, owner_token
from repx.store.layout import META, OUTPUTS, read_units, unit_ids


def cancel_jobs(store: Store, job_ids: Iterable[str] | None = None,
                cli: SlurmCli | None = None) -> list[JobRecord]:
    """``repx cancel``: scancel what repx submitted (all, or ``job_ids`` and their
    scatter-gather units) and record it as cancelled; the records cancelled.

    A build still watching these jobs records the outcome itself when it sees SLURM cancel
    them; records whose build is gone (``--no-wait``) are taken over and closed here.
    """
    cli = cli or SlurmCli()
    if job_ids is None:
        records = list(store.records(ACTIVE_STATUSES))
    else:
        wanted = list(dict.fromkeys(_with_units(store, job_ids)))
        records = list(store.get_many(wanted).values())
    active = [r for r in records if r.status.active and r.slurm_id]
    # What compute nodes submitted for detached scatter-gather jobs (branches, gather,
    # anchor) is in no record until a later status adopts it: cancelled from the files.
    detached = _detached_submissions(store, None if job_ids is None else wanted)
    if detached:
        cli.scancel(detached)
    if not active:
        return []
    if job_ids is None:
        # Everything the store has queued: whole arrays, one id each (their tasks that
        # already ended are not touched), which slurmctld cancels at once.
        cli.scancel(sorted({task_of(r.slurm_id or "").split("_")[0] for r in active}))
    else:
        cli.scancel(r.slurm_id for r in active if r.slurm_id)
    # The jobs of one submission share their owner: each distinct one is looked up once.
    alive = functools.cache(owner_alive)
    watched = {r.job_id for r in active if alive(r.host, r.pid, r.owner)}
    cancelled = set(store.cancel_abandoned(
        [r.job_id for r in active if r.job_id not in watched], owner_token(),
        "cancelled with `repx cancel`"))
    # A build still watching its jobs records their cancellation itself.
    return [r for r in active if r.job_id in cancelled or r.job_id in watched]


def _detached_submissions(store: Store, job_ids: Iterable[str] | None) -> list[str]:
    """The SLURM ids a detached ``--no-wait`` build's nodes submitted (each scatter-gather
    job's ``detached.json`` and ``anchor``): of ``job_ids``, or of every job folder."""
    if job_ids is None:
        folders = [os.path.dirname(path) for path in glob.glob(
            os.path.join(glob.escape(str(store.root)), OUTPUTS, "*", META, SUBMITTED_FILE))]
        folders += [os.path.dirname(path) for path in glob.glob(
            os.path.join(glob.escape(str(store.root)), OUTPUTS, "*", META, ANCHOR_FILE))]
    else:
        folders = [str(store.meta_dir(job_id)) for job_id in job_ids]
    found: list[str] = []
    for folder in dict.fromkeys(folders):
        try:
            with open(os.path.join(folder, SUBMITTED_FILE), encoding="utf-8") as handle:
                submitted = json.load(handle)
        except (OSError, ValueError):
            submitted = {}
        if isinstance(submitted, dict) and isinstance(submitted.get("units"), dict):
            found += [v for v in submitted["units"].values() if isinstance(v, str)]
        try:
            with open(os.path.join(folder, ANCHOR_FILE), encoding="utf-8") as handle:
                anchor = handle.read().strip()
        except OSError:
            anchor = ""
        if anchor.isdigit():
            found.append(anchor)
    return sorted(set(found))


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
