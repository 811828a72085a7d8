"""Job records and their on-disk encoding.

A record value in the ``jobs`` database is a msgpack *stream* of three objects::

    <format: positive fixint> <status code: positive fixint> <body: array>

so byte 0 is the format version and byte 1 is the status. The planner asks "what is the status
of these 20 000 jobs?" on every ``repx build``; with this layout that question reads one byte
per job and never decodes the body (see :func:`status_of`).

The body is a positional array (no key names: a store holds one record per job, tens of
thousands of them, and key names would double their size). Fields are only ever *appended*;
a reader takes the fields it knows and ignores the rest, and fills fields missing from an
older record with their defaults (fields 15 and 16, the failure kind and the attempts, came
later: a record without them has none). Field 9, the output files, is itself msgpack, stored as a
``bin`` and decoded only when ``record.outputs`` is first read (see :class:`_LazyOutputs`);
each file is ``[path, size, 32-byte BLAKE3 digest]``. The format byte is bumped only for an
incompatible change, and :func:`JobRecord.from_msgpack` keeps a decoder for every format it
has ever written, so a store written by an older repx stays readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from repx.store.errors import StoreError

#: Format of the records this version writes. Readers accept every format up to this one.
RECORD_FORMAT = 1


class Status(StrEnum):
    """Where a job stands, as far as the store knows.

    ``QUEUED`` means submitted to SLURM and not yet seen running by repx.
    """

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    QUEUED = "queued"

    @property
    def terminal(self) -> bool:
        """True for outcomes that end a claim (the job is no longer in anyone's hands)."""
        return self in _TERMINAL

    @property
    def active(self) -> bool:
        """True while someone may still be working on the job (running, or queued on SLURM)."""
        return self in ACTIVE_STATUSES


_TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})

#: Statuses of a job someone may still be working on.
ACTIVE_STATUSES = (Status.RUNNING, Status.QUEUED)

# Status <-> one-byte code. Codes are part of the on-disk format: never renumber, only add.
_STATUS_CODE: dict[Status, int] = {
    Status.RUNNING: 1,
    Status.SUCCEEDED: 2,
    Status.FAILED: 3,
    Status.CANCELLED: 4,
    Status.QUEUED: 5,
}
#: Status by code (index), for readers that look at byte 1 of a record themselves.
STATUS_BY_CODE: list[Status | None] = [None] * 128
for _status, _code in _STATUS_CODE.items():
    STATUS_BY_CODE[_code] = _status


@dataclass(slots=True)
class OutputFile:
    """One file of a job's ``out/`` directory, as recorded when the job finished."""

    path: str  #: relative to ``out/``, with ``/`` separators
    size: int
    blake3: str  #: hex digest of the content


class _LazyOutputs:
    """Descriptor behind ``JobRecord.outputs``: decoded from the record on first access.

    A job may have thousands of output files, and the planner reads every record of a lab on
    every build but looks at the outputs of few of them; building an :class:`OutputFile` per
    file up front made ``get_many`` cost grow with the number of files instead of jobs.
    Records keep the encoded list (``_outputs_raw``) until someone asks.
    """

    def __get__(self, obj: JobRecord | None, objtype: type | None = None) -> Any:
        if obj is None:
            return None  # the dataclass field default; __set__ turns it into []
        value = obj._outputs
        if value is None:
            raw = obj._outputs_raw
            value = obj._outputs = _decode_outputs(raw) if raw else []
        return value

    def __set__(self, obj: JobRecord, value: list[OutputFile] | None) -> None:
        obj._outputs = [] if value is None else value
        obj._outputs_raw = None


@dataclass
class JobRecord:
    """What the store knows about one job.

    ``owner`` identifies the repx process that claimed the job (``host:pid:start``); only that
    process may finish it, which is what keeps two concurrent builds from recording each
    other's jobs. ``reason`` says in words why a job did not succeed ("exit code 1",
    "TIMEOUT", "interrupted").
    """

    job_id: str
    status: Status
    exit_code: int | None = None
    started: float | None = None
    finished: float | None = None
    host: str = ""
    pid: int | None = None
    lab: str = ""
    run: str = ""
    stage: str = ""
    #: Set by __init__ through the descriptor, which also keeps, outside the dataclass fields
    #: (so that eq, repr and replace see only ``outputs``), ``_outputs`` (decoded list or
    #: None) and ``_outputs_raw`` (encoded list or None).
    outputs: list[OutputFile] = _LazyOutputs()  # type: ignore[assignment]
    stdout_log: str = ""
    stderr_log: str = ""
    reason: str = ""
    slurm_id: str | None = None
    owner: str = ""
    #: What kind of failure ended the job's last attempt (a :mod:`repx.engine.failures`
    #: kind such as ``OUT_OF_MEMORY``); empty for a success or an unclassified failure.
    failure: str = ""
    #: Every attempt of the build that made this record, oldest first: plain dicts
    #: (``attempt``, ``slurm_id``, ``node``, ``state``, ``exit_code``, ``failure``, requested
    #: ``mem``/``time``, ``max_rss`` bytes, ``elapsed``/``cpu_time`` seconds). The record's
    #: own status and reason are the last attempt's.
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_msgpack(self) -> bytes:
        """Encode as ``<format><status code><body array>`` (see the module docstring)."""
        raw = self._outputs_raw if self._outputs is None else None
        if raw is None:
            raw = _pack([[o.path, o.size, _digest_bytes(o.blake3)] for o in self.outputs])
        body = [
            self.job_id,
            self.exit_code,
            self.started,
            self.finished,
            self.host,
            self.pid,
            self.lab,
            self.run,
            self.stage,
            raw,  # nested msgpack, as bin: see _LazyOutputs
            self.stdout_log,
            self.stderr_log,
            self.reason,
            self.slurm_id,
            self.owner,
            self.failure,
            self.attempts,
        ]
        return bytes((RECORD_FORMAT, _STATUS_CODE[Status(self.status)])) + _pack(body)

    @classmethod
    def from_msgpack(cls, data: bytes | memoryview) -> JobRecord:
        """Decode a value written by any format version up to :data:`RECORD_FORMAT`.

        Accepts a memoryview into the LMDB map: everything kept is copied out of it.
        """
        status = status_of(data)
        try:
            body = msgpack.unpackb(data[2:])
        except UnicodeDecodeError:  # a file name that is not UTF-8 (rare: decode slowly)
            body = _unpack(data[2:], "job")
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise StoreError(f"corrupt job record ({type(exc).__name__}: {exc})") from exc
        if not isinstance(body, list) or not body:
            raise StoreError("corrupt job record (body is not an array)")
        # Format 1. A later format gets its own branch here; this one keeps working.
        raw = body[9] if len(body) > 9 else None
        if len(body) > 9:
            body[9] = None
        record = cls(body[0], status, *body[1:15])
        if len(body) > 15:
            record.failure = body[15] if isinstance(body[15], str) else ""
        if len(body) > 16 and isinstance(body[16], list):
            record.attempts = [a for a in body[16] if isinstance(a, dict)]
        if raw:
            if not isinstance(raw, bytes):
                raise StoreError(f"corrupt job record for {body[0]} (outputs)")
            record._outputs = None
            record._outputs_raw = raw
        return record


#: Format of a job folder's ``repx/record.json`` (see :func:`record_to_json`).
RECORD_JSON_FORMAT = 1

#: The scalar fields of a record, in ``record.json`` under these names.
_JSON_FIELDS = ("job_id", "status", "exit_code", "started", "finished", "host", "pid", "lab",
                "run", "stage", "stdout_log", "stderr_log", "reason", "slurm_id", "owner",
                "failure")


def record_to_json(record: JobRecord) -> dict[str, Any]:
    """A finished job's record as its folder keeps it (``repx/record.json``).

    The database is the store's index; this file is the folder's own account of how the job
    ended, so that ``repx cache recover`` can rebuild a lost or damaged database from the
    folders alone. Outputs are ``[path, size, blake3 hex]`` triples.
    """
    data: dict[str, Any] = {"format": RECORD_JSON_FORMAT}
    for name in _JSON_FIELDS:
        data[name] = getattr(record, name)
    data["status"] = Status(record.status).value
    data["outputs"] = [[f.path, f.size, f.blake3] for f in record.outputs]
    data["attempts"] = list(record.attempts)
    return data


def record_from_json(data: object, where: str) -> JobRecord:
    """The record a ``record.json`` holds; StoreError naming ``where`` if it is not one."""
    if not isinstance(data, dict):
        raise StoreError(f"{where} is not a JSON object")
    fmt = data.get("format")
    if not isinstance(fmt, int) or not 1 <= fmt <= RECORD_JSON_FORMAT:
        raise StoreError(f"{where} has format {fmt!r}; this repx reads formats 1 to "
                         f"{RECORD_JSON_FORMAT}")
    try:
        fields = {name: data.get(name) for name in _JSON_FIELDS}
        fields["status"] = Status(fields["status"])
        for name in ("host", "lab", "run", "stage", "stdout_log", "stderr_log", "reason",
                     "owner", "failure"):
            fields[name] = fields[name] or ""
        if not isinstance(fields["job_id"], str) or not fields["job_id"]:
            raise ValueError("no job_id")
        outputs = [OutputFile(str(p), int(s), str(d)) for p, s, d in data.get("outputs") or []]
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{where} is not a job record: {exc}") from exc
    attempts = data.get("attempts") or []
    if not isinstance(attempts, list) or not all(isinstance(a, dict) for a in attempts):
        raise StoreError(f"{where} is not a job record: attempts is not a list of objects")
    record = JobRecord(**fields, attempts=attempts)
    record.outputs = outputs
    return record


def restamp(data: bytes | memoryview, status: Status, slurm_id: str | None,
            owner: str) -> bytes:
    """A record's bytes with a new status and SLURM id, if ``owner`` holds it.

    The SLURM executor marks every task of a submitted array QUEUED; going through
    :class:`JobRecord` (decode, merge, encode) costs ~0.1 ms a record, which for a
    10 000-task array is most of the submission budget. This touches the body array only.
    """
    try:
        body = msgpack.unpackb(data[2:])
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise StoreError(f"corrupt job record ({type(exc).__name__}: {exc})") from exc
    if not isinstance(body, list) or len(body) < 15:
        raise StoreError("corrupt job record (body is not a full array)")
    if body[14] != owner:
        raise StoreError(f"job {body[0]} is claimed by {body[14] or 'nobody'}, not {owner}")
    body[13] = slurm_id
    return bytes((data[0], _STATUS_CODE[status])) + _pack(body)


def _decode_outputs(raw: bytes) -> list[OutputFile]:
    try:
        items = msgpack.unpackb(raw)
    except UnicodeDecodeError:
        items = _unpack(raw, "job outputs")
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise StoreError(f"corrupt job record (outputs: {type(exc).__name__}: {exc})") from exc
    return [OutputFile(p, s, _digest_hex(d)) for p, s, d in items]


def status_of(data: bytes | memoryview) -> Status:
    """Read a record's status from its first two bytes, without decoding the rest."""
    if len(data) < 2:
        raise StoreError("corrupt job record (too short)")
    fmt = data[0]
    if fmt > RECORD_FORMAT or fmt == 0:
        raise StoreError(
            f"job record format {fmt} is not known to this repx (it reads formats 1 to "
            f"{RECORD_FORMAT}); the store was written by a newer repx"
        )
    code = data[1]
    status = STATUS_BY_CODE[code] if code < 128 else None
    if status is None:
        raise StoreError(f"corrupt job record (unknown status code {data[1]})")
    return status


@dataclass(slots=True)
class Root:
    """A garbage-collection root: a built lab whose jobs' outputs must be kept.

    ``pinned`` roots are the ones a user asked to keep; unpinned ones are registered by every
    build and may be rotated away by ``repx gc``.
    """

    name: str
    lab_path: str
    pinned: bool = False
    created: float = 0.0

    def to_msgpack(self) -> bytes:
        return _pack([RECORD_FORMAT, self.name, self.lab_path, self.pinned, self.created])

    @classmethod
    def from_msgpack(cls, data: bytes | memoryview) -> Root:
        items = _unpack(data, "gc root")
        if not isinstance(items, list) or len(items) < 5 or items[0] > RECORD_FORMAT:
            raise StoreError("gc root record is corrupt or from a newer repx")
        return cls(items[1], items[2], bool(items[3]), float(items[4]))


def pack_meta(value: dict[str, Any]) -> bytes:
    """Encode a meta value (a plain dict of msgpack-able values), with the format byte first."""
    return bytes((RECORD_FORMAT,)) + _pack(value)


def unpack_meta(data: bytes | memoryview) -> dict[str, Any]:
    if len(data) < 1 or data[0] == 0 or data[0] > RECORD_FORMAT:
        raise StoreError("meta record is corrupt or from a newer repx")
    value = _unpack(data[1:], "meta")
    if not isinstance(value, dict):
        raise StoreError("meta record is corrupt (not a map)")
    return value


def _pack(obj: object) -> bytes:
    # surrogateescape: file names that are not valid UTF-8 (os.fsdecode gives surrogates)
    # must round-trip rather than make a finished job impossible to record.
    return msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogateescape")


def _unpack(data: bytes | memoryview, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, unicode_errors="surrogateescape")
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise StoreError(f"corrupt {what} record ({type(exc).__name__}: {exc})") from exc


def _digest_bytes(hexdigest: str) -> bytes | str:
    """Store a 32-byte digest as raw bytes (half the size of hex); keep anything odd as text."""
    try:
        return bytes.fromhex(hexdigest)
    except ValueError:
        return hexdigest


def _digest_hex(value: bytes | str) -> str:
    return value.hex() if isinstance(value, bytes) else value
