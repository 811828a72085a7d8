"""The no-op fast path: a compact index of a built lab's job closure, cached per lab.

A rebuild with nothing to do is what researchers run most, and at 20 000 jobs its budget
(0.5 s) does not cover expanding the sweep again (~0.2 s) plus validating every job's
outputs. A built lab directory is a Nix store path, so its content never changes under the
same path: the ids of a selection and their declared output paths can be cached under
(lab path, targets) forever. :func:`repx.engine.build.run_build` first tries this index —
one status byte per job from the store and a ``stat`` per output — and only expands the lab
when something is missing. doit rebuilds its task objects on every invocation (~90 µs per
task); this is the "cache what does not change between invocations" that avoids it.

The index is only written after the lab was expanded and validated, so a hit implies the
lab passed validation before.
"""

from __future__ import annotations

import os
import sys
from array import array
from pathlib import Path

import msgpack
from blake3 import blake3

from repx.engine.contract import declared_outputs
from repx.lab.graph import JobGraph
from repx.store import Status, Store

#: Bump when the file layout changes or when validation gets stricter (old files are then
#: ignored, so a lab indexed under laxer rules is expanded and checked again). 3: output
#: templates must name files under the job's ``out/``. 4: output paths once per distinct
#: set, and one index into them per job.
INDEX_FORMAT = 4

#: Stands for the job's ``out/`` folder in the stored paths.
OUT_MARK = "\0"


def index_path(cache_root: Path, lab_dir: Path, targets: tuple[str, ...]) -> Path:
    """Where the index of ``targets`` (all runs when empty) of ``lab_dir`` lives.

    The format is part of the name: an index is only written where none exists, so a file
    of an older format at the same place would never be replaced (and every build would
    take the slow path)."""
    key = blake3("\0".join([f"v{INDEX_FORMAT}", str(lab_dir), *targets]).encode()
                 ).hexdigest()[:32]
    return cache_root / "graphs" / f"{key}.msgpack"


def write_index(path: Path, graph: JobGraph, closure: list[str]) -> None:
    """Record the closure's ids and each job's declared output paths (relative to ``out``).

    The file is the msgpack array ``[format, ids, output sets, column]``: the ids joined by
    newlines, every distinct set of output paths (tab-joined), and per job the position of
    its set in a byte column. The jobs of a stage share their outputs, so a million jobs
    store a few sets and 4 bytes each, and the no-op splits each set once, not once per
    job. Written through a temporary file and a rename, so a reader never sees half of it;
    a failure to write is ignored (the index is only an accelerator).
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
    if sys.byteorder != "little":
        column.byteswap()
    data = msgpack.packb([INDEX_FORMAT, "\n".join(closure), list(sets), column.tobytes()])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass


def up_to_date_ids(path: Path, store: Store) -> list[str] | None:
    """The closure's ids when every job is up to date, else None (or no usable index)."""
    try:
        raw = msgpack.unpackb(path.read_bytes())
    except (OSError, ValueError, msgpack.ExtraData):
        return None
    if not isinstance(raw, list) or len(raw) != 4 or raw[0] != INDEX_FORMAT:
        return None
    _format, ids_text, sets, column_bytes = raw
    if not (isinstance(ids_text, str) and isinstance(sets, list)
            and isinstance(column_bytes, bytes) and all(isinstance(s, str) for s in sets)):
        return None
    ids = ids_text.split("\n") if ids_text else []
    column = array("I")
    column.frombytes(column_bytes)
    if sys.byteorder != "little":
        column.byteswap()
    if len(column) != len(ids) or (column and max(column) >= len(sets)):
        return None
    statuses = store.statuses(ids)
    succeeded = Status.SUCCEEDED
    if len(statuses) != len(ids) or any(s is not succeeded for s in statuses.values()):
        return None
    # Per set: the paths under the job's out/ (a suffix to add to it) and any other path.
    relative = [[p[1:] for p in s.split("\t") if p[:1] == OUT_MARK] if s else [] for s in sets]
    absolute = [[p for p in s.split("\t") if p[:1] != OUT_MARK] if s else [] for s in sets]
    out_dir = store.folders.out_dir
    exists = os.path.exists
    for job_id, position in zip(ids, column, strict=True):
        suffixes = relative[position]
        if suffixes:
            base = out_dir(job_id)
            for suffix in suffixes:
                if not exists(base + suffix):
                    return None
        for other in absolute[position]:
            if not exists(other):
                return None
    return ids
