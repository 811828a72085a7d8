"""``repx pull``: the records and outputs of a target's jobs, copied into the local store.

The target's store is the remote's own LMDB; nothing here opens it over the network. The
remote repx (shipped by :mod:`repx.remote.ship`) answers two requests, each a JSON object on
its stdin (``repx _pull-serve list|send``, run through the target's one ssh transport):

* ``list``: for the requested job ids (and the scatter-gather units of those jobs), every
  *finished* record as its ``record.json`` form, plus the size and BLAKE3 of each file of
  the job's ``repx/`` folder (logs, params, inputs). A record's outputs already carry their
  size and BLAKE3: they are what the remote recorded when the job finished.
* ``send``: a tar stream of the requested files, ``<job id>/out/<path>`` and
  ``<job id>/repx/<name>``, nothing else.

The local side decides what to copy and vouches for it:

* **Incremental.** A file is requested only when the local store lacks it: a local file
  with the recorded size and BLAKE3 is already the file (for a job pulled before, the size
  is checked, as by the planner; ``--verify`` hashes those too). A second pull of
  unchanged jobs sends nothing.
* **Verified.** Every received file is hashed while it is written and must match the
  remote's record (outputs) or the remote's listing (``repx/`` files); a mismatch leaves
  that job out, with an error naming it.
* **Nothing half-recorded.** Files land in a staging folder inside the store, move into the
  job's folder only when all of that job's files are verified, and the job's record is
  written last. A pull cut off anywhere leaves at most folders without records (which the
  next pull reuses, and ``repx gc`` removes), never a record whose files are missing.
* **Local work wins.** A job that succeeded locally with a different record, or that a live
  local build holds, is left as it is and reported.

Outputs may be chosen by ``--include PATTERN`` (``fnmatch`` on the path under ``out/``) and
``--max-size`` (per file). A succeeded job pulled without some declared output is, for a
local ``repx build``, a job whose output is missing: it runs again there unless pulled
completely.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shutil
import stat
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Protocol

import blake3

from repx.errors import RepxError, UsageError
from repx.store import layout
from repx.store.errors import StoreError
from repx.store.lmdb_store import Store, hash_file, live_claim, owner_alive
from repx.store.records import JobRecord, Status, record_from_json, record_to_json
from repx.store.space import human

#: Version of the JSON both sides exchange; the remote repx is the local one shipped, so a
#: mismatch means a stale shipment, reported rather than misread.
PULL_FORMAT = 1

#: The kinds of file of a job folder that pull copies, by folder name.
OUT, META = layout.OUT, layout.META

#: Files of ``repx/`` that are not the job's account of itself: temporary files of a record
#: being written, and stamps of other tools.
_META_SKIPPED = (f"{layout.RECORD_JSON}.tmp*", layout.MAKE_STAMP)

#: The local staging folders, one per pulling process, inside the store's root.
STAGING_PREFIX = ".pull-"

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_CHUNK = 1 << 20


class PullError(RepxError):
    """Pulled files that do not match the target's records, or a malformed answer.

    Exit code 1, as for a build whose job failed: the command was right, the data was not.
    """

    exit_code = 1


def parse_max_size(text: str) -> int:
    """``--max-size``: ``500K``, ``10M``, ``1.5G`` or bytes (binary units)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise UsageError(f"--max-size {text!r} is not a size (examples: 500K, 10M, 2G, 4096)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _relative_path(text: object, what: str) -> str:
    """A path under a job folder as sent over the wire: relative, ``/``-separated, no
    ``..`` and no empty part, so that it can never name a file outside that folder."""
    if not isinstance(text, str) or not text or "\0" in text or text.startswith("/"):
        raise PullError(f"{what}: {text!r} is not a relative path")
    if any(part in ("", ".", "..") for part in text.split("/")):
        raise PullError(f"{what}: {text!r} is not a plain relative path")
    return text


def _job_id(text: object, what: str) -> str:
    if (not isinstance(text, str) or not text or text in (".", "..") or "/" in text
            or "\0" in text):
        raise PullError(f"{what}: {text!r} is not a job id")
    return text


# =============================================================================== remote side


def _meta_files(meta_dir: Path) -> list[list[Any]]:
    """``[name, size, blake3]`` of each regular file directly in a job's ``repx/``."""
    try:
        names = sorted(os.listdir(meta_dir))
    except FileNotFoundError:
        return []
    files: list[list[Any]] = []
    for name in names:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in _META_SKIPPED):
            continue
        path = meta_dir / name
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(path)
            if stat.S_ISREG(st.st_mode):
                files.append([name, st.st_size, hash_file(path, st.st_size)])
    return files


def serve_list(store_dir: Path, request: dict[str, Any]) -> dict[str, Any]:
    """The answer to ``list``: the finished records among ``request["jobs"]`` (and their
    scatter-gather units), each with its ``repx/`` files; ids still running or queued are
    named in ``active``, ids without a record in ``missing``."""
    wanted = [_job_id(j, "list request") for j in request.get("jobs", [])]
    answer: dict[str, Any] = {"format": PULL_FORMAT, "records": [], "active": [],
                              "missing": []}
    if not Store.exists(store_dir):
        answer["missing"] = wanted
        return answer
    with Store(store_dir, readonly=True) as store:
        records = store.get_many(wanted)
        answer["missing"] = [j for j in wanted if j not in records]
        queue = list(records.values())
        seen = set(records)
        while queue:
            record = queue.pop()
            if record.status.active:
                answer["active"].append(record.job_id)
                continue
            meta = store.meta_dir(record.job_id)
            answer["records"].append({"record": record_to_json(record),
                                      "meta": _meta_files(meta)})
            units = layout.read_units(meta, record.job_id)
            if units:
                more = [u for u in layout.unit_ids(units) if u not in seen]
                seen.update(more)
                queue.extend(store.get_many(more).values())
    return answer


def serve_send(store_dir: Path, request: dict[str, Any], stream: IO[bytes]) -> None:
    """The answer to ``send``: a tar of the requested ``[job id, "out"|"repx", path]``
    files on ``stream``. Links are followed (the record vouches for their content); a file
    that is gone or not regular is left out, and the receiver reports it missing."""
    outputs = Path(store_dir) / layout.OUTPUTS
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for item in request.get("files", []):
            if not isinstance(item, list) or len(item) != 3 or item[1] not in (OUT, META):
                raise PullError(f"send request: {item!r} is not [job id, out|repx, path]")
            job = _job_id(item[0], "send request")
            rel = _relative_path(item[2], f"send request for job {job}")
            path = outputs / job / item[1] / rel
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed below, after addfile
            except OSError:
                continue
            with handle:
                st = os.fstat(handle.fileno())
                if not stat.S_ISREG(st.st_mode):
                    continue
                info = tarfile.TarInfo(f"{job}/{item[1]}/{rel}")
                info.size = st.st_size
                info.mode = stat.S_IMODE(st.st_mode) & 0o755 | 0o600
                info.mtime = int(st.st_mtime)
                tar.addfile(info, handle)


# =============================================================================== local side


class PullSource(Protocol):
    """Where pulled jobs come from: the remote repx's two answers."""

    def list_records(self, job_ids: Sequence[str]) -> dict[str, Any]:
        """The ``list`` answer for these job ids."""
        ...

    def send_files(self, files: Sequence[Sequence[str]],
                   read: Callable[[IO[bytes]], None]) -> None:
        """Have ``send`` stream these files; ``read`` consumes the tar."""
        ...


class TargetSource:
    """A :class:`PullSource` over ssh: the target's shipped repx, run through
    :meth:`repx.remote.targets.Target.ssh` (the same transport as every ``--target``
    command)."""

    def __init__(self, target: Any) -> None:
        from repx.remote.ship import ensure_repx

        self.target = target
        self.remote = ensure_repx(target)
        self.ssh = self.remote.ssh

    def _argv(self, action: str) -> list[str]:
        return self.remote.argv(["_pull-serve", action, "--store", self.remote.store_dir])

    def list_records(self, job_ids: Sequence[str]) -> dict[str, Any]:
        argv = self._argv("list")
        request = json.dumps({"format": PULL_FORMAT, "jobs": list(job_ids)}).encode()
        result = self.ssh.run(argv, input=request)
        try:
            answer = json.loads(result.stdout)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PullError(f"{self.target.name}: the remote repx's list answer is not JSON "
                            f"({exc}); its output began {result.stdout[:200]!r}") from None
        if not isinstance(answer, dict) or answer.get("format") != PULL_FORMAT:
            raise PullError(f"{self.target.name}: the remote repx answers in another pull "
                            "format (a stale copy of repx in base_path?)")
        return answer

    def send_files(self, files: Sequence[Sequence[str]],
                   read: Callable[[IO[bytes]], None]) -> None:
        request = json.dumps({"format": PULL_FORMAT, "files": [list(f) for f in files]})
        self.ssh.receive(self._argv("send"), read, input=request.encode())


@dataclass
class PullSelection:
    """Which outputs to copy: all, or those matching one of ``include`` and at most
    ``max_size`` bytes each. ``repx/`` files (logs, params) are always copied."""

    include: tuple[str, ...] = ()
    max_size: int | None = None

    def wants(self, path: str, size: int) -> bool:
        if self.max_size is not None and size > self.max_size:
            return False
        return not self.include or any(fnmatch.fnmatchcase(path, p) for p in self.include)


@dataclass
class PullSummary:
    """What a pull did, for the CLI's summary line and ``--json``."""

    #: Jobs whose record was written to the local store now.
    imported: list[str] = field(default_factory=list)
    #: Jobs already local with the target's record and every chosen file.
    up_to_date: list[str] = field(default_factory=list)
    #: Jobs left alone: succeeded locally with another record, or held by a local build.
    kept_local: list[str] = field(default_factory=list)
    #: Jobs still running or queued on the target (pull them when they are done).
    active: list[str] = field(default_factory=list)
    #: Chosen jobs the target has no record of.
    missing: list[str] = field(default_factory=list)
    #: Jobs whose files did not arrive intact: ``{job id: why}``; not recorded.
    failed: dict[str, str] = field(default_factory=dict)
    files_received: int = 0
    bytes_received: int = 0
    #: Outputs left on the target by --include / --max-size.
    outputs_left: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"imported": self.imported, "up_to_date": self.up_to_date,
                "kept_local": self.kept_local, "active": self.active,
                "missing": self.missing, "failed": self.failed,
                "files_received": self.files_received, "bytes_received": self.bytes_received,
                "outputs_left": self.outputs_left, "seconds": round(self.seconds, 3)}


@dataclass
class _Wanted:
    """One file a job needs locally: where it goes and what it must be."""

    kind: str
    rel: str
    size: int
    blake3: str
    mode: int = 0o644


@dataclass
class _JobPlan:
    record: JobRecord
    #: Every chosen file of the job (present locally or not).
    files: list[_Wanted]
    #: Keys ``(kind, rel)`` of the files to receive.
    needed: set[tuple[str, str]]
    #: Whether the local record differs (the record is (re)written, stale files removed).
    new_record: bool


def _comparable(record: JobRecord) -> dict[str, Any]:
    """A record's content as compared between the two stores (the log paths differ by
    design: each store names its own folders)."""
    data = record_to_json(record)
    data.pop("stdout_log", None)
    data.pop("stderr_log", None)
    return data


def _present(path: Path, size: int, digest: str, *, rehash: bool = True) -> bool:
    """Is the local file at ``path`` already the recorded file? Without ``rehash`` the size
    alone decides (for a file an earlier pull already verified)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    if not rehash:
        return True
    try:
        return hash_file(path, size) == digest
    except OSError:
        return False


def _parse_answer(answer: dict[str, Any], where: str) -> list[tuple[JobRecord, list[_Wanted]]]:
    """The records and ``repx/`` files of a ``list`` answer, checked."""
    entries = answer.get("records")
    if not isinstance(entries, list):
        raise PullError(f"{where}: the list answer has no records")
    parsed: list[tuple[JobRecord, list[_Wanted]]] = []
    for entry in entries:
        try:
            record = record_from_json(entry.get("record"), f"{where}: a record")
        except (StoreError, AttributeError) as exc:
            raise PullError(f"{where}: {exc}") from None
        _job_id(record.job_id, where)
        meta = []
        for item in entry.get("meta") or []:
            try:
                name, size, digest = item
                meta.append(_Wanted(META, _relative_path(name, f"{where}: job {record.job_id}"),
                                    int(size), str(digest)))
            except (TypeError, ValueError):
                raise PullError(f"{where}: job {record.job_id}: {item!r} is not a "
                                "[name, size, blake3] entry") from None
        for output in record.outputs:
            _relative_path(output.path, f"{where}: output of job {record.job_id}")
        parsed.append((record, meta))
    return parsed


def _clean_stale_staging(store_root: Path) -> None:
    """Remove the staging folders of pulls whose process is gone."""
    for entry in store_root.glob(f"{STAGING_PREFIX}*"):
        pid = entry.name[len(STAGING_PREFIX):]
        if pid.isdigit() and not owner_alive("", int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


class _Receiver:
    """Writes a ``send`` tar into the staging folder, hashing every file as it lands."""

    def __init__(self, staging: Path, expected: dict[tuple[str, str, str], _Wanted],
                 summary: PullSummary) -> None:
        self.staging = staging
        self.expected = expected
        self.summary = summary
        #: ``(job, kind, rel)`` of the files received intact.
        self.received: set[tuple[str, str, str]] = set()
        #: Where each file received intact waits in the staging folder.
        self.staged: dict[tuple[str, str, str], Path] = {}
        self.numbered = 0
        self.failed: dict[str, str] = {}

    def __call__(self, stream: IO[bytes]) -> None:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                self._take(tar, member)

    def _take(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = member.name.split("/", 2)
        key = (parts[0], parts[1], parts[2]) if len(parts) == 3 else None
        wanted = self.expected.get(key) if key else None
        if key is None or wanted is None or not member.isfile():
            raise PullError(f"the target sent {member.name!r}, which was not asked for")
        source = tar.extractfile(member)
        assert source is not None
        # One flat folder, a number per file: thousands of small files would otherwise cost
        # as many folders made here and removed again.
        self.numbered += 1
        path = self.staging / str(self.numbered)
        hasher = blake3.blake3()
        size = 0
        with open(path, "wb") as out:
            while chunk := source.read(_CHUNK):
                hasher.update(chunk)
                out.write(chunk)
                size += len(chunk)
        self.summary.files_received += 1
        self.summary.bytes_received += size
        digest = hasher.hexdigest()
        if size != wanted.size or digest != wanted.blake3:
            self.failed.setdefault(
                key[0], f"{key[1]}/{key[2]} arrived as {size} bytes with BLAKE3 {digest}; the "
                f"target's record says {wanted.size} bytes, {wanted.blake3} (its copy is "
                "damaged or changed since the job ran: `repx cache verify --target` checks)")
            path.unlink()
            return
        wanted.mode = stat.S_IMODE(member.mode) & 0o755 | 0o600
        self.staged[key] = path
        self.received.add(key)


def pull_jobs(source: PullSource, store: Store, job_ids: Sequence[str],
              selection: PullSelection | None = None, *, where: str = "the target",
              rehash: bool = False,
              progress: Callable[[str], None] | None = None) -> PullSummary:
    """Copy the finished jobs among ``job_ids`` from ``source`` into ``store``.

    See the module docstring for the rules. The local files of a job already pulled (its
    local record is the target's) count as present when their size is right, as for the
    planner's up-to-date check; ``rehash`` hashes them too (``repx pull --verify``). Raises
    :class:`PullError` after doing all it can when some job's files did not arrive intact
    (those jobs are in ``failed`` and were not recorded; the others were).
    """
    selection = selection or PullSelection()
    started = time.monotonic()
    summary = PullSummary()
    answer = source.list_records(job_ids)
    summary.active = [str(j) for j in answer.get("active", [])]
    summary.missing = [str(j) for j in answer.get("missing", [])]
    plans = _plan(store, _parse_answer(answer, where), selection, summary, rehash=rehash)
    expected = {(p.record.job_id, f.kind, f.rel): f
                for p in plans for f in p.files if (f.kind, f.rel) in p.needed}
    if progress and expected:
        total = sum(f.size for f in expected.values())
        progress(f"receiving {len(expected)} files ({human(total)}) of {len(plans)} jobs")
    store.root.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(store.root)
    staging = store.root / f"{STAGING_PREFIX}{os.getpid()}"
    try:
        receiver = _Receiver(staging, expected, summary)
        if expected:
            staging.mkdir(mode=0o700, exist_ok=True)
            try:
                source.send_files(sorted(expected), receiver)
            except (RepxError, tarfile.TarError, EOFError, OSError) as exc:
                # A cut connection: what arrived whole is still installed, the rest is
                # asked for again by the next pull.
                why = exc.message if isinstance(exc, RepxError) else f"{type(exc).__name__}: {exc}"
                for key in expected.keys() - receiver.received:
                    receiver.failed.setdefault(key[0], f"the transfer stopped ({why})")
        for key in expected.keys() - receiver.received:
            receiver.failed.setdefault(key[0], f"{key[1]}/{key[2]} was not sent (it is "
                                               "missing on the target)")
        summary.failed = receiver.failed
        _install(store, receiver.staged,
                 [p for p in plans if p.record.job_id not in receiver.failed], summary)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary.seconds = time.monotonic() - started
    if summary.failed:
        first = next(iter(summary.failed.items()))
        more = len(summary.failed) - 1
        raise PullError(
            f"{len(summary.failed)} job(s) from {where} not pulled: job {first[0]}: {first[1]}"
            + (f" (and {more} more)" if more else "")
            + f"; {len(summary.imported)} job(s) pulled, {len(summary.up_to_date)} already here")
    return summary


def _plan(store: Store, entries: list[tuple[JobRecord, list[_Wanted]]],
          selection: PullSelection, summary: PullSummary, *, rehash: bool) -> list[_JobPlan]:
    """Which jobs to import, and which of their files the local store lacks."""
    local_records = store.get_many(r.job_id for r, _ in entries)
    plans: list[_JobPlan] = []
    for record, meta in entries:
        job_id = record.job_id
        local = local_records.get(job_id)
        same = local is not None and _comparable(local) == _comparable(record)
        if local is not None and not same:
            if local.status is Status.SUCCEEDED or live_claim(local):
                summary.kept_local.append(job_id)
                continue
        files = list(meta)
        if record.status is Status.SUCCEEDED:
            for output in record.outputs:
                if selection.wants(output.path, output.size):
                    files.append(_Wanted(OUT, output.path, output.size, output.blake3))
                else:
                    summary.outputs_left += 1
        job_dir = store.job_dir(job_id)
        # A file of a job that has the target's record here was verified when it came;
        # any other local file (an earlier local attempt's) must prove its content.
        needed = {(f.kind, f.rel) for f in files
                  if not _present(job_dir / f.kind / f.rel, f.size, f.blake3,
                                  rehash=rehash or not same)}
        if same and not needed:
            summary.up_to_date.append(job_id)
            continue
        plans.append(_JobPlan(record, files, needed, new_record=not same))
    return plans


def _install(store: Store, staged: dict[tuple[str, str, str], Path],
             plans: Iterable[_JobPlan], summary: PullSummary) -> None:
    """Move each job's verified files into its folder, then write its record."""
    folders = store.folders
    with store.batch():
        for plan in plans:
            job_id = plan.record.job_id
            job_dir = store.job_dir(job_id)
            if plan.new_record:
                _remove_stale_outputs(job_dir / OUT, plan)
            by_key = {(f.kind, f.rel): f for f in plan.files}
            made: set[Path] = set()
            for kind, rel in sorted(plan.needed):
                target = job_dir / kind / rel
                if target.parent not in made:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made.add(target.parent)
                source = staged[job_id, kind, rel]
                os.chmod(source, by_key[kind, rel].mode)
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(source, target)
            if plan.record.status is Status.SUCCEEDED:
                # A job without outputs still has its $out, as after a local run.
                (job_dir / OUT).mkdir(parents=True, exist_ok=True)
            stdout_log, stderr_log = folders.logs(job_id)
            record = replace(plan.record,
                             stdout_log=stdout_log if plan.record.stdout_log else "",
                             stderr_log=stderr_log if plan.record.stderr_log else "")
            record.outputs = plan.record.outputs
            store.put(record)
            summary.imported.append(job_id)


def _remove_stale_outputs(out: Path, plan: _JobPlan) -> None:
    """Before a new record is written, ``out/`` may hold files of an earlier local attempt:
    everything not in the target's record goes (a chosen file that is already right stays)."""
    if not out.is_dir():
        return
    recorded = {o.path: o for o in plan.record.outputs}
    for dirpath, _dirs, names in os.walk(out):
        for name in names:
            path = Path(dirpath) / name
            rel = path.relative_to(out).as_posix()
            output = recorded.get(rel)
            if output is None or not _present(path, output.size, output.blake3):
                with contextlib.suppress(OSError):
                    path.unlink()
