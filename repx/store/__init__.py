"""repx's job store: what ran, how it ended, and where its outputs are.

:mod:`.lmdb_store` is the database and its concurrency rules, :mod:`.records` the record
encoding, :mod:`.layout` the job folders, :mod:`.gc` the gc roots and garbage collection,
:mod:`.health` the check of the data file before LMDB maps it, :mod:`.space` the map size
and the disk reserve, :mod:`.recover` the rebuilding of a lost or damaged database.

The names below are loaded on first use: :mod:`.layout` (and the analysis API, which reads
job folders inside stage scripts run by a bare ``python3``) must import without LMDB,
msgpack or BLAKE3 installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repx.store.errors import StoreError
    from repx.store.layout import DEFAULT_STORE
    from repx.store.lmdb_store import (
        Store,
        hash_file,
        job_key,
        live_claim,
        owner_alive,
        owner_token,
        this_host,
    )
    from repx.store.records import (
        ACTIVE_STATUSES,
        RECORD_FORMAT,
        JobRecord,
        OutputFile,
        Root,
        Status,
    )

_HOMES = {
    "StoreError": "repx.store.errors",
    "DEFAULT_STORE": "repx.store.layout",
    **dict.fromkeys(["Store", "hash_file", "job_key", "live_claim",
                     "owner_alive", "owner_token", "this_host"], "repx.store.lmdb_store"),
    **dict.fromkeys(["ACTIVE_STATUSES", "RECORD_FORMAT", "JobRecord", "OutputFile", "Root",
                     "Status"], "repx.store.records"),
}

__all__ = [
    "ACTIVE_STATUSES",
    "DEFAULT_STORE",
    "RECORD_FORMAT",
    "JobRecord",
    "OutputFile",
    "Root",
    "Status",
    "Store",
    "StoreError",
    "hash_file",
    "job_key",
    "live_claim",
    "owner_alive",
    "owner_token",
    "this_host",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'repx.store' has no attribute '{name}'")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
