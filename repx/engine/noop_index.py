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
from pathlib import Path

import msgpack
from blake3 import blake3

from repx.engine.contract import declared_outputs
from repx.lab.graph import JobGraph
from repx.store import Status, Store

#: Bump when the file layout changes or when validation gets stricter (old files are then
#: ignored, so a lab indexed under laxer rules is expanded and checked again). 3: output
#: templates must name files under the job's ``out/``.
INDEX_FORMAT = 3

#: Stands for the job's ``out/`` folder in the stored paths.
OUT_MARK = "\0"


def index_path(cache_root: Path, lab_dir: Path, targets: tuple[str, ...]) -> Path:
    """Where the index of ``targets`` (all runs when empty) of ``lab_dir`` lives."""
    key = blake3("\0".join([str(lab_dir), *targets]).encode()).hexdigest()[:32]
    return cache_root / "graphs" / f"{key}.msgpack"


def write_index(path: Path, graph: JobGraph, closure: list[str]) -> None:
    """Record the closure's ids and each job's declared output paths (relative to ``out``).

    Written through a temporary file and a rename, so a reader never sees half of it; a
    failure to write is ignored (the index is only an accelerator).
    """
    outs = []
    for job_id in closure:
        # Resolved like every other output check, against a marker for the job's out/.
        paths = declared_outputs(graph.jobs[job_id].outputs, OUT_MARK, job_id).values()
        outs.append("\t".join(paths))
    data = msgpack.packb([INDEX_FORMAT, "\n".join(closure), "\n".join(outs)])
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
    if not isinstance(raw, list) or len(raw) != 3 or raw[0] != INDEX_FORMAT:
        return None
    ids = raw[1].split("\n") if raw[1] else []
    outs = raw[2].split("\n") if raw[2] else []
    if len(ids) != len(outs):
        return None
    statuses = store.statuses(ids)
    succeeded = Status.SUCCEEDED
    if len(statuses) != len(ids) or any(s is not succeeded for s in statuses.values()):
        return None
    out_dir = store.folders.out_dir
    exists = os.path.exists
    for job_id, paths in zip(ids, outs, strict=True):
        if paths:
            base = out_dir(job_id)
            for path in paths.split("\t"):
                if not exists(base + path[1:] if path[:1] == OUT_MARK else path):
                    return None
    return ids
