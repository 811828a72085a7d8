"""The no-op fast path: a compact index of a built lab's job closure, cached per lab.

A rebuild with nothing to do is what researchers run most, and at 20 000 jobs its budget
(0.5 s) does not cover expanding the sweep again (~0.2 s) plus validating every job's
outputs. A built lab directory is a Nix store path, so its content never changes under the
same path: the ids of a selection and their declared output paths can be cached under
(lab path, targets) forever. :func:`repx.engine.build.run_build` first tries this index —
one status byte per job from the store (none when the store's closure mark vouches for the
closure: :meth:`Store.closure_succeeded`) and an ``access`` per output — and only expands
the lab when something is missing. doit rebuilds its task objects on every invocation (~90 µs per
task); this is the "cache what does not change between invocations" that avoids it.

The index is only written after the lab was expanded and validated, so a hit implies the
lab passed validation before.
"""

from __future__ import annotations

import os
import sys
import threading
from array import array
from collections.abc import Callable
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
from blake3 import blake3

from repx.engine.contract import OUT_MARK, declared_outputs, outputs_present
from repx.lab.expansion_memo import ExpansionMemo, RunMemo
from repx.lab.graph import JobGraph
from repx.store import Store
from repx.store.layout import OUT

#: Bump when the file layout changes or when validation gets stricter (old files are then
#: ignored, so a lab indexed under laxer rules is expanded and checked again). 3: output
#: templates must name files under the job's ``out/``. 4: output paths once per distinct
#: set, and one index into them per job. 5: the expansion memo of an index of all runs.
INDEX_FORMAT = 5


def index_path(cache_root: Path, lab_dir: Path, targets: tuple[str, ...]) -> Path:
    """Where the index of ``targets`` (all runs when empty) of ``lab_dir`` lives.

    The format is part of the name: an index is only written where none exists, so a file
    of an older format at the same place would never be replaced (and every build would
    take the slow path)."""
    key = blake3("\0".join([f"v{INDEX_FORMAT}", str(lab_dir), *targets]).encode()
                 ).hexdigest()[:32]
    return cache_root / "graphs" / f"{key}.msgpack"


def write_index(path: Path, graph: JobGraph, closure: list[str], *,
                everything: bool = False) -> None:
    """Record the closure's ids and each job's declared output paths (relative to ``out``).

    The file is the msgpack array ``[format, ids, output sets, column, memo]``: the ids
    joined by newlines, every distinct set of output paths (tab-joined), per job the
    position of its set in a byte column, and — when the closure is ``everything``, the
    whole graph in expansion order — how each run was expanded
    (:mod:`repx.lab.expansion_memo`: ``[run, key, dims, stages, cells]`` per run), which
    the expansion of the next, edited lab reuses. The jobs of a stage share their outputs,
    so a million jobs store a few sets and 4 bytes each, and the no-op splits each set
    once, not once per job. Written through a temporary file and a rename, so a reader
    never sees half of it; a failure to write is ignored (the index is only an
    accelerator).
    """
    # Resolved like every other output check, against a marker for the job's out/: the
    # same for every job sharing an outputs dict (a stage's jobs), so once per dict.
    by_outputs: dict[int, int] = {}
    sets: dict[str, int] = {}
    column = array("I")
    jobs = graph.jobs
    for job_id in closure:
        outputs = jobs[job_id].outputs
        position = by_outputs.get(id(outputs))
        if position is None:
            paths = "\t".join(declared_outputs(outputs, OUT_MARK, job_id).values())
            position = by_outputs[id(outputs)] = sets.setdefault(paths, len(sets))
        column.append(position)
    memo = []
    if everything:
        for run, entry in graph.expansion_memo.items():
            cells = entry.cells
            if sys.byteorder != "little":
                cells = array("I", cells)
                cells.byteswap()
            memo.append([run, entry.key, entry.dims, entry.stages, cells.tobytes()])
    if sys.byteorder != "little":
        column.byteswap()
    data = msgpack.packb([INDEX_FORMAT, "\n".join(closure), list(sets), column.tobytes(),
                          memo])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass


#: The ids of the index :func:`expansion_memo` read last, by its path. An index file never
#: changes once written, and a build after an edit reads the same index twice (its memo for
#: the expansion, its ids as the closure mark's): the second read shares the first's
#: strings instead of making a million new ones.
_last_read: dict[Path, list[str]] = {}


def indexed_ids(cache_root: Path, name: str) -> frozenset[str] | None:
    """The ids of the index called ``name`` (a closure mark names one), None when it
    cannot be read: what :meth:`Store.statuses` takes as ``marked``."""
    if "/" in name or not name.endswith(".msgpack"):
        return None
    path = cache_root / "graphs" / name
    ids = _last_read.get(path)
    if ids is not None:
        return frozenset(ids)
    raw = _read(path)
    return None if raw is None else frozenset(raw[1].split("\n") if raw[1] else ())


def _read(path: Path) -> list[Any] | None:
    """The index file's ``[format, ids, output sets, column, memo]``, None when it is
    missing, of another format or malformed."""
    try:
        raw = msgpack.unpackb(path.read_bytes())
    except (OSError, ValueError, msgpack.ExtraData):
        return None
    if not isinstance(raw, list) or len(raw) != 5 or raw[0] != INDEX_FORMAT:
        return None
    _format, ids_text, sets, column_bytes, memo = raw
    if not (isinstance(ids_text, str) and isinstance(sets, list)
            and isinstance(column_bytes, bytes) and all(isinstance(s, str) for s in sets)
            and isinstance(memo, list)):
        return None
    return raw


def expansion_memo(path: Path) -> ExpansionMemo | None:
    """The expansion memo kept in the index at ``path`` (None: no such index, or one of a
    selection, or nothing usable in it). Runs whose entry is malformed are left out."""
    raw = _read(path)
    if raw is None or not raw[4]:
        return None
    return _memo_of(path, raw[1].split("\n") if raw[1] else [], raw[4])


def _memo_of(path: Path, ids: list[str], entries: list[Any]) -> ExpansionMemo | None:
    """:func:`expansion_memo` from the index's ids and memo entries, read already."""
    runs: dict[str, RunMemo] = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 5):
            continue
        run, key, dims, stages, cells_bytes = entry
        if not (isinstance(run, str) and isinstance(key, str) and isinstance(stages, int)
                and isinstance(cells_bytes, bytes) and len(cells_bytes) % 4 == 0
                and isinstance(dims, list)
                and all(isinstance(d, list) and all(isinstance(v, str) for v in d)
                        for d in dims)):
            continue
        cells = array("I")
        cells.frombytes(cells_bytes)
        if sys.byteorder != "little":
            cells.byteswap()
        runs[run] = RunMemo(key, dims, stages, cells)
    _last_read.clear()
    _last_read[path] = ids
    return ExpansionMemo(ids, runs) if runs else None


class UpToDate(NamedTuple):
    """A closure found up to date: its ids, and the store snapshot that said so (and the
    mark that lets the next no-op skip the records: :meth:`Store.closure_succeeded`)."""

    ids: list[str]
    mark: tuple[str, int]
    #: The same ids as the index holds them, newline-joined (what ``last_build`` stores).
    ids_text: str


def up_to_date_ids(path: Path, store: Store) -> UpToDate | None:
    """The closure's ids when every job is up to date, else None (or no usable index)."""
    check = NoopCheck.open(path, store)
    if check is None:
        return None
    with check:
        check.work()
        return check.answer()


#: Jobs a worker of a :class:`NoopCheck` takes at a time.
CHUNK = 4096


class NoopCheck:
    """The check that every job of an index is up to date, in chunks any number of threads
    may work on (``access`` releases the GIL), and that a worker may leave between two.

    :meth:`open` does what cannot be shared: it reads the index and asks the store whether
    every job succeeded. What is left is one ``access`` per declared output: ``access(F_OK)``
    relative to the outputs folder, not ``stat`` of the whole path, which gives the same
    answer (both follow symlinks, both fail on a folder that cannot be searched) at about
    two thirds of the system time, and is most of a large no-op.
    """

    def __init__(self, path: Path, ids: list[str], ids_text: str, column: array[int],
                 sets: list[str], snapshot: int, folder: int, memo: list[Any]) -> None:
        self._path = path
        self._ids = ids
        self._memo = memo
        self._ids_text = ids_text
        self._column = column
        self._snapshot = snapshot
        self._folder = folder
        # Per set: the paths under the job's out/ (a suffix to add to it) and any other path.
        self._relative = [[f"/{OUT}{p[1:]}" for p in s.split("\t") if p[:1] == OUT_MARK]
                          if s else [] for s in sets]
        self._absolute = [p for s in sets if s for p in s.split("\t") if p[:1] != OUT_MARK]
        self._one_each = all(len(suffixes) == 1 for suffixes in self._relative)
        self._tails = [suffixes[0] for suffixes in self._relative] if self._one_each else []
        self._lock = threading.Lock()
        self._next = 0
        self._checked = 0
        self._missing = False

    @classmethod
    def open(cls, path: Path, store: Store) -> NoopCheck | None:
        """The check of the index at ``path``; None when the answer is already no (no usable
        index, a job without a SUCCEEDED record, no outputs folder)."""
        raw = _read(path)
        if raw is None:
            return None
        _format, ids_text, sets, column_bytes, memo = raw
        ids = ids_text.split("\n") if ids_text else []
        column = array("I")
        column.frombytes(column_bytes)
        if sys.byteorder != "little":
            column.byteswap()
        if len(column) != len(ids) or (column and max(column) >= len(sets)):
            return None
        succeeded, snapshot = store.closure_succeeded(ids, path.name)
        if not succeeded:
            return None
        try:
            folder = os.open(store.folders.outputs_root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        return cls(path, ids, ids_text, column, sets, snapshot, folder, memo)

    def work(self, stop: Callable[[], bool] | None = None) -> None:
        """Check chunks until none is left, an output is missing, or ``stop`` (asked
        before each chunk) says yes."""
        ids = self._ids
        while True:
            if stop is not None and stop():
                return
            with self._lock:
                start = self._next
                if start >= len(ids) or self._missing:
                    return
                self._next = start + CHUNK
            present = self._chunk_present(start, start + CHUNK)
            with self._lock:
                self._checked += min(CHUNK, len(ids) - start) if present else 0
                self._missing = self._missing or not present

    def _chunk_present(self, start: int, end: int) -> bool:
        chunk = self._ids[start:end]
        positions = self._column[start:end]
        if self._one_each:
            # One output per job (the common case): a single C-level loop.
            return all(outputs_present(self._folder, chunk,
                                       map(self._tails.__getitem__, positions)))
        relative = self._relative
        return all(all(outputs_present(self._folder, repeat(job_id), relative[position]))
                   for job_id, position in zip(chunk, positions, strict=True))

    def answer(self) -> UpToDate | None:
        """The ids when every chunk was checked and found whole (and every output outside
        the job folders exists), else None: something is missing, or a worker stopped
        before the end."""
        with self._lock:
            whole = not self._missing and self._checked == len(self._ids)
        if not whole or not all(map(os.path.exists, self._absolute)):
            return None
        return UpToDate(self._ids, (self._path.name, self._snapshot), self._ids_text)

    def expansion_memo(self) -> ExpansionMemo | None:
        """:func:`expansion_memo` of this index, from what :meth:`open` read already."""
        return _memo_of(self._path, self._ids, self._memo) if self._memo else None

    def close(self) -> None:
        """Release the outputs folder (after every worker is done)."""
        if self._folder >= 0:
            os.close(self._folder)
            self._folder = -1

    def __enter__(self) -> NoopCheck:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
