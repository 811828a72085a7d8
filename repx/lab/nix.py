"""Build a lab with Nix: find lab.nix, call nix-build through repx's own nix/ library.

Nix does the evaluation and writes the lab directory; this module only runs it
and turns its failures into one readable message. Why each choice:

* ``substituters`` is empty for repx's own calls: machines here have no internet,
  and Nix would otherwise wait on a binary cache for every build.
* Nix on these machines was seen to kill a builder at random ("failed due to
  signal 9"); a second attempt of the same build goes through, so we retry once.
* A Nix stack trace is noise for a lab author: we show the ``error:`` message
  (which our library makes name the file at fault) and keep the full output for
  ``-v``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from repx.errors import LabError, RepxError
from repx.lab.command_packages import package_for

#: repx's flake source (flake.nix, nix/, the Python sources). An installed wheel carries a copy
#: as repx/_flake (setup.py writes it); an editable install or a checkout on PYTHONPATH has
#: none and uses the checkout itself.
_INSTALLED_FLAKE_DIR = Path(__file__).resolve().parents[1] / "_flake"
FLAKE_DIR: Path = (
    _INSTALLED_FLAKE_DIR if _INSTALLED_FLAKE_DIR.is_dir() else Path(__file__).resolve().parents[2]
)

#: repx's Nix library and host package set; :func:`nix_entry_file` checks it is there.
NIX_DIR = FLAKE_DIR / "nix"


def nix_entry_file() -> Path:
    """The nix/entry.nix that builds a lab; checked when a build needs it, not at import time.

    An install without it (a wheel built from a tree with no nix/, files deleted by hand)
    would otherwise fail deep inside nix-build with a path the user never chose.
    """
    entry = NIX_DIR / "entry.nix"
    if not entry.is_file():
        raise RepxError(
            f"repx's Nix library is missing: {entry} does not exist, so this repx installation "
            "is incomplete; reinstall it (pip install --force-reinstall repx-lab, or from a "
            "clone: pip install .) or run repx from a full clone"
        )
    return entry


NIX_OPTIONS = ["--option", "substituters", "", "--option", "sandbox", "false"]

#: Extra options for repx's own flake calls only: the user's nix.conf is left alone.
FLAKE_OPTIONS = ["--extra-experimental-features", "nix-command flakes"]

#: Where a lab is looked for in a folder, in order: a lab file wins over a flake
#: beside it (the flake usually imports it), and a root flake over nix/lab.nix.
LAB_FILE_CANDIDATES = ("lab.nix", "flake.nix", "nix/lab.nix")

#: The flake output a flake lab is built from, when ``-f flake.nix`` names none.
DEFAULT_FLAKE_ATTR = "lab"

_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_'-]*$")
_RESERVED_ARG_NAMES = frozenset({"repxLabFile", "repxNixpkgs", "repxSlice", "repxLabArgNames"})


@dataclass(frozen=True)
class LabSource:
    """Where a lab comes from: a lab file (lab.nix), or a flake and the output to build.

    ``lab_root`` is the folder the lookup found the lab in (``lab_file`` is one of
    :data:`LAB_FILE_CANDIDATES` there), the lab's own folder even when the command ran in
    a subfolder of it; None when the lab was named (``-f``).
    """

    lab_file: Path
    flake_attr: str | None = None
    lab_root: Path | None = None

    @property
    def folder(self) -> Path:
        return self.lab_file.parent

    @property
    def is_flake(self) -> bool:
        return self.flake_attr is not None

    def __str__(self) -> str:
        return f"{self.lab_file}#{self.flake_attr}" if self.is_flake else str(self.lab_file)


@dataclass(frozen=True)
class LabArgument:
    """One argument for the lab file's function: ``--arg NAME EXPR`` or ``--argstr NAME VALUE``."""

    name: str
    value: str
    is_string: bool = False

    def __post_init__(self) -> None:
        flag = "--argstr" if self.is_string else "--arg"
        if not _ARG_NAME.match(self.name):
            raise LabError(f"{flag} {self.name!r}: not a valid Nix argument name")
        if self.name in _RESERVED_ARG_NAMES:
            raise LabError(f"{flag} {self.name}: the name is reserved by repx's lab entry point")

    def nix_args(self) -> list[str]:
        return ["--argstr" if self.is_string else "--arg", self.name, self.value]


def _source_for(path: Path, lab_root: Path | None = None) -> LabSource:
    if path.name == "flake.nix":
        return LabSource(path, DEFAULT_FLAKE_ATTR, lab_root)
    return LabSource(path, lab_root=lab_root)


def _lab_in(folder: Path) -> Path | None:
    """The first of :data:`LAB_FILE_CANDIDATES` that is a file in ``folder``."""
    return next((folder / c for c in LAB_FILE_CANDIDATES if (folder / c).is_file()), None)


def _lookup_folders(start: Path) -> Iterator[Path]:
    """``start``, then each folder above it, up to the repository root (the first folder
    holding ``.git``, a folder or a worktree's file) or the file-system root.

    As git and make do: a command run in ``lab/stages/`` finds ``lab/lab.nix``. The
    repository root ends the walk so that a checkout never picks up a lab.nix of an
    unrelated folder around it (a home folder's, say).
    """
    folder = start
    while True:
        yield folder
        if (folder / ".git").exists() or folder.parent == folder:
            return
        folder = folder.parent


def find_lab_upward(start: Path) -> LabSource | None:
    """The lab ``start`` belongs to: the nearest folder, ``start`` or above
    (:func:`_lookup_folders`), with a lab file; None when there is none.

    Its ``lab_root`` is that folder, except in a lab's ``nix/`` folder whose lab.nix is the
    lab's ``nix/lab.nix``: there the root is the folder above, so that the store and the
    result link are the same from ``nix/`` as from the lab's folder.
    """
    start = start.resolve()
    for folder in _lookup_folders(start):
        found = _lab_in(folder)
        if found is None:
            continue
        root = folder
        if (found.name == "lab.nix" and folder.name == "nix"
                and not (folder / ".git").exists() and _lab_in(folder.parent) == found):
            root = folder.parent
        return _source_for(found.resolve(), root)
    return None


def find_lab_source(explicit: str | os.PathLike[str] | None = None,
                    cwd: Path | None = None) -> LabSource:
    """The lab to build: ``-f FILE[#ATTR]``, else ./lab.nix, ./flake.nix (its ``lab``
    output) or ./nix/lab.nix, in ``cwd`` or the nearest folder above it that has one
    (:func:`find_lab_upward`)."""
    base = cwd or Path.cwd()
    if explicit is not None:
        text = os.fspath(explicit)
        path_text, _, attr = text.partition("#")
        path = (base / (path_text or ".")).resolve()
        if path.is_dir():
            found = next((path / c for c in LAB_FILE_CANDIDATES if (path / c).is_file()), None)
            if found is None:
                raise LabError(
                    f"no lab in {path} (looked for {', '.join(LAB_FILE_CANDIDATES)})")
            path = found
        elif not path.is_file():
            raise LabError(f"lab file {path} does not exist")
        source = _source_for(path)
        if attr:
            if not source.is_flake:
                raise LabError(
                    f"-f {text}: '#{attr}' selects a flake output, but {path} is not a "
                    "flake.nix")
            source = LabSource(path, attr)
        return source
    found = find_lab_upward(base)
    if found is not None:
        return found
    searched = list(_lookup_folders(base.resolve()))
    above = f", nor has any folder above it up to {searched[-1]}" if len(searched) > 1 else ""
    raise LabError(
        f"no lab found: {base} has no lab.nix, flake.nix or nix/lab.nix{above} "
        "(use -f FILE, --lab DIR for a built lab, or `repx init` to start one)"
    )


def find_lab_file(explicit: str | os.PathLike[str] | None = None, cwd: Path | None = None) -> Path:
    """The lab file (lab.nix or flake.nix) :func:`find_lab_source` would build."""
    return find_lab_source(explicit, cwd).lab_file


def git_hash(folder: Path) -> str:
    """The lab's git commit, with ``-dirty`` when the checkout has changes; else "unknown"."""
    if not _may_be_in_git(folder) or shutil.which("git") is None:
        return "unknown"
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=False,
        )
        if head.returncode != 0:
            return "unknown"
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=False,
        )
    except OSError:
        return "unknown"
    commit = head.stdout.strip()
    return f"{commit}-dirty" if status.stdout.strip() else commit


def _may_be_in_git(folder: Path) -> bool:
    """Whether git could find a repository for ``folder``; False saves starting git.

    git looks in the folder and each one above it for a ``.git`` (a folder, or a file
    pointing elsewhere) or for a folder that is a repository itself (``HEAD``, ``objects``,
    ``refs``), unless ``GIT_DIR`` names one. Its other settings only make it stop sooner.
    """
    if os.environ.get("GIT_DIR"):
        return True
    places = {folder.absolute(), *folder.absolute().parents}  # as given, and as git sees
    places |= {folder.resolve(), *folder.resolve().parents}    # it: symbolic links resolved
    for place in places:
        if os.path.lexists(place / ".git") or (
                os.path.isfile(place / "HEAD") and os.path.isdir(place / "objects")
                and os.path.isdir(place / "refs")):
            return True
    return False


def nixpkgs_path(explicit: str | None) -> str | None:
    """A real nixpkgs to use instead of the host package set (--nixpkgs / REPX_NIXPKGS)."""
    value = explicit or os.environ.get("REPX_NIXPKGS") or None
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise LabError(f"nixpkgs path {path} (from --nixpkgs or REPX_NIXPKGS) does not exist")
    return str(path.resolve())


def _require_nix() -> str:
    nix_build = shutil.which("nix-build")
    if nix_build is None:
        raise RepxError(
            "nix-build is not installed: run `make setup` (it installs Debian's nix-bin) "
            "or install Nix, then try again"
        )
    return nix_build


#: repx's library as a flake input: a copy in the Nix store (``…-source/nix/lib/…``).
_STORE_COPY_OF_LIBRARY = re.compile(r"/nix/store/[a-z0-9]{32}-source/nix/(lib|entry\.nix)")

_TRACE_NOISE = re.compile(r"^\(use '--show-trace' to show detailed location information\)$")

#: A trace entry of repx's library (``builtins.addErrorContext "repx: …"``): it says what
#: repx was evaluating for which stage when a Nix error (a type error, say) has no repx
#: message of its own. Nix prints these only with --show-trace, so repx always passes it.
_REPX_CONTEXT = re.compile(r"^\s*… repx: (.*)$")


def summarize_nix_error(stderr: str, trace: bool = False) -> str:
    """The part of Nix's output a lab author needs: the ``error:`` block, no build chatter.

    Locations inside repx's own nix/ library are dropped (they point at our
    ``throw``, not at the user's file, whose name the message already carries).
    Unless ``trace``, the evaluation trace is dropped as well, except repx's own
    context entries (:data:`_REPX_CONTEXT`), which follow the message.
    """
    lines = stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("error:")), None)
    if start is None:
        tail = [line for line in lines if line.strip()][-15:]
        return "\n".join(tail) or "nix-build failed without a message"
    block = lines[start:]
    contexts: list[str] = []
    if not trace:
        first = next((i for i, line in enumerate(block) if line.strip().startswith("… ")),
                     len(block))
        contexts = list(dict.fromkeys(m.group(1) for line in block[first:]
                                      if (m := _REPX_CONTEXT.match(line))))
        block = block[:first]
    out: list[str] = []
    skip_location = False
    for line in block:
        if _TRACE_NOISE.match(line.strip()):
            continue
        stripped = line.strip()
        if stripped.startswith("at ") and (str(NIX_DIR) in stripped
                                           or _STORE_COPY_OF_LIBRARY.search(stripped)):
            skip_location = True
            continue
        if skip_location:
            # The code excerpt that follows a location: numbered lines and carets.
            if not stripped or re.match(r"^\d+\||^\|", stripped):
                continue
            skip_location = False
        out.append(line)
    text = "\n".join([*out, *(f"\n{context}" for context in contexts)]).strip()
    text = re.sub(r"^error:\s*", "", text)
    return _with_builder_logs(re.sub(r"\n{3,}", "\n\n", text), lines[:start])


#: nix-build's line as a builder starts; the builder's own output follows it.
_BUILDING = re.compile(r"^building '(/nix/store/[^']+\.drv)'")
_BUILDER_FAILED = re.compile(r"builder for '(/nix/store/[^']+\.drv)' failed")

#: How much of a failed builder's output a message shows (the end is where the reason is).
BUILDER_LOG_LINES = 25


def _with_builder_logs(message: str, before_error: list[str]) -> str:
    """``message`` plus the output of each builder it says failed.

    nix-build streams a builder's output before its ``error:`` line, which only names the
    derivation; the reason (a stage script's message, the Python modules that
    python3.withPackages could not import) is in those earlier lines. ``nix build`` already puts
    the "last N log lines" in the error, so nothing is added there.
    """
    if "log lines:" in message:
        return message
    logs: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in before_error:
        started = _BUILDING.match(line)
        if started:
            current = logs.setdefault(started.group(1), [])
        elif current is not None and line.strip():
            current.append(line)
    out: list[str] = []
    for line in message.splitlines():
        out.append(line)
        failed = _BUILDER_FAILED.search(line)
        log = logs.pop(failed.group(1), [])[-BUILDER_LOG_LINES:] if failed else []
        if log:
            out.append(f"last {len(log)} log lines:")
            out.extend(f"> {entry}" for entry in log)
    return "\n".join(out)


#: Nix's words when a value needs itself (a stack overflow is how a deep one ends).
_RECURSION = re.compile(
    r"infinite recursion encountered|stack overflow \(possible infinite recursion\)")

#: How many pipeline files a recursion hint lists.
_MAX_LISTED_FILES = 10


def _pipeline_files(folder: Path) -> list[str]:
    """The lab's ``.nix`` files that call ``callStage`` (its pipelines), relative to ``folder``.

    Nix's "infinite recursion" names no file of the lab; these are where a stage usually
    refers to itself. Build outputs and the store (``result*``, ``.repx``) are not looked in.
    """
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "result"))
                         and not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            path = Path(root, name)
            if not name.endswith(".nix") or name.startswith("result"):
                continue
            try:
                if "callStage" in path.read_text(encoding="utf-8", errors="replace"):
                    found.append(str(path.relative_to(folder)))
            except OSError:
                continue
            if len(found) >= _MAX_LISTED_FILES:
                return found
    return found


def _explain(message: str, folder: Path | None = None) -> str:
    """Add a hint to the Nix errors whose message alone does not say what to do: a program
    the host package set lacks (or a command named where its package belongs), and a value
    that needs itself (named by no file of the lab)."""
    missing = re.search(r"attribute '([^']+)' missing", message)
    if missing:
        name = missing.group(1)
        package = package_for(name)
        if package != name:
            # Nix's excerpt shows the expression; without it, the attribute may be another.
            which = "" if f"pkgs.{name}" in message else f"if it is pkgs.{name}: "
            return (f"{message}\n\nhint: {which}'{name}' is a command, not a package: it is "
                    f"in pkgs.{package} (runDependencies = [ pkgs.{package} ];)")
        return (
            f"{message}\n\nhint: if 'pkgs.{name}' names a program, it is not installed "
            "on this machine (the host package set exposes the host's programs); install it, or "
            "pass a real nixpkgs with --nixpkgs PATH"
        )
    if _RECURSION.search(message):
        files = _pipeline_files(folder) if folder is not None else []
        where = (f"; the lab's pipeline files (in {folder}): {', '.join(files)}" if files
                 else "")
        return (
            f"{message}\n\nhint: a value of the lab needs itself to be computed. repx names "
            "a cycle of stages or of runs itself, so look for a definition that refers to "
            "itself another way: an attribute of a `rec { }` set or a `let` name used in its "
            "own definition, or deps built by a function that calls itself" + where
        )
    return message


def _lab_file_command(source: LabSource, *, nixpkgs: str | None, run_slice: str | None,
                      lab_args: tuple[LabArgument, ...]) -> list[str]:
    command = [
        _require_nix(), str(nix_entry_file()),
        # Strings, made paths by entry.nix: `--arg` would parse a path holding a space,
        # a quote or `$` as a Nix expression.
        "--argstr", "repxLabFile", str(source.lab_file),
        *NIX_OPTIONS,
    ]
    if not any(arg.name == "gitHash" for arg in lab_args):
        command += ["--argstr", "gitHash", git_hash(source.folder)]
    if lab_args:
        names = " ".join(json.dumps(arg.name) for arg in lab_args)
        command += ["--arg", "repxLabArgNames", f"[ {names} ]"]
        for arg in lab_args:
            command += arg.nix_args()
    if nixpkgs:
        command += ["--argstr", "repxNixpkgs", nixpkgs]
    if run_slice:
        command += ["--argstr", "repxSlice", run_slice]
    return command


def _flake_command(source: LabSource, *, nixpkgs: str | None, run_slice: str | None,
                   lab_args: tuple[LabArgument, ...], impure: bool) -> list[str]:
    if lab_args:
        raise LabError(
            f"{source}: --arg/--argstr go to a lab file's function; a flake lab takes its "
            "arguments in flake.nix (build its lab.nix with -f to pass them)")
    if nixpkgs:
        raise LabError(
            f"{source}: --nixpkgs applies to lab files; a flake chooses its package set "
            "itself (e.g. an input `nixpkgs` and `import nixpkgs { inherit system; }`)")
    nix = shutil.which("nix")
    if nix is None:
        raise RepxError("the `nix` command is not installed (flake labs need it): install Nix")
    attr = source.flake_attr or DEFAULT_FLAKE_ATTR
    if run_slice:
        attr = f"{attr}.runs.{run_slice}"
    # `.#ATTR`, run in the flake's folder (see LabBuild): Nix parses a flake reference as a
    # URL, so `/home/me/My Experiments#lab` is "not a valid URL", and Nix 2.8 does not
    # percent-decode `path:` URLs either. `.` is made absolute by Nix itself, which then
    # looks for the git checkout around it exactly as it does for an absolute path.
    command = [nix, *FLAKE_OPTIONS, "build", f".#{attr}", "--json", *NIX_OPTIONS]
    if impure:
        command.append("--impure")
    return command


def _flake_hint(message: str, source: LabSource, impure: bool) -> str:
    """Hints for the mistakes a flake lab meets first."""
    pure_failure = re.search(r"currentSystem|access to (absolute )?path .* is forbidden in pure"
                             r"|repx host package set: .* is not installed", message)
    if pure_failure and not impure:
        return (f"{message}\n\nhint: the flake evaluates something impure (such as the host "
                "package set, repx.legacyPackages); build with --impure")
    if re.search(r"/nix/store/[^/]+-source/.*(No such file|does not exist)", message):
        return (f"{message}\n\nhint: in a git checkout, Nix sees only the files git tracks: "
                f"`git add` the lab's files in {source.folder}")
    if "is not a valid URL" in message:
        checkout = next((f for f in _lookup_folders(source.folder) if (f / ".git").exists()),
                        source.folder)
        return (f"{message}\n\nhint: Nix reads the git checkout {checkout} as a URL, and its "
                "path holds characters a URL cannot (a space, a quote, a non-ASCII letter; "
                "Nix 2.8 decodes no %-escapes there either). Build the lab file instead "
                "(-f lab.nix), or move the checkout to a path without them (a folder with "
                "such a name inside the checkout is fine)")
    if "does not provide attribute" in message:
        return (f"{message}\n\nhint: the flake has no output '{source.flake_attr}' for this "
                "system; name one with -f flake.nix#ATTR (e.g. packages.<system>.lab)")
    return message


def start_lab_build(
    source: LabSource | Path,
    *,
    out_link: Path | None = None,
    nixpkgs: str | None = None,
    run_slice: str | None = None,
    show_trace: bool = False,
    lab_args: tuple[LabArgument, ...] = (),
    impure: bool = False,
) -> LabBuild:
    """Start building the lab of ``source`` (its store path, linked at ``out_link``, is what
    :meth:`LabBuild.wait` returns). Nix runs in the background, on one core, while the
    caller does what does not depend on the answer (a build checks the lab it expects).

    A lab file goes through repx's own ``nix/entry.nix`` (nix-build); a flake is built with
    ``nix build DIR#ATTR`` with the flake features switched on for this call only.
    """
    if isinstance(source, Path):
        source = _source_for(source)
    if source.is_flake:
        command = _flake_command(source, nixpkgs=nixpkgs, run_slice=run_slice,
                                 lab_args=lab_args, impure=impure)
    else:
        command = _lab_file_command(source, nixpkgs=nixpkgs, run_slice=run_slice,
                                    lab_args=lab_args)
    command.append("--show-trace")  # for repx's context entries; trimmed unless show_trace
    if source.is_flake:
        command += ["-o", str(out_link)] if out_link else ["--no-link"]
    else:
        command += ["-o", str(out_link)] if out_link else ["--no-out-link"]
    return LabBuild(source, command, show_trace=show_trace, has_lab_args=bool(lab_args),
                    impure=impure)


def _scratch_file() -> IO[str]:
    """An unnamed file to read back: in memory on Linux (``memfd_create``, which also spares
    a command the import of :mod:`tempfile`), else a temporary file."""
    if hasattr(os, "memfd_create"):
        with contextlib.suppress(OSError):
            return open(os.memfd_create("repx-nix-messages"), "w+", encoding="utf-8",
                        errors="replace")
    import tempfile

    return tempfile.TemporaryFile(mode="w+", prefix="repx-nix-")


#: Seconds a cancelled Nix build has to stop before it is killed.
CANCEL_GRACE = 5.0


class LabBuild:
    """One Nix build of a lab, running until :meth:`wait` (or :meth:`cancel`).

    A builder killed at random ("signal 9", see the module doc) is built once more, in the
    foreground, by :meth:`wait`.
    """

    def __init__(self, source: LabSource, command: list[str], *, show_trace: bool,
                 has_lab_args: bool, impure: bool) -> None:
        self.source = source
        self._command = command
        # A flake is built in its folder (see _flake_command); a lab file by its path.
        self._cwd = source.folder if source.is_flake else None
        self._show_trace = show_trace
        self._has_lab_args = has_lab_args
        self._impure = impure
        # Nix's messages go to a file: a long log or trace would fill a pipe nobody reads
        # while the caller works, and stall Nix until it waits. Its stdout is the path.
        self._stderr = _scratch_file()
        try:
            self._process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                             stderr=self._stderr, text=True, cwd=self._cwd)
        except BaseException:
            self._stderr.close()
            raise

    def wait(self) -> Path:
        """The lab's store path, once Nix is done; a failed build raises :class:`LabError`."""
        with self._stderr:
            stdout, _ = self._process.communicate()
            self._stderr.seek(0)
            stderr = self._stderr.read()
        returncode = self._process.returncode
        if returncode != 0 and "signal 9" in stderr:
            again = subprocess.run(self._command, capture_output=True, text=True, check=False,
                                   cwd=self._cwd)
            returncode, stdout, stderr = again.returncode, again.stdout, again.stderr
        source = self.source
        if returncode != 0:
            message = _explain(summarize_nix_error(stderr, trace=self._show_trace),
                               source.folder)
            if self._has_lab_args and "«string»" in message:
                message += ("\n\nhint: the value of --arg is a Nix expression (as in "
                            "`--arg count 3`); give a plain string with --argstr NAME VALUE")
            if source.is_flake:
                message = _flake_hint(message, source, self._impure)
            raise LabError(f"building the lab {source} failed:\n{message}", detail=stderr)
        if source.is_flake:
            return _flake_out_path(stdout, source)
        return Path(stdout.strip().splitlines()[-1])

    def cancel(self) -> None:
        """Stop the build (its caller failed or was interrupted before it waited)."""
        with self._stderr:
            if self._process.poll() is None:
                # SIGTERM first: Nix then stops its builders and releases its locks.
                self._process.terminate()
                try:
                    self._process.communicate(timeout=CANCEL_GRACE)
                except subprocess.TimeoutExpired:
                    self._process.kill()
            self._process.communicate()


def _flake_out_path(stdout: str, source: LabSource) -> Path:
    """The lab directory out of ``nix build --json`` (Nix 2.8 has no --print-out-paths)."""
    try:
        built = json.loads(stdout)
        return Path(built[0]["outputs"]["out"])
    except (ValueError, LookupError, TypeError) as error:
        raise LabError(f"building the lab {source}: unexpected answer from nix build: "
                       f"{stdout[:200]!r}") from error
