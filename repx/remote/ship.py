"""Shipping to a target: repx itself, then the lab's store paths the remote lacks.

The remote needs Python ≥ 3.11, ssh, tar, and the runtime's program (bwrap) — no Nix and no
installation: repx's package and the installed files of its dependencies (lmdb, msgpack,
blake3, click, rich, … as this interpreter has them) are copied into
``BASE/repx/<version>-<hash>/lib`` once per distinct content and run with ``python3 -I``
(isolated: the remote user's own site-packages and ``PYTHONPATH`` cannot shadow them).
Compiled dependencies only load under the same Python minor version, ABI and platform, so
those are compared first, and a mismatch is a clear error saying what the remote needs.

Layout under ``base_path`` (created 0700: the store and the shipped code are the user's)::

    repx/<version>-<hash12>/lib/          repx + dependencies; launch.py; COMPLETE (last)
    paths/<hash>-<name>/                  the shipped /nix/store paths (each complete)
    labs/<lab id>/nix/store/…             a lab: its closure linked from paths/, with the
                                          marker of an unpacked export (bwrap binds it)
    store/                                the remote repx store (its own LMDB)
    last-lab                              the lab directory the last build shipped

A lab is shipped incrementally: the remote says which closure paths its pool lacks, only
those go into the tar, and each arrives whole or not at all (see :mod:`repx.remote.agent`).
A second build of an unchanged lab sends nothing; a changed stage sends its new paths.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import re
import sys
import sysconfig
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import repx
from repx.errors import RepxError
from repx.remote.ssh import RemoteError, SshTarget
from repx.remote.targets import Target

#: The distribution whose runtime dependencies are shipped with repx.
DISTRIBUTION = "repx-lab"

#: Python's minimum on the remote (repx's own requirement).
MIN_PYTHON = (3, 11)

# What the remote's Python says about itself, and about base_path, in one round trip. It
# creates base_path private to the user (0700) and refuses one that another user owns or
# that others may write: the store and the code repx runs must not be someone else's.
_PROBE = r"""
import json, os, stat, sys, sysconfig
base = os.path.expanduser(sys.argv[1])
key = sys.argv[2]
out = {"version": list(sys.version_info[:3]), "soabi": sysconfig.get_config_var("SOABI"),
       "platform": sysconfig.get_platform(), "base": base, "error": None}
try:
    os.makedirs(os.path.dirname(base) or "/", exist_ok=True)
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(base)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        out["error"] = base + " is not a directory (a symlink is refused)"
    elif st.st_uid != os.getuid():
        out["error"] = base + " belongs to another user"
    elif st.st_mode & 0o022:
        out["error"] = base + " may be written by other users (chmod 700 it)"
    else:
        os.chmod(base, 0o700)
        out["repx_ready"] = os.path.isfile(os.path.join(base, "repx", key, "COMPLETE"))
        fs = os.statvfs(base)
        out["free_bytes"] = fs.f_bavail * fs.f_frsize
except OSError as error:
    out["error"] = "%s: %s" % (error.filename or base, error.strerror)
print(json.dumps(out))
"""

#: Versions of repx kept on a target besides the one just shipped.
KEEP_VERSIONS = 3

# Unpacks the shipped repx (a tar on stdin) into BASE/repx/KEY, complete or absent.
_INSTALL = r"""
import os, shutil, sys, tarfile
base, key, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])
top = os.path.join(base, "repx")
os.makedirs(top, exist_ok=True)
partial = os.path.join(top, ".%s.partial-%d" % (key, os.getpid()))
final = os.path.join(top, key)
try:
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as archive:
        for member in archive:
            if member.name.startswith("/") or ".." in member.name.split("/") or not (
                    member.isfile() or member.isdir()):
                raise SystemExit("refusing member %r" % member.name)
            archive.extract(member, partial, set_attrs=False)
    with open(os.path.join(partial, "COMPLETE"), "w") as handle:
        handle.write(key + "\n")
    if os.path.isdir(final):
        shutil.rmtree(partial)
    else:
        os.rename(partial, final)
except OSError as error:
    shutil.rmtree(partial, ignore_errors=True)
    sys.exit("cannot install repx into %s: %s" % (final, error.strerror or error))
except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
# Older versions go, but the newest few stay: a build started by one may still be running.
def _age(name):
    try:
        return os.stat(os.path.join(top, name, "COMPLETE")).st_mtime
    except OSError:
        return 0.0
versions = sorted((n for n in os.listdir(top) if not n.startswith(".") and n != key), key=_age)
for old in versions[:-keep]:
    shutil.rmtree(os.path.join(top, old), ignore_errors=True)
"""

# The shipped repx's entry point: its lib first on sys.path, then repx or the agent.
# --hangup-on-eof: the end of stdin (the local repx's Ctrl-C, or its ssh gone) is a Ctrl-C
# here, so that a build cancels and records its jobs instead of running on unattended.
_LAUNCH = r'''"""The shipped repx (generated by repx.remote.ship): launch.py [--hangup-on-eof]
repx|agent ARGS."""
import os
import signal
import sys
import threading

sys.path[:0] = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib")]
args = sys.argv[1:]
if args[:1] == ["--hangup-on-eof"]:
    args = args[1:]

    def _watch():
        # os.read, not sys.stdin: a daemon thread blocked in a buffered reader would
        # hold its lock when the interpreter shuts down.
        while os.read(0, 65536):
            pass
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=_watch, daemon=True).start()
    signal.signal(signal.SIGHUP, lambda *_: os.kill(os.getpid(), signal.SIGINT))
mode, rest = (args[0], args[1:]) if args else ("repx", [])
if mode == "agent":
    from repx.remote.agent import main
    sys.exit(main(rest))
sys.argv = ["repx", *rest]
from repx.console import main
main()
'''


@dataclass(frozen=True)
class ShippedFile:
    """One file of the repx payload: where it goes under ``lib/`` and where it is here."""

    name: str
    source: Path


def _requirement_names(dist: importlib.metadata.Distribution) -> list[str]:
    """The names of ``dist``'s unconditional requirements (extras are the user's choice)."""
    names = []
    for text in dist.requires or []:
        requirement, _sep, marker = text.partition(";")
        if "extra" in marker:
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if match and _marker_holds(marker.strip()):
            names.append(match.group(1))
    return names


def _marker_holds(marker: str) -> bool:
    if not marker:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:
        try:
            from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef]
        except ImportError:
            return True
    return bool(Marker(marker).evaluate())


def dependency_distributions() -> list[importlib.metadata.Distribution]:
    """repx's runtime dependencies, and theirs, as this interpreter has them installed."""
    try:
        root = importlib.metadata.distribution(DISTRIBUTION)
        pending = _requirement_names(root)
    except importlib.metadata.PackageNotFoundError:
        raise RepxError(f"repx is not installed as {DISTRIBUTION} here, so its dependencies "
                        "cannot be found to ship them; install it (pip install -e .)") from None
    seen: dict[str, importlib.metadata.Distribution] = {}
    while pending:
        name = pending.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise RepxError(f"repx's dependency {name} is not installed here; it cannot be "
                            "shipped (pip install it)") from None
        seen[key] = dist
        pending.extend(_requirement_names(dist))
    return [seen[k] for k in sorted(seen)]


def payload_files() -> list[ShippedFile]:
    """What ``lib/`` holds on the remote: repx's package (without its flake copy, which only
    lab builds need) and every installed file of its dependencies, no bytecode."""
    package = Path(repx.__file__).parent
    files = [ShippedFile(f"repx/{p.relative_to(package).as_posix()}", p)
             for p in sorted(package.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
             and p.relative_to(package).parts[0] != "_flake"]
    for dist in dependency_distributions():
        for entry in dist.files or []:
            posix = entry.as_posix()
            if posix.startswith("../") or "__pycache__" in posix or posix.endswith(".pyc"):
                continue
            if posix.startswith("repx/"):
                continue
            source = Path(str(dist.locate_file(entry)))
            if source.is_file():
                files.append(ShippedFile(posix, source))
    return files


def payload_key(files: Sequence[ShippedFile]) -> str:
    """``<version>-<hash12>``: a new folder when any shipped byte changes (an edited repx
    must not run the old code), the same one otherwise (nothing is sent again)."""
    digest = hashlib.sha256()
    for item in sorted(files, key=lambda f: f.name):
        digest.update(item.name.encode() + b"\0")
        digest.update(hashlib.sha256(item.source.read_bytes()).digest())
    return f"{repx.__version__}-{digest.hexdigest()[:12]}"


def _write_payload(files: Sequence[ShippedFile], stream: IO[bytes]) -> None:
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        launch = _LAUNCH.encode()
        info = tarfile.TarInfo("launch.py")
        info.size, info.mode = len(launch), 0o644
        archive.addfile(info, io.BytesIO(launch))
        for item in files:
            info = tarfile.TarInfo(f"lib/{item.name}")
            data = item.source.read_bytes()
            info.size = len(data)
            info.mode = 0o755 if os.access(item.source, os.X_OK) else 0o644
            archive.addfile(info, io.BytesIO(data))


@dataclass
class RemoteRepx:
    """repx as runnable on a target: the words that start it, and where its store is."""

    target: Target
    ssh: SshTarget
    base: str
    key: str
    #: Bytes sent to make it runnable (0 when the remote had this version already).
    shipped_bytes: int = 0
    #: Free space on base_path's file system when it was checked (None: unknown).
    free_bytes: int | None = None

    @property
    def store_dir(self) -> str:
        return f"{self.base}/store"

    def argv(self, args: Sequence[str], *, hangup_on_eof: bool = False) -> list[str]:
        """The remote command line running ``repx ARGS`` with the shipped repx."""
        return [self.target.python, "-I", f"{self.base}/repx/{self.key}/launch.py",
                *(["--hangup-on-eof"] if hangup_on_eof else []), "repx", *args]

    def agent_argv(self, command: str) -> list[str]:
        return [self.target.python, "-I", f"{self.base}/repx/{self.key}/launch.py", "agent",
                command, self.base]

    def run(self, args: Sequence[str], *, check: bool = True, input: bytes | None = None
            ) -> Any:
        return self.ssh.run(self.argv(args), check=check, input=input)

    def stream(self, args: Sequence[str]) -> int:
        """``repx ARGS`` on the remote, its output to ours; Ctrl-C cancels it there."""
        return self.ssh.stream(self.argv(args, hangup_on_eof=True))

    def agent(self, command: str, request: Any) -> Any:
        result = self.ssh.run(self.agent_argv(command),
                              input=json.dumps(request).encode())
        return json.loads(result.stdout)


def probe(target: Target, ssh: SshTarget, key: str) -> dict[str, Any]:
    """The remote's Python and base_path, checked; a RemoteError says what is missing."""
    result = ssh.run([target.python, "-c", _PROBE, target.base_path, key], check=False)
    if result.returncode == 127 or (result.returncode != 0 and b"not found" in result.stderr):
        raise RemoteError(f"target {target.where()}: the remote has no {target.python!r} "
                          f"({result.stderr.decode(errors='replace').strip()}); repx needs "
                          f"Python {'.'.join(map(str, MIN_PYTHON))} or newer there (install "
                          "it, or set python = \"/path/to/python3.11\" in the target)")
    if result.returncode != 0:
        raise ssh.error([target.python], result.returncode, result.stderr)
    try:
        info = json.loads(result.stdout)
    except ValueError:
        raise RemoteError(f"target {target.where()}: {target.python} printed no answer "
                          f"({result.stdout[:200]!r}); is it Python?") from None
    if info.get("error"):
        raise RemoteError(f"target {target.where()}: base_path: {info['error']}")
    _check_compatible(target, info)
    return info


def _check_compatible(target: Target, info: dict[str, Any]) -> None:
    """The shipped compiled dependencies must load there: same minor version, ABI and
    platform as this interpreter."""
    remote = tuple(info.get("version", [0, 0]))[:2]
    here = sys.version_info[:2]
    problems = []
    if remote < MIN_PYTHON:
        problems.append(f"Python {'.'.join(map(str, remote))} (repx needs "
                        f"{'.'.join(map(str, MIN_PYTHON))}+)")
    elif remote != here:
        problems.append(f"Python {'.'.join(map(str, remote))}, this repx runs on "
                        f"{'.'.join(map(str, here))}")
    local_soabi = sysconfig.get_config_var("SOABI")
    if not problems and info.get("soabi") != local_soabi:
        problems.append(f"ABI {info.get('soabi')}, here {local_soabi}")
    if info.get("platform") != sysconfig.get_platform():
        problems.append(f"platform {info.get('platform')}, here {sysconfig.get_platform()}")
    if problems:
        raise RemoteError(
            f"target {target.where()}: the remote's {target.python} cannot load the "
            f"dependencies this repx would ship: {'; '.join(problems)}. repx ships its "
            "dependencies' installed files, compiled for this interpreter: run repx here "
            f"with Python {'.'.join(map(str, remote))}, or point the target's python at a "
            f"Python {'.'.join(map(str, here))} on the remote")


def ensure_repx(target: Target, ssh: SshTarget | None = None) -> RemoteRepx:
    """repx runnable on ``target``: checks the remote once, ships the payload only when
    this exact version is not there yet."""
    ssh = ssh or target.ssh()
    files = payload_files()
    key = payload_key(files)
    info = probe(target, ssh, key)
    base = info["base"]
    shipped = 0
    free = info.get("free_bytes")
    if not info.get("repx_ready"):
        _check_space(target, free, sum(f.source.stat().st_size for f in files), "repx itself")
        shipped = ssh.send_tar([target.python, "-I", "-c", _INSTALL, base, key,
                                str(KEEP_VERSIONS)],
                               lambda stream: _write_payload(files, stream))
        free = None if free is None else free - shipped
    return RemoteRepx(target=target, ssh=ssh, base=base, key=key, shipped_bytes=shipped,
                      free_bytes=free)


def _check_space(target: Target, free: int | None, needed: int, what: str) -> None:
    """Refuse to send what cannot fit (checked before anything is sent, so a full disk
    leaves nothing half-written behind; the remote's own errors still catch a race)."""
    if free is not None and needed > free:
        raise RemoteError(f"target {target.where()}: base_path has {free / 1e6:.1f} MB free, "
                          f"{what} needs {needed / 1e6:.1f} MB; free some space there or "
                          "give the target another base_path")


def _tree_size(path: str) -> int:
    if not os.path.isdir(path) or os.path.islink(path):
        return os.lstat(path).st_size
    total = 0
    for directory, _dirs, names in os.walk(path):
        total += sum(os.lstat(os.path.join(directory, n)).st_size for n in names)
    return total


# ------------------------------------------------------------------------------ the lab


@dataclass(frozen=True)
class ShipSummary:
    """What shipping a lab did."""

    lab_id: str
    #: The lab directory on the remote (give it to the remote repx as --lab).
    remote_lab: str
    paths_total: int
    paths_sent: int
    bytes_sent: int
    seconds: float
    #: Bytes sent to make repx runnable there (0 when it was).
    repx_bytes: int = 0


def _closure_header(lab_dir: Path) -> dict[str, Any]:
    from repx.lab.export import closure_of, lab_id_of, lab_store_path
    from repx.lab.images import lab_images

    store_path = lab_store_path(lab_dir)
    paths = closure_of(store_path)
    images = {name: image.digest for name, image in lab_images(Path(store_path)).items()}
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()
    return {"lab": store_path, "lab_id": lab_id_of(store_path), "store_paths": paths,
            "images": images, "closure_digest": digest}


def _write_paths(paths: Sequence[str], stream: IO[bytes]) -> None:
    """A tar of ``paths`` as the export writes them, each followed by its completion
    member (the agent moves a path into the pool only when that member arrives)."""
    from repx.lab.export import STORE_PARTS, add_store_path, normalized_member

    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for depth in range(1, len(STORE_PARTS) + 1):
            directory = normalized_member(tarfile.TarInfo("/".join(STORE_PARTS[:depth])))
            directory.type, directory.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(directory)
        for path in paths:
            add_store_path(archive, path)
            done = normalized_member(tarfile.TarInfo(f"repx-done/{Path(path).name}"))
            done.size = 0
            archive.addfile(done, io.BytesIO(b""))


def ship_lab(remote: RemoteRepx, lab_dir: Path, *, export_tar: bool = False) -> ShipSummary:
    """Send the lab's closure paths the remote lacks, then assemble the lab there.
    ``export_tar``: also write the lab's export tar there (``--artifact-store node-local``:
    the nodes unpack it), from what the remote has, so that nothing is sent twice."""
    started = time.monotonic()
    header = {**_closure_header(lab_dir), "export_tar": export_tar}
    names = [Path(p).name for p in header["store_paths"]]
    result = remote.agent("have", header)
    missing = set(result["missing"])
    to_send = [p for p in header["store_paths"] if Path(p).name in missing]
    sent = 0
    if to_send:
        _check_space(remote.target, remote.free_bytes,
                     sum(_tree_size(p) for p in to_send),
                     f"the lab's {len(to_send)} missing store paths")
        sent = remote.ssh.send_tar(remote.agent_argv("receive"),
                                   lambda stream: _write_paths(to_send, stream))
        result = remote.agent("assemble", header)
    return ShipSummary(lab_id=header["lab_id"], remote_lab=result["lab_dir"],
                       paths_total=len(names), paths_sent=len(to_send), bytes_sent=sent,
                       seconds=time.monotonic() - started, repx_bytes=remote.shipped_bytes)


def describe(summary: ShipSummary) -> str:
    """One line for the user: what went over the wire."""
    from repx.display import plural
    from repx.report.store_views import human_bytes as _size

    repx_part = f", repx itself {_size(summary.repx_bytes)}" if summary.repx_bytes else ""
    if not summary.paths_sent:
        return (f"shipped nothing: the remote has all {summary.paths_total} store paths of "
                f"the lab{repx_part} ({summary.seconds:.1f} s)")
    return (f"shipped {plural(summary.paths_sent, 'store path')} of {summary.paths_total} "
            f"({_size(summary.bytes_sent)}){repx_part} in {summary.seconds:.1f} s")


