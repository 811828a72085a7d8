"""Garbage collection of the job store: gc roots, reachability, and what ``repx gc`` frees.

A **gc root** is a built lab. Every real ``repx build`` registers the lab it builds
(:func:`register_build_root`), so every lab you have built stays a root — and keeps every
job it reaches — until you remove it with ``repx gc unpin``. ``repx gc pin`` marks a lab as
one you want to keep: ``repx gc --keep-recent N`` drops unpinned roots beyond the N newest,
never pinned ones. Unpinning a pinned root makes it an ordinary (automatic) root again, as
a build left it, so unpinning never leaves a lab without a root. ``repx gc`` then removes
every record and ``outputs/<id>`` folder that no root reaches.

The **current lab** (``--lab DIR``, ``-f FILE`` built now, ``./result``, or the folder's lab
file built now: :func:`current_lab`) is kept whether or not it is a root, and
``--keep-recent`` never drops its root: the lab you are working on is never collected.

Why the job ids are recorded when a root is registered: a lab lives in ``/nix/store``, and
``nix-collect-garbage`` deletes it once nothing links to it (``./result`` replaced by a newer
build). gc must still know which jobs that lab reaches without expanding it, so registration
stores them in the store's meta db under ``root-jobs:<lab store name>`` (see
:func:`lab_jobs_meta`). The key is the lab's store name, not the root's name, so a lab
pinned under a name of its own shares the record its build wrote.

What gc keeps, besides the jobs of every root:

* the units of a reachable scatter-gather job (its scatter and every branch step, listed in
  ``outputs/<sg-id>/repx/units.json``): they have ids and records of their own that no lab
  lists;
* every record whose ``lab`` is a root's lab: the executor may record a unit before its
  ``units.json`` is complete, and what a lab ran is never garbage while the lab is a root;
* every RUNNING or QUEUED job whose owner may still be alive (:func:`repx.store.live_claim`):
  it may be a build of a lab that registered its root after gc read the roots;
* every RUNNING or QUEUED job that SLURM still runs (asked through the ``on_slurm``
  callback the CLI passes: the store layer does not talk to SLURM), though the ``--no-wait``
  build that submitted it is gone.

Nothing is removed that the caller did not approve: ``repx gc`` plans with a dry run, shows
the plan, asks (or takes ``--yes``), and passes the plan as ``approved`` to the real run,
which removes only what the plan listed even if more became garbage meanwhile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repx.errors import LabError, UsageError
from repx.lab import LabOptions
from repx.lab.expand import load_job_graph
from repx.lab.graph import JobGraph
from repx.lab.nix import find_lab_source, find_lab_upward
from repx.lab.open import is_lab_dir, locate_lab
from repx.store.errors import StoreError
from repx.store.layout import OUTPUTS, read_units, unit_ids
from repx.store.lmdb_store import Store, live_claim
from repx.store.records import JobRecord, Root

#: ``on_slurm`` callback of :func:`collect`: the ids, among the given RUNNING/QUEUED
#: records, of the jobs SLURM still runs or queues.
OnSlurm = Callable[[list[JobRecord]], set[str]]

#: Prefix of the meta keys that hold the job ids of a root's lab.
ROOT_JOBS_PREFIX = "root-jobs:"

#: Separator of the ids in a root-jobs record. Job ids are ``<hash>-<pname>-<version>`` and
#: pnames are Nix store names (``[A-Za-z0-9+._?=-]``), so a newline never occurs in one.
#: One joined string instead of a msgpack array: 20 000 ids pack and unpack as one string
#: copy instead of 20 000 string objects, which keeps a new root cheap on every build.
_SEP = "\n"

#: How many jobs ``repx gc`` deletes per store transaction (the writer lock is held for one).
_DELETE_CHUNK = 500

#: ``repx gc`` re-reads the roots before deleting; if a build registered one meanwhile, it
#: recomputes what is reachable, at most this many times.
_MAX_REPLANS = 3


def lab_key(lab_path: str) -> str:
    """The name of a lab in the store: its store path's last component (``<hash>-repx-lab``).

    It is also :meth:`Store.add_root`'s default root name, so a build's root and its
    root-jobs record share it.
    """
    return os.path.basename(lab_path.rstrip("/")) or lab_path


def root_jobs_key(lab_path: str) -> str:
    return ROOT_JOBS_PREFIX + lab_key(lab_path)


def lab_jobs_meta(graph: JobGraph) -> dict[str, Any]:
    """What a root records about its lab: every job id, and which of them scatter-gather.

    The scatter-gather ids are kept apart so that gc reads ``units.json`` for those jobs only.
    """
    jobs = graph.jobs
    sg = [job_id for job_id, job in jobs.items() if job.kind == "scatter-gather"]
    return {
        "lab": str(graph.lab.path),
        "count": len(jobs),
        "ids": _SEP.join(jobs),
        "sg": _SEP.join(sg),
        "created": time.time(),
    }


def _split(text: object) -> list[str]:
    return text.split(_SEP) if isinstance(text, str) and text else []


def register_build_root(store: Store, graph: JobGraph) -> None:
    """Make the lab being built a gc root (unpinned), recording the jobs it reaches.

    Called by ``repx build`` at the start of every real build. When the lab already is a root
    (a rebuild of an unchanged lab, the common case) this reads the roots and returns: the
    same lab path means the same jobs, recorded when the root was made. Otherwise it writes
    the lab's job ids first and the root second, so a root never exists without its ids.
    A root the user pinned (possibly under another name) is left as it is.
    """
    lab_path = str(graph.lab.path)
    for root in store.roots():
        if root.lab_path == lab_path:
            return
    store.set_meta(root_jobs_key(lab_path), lab_jobs_meta(graph))
    store.add_root(lab_path)


def pin_lab(store: Store, graph: JobGraph, name: str | None = None) -> Root:
    """Pin the lab of ``graph`` as a gc root called ``name`` (default: its store name).

    The lab's unpinned build root, if any, is replaced by the pinned one (added first, so
    the lab is a root at every moment). A name already used by another lab is refused rather
    than silently repointed.
    """
    lab_path = str(graph.lab.path)
    name = name if name is not None else lab_key(lab_path)
    if not name or "\0" in name or name != name.strip():
        raise UsageError(f"invalid gc root name {name!r}")
    roots = store.roots()
    for root in roots:
        if root.name == name and root.lab_path != lab_path:
            raise UsageError(
                f"gc root '{name}' already holds lab {root.lab_path}; choose another name "
                f"or unpin it first (`repx gc unpin {name}`)"
            )
    key = root_jobs_key(lab_path)
    if not _has_ids(store.get_meta(key)):
        store.set_meta(key, lab_jobs_meta(graph))
    store.add_root(lab_path, pinned=True, name=name)
    for root in roots:
        if root.lab_path == lab_path and root.name != name and not root.pinned:
            store.remove_root(root.name)
    for root in store.roots():
        if root.name == name:
            return root
    raise StoreError(f"gc root '{name}' vanished while it was being pinned in {store.root}")


@dataclass(frozen=True)
class Unpinned:
    """What :func:`unpin` did: the root it took away and, for a pinned root, the automatic
    root that now stands for its lab (None when the lab keeps no root of its own)."""

    removed: Root
    automatic: Root | None


def unpin(store: Store, name_or_prefix: str) -> Unpinned:
    """Take away the gc root ``name_or_prefix`` (a name, a lab path or a unique name prefix).

    A pinned root turns back into the ordinary root a build gives its lab (unpinned, named
    after the lab's store path, dated when the lab was first registered): unpinning
    withdraws the pin, not the lab, so ``repx gc`` keeps its jobs until ``--keep-recent``
    drops that root or it is unpinned again. The automatic root is written before the pinned
    one goes, so the lab is a root at every moment. A pinned root whose lab has another root
    (pinned under a second name) and an automatic root are removed (:func:`drop_root`).
    """
    root = store.find_root(name_or_prefix)
    roots = store.roots()
    if not root.pinned or any(r.lab_path == root.lab_path and r.name != root.name
                              for r in roots):
        return Unpinned(drop_root(store, root.name), None)
    automatic = Root(lab_key(root.lab_path), root.lab_path, False, _first_registered(store, root))
    for other in roots:
        if other.name == automatic.name and other.lab_path != root.lab_path:
            raise UsageError(
                f"cannot unpin '{root.name}': its lab's automatic root name "
                f"'{automatic.name}' is held by lab {other.lab_path}; unpin that one first")
    store.put_root(automatic)
    if automatic.name != root.name:
        store.remove_root(root.name)
    return Unpinned(root, automatic)


def recorded_lab_jobs(store: Store, lab_path: str) -> set[str] | None:
    """The job ids a build of the lab at ``lab_path`` recorded (:func:`lab_jobs_meta`);
    None when no build of that lab used this store. Read without expanding the lab, so
    ``repx cache show`` can tell a job of the current lab from one of an older lab."""
    meta = store.get_meta(root_jobs_key(lab_path))
    return None if meta is None else set(_split(meta.get("ids")))


def _first_registered(store: Store, root: Root) -> float:
    """When the lab's jobs were first recorded (its first build or pin): the date the
    automatic root of an unpinned lab carries, so ``--keep-recent`` orders it by its build,
    not by the moment it was unpinned."""
    meta = store.get_meta(root_jobs_key(root.lab_path)) or {}
    created = meta.get("created")
    return float(created) if isinstance(created, int | float) else root.created


def drop_root(store: Store, name_or_prefix: str) -> Root:
    """Remove a gc root, pinned or not; returns it.

    Its jobs become garbage for the next ``repx gc`` unless another root (or the current
    lab) reaches them. The lab's root-jobs record is dropped when no other root uses it.
    """
    root = store.remove_root(name_or_prefix)
    if not any(r.lab_path == root.lab_path for r in store.roots()):
        forget_lab(store, root.lab_path)
    return root


def current_lab(options: LabOptions, cwd: Path | None = None) -> Path | None:
    """The lab ``repx gc`` must keep whatever the roots say: ``--lab DIR``; else ``-f FILE``
    built now; else the built lab ``result`` of this folder or of the lab it is in
    (:func:`result_near`); else the folder's lab file (looked up upward) built now. None
    when the folder has no lab at all (gc run from elsewhere with ``--store``).

    A lab that is named or found but cannot be built is an error, not a silent "no current
    lab": gc must not go ahead without knowing what the lab in front of it needs.
    """
    base = cwd or Path.cwd()
    if options.lab_dir is None and options.lab_file is None:
        result = result_near(base)
        if result is not None:
            return result
        try:
            find_lab_source(None, base)
        except LabError:
            return None
    try:
        return locate_lab(options, base)
    except LabError as exc:
        raise LabError(
            f"repx gc keeps the current lab's jobs, and cannot tell which they are: "
            f"{exc.message} (name the lab with --lab DIR, or run gc from another folder "
            "with --store)", detail=exc.detail) from exc


def result_near(base: Path) -> Path | None:
    """The built lab (resolved) of the ``result`` link in ``base``, else beside the lab file
    found upward from ``base`` (in its folder, or in the lab's root for a lab in ``nix/``);
    None when none of them is a built lab.

    The same lookup as the store's default and ``repx show``'s: gc run in a subfolder of a
    lab (``stages/``) keeps that lab's jobs as it does in the lab's folder, where it would
    otherwise build the lab file anew (or find no current lab when there is only
    ``result``)."""
    folders = [base]
    found = find_lab_upward(base)
    if found is not None:
        folders += [found.folder, *([found.lab_root] if found.lab_root else [])]
    for folder in folders:
        result = folder / "result"
        if is_lab_dir(result):
            return result.resolve()
    return None


def forget_lab(store: Store, lab_path: str) -> None:
    """Drop the root-jobs record of a lab.

    The store has no way to delete a meta key yet; the record is then replaced by a few
    bytes that readers take as "no ids" (and a later build of the lab writes it anew).
    """
    key = root_jobs_key(lab_path)
    delete = getattr(store, "delete_meta", None)
    if callable(delete):
        delete(key)
    elif store.get_meta(key) is not None:
        store.set_meta(key, {"lab": lab_path, "removed": time.time()})


def _has_ids(meta: dict[str, Any] | None) -> bool:
    return meta is not None and isinstance(meta.get("ids"), str)


@dataclass
class RootInfo:
    """A root as ``repx gc roots`` shows it."""

    name: str
    lab_path: str
    pinned: bool
    created: float
    #: Jobs its lab reaches, None when unknown (no record, e.g. a root made by hand).
    jobs: int | None
    lab_exists: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pinned": self.pinned,
            "created": self.created,
            "jobs": self.jobs,
            "lab": self.lab_path,
            "lab_exists": self.lab_exists,
        }


def list_roots(store: Store) -> list[RootInfo]:
    """Every gc root, oldest first, with the number of jobs its lab reaches."""
    out: list[RootInfo] = []
    for root in store.roots():
        meta = store.get_meta(root_jobs_key(root.lab_path))
        count = meta.get("count") if _has_ids(meta) else None  # type: ignore[union-attr]
        out.append(RootInfo(root.name, root.lab_path, root.pinned, root.created,
                            count if isinstance(count, int) else None,
                            os.path.isdir(root.lab_path)))
    return out


# --------------------------------------------------------------------------------- collect


@dataclass
class GcResult:
    """What ``repx gc`` removed (or, in a dry run, would remove) and why the rest stays."""

    dry_run: bool
    roots: list[Root]
    #: Unpinned roots dropped by ``keep_recent`` (or that would be, in a dry run).
    dropped_roots: list[Root] = field(default_factory=list)
    #: The current labs (paths) kept whether or not they are roots.
    kept_labs: list[str] = field(default_factory=list)
    #: Records kept because a root or a current lab reaches them.
    reachable: int = 0
    #: Unreachable RUNNING/QUEUED jobs kept because their owner may be alive or SLURM
    #: still runs them.
    kept_running: list[str] = field(default_factory=list)
    #: (job id, bytes on disk) of the records removed with their folders.
    removed: list[tuple[str, int]] = field(default_factory=list)
    #: (folder name, bytes) of ``outputs/*`` folders that had no record.
    orphans: list[tuple[str, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(n for _, n in self.removed) + sum(n for _, n in self.orphans)

    @property
    def removes_nothing(self) -> bool:
        """Whether the run removes no record, folder or root (nothing to confirm)."""
        return not (self.removed or self.orphans or self.dropped_roots)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "roots": [r.name for r in self.roots],
            "dropped_roots": [r.name for r in self.dropped_roots],
            "kept_labs": self.kept_labs,
            "reachable": self.reachable,
            "kept_running": self.kept_running,
            "removed": [{"id": i, "bytes": n} for i, n in self.removed],
            "orphans": [{"folder": i, "bytes": n} for i, n in self.orphans],
            "freed_bytes": self.freed_bytes,
            "warnings": self.warnings,
        }


def dir_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed; unreadable parts skipped)."""
    total = 0
    stack = [str(path)]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except NotADirectoryError:
            try:
                total += os.lstat(top).st_size
            except OSError:
                pass
        except OSError:
            continue
    return total


def _root_ids(store: Store, root: Root, warnings: list[str],
              cache: dict[str, tuple[set[str], list[str]] | None], write: bool) -> (
        tuple[set[str], list[str]] | None):
    """(job ids, scatter-gather ids) of a root's lab, or None when they cannot be known."""
    if root.lab_path in cache:
        return cache[root.lab_path]
    meta = store.get_meta(root_jobs_key(root.lab_path))
    found: tuple[set[str], list[str]] | None = None
    if _has_ids(meta):
        assert meta is not None
        found = (set(_split(meta["ids"])), _split(meta.get("sg")))
    elif os.path.isdir(root.lab_path):
        # A root made without its ids (by hand, or by an older repx): expand the lab once.
        try:
            graph = load_job_graph(root.lab_path)
        except Exception as exc:  # noqa: BLE001 - any failure: keep going, say so
            warnings.append(f"gc root '{root.name}': cannot expand lab {root.lab_path} "
                            f"({exc}); it keeps only the records its lab wrote")
        else:
            meta = lab_jobs_meta(graph)
            if write:
                store.set_meta(root_jobs_key(root.lab_path), meta)
            found = (set(graph.jobs), _split(meta["sg"]))
    else:
        warnings.append(f"gc root '{root.name}': lab {root.lab_path} is gone and its jobs "
                        "were never recorded; it keeps only the records its lab wrote")
    cache[root.lab_path] = found
    return found


def _reachable(store: Store, roots: list[Root], warnings: list[str],
               cache: dict[str, tuple[set[str], list[str]] | None],
               write: bool) -> set[str]:
    reachable: set[str] = set()
    sg: set[str] = set()
    for root in roots:
        found = _root_ids(store, root, warnings, cache, write)
        if found is not None:
            reachable |= found[0]
            sg.update(found[1])
    # Units of scatter-gather jobs; a unit may itself be listed by another SG job's units,
    # never an SG job of its own (steps are plain scripts), so one level is enough.
    for sg_id in sorted(sg):
        try:
            units = read_units(store.meta_dir(sg_id), sg_id)
        except StoreError as exc:
            warnings.append(f"{exc.message}; its units are kept only if their lab is a root")
            continue
        except OSError:
            continue
        if units is not None:
            reachable.update(unit_ids(units))
    return reachable


def _root_signature(roots: Iterable[Root]) -> set[tuple[str, str]]:
    return {(r.name, r.lab_path) for r in roots}


def collect(store: Store, *, dry_run: bool = False, keep_recent: int | None = None,
            keep_labs: Iterable[str | os.PathLike[str]] = (),
            approved: GcResult | None = None, on_slurm: OnSlurm | None = None) -> GcResult:
    """Remove (or with ``dry_run`` only list) every record and output folder no root reaches.

    ``keep_recent`` first drops the unpinned roots beyond the ``keep_recent`` newest; None
    keeps every root. ``keep_labs`` (the current lab) are kept as if they were roots, and
    their roots are never dropped. ``approved`` (a dry run's result the user confirmed)
    limits what is removed to what it listed. ``on_slurm`` says which unreachable
    QUEUED/RUNNING records SLURM still runs (they are kept). Safe beside a running build:
    jobs claimed by a live process are kept, and the roots are read again just before
    deleting (a build that registered its lab meanwhile makes gc recompute what is reachable).
    """
    if keep_recent is not None and keep_recent < 0:
        raise UsageError(f"--keep-recent must be 0 or more, not {keep_recent}")
    kept_labs = list(dict.fromkeys(os.fspath(p) for p in keep_labs))
    roots = store.roots()
    dropped: list[Root] = []
    if keep_recent is not None:
        unpinned = [r for r in roots if not r.pinned and r.lab_path not in kept_labs]
        dropped = unpinned[: max(0, len(unpinned) - keep_recent)]  # roots are oldest first
        if approved is not None:
            allowed = {r.name for r in approved.dropped_roots}
            dropped = [r for r in dropped if r.name in allowed]
        if not dry_run:
            for root in dropped:
                drop_root(store, root.name)
            roots = store.roots()
        else:
            gone = {r.name for r in dropped}
            roots = [r for r in roots if r.name not in gone]
    result = GcResult(dry_run=dry_run, roots=roots, dropped_roots=dropped, kept_labs=kept_labs)
    cache: dict[str, tuple[set[str], list[str]] | None] = {}
    for _attempt in range(_MAX_REPLANS):
        result.warnings = []
        _find_garbage(store, result, cache, write=not dry_run, on_slurm=on_slurm)
        if dry_run:
            return result
        now = store.roots()
        if _root_signature(now) == _root_signature(result.roots):
            break
        result.roots = now  # a build registered (or someone removed) a root: plan again
    if approved is not None:
        _limit_to(result, approved)
    _delete(store, result)
    return result


def _limit_to(result: GcResult, approved: GcResult) -> None:
    """Keep in ``result`` only the removals ``approved`` listed: what became garbage after
    the user said yes waits for the next gc, which asks again."""
    jobs = {job_id for job_id, _ in approved.removed}
    folders = {name for name, _ in approved.orphans}
    result.removed = [(i, n) for i, n in result.removed if i in jobs]
    result.orphans = [(name, n) for name, n in result.orphans if name in folders]


def _find_garbage(store: Store, result: GcResult,
                  cache: dict[str, tuple[set[str], list[str]] | None], write: bool,
                  on_slurm: OnSlurm | None = None) -> None:
    """Fill ``result`` with what no root (and no current lab) reaches: records to remove,
    folders without a record, and live claims and SLURM jobs that are kept."""
    reachable = _reachable(store, result.roots, result.warnings, cache, write)
    root_labs = {r.lab_path for r in result.roots}
    # A current lab that is no root: reached as one, but nothing is written for it.
    extra = [Root(lab_key(lab), lab) for lab in result.kept_labs if lab not in root_labs]
    if extra:
        reachable |= _reachable(store, extra, result.warnings, cache, write=False)
        root_labs.update(r.lab_path for r in extra)
    result.reachable = 0
    result.kept_running = []
    result.removed = []
    result.orphans = []
    recorded: set[str] = set()
    on_slurm_maybe: list[JobRecord] = []
    for record in store.records():
        recorded.add(record.job_id)
        if record.job_id in reachable or (record.lab and record.lab in root_labs):
            result.reachable += 1
        elif live_claim(record):
            result.kept_running.append(record.job_id)
        elif on_slurm is not None and record.status.active and record.slurm_id:
            on_slurm_maybe.append(record)
        else:
            result.removed.append((record.job_id, _job_bytes(store, record.job_id)))
    if on_slurm_maybe:
        still = on_slurm(on_slurm_maybe) if on_slurm is not None else set()
        for record in on_slurm_maybe:
            if record.job_id in still:
                result.kept_running.append(record.job_id)
            else:
                result.removed.append((record.job_id, _job_bytes(store, record.job_id)))
    outputs = store.root / OUTPUTS
    try:
        names = sorted(os.listdir(outputs))
    except FileNotFoundError:
        names = []
    except OSError as exc:
        raise StoreError(f"cannot list {outputs}: {exc}") from exc
    for name in names:
        if name not in recorded and name not in reachable:
            result.orphans.append((name, dir_size(outputs / name)))


def _job_bytes(store: Store, job_id: str) -> int:
    try:
        return dir_size(store.job_dir(job_id))
    except StoreError:
        return 0


def _delete(store: Store, result: GcResult) -> None:
    """Delete the planned jobs, re-checking each just before: a FAILED job may have been
    claimed again by a build since the plan was made."""
    ids = [i for i, _ in result.removed]
    still: set[str] = set()
    for start in range(0, len(ids), _DELETE_CHUNK):
        chunk = ids[start:start + _DELETE_CHUNK]
        now = store.get_many(chunk)
        doomed = []
        for job_id in chunk:
            record = now.get(job_id)
            if record is not None and live_claim(record):
                result.kept_running.append(job_id)
            else:
                doomed.append(job_id)
        store.delete(doomed)
        still.update(doomed)
    result.removed = [(i, n) for i, n in result.removed if i in still]
    orphans = [name for name, _ in result.orphans]
    # An orphan folder that got a record since the plan belongs to a new claim: keep it.
    claimed = store.get_many(orphans)
    keep = set(claimed)
    store.delete([name for name in orphans if name not in keep and _valid_name(name)])
    result.orphans = [(n, b) for n, b in result.orphans if n not in keep and _valid_name(n)]


def _valid_name(name: str) -> bool:
    return name not in (".", "..") and "/" not in name and "\0" not in name
