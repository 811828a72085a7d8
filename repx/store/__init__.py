"""repx's job store: what ran, how it ended, and where its outputs are.

See :mod:`repx.store.lmdb_store` for the layout and the concurrency rules, and
:mod:`repx.store.records` for the record encoding.
"""

from __future__ import annotations

from repx.store.errors import StoreError
from repx.store.lmdb_store import (
    DEFAULT_STORE,
    Store,
    hash_file,
    job_key,
    owner_alive,
    owner_token,
    this_host,
)
from repx.store.records import RECORD_FORMAT, JobRecord, OutputFile, Root, Status

__all__ = [
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
    "owner_alive",
    "owner_token",
    "this_host",
]
