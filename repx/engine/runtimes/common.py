"""What every runtime shares: the sandbox a job runs in, the user's mounts, the registry.

A runtime turns a job's command line (:func:`repx.engine.contract.job_argv`) into the command
line that runs it: ``native`` as it is, ``bwrap`` in a bubblewrap sandbox, ``podman`` and
``docker`` in a container of the run's image. The scheduler spawns the result exactly as it
spawns a native job (its own session, its logs as stdout/stderr), so cancelling, logs,
exit codes and outcome records do not depend on the runtime.

The contract is the same under every runtime: the same argv (absolute paths: a sandbox binds
each folder at the path it has on the host), the same environment (repx's, with
``REPX_JOB_ID``; only ``HOME`` and ``TMPDIR`` point at the private ``/tmp`` under an isolating
runtime, since the host's folders are not there), ``$out`` emptied and made the cwd by the
script's header, and ``PATH`` set by that header.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from repx.errors import UsageError

if TYPE_CHECKING:
    from repx.engine.units import Unit
    from repx.store.layout import JobFolders

#: The runtimes ``repx build --runtime`` accepts; ``native`` runs jobs straight on the host.
RUNTIMES = ("native", "bwrap", "podman", "docker")

#: The environment variable that chooses the runtime when ``--runtime`` is not given.
RUNTIME_ENV = "REPX_RUNTIME"

#: Where the jobs' closures are, as their scripts name them.
NIX_STORE = "/nix/store"

#: The private, writable folder an isolating runtime gives each job (also its HOME/TMPDIR).
SANDBOX_TMP = "/tmp"


@dataclass(frozen=True)
class Mount:
    """A host path the user makes visible to every job (``--mount PATH[:ro|rw]``), at the
    same path inside the sandbox."""

    path: str
    writable: bool = False

    def __str__(self) -> str:
        return f"{self.path}:{'rw' if self.writable else 'ro'}"


def parse_mount(text: str, *, cwd: str | None = None) -> Mount:
    """``PATH``, ``PATH:ro`` or ``PATH:rw`` as a :class:`Mount` (read-only by default).

    The path is made absolute (against ``cwd``) and must exist: a typo would otherwise show
    up as a job failing to find the file, far from its cause."""
    path, writable = text, False
    head, sep, mode = text.rpartition(":")
    if sep and mode in ("ro", "rw"):
        path, writable = head, mode == "rw"
    if not path:
        raise UsageError(f"--mount {text!r}: no path (use --mount PATH[:ro|rw])")
    absolute = os.path.normpath(os.path.join(cwd or os.getcwd(), os.path.expanduser(path)))
    if not os.path.exists(absolute):
        raise UsageError(f"--mount {text!r}: {absolute} does not exist")
    if absolute == "/" or absolute == NIX_STORE or absolute.startswith(NIX_STORE + "/"):
        raise UsageError(f"--mount {text!r}: {absolute} cannot be mounted (the sandbox's "
                         "root and /nix/store are the runtime's own)")
    return Mount(absolute, writable)


def runtime_from_env(value: str | None = None) -> str:
    """The runtime to use: ``value`` (``--runtime``), else ``$REPX_RUNTIME``, else native; a
    UsageError naming the setting for an unknown name."""
    name = value if value is not None else (os.environ.get(RUNTIME_ENV, "").strip() or "native")
    if name not in RUNTIMES:
        where = "--runtime" if value is not None else RUNTIME_ENV
        raise UsageError(f"{where}={name!r} is not a runtime; use one of {', '.join(RUNTIMES)}")
    return name


@dataclass
class JobSandbox:
    """One job process to run: its command line and what its sandbox must hold.

    ``read_only`` are the host paths its inputs name (other jobs' outputs, the store when an
    input lists job folders), ``writable`` its own ``out/`` and ``repx/`` folders.
    """

    unit_id: str
    #: The run whose image the job runs in (podman, docker).
    run: str
    argv: list[str]
    #: The job's environment (repx's plus REPX_JOB_ID), as the native runtime gives it.
    env: dict[str, str]
    out_dir: str
    read_only: list[str] = field(default_factory=list)
    writable: list[str] = field(default_factory=list)


def sandbox_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment inside an isolating runtime: ``env`` with HOME and TMPDIR at the
    private /tmp (the host's home and temp folders are not in the sandbox)."""
    inside = dict(env)
    inside["HOME"] = SANDBOX_TMP
    inside["TMPDIR"] = SANDBOX_TMP
    return inside


class Runtime:
    """The native runtime, and the interface of the others."""

    name = "native"
    #: Whether jobs are kept from the host (their inputs, mounts and closure only).
    isolating = False

    def wrap(self, sandbox: JobSandbox) -> tuple[list[str], dict[str, str]]:
        """The command line to spawn and its environment."""
        return sandbox.argv, sandbox.env

    def check_runs(self, runs: list[str]) -> None:
        """Raise a UsageError before anything runs when a run cannot use this runtime."""

    def cleanup(self, unit_id: str) -> None:
        """Remove what a killed job may have left outside the scheduler's process tree (a
        container). Called after a job was killed or cancelled, and before a job whose
        previous run was abandoned starts again."""


_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")


def container_name(unit_id: str) -> str:
    """A container name for a unit: ``repx-`` + its id, with anything a container engine
    refuses replaced by ``_`` (ids are unique per store, so names do not clash)."""
    return "repx-" + _NAME_UNSAFE.sub("_", unit_id)


def is_bindable(path: str) -> bool:
    """Whether ``path`` is a host path an isolating runtime binds for a job's input: an
    absolute path outside /nix/store (the closure is bound or in the image already) that
    exists now (a missing input is the script header's to report)."""
    return (path.startswith("/") and not (path == NIX_STORE or path.startswith(NIX_STORE + "/"))
            and os.path.exists(path))


def visible_inputs(unit: Unit, inputs: Mapping[str, str], folders: JobFolders, *,
                   existing_only: bool = True) -> list[str]:
    """The host paths an isolating runtime shows a unit read-only: each path its inputs
    name outside its own folder, and the whole store when an input is a list of job
    folders (an inter-run manifest, a gather's worker outputs, the store's base), whose
    entries the job only learns by reading it. The local and SLURM schedulers both ask
    this, so a job sees the same folders wherever it runs.

    SLURM asks at submit time, before upstream jobs have written their outputs, so it
    passes ``existing_only=False``: the runtime binds them only if they exist when the job
    starts (bwrap's ``--ro-bind-try``)."""
    own = folders.job_dir(unit.id) + "/"
    paths = {path for path in inputs.values()
             if (is_bindable(path) or (not existing_only and path.startswith("/")
                                       and not path.startswith(NIX_STORE + "/")))
             and not path.startswith(own)}
    lists_folders = unit.role == "gather" or any(
        "run_manifest" in source or source.get("runtime") == "store__base"
        for source in unit.job.inputs.values())
    if lists_folders:
        paths = {p for p in paths if not p.startswith(folders.store_root + "/")}
        paths.add(folders.store_root)
    return sorted(paths)
