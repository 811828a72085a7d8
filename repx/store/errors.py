"""The store's error type.

Kept in its own module so that ``records`` (pure encoding) and ``lmdb_store`` (I/O) can both
raise it without importing each other.
"""

from __future__ import annotations

from repx.errors import RepxError


class StoreError(RepxError):
    """The job store cannot be opened, read or written as asked.

    Messages name the store path (or the record) at fault, because a user with several labs
    and several ``.repx`` directories must be able to tell which one is broken.
    """
