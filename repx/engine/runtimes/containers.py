"""The podman and docker runtimes: each job in a container of its run's image.

The image is the one the lab built for the job's run (``containerMode``; ``runs/<run>.json``
names it), loaded into the engine once per build and referred to by its digest, never by a
tag (:func:`repx.lab.images.load_image`); no image is ever pulled. A container runs as::

    ENGINE run --rm --name repx-<unit> --init --read-only --network none|host
        --user UID:GID -e K=V… -v INPUT:INPUT:ro… -v MOUNT:MOUNT[:ro]… -v OUT:OUT -v META:META
        -w OUT sha256:<digest> SCRIPT OUT INPUTS_JSON PARAMS_JSON

so the job sees the image's ``/nix/store`` (its closure, read-only), a private ``/tmp``,
``/dev`` and ``/proc``, its inputs read-only and its folders read-write at their host
paths, as the invoking user, with the environment the native runtime gives (HOME and TMPDIR
at ``/tmp``). ``--init`` puts the engine's init (catatonit, docker-init) in front of the
script: it forwards the SIGTERM of a cancel to the script and reaps. A container ends when
its main process does, and the kernel kills what that process left running in it: leftovers
are not waited for, unlike natively and under bwrap as root. A killed engine client would
leave its container running, so a cancelled or killed job's container is removed by name
(``rm -f``) afterwards.

Settings (this machine's cgroup v1 hybrid needs runc and cgroupfs, and podman's default
ulimits cannot be set here):

* ``REPX_PODMAN``: podman's command line (default ``podman --runtime runc
  --cgroup-manager=cgroupfs``); add ``--root``/``--runroot`` for a private image storage.
* ``CONTAINERS_CONF``: podman's containers.conf; when unset, repx writes one with
  ``[containers] default_ulimits = []`` into its cache folder and uses it.
* ``REPX_DOCKER``: docker's command line (default ``docker``; ``DOCKER_HOST`` chooses the
  daemon, as for docker itself).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from repx.engine.runtimes.common import (
    SANDBOX_TMP,
    JobSandbox,
    Mount,
    Runtime,
    container_name,
    sandbox_env,
)
from repx.errors import RepxError, UsageError
from repx.lab.images import Image

PODMAN_ENV = "REPX_PODMAN"
DOCKER_ENV = "REPX_DOCKER"
DEFAULT_PODMAN = "podman --runtime runc --cgroup-manager=cgroupfs"
DEFAULT_DOCKER = "docker"

#: podman's containers.conf without default ulimits (setting RLIMIT_NOFILE fails here).
CONTAINERS_CONF_TEXT = "[containers]\ndefault_ulimits = []\n"


def _engine_command(variable: str, default: str) -> list[str]:
    text = os.environ.get(variable, "").strip() or default
    try:
        command = shlex.split(text)
    except ValueError as error:
        raise UsageError(f"{variable}={text!r}: {error}") from None
    found = shutil.which(command[0]) if command else None
    if found is None:
        raise UsageError(f"{variable}={text!r}: {command[0] if command else '(empty)'} is "
                         "not installed")
    # The scheduler spawns the command without a PATH search.
    return [found, *command[1:]]


class ContainerRuntime(Runtime):
    """A container engine with docker's command line (podman has the same)."""

    isolating = True
    #: Arguments of ``run`` that differ between the engines.
    run_extra: tuple[str, ...] = ()

    def __init__(self, command: list[str], engine_env: dict[str, str], *,
                 image_of: Callable[[str], Image | None], mounts: tuple[Mount, ...] = (),
                 network: bool = False) -> None:
        self.command = command
        self.engine_env = engine_env
        self.image_of = image_of
        self.mounts = mounts
        self.network = network
        #: Image ID per run, once loaded.
        self._loaded: dict[str, str] = {}

    def check_runs(self, runs: list[str]) -> None:
        missing = [run for run in runs if self.image_of(run) is None]
        if missing:
            raise UsageError(
                f"--runtime {self.name}: run{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} {'have' if len(missing) > 1 else 'has'} no image (the "
                "lab was built with containerMode = \"none\"); set containerMode to "
                "\"unified\" or \"per-run\" in mkLab, or use --runtime bwrap")

    def image_id(self, run: str) -> str:
        """The loaded image ID for ``run`` (loading it the first time; once per digest)."""
        loaded = self._loaded.get(run)
        if loaded is not None:
            return loaded
        from repx.lab.images import load_image

        image = self.image_of(run)
        if image is None:
            raise RepxError(f"run {run} has no image (containerMode = \"none\")")
        for other, image_id in self._loaded.items():
            if self.image_of(other) == image:
                loaded = image_id
                break
        else:
            loaded = load_image(image, self.command, env=self.engine_env)
        self._loaded[run] = loaded
        return loaded

    def wrap(self, sandbox: JobSandbox) -> tuple[list[str], dict[str, str]]:
        args = self.run_argv(sandbox, self.image_id(sandbox.run), [
            arg for key, value in sandbox_env(sandbox.env).items()
            for arg in ("-e", f"{key}={value}")])
        # The engine client itself runs with the host's environment (its settings) plus the
        # job id, by which the scheduler recognises its helper processes.
        return args, {**self.engine_env, **{k: v for k, v in sandbox.env.items()
                                            if k.startswith("REPX_")}}

    def run_argv(self, sandbox: JobSandbox, image: str, env_args: list[str]) -> list[str]:
        """``ENGINE run …`` of the job in ``image`` (an image ID), its environment given by
        ``env_args`` (``-e K=V`` pairs; SLURM passes the node's variables by name)."""
        args = [*self.command, "run", "--rm", "--name", container_name(sandbox.unit_id),
                "--init", "--read-only", *self.run_extra,
                "--network", "host" if self.network else "none",
                "--user", f"{os.getuid()}:{os.getgid()}", *env_args]
        volumes = [(path, ":ro") for path in sandbox.read_only]
        volumes += [(mount.path, "" if mount.writable else ":ro") for mount in self.mounts]
        volumes += [(path, "") for path in sandbox.writable]
        for path, mode in volumes:
            if ":" in path:
                # -v SRC:DST[:OPTIONS] has no way to quote a colon.
                raise RepxError(f"--runtime {self.name} cannot show the job {path}: a path "
                                "with ':' cannot be a container volume; rename it, or use "
                                "--runtime bwrap")
            args += ["-v", f"{path}:{path}{mode}"]
        args += ["-w", sandbox.out_dir, image, *sandbox.argv]
        return args

    def cleanup(self, unit_id: str) -> None:
        subprocess.run([*self.command, "rm", "-f", container_name(unit_id)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=self.engine_env, check=False, timeout=120)


class PodmanRuntime(ContainerRuntime):
    """podman, with this machine's settings by default (see the module docstring)."""

    name = "podman"

    def __init__(self, *, image_of: Callable[[str], Image | None], conf_dir: Path,
                 mounts: tuple[Mount, ...] = (), network: bool = False) -> None:
        env = dict(os.environ)
        if not env.get("CONTAINERS_CONF"):
            conf = conf_dir / "containers.conf"
            if not conf.is_file() or conf.read_text() != CONTAINERS_CONF_TEXT:
                conf_dir.mkdir(parents=True, exist_ok=True)
                conf.write_text(CONTAINERS_CONF_TEXT)
            env["CONTAINERS_CONF"] = str(conf)
        super().__init__(_engine_command(PODMAN_ENV, DEFAULT_PODMAN), env,
                         image_of=image_of, mounts=mounts, network=network)


class DockerRuntime(ContainerRuntime):
    """docker (a running daemon: ``DOCKER_HOST`` or the default socket)."""

    name = "docker"
    # docker gives a read-only container no writable /tmp unless asked.
    run_extra = ("--tmpfs", SANDBOX_TMP)

    def __init__(self, *, image_of: Callable[[str], Image | None],
                 mounts: tuple[Mount, ...] = (), network: bool = False) -> None:
        super().__init__(_engine_command(DOCKER_ENV, DEFAULT_DOCKER), dict(os.environ),
                         image_of=image_of, mounts=mounts, network=network)
