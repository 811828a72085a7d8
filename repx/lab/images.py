"""The container images of a built lab (``containerMode``), as lab.json lists them.

Nix builds the images with the lab (``nix/lib/internal/images.nix``, written by
``docker-archive.py``): ``<lab>/images`` links to one derivation that holds each image as a
docker-archive directory (``images/docker/<name>/``: ``manifest.json``, the config JSON and
one layer tar per store path, shared between the images through ``images/layers/``). This
module reads what lab.json says about them and hands an image to a container engine:

* :func:`lab_images` / :func:`image_of_run`: the images and which image a run uses;
* :func:`write_docker_archive`: the image as one docker-archive tar stream, the input
  ``podman load`` and ``docker load`` accept (the directory itself holds symlinks);
* :func:`load_image`: load it into podman or docker unless an image with its digest is
  already there, and check the engine computed the same digest.

An image's ``digest`` is the sha256 of its config, which is the image ID podman and docker
give it, so a runtime refers to images by that ID, never by a tag someone could move.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from repx.errors import LabError, RepxError

#: Where the lab's store paths live when it was built here (an unpacked export maps them).
NIX_STORE = "/nix/store"

#: The image name of a unified lab (per-run images are named like their run).
UNIFIED_IMAGE = "lab"


@dataclass(frozen=True)
class Image:
    """One image of a lab: what it holds and where its docker-archive directory is."""

    name: str
    #: ``sha256:<hex>`` of the config: the image ID after ``podman load`` / ``docker load``.
    digest: str
    #: The name:tag the archive carries (``repx/<name>:<digest prefix>``), for people.
    tag: str
    runs: tuple[str, ...]
    #: Layer digests (diff ids), bottom first; the first is the base layer (/nix/store, /tmp).
    layers: tuple[str, ...]
    #: The /nix/store paths the image holds (as the jobs see them).
    store_paths: tuple[str, ...]
    #: Bytes of the layers and config (what a load reads).
    size: int
    #: The docker-archive directory on this machine.
    archive_dir: Path

    @property
    def image_id(self) -> str:
        """The digest without ``sha256:``, as ``podman images --no-trunc`` shows it."""
        return self.digest.removeprefix("sha256:")


def _images_root(lab_dir: Path, store_dir: Path | None) -> Path:
    """``<lab>/images`` on this machine. It links to an absolute /nix/store path, which an
    unpacked export (``store_dir``) holds under its own store directory instead."""
    link = lab_dir / "images"
    if store_dir is None or not link.is_symlink():
        return link
    target = os.readlink(link)
    if target.startswith(NIX_STORE + "/"):
        return store_dir / target[len(NIX_STORE) + 1:]
    return lab_dir / target


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f"{path} does not exist: not a built repx lab") from None
    except ValueError as error:
        raise LabError(f"{path}: not valid JSON ({error}); rebuild the lab") from None


def lab_images(lab_dir: Path, *, store_dir: Path | None = None) -> dict[str, Image]:
    """The images lab.json lists (empty for ``containerMode = "none"``).

    ``store_dir`` is where the lab's store paths are when it is not at /nix/store (an
    unpacked export: :attr:`repx.lab.export.UnpackedLab.store_dir`).
    """
    manifest = lab_dir / "lab.json"
    raw = _read_json(manifest).get("images", {})
    if not isinstance(raw, dict):
        raise LabError(f"{manifest}: 'images' must be an object; rebuild the lab")
    root = _images_root(lab_dir, store_dir)
    images: dict[str, Image] = {}
    for name, entry in sorted(raw.items()):
        try:
            relative = Path(entry["dir"])
            images[name] = Image(
                name=name,
                digest=str(entry["digest"]),
                tag=str(entry["tag"]),
                runs=tuple(entry["runs"]),
                layers=tuple(entry["layers"]),
                store_paths=tuple(entry.get("store_paths", ())),
                size=int(entry["size"]),
                archive_dir=root.joinpath(*relative.parts[1:]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise LabError(f"{manifest}: images.{name} is malformed ({error!r}); rebuild the "
                           "lab with this version of repx") from None
    return images


def image_of_run(lab_dir: Path, run: str, *, store_dir: Path | None = None) -> Image | None:
    """The image the run's jobs run in (its ``runs/<run>.json`` names it), or None."""
    blueprint = _read_json(lab_dir / "runs" / f"{run}.json")
    name = blueprint.get("image")
    if name is None:
        return None
    images = lab_images(lab_dir, store_dir=store_dir)
    if name not in images:
        raise LabError(f"{lab_dir / 'runs' / f'{run}.json'}: image {name!r} is not in "
                       "lab.json's images; rebuild the lab")
    return images[name]


def _archive_members(image: Image) -> list[tuple[str, Path]]:
    """The archive's members in a fixed order: manifest.json, the config, the layers."""
    manifest_path = image.archive_dir / "manifest.json"
    manifest = _read_json(manifest_path)
    try:
        entry = manifest[0]
        config, layers = entry["Config"], entry["Layers"]
    except (LookupError, TypeError):
        raise LabError(f"{manifest_path}: not a docker-archive manifest; rebuild the lab") \
            from None
    names = ["manifest.json", config, *layers]
    return [(name, image.archive_dir / name) for name in names]


def write_docker_archive(image: Image, stream: IO[bytes]) -> None:
    """Write ``image`` as one docker-archive tar (what ``podman load`` / ``docker load``
    read) to ``stream``, which may be a pipe. The same image gives the same bytes."""
    import tarfile  # here: a build that loads no image (most) imports this module for NIX_STORE

    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for name, path in _archive_members(image):
            try:
                size = path.stat().st_size
                with path.open("rb") as handle:
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = size, 0o444, 1
                    archive.addfile(info, handle)
            except FileNotFoundError:
                raise LabError(f"image {image.name}: {path} is missing (the lab's images are "
                               "incomplete); rebuild or re-export the lab") from None


def _engine_image_id(engine: Sequence[str], reference: str,
                     env: Mapping[str, str] | None) -> str | None:
    """The full image ID the engine has under ``reference``, or None."""
    result = subprocess.run([*engine, "image", "inspect", "--format", "{{.Id}}", reference],
                            capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        return None
    return result.stdout.strip().removeprefix("sha256:") or None


def load_image(image: Image, engine: Sequence[str], *,
               env: Mapping[str, str] | None = None) -> str:
    """Load ``image`` into a container engine (``engine`` is its command line, e.g.
    ``["podman", "--root", DIR]`` or ``["docker"]``, run with ``env``, default this
    process's) unless it already has it; return the image ID to run.

    The engine computes the ID from the bytes it read, so a mismatch means the archive on
    disk is not the image the lab's manifest describes (a corrupted or edited lab).
    """
    if _engine_image_id(engine, image.image_id, env) == image.image_id:
        return image.image_id
    command = [*engine, "load"]
    import tempfile

    # The engine's messages go to a file, not a pipe: nobody reads a pipe while the archive
    # is written, and a full one would block both sides.
    with tempfile.TemporaryFile() as messages:
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=messages,
                                       stderr=subprocess.STDOUT, env=env)
        except OSError as error:
            raise RepxError(f"cannot start {command[0]} to load image {image.name}: "
                            f"{error}") from None
        assert process.stdin is not None
        try:
            with process.stdin:
                write_docker_archive(image, process.stdin)
        except BrokenPipeError:
            pass  # the engine stopped reading: its exit status and messages say why
        returncode = process.wait()
        messages.seek(0)
        output = messages.read().decode(errors="replace").strip()
    if returncode != 0:
        raise RepxError(f"`{' '.join(command)}` failed to load image {image.name} "
                        f"({image.digest}): {output[-2000:]}")
    loaded = _engine_image_id(engine, image.image_id, env)
    if loaded != image.image_id:
        raise RepxError(f"image {image.name}: {command[0]} loaded it, but not under the ID "
                        f"the lab lists ({image.digest}); the lab's image files do not match "
                        "its manifest: rebuild or re-export the lab")
    return image.image_id
