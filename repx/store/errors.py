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


class StoreDamagedError(StoreError):
    """The store's database cannot be trusted: cut short, not an LMDB file, or corrupt.

    Raised before LMDB touches a damaged file where that can be seen (a file shorter than its
    own meta page says would make every read of the missing part a SIGBUS), and from LMDB's
    own corruption errors otherwise. The message ends by saying how to recover;
    :attr:`damage` is what is wrong, alone (``repx cache recover`` reports it).
    """

    def __init__(self, message: str, *, damage: str = "", detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.damage = damage or message


class StoreLostError(StoreError):
    """The database is missing or empty while ``outputs/`` holds job folders.

    Creating a fresh database there would make every job look never run; repx refuses and
    points to ``repx cache recover``.
    """


class StoreFullError(StoreError):
    """The filesystem holding the store has no space left (ENOSPC, EDQUOT, or the EIO a
    short write on a full disk gives LMDB)."""
