"""repx's configuration files: how a lab's jobs run, without repeating options.

A ``repx.toml`` next to the lab (in the folder of ``--lab-file``, else the current folder)
and the user's ``$XDG_CONFIG_HOME/repx/config.toml`` (``~/.config/repx/config.toml``) may
set what ``repx build`` would otherwise be told each time::

    runtime = "bwrap"                 # native | bwrap | podman | docker
    mounts = ["/data/refs", "/scratch:rw"]
    network = false
    artifact_store = "node-local"     # SLURM: shared | node-local
    artifact_dir = "/local/scratch"   # SLURM node-local: where each node unpacks
    scratch = "node-local"            # SLURM: where jobs write $out (shared | node-local)
    scratch_dir = "/local/scratch"    # SLURM node-local scratch: the folder on each node

    [targets.cluster]                 # machines reached over ssh (repx.remote.targets)
    host = "cluster"
    base_path = "~/repx"

Precedence, per setting: the command line, then the environment (``REPX_RUNTIME``,
``REPX_ARTIFACT_STORE``, ``REPX_ARTIFACT_DIR``), then the lab's ``repx.toml``, then the
user's file, then the default. ``$REPX_CONFIG`` names one file to use instead of both.
Relative mount paths are relative to the file that names them. An unknown key or a value
of the wrong type is a UsageError naming the file and the key (a typo must not silently
leave jobs unconfined).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repx.errors import UsageError

#: The lab's own configuration file, looked for in the lab's folder.
PROJECT_CONFIG = "repx.toml"

#: The environment variable naming the one configuration file to use.
CONFIG_ENV = "REPX_CONFIG"

#: Keys a configuration file may set, and the type each must have.
_KEYS: dict[str, type | tuple[type, ...]] = {
    "runtime": str, "mounts": list, "network": bool, "artifact_store": str,
    "artifact_dir": str, "targets": dict, "scratch": str, "scratch_dir": str,
}


@dataclass
class RepxConfig:
    """The settings the configuration files give (None / empty: not set in any)."""

    runtime: str | None = None
    #: ``PATH[:ro|rw]`` texts with relative paths already made absolute.
    mounts: list[str] = field(default_factory=list)
    network: bool | None = None
    artifact_store: str | None = None
    artifact_dir: str | None = None
    scratch: str | None = None
    scratch_dir: str | None = None
    #: ``[targets.NAME]`` tables (checked by :mod:`repx.remote.targets`), each with the file
    #: it comes from; the lab's table of a name replaces the user's one as a whole.
    targets: dict[str, tuple[Path, Any]] = field(default_factory=dict)
    #: The files read, lowest precedence first (for messages).
    files: list[Path] = field(default_factory=list)

    def origin(self) -> str:
        """The files these settings come from, for an error message about one of them."""
        return ", ".join(str(f) for f in self.files) or "(no configuration file)"


def user_config_path() -> Path:
    """``$XDG_CONFIG_HOME/repx/config.toml`` (``~/.config/repx/config.toml``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "repx" / "config.toml"


def config_files(lab_folder: Path) -> list[Path]:
    """The files to read, lowest precedence first: ``$REPX_CONFIG`` alone when set (it
    must exist), else the user's file and the lab folder's ``repx.toml`` that exist."""
    explicit = os.environ.get(CONFIG_ENV, "").strip()
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UsageError(f"{CONFIG_ENV}={explicit}: no such file")
        return [path]
    return [p for p in (user_config_path(), lab_folder / PROJECT_CONFIG) if p.is_file()]


def _read(path: Path) -> dict[str, Any]:
    # Imported here: most builds have no configuration file, and a no-op build's time is
    # counted in milliseconds.
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path}: not valid TOML ({error})") from None
    for key, value in data.items():
        wanted = _KEYS.get(key)
        if wanted is None:
            raise UsageError(f"{path}: unknown setting {key!r} (known: {', '.join(_KEYS)})")
        if not isinstance(value, wanted):
            kind = wanted.__name__ if isinstance(wanted, type) else "value"
            raise UsageError(f"{path}: {key} must be a {kind}, not {value!r}")
    mounts = data.get("mounts", [])
    if not all(isinstance(m, str) for m in mounts):
        raise UsageError(f"{path}: mounts must be a list of \"PATH[:ro|rw]\" strings")
    return data


def load_config(lab_folder: Path) -> RepxConfig:
    """The settings of the configuration files for a lab in ``lab_folder`` (merged: the
    lab's ``repx.toml`` over the user's file, key by key)."""
    config = RepxConfig()
    for path in config_files(lab_folder):
        data = _read(path)
        config.files.append(path)
        if "runtime" in data:
            config.runtime = data["runtime"]
        if "mounts" in data:
            folder = path.absolute().parent
            config.mounts = [_absolute_mount(m, folder) for m in data["mounts"]]
        if "network" in data:
            config.network = data["network"]
        if "artifact_store" in data:
            config.artifact_store = data["artifact_store"]
        if "artifact_dir" in data:
            config.artifact_dir = data["artifact_dir"]
        if "scratch" in data:
            config.scratch = data["scratch"]
        if "scratch_dir" in data:
            config.scratch_dir = data["scratch_dir"]
        for name, table in data.get("targets", {}).items():
            config.targets[name] = (path, table)
    return config


def _absolute_mount(text: str, folder: Path) -> str:
    """A mount of a configuration file with its path made absolute against the file's
    folder (the mode suffix kept)."""
    head, sep, mode = text.rpartition(":")
    path, suffix = (head, sep + mode) if sep and mode in ("ro", "rw") else (text, "")
    return os.path.join(folder, os.path.expanduser(path)) + suffix
