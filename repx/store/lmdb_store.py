"""The job store: one LMDB environment per store directory, plus the jobs' output folders.

Layout of a store (default ``./.repx``)::

    <root>/db/                      LMDB environment; sub-databases ``jobs``, ``roots``, ``meta``
    <root>/roots.json               a copy of the gc roots (``repx cache recover``)
    <root>/outputs/<job-id>/out/    what the job produced (``$out``)
    <root>/outputs/<job-id>/repx/   stdout.log, stderr.log, inputs.json, params.json, and
                                    record.json (its record) once the job finished

Why LMDB: the planner must learn the status of tens of thousands of jobs on every
``repx build`` (one read transaction, memory-mapped, no parsing of a log), a commit is atomic
and durable (a crash never leaves a half-written record, and never marks an unfinished job
done), and several processes — two ``repx build`` in one lab, a ``repx status`` beside them —
may open one store at once, serialised by LMDB's own lock file.

The database is an index over the job folders, never silently replaced: a data file cut short
is refused before LMDB maps it (:mod:`.health`), a missing or empty one beside job folders is
refused (:class:`StoreLostError`), and ``repx cache recover`` (:mod:`.recover`) rebuilds it
from the folders. The map is sized to the address space and grows; a disk reserve lets
outcomes be recorded on a full disk (:mod:`.space`).

Keys of ``jobs`` are the 32-byte BLAKE3 digest of the job id: fixed-size keys keep the B-tree
shallow and dense whatever the length of the human-readable id, which the record carries.

Concurrency rules LMDB imposes and this module hides:

* an environment must be opened **once per process** (opening it twice breaks its locks), so
  environments are cached in a module dict keyed by the real path and shared by every
  :class:`Store` on that path; a forked child must open the store anew (LMDB forbids using an
  environment across ``fork``), and a Store object carried across a fork says so;
* one thread may hold only one write transaction (the writer lock is not re-entrant), so a
  :meth:`Store.batch` in progress is remembered per thread and every write of that thread
  joins it instead of deadlocking on a second ``begin``.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import gc
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import blake3
import lmdb

from repx.errors import UsageError
from repx.store import health, layout, space
from repx.store.errors import StoreDamagedError, StoreError, StoreFullError, StoreLostError
from repx.store.records import (
    ACTIVE_STATUSES,
    RECORD_FORMAT,
    STATUS_BY_CODE,
    JobRecord,
    OutputFile,
    Root,
    Status,
    pack_meta,
    record_to_json,
    restamp,
    status_of,
    unpack_meta,
)

T = TypeVar("T")

#: The database file inside ``<store>/db``.
DATA_FILE = "data.mdb"


#: Files at least this big are hashed with BLAKE3's multi-threaded mode; below it, threads
#: cost more than they save.
_PARALLEL_HASH_BYTES = 64 << 20

#: A live process holding a claim's pid is taken for a *different* process only if it started
#: this many seconds after the claim's token was made. Generous on purpose: start times are
#: derived from the boot time, which moves when the clock is stepped (NTP, VM resume), and
#: mistaking a live owner for a dead one would run a job twice in one ``out/``, while the
#: opposite mistake only leaves the job waiting for that unrelated process to end.
_PID_REUSE_SLACK = 120.0

#: How many records :meth:`Store.records` reads per transaction, so that a slow consumer does
#: not pin an old snapshot (and stop LMDB from reusing freed pages) for its whole loop.
_RECORDS_CHUNK = 1024


def job_key(job_id: str) -> bytes:
    """The LMDB key of a job: the BLAKE3 digest of its id."""
    return blake3.blake3(job_id.encode()).digest()


# ---------------------------------------------------------------------------------------------
# Process identity (who owns a claim, and is it still alive?)


@functools.cache
def this_host() -> str:
    """Host name used in claims; cached because it is asked once per claim."""
    import socket  # only here: a store that is only read (a no-op build) never claims

    return socket.gethostname()


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def process_start_time(pid: int) -> float | None:
    """Start time of a live process (seconds since the epoch, ±1 s), or None if unknown.

    Used to tell a claim's owner from an unrelated process that later got the same pid: pids
    wrap, and a busy machine reuses them within hours.
    """
    boot = _boot_time()
    if boot is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
        fields = text[text.rindex(")") + 2 :].split()
        ticks = int(fields[19])  # field 22 of the whole line
    except (OSError, ValueError, IndexError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def owner_token(pid: int | None = None) -> str:
    """The owner token of a process: ``host:pid:start``.

    ``start`` is the process's start time, so a token stays unique even when the pid is
    reused, and :func:`owner_alive` can tell the two processes apart.
    """
    pid = os.getpid() if pid is None else pid
    start = process_start_time(pid)
    if start is None:
        start = time.time()
    return f"{this_host()}:{pid}:{start:.3f}"


def _parse_owner(owner: str) -> tuple[str, int | None, float | None]:
    host, pid, start = "", None, None
    parts = owner.rsplit(":", 2)
    if len(parts) == 3:
        host = parts[0]
        with contextlib.suppress(ValueError):
            pid = int(parts[1])
        with contextlib.suppress(ValueError):
            start = float(parts[2])
    return host, pid, start


def owner_alive(host: str, pid: int | None, owner: str = "") -> bool:
    """Might the process that made a claim still be working on it?

    A claim from another host counts as alive: we cannot look at its processes, and wrongly
    taking over a job that is still running (two writers in one ``out/``) is worse than
    leaving it to the user to clear a claim whose process is gone. On this host, the
    owner is dead when its pid does not exist, or when the pid now belongs to a process that
    started after the token was made (pid reuse). A claim with no usable pid is treated as
    dead: :meth:`Store.claim` always records one, so such a record was not made by a live
    claim and must not block the job forever.
    """
    t_host, t_pid, t_start = _parse_owner(owner)
    host = host or t_host
    pid = pid if pid is not None else t_pid
    if host != this_host():
        return True
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, but belongs to another user
    # Only for a start that is a plausible epoch time: a token made with some other clock
    # (uptime, monotonic) would otherwise look older than any process, hence dead.
    if t_start is not None and t_start > 1e9 and t_pid == pid:
        started = process_start_time(pid)
        if started is not None and started > t_start + _PID_REUSE_SLACK:
            return False
    return True


def live_claim(record: JobRecord) -> bool:
    """Is the job RUNNING or QUEUED under an owner that may still be alive?"""
    return record.status.active and owner_alive(record.host, record.pid, record.owner)


# ---------------------------------------------------------------------------------------------
# Environment cache (one lmdb.Environment per process per path)


class _Gate:
    """The transactions this process has open on an environment, and the remap of its map
    (growing it) that must wait until there are none: LMDB invalidates every transaction of
    the environment when its map is replaced.

    Readers never wait for a remap that is only pending (a thread already inside a
    transaction may open another one: waiting would deadlock it); a remap waits for every
    transaction to end, and new ones wait while it runs. A thread that is inside a
    transaction never remaps (:attr:`depth`).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._remapping = False
        self._local = threading.local()

    @property
    def depth(self) -> int:
        """How many transactions the calling thread has open."""
        return getattr(self._local, "depth", 0)

    @contextlib.contextmanager
    def txn(self) -> Iterator[None]:
        with self._cond:
            while self._remapping and not self.depth:
                self._cond.wait()
            self._active += 1
        self._local.depth = self.depth + 1
        try:
            yield
        finally:
            self._local.depth -= 1
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def remap(self) -> Iterator[None]:
        with self._cond:
            while self._remapping or self._active:
                self._cond.wait()
            self._remapping = True
        try:
            yield
        finally:
            with self._cond:
                self._remapping = False
                self._cond.notify_all()


@dataclass
class _Env:
    path: str
    env: lmdb.Environment
    jobs: Any
    roots: Any
    meta: Any
    writable: bool
    #: The store directory (``path`` is its ``db`` folder), for messages.
    root: str = ""
    #: The size of the memory map, and of a page, in bytes.
    map_size: int = 0
    page_size: int = 4096
    #: Writable environments: the data file, open for :func:`space.reserve`, and how far the
    #: disk is reserved (None when the filesystem cannot allocate ahead).
    data_fd: int | None = None
    reserved_to: int = 0
    #: Whether the store's filesystem was too full to start a job when the current (or
    #: last) write transaction began (:func:`space.disk_is_full`).
    disk_full: bool = False
    users: int = 0
    #: Per-thread write transaction of an open :meth:`Store.batch`.
    local: threading.local = field(default_factory=threading.local)
    gate: _Gate = field(default_factory=_Gate)

    def adopt(self, other: _Env) -> None:
        """Take over ``other``'s environment (a reopen), keeping this handle's identity:
        every Store on the path holds this object."""
        self.close_fd()
        self.env, self.jobs, self.roots, self.meta = other.env, other.jobs, other.roots, other.meta
        self.writable, self.map_size, self.page_size = (other.writable, other.map_size,
                                                        other.page_size)
        self.data_fd, self.reserved_to = other.data_fd, other.reserved_to

    def close_fd(self) -> None:
        if self.data_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.data_fd)
            self.data_fd = None

    def used_bytes(self) -> int:
        """How much of the map the committed database spans (the latest commit of any
        process: LMDB reads it from the meta page)."""
        return (self.env.info()["last_pgno"] + 1) * self.page_size


_ENVS: dict[str, _Env] = {}
_ENVS_LOCK = threading.Lock()

#: Meta key of the closure mark (:meth:`Store.closure_succeeded`).
_CLOSURE_MARK = b"closure_mark"


def _meta_blob_key(key: str, name: str) -> bytes:
    """Where :meth:`Store.set_meta` keeps the blob ``name`` of ``key``: a NUL between them,
    which no meta key holds, so a blob never takes the place of a meta record."""
    return f"{key}\0{name}".encode()


def _status_of_value(value: bytes) -> Status:
    """A record's status from its first two bytes (the whole record only when they are
    not a known status of this format)."""
    code = value[1] if value[0] == RECORD_FORMAT else 0
    found = STATUS_BY_CODE[code] if 0 < code < 128 else None
    return found if found is not None else status_of(value)


def _good_mark(txn: lmdb.Transaction, h: _Env) -> str | None:
    """The closure the store's mark names, when the mark is good in the snapshot of
    ``txn`` (written by the snapshot's own transaction: nothing has been written since)."""
    value = txn.get(_CLOSURE_MARK, db=h.meta)
    if value is None:
        return None
    try:
        held = unpack_meta(bytes(value))
    except StoreError:
        return None
    name = held.get("closure")
    return name if isinstance(name, str) and held.get("txn") == txn.id() else None


def _each_record(txn: lmdb.Transaction, h: _Env, job_ids: Iterable[str],
                 convert: Callable[[bytes], T]) -> dict[str, T]:
    """``convert`` applied to the stored value of every given job that has a record, in
    the snapshot of ``txn``."""
    out: dict[str, T] = {}
    get = txn.cursor(db=h.jobs).get
    job_id = ""
    try:
        for job_id in job_ids:
            value = get(blake3.blake3(job_id.encode()).digest())
            if value is not None:
                out[job_id] = convert(value)
    except StoreError as exc:
        raise StoreError(f"job {job_id}: {exc.message}") from exc
    return out


#: Environments inherited across a fork, closed when the child opens that store again.
_INHERITED: dict[str, _Env] = {}


def _forget_envs_after_fork() -> None:
    """A forked child must not use its parent's environments (LMDB forbids it).

    They are set aside rather than closed here (an at-fork hook should do no I/O) and closed
    when the child opens the same store: py-lmdb refuses a second open of an environment
    that is still open in the process, and the inherited one counts. Closing in the child
    leaves the parent's locks alone (fcntl locks are not inherited) and clears only the
    child's reader slots.
    """
    global _ENVS_LOCK
    _INHERITED.update(_ENVS)
    _ENVS.clear()
    _ENVS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_envs_after_fork)


def _open_env(path: str, writable: bool, root: str) -> _Env:
    """Open the environment at ``path``: read-write (creating it) or strictly read-only.

    Read-only matters beyond permissions: py-lmdb opens the named databases of a writable
    environment in a *write* transaction (a read transaction's handles do not survive it), so
    a writable open waits for the writer lock. A ``repx status`` beside a build that is
    committing a batch must not wait, so read-only stores open the environment read-only.

    The data file is checked first (:mod:`.health`): LMDB would map a file cut short and die
    of SIGBUS reading it. The map is sized to the address space (:mod:`.space`).
    """
    data = os.path.join(path, DATA_FILE)
    found = health.check_data_file(data, root)
    data_bytes = found.size if found is not None else 0
    configured = space.configured_map_size()
    map_size = space.initial_map_size(data_bytes)
    env = None
    while env is None:
        try:
            env = lmdb.open(
                path,
                map_size=map_size,
                max_dbs=8,
                subdir=True,
                lock=True,
                readonly=not writable,
                create=writable,
                # One fsync per commit, not two: LMDB flushes the data pages, then writes
                # the meta page unflushed (the next commit, or closing the store, flushes
                # it). The database stays consistent; a machine crash may undo the last
                # commit, which only makes its jobs run again. A build commits once per
                # job it starts, so this halves the time its loop waits on the disk.
                sync=True,
                metasync=False,
                max_readers=512,
            )
        except lmdb.MemoryError as exc:
            # Too big for the address space left: halve, unless the user chose the size.
            if configured is not None or map_size // 2 < max(space.MIN_MAP_SIZE, data_bytes):
                raise StoreError(f"cannot open the job store at {root}: "
                                 + space.map_error_hint(map_size, data_bytes)) from exc
            map_size //= 2
        except (lmdb.InvalidError, lmdb.VersionMismatchError, lmdb.CorruptedError) as exc:
            raise _damaged(root, data, exc) from exc
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the job store at {path}: {exc}") from exc
    try:
        env.reader_check()  # free reader slots left by processes that were killed
        dbs = _open_dbs(env, writable)
        info, page_size = env.info(), env.stat()["psize"]
    except (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError) as exc:
        env.close()
        raise _damaged(root, data, exc) from exc
    except lmdb.Error as exc:
        env.close()
        raise StoreError(
            f"the job store at {path} is not a repx store or is damaged: {exc}"
        ) from exc
    handle = _Env(path, env, *dbs, writable=writable, root=root, map_size=info["map_size"],
                  page_size=page_size)
    if writable:
        with contextlib.suppress(OSError):
            handle.data_fd = os.open(data, os.O_RDWR | os.O_CLOEXEC)
    return handle


def _damaged(root: str, data: str, exc: Exception) -> StoreDamagedError:
    """The error for a data file LMDB itself refuses or finds corrupt."""
    return health.damaged(root, f"LMDB cannot read its database {data} ({exc})")


def _open_dbs(env: lmdb.Environment, writable: bool) -> list[Any]:
    """The three named databases. A read-only open can race the build that is creating the
    store (its file exists, its databases not yet): wait up to 2 s for them."""
    deadline = time.monotonic() + 2.0
    while True:
        try:
            return [env.open_db(name, create=writable) for name in (b"jobs", b"roots", b"meta")]
        except lmdb.NotFoundError:
            if writable or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _acquire(path: str, want_write: bool, root: str) -> _Env:
    """Share one environment per path in this process, upgrading it to read-write if asked.

    The upgrade (a read-only Store was opened first, then a writable one) closes and reopens
    the environment under the same handle, so every Store on the path follows; a read that
    another thread had in flight on the old environment fails with a StoreError.
    """
    with _ENVS_LOCK:
        handle = _ENVS.get(path)
        if handle is None:
            stale = _INHERITED.pop(path, None)
            if stale is not None:
                with contextlib.suppress(Exception):
                    stale.env.close()
                stale.close_fd()
            handle = _open_env(path, want_write, root)
            _ENVS[path] = handle
        elif want_write and not handle.writable:
            _reopen_writable(handle)
        handle.users += 1
        return handle


def _reopen_writable(handle: _Env) -> None:
    handle.env.close()  # LMDB: never two opens of one environment in a process
    try:
        handle.adopt(_open_env(handle.path, True, handle.root))
    except StoreError:
        # Put the read-only environment back so the Stores already open keep working.
        handle.adopt(_open_env(handle.path, False, handle.root))
        raise


def _release(handle: _Env) -> None:
    with _ENVS_LOCK:
        handle.users -= 1
        if handle.users <= 0 and _ENVS.get(handle.path) is handle:
            del _ENVS[handle.path]
            # The meta page of the last commit is not flushed by the commit (metasync off):
            # flush it now, so a closed store holds every commit (read-only: refused, free).
            with contextlib.suppress(lmdb.Error):
                handle.env.sync(True)
            handle.env.close()
            handle.close_fd()


# ---------------------------------------------------------------------------------------------
# The store


def _job_folders(outputs: Path, *, first_only: bool = False) -> int:
    """How many folders ``outputs`` holds (1 for "some" with ``first_only``)."""
    count = 0
    try:
        with os.scandir(outputs) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    count += 1
                    if first_only:
                        break
    except OSError:
        pass
    return count


def _has_job_folders(outputs: Path) -> bool:
    return _job_folders(outputs, first_only=True) > 0


def _refuse_lost_database(root: Path) -> None:
    """Raise :class:`StoreLostError` when the database is missing or empty beside job
    folders (see :class:`Store`)."""
    data = root / "db" / DATA_FILE
    try:
        size = data.stat().st_size
    except FileNotFoundError:
        size = None
    except OSError:
        return  # unreadable: opening it says why
    if size or not _has_job_folders(root / layout.OUTPUTS):
        return
    folders = _job_folders(root / layout.OUTPUTS)
    state = "is missing" if size is None else "is empty"
    raise StoreLostError(
        f"the job store at {root} has lost its database: {data} {state}, but "
        f"{root / layout.OUTPUTS} holds {folders} job folder{'s' if folders != 1 else ''}. "
        "A build now would run every job again. `repx cache recover --store "
        f"{root}` rebuilds the records from the job folders (each complete one becomes "
        f"up to date again); to start afresh instead, remove {root / layout.OUTPUTS}.")


def _check_job_id(job_id: str) -> str:
    """Job ids become directory names under outputs/: refuse anything that could escape it."""
    if (
        not job_id
        or job_id in (".", "..")
        or "/" in job_id
        or "\0" in job_id
        or (os.altsep is not None and os.altsep in job_id)
    ):
        raise StoreError(f"invalid job id {job_id!r}")
    return job_id


def hash_file(path: str | os.PathLike[str], size: int | None = None) -> str:
    """BLAKE3 hex digest of a file's content (memory-mapped, no Python-level copy)."""
    if size is None:
        size = os.stat(path).st_size
    threads = blake3.blake3.AUTO if size >= _PARALLEL_HASH_BYTES else 1
    return blake3.blake3(max_threads=threads).update_mmap(path).hexdigest()


def _rmtree(path: Path) -> None:
    """Remove a tree even when the job made parts of it read-only (Nix-copied inputs are)."""

    def onerror(func: Callable[..., Any], name: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
        func(name)

    shutil.rmtree(path, onerror=onerror)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while decoding many records.

    Decoding 20 000 records allocates ~10^5 containers, each allocation batch triggering a
    young-generation collection that re-scans everything created so far: measured here, it
    doubled and made erratic (80-190 ms) the time of ``get_many``. The records hold no cycles,
    so nothing is lost by collecting after the loop instead of during it.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def verify_outputs(out: Path, record: JobRecord, *, checksums: bool = True) -> list[str]:
    """What is wrong with the outputs in ``out`` of a record (see :meth:`Store.verify`)."""
    if not out.is_dir():
        return [f"output directory {out} is missing"]
    problems: list[str] = []
    for f in record.outputs:
        path = out / f.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            problems.append(f"{path}: missing")
            continue
        except OSError as exc:
            problems.append(f"{path}: cannot be read ({exc.strerror})")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{path}: is no longer a regular file")
        elif st.st_size != f.size:
            problems.append(f"{path}: size is {st.st_size} bytes, recorded {f.size}")
        elif checksums:
            try:
                digest = hash_file(path, st.st_size)
            except OSError as exc:
                problems.append(f"{path}: cannot be read ({exc.strerror})")
                continue
            if digest != f.blake3:
                problems.append(f"{path}: content changed (blake3 {digest}, recorded "
                                f"{f.blake3})")
    return problems


class _MapGrown(StoreError):
    """A write filled the map, which has been grown; the write may simply run again."""


class _MapFull(StoreError):
    """A write inside a batch filled the map: the batch cannot be replayed."""


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _runs_again_if_map_grew(method: _Method) -> _Method:
    """Run a write method again when its transaction filled the map (it was aborted, so
    nothing of it happened, and the map is bigger now): each write method is one
    transaction, which makes running it again the same as running it once."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        for _attempt in range(3):
            try:
                return method(self, *args, **kwargs)
            except _MapGrown:
                continue
        return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Store:
    """A repx job store at ``root`` (see the module docstring for the layout and rules).

    Thread-safe: any number of threads may call one ``Store`` (or several ``Store`` objects on
    the same path) at once. Several processes may open the same store at once.
    """

    def __init__(self, root: Path | str, *, readonly: bool = False,
                 recovering: bool = False) -> None:
        """Open (``readonly=False``: creating if need be) the store at ``root``.

        A database that is missing or empty while ``outputs/`` holds job folders is refused
        (:class:`StoreLostError`): a fresh one would make every job look never run. Only
        ``repx cache recover`` opens such a store (``recovering``), to give the folders
        their records back.
        """
        self.root = Path(os.path.abspath(root))
        self.readonly = readonly
        db = self.root / "db"
        if not recovering:
            _refuse_lost_database(self.root)
        if readonly:
            if not (db / DATA_FILE).is_file() or not (db / DATA_FILE).stat().st_size:
                raise StoreError(f"no repx store at {self.root} (missing {db}/{DATA_FILE})")
        else:
            try:
                db.mkdir(parents=True, exist_ok=True)
                (self.root / layout.OUTPUTS).mkdir(exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the job store at {self.root}: {exc}") from exc
        self._pid = os.getpid()
        self._h: _Env | None = _acquire(os.path.realpath(db), not readonly, str(self.root))

    @staticmethod
    def exists(root: Path | str) -> bool:
        """Whether ``root`` holds a store (a dry run must not create one): a database, or job
        folders whose database is lost (opening the store then explains)."""
        root = Path(root)
        return (root / "db" / DATA_FILE).is_file() or _has_job_folders(root / layout.OUTPUTS)

    # -- plumbing ---------------------------------------------------------------------------

    def _handle(self) -> _Env:
        h = self._h
        if h is None:
            raise StoreError(f"the job store at {self.root} is closed")
        if self._pid != os.getpid():
            raise StoreError(
                f"the job store at {self.root} was opened before a fork; open a new Store "
                "in the child process"
            )
        return h

    def _located(self, exc: StoreError) -> StoreError:
        """The same error, its message naming this store if it does not yet (a corrupt record
        does not know which store it was read from)."""
        if str(self.root) in exc.message:
            return exc
        return type(exc)(f"{exc.message} (job store at {self.root})", detail=exc.detail)

    @contextlib.contextmanager
    def _txn(self, *, write: bool) -> Iterator[tuple[lmdb.Transaction, _Env]]:
        """A read or write transaction; inside a batch, the batch's own (open) one.

        Joining the batch matters twice: reads see the batch's uncommitted writes, and
        a second write ``begin`` on this thread would deadlock on LMDB's writer lock.

        A write that fills the map is aborted; the map is grown and :class:`_MapGrown`
        raised, which the write methods (:func:`_runs_again_if_map_grew`) answer by running
        once more. Outside a batch, writes first make room (:meth:`_make_room`).
        """
        h = self._handle()
        if write and self.readonly:
            raise StoreError(f"the job store at {self.root} was opened read-only")
        action = "write" if write else "read"
        joined = getattr(h.local, "txn", None)
        try:
            if joined is not None:
                try:
                    yield joined, h
                except lmdb.MapFullError as exc:
                    raise _MapFull(f"the job store at {self.root} filled its map of "
                                   f"{space.human(h.map_size)} in a batch of writes") from exc
                return
            if write:
                self._make_room(h)
            try:
                with self._begun(h, write) as txn, txn:
                    yield txn, h
            except lmdb.MapFullError as exc:
                self._grow_map(h, required=True)  # the transaction is aborted: none is open
                raise _MapGrown(f"the job store at {self.root} filled its map; it has been "
                                f"grown to {space.human(h.map_size)}: run the command "
                                "again") from exc
        except lmdb.Error as exc:
            raise self._lmdb_error(exc, action) from exc
        except StoreError as exc:
            located = self._located(exc)
            if located is exc:
                raise
            raise located from exc

    @contextlib.contextmanager
    def _begun(self, h: _Env, write: bool) -> Iterator[lmdb.Transaction]:
        """A transaction begun on ``h``, held open (and counted by its gate) for the block.

        ``MapResizedError`` means another process grew the database beyond this process's
        map: the map follows (:meth:`_grow_map`) and the begin is tried again.
        """
        for attempt in range(2):
            with h.gate.txn():
                try:
                    txn = h.env.begin(write=write, buffers=not write)
                except lmdb.MapResizedError:
                    if attempt:
                        raise
                else:
                    if write:
                        # Whatever this transaction writes may change a status the mark
                        # vouches for; a no-op build puts it back in the same transaction.
                        txn.delete(_CLOSURE_MARK, db=h.meta)
                    yield txn
                    return
            self._grow_map(h, required=True)

    def _lmdb_error(self, exc: lmdb.Error, action: str) -> StoreError:
        """The StoreError that tells what an LMDB error means for this store."""
        db = str(self.root / "db")
        if isinstance(exc, (lmdb.CorruptedError, lmdb.PageNotFoundError)):
            return _damaged(str(self.root), f"{db}/{DATA_FILE}", exc)
        if space.is_no_space(exc, db):
            return StoreFullError(space.no_space_message(str(self.root), db,
                                                         f"{action} the job store"))
        return StoreError(f"cannot {action} the job store at {self.root}: {exc}")

    def _make_room(self, h: _Env) -> None:
        """Before a write: grow the map if little of it is left, keep the disk reserve
        (:mod:`.space`) ahead of the data file, and note whether the disk is too full to
        start jobs. Costs an ``env.info()`` and a ``statvfs`` (~2 µs) per write transaction,
        an ``fstat`` on a process's first write, and a ``fallocate`` each time the data grew
        by half the reserve."""
        h.disk_full = space.disk_is_full(h.path)
        used = h.used_bytes()
        if h.map_size - used < space.MAP_HEADROOM:
            self._grow_map(h, required=False)
        if h.data_fd is not None and used + space.RESERVE_BYTES // 2 > h.reserved_to:
            # The reserve an earlier process kept is still the file's: its blocks count.
            allocated = space.allocated_bytes(h.data_fd)
            if allocated >= used + space.RESERVE_BYTES // 2:
                h.reserved_to = allocated
                return
            failure = space.reserve(h.data_fd, used)
            if failure is None:
                h.reserved_to = used + space.RESERVE_BYTES
            elif failure not in (errno.ENOSPC, errno.EDQUOT):
                h.close_fd()  # this filesystem cannot allocate ahead: stop asking

    def _grow_map(self, h: _Env, *, required: bool) -> None:
        """Grow the map of ``h`` (double it, or more if the data needs): when it is nearly
        full before a write (``required=False``: skipped if the address space has no room
        left), or when a write filled it or another process's data outgrew it."""
        if h.gate.depth:
            if required:
                raise StoreError(f"the job store at {self.root} needs a bigger map, which "
                                 "cannot be set while this thread has a transaction open")
            return
        used = h.used_bytes()
        wanted = space.grown_map_size(h.map_size, used)
        if not space.can_map(wanted - h.map_size):
            if not required:
                return
            raise StoreError(
                f"the job store at {self.root} has used {space.human(used)} of its "
                f"{space.human(h.map_size)} map, and "
                + space.map_error_hint(wanted, used))
        with h.gate.remap():
            if h.map_size >= wanted:
                return  # another thread grew it meanwhile
            try:
                h.env.set_mapsize(wanted)
            except lmdb.Error as exc:
                raise StoreError(f"cannot grow the map of the job store at {self.root} to "
                                 f"{space.human(wanted)}: {exc}") from exc
            h.map_size = h.env.info()["map_size"]

    def _read(self) -> contextlib.AbstractContextManager[tuple[lmdb.Transaction, _Env]]:
        return self._txn(write=False)

    def _write(self) -> contextlib.AbstractContextManager[tuple[lmdb.Transaction, _Env]]:
        return self._txn(write=True)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group every write this thread makes inside the block into one transaction.

        Each commit is durable, so it costs an fsync (one: metasync is off, see
        :func:`_open_env`): about 0.1 ms per commit on the
        development VM (whose virtual disk acknowledges flushes from the host's cache), but
        milliseconds on real SSDs and tens of milliseconds on spinning or network disks. A
        caller that finishes many jobs at the same moment (a wide stage completing, a SLURM
        poll reporting a whole array) pays it once instead of once per job. The writer lock
        is held for the whole block, blocking other processes' writes: keep the block short,
        and do not run jobs inside it. Nested batches join the outer one.

        If the block raises, the writes already made are still committed: they are finished
        jobs whose outputs are complete, and losing them would only mean running them again.
        A batch that fills the map is lost whole (the map is grown; run again): the room
        made before every batch (64 MiB) makes that a batch of ~100 000 records.
        """
        h = self._handle()
        if self.readonly:
            raise StoreError(f"the job store at {self.root} was opened read-only")
        if getattr(h.local, "txn", None) is not None:
            yield
            return
        try:
            self._make_room(h)
            with self._begun(h, True) as txn:
                h.local.txn = txn
                try:
                    yield
                except BaseException:
                    h.local.txn = None
                    try:
                        txn.commit()
                    except lmdb.Error:
                        txn.abort()
                    raise
                h.local.txn = None
                txn.commit()
        except _MapFull:
            self._grow_map(h, required=False)
            raise
        except lmdb.Error as exc:
            raise self._lmdb_error(exc, "write") from exc

    def close(self) -> None:
        """Release this handle; the environment closes when its last user in the process does."""
        h, self._h = self._h, None
        if h is not None and self._pid == os.getpid():
            _release(h)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}{', readonly=True' if self.readonly else ''})"

    # -- paths ------------------------------------------------------------------------------

    @property
    def outputs_root(self) -> Path:
        """The folder holding one folder per job (:mod:`repx.store.layout`)."""
        return self.root / layout.OUTPUTS

    @property
    def folders(self) -> layout.JobFolders:
        """The job folders of this store as strings (what the engine's hot paths use)."""
        return layout.JobFolders(self.root)

    def job_dir(self, job_id: str) -> Path:
        return self.root / layout.OUTPUTS / _check_job_id(job_id)

    def out_dir(self, job_id: str) -> Path:
        """The job's ``$out``."""
        return self.job_dir(job_id) / layout.OUT

    def meta_dir(self, job_id: str) -> Path:
        """Where repx keeps the job's logs and the inputs/params JSON it was run with."""
        return self.job_dir(job_id) / layout.META

    # -- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        with self._read() as (txn, h):
            value = txn.get(job_key(job_id), db=h.jobs)
            try:
                return None if value is None else JobRecord.from_msgpack(value)
            except StoreError as exc:
                raise StoreError(f"job {job_id}: {exc.message}") from exc

    def _read_each(self, job_ids: Iterable[str], convert: Callable[[bytes], T]) -> dict[str, T]:
        """``convert`` applied to the stored value of every given job that has a record.

        One snapshot (one read transaction) with the garbage collector paused: this is
        the no-op rerun's hot path over tens of thousands of jobs.
        """
        with self._read() as (txn, h), _gc_paused():
            return _each_record(txn, h, job_ids, convert)

    def closure_succeeded(self, job_ids: Collection[str], mark: str) -> tuple[bool, int]:
        """Whether every one of ``job_ids`` has a SUCCEEDED record, and the id of the
        snapshot that answered (for :meth:`set_meta`'s ``closure_mark``).

        ``mark`` names the closure (the no-op index's key). When the store's last write was
        the no-op build that found this very closure succeeded, nothing has changed a
        record since, and the answer comes without reading one: a million-job no-op then
        reads no record at all. Every other write transaction deletes the mark
        (:meth:`_begun`), and the mark holds the id of the transaction that wrote it, which
        must be the snapshot's own: two guards, so that neither a write by another version
        of repx nor a copy of the database that renumbers transactions can leave a stale
        mark standing.
        """
        succeeded = Status.SUCCEEDED
        with self._read() as (txn, h), _gc_paused():
            snapshot = txn.id()
            if _good_mark(txn, h) == mark:
                return True, snapshot
            statuses = _each_record(txn, h, job_ids, _status_of_value)
        complete = len(statuses) == len(job_ids)  # every job has a record
        return complete and all(s is succeeded for s in statuses.values()), snapshot

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        """Records of the given jobs that exist, read in one snapshot (one read transaction)."""
        return self._read_each(job_ids, JobRecord.from_msgpack)

    def statuses(self, job_ids: Iterable[str],
                 marked: Callable[[str], Collection[str] | None] | None = None,
                 succeeded: tuple[Collection[str], int] | None = None,
                 ) -> dict[str, Status]:
        """Status of the given jobs that have a record; decodes two bytes per record.

        ``marked`` maps a closure mark (:meth:`closure_succeeded`) to the ids it names.
        When the store holds a mark that is still good, its ids are SUCCEEDED without
        reading their records: a build after an edit (the jobs the edit did not reach are
        the last no-op's) reads only the records of the others. ``succeeded`` is
        (ids, snapshot): ids :meth:`closure_succeeded` found SUCCEEDED in that snapshot.
        When no transaction has been committed since, they are SUCCEEDED now too, and
        their records are not read either (an edit after an edit). Same snapshot either way.
        """
        if marked is None and succeeded is None:
            return self._read_each(job_ids, _status_of_value)
        with self._read() as (txn, h), _gc_paused():
            vouched = None
            if succeeded is not None and succeeded[1] == txn.id():
                vouched = succeeded[0]  # (held already: the mark's ids need reading)
            elif marked is not None:
                name = _good_mark(txn, h)
                vouched = marked(name) if name is not None else None
            if not vouched:
                return _each_record(txn, h, job_ids, _status_of_value)
            ids = list(job_ids)
            rest = [j for j in ids if j not in vouched]
            read = _each_record(txn, h, rest, _status_of_value)
        succeeded = Status.SUCCEEDED
        return {j: succeeded if j in vouched else read[j] for j in ids
                if j in vouched or j in read}

    def records(self, statuses: Collection[Status] | None = None) -> Iterator[JobRecord]:
        """Every job record (only those in ``statuses``, when given), in key order, read a
        chunk per transaction. A record of another status is never decoded (its status is
        its first two bytes): ``repx cancel`` of 10 000 queued jobs in a store of a million
        finished ones decodes 10 000."""
        after: bytes | None = None
        while True:
            chunk: list[JobRecord] = []
            seen = 0
            with self._read() as (txn, h):
                cur = txn.cursor(db=h.jobs)
                more = cur.set_range(after) if after is not None else cur.first()
                if more and after is not None and bytes(cur.key()) == after:
                    more = cur.next()
                while more and seen < _RECORDS_CHUNK:
                    value = cur.value()
                    if statuses is None or status_of(value) in statuses:
                        chunk.append(JobRecord.from_msgpack(value))
                    seen += 1
                    after = bytes(cur.key())
                    more = cur.next()
            yield from chunk
            if not more:
                return

    # -- writing ----------------------------------------------------------------------------

    @_runs_again_if_map_grew
    def put(self, record: JobRecord) -> None:
        """Write a record unconditionally (no claim check). For imports, repairs and tests."""
        with self._write() as (txn, h):
            txn.put(job_key(record.job_id), record.to_msgpack(), db=h.jobs)

    @_runs_again_if_map_grew
    def claim(
        self, job_id: str, owner: str, *, host: str, pid: int, lab: str, run: str, stage: str,
        force: bool = False, replaced: dict[str, bytes | None] | None = None,
    ) -> bool:
        """Take a job for running; False if it is done or someone alive is running it.

        Check and write happen in one write transaction, and LMDB admits one writer at a
        time across processes: of two ``repx build`` racing for a job, exactly one gets it.
        Refused when the job SUCCEEDED, or is RUNNING/QUEUED under another owner that may
        still be alive (:func:`owner_alive`). A claim by the same owner succeeds again (the
        token is per process; the process's scheduler already dispatches a job once).
        FAILED, CANCELLED and abandoned claims are taken over. The new record is RUNNING.
        ``force`` takes a SUCCEEDED job too (``repx build --force``), never a live claim.

        Raises :class:`StoreFullError` when the store's filesystem is (nearly) full: a job
        started then could neither write its outputs nor have its outcome recorded. Taking a
        job over removes its folder's ``record.json`` (it described the previous run).

        ``replaced``, when given, receives the record the claim replaced (``None``: there
        was none), so that a claim taken ahead of a free slot can be given back with
        :meth:`unclaim` when the job never starts.
        """
        key = job_key(_check_job_id(job_id))
        with self._write() as (txn, h):
            if h.disk_full:
                raise StoreFullError(space.no_space_message(
                    str(self.root), str(self.root / "db"), f"start job {job_id}"))
            value = txn.get(key, db=h.jobs)
            if value is not None:
                status = status_of(value)
                if status is Status.SUCCEEDED and not force:
                    return False
                if status in ACTIVE_STATUSES:
                    prev = JobRecord.from_msgpack(value)
                    if prev.owner != owner and owner_alive(prev.host, prev.pid, prev.owner):
                        return False
            record = JobRecord(
                job_id,
                Status.RUNNING,
                started=time.time(),
                host=host,
                pid=pid,
                lab=lab,
                run=run,
                stage=stage,
                owner=owner,
            )
            txn.put(key, record.to_msgpack(), db=h.jobs)
            if replaced is not None:
                replaced[job_id] = bytes(value) if value is not None else None
            if value is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.folders.meta_file(job_id, layout.RECORD_JSON))
            return True

    @_runs_again_if_map_grew
    def unclaim(self, owner: str, replaced: dict[str, bytes | None]) -> list[str]:
        """Give back claims ``owner`` took but whose jobs never started: each job of
        ``replaced`` still RUNNING under ``owner`` gets back the record its claim replaced
        (``None``: it had none, and is forgotten again), and a finished one its folder's
        ``record.json`` too. The ids given back. One transaction.

        The store is then as if the claims had never been taken: a build that stops with
        jobs claimed ahead of a free slot leaves no trace of them.
        """
        given_back: list[str] = []
        with self._write() as (txn, h):
            for job_id, previous in replaced.items():
                key = job_key(_check_job_id(job_id))
                value = txn.get(key, db=h.jobs)
                if value is None or status_of(value) is not Status.RUNNING:
                    continue
                if JobRecord.from_msgpack(value).owner != owner:
                    continue
                if previous is None:
                    txn.delete(key, db=h.jobs)
                else:
                    record = JobRecord.from_msgpack(previous)
                    written = (self._write_record_file(record) if Status(record.status).terminal
                               else record)
                    txn.put(key, previous if written is record else written.to_msgpack(),
                            db=h.jobs)
                given_back.append(job_id)
        return given_back

    @_runs_again_if_map_grew
    def update(self, record: JobRecord) -> JobRecord:
        """Replace a claimed job's record, only if ``record.owner`` holds the claim.

        Used for transitions inside a claim (RUNNING → QUEUED with a SLURM id) and by
        :meth:`finish`. Fields the caller left at their defaults (started, host, pid, lab,
        run, stage) are kept from the claim, so an executor need not carry them around.
        Returns the record as written.

        An outcome (a terminal status) is first written to the job folder's
        ``repx/record.json`` (:meth:`_write_record_file`), then to the database.
        """
        key = job_key(_check_job_id(record.job_id))
        with self._write() as (txn, h):
            value = txn.get(key, db=h.jobs)
            if value is None:
                raise StoreError(
                    f"job {record.job_id} cannot be recorded as {record.status}: it is not "
                    f"claimed in the store at {self.root} (was it deleted during the build?)"
                )
            prev = JobRecord.from_msgpack(value)
            if prev.owner != record.owner:
                raise StoreError(
                    f"job {record.job_id} cannot be recorded as {record.status} by "
                    f"{record.owner or 'an unnamed owner'}: it is claimed by "
                    f"{prev.owner or 'nobody'} in the store at {self.root}"
                )
            merged = replace(
                record,
                status=Status(record.status),
                started=record.started if record.started is not None else prev.started,
                host=record.host or prev.host,
                pid=record.pid if record.pid is not None else prev.pid,
                lab=record.lab or prev.lab,
                run=record.run or prev.run,
                stage=record.stage or prev.stage,
                slurm_id=record.slurm_id if record.slurm_id is not None else prev.slurm_id,
                # The attempts so far stay when a transition inside the claim names none.
                attempts=record.attempts or prev.attempts,
            )
            if merged.status.terminal:
                merged = self._write_record_file(merged)
            txn.put(key, merged.to_msgpack(), db=h.jobs)
            return merged

    def _write_record_file(self, record: JobRecord) -> JobRecord:
        """Write ``record`` to its job folder's ``repx/record.json``; the record to store.

        The file is what ``repx cache recover`` rebuilds a lost database from, so a job is
        recorded SUCCEEDED only if its file says so too: when the file cannot be written (a
        full disk), the job is recorded FAILED with the reason instead, and runs again
        next time. A job without a folder (cancelled before it started) has nothing to
        write. Not fsynced: the file matters when the database is lost, not after a power
        cut that the database (fsynced) survives. Costs 0.1-0.3 ms on the development VM's ext4
        (one small file written and renamed; tests/test_store_damage.py measures it).
        """
        meta = self.folders.meta_dir(record.job_id)
        path = f"{meta}/{layout.RECORD_JSON}"
        tmp = f"{path}.tmp{os.getpid()}"
        text = json.dumps(record_to_json(record), separators=(",", ":")).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                if os.write(fd, text) != len(text):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except FileNotFoundError:
            return record
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if record.status is not Status.SUCCEEDED:
                return record
            why = ("no space left on device" if space.is_no_space(exc, meta)
                   else exc.strerror or str(exc))
            return replace(record, status=Status.FAILED,
                           reason=f"its outcome could not be written to {path}: {why}")
        return record

    @_runs_again_if_map_grew
    def mark_queued(self, owner: str, slurm_ids: dict[str, str]) -> None:
        """Record jobs ``owner`` claimed as QUEUED on SLURM under ``{job id: SLURM id}``, in
        one transaction (a 10 000-task array takes tens of milliseconds)."""
        with self._write() as (txn, h):
            for job_id, slurm_id in slurm_ids.items():
                key = job_key(_check_job_id(job_id))
                value = txn.get(key, db=h.jobs)
                if value is None:
                    raise StoreError(f"job {job_id} cannot be marked queued: it is not claimed "
                                     f"in the store at {self.root}")
                txn.put(key, restamp(value, Status.QUEUED, slurm_id, owner), db=h.jobs)

    def finish(self, record: JobRecord) -> None:
        """Record a job's outcome (SUCCEEDED, FAILED or CANCELLED); only its claimer may.

        The caller must have computed the manifest (``record.outputs``) from complete outputs
        first: once this commits, the job is done for every later build. ``finished`` defaults
        to now.
        """
        status = Status(record.status)
        if not status.terminal:
            raise StoreError(
                f"job {record.job_id}: finish() records an outcome (succeeded, failed, "
                f"cancelled), not {status}; use update()"
            )
        if record.finished is None:
            record = replace(record, finished=time.time())
        self.update(record)

    @_runs_again_if_map_grew
    def cancel_abandoned(self, job_ids: Iterable[str], owner: str, reason: str) -> list[str]:
        """Record as CANCELLED (``reason``, under ``owner``) every job of ``job_ids`` still
        QUEUED or RUNNING whose claimer is gone; the ids recorded. Jobs a live process
        holds are left to it (it records their end itself).

        For ``repx cancel``: one transaction and no per-job claim, so closing the records
        of a 10 000-task array costs what reading them does. A cancelled job is not
        written to ``record.json``: the claim that queued it removed the earlier file, and
        a job that never ran has no outcome to recover.
        """
        cancelled: list[str] = []
        now = time.time()
        # The jobs of one submission share their claimer: each is looked up once.
        alive = functools.cache(owner_alive)
        with self._write() as (txn, h):
            for job_id in dict.fromkeys(job_ids):
                key = job_key(_check_job_id(job_id))
                value = txn.get(key, db=h.jobs)
                if value is None or status_of(value) not in ACTIVE_STATUSES:
                    continue
                # Decoded here, so this transaction's own object: changed in place.
                done = JobRecord.from_msgpack(value)
                if done.owner != owner and alive(done.host, done.pid, done.owner):
                    continue
                done.status, done.finished, done.reason, done.owner = (
                    Status.CANCELLED, now, reason, owner)
                txn.put(key, done.to_msgpack(), db=h.jobs)
                cancelled.append(job_id)
        return cancelled

    @_runs_again_if_map_grew
    def release_claims(self, owner: str, job_ids: Iterable[str], reason: str) -> list[str]:
        """Record as FAILED (``reason``) every job of ``job_ids`` still RUNNING under
        ``owner``; the ids released.

        For a build that must stop because the store cannot record what it does (a full
        disk): its claims would otherwise outlive it as stale RUNNING records. One small
        transaction, which the disk reserve (:mod:`.space`) leaves room for.
        """
        released: list[str] = []
        now = time.time()
        with self._write() as (txn, h):
            for job_id in dict.fromkeys(job_ids):
                key = job_key(_check_job_id(job_id))
                value = txn.get(key, db=h.jobs)
                if value is None or status_of(value) is not Status.RUNNING:
                    continue
                prev = JobRecord.from_msgpack(value)
                if prev.owner != owner:
                    continue
                failed = replace(prev, status=Status.FAILED, finished=now, reason=reason)
                txn.put(key, failed.to_msgpack(), db=h.jobs)
                released.append(job_id)
        return released

    @_runs_again_if_map_grew
    def delete(self, job_ids: Iterable[str]) -> int:
        """Forget jobs and remove their ``outputs/<id>`` folders; returns how many jobs had a
        record or a folder.

        Records go first, in one transaction, then the folders: a crash in between leaves
        orphan folders (harmless, removed by gc), never a record whose outputs are gone.
        """
        ids = [_check_job_id(j) for j in dict.fromkeys(job_ids)]
        removed: set[str] = set()
        with self._write() as (txn, h):
            for job_id in ids:
                if txn.delete(job_key(job_id), db=h.jobs):
                    removed.add(job_id)
        for job_id in ids:
            path = self.job_dir(job_id)
            if path.is_symlink() or path.is_file():
                path.unlink()
                removed.add(job_id)
            elif path.exists():
                try:
                    _rmtree(path)
                except OSError as exc:
                    raise StoreError(f"cannot remove {path}: {exc}") from exc
                removed.add(job_id)
        return len(removed)

    # -- outputs ----------------------------------------------------------------------------

    def manifest(self, job_id: str) -> list[OutputFile]:
        """Size and BLAKE3 of every file under the job's ``out/``, sorted by path.

        Symbolic links are followed to the file they point at (a job may link an input
        through); links to directories are not descended (they could loop) and dangling or
        looping links, fifos and sockets are left out: there is no content to vouch for. SLURM's own
        ``slurm-*.out`` at the top of ``out/`` is not an output.
        """
        out = self.out_dir(job_id)
        if not out.is_dir():
            raise StoreError(f"job {job_id} has no output directory {out}")
        files: list[OutputFile] = []
        errors: list[OSError] = []
        for dirpath, dirnames, filenames in os.walk(out, onerror=errors.append):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, out)
            top = rel_dir == "."
            for name in sorted(filenames):
                if top and any(fnmatch.fnmatchcase(name, pat) for pat in layout.EXCLUDED_OUTPUTS):
                    continue
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    digest = hash_file(full, st.st_size)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ELOOP):  # dangling or looping link
                        continue
                    raise StoreError(f"cannot read output {full} of job {job_id}: {exc}") from exc
                rel = name if top else f"{rel_dir}/{name}".replace(os.sep, "/")
                files.append(OutputFile(rel, st.st_size, digest))
        if errors:
            raise StoreError(f"cannot read outputs of job {job_id}: {errors[0]}")
        files.sort(key=lambda f: f.path)
        return files

    def verify(self, record: JobRecord, *, checksums: bool = True) -> list[str]:
        """What is wrong with a record's outputs on disk; an empty list means all is well.

        Reports missing files, size changes and (with ``checksums``) content changes. Files
        added since the job ran are not problems. ``checksums=False`` only stats the files,
        for a quick up-to-date check over many jobs.
        """
        return verify_outputs(self.out_dir(record.job_id), record, checksums=checksums)

    # -- gc roots ---------------------------------------------------------------------------

    @_runs_again_if_map_grew
    def add_root(self, lab_path: str, *, pinned: bool = False, name: str | None = None) -> None:
        """Register a built lab as a gc root (its jobs' outputs are kept).

        The default name is the lab's store path name (``<hash>-<name>``), unique per build.
        Adding an existing root refreshes its time and never unpins it: a build re-registering
        a lab the user pinned must not drop the pin.
        """
        name = name if name is not None else (os.path.basename(lab_path.rstrip("/")) or lab_path)
        if not name or "\0" in name:
            raise StoreError(f"invalid gc root name {name!r}")
        key = name.encode()
        with self._write() as (txn, h):
            value = txn.get(key, db=h.roots)
            was_pinned = value is not None and Root.from_msgpack(value).pinned
            root = Root(name, lab_path, pinned or was_pinned, time.time())
            txn.put(key, root.to_msgpack(), db=h.roots)
            self._mirror_roots(txn, h)

    def roots(self) -> list[Root]:
        """Every gc root, oldest first."""
        with self._read() as (txn, h):
            roots = [Root.from_msgpack(v) for _k, v in txn.cursor(db=h.roots)]
        return sorted(roots, key=lambda r: (r.created, r.name))

    def find_root(self, name_or_prefix: str) -> Root:
        """The gc root named exactly ``name_or_prefix``, else the one of that lab path, else
        the one whose name uniquely starts with it; a clear error when none or several do."""
        return self._match_root(self.roots(), name_or_prefix)

    @_runs_again_if_map_grew
    def put_root(self, root: Root) -> None:
        """Write ``root`` as given, replacing a root of the same name whether pinned or not
        (:meth:`add_root` never unpins; ``repx gc unpin`` must, in one write)."""
        if not root.name or "\0" in root.name:
            raise StoreError(f"invalid gc root name {root.name!r}")
        with self._write() as (txn, h):
            txn.put(root.name.encode(), root.to_msgpack(), db=h.roots)
            self._mirror_roots(txn, h)

    @_runs_again_if_map_grew
    def remove_root(self, name_or_prefix: str) -> Root:
        """Remove one gc root, found as :meth:`find_root` finds it (in the same write)."""
        with self._write() as (txn, h):
            roots = [Root.from_msgpack(v) for _k, v in txn.cursor(db=h.roots)]
            root = self._match_root(roots, name_or_prefix)
            txn.delete(root.name.encode(), db=h.roots)
            self._mirror_roots(txn, h)
            return root

    def _mirror_roots(self, txn: lmdb.Transaction, h: _Env) -> None:
        """Copy every gc root (as ``txn`` sees them) to ``<store>/roots.json``, so that
        ``repx cache recover`` can restore them, pins included, if the database is lost.

        Called inside each write of the roots: the writer lock orders the copies as it
        orders the commits. A copy that cannot be written is removed rather than left
        stale (recover then gives each recovered lab an unpinned root instead).
        """
        path = self.root / layout.ROOTS_JSON
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        roots = [Root.from_msgpack(v) for _k, v in txn.cursor(db=h.roots)]
        try:
            tmp.write_text(json.dumps(
                {"format": RECORD_FORMAT,
                 "roots": [{"name": r.name, "lab_path": r.lab_path, "pinned": r.pinned,
                            "created": r.created} for r in roots]}), encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            for leftover in (tmp, path):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def _match_root(self, roots: list[Root], name_or_prefix: str) -> Root:
        matches = [r for r in roots if r.name == name_or_prefix]
        matches = matches or [r for r in roots if r.lab_path == name_or_prefix]
        matches = matches or [r for r in roots if r.name.startswith(name_or_prefix)]
        if not name_or_prefix or not matches:
            raise UsageError(f"no gc root named {name_or_prefix!r} in {self.root}")
        if len(matches) > 1:
            names = ", ".join(sorted(r.name for r in matches))
            raise UsageError(f"gc root prefix {name_or_prefix!r} is ambiguous: {names}")
        return matches[0]

    # -- meta -------------------------------------------------------------------------------

    @_runs_again_if_map_grew
    def set_meta(self, key: str, value: dict[str, Any], *,
                 blobs: Mapping[str, bytes] | None = None,
                 closure_mark: tuple[str, int] | None = None) -> None:
        """Store a small dict under ``key`` (e.g. ``last_build`` statistics).

        ``blobs`` are large byte values that belong with it, each kept under its own key
        (:meth:`get_meta_blob`) and written only when its bytes changed: every no-op build
        names the same up-to-date ids, 32 MB at a million jobs, and writing them again cost
        each no-op more than a tenth of a second of commit and that much disk traffic (on a
        cluster's network file system, more). They are written in the same transaction as
        ``value``, so a reader never sees one without the other.

        ``closure_mark`` is (mark, snapshot) of a :meth:`closure_succeeded` that answered
        yes: the mark is kept with this write when no other write came between that
        snapshot and this one, so the next no-op build of the closure reads no record.
        """
        with self._write() as (txn, h):
            txn.put(key.encode(), pack_meta(value), db=h.meta)
            for name, data in (blobs or {}).items():
                blob_key = _meta_blob_key(key, name)
                if txn.get(blob_key, db=h.meta) != data:
                    txn.put(blob_key, data, db=h.meta)
            if closure_mark is not None and txn.id() == closure_mark[1] + 1:
                txn.put(_CLOSURE_MARK, pack_meta({"closure": closure_mark[0],
                                                  "txn": txn.id()}), db=h.meta)

    def get_meta(self, key: str) -> dict[str, Any] | None:
        with self._read() as (txn, h):
            value = txn.get(key.encode(), db=h.meta)
            return None if value is None else unpack_meta(value)

    def get_meta_blob(self, key: str, name: str) -> bytes | None:
        """The blob ``name`` that :meth:`set_meta` last wrote with ``key``."""
        with self._read() as (txn, h):
            value = txn.get(_meta_blob_key(key, name), db=h.meta)
            return None if value is None else bytes(value)
