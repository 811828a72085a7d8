"""Targets: the machines ``--target NAME`` runs or inspects jobs on.

A target is a ``[targets.NAME]`` table of a configuration file (``repx.config``: the user's
``~/.config/repx/config.toml``, the lab's ``repx.toml``, or ``$REPX_CONFIG``)::

    [targets.cluster]
    host = "cluster"                # anything ssh accepts: an ~/.ssh/config alias, user@host
    base_path = "~/repx"            # on the remote: absolute, or ~/… (the remote's home)
    scheduler = "slurm"             # local | slurm (default local)
    runtime = "bwrap"               # native | bwrap | podman | docker (default bwrap)
    artifact_store = "node-local"   # SLURM: shared | node-local (default shared)
    artifact_dir = "/local/scratch" # SLURM node-local: where each node unpacks
    python = "python3"              # the remote's interpreter (>= 3.11)
    ssh_options = ["-p", "2222"]    # extra ssh words, put before the host
    [targets.cluster.resources]     # SLURM: the [defaults] of the remote's resources.toml
    mem = "4G"
    time = "01:00:00"

The default runtime is bwrap because the remote has no Nix: the jobs' ``/nix/store/…``
paths only resolve in a sandbox that binds the shipped store there. The lab's table of a
name replaces the user's table of that name as a whole (a half-merged host and base_path
would send the lab somewhere nobody named). ``local`` is the built-in target "this
machine". Every value is checked here, so a typo is a UsageError naming the file and the
key, before anything connects anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repx.config import load_config
from repx.engine.runtimes import RUNTIMES
from repx.errors import UsageError

#: The name that means "this machine" (no ssh).
LOCAL_TARGET = "local"

#: The keys a target table may have, and the type each must have.
TARGET_KEYS: dict[str, type] = {
    "host": str, "base_path": str, "scheduler": str, "runtime": str,
    "artifact_store": str, "artifact_dir": str, "python": str, "ssh_options": list,
    "resources": dict,
}

SCHEDULERS = ("local", "slurm")
ARTIFACT_STORES = ("shared", "node-local")

#: A target's name: it appears in messages and in local cache paths.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Target:
    """A machine jobs run on: ``host`` None for the local machine."""

    name: str
    host: str | None = None
    base_path: str = ""
    scheduler: str = "local"
    runtime: str = "bwrap"
    artifact_store: str = "shared"
    artifact_dir: str | None = None
    python: str = "python3"
    ssh_options: tuple[str, ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)
    #: The configuration file the table comes from (for messages).
    origin: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.host is None

    def where(self) -> str:
        """How a message names the target: ``cluster (me@login:~/repx, from FILE)``."""
        source = f", from {self.origin}" if self.origin else ""
        return f"{self.name} ({self.host}:{self.base_path}{source})"

    def ssh(self) -> Any:
        """The transport to this target (:class:`repx.remote.ssh.SshTarget`)."""
        from repx.remote.ssh import SshTarget

        if self.host is None:
            raise UsageError("the local target is not reached over ssh")
        return SshTarget(self.host, ssh_options=self.ssh_options, name=self.name)


def parse_target(name: str, table: Any, origin: Path) -> Target:
    """A ``[targets.NAME]`` table checked; every error names ``origin`` and the key."""
    where = f"{origin}: targets.{name}"
    if not _NAME.match(name):
        raise UsageError(f"{where}: a target name has letters, digits, '_', '.', '-' only")
    if name == LOCAL_TARGET:
        raise UsageError(f"{where}: 'local' is the built-in target for this machine; give "
                         "the remote another name")
    if not isinstance(table, dict):
        raise UsageError(f"{where} must be a table ([targets.{name}] with host and "
                         "base_path)")
    for key, value in table.items():
        wanted = TARGET_KEYS.get(key)
        if wanted is None:
            raise UsageError(f"{where}: unknown key {key!r} (known: {', '.join(TARGET_KEYS)})")
        if not isinstance(value, wanted):
            raise UsageError(f"{where}.{key} must be a {wanted.__name__}, not {value!r}")
    for required in ("host", "base_path"):
        if not table.get(required, "").strip():
            raise UsageError(f"{where}: {required} is required (host: what you would type "
                             "after `ssh`; base_path: the folder on the remote for repx)")
    host = table["host"].strip()
    if host.startswith("-"):
        raise UsageError(f"{where}.host = {host!r} starts with '-' (ssh would read it as an "
                         "option; put options in ssh_options)")
    base_path = _checked_base_path(where, table["base_path"])
    choices = {"scheduler": SCHEDULERS, "runtime": tuple(RUNTIMES),
               "artifact_store": ARTIFACT_STORES}
    for key, allowed in choices.items():
        if key in table and table[key] not in allowed:
            raise UsageError(f"{where}.{key} = {table[key]!r}: use one of {', '.join(allowed)}")
    options = table.get("ssh_options", [])
    if not all(isinstance(o, str) for o in options):
        raise UsageError(f"{where}.ssh_options must be a list of strings (ssh's own words, "
                         "e.g. [\"-p\", \"2222\"])")
    _refuse_weakened_ssh(where, options)
    artifact_dir = table.get("artifact_dir")
    if artifact_dir is not None and not artifact_dir.startswith("/"):
        raise UsageError(f"{where}.artifact_dir must be an absolute path on the nodes")
    resources = table.get("resources", {})
    if resources:
        from repx.engine.slurm.resources import ResourceRules

        resources = ResourceRules._check(origin, f"targets.{name}.resources", resources)
    python = table.get("python", "python3").strip()
    if not python:
        raise UsageError(f"{where}.python is empty (the remote's Python 3.11+, e.g. python3)")
    return Target(name=name, host=host, base_path=base_path,
                  scheduler=table.get("scheduler", "local"),
                  runtime=table.get("runtime", "bwrap"),
                  artifact_store=table.get("artifact_store", "shared"),
                  artifact_dir=artifact_dir, python=python, ssh_options=tuple(options),
                  resources=dict(resources), origin=origin)


def _checked_base_path(where: str, text: str) -> str:
    """``base_path``: absolute or ``~/…``, one line, no NUL. Any other character is allowed
    (every remote word is quoted), but a path that is not one plain line is a typo or an
    attack, never a folder somebody meant."""
    path = text.strip()
    if any(c in path for c in "\n\r\0"):
        raise UsageError(f"{where}.base_path contains a line break or NUL")
    if not (path.startswith("/") or path == "~" or path.startswith("~/")):
        raise UsageError(f"{where}.base_path = {text!r} must be absolute (/…) or in the "
                         "remote's home (~/…)")
    parts = path.split("/")
    if ".." in parts:
        raise UsageError(f"{where}.base_path = {text!r} contains '..'")
    if path.rstrip("/") in ("", "~"):
        raise UsageError(f"{where}.base_path = {text!r} is a whole file system or home; give "
                         "a folder of its own for repx (e.g. ~/repx)")
    return path.rstrip("/")


def _refuse_weakened_ssh(where: str, options: list[str]) -> None:
    """ssh's host-key check stays on: an option that turns it off is refused (a target must
    not be a way to talk to whoever answers on that address)."""
    joined = " ".join(options).lower().replace("=", " ")
    for weakened in ("stricthostkeychecking no", "stricthostkeychecking off",
                     "userknownhostsfile /dev/null", "userknownhostsfile none"):
        if weakened in joined:
            raise UsageError(f"{where}.ssh_options turns ssh's host-key check off "
                             f"({weakened!r}); repx never does that: add the host's key to "
                             "known_hosts (ssh-keyscan, or connect once by hand)")


def load_targets(lab_folder: Path) -> dict[str, Target]:
    """Every target the configuration files of a lab in ``lab_folder`` define."""
    config = load_config(lab_folder)
    return {name: parse_target(name, table, origin)
            for name, (origin, table) in config.targets.items()}


def find_target(name: str, lab_folder: Path) -> Target:
    """The target ``name`` (``local``: this machine), or a UsageError listing the known
    ones and where they were looked for."""
    if name == LOCAL_TARGET:
        return Target(name=LOCAL_TARGET)
    config = load_config(lab_folder)
    if name not in config.targets:
        known = ", ".join(sorted(config.targets)) or "none"
        looked = config.origin()
        raise UsageError(f"unknown target {name!r} (targets defined: {known}; read: "
                         f"{looked}); add a [targets.{name}] table with host and base_path "
                         "to ~/.config/repx/config.toml or the lab's repx.toml")
    origin, table = config.targets[name]
    return parse_target(name, table, origin)
