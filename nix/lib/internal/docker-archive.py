"""Write a lab's container images as docker-archive directories (the builder of images.nix).

Nix runs this with the host's python3 (standard library only, ``-I -S``) inside the images
derivation of a lab directory. ``exportReferencesGraph`` gave it, for every root store path of
the lab's runs, a file listing that root's closure; ``$imagesSpecPath`` says which roots make
which image. It writes into ``$out``:

    index.json                      {name: {dir, digest, tag, runs, layers, size, ...}}
    layers/<sha256 hex>.tar         every distinct layer once (shared by the images)
    docker/<name>/manifest.json     a docker-archive directory: `tar -ch -C docker/<name> .`
    docker/<name>/<sha256 hex>.json   is what `podman load` / `docker load` read
    docker/<name>/<sha256 hex>.tar -> ../../layers/<sha256 hex>.tar

Rules, each for a reason:

* **One layer per store path** (after a base layer with /nix/store and /tmp): a layer's bytes
  depend on that path alone, so two images holding the same path hold the same layer (same
  digest) and a container engine stores it once. Past ``MAX_LAYERS`` the least shared paths
  (fewest referrers in the closure) go into one last layer, because overlay file systems
  stack a bounded number of layers.
* **Reproducible**: entries sorted (byte order, a directory before its contents), mtime 1,
  uid/gid 0 with no user or group names, modes reduced to r-x bits (as the Nix store has
  them), PAX headers only where a name needs one, no compression and no timestamps or host
  names in the config. The same closure gives the same bytes, so the same image digest.
* **The image ID is the digest**: ``digest`` is ``sha256:`` of the config JSON, which is the
  image ID podman and docker report after loading it, and the config holds only content
  (layer digests), never the lab's or a run's name, so two runs with the same closure share
  one image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

#: The most layers an image gets: overlay (podman, docker) stacks at most ~125.
MAX_LAYERS = 100

#: Nix systems to OCI architectures (and variants).
ARCHITECTURES = {
    "x86_64-linux": ("amd64", None),
    "aarch64-linux": ("arm64", "v8"),
    "i686-linux": ("386", None),
    "armv7l-linux": ("arm", "v7"),
    "armv6l-linux": ("arm", "v6"),
    "riscv64-linux": ("riscv64", None),
    "powerpc64le-linux": ("ppc64le", None),
    "s390x-linux": ("s390x", None),
}

EPOCH = "1970-01-01T00:00:00Z"

#: Every file's mtime, as the Nix store has it (so a Python's .pyc checks see the same time
#: inside an image as in the store).
STORE_MTIME = 1


class HashingWriter:
    """A write-only file that also computes the sha256 and size of what passes through."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.target.write(data)

    def tell(self) -> int:
        return self.size


def read_closures(build_dir: str, graph_names: list[str]) -> tuple[set[str], dict[str, list[str]]]:
    """The union of the closures in the given exportReferencesGraph files, and each path's
    references (the file format: path, deriver, count, then that many references)."""
    paths: set[str] = set()
    references: dict[str, list[str]] = {}
    for name in graph_names:
        with open(os.path.join(build_dir, name), encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        i = 0
        while i < len(lines) and lines[i]:
            path = lines[i]
            count = int(lines[i + 2])
            references[path] = lines[i + 3:i + 3 + count]
            paths.add(path)
            i += 3 + count
    return paths, references


def normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """The same metadata on every machine: owner root, the Nix store's fixed mtime."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = STORE_MTIME
    return info


def directory(name: str, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return normalized(info)


def walk(path: str, name: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """``path`` and everything below it, a directory before its entries, entries in byte order."""
    st = os.lstat(path)
    yield path, name, st
    if stat.S_ISDIR(st.st_mode):
        for entry in sorted(os.listdir(path), key=os.fsencode):
            yield from walk(os.path.join(path, entry), f"{name}/{entry}")


def add_store_path(archive: tarfile.TarFile, path: str) -> None:
    """Add ``path`` (a /nix/store path) and its contents, as ``nix/store/<name>/...``."""
    for source, name, st in walk(path, path.lstrip("/")):
        info = normalized(tarfile.TarInfo(name))
        executable = bool(st.st_mode & 0o111)
        if stat.S_ISDIR(st.st_mode):
            info.type, info.mode = tarfile.DIRTYPE, 0o555
            archive.addfile(info)
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, os.readlink(source)
            archive.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            # A hard link (an optimised store) is written as the file it is: layers stay
            # independent of how the store happened to share inodes.
            info.type, info.size = tarfile.REGTYPE, st.st_size
            info.mode = 0o555 if executable else 0o444
            with open(source, "rb") as handle:
                archive.addfile(info, handle)
        else:
            raise SystemExit(f"repx images: {source}: a store path holds a special file "
                             "(not a file, directory or symlink); it cannot go into an image")


def write_layer(layers_dir: str, store_paths: list[str], *, base: bool = False) -> dict:
    """One layer tar in ``layers_dir`` named by its digest; returns its description."""
    partial = os.path.join(layers_dir, ".partial.tar")
    with open(partial, "wb") as raw:
        sink = HashingWriter(raw)
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as archive:
            archive.addfile(directory("nix", 0o755))
            archive.addfile(directory("nix/store", 0o755))
            if base:
                archive.addfile(directory("tmp", 0o1777))
            for path in store_paths:
                add_store_path(archive, path)
    hexdigest = sink.sha256.hexdigest()
    os.replace(partial, os.path.join(layers_dir, f"{hexdigest}.tar"))
    return {"digest": f"sha256:{hexdigest}", "file": f"{hexdigest}.tar", "size": sink.size,
            "store_paths": store_paths}


def layer_groups(closure: set[str], references: dict[str, list[str]]) -> list[list[str]]:
    """The store paths of each layer: one path per layer, the least shared merged at the end
    when the closure has more paths than ``MAX_LAYERS`` allows (base layer included)."""
    ordered = sorted(closure)
    room = MAX_LAYERS - 1
    if len(ordered) <= room:
        return [[p] for p in ordered]
    referrers = {p: 0 for p in ordered}
    for path in ordered:
        for ref in references.get(path, []):
            if ref != path and ref in referrers:
                referrers[ref] += 1
    by_sharing = sorted(ordered, key=lambda p: (-referrers[p], p))
    alone = sorted(by_sharing[:room - 1])
    merged = sorted(by_sharing[room - 1:])
    return [[p] for p in alone] + [merged]


def repository_name(name: str) -> str:
    """A docker repository name for an image name (lowercase, ``[a-z0-9]`` and ``-``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"repx/{slug or 'image'}"


def main() -> None:
    out = os.environ["out"]
    build_dir = os.getcwd()
    with open(os.environ["imagesSpecPath"], encoding="utf-8") as handle:
        spec = json.load(handle)
    architecture, variant = ARCHITECTURES.get(spec["system"], (None, None))
    if architecture is None:
        raise SystemExit(f"repx images: no container architecture is known for the system "
                         f"{spec['system']!r}; use containerMode = \"none\"")
    layers_dir = os.path.join(out, "layers")
    os.makedirs(layers_dir)
    os.makedirs(os.path.join(out, "docker"))

    written: dict[tuple[str, ...], dict] = {}

    def layer(paths: list[str], base: bool = False) -> dict:
        key = ("<base>",) if base else tuple(paths)
        if key not in written:
            written[key] = write_layer(layers_dir, paths, base=base)
        return written[key]

    index = {}
    for image in spec["images"]:
        name = image["name"]
        closure, references = read_closures(build_dir, image["graphs"])
        layers = [layer([], base=True)] + [layer(g) for g in layer_groups(closure, references)]
        config = {
            "architecture": architecture,
            "os": "linux",
            "created": EPOCH,
            "config": {"WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [entry["digest"] for entry in layers]},
            "history": [{"created": EPOCH,
                         "created_by": "repx: " + (" ".join(entry["store_paths"])
                                                   or "base layer (/nix/store, /tmp)")}
                        for entry in layers],
        }
        if variant:
            config["variant"] = variant
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_hex = hashlib.sha256(config_bytes).hexdigest()
        tag = f"{repository_name(name)}:{config_hex[:16]}"
        image_dir = os.path.join(out, "docker", name)
        os.makedirs(image_dir)
        with open(os.path.join(image_dir, f"{config_hex}.json"), "wb") as handle:
            handle.write(config_bytes)
        for entry in layers:
            os.symlink(f"../../layers/{entry['file']}", os.path.join(image_dir, entry["file"]))
        manifest = [{"Config": f"{config_hex}.json", "RepoTags": [tag],
                     "Layers": [entry["file"] for entry in layers]}]
        with open(os.path.join(image_dir, "manifest.json"), "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, sort_keys=True, separators=(",", ":"))
        index[name] = {
            "format": "docker-archive",
            "dir": f"images/docker/{name}",
            "digest": f"sha256:{config_hex}",
            "tag": tag,
            "runs": image["runs"],
            "layers": [entry["digest"] for entry in layers],
            "store_paths": sorted(closure),
            "size": sum(entry["size"] for entry in layers) + len(config_bytes),
        }
    with open(os.path.join(out, "index.json"), "w", encoding="utf-8") as handle:
        json.dump(index, handle, sort_keys=True, separators=(",", ":"))


if __name__ == "__main__":
    sys.exit(main())
