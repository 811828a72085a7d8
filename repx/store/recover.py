"""``repx cache recover``: rebuild the database of a store from its job folders.

The database is an index: what each job folder holds is the truth. Every job that finishes
leaves ``outputs/<id>/repx/record.json`` (its record: status, timings, run, stage, lab,
logs and the manifest of its outputs), and every change of the gc roots leaves
``<store>/roots.json``. So a database that is lost (deleted, emptied) or damaged (cut short,
corrupt) costs nothing:

1. a damaged database is moved aside, whole, to ``db.damaged-<UTC time>`` (refused while
   another process has the store open);
2. every folder whose ``record.json`` names it and whose job the database does not hold (or
   holds only as a stale claim: RUNNING or QUEUED under a process that is gone, as a commit
   that met a full disk leaves it) gets its record back. A SUCCEEDED record only if the
   files under ``out/`` are the ones its manifest lists (size and BLAKE3; ``quick``: size
   only) — otherwise the next build runs the job again, which is the safe answer. FAILED
   and CANCELLED records come back as they were (the next build runs those jobs anyway;
   ``repx show`` keeps their reason);
3. the gc roots missing from the database come back from ``roots.json``; without it, each
   lab that a recovered record names becomes an unpinned root.

What is not recovered: folders without a ``record.json`` (a job that never finished, or one
that finished under an older repx), the ``last_build`` statistics of ``repx cache stats``,
and the job lists recorded per gc root (``repx gc`` expands a root's lab again when it needs
them, or keeps the records whose ``lab`` is that root's when the lab is gone).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repx.store import layout
from repx.store.errors import StoreDamagedError, StoreError
from repx.store.lmdb_store import DATA_FILE, Store, live_claim, verify_outputs
from repx.store.records import JobRecord, Root, Status, record_from_json

#: Records written per transaction while recovering (one fsync each).
_BATCH = 1000


@dataclass
class RecoverResult:
    """What :func:`recover` did (or, in a dry run, would do)."""

    store: str
    dry_run: bool
    #: "whole", "missing" (no or an empty data file) or "damaged".
    database: str
    #: Why the database was judged damaged, and where it was moved.
    damage: str | None = None
    moved_to: str | None = None
    #: Job ids given their record back, by the status recovered.
    recovered: dict[str, list[str]] = field(default_factory=dict)
    #: Folders whose job the database already holds.
    already: list[str] = field(default_factory=list)
    #: Recovered jobs whose stale claim (RUNNING/QUEUED, owner gone) the record replaced.
    stale_replaced: list[str] = field(default_factory=list)
    #: (folder name, why it was not recovered).
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: gc roots restored, and where they came from ("roots.json" or "records").
    roots: list[Root] = field(default_factory=list)
    roots_from: str | None = None
    seconds: float = 0.0

    @property
    def recovered_count(self) -> int:
        return sum(len(ids) for ids in self.recovered.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "dry_run": self.dry_run,
            "database": self.database,
            "damage": self.damage,
            "moved_to": self.moved_to,
            "recovered": self.recovered,
            "already_recorded": self.already,
            "stale_claims_replaced": self.stale_replaced,
            "skipped": [{"folder": name, "reason": why} for name, why in self.skipped],
            "roots": [{"name": r.name, "lab_path": r.lab_path, "pinned": r.pinned}
                      for r in self.roots],
            "roots_from": self.roots_from,
            "seconds": round(self.seconds, 3),
        }


def recover(store_dir: str | os.PathLike[str], *, checksums: bool = True,
            dry_run: bool = False) -> RecoverResult:
    """Give every complete job folder of the store at ``store_dir`` its record back (see the
    module docstring); ``dry_run`` only reports what would be done."""
    clock = time.monotonic()
    root = Path(os.path.abspath(store_dir))
    db = root / "db"
    if not (root / layout.OUTPUTS).is_dir() and not (db / DATA_FILE).exists():
        raise StoreError(f"no repx store at {root}: it has neither {db} nor "
                         f"{root / layout.OUTPUTS}")
    state, damage = _database_state(root)
    result = RecoverResult(str(root), dry_run, state, damage)
    if state == "damaged" and not dry_run:
        result.moved_to = str(_move_aside(db))
    store: Store | None = None
    if not dry_run:
        store = Store(root, recovering=True)
    elif state == "whole":
        store = Store(root, readonly=True, recovering=True)
    try:
        records = _scan_folders(root, store, checksums, result)
        roots, result.roots_from = _missing_roots(root, store, records)
        if store is not None and not dry_run:
            for start in range(0, len(records), _BATCH):
                with store.batch():
                    for record in records[start:start + _BATCH]:
                        store.put(record)
            for restored in roots:
                store.put_root(restored)
        result.roots = roots
    finally:
        if store is not None:
            store.close()
    result.seconds = time.monotonic() - clock
    return result


def _database_state(root: Path) -> tuple[str, str | None]:
    """("whole" | "missing" | "damaged", why damaged): opened read-only, every record and
    root read once (a corrupt record is damage too)."""
    data = root / "db" / DATA_FILE
    try:
        if data.stat().st_size == 0:
            return "missing", None
    except FileNotFoundError:
        return "missing", None
    try:
        with Store(root, readonly=True, recovering=True) as store:
            for _record in store.records():
                pass
            store.roots()
    except StoreDamagedError as exc:
        return "damaged", exc.damage
    except StoreError as exc:
        if "corrupt" not in exc.message:
            raise
        return "damaged", exc.message
    return "whole", None


def _move_aside(db: Path) -> Path:
    """Rename the damaged ``db`` folder to ``db.damaged-<UTC time>`` (kept: it is the user's
    data, and a specialist may get more out of it); refused while a process has it open."""
    from repx.store import lmdb_store

    if os.path.realpath(db) in lmdb_store._ENVS:  # noqa: SLF001 - the module's own registry
        raise StoreError(f"the damaged job store at {db.parent} is open in this process; "
                         "close it before recovering")
    if _in_use(db):
        raise StoreError(f"another process has the job store at {db.parent} open (a build?); "
                         "stop it, then run `repx cache recover` again")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = db.with_name(f"db.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = db.with_name(f"db.damaged-{stamp}-{n}")
    try:
        db.rename(target)
    except OSError as exc:
        raise StoreError(f"cannot move the damaged database {db} aside to {target}: "
                         f"{exc.strerror}") from exc
    return target


def _in_use(db: Path) -> bool:
    """Whether another process has the environment open: every process that opens it holds
    a shared fcntl lock on the first byte of ``lock.mdb``, so an exclusive one is refused."""
    try:
        fd = os.open(db / "lock.mdb", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        return False
    finally:
        os.close(fd)


def _scan_folders(root: Path, store: Store | None, checksums: bool,
                  result: RecoverResult) -> list[JobRecord]:
    """The records to write: one per complete folder the database does not hold."""
    outputs = root / layout.OUTPUTS
    try:
        names = sorted(os.listdir(outputs))
    except FileNotFoundError:
        names = []
    except OSError as exc:
        raise StoreError(f"cannot list {outputs}: {exc.strerror}") from exc
    known = store.get_many(names) if store is not None else {}
    found: list[JobRecord] = []
    for name in names:
        held = known.get(name)
        stale = held is not None and held.status.active and not live_claim(held)
        if held is not None and not stale:
            result.already.append(name)
            continue
        record, why = _folder_record(outputs / name, name, checksums)
        if record is None and stale:
            result.already.append(name)  # the stale claim stays: the next build runs it
            continue
        if record is None:
            result.skipped.append((name, why))
            continue
        found.append(record)
        result.recovered.setdefault(record.status.value, []).append(name)
        if stale:
            result.stale_replaced.append(name)
    return found


def _folder_record(folder: Path, name: str, checksums: bool) -> tuple[JobRecord | None, str]:
    """The record ``folder`` vouches for, or None and why not."""
    if not folder.is_dir() or folder.is_symlink():
        return None, "not a job folder"
    path = folder / layout.META / layout.RECORD_JSON
    try:
        record = record_from_json(json.loads(path.read_text(encoding="utf-8")), str(path))
    except FileNotFoundError:
        return None, (f"no {layout.META}/{layout.RECORD_JSON}: the job never finished, or "
                      "finished under a repx that did not write one")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"cannot read {path}: {exc}"
    except StoreError as exc:
        return None, exc.message
    if record.job_id != name:
        return None, f"{path} is the record of another job ({record.job_id})"
    if not record.status.terminal:
        return None, f"{path} records the job as {record.status.value}, not finished"
    if record.status is Status.SUCCEEDED:
        problems = verify_outputs(folder / layout.OUT, record, checksums=checksums)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            return None, (f"its outputs are not the ones it recorded: {problems[0]}{more}; "
                          "the next build runs it again")
    return record, ""


def _missing_roots(root: Path, store: Store | None,
                   records: list[JobRecord]) -> tuple[list[Root], str | None]:
    """The gc roots to restore, and where they come from: those of ``roots.json`` that the
    database lacks; without that file, an unpinned root for every lab that the recovered
    records name."""
    have = store.roots() if store is not None else []
    names = {r.name for r in have}
    labs = {r.lab_path for r in have}
    mirror = root / layout.ROOTS_JSON
    saved: list[Root] = []
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
        data = json.loads(mirror.read_text(encoding="utf-8"))
        saved = [Root(str(r["name"]), str(r["lab_path"]), bool(r["pinned"]),
                      float(r["created"])) for r in data["roots"]]
    if saved:
        return [r for r in saved if r.name not in names], layout.ROOTS_JSON
    newest: dict[str, float] = {}
    for record in records:
        if record.lab and record.lab not in labs:
            newest[record.lab] = max(newest.get(record.lab, 0.0), record.finished or 0.0)
    roots = [Root(os.path.basename(lab.rstrip("/")) or lab, lab, False, created)
             for lab, created in sorted(newest.items(), key=lambda item: item[1])]
    return roots, "the recovered records" if roots else None
