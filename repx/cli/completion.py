"""Shell completion: ``repx completion bash|zsh|fish``, and what a TAB offers for runs and jobs.

The scripts are click's own (:mod:`click.shell_completion`): the shell function calls ``repx``
again with ``_REPX_COMPLETE=<shell>_complete`` and the words typed so far, and click answers
with the candidates of the parameter being completed. This module adds the candidates click
cannot know: run names, ``@group`` names, job ids and gc root names. Three rules hold for all
of them, because they run on every TAB in the user's shell:

* **Never build.** Only a lab that is already built is read: ``--lab DIR`` when given, else
  the ``result`` link beside the lab (``-f FILE``, else ``./lab.nix``, ``./flake.nix`` or
  ``./nix/lab.nix``), else the lab the store's last build used. Starting a Nix build on TAB
  would freeze the shell.
* **Stay fast.** Runs and groups come from ``lab.json`` alone; job ids from the store's records
  and the built lab's expansion (no script validation).
* **Stay silent.** Any failure (no lab, a corrupt store, a half-typed option) yields no
  candidates: a traceback printed by a completion lands in the middle of the user's prompt.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource
from click.shell_completion import CompletionItem, get_completion_class

from repx.cli.common import default_store_dir, handle_errors
from repx.errors import LabError, UsageError
from repx.lab.nix import find_lab_source
from repx.lab.open import is_lab_dir
from repx.store.layout import DEFAULT_STORE

if TYPE_CHECKING:
    from repx.store import Store

#: The shells click can generate a script for.
SHELLS = ("bash", "zsh", "fish")

#: The command the scripts complete, and the variable click reads to answer a completion
#: (click derives ``_REPX_COMPLETE`` from the program name; both are fixed here so that the
#: script is the same whether repx was started as ``repx`` or ``python -m repx.cli``).
PROG_NAME = "repx"
COMPLETE_VAR = "_REPX_COMPLETE"

#: The signature click calls a ``shell_complete=`` callback with.
Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]


# --------------------------------------------------------------------- the command


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
@handle_errors
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish). TAB then completes
    commands, options, run names, @groups and job ids (from the lab already built and the
    store; completion never starts a build).

    Install it once, for one of the shells:

    \b
      bash: eval "$(repx completion bash)"  in ~/.bashrc, or
            repx completion bash > ~/.local/share/bash-completion/completions/repx
      zsh:  repx completion zsh > ~/.zfunc/_repx  with  fpath+=(~/.zfunc)
            before  autoload -U compinit && compinit  in ~/.zshrc
      fish: repx completion fish > ~/.config/fish/completions/repx.fish

    Example: eval "$(repx completion bash)"
    """
    root = ctx.find_root().command
    script_class = get_completion_class(shell)
    if script_class is None:  # click dropped a shell it used to support
        raise UsageError(f"this click version has no completion for {shell}")
    click.echo(script_class(root, {}, PROG_NAME, COMPLETE_VAR).source())


# ------------------------------------------------------------- where the lab and store are


def _store_dir(ctx: click.Context) -> Path:
    """The store the command would use: its ``--store`` or ``REPX_STORE``, else the default
    the command applies (:func:`repx.cli.common.default_store_dir`: ``.repx`` beside the lab
    found from here, ``./.repx`` when the lab is named)."""
    given = ctx.params.get("store_dir")
    if given and ctx.get_parameter_source("store_dir") is not ParameterSource.DEFAULT:
        return Path(given).absolute()
    if os.environ.get("REPX_STORE"):
        return Path(os.environ["REPX_STORE"]).absolute()
    if ctx.params.get("lab_dir") or ctx.params.get("lab_file"):
        return Path(DEFAULT_STORE).absolute()
    return default_store_dir()


def _open_store(ctx: click.Context) -> Store | None:
    """The store, read-only, or None when there is none yet (completion never creates one)."""
    from repx.store import Store

    root = _store_dir(ctx)
    return Store(root, readonly=True) if Store.exists(root) else None


def _built_lab(ctx: click.Context) -> Path | None:
    """The built lab directory the command would read, without building anything.

    ``--lab DIR`` is final (a wrong one gives no candidates, not another lab's); otherwise
    the out-link beside the lab file or flake (``-o`` of ``repx lab build``, default
    ``result``), then the lab of the store's last build.
    """
    params = ctx.params
    if params.get("lab_dir"):
        explicit = Path(params["lab_dir"])
        return explicit if is_lab_dir(explicit) else None
    out_link = params.get("out_link") or "result"
    try:
        beside_file: Path | None = find_lab_source(params.get("lab_file")).folder / out_link
    except LabError:  # no lab file here: the store may still know the last lab built
        beside_file = None
    if beside_file is not None and is_lab_dir(beside_file):
        return beside_file
    store = _open_store(ctx)
    if store is None:
        return None
    with store:
        last = store.get_meta("last_build") or {}
    lab = last.get("lab")
    return Path(lab) if isinstance(lab, str) and is_lab_dir(Path(lab)) else None


def _manifest(lab: Path) -> dict[str, Any]:
    """``lab.json``: its run names and groups, without loading the runs' blueprints."""
    with (lab / "lab.json").open(encoding="utf-8") as fh:
        data = json.load(fh)
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------- the candidates


def _silent(func: Callable[[click.Context, str], Iterable[CompletionItem]]) -> Completer:
    """A ``shell_complete`` callback from ``func``: candidates starting with what was typed,
    minus values the argument already got, and none at all when anything goes wrong."""

    @functools.wraps(func)
    def callback(ctx: click.Context, param: click.Parameter, incomplete: str
                 ) -> list[CompletionItem]:
        try:
            given = ctx.params.get(param.name or "") or ()
            taken = {given} if isinstance(given, str) else set(given)
            seen: set[str] = set()
            items = []
            for item in func(ctx, incomplete):
                value = item.value
                if value.startswith(incomplete) and value not in taken and value not in seen:
                    seen.add(value)
                    items.append(item)
            return items
        except Exception:  # noqa: BLE001 - a failing completion must offer nothing, silently
            return []

    return callback


def _lab_names(lab: Path | None, *, groups: bool) -> list[CompletionItem]:
    """The run names of ``lab`` and, with ``groups``, its groups as ``@NAME``."""
    if lab is None:
        return []
    manifest = _manifest(lab)
    items = [CompletionItem(name, help="run") for name in manifest.get("runs", [])
             if isinstance(name, str)]
    if groups:
        items += [CompletionItem(f"@{name}", help="group of " + ", ".join(map(str, members)))
                  for name, members in manifest.get("groups", {}).items()
                  if isinstance(members, list)]
    return items


def _jobs(ctx: click.Context, lab: Path | None) -> list[CompletionItem]:
    """Job ids of the built lab (stage and run as help) and of the store (with status).

    The store holds jobs of earlier labs too, which ``repx show`` and ``repx log`` accept;
    the lab holds jobs not run yet, which ``repx build`` accepts.
    """
    helps: dict[str, str] = {}
    if lab is not None:
        # Imported here: every command that offers completion imports this module, and
        # the expansion is most of a no-op build's import time.
        from repx.lab.expand import load_job_graph

        for job_id, job in load_job_graph(lab).jobs.items():
            helps[job_id] = f"{job.pname} (run {job.run})"
    store = _open_store(ctx)
    if store is not None:
        with store:
            for record in store.records():
                helps[record.job_id] = f"{record.stage} (run {record.run}, {record.status.value})"
    return [CompletionItem(job_id, help=text) for job_id, text in helps.items()]


@_silent
def complete_run_names(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    """RUN: the built lab's run names."""
    return _lab_names(_built_lab(ctx), groups=False)


@_silent
def complete_runs(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    """RUN|@GROUP: the built lab's run names, and its groups prefixed with ``@``."""
    return _lab_names(_built_lab(ctx), groups=True)


@_silent
def complete_targets(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    """RUN|@GROUP|JOB: runs and groups, and job ids once a first character is typed.

    Job ids are left out of an empty word because a lab has thousands of them and runs are
    what a target usually is; ``3f<TAB>`` then completes the job prefix.
    """
    lab = _built_lab(ctx)
    items = _lab_names(lab, groups=True)
    if incomplete and not incomplete.startswith("@"):
        items += _jobs(ctx, lab)
    return items


@_silent
def complete_jobs(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    """JOB: job ids of the built lab and of the store."""
    return _jobs(ctx, _built_lab(ctx))


@_silent
def complete_gc_roots(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    """NAME of ``repx gc unpin``: the store's gc root names."""
    store = _open_store(ctx)
    if store is None:
        return []
    with store:
        roots = store.roots()
    return [CompletionItem(r.name, help=("pinned " if r.pinned else "") + r.lab_path)
            for r in roots]


def register(main: click.Group) -> None:
    """Add ``repx completion`` to the ``repx`` group."""
    main.add_command(completion)
