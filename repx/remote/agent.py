"""The remote half of shipping a lab: run by the shipped repx on the target.

``python3 -I BASE/repx/<key>/launch.py agent COMMAND BASE`` (see :mod:`repx.remote.ship`)::

    have BASE       stdin: the lab's export header (JSON); stdout: JSON {missing}, and when
                    nothing is missing the lab is assembled too ({missing: [], lab_dir})
    receive BASE    stdin: a tar of nix/store/<name>/… members, each store path followed by
                    a ``repx-done/<name>`` member; every completed path is moved into
                    BASE/paths/<name> at once, so a cut connection keeps what arrived whole
    assemble BASE   stdin: the lab's export header (JSON); makes BASE/labs/<lab id>, an
                    unpacked export (hard links into BASE/paths) that bwrap binds at /nix/store
    prune BASE      after a gc of BASE/store: removes the labs no gc root names and the
                    store paths no remaining lab uses
    detach BASE     stdin: {argv}; starts it on its own (``build --no-wait``, local scheduler)
    stop-detached BASE  Ctrl-C to every detached build still running (``cancel --target``)

The pool ``BASE/paths`` plays the part of a Nix store: a path is there complete or not at
all (it is unpacked beside it and renamed in), so "what the remote lacks" is the set of
names that are not in it. Extraction follows the export's rules (``repx.lab.export``):
members only under nix/store, no ``..``, no absolute names, nothing written through a
symlink, symlinks resolving inside the store.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from repx.errors import LabError, RepxError
from repx.lab.export import (
    EXPORT_FORMAT,
    HEADER_NAME,
    MARKER_NAME,
    STORE_MTIME,
    STORE_PARTS,
    STORE_PATH_NAME,
    HashingWriter,
    check_symlinks,
    extract_member,
    normalized_member,
    read_marker,
    remove_unpacked_tree,
)
from repx.lab.images import NIX_STORE

#: The member that says "the store path <name> is complete" in a ``receive`` stream.
DONE_PREFIX = "repx-done/"


def _pool(base: Path) -> Path:
    return base / "paths"


def _remove_entry(path: Path) -> None:
    """Remove one store path of the pool (or of a receive's stage): a store path is a
    read-only tree, a single file or a symlink, and only a tree needs ``remove_unpacked_tree``."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        remove_unpacked_tree(path)


def _checked_names(names: Any) -> list[str]:
    if not isinstance(names, list) or not all(isinstance(n, str) and STORE_PATH_NAME.match(n)
                                              for n in names):
        raise RepxError("agent: expected a JSON list of store path names")
    return names


def have(base: Path, header: dict[str, Any]) -> dict[str, Any]:
    """Which store paths of the lab (its export header) are not in the pool; when none is
    missing the lab is assembled at once (one round trip for an unchanged lab)."""
    names = _checked_names([Path(p).name for p in header.get("store_paths", [])])
    pool = _pool(base)
    missing = [n for n in names if not (pool / n).exists()]
    if missing:
        return {"missing": missing}
    return {"missing": [], **assemble(base, header)}


def _finish_path(stage: Path, pool: Path, name: str,
                 directories: dict[tuple[str, ...], int], links: list[list[str]]) -> None:
    """Seal one received store path (modes, mtimes, its symlinks checked) and move it into
    the pool; a path another build put there meanwhile wins (they are the same bytes)."""
    prefix = (*STORE_PARTS, name)
    check_symlinks(Path("<stream>"), stage, [p for p in links if tuple(p[:3]) == prefix])
    source = stage.joinpath(*prefix)
    if not source.exists() and not source.is_symlink():
        raise LabError(f"agent: store path {name} was announced complete but not sent")
    target = pool / name
    if target.exists():
        _remove_entry(source)
        for parts in [p for p in directories if p[:3] == prefix]:
            del directories[parts]
        return
    # Moving a directory to another parent needs it writable (its ".." changes): the path's
    # own mode is set once it is in the pool.
    os.rename(source, target)
    mine = sorted((p for p in directories if p[:3] == prefix), key=len, reverse=True)
    for parts in mine:
        path = target.joinpath(*parts[3:])
        os.chmod(path, directories.pop(parts))
        os.utime(path, (STORE_MTIME, STORE_MTIME), follow_symlinks=False)


def receive(base: Path, stream: Any) -> dict[str, Any]:
    """Unpack the store paths of ``stream`` into the pool (see the module's docstring)."""
    pool = _pool(base)
    pool.mkdir(parents=True, exist_ok=True)
    for leftover in pool.glob(".incoming-*"):
        # A receive that was cut (its ssh killed) left this; its complete paths are in.
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            remove_unpacked_tree(leftover)
    stage = pool / f".incoming-{os.getpid()}"
    stage.mkdir()
    directories: dict[tuple[str, ...], int] = {(): 0o755}
    files: set[tuple[str, ...]] = set()
    links: list[list[str]] = []
    received: list[str] = []
    label = Path("<stream>")
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                if member.name.startswith(DONE_PREFIX):
                    name = member.name[len(DONE_PREFIX):]
                    if not STORE_PATH_NAME.match(name):
                        raise LabError(f"agent: bad completion member {member.name!r}")
                    _finish_path(stage, pool, name, directories, links)
                    links = [p for p in links if p[2] != name]
                    received.append(name)
                    continue
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if len(parts) >= 3 and not STORE_PATH_NAME.match(parts[2]):
                    raise LabError(f"agent: member {member.name!r} is not in a store path")
                extract_member(label, archive, member, stage, directories, files, links)
    except (tarfile.TarError, EOFError) as error:
        raise RepxError(f"agent: the stream of store paths was cut or damaged ({error}); "
                        f"{len(received)} complete paths were kept, the next build sends "
                        "the rest") from None
    finally:
        remove_unpacked_tree(stage)
    return {"received": received}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _link_tree(source: Path, target: Path) -> None:
    """``target`` a copy of the store path ``source`` whose files are hard links (no bytes
    copied); directories get the source's modes once filled."""
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
        return
    if source.is_file():
        os.link(source, target, follow_symlinks=False)
        return
    modes: list[tuple[Path, int]] = []
    for directory, subdirs, names in os.walk(source):
        relative = Path(directory).relative_to(source)
        made = target / relative
        os.mkdir(made, 0o755)
        modes.append((made, os.stat(directory).st_mode & 0o777))
        for name in names:
            path = Path(directory) / name
            if path.is_symlink():
                os.symlink(os.readlink(path), made / name)
            else:
                os.link(path, made / name, follow_symlinks=False)
        for name in list(subdirs):
            path = Path(directory) / name
            if path.is_symlink():
                os.symlink(os.readlink(path), made / name)
                subdirs.remove(name)
    for made, mode in reversed(modes):
        os.chmod(made, mode)
        os.utime(made, (STORE_MTIME, STORE_MTIME))


def assemble(base: Path, header: dict[str, Any]) -> dict[str, Any]:
    """``BASE/labs/<lab id>``: the lab's closure linked from the pool, with the marker of an
    unpacked export, so that ``repx build --lab`` and bwrap treat it as one."""
    lab = header.get("lab")
    lab_id = header.get("lab_id")
    names = _checked_names([Path(p).name for p in header.get("store_paths", [])])
    if not (isinstance(lab, str) and isinstance(lab_id, str) and lab.startswith(NIX_STORE)
            and STORE_PATH_NAME.match(Path(lab).name) and Path(lab).name.startswith(lab_id)):
        raise RepxError("agent: the lab header names no valid lab")
    labs = base / "labs"
    labs.mkdir(parents=True, exist_ok=True)
    root = labs / lab_id
    lab_dir = str(root.joinpath(*STORE_PARTS, Path(lab).name))
    marker = read_marker(root)
    if marker is not None and marker.get("lab") == lab:
        if header.get("export_tar") and not Path(str(marker.get("tar") or "")).is_file():
            _add_export_tar(labs, root, marker, header)
        _remember(base, lab_dir)
        return {"lab_dir": lab_dir, "fresh": False}
    pool = _pool(base)
    missing = [n for n in names if not (pool / n).exists()]
    if missing:
        raise RepxError(f"agent: {len(missing)} store paths of the lab are not on the remote "
                        f"(first: {missing[0]}); ship the lab again")
    partial = labs / f"{lab_id}.partial-{os.getpid()}"
    remove_unpacked_tree(partial)
    try:
        store = partial.joinpath(*STORE_PARTS)
        store.mkdir(parents=True)
        for name in names:
            _link_tree(pool / name, store / name)
        marker = {"lab": lab, "lab_id": lab_id, "images": header.get("images", {}),
                  "store_paths": len(names), "tar": "",
                  # No tar was unpacked here: the digest is of the closure's names, which
                  # identify its contents as store paths do.
                  "tar_sha256": header.get("closure_digest", ""), "shipped": True}
        _write_marker(partial, marker)
        if root.exists():
            stale = labs / f"{lab_id}.stale-{os.getpid()}-{time.time_ns()}"
            os.replace(root, stale)
            remove_unpacked_tree(stale)
        os.replace(partial, root)
    except BaseException:
        remove_unpacked_tree(partial)
        raise
    if header.get("export_tar"):
        _add_export_tar(labs, root, marker, header)
    _remember(base, lab_dir)
    return {"lab_dir": lab_dir, "fresh": True}


def _write_marker(root: Path, marker: dict[str, Any]) -> None:
    partial = root / f".{MARKER_NAME}.{os.getpid()}"
    with partial.open("w") as handle:
        json.dump(marker, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, root / MARKER_NAME)


def _add_export_tar(labs: Path, root: Path, marker: dict[str, Any],
                    header: dict[str, Any]) -> None:
    """``BASE/labs/<lab id>.tar``: the lab as ``repx lab export`` writes it, made from the
    assembled lab, for ``--artifact-store node-local`` (each node unpacks that tar on its
    own disk); the marker then names it and its digest, as an unpack of that tar would."""
    tar = labs / f"{marker['lab_id']}.tar"
    partial = labs / f".{tar.name}.partial-{os.getpid()}"
    try:
        with partial.open("wb") as raw:
            sink = HashingWriter(raw)
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                data = json.dumps({
                    "format": EXPORT_FORMAT, "lab": header["lab"], "lab_id": header["lab_id"],
                    "store_paths": header["store_paths"], "images": header.get("images", {}),
                }, indent=1, sort_keys=True).encode() + b"\n"
                info = normalized_member(tarfile.TarInfo(HEADER_NAME))
                info.size, info.mode = len(data), 0o444
                archive.addfile(info, io.BytesIO(data))
                for depth in range(1, len(STORE_PARTS) + 1):
                    directory = normalized_member(tarfile.TarInfo("/".join(STORE_PARTS[:depth])))
                    directory.type, directory.mode = tarfile.DIRTYPE, 0o755
                    archive.addfile(directory)
                for store_path in header["store_paths"]:
                    name = Path(store_path).name
                    _add_host_tree(archive, root.joinpath(*STORE_PARTS, name),
                                   f"nix/store/{name}")
        os.replace(partial, tar)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _write_marker(root, {**marker, "tar": str(tar), "tar_sha256": sink.sha256.hexdigest(),
                         "tar_identity": {"size": tar.stat().st_size,
                                          "mtime_ns": tar.stat().st_mtime_ns}})


def _add_host_tree(archive: tarfile.TarFile, source: Path, name: str) -> None:
    """One store path's members, named as in the Nix store, read from ``source``."""
    st = os.lstat(source)
    info = normalized_member(tarfile.TarInfo(name))
    if stat.S_ISDIR(st.st_mode):
        info.type, info.mode = tarfile.DIRTYPE, 0o555
        archive.addfile(info)
        for entry in sorted(os.listdir(source), key=os.fsencode):
            _add_host_tree(archive, source / entry, f"{name}/{entry}")
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, os.readlink(source)
        archive.addfile(info)
    else:
        info.size = st.st_size
        info.mode = 0o555 if st.st_mode & 0o111 else 0o444
        with open(source, "rb") as handle:
            archive.addfile(info, handle)


def _remember(base: Path, lab_dir: str) -> None:
    """``BASE/last-lab``: the lab ``status --target`` and the like inspect (replaced
    atomically: a reader never sees half a path)."""
    partial = base / f".last-lab.{os.getpid()}"
    partial.write_text(lab_dir + "\n")
    os.replace(partial, base / "last-lab")


def prune(base: Path) -> dict[str, Any]:
    """After ``repx gc`` of the remote store: the shipped labs no gc root names any more
    (nor ``last-lab``), then the shipped store paths no remaining lab links, are removed.
    The remote store decides what lives, as a Nix store's roots do."""
    from repx.store import Store
    from repx.store.gc import list_roots

    labs = base / "labs"
    store_dir = base / "store"
    if not labs.is_dir():
        return {"labs_removed": 0, "paths_removed": 0, "bytes_freed": 0}
    rooted: set[str] = set()
    if Store.exists(store_dir):
        with Store(store_dir, readonly=True) as store:
            rooted = {os.path.realpath(root.lab_path) for root in list_roots(store)}
    last = base / "last-lab"
    if last.is_file():
        rooted.add(os.path.realpath(last.read_text().strip()))
    kept: set[str] = set()
    removed_labs = 0
    freed = 0
    for root in sorted(labs.iterdir()):
        if root.name.endswith(".tar") or ".partial-" in root.name or ".stale-" in root.name:
            continue
        marker = read_marker(root)
        lab_dir = os.path.realpath(root.joinpath(*STORE_PARTS, Path(str(
            (marker or {}).get("lab", ""))).name)) if marker else ""
        if marker is not None and lab_dir in rooted:
            kept.update(os.listdir(root.joinpath(*STORE_PARTS)))
            continue
        remove_unpacked_tree(root)
        tar = labs / f"{root.name}.tar"
        if tar.is_file():
            freed += tar.stat().st_size
            tar.unlink()
        removed_labs += 1
    removed_paths = 0
    pool = _pool(base)
    for path in sorted(pool.iterdir()) if pool.is_dir() else []:
        if path.name.startswith(".") or path.name in kept:
            continue
        freed += _tree_bytes(path)
        _remove_entry(path)
        removed_paths += 1
    return {"labs_removed": removed_labs, "paths_removed": removed_paths, "bytes_freed": freed}


def _tree_bytes(path: Path) -> int:
    """Bytes a pool path frees (its files' link count is 1 once no lab links them)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum((Path(d) / n).lstat().st_size for d, _s, names in os.walk(path) for n in names)


def detach(base: Path, request: dict[str, Any]) -> dict[str, Any]:
    """Start ``argv`` (the shipped repx's build) in a session of its own, its output to
    ``BASE/builds/<time>.log``, its pid in ``BASE/builds/<time>.pid``: it outlives the ssh
    session that started it."""
    import subprocess

    argv = request.get("argv")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise RepxError("agent: detach needs an argv list")
    builds = base / "builds"
    builds.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    log = builds / f"{stamp}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=base)
    (builds / f"{stamp}.pid").write_text(f"{process.pid}\n")
    return {"pid": process.pid, "log": str(log)}


def stop_detached(base: Path) -> dict[str, Any]:
    """SIGINT every detached build still running (a Ctrl-C: it cancels and records its
    jobs), and wait for each to end; a pid file whose process is gone, or is no longer
    this repx (a reused pid), is only removed."""
    import signal

    stopped: list[int] = []
    for pid_file in sorted((base / "builds").glob("*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            continue
        if not any(word.endswith(b"/launch.py") and word.startswith(os.fsencode(base))
                   for word in cmdline):
            pid_file.unlink(missing_ok=True)
            continue
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline and not _zombie(pid):
            time.sleep(0.1)
        pid_file.unlink(missing_ok=True)
        stopped.append(pid)
    return {"stopped": stopped}


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def main(argv: list[str]) -> int:
    """``agent COMMAND BASE``; errors as one line on stderr, exit 2."""
    commands = ("have", "receive", "assemble", "prune", "detach", "stop-detached")
    if len(argv) != 2 or argv[0] not in commands:
        print(f"usage: agent {'|'.join(commands)} BASE", file=sys.stderr)
        return 2
    command, base = argv[0], Path(argv[1])
    try:
        if command == "receive":
            result = receive(base, sys.stdin.buffer)
        elif command == "prune":
            result = prune(base)
        elif command == "stop-detached":
            result = stop_detached(base)
        else:
            request = json.loads(sys.stdin.buffer.read())
            handlers = {"have": have, "assemble": assemble, "detach": detach}
            result = handlers[command](base, request)
    except RepxError as error:
        print(f"repx (remote): {error.message}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"repx (remote): {error.filename or ''}: {error.strerror or error}",
              file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0
