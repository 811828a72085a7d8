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

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from repx.errors import LabError, RepxError

#: The repository's nix/ folder (the library and the host package set).
NIX_DIR = Path(__file__).resolve().parents[2] / "nix"

NIX_OPTIONS = ["--option", "substituters", "", "--option", "sandbox", "false"]

LAB_FILE_CANDIDATES = ("lab.nix", "nix/lab.nix")


@dataclass(frozen=True)
class LabSource:
    """Where a lab comes from: its lab.nix and the folder it lives in."""

    lab_file: Path

    @property
    def folder(self) -> Path:
        return self.lab_file.parent


def find_lab_file(explicit: str | os.PathLike[str] | None = None, cwd: Path | None = None) -> Path:
    """The lab file to build: ``-f FILE``, else ./lab.nix, else ./nix/lab.nix."""
    base = cwd or Path.cwd()
    if explicit is not None:
        path = (base / explicit).resolve()
        if path.is_dir():
            for candidate in LAB_FILE_CANDIDATES:
                if (path / candidate).is_file():
                    return path / candidate
            raise LabError(f"no lab.nix in {path} (looked for {', '.join(LAB_FILE_CANDIDATES)})")
        if not path.is_file():
            raise LabError(f"lab file {path} does not exist")
        return path
    for candidate in LAB_FILE_CANDIDATES:
        if (base / candidate).is_file():
            return (base / candidate).resolve()
    raise LabError(
        f"no lab found: {base} has neither lab.nix nor nix/lab.nix "
        "(use -f FILE, --lab DIR for a built lab, or `repx init` to start one)"
    )


def git_hash(folder: Path) -> str:
    """The lab's git commit, with ``-dirty`` when the checkout has changes; else "unknown"."""
    if shutil.which("git") is None:
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


_TRACE_NOISE = re.compile(r"^\(use '--show-trace' to show detailed location information\)$")


def summarize_nix_error(stderr: str) -> str:
    """The part of Nix's output a lab author needs: the ``error:`` block, no build chatter.

    Locations inside repx's own nix/ library are dropped (they point at our
    ``throw``, not at the user's file, whose name the message already carries).
    """
    lines = stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("error:")), None)
    if start is None:
        tail = [line for line in lines if line.strip()][-15:]
        return "\n".join(tail) or "nix-build failed without a message"
    block = lines[start:]
    out: list[str] = []
    skip_location = False
    for line in block:
        if _TRACE_NOISE.match(line.strip()):
            continue
        stripped = line.strip()
        if stripped.startswith("at ") and str(NIX_DIR) in stripped:
            skip_location = True
            continue
        if skip_location:
            # The code excerpt that follows a location: numbered lines and carets.
            if not stripped or re.match(r"^\d+\||^\|", stripped):
                continue
            skip_location = False
        out.append(line)
    text = "\n".join(out).strip()
    text = re.sub(r"^error:\s*", "", text)
    return re.sub(r"\n{3,}", "\n\n", text)


def _explain(message: str) -> str:
    """Add a hint to Nix errors that users meet when the host package set lacks a program."""
    missing = re.search(r"attribute '([^']+)' missing", message)
    if missing:
        return (
            f"{message}\n\nhint: if 'pkgs.{missing.group(1)}' names a program, it is not installed "
            "on this machine (the host package set exposes the host's programs); install it, or "
            "pass a real nixpkgs with --nixpkgs PATH"
        )
    return message


def build_lab(
    lab_file: Path,
    *,
    out_link: Path | None = None,
    nixpkgs: str | None = None,
    run_slice: str | None = None,
    show_trace: bool = False,
) -> Path:
    """Build the lab of ``lab_file`` and return its store path (linked at ``out_link``)."""
    nix_build = _require_nix()
    command = [
        nix_build, str(NIX_DIR / "entry.nix"),
        "--arg", "labFile", str(lab_file),
        "--argstr", "gitHash", git_hash(lab_file.parent),
        *NIX_OPTIONS,
    ]
    if nixpkgs:
        command += ["--arg", "nixpkgs", nixpkgs]
    if run_slice:
        command += ["--argstr", "slice", run_slice]
    if show_trace:
        command.append("--show-trace")
    command += ["-o", str(out_link)] if out_link else ["--no-out-link"]

    result = None
    for _attempt in range(2):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            break
        if "signal 9" not in result.stderr:
            break
    assert result is not None
    if result.returncode != 0:
        raise LabError(
            f"building the lab {lab_file} failed:\n{_explain(summarize_nix_error(result.stderr))}",
            detail=result.stderr,
        )
    store_path = result.stdout.strip().splitlines()[-1]
    return Path(store_path)
