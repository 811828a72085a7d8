"""Runtimes: how a job's process is run — on the host, under bwrap, in podman or docker.

:func:`make_runtime` gives the runtime for a lab; the local scheduler asks it to
:meth:`~repx.engine.runtimes.common.Runtime.wrap` each job's command line. What a job sees
under each runtime is in docs/isolation.md ("Runtimes").
"""

from __future__ import annotations

from pathlib import Path

from repx.engine.runtimes.common import (
    RUNTIME_ENV,
    RUNTIMES,
    JobSandbox,
    Mount,
    Runtime,
    parse_mount,
    runtime_from_env,
)
from repx.errors import UsageError

__all__ = ["RUNTIMES", "RUNTIME_ENV", "JobSandbox", "Mount", "Runtime", "make_runtime",
           "parse_mount", "runtime_from_env"]


def make_runtime(name: str, lab_dir: Path, *, mounts: tuple[Mount, ...] = (),
                 network: bool = False) -> Runtime:
    """The runtime ``name`` for jobs of the lab at ``lab_dir``.

    An unpacked export (``--lab lab.tar``) is found from its directory: bwrap binds its
    store at /nix/store, and podman/docker take its images from it.
    """
    if name not in RUNTIMES:
        raise UsageError(f"unknown runtime {name!r}; use one of {', '.join(RUNTIMES)}")
    if name == "native":
        if mounts or network:
            raise UsageError("--mount and --network need an isolating runtime "
                             "(--runtime bwrap, podman or docker): native jobs see the "
                             "whole host already")
        return Runtime()
    from repx.lab.export import unpacked_lab_of

    unpacked = unpacked_lab_of(lab_dir)
    store_dir = unpacked.store_dir if unpacked is not None else None
    if name == "bwrap":
        from repx.engine.runtimes.bwrap import BwrapRuntime

        return BwrapRuntime(store_dir=str(store_dir) if store_dir else "/nix/store",
                            mounts=mounts, network=network)
    from repx.engine.runtimes.containers import DockerRuntime, PodmanRuntime
    from repx.lab.images import Image, image_of_run
    from repx.lab.open import cache_dir

    images: dict[str, Image | None] = {}

    def image_of(run: str) -> Image | None:
        if run not in images:
            images[run] = image_of_run(lab_dir, run, store_dir=store_dir)
        return images[run]

    if name == "podman":
        return PodmanRuntime(image_of=image_of, conf_dir=cache_dir() / "podman",
                             mounts=mounts, network=network)
    return DockerRuntime(image_of=image_of, mounts=mounts, network=network)
