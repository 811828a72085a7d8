"""Ship a built lab to a machine without Nix: ``repx lab export`` and the unpack cache.

An export is one tar holding the lab directory and its whole closure (``nix-store -qR`` of
the lab, so the stage scripts, what they run, and the lab's images)::

    repx-export.json            first member: {format, lab, lab_id, store_paths, images}
    nix/store/<hash>-<name>/…   every store path of the closure

``repx build --lab lab.tar`` (``locate_lab``) unpacks it once into a cache keyed by the lab's
id (the hash of its store path), ``$REPX_LAB_CACHE`` or ``$XDG_CACHE_HOME/repx/labs``::

    <cache>/<lab id>/nix/store/…            the unpacked store (bind it at /nix/store)
    <cache>/<lab id>/repx-unpacked.json     the completion marker
    <cache>/<lab id>.lock                   flock: one unpack at a time, across processes
                                            and across nodes sharing the cache
    <cache>/<lab id>.partial-…/             an unpack under way (or one that was killed)

Rules, each for a reason:

* **Once.** An unpack happens under an exclusive ``fcntl.flock`` of the lock file; whoever
  gets the lock second finds the marker and uses the first one's result.
* **Complete or absent.** The tar is unpacked into a ``.partial-…`` directory, the marker
  (with the tar's sha256) is written last inside it, and only then is it renamed to
  ``<lab id>``. A killed unpack leaves a partial directory, removed by the next unpack; a
  ``<lab id>`` directory without a marker (truncated by hand, an older repx) is redone, and so
  is one whose marker names another tar digest (a stale unpack).
* **Nothing outside.** Every member must be ``repx-export.json`` or lie under ``nix/store``,
  without ``..`` or an absolute name, and be a file, directory, symlink or hard link. A
  symlink may point at ``/nix/store/…`` (which means the unpacked store: a runtime binds it
  there) or be relative, but must resolve, through any other symlinks of the tar, inside the
  store: a tar that escapes is rejected before anything of it is used.

Jobs' script paths still say ``/nix/store/…``: on a machine with Nix (and those paths)
they run natively; elsewhere they need a runtime that binds :attr:`UnpackedLab.store_dir` at
``/nix/store`` (bwrap), or the lab's images (podman, docker), see docs/isolation.md.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from repx.errors import LabError, RepxError
from repx.lab.images import NIX_STORE, Image, lab_images
from repx.lab.open import cache_dir

#: The export format this repx writes and reads (``repx-export.json`` ``format``).
EXPORT_FORMAT = "repx-lab-export/1"

#: The first member of an export.
HEADER_NAME = "repx-export.json"

#: The completion marker inside an unpacked lab's root, written last.
MARKER_NAME = "repx-unpacked.json"

#: Where the store sits inside an export and an unpack root.
STORE_PARTS = ("nix", "store")

#: Every member's mtime: the Nix store's own (1), so an unpacked store looks like one.
STORE_MTIME = 1

#: How long an unpack waits for another process's unpack of the same lab before giving up.
LOCK_TIMEOUT_SECONDS = float(os.environ.get("REPX_UNPACK_LOCK_TIMEOUT", "1800"))

#: A store path's basename: 32 Nix base-32 characters, a dash, a name.
STORE_PATH_NAME = re.compile(r"^([0-9a-df-np-sv-z]{32})-[A-Za-z0-9+._?=-]+$")

#: The most symlinks one path may go through (the kernel's limit).
_MAX_SYMLINKS = 40

_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------ export


@dataclass(frozen=True)
class ExportSummary:
    """What ``repx lab export`` wrote."""

    path: Path
    lab: str
    lab_id: str
    store_paths: int
    images: dict[str, str]
    size: int
    sha256: str


def lab_store_path(lab_dir: Path) -> str:
    """The lab's /nix/store path (``lab_dir`` may be a ``./result`` link); a lab that is not
    in a Nix store (an unpacked export) cannot be exported again."""
    resolved = lab_dir.resolve()
    if resolved.parent != Path(NIX_STORE) or not STORE_PATH_NAME.match(resolved.name):
        raise LabError(f"{lab_dir}: only a lab in the Nix store can be exported (this one is "
                       f"at {resolved}); build it with `repx lab build` first, or copy the "
                       "tar it was unpacked from")
    return str(resolved)


def lab_id_of(store_path: str) -> str:
    """The lab's id: the hash part of its store path (the same lab, the same id)."""
    match = STORE_PATH_NAME.match(Path(store_path).name)
    if not match:
        raise LabError(f"{store_path}: not a Nix store path")
    return match.group(1)


def closure_of(store_path: str) -> list[str]:
    """``nix-store -qR``: every store path the lab needs, sorted."""
    nix_store = shutil.which("nix-store")
    if nix_store is None:
        raise RepxError("exporting a lab needs nix-store (the lab's closure comes from the Nix "
                        "store): run it where the lab was built")
    result = subprocess.run([nix_store, "--query", "--requisites", store_path],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RepxError(f"nix-store --query --requisites {store_path} failed: "
                        f"{result.stderr.strip()}")
    return sorted(line for line in result.stdout.splitlines() if line)


def normalized_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """``info`` with no owner and the store's fixed mtime: the same store path gives the
    same bytes on every machine, so exports (and what a target is sent) compare by digest."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = STORE_MTIME
    return info


def _walk(path: str, name: str) -> Iterator[tuple[str, str, os.stat_result]]:
    st = os.lstat(path)
    yield path, name, st
    if stat.S_ISDIR(st.st_mode):
        for entry in sorted(os.listdir(path), key=os.fsencode):
            yield from _walk(os.path.join(path, entry), f"{name}/{entry}")


def add_store_path(archive: tarfile.TarFile, store_path: str) -> None:
    """Add one Nix store path, in sorted order and normalized (:func:`normalized_member`),
    read-only as in a store."""
    for source, name, st in _walk(store_path, store_path.lstrip("/")):
        info = normalized_member(tarfile.TarInfo(name))
        if stat.S_ISDIR(st.st_mode):
            info.type, info.mode = tarfile.DIRTYPE, 0o555
            archive.addfile(info)
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(source)
            if target.startswith("/") and not target.startswith(NIX_STORE + "/"):
                raise RepxError(
                    f"{source} -> {target} points outside the Nix store, so the lab's closure "
                    "is not self-contained and would not run where that path is missing; "
                    "a package of the lab links to the host (see docs/host-packages.md)")
            info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, target
            archive.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            info.size = st.st_size
            info.mode = 0o555 if st.st_mode & 0o111 else 0o444
            with open(source, "rb") as handle:
                archive.addfile(info, handle)
        else:
            raise RepxError(f"{source}: a special file in the Nix store cannot be exported")


class HashingWriter:
    """A write-only stream that hashes and counts what it passes on."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.target.write(data)


def export_lab(lab_dir: Path, output: Path) -> ExportSummary:
    """Write the lab at ``lab_dir`` and its closure to the tar ``output`` (atomically: a
    reader never sees half a tar). The same lab gives the same bytes."""
    store_path = lab_store_path(lab_dir)
    lab_id = lab_id_of(store_path)
    paths = closure_of(store_path)
    images = {name: image.digest for name, image in lab_images(Path(store_path)).items()}
    header = json.dumps({
        "format": EXPORT_FORMAT,
        "lab": store_path,
        "lab_id": lab_id,
        "store_paths": paths,
        "images": images,
    }, indent=1, sort_keys=True).encode() + b"\n"
    output = output.absolute()
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        with partial.open("wb") as raw:
            sink = HashingWriter(raw)
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                info = normalized_member(tarfile.TarInfo(HEADER_NAME))
                info.size, info.mode = len(header), 0o444
                archive.addfile(info, io.BytesIO(header))
                for depth in range(1, len(STORE_PARTS) + 1):
                    directory = normalized_member(tarfile.TarInfo("/".join(STORE_PARTS[:depth])))
                    directory.type, directory.mode = tarfile.DIRTYPE, 0o755
                    archive.addfile(directory)
                for path in paths:
                    add_store_path(archive, path)
        os.replace(partial, output)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise RepxError(f"cannot write {output}: {error.strerror or error}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return ExportSummary(path=output, lab=store_path, lab_id=lab_id, store_paths=len(paths),
                         images=images, size=sink.size, sha256=sink.sha256.hexdigest())


# ------------------------------------------------------------------------------------ unpack


@dataclass(frozen=True)
class UnpackedLab:
    """An export unpacked into the cache: where its store and its lab directory are.

    ``root`` holds ``nix/store``; a runtime binds ``store_dir`` at /nix/store, where the
    jobs' script paths point. ``lab_dir`` is what ``--lab lab.tar`` resolves to.
    """

    root: Path
    store_dir: Path
    lab_dir: Path
    lab_id: str
    #: The lab's path as the jobs see it (/nix/store/<id>-repx-lab).
    lab_store_path: str
    #: sha256 of the tar this was unpacked from.
    tar_sha256: str
    #: Image name -> digest (the images themselves: :meth:`images`).
    image_digests: dict[str, str] = field(default_factory=dict)
    #: Whether this call did the unpack (False: an earlier one had, and it was reused).
    fresh: bool = False

    def host_path(self, store_path: str) -> Path:
        """Where ``/nix/store/…`` is on this machine: under ``store_dir``, following the
        store's own symlinks (which name /nix/store too) inside it."""
        if not (store_path == NIX_STORE or store_path.startswith(NIX_STORE + "/")):
            raise LabError(f"{store_path} is not a path in the Nix store")
        parts = [p for p in store_path[len(NIX_STORE):].split("/") if p]
        resolved = _resolve_in_store(self.root / Path(*STORE_PARTS), parts, list(STORE_PARTS),
                                     store_path)
        return self.root.joinpath(*resolved)

    def images(self) -> dict[str, Image]:
        """The lab's images, with their docker-archive directories in this unpack."""
        return lab_images(self.lab_dir, store_dir=self.store_dir)


def default_unpack_dir() -> Path:
    """``$REPX_LAB_CACHE``, else ``$XDG_CACHE_HOME/repx/labs`` (``~/.cache/repx/labs``)."""
    configured = os.environ.get("REPX_LAB_CACHE")
    return Path(configured).expanduser() if configured else cache_dir() / "labs"


def read_export_header(tar_path: Path) -> dict[str, Any]:
    """The ``repx-export.json`` of an export, checked (it must be the first member)."""
    try:
        with tarfile.open(tar_path, mode="r|") as archive:
            first = archive.next()
            if first is None or first.name != HEADER_NAME or not first.isfile():
                raise LabError(f"{tar_path}: not a repx lab export (its first member is not "
                               f"{HEADER_NAME}); make one with `repx lab export`")
            handle = archive.extractfile(first)
            assert handle is not None
            header = json.loads(handle.read(16 << 20))
    except (tarfile.TarError, EOFError) as error:
        raise LabError(f"{tar_path}: not a readable tar ({error}); make a lab export with "
                       "`repx lab export`") from None
    except ValueError as error:
        raise LabError(f"{tar_path}: {HEADER_NAME} is not valid JSON ({error})") from None
    except OSError as error:
        raise LabError(f"cannot read {tar_path}: {error.strerror or error}") from None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise LabError(f"{tar_path}: unknown export format "
                       f"{header.get('format') if isinstance(header, dict) else header!r}; "
                       f"this repx reads {EXPORT_FORMAT!r} (export the lab with this repx)")
    lab = header.get("lab")
    match = STORE_PATH_NAME.match(Path(lab).name) if isinstance(lab, str) else None
    if match is None or Path(lab).parent != Path(NIX_STORE) \
            or match.group(1) != header.get("lab_id"):
        raise LabError(f"{tar_path}: {HEADER_NAME} names no valid lab ({lab!r}, lab id "
                       f"{header.get('lab_id')!r})")
    return header


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tar_identity(path: Path) -> dict[str, int]:
    """What says a tar did not change since it was hashed (so it need not be hashed again)."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_marker(root: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _unpacked(root: Path, marker: dict[str, Any], fresh: bool) -> UnpackedLab:
    store_dir = root.joinpath(*STORE_PARTS)
    lab = marker["lab"]
    return UnpackedLab(root=root, store_dir=store_dir, lab_dir=store_dir / Path(lab).name,
                       lab_id=marker["lab_id"], lab_store_path=lab,
                       tar_sha256=marker["tar_sha256"],
                       image_digests=dict(marker.get("images", {})), fresh=fresh)


def _reusable(root: Path, header: dict[str, Any], tar_path: Path,
              digest: str | None) -> dict[str, Any] | None:
    """The marker of a complete unpack of this tar at ``root``, else None. Without ``digest``
    only the tar's size and mtime are compared (no read of the tar)."""
    marker = read_marker(root)
    if marker is None or marker.get("lab") != header["lab"]:
        return None
    if digest is not None:
        return marker if marker.get("tar_sha256") == digest else None
    return marker if marker.get("tar_identity") == _tar_identity(tar_path) else None


class _Lock:
    """An exclusive ``fcntl.flock`` on a lock file, waited for up to a timeout."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path, self.timeout = path, timeout
        self.fd = -1

    def __enter__(self) -> _Lock:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RepxError(f"cannot open the lock file {self.path}: {error.strerror} (set "
                            "REPX_LAB_CACHE to a writable directory)") from None
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(self.fd)
                    raise RepxError(f"cannot lock {self.path}: {error.strerror} (the lab "
                                    "cache needs a file system with file locks; set "
                                    "REPX_LAB_CACHE to another directory)") from None
            if time.monotonic() > deadline:
                os.close(self.fd)
                raise RepxError(f"waited {self.timeout:.0f} s for {self.path} (another repx "
                                "is unpacking the same lab); try again, or remove the lock "
                                "file if no repx is running (REPX_UNPACK_LOCK_TIMEOUT sets "
                                "the wait)")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def remove_unpacked_tree(path: Path) -> None:
    """Remove an unpack (its directories are read-only, as in a Nix store)."""
    if not path.exists() and not path.is_symlink():
        return
    for directory, _subdirs, _files in os.walk(path):
        os.chmod(directory, 0o755)
    shutil.rmtree(path)


def unpack_lab(tar_path: Path, cache: Path | None = None) -> UnpackedLab:
    """The unpacked lab of the export ``tar_path``: from the cache when a complete unpack of
    this tar is there, else unpacked now (once, whoever else asks at the same time)."""
    tar_path = tar_path.absolute()
    header = read_export_header(tar_path)
    cache = (cache or default_unpack_dir()).absolute()
    lab_id = header["lab_id"]
    root = cache / lab_id
    marker = _reusable(root, header, tar_path, None)
    if marker is not None:
        return _unpacked(root, marker, fresh=False)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RepxError(f"cannot create the lab cache {cache}: {error.strerror or error} "
                        "(set REPX_LAB_CACHE to a writable directory)") from None
    with _Lock(cache / f"{lab_id}.lock", LOCK_TIMEOUT_SECONDS):
        # Whoever held the lock before may have just unpacked this tar; a marker of another
        # copy of the same tar (another path, mtime) is compared by digest.
        marker = _reusable(root, header, tar_path, None)
        if marker is None and read_marker(root) is not None:
            marker = _reusable(root, header, tar_path, file_sha256(tar_path))
        if marker is not None:
            return _unpacked(root, marker, fresh=False)
        for leftover in [*cache.glob(f"{lab_id}.partial-*"), *cache.glob(f"{lab_id}.stale-*")]:
            remove_unpacked_tree(leftover)
        partial = cache / f"{lab_id}.partial-{os.getpid()}"
        try:
            digest = _extract(tar_path, partial)
            lab_dir = partial.joinpath(*STORE_PARTS, Path(header["lab"]).name)
            if not (lab_dir / "lab.json").is_file():
                raise LabError(f"{tar_path}: the lab {header['lab']} it names is not in it")
            marker = {"lab": header["lab"], "lab_id": lab_id, "tar_sha256": digest,
                      "tar": str(tar_path), "tar_identity": _tar_identity(tar_path),
                      "images": header.get("images", {}),
                      "store_paths": len(header.get("store_paths", []))}
            marker_path = partial / MARKER_NAME
            with marker_path.open("w") as handle:
                json.dump(marker, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            stale = cache / f"{lab_id}.stale-{os.getpid()}-{time.time_ns()}"
            if root.exists():
                os.replace(root, stale)
            os.replace(partial, root)
            remove_unpacked_tree(stale)
        except OSError as error:
            remove_unpacked_tree(partial)
            raise RepxError(f"unpacking {tar_path} into {cache} failed: "
                            f"{error.strerror or error}") from None
        except BaseException:
            remove_unpacked_tree(partial)
            raise
    return _unpacked(root, marker, fresh=True)


# --------------------------------------------------------------------------- safe extraction


class _HashingReader:
    """A read-only stream that hashes what is read from it (one pass: unpack and digest)."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.sha256.update(data)
        return data


def _member_parts(tar_path: Path, name: str) -> list[str]:
    """A member's path components, or a LabError when the name could reach outside."""
    if name.startswith("/"):
        raise LabError(f"{tar_path}: member {name!r} has an absolute path; a lab export holds "
                       "only nix/store/… (rejected, nothing of it was used)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LabError(f"{tar_path}: member {name!r} contains '..'; a lab export holds only "
                       "nix/store/… (rejected, nothing of it was used)")
    if not parts:
        raise LabError(f"{tar_path}: a member has an empty name")
    inside = parts == [HEADER_NAME] or tuple(parts[:2]) == STORE_PARTS \
        or tuple(parts) == STORE_PARTS[:1]
    if not inside:
        raise LabError(f"{tar_path}: member {name!r} is outside nix/store; a lab export holds "
                       "only repx-export.json and nix/store/… (rejected)")
    return parts


def _resolve_in_store(store: Path, parts: list[str], start: list[str], what: str,
                      budget: list[int] | None = None) -> list[str]:
    """Resolve ``parts`` (components below /nix/store) from ``start`` (components below the
    unpack root) physically: a symlink on the way is followed, absolute /nix/store targets
    re-rooted. Raises LabError when the path leaves the store."""
    budget = budget if budget is not None else [_MAX_SYMLINKS]
    root = store.parents[len(STORE_PARTS) - 1]
    current = list(start)
    for index, part in enumerate(parts):
        if part in ("", "."):
            continue
        if part == "..":
            if len(current) <= len(STORE_PARTS):
                raise LabError(f"{what} leaves the Nix store")
            current.pop()
            continue
        candidate = [*current, part]
        path = root.joinpath(*candidate)
        if not path.is_symlink():
            current = candidate
            if not path.exists():
                # Nothing is there, so nothing further can redirect the path: the rest is
                # only names (a dangling link is allowed; it cannot reach anything).
                rest = [p for p in parts[index + 1:] if p not in ("", ".")]
                if ".." in rest:
                    return _resolve_lexically(current, rest, what)
                return [*current, *rest]
            continue
        budget[0] -= 1
        if budget[0] < 0:
            raise LabError(f"{what}: too many levels of symbolic links")
        target = os.readlink(path)
        current = _symlink_target(store, current, target, what, budget)
    return current


def _resolve_lexically(current: list[str], rest: list[str], what: str) -> list[str]:
    for part in rest:
        if part == "..":
            if len(current) <= len(STORE_PARTS):
                raise LabError(f"{what} leaves the Nix store")
            current = current[:-1]
        else:
            current = [*current, part]
    return current


def _symlink_target(store: Path, link_dir: list[str], target: str, what: str,
                    budget: list[int]) -> list[str]:
    """Where a symlink in ``link_dir`` with ``target`` leads (components below the root)."""
    if target.startswith("/"):
        if not (target == NIX_STORE or target.startswith(NIX_STORE + "/")):
            raise LabError(f"{what} points to {target}, outside the Nix store")
        return _resolve_in_store(store, target[len(NIX_STORE):].split("/"),
                                 list(STORE_PARTS), what, budget)
    return _resolve_in_store(store, target.split("/"), link_dir, what, budget)


def check_symlinks(tar_path: Path, root: Path, links: list[list[str]]) -> None:
    """Every symlink of the tar resolves inside the unpacked store."""
    store = root.joinpath(*STORE_PARTS)
    for parts in links:
        member = "/".join(parts)
        what = f"{tar_path}: symlink {member} -> {os.readlink(root.joinpath(*parts))}"
        try:
            _symlink_target(store, parts[:-1], os.readlink(root.joinpath(*parts)), what,
                            [_MAX_SYMLINKS])
        except LabError as error:
            raise LabError(f"{error.message} (a lab export may only link inside its own "
                           "store: rejected, nothing of it was used)") from None


def _extract(tar_path: Path, destination: Path) -> str:
    """Unpack the export into ``destination`` (new); return the tar's sha256.

    Members are created one by one (no ``extractall``): a file is opened with O_EXCL and
    O_NOFOLLOW in a directory this function made, so nothing is written through a symlink
    and nothing is written twice; symlinks are checked once all of them exist.
    """
    destination.mkdir()
    directories: dict[tuple[str, ...], int] = {(): 0o755}
    files: set[tuple[str, ...]] = set()
    links: list[list[str]] = []
    with tar_path.open("rb") as raw:
        reader = _HashingReader(raw)
        try:
            archive = tarfile.open(fileobj=reader, mode="r|")
        except tarfile.TarError as error:
            raise LabError(f"{tar_path}: not a readable tar ({error})") from None
        with archive:
            try:
                for member in archive:
                    extract_member(tar_path, archive, member, destination, directories,
                                    files, links)
            except (tarfile.TarError, EOFError) as error:
                raise LabError(f"{tar_path}: the tar is damaged or truncated ({error}); "
                               "export the lab again") from None
        while reader.read(_CHUNK):
            pass
    if (*STORE_PARTS,) not in directories:
        raise LabError(f"{tar_path}: holds no nix/store")
    check_symlinks(tar_path, destination, links)
    # Read-only like a Nix store, deepest first so that every chmod can still happen.
    for parts in sorted(directories, key=len, reverse=True):
        mode = directories[parts]
        path = destination.joinpath(*parts)
        os.chmod(path, mode)
        os.utime(path, (STORE_MTIME, STORE_MTIME), follow_symlinks=False)
    os.chmod(destination, 0o755)
    return reader.sha256.hexdigest()


def extract_member(tar_path: Path, archive: tarfile.TarFile, member: tarfile.TarInfo,
                    destination: Path, directories: dict[tuple[str, ...], int],
                    files: set[tuple[str, ...]], links: list[list[str]]) -> None:
    parts = _member_parts(tar_path, member.name)
    key = tuple(parts)
    if key in files or (key in directories and not member.isdir()):
        raise LabError(f"{tar_path}: member {member.name!r} appears twice (rejected)")
    parent = key[:-1]
    for depth in range(1, len(parent) + 1):
        prefix = parent[:depth]
        if prefix in files:
            raise LabError(f"{tar_path}: member {member.name!r} lies inside "
                           f"{'/'.join(prefix)}, which is not a directory (rejected)")
        if prefix not in directories:
            os.mkdir(destination.joinpath(*prefix), 0o755)
            directories[prefix] = 0o555
    path = destination.joinpath(*parts)
    if member.isdir():
        if key not in directories:
            os.mkdir(path, 0o755)
        # Writable until the end (members go inside); the tar's mode is applied last.
        directories[key] = (member.mode & 0o777) | 0o500
        return
    files.add(key)
    if member.issym():
        os.symlink(member.linkname, path)
        links.append(parts)
        return
    if member.islnk():
        target = tuple(_member_parts(tar_path, member.linkname))
        if target not in files or destination.joinpath(*target).is_symlink():
            raise LabError(f"{tar_path}: hard link {member.name!r} -> {member.linkname!r} "
                           "does not name a file earlier in the tar (rejected)")
        os.link(destination.joinpath(*target), path, follow_symlinks=False)
        return
    if not member.isreg():
        raise LabError(f"{tar_path}: member {member.name!r} is a device, fifo or other special "
                       "file; a lab export holds only files, directories and links (rejected)")
    source = archive.extractfile(member)
    assert source is not None
    mode = 0o555 if member.mode & 0o111 else 0o444
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        while chunk := source.read(_CHUNK):
            handle.write(chunk)
    os.chmod(path, mode)
    os.utime(path, (STORE_MTIME, STORE_MTIME))


def unpacked_lab_of(lab_dir: Path) -> UnpackedLab | None:
    """The unpack ``lab_dir`` belongs to (``<root>/nix/store/<lab>``), or None for a lab that
    is in the real Nix store; lets a runtime find the store to bind from the lab alone."""
    lab_dir = lab_dir.absolute()
    store_dir = lab_dir.parent
    root = store_dir.parent.parent
    if (store_dir.name, store_dir.parent.name) != ("store", "nix") or str(store_dir) == NIX_STORE:
        return None
    marker = read_marker(root)
    if marker is None or Path(marker.get("lab", "")).name != lab_dir.name:
        return None
    return _unpacked(root, marker, fresh=False)
