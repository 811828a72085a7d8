"""``--target NAME``: a command run by the remote repx, on the remote's own store.

``repx build --target NAME`` builds the lab here (Nix is here), ships it
(:mod:`repx.remote.ship`), then runs the remote repx's ``build`` on it with the options given
here, its progress and failures streaming back; Ctrl-C here is Ctrl-C there (the remote
build cancels and records its jobs). ``status``, ``show``, ``log``, ``cancel``, ``gc`` and
``cache`` with ``--target`` run the same command there, its options rebuilt from what was
given here (every word quoted by :mod:`repx.remote.ssh`), with ``--store`` the remote store
and ``--lab`` the lab its last build shipped. After ``gc --target`` the shipped labs no
remote gc root names any more, and the store paths only they used, are removed too.
Nothing opens the remote's LMDB over the network: only the remote repx touches it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from repx.errors import UsageError
from repx.remote.ship import RemoteRepx, ShipSummary, describe, ensure_repx, ship_lab
from repx.remote.targets import Target

#: Parameters that name local things (the lab file, the local store): never forwarded.
LOCAL_PARAMS = frozenset({"target", "store_dir", "lab_dir", "lab_file", "nixpkgs", "lab_arg",
                          "lab_argstr", "impure", "resources_file"})

#: What ``build --target`` sets from the target unless the command line says otherwise.
_TARGET_BUILD_PARAMS = ("scheduler", "runtime", "artifact_store", "artifact_dir")


def forwarded_arguments(ctx: click.Context, skip: frozenset[str] = LOCAL_PARAMS) -> list[str]:
    """The words that give the remote repx the options and arguments given here.

    Only what the user typed is forwarded (not defaults or local environment variables:
    the remote has its own); arguments go after ``--`` so a job or run name can never be
    read as an option there.
    """
    words: list[str] = []
    positional: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        if name in skip or ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params.get(name)
        if isinstance(param, click.Argument):
            values = value if isinstance(value, (tuple, list)) else [value]
            positional.extend(str(v) for v in values if v is not None)
            continue
        assert isinstance(param, click.Option)
        words.extend(_option_words(param, value))
    return [*words, *(["--", *positional] if positional else [])]


def _option_words(option: click.Option, value: Any) -> list[str]:
    long = max(option.opts, key=len)
    if option.count:
        return [long] * int(value or 0)
    if option.is_flag and not option.multiple:
        if value:
            return [long]
        return [max(option.secondary_opts, key=len)] if option.secondary_opts else []
    values = value if option.multiple else [value]
    words: list[str] = []
    for item in values:
        items = item if isinstance(item, tuple) else (item,)
        words.extend([long, *(str(i) for i in items)])
    return words


@dataclass
class RemoteSession:
    """A target made ready: repx runnable there (shipped if needed)."""

    target: Target
    repx: RemoteRepx

    def last_lab(self) -> str | None:
        """The lab directory the last ``build --target`` shipped, or None."""
        result = self.repx.ssh.run(["cat", "--", f"{self.repx.base}/last-lab"], check=False)
        text = result.stdout.decode(errors="replace").strip()
        return text if result.returncode == 0 and text else None


def connect(target: Target) -> RemoteSession:
    if target.is_local:
        raise UsageError("--target local runs here: leave --target out")
    return RemoteSession(target, ensure_repx(target))


def _resources_file(session: RemoteSession) -> str | None:
    """The target's ``resources`` as a ``[defaults]`` resources.toml on the remote."""
    resources = session.target.resources
    if not resources:
        return None
    lines = ["[defaults]"]
    for key, value in sorted(resources.items()):
        lines.append(f"{key} = {_toml_value(value)}")
    data = ("\n".join(lines) + "\n").encode()
    path = f"{session.repx.base}/resources-{hashlib.sha256(data).hexdigest()[:12]}.toml"
    session.repx.ssh.run([session.target.python, "-I", "-c",
                          "import sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read())",
                          path], input=data)
    return path


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def remote_build_arguments(ctx: click.Context, session: RemoteSession, remote_lab: str
                           ) -> list[str]:
    """``build``'s words on the remote: the user's, then the target's settings for what
    the user did not give, the shipped lab and the remote store."""
    words = forwarded_arguments(ctx)
    split = words.index("--") if "--" in words else len(words)
    options, positional = words[:split], words[split:]
    target = session.target
    extra: list[str] = ["--lab", remote_lab, "--store", session.repx.store_dir]
    given = {name for name in _TARGET_BUILD_PARAMS
             if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    if "scheduler" not in given:
        extra += ["--scheduler", target.scheduler]
    if "runtime" not in given:
        extra += ["--runtime", target.runtime]
    scheduler = ctx.params.get("scheduler") if "scheduler" in given else target.scheduler
    if scheduler == "slurm":
        if "artifact_store" not in given:
            extra += ["--artifact-store", target.artifact_store]
        if "artifact_dir" not in given and target.artifact_dir:
            extra += ["--artifact-dir", target.artifact_dir]
        resources = _resources_file(session)
        if resources is not None:
            extra += ["--resources", resources]
    return ["build", *extra, *options, *positional]


def build_on_target(ctx: click.Context, target: Target, lab_dir: Path, *, quiet: bool
                    ) -> tuple[int, ShipSummary]:
    """Ship the built lab at ``lab_dir`` to ``target`` and run ``repx build`` there; the
    remote build's exit code (its own codes: 0, 1 failures, 2 usage, 130 interrupted)."""
    session = connect(target)
    scheduler = ctx.params.get("scheduler") if ctx.get_parameter_source("scheduler") is \
        ParameterSource.COMMANDLINE else target.scheduler
    artifact_store = ctx.params.get("artifact_store") if ctx.get_parameter_source(
        "artifact_store") is ParameterSource.COMMANDLINE else target.artifact_store
    summary = ship_lab(session.repx, lab_dir,
                       export_tar=scheduler == "slurm" and artifact_store == "node-local")
    if not quiet:
        click.echo(f"repx: {target.name}: {describe(summary)}", err=True)
    args = remote_build_arguments(ctx, session, summary.remote_lab)
    if ctx.params.get("no_wait") and scheduler == "local":
        # Nothing to submit: the remote's local scheduler is its repx itself, so --no-wait
        # leaves that repx running there on its own, its output in a log file.
        started = session.repx.agent("detach", {"argv": session.repx.argv(args)})
        click.echo(f"repx: {target.name}: the build runs there on its own (pid "
                   f"{started['pid']}); its output: {started['log']}. `repx status --target "
                   f"{target.name}` follows it, `repx cancel --target {target.name}` stops it",
                   err=True)
        return 0, summary
    return session.repx.stream(args), summary


def forward(ctx: click.Context, target: Target, command: Sequence[str], *,
            takes_lab: bool) -> int:
    """Run ``repx COMMAND …`` with what was given here on the remote; its exit code."""
    if ctx.invoked_subcommand:
        raise UsageError(f"`repx {' '.join(command)} --target` runs `repx "
                         f"{' '.join(command)}` there; `{ctx.invoked_subcommand}` has no "
                         "--target")
    session = connect(target)
    extra = ["--store", session.repx.store_dir]
    if takes_lab:
        lab = session.last_lab()
        if lab is None and _needs_lab(command):
            raise UsageError(f"target {target.name}: no lab was built there yet; run "
                             f"`repx build --target {target.name}` first")
        if lab is not None:
            extra += ["--lab", lab]
    words = forwarded_arguments(ctx)
    split = words.index("--") if "--" in words else len(words)
    if list(command) == ["cancel"] and not words:
        # A detached local build (build --no-wait) is stopped as Ctrl-C would stop it.
        stopped = session.repx.agent("stop-detached", {})
        for pid in stopped["stopped"]:
            click.echo(f"stopped the detached build {pid} (its jobs are cancelled and "
                       "recorded)")
    code = session.repx.stream([*command, *extra, *words[:split], *words[split:]])
    if code == 0 and list(command) == ["gc"] and not ctx.params.get("dry_run"):
        # The remote store's gc decided which labs live; what they alone used goes too.
        pruned = session.repx.agent("prune", {})
        if pruned["labs_removed"] or pruned["paths_removed"]:
            from repx.display import plural
            from repx.report.store_views import human_bytes

            labs = plural(pruned["labs_removed"], "shipped lab")
            paths = plural(pruned["paths_removed"], "store path")
            click.echo(f"repx: {target.name}: removed {labs} and {paths} no gc root uses "
                       f"({human_bytes(pruned['bytes_freed'])})", err=True)
    return code


def _needs_lab(command: Sequence[str]) -> bool:
    return command[:1] in (["status"], ["show"])
