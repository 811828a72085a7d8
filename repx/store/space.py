"""Room for the store: address space for its memory map, disk space for its commits.

**Address space.** LMDB maps the whole database into memory, and the map size is fixed when
the environment opens (it bounds how big the database may grow). Reserving address space
costs nothing where it is unlimited, so the map is then 1 TiB. Login nodes often limit it
(``ulimit -v``, RLIMIT_AS): there the map starts at a quarter of the limit, leaving the rest
to Python and its libraries, and grows (:func:`grown_map_size`) when the database needs more
— LMDB can remap a live environment. ``REPX_STORE_MAP_SIZE`` (or ``repx --store-map-size``)
sets the starting size outright.

**Disk space.** A commit that meets a full disk fails (``ENOSPC``, or ``EIO`` from a short
write), and a build that cannot record outcomes leaves claims behind. So every writable
environment keeps :data:`RESERVE_BYTES` of disk allocated beyond the end of its data file
(``fallocate`` with ``FALLOC_FL_KEEP_SIZE``: the file's size does not change, its blocks
exist): commits write into blocks that are already theirs, and when the disk fills up the
outcomes of running jobs can still be recorded. :func:`disk_is_full` tells the store to stop
starting jobs before the reserve runs out.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import resource
from functools import cache
from typing import Any

from repx.errors import UsageError

#: Environment variable that sets the map size (bytes, or with a K/M/G/T suffix).
MAP_SIZE_ENV = "REPX_STORE_MAP_SIZE"

#: The map size where the address space is not limited.
UNLIMITED_MAP_SIZE = 1 << 40

#: The smallest map repx starts with (LMDB itself raises it to the data file's size).
MIN_MAP_SIZE = 16 << 20

#: Free map space below which a write first grows the map: generous, so that one
#: transaction (a batch of finished jobs, a SLURM array marked queued) never fills it.
MAP_HEADROOM = 64 << 20

#: Disk kept allocated beyond the end of the data file (see the module docstring).
RESERVE_BYTES = 1 << 20

#: Below this much free space on the store's filesystem, no new job is started.
LOW_SPACE_BYTES = RESERVE_BYTES

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

_FALLOC_FL_KEEP_SIZE = 0x01


def parse_size(text: str, what: str = MAP_SIZE_ENV) -> int:
    """``"8G"``, ``"512M"``, ``"1.5T"``, ``"1048576"`` → bytes (binary units)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise UsageError(f"{what}={text!r} is not a size (examples: 4G, 512M, 1073741824)")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < MIN_MAP_SIZE:
        raise UsageError(f"{what}={text!r} is too small: the map needs at least "
                         f"{human(MIN_MAP_SIZE)}")
    return size


def human(size: int) -> str:
    """Bytes in binary units, for messages (``1.5 GiB``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def address_space_limit() -> int | None:
    """The soft RLIMIT_AS of this process in bytes (None: unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def configured_map_size() -> int | None:
    """The map size the user set (``REPX_STORE_MAP_SIZE``), or None."""
    text = os.environ.get(MAP_SIZE_ENV, "").strip()
    return parse_size(text) if text else None


def initial_map_size(data_bytes: int) -> int:
    """The map to open a store with whose data file holds ``data_bytes``."""
    configured = configured_map_size()
    if configured is not None:
        return max(configured, _page_round(data_bytes))
    limit = address_space_limit()
    if limit is None:
        return UNLIMITED_MAP_SIZE
    wanted = max(limit // 4, data_bytes + MAP_HEADROOM, MIN_MAP_SIZE)
    return _page_round(min(wanted, UNLIMITED_MAP_SIZE))


def grown_map_size(current: int, used: int) -> int:
    """The next map size for a database using ``used`` bytes of a ``current`` map."""
    return _page_round(max(2 * current, used + 2 * MAP_HEADROOM))


def can_map(extra: int) -> bool:
    """Whether ``extra`` more bytes of address space can be mapped now.

    Asked before growing the map: LMDB unmaps the old map before it maps the new one, and
    if that fails the environment is left without a map. A trial anonymous read-only
    mapping (no memory is committed) answers the question safely.
    """
    if extra <= 0:
        return True
    try:
        probe = mmap.mmap(-1, extra, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                          prot=mmap.PROT_READ)
    except (OSError, OverflowError, ValueError):
        return False
    probe.close()
    return True


def map_error_hint(wanted: int, data_bytes: int) -> str:
    """The advice that ends every "cannot map the store" message."""
    limit = address_space_limit()
    why = (f"the address space of this process is limited to {human(limit)} (ulimit -v "
           f"{limit // 1024})" if limit is not None else "the system refused the mapping")
    return (f"cannot map {human(wanted)} for it: {why}. Set {MAP_SIZE_ENV} (or `repx "
            f"--store-map-size SIZE`) to a size that fits (at least {human(MIN_MAP_SIZE)} "
            f"and the database's {human(data_bytes)}), or raise the limit")


def _page_round(size: int) -> int:
    page = mmap.PAGESIZE
    return (size + page - 1) // page * page


# ------------------------------------------------------------------------------ disk


@cache
def _fallocate() -> Any:
    """glibc's ``fallocate(2)`` wrapper (not ``posix_fallocate``, which falls back to
    writing bytes into the file where the filesystem cannot allocate: never beside LMDB).
    Looked up in the symbols the process already has (the C library), on first use."""
    import ctypes

    try:
        func = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    func.restype = ctypes.c_int
    return func


def reserve(fd: int, end: int) -> int | None:
    """Keep disk allocated for the file at ``fd`` up to ``end`` + :data:`RESERVE_BYTES`,
    without changing its size. Returns the errno on failure (None: done).

    ``EOPNOTSUPP`` (a filesystem that cannot allocate ahead) is returned like any failure;
    the caller stops asking.
    """
    func = _fallocate()
    if func is None:
        return errno.EOPNOTSUPP
    if func(fd, _FALLOC_FL_KEEP_SIZE, 0, end + RESERVE_BYTES) == 0:
        return None
    import ctypes

    return ctypes.get_errno()


def allocated_bytes(fd: int) -> int:
    """Bytes the filesystem holds for the file at ``fd``: its blocks, those allocated beyond
    its end included (0 when unknown). A file with holes counts less than its size, which
    only makes a caller allocate again."""
    try:
        return os.fstat(fd).st_blocks * 512
    except (OSError, AttributeError):
        return 0


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem of ``path``."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_is_full(path: str) -> bool:
    """Too little free space on the filesystem of ``path`` to start another job."""
    free = free_bytes(path)
    return free is not None and free < LOW_SPACE_BYTES


def is_no_space(error: BaseException, path: str) -> bool:
    """Whether an OSError or LMDB error met a full disk (or quota) under ``path``.

    ``EIO`` counts only while the filesystem is full: LMDB gives it for a short write ("the
    filesystem full?"), but on a disk with room it is a real I/O error and is told as such.
    """
    code = getattr(error, "errno", None)
    if not isinstance(code, int):
        code = getattr(error, "code", None)
    text = str(error)
    if code in (errno.ENOSPC, errno.EDQUOT) or any(
            os.strerror(e) in text for e in (errno.ENOSPC, errno.EDQUOT)):
        return True
    if code == errno.EIO or os.strerror(errno.EIO) in text:
        return disk_is_full(path)
    return False


def no_space_message(store_root: str, path: str, action: str) -> str:
    """One message for every write that met a full disk."""
    free = free_bytes(path)
    left = f" ({human(free)} free)" if free is not None else ""
    return (f"cannot {action}: no space left on device{left} on the filesystem of the job "
            f"store at {store_root}; free some space (or move the store with --store), then "
            "run the build again")
