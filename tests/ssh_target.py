"""The test suite's SSH target, as seen from pytest.

``tests/ssh/sshd.sh`` installs and starts a real OpenSSH ``sshd`` on 127.0.0.1 for the
unprivileged account ``repxremote``, inside a mount namespace where ``/nix`` is empty and
no ``nix*`` command exists: a remote with Python and ssh but no Nix, as the remote targets
promise to need (``make test`` runs the script through ``make ssh-up``). This module is the
test side:

* :func:`ssh_rig_fixture` makes a session fixture that (re)starts the rig through the script
  when a key login does not work, and fails — never skips — with the script's own reason
  when it cannot: a remote suite that went green by skipping would hide the breakage it
  exists to find;
* :class:`SshRig` is what the fixture yields: the host alias, the ssh config file and keys
  the alias uses, a way to run a command as the remote account, and
  :meth:`SshRig.write_target`, which writes the ``[targets.NAME]`` table of a test's lab.

A test module opts in with ``ssh_rig = ssh_rig_fixture()``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

REPO = Path(__file__).resolve().parent.parent
SSHD_SCRIPT = REPO / "tests" / "ssh" / "sshd.sh"
LOG_FILE = Path("/var/log/repx-ssh/sshd.log")
#: Where on the remote each test's ``base_path`` lives (one fresh folder per call of
#: :meth:`SshRig.fresh_base_path`).
REMOTE_SCRATCH = "/home/repxremote/tests"
#: Scratch folders older than this are deleted when a session starts (younger ones may
#: belong to a session running alongside).
STALE_MINUTES = 180

Proc = subprocess.CompletedProcess[str]


def _script(*args: str, timeout: float = 120) -> Proc:
    return subprocess.run(["bash", str(SSHD_SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _tail(proc: Proc, lines: int = 30) -> str:
    return "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-lines:])


@dataclass(frozen=True)
class SshRig:
    """The running test sshd, and how a test reaches it.

    ``alias`` works only through ``config`` (``ssh -F CONFIG ALIAS``), so the user's own
    ``~/.ssh/config`` is never touched; the config pins the port, the key, and a
    ``known_hosts`` holding this sshd's host key, with ``StrictHostKeyChecking yes``.
    """

    alias: str
    user: str
    host: str
    port: int
    config: Path
    key: Path
    known_hosts: Path
    #: A key pair sshd does not accept (alias :attr:`alias_refused_key` offers only it).
    refused_key: Path
    alias_refused_key: str
    #: Aliases whose known_hosts has no entry / another key for this sshd.
    alias_unknown_hostkey: str
    alias_wrong_hostkey: str
    #: A 2 MB tmpfs owned by the account (mounted in sshd's namespace only); see
    #: :meth:`resize_small_disk`.
    small_dir: str
    log: Path

    @property
    def ssh_options(self) -> list[str]:
        """The ``ssh_options`` of a target that uses the rig's aliases."""
        return ["-F", str(self.config)]

    def ssh_argv(self, argv: list[str] | str, *, alias: str | None = None) -> list[str]:
        """The local command line running ``argv`` (a list, quoted here, or shell text) as
        the remote account."""
        remote = argv if isinstance(argv, str) else shlex.join(argv)
        return ["ssh", "-F", str(self.config), alias or self.alias, "--", remote]

    def ssh(self, argv: list[str] | str, *, alias: str | None = None, check: bool = True,
            timeout: float = 60, input: str | None = None) -> Proc:
        """Run ``argv`` on the remote; ``check`` fails the test (not a traceback of
        CalledProcessError) with what the remote said."""
        proc = subprocess.run(self.ssh_argv(argv, alias=alias), capture_output=True, text=True,
                              timeout=timeout, input=input, check=False)
        if check and proc.returncode != 0:
            pytest.fail(f"on the remote, {argv!r} failed ({proc.returncode}):\n"
                        f"{proc.stdout}{proc.stderr}", pytrace=False)
        return proc

    def fresh_base_path(self, label: str = "t") -> str:
        """A remote folder path nobody used yet (not created: repx must create it)."""
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in label)[:40]
        return f"{REMOTE_SCRATCH}/{safe}-{uuid.uuid4().hex[:8]}"

    def wipe(self, path: str) -> None:
        """Delete a remote folder, also its read-only parts (shipped store paths are)."""
        quoted = shlex.quote(path)
        self.ssh(f"[ ! -e {quoted} ] || {{ chmod -R u+w {quoted} && rm -rf {quoted}; }}")

    def resize_small_disk(self, size: str) -> None:
        """Give :attr:`small_dir` another size (tmpfs units: ``2m``, ``17000k``); it must
        be emptier than that. Tests that resize it put ``2m`` back when done."""
        proc = _script("small-disk", size, timeout=30)
        if proc.returncode != 0:
            pytest.fail(f"{SSHD_SCRIPT} small-disk {size} failed:\n{_tail(proc)}",
                        pytrace=False)

    def target_table(self, name: str, base_path: str, *, host: str | None = None,
                     **settings: Any) -> str:
        """The TOML text of ``[targets.NAME]`` for this rig; ``settings`` are further keys
        of the table (``scheduler="slurm"``, ``python="python9"``...)."""
        table: dict[str, Any] = {"host": host or self.alias, "base_path": base_path,
                                 "ssh_options": self.ssh_options, **settings}
        lines = [f"[targets.{name}]"]
        nested: dict[str, dict[str, Any]] = {}
        for key, value in table.items():
            if isinstance(value, dict):
                nested[key] = value
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, sub in nested.items():
            lines.append(f"[targets.{name}.{key}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in sub.items())
        return "\n".join(lines) + "\n"

    def write_target(self, folder: Path, name: str = "remote", base_path: str | None = None,
                     **settings: Any) -> str:
        """Add a ``[targets.NAME]`` table for this rig to ``folder/repx.toml`` (created when
        missing) and return the table's ``base_path`` (fresh unless given)."""
        base = base_path or self.fresh_base_path(name)
        config = folder / "repx.toml"
        before = config.read_text() if config.exists() else ""
        separator = "\n" if before and not before.endswith("\n\n") else ""
        config.write_text(before + separator + self.target_table(name, base, **settings))
        return base


def _toml_value(value: Any) -> str:
    """A TOML literal for a str, bool, int or list of them (JSON strings are TOML strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


def rig_from_env(text: str) -> SshRig:
    """The rig described by ``sshd.sh env``'s ``KEY=VALUE`` lines."""
    env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return SshRig(
        alias=env["REPX_SSH_ALIAS"], user=env["REPX_SSH_USER"], host=env["REPX_SSH_HOST"],
        port=int(env["REPX_SSH_PORT"]), config=Path(env["REPX_SSH_CONFIG"]),
        key=Path(env["REPX_SSH_KEY"]), known_hosts=Path(env["REPX_SSH_KNOWN_HOSTS"]),
        refused_key=Path(env["REPX_SSH_REFUSED_KEY"]),
        alias_refused_key=env["REPX_SSH_ALIAS_REFUSED_KEY"],
        alias_unknown_hostkey=env["REPX_SSH_ALIAS_UNKNOWN_HOSTKEY"],
        alias_wrong_hostkey=env["REPX_SSH_ALIAS_WRONG_HOSTKEY"],
        small_dir=env["REPX_SSH_SMALL_DIR"], log=Path(env["REPX_SSH_LOG"]),
    )


def start_rig() -> SshRig:
    """Start the rig (idempotent, ~0.5 s when it is up) and describe it; fail the test with
    the script's reason when that is impossible."""
    status = _script("status", timeout=30)
    if status.returncode != 0:
        if os.geteuid() != 0:
            pytest.fail(f"the SSH test target is down ({status.stdout.strip()}) and only "
                        f"root can start it: run `sudo {SSHD_SCRIPT} start` "
                        "(or `make ssh-up`)", pytrace=False)
        started = _script("start")
        if started.returncode != 0:
            pytest.fail(f"{SSHD_SCRIPT} start failed:\n{_tail(started)}", pytrace=False)
    described = _script("env", timeout=30)
    if described.returncode != 0:
        pytest.fail(f"{SSHD_SCRIPT} env failed:\n{_tail(described)}", pytrace=False)
    return rig_from_env(described.stdout)


def ssh_rig_fixture(
    name: str = "ssh_rig", scope: Literal["session", "package", "module"] = "session",
) -> Callable[..., Iterator[SshRig]]:
    """Make a fixture ``name`` that yields a :class:`SshRig` once a key login works.

    A factory in a plain module (not conftest.py) means only the modules that use the rig
    pay for the probe. The first use in a session also deletes the folders of
    :data:`REMOTE_SCRATCH` older than :data:`STALE_MINUTES`, so earlier sessions' base paths
    do not pile up on the remote.
    """

    @pytest.fixture(name=name, scope=scope)
    def ssh_rig() -> Iterator[SshRig]:
        rig = start_rig()
        rig.ssh(["mkdir", "-p", "-m", "0700", REMOTE_SCRATCH])
        # Only old folders: another session may be using the rig right now.
        for stale in rig.ssh(["find", REMOTE_SCRATCH, "-mindepth", "1", "-maxdepth", "1",
                              "-mmin", f"+{STALE_MINUTES}"]).stdout.split("\n"):
            if stale.strip():
                rig.wipe(stale.strip())
        yield rig

    return ssh_rig
