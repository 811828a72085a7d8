"""``repx init``: a small working lab to start from, optionally with a ``flake.nix``.

The scaffold is the quickstart's first step, so it must build and run as it is, on a
machine with nothing but the host package set: its stage scripts use only ``awk``
(``pkgs.gawk``), pass shellcheck, and call no command their ``runDependencies`` do not
provide. It is a real sweep (2 seeds × 2 sizes) so that ``repx build`` after changing one
param visibly runs only the new jobs.

Its files have one source: the flake template ``nix/templates/default/`` (also the repx
flake's ``templates.default``, for ``nix flake init -t``). The template is a complete lab
written for a lab called :data:`TEMPLATE_NAME`, with a placeholder repx url in its
``flake.nix``; ``repx init`` copies it, puts the lab's name in place of the template's,
and with ``--flake`` writes the path of this machine's repx flake in place of the
placeholder. Template-only comments (lines starting with :data:`TEMPLATE_COMMENT`) explain
the placeholder to ``nix flake init`` users and are dropped by ``repx init``.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

from repx.errors import RepxError, UsageError
from repx.lab.nix import FLAKE_DIR, NIX_DIR

#: The flake template: the lab files and a flake.nix building them.
TEMPLATE_DIR = NIX_DIR / "templates" / "default"

#: The lab files ``repx init`` writes (every file of the template but flake.nix), in the
#: order a reader meets them; tests check the template holds exactly these and flake.nix.
LAB_FILES = (
    "lab.nix",
    "runs/sweep.nix",
    "pipelines/main.nix",
    "stages/generate.nix",
    "stages/summarize.nix",
    "README.md",
    ".gitignore",
)

#: What ``repx init --flake`` adds.
FLAKE_FILE = "flake.nix"

#: The name the template's lab is written with; ``repx init`` replaces every occurrence.
TEMPLATE_NAME = "my-lab"

#: The template flake's repx url, replaced by ``path:`` + :data:`FLAKE_DIR`.
REPX_URL_PLACEHOLDER = "path:/path/to/repx"

#: Lines of the template meant for ``nix flake init`` users only.
TEMPLATE_COMMENT = "# [template]"

#: A lab name: it appears in Nix strings and file headers, so a safe, plain word.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(name: str) -> str:
    """``name`` if it is a valid lab name (letters, digits, ``-_.``), else a UsageError."""
    if not _NAME.match(name):
        raise UsageError(f"--name {name!r} is not a valid lab name: use letters, digits, "
                         "'-', '_' and '.', starting with a letter or digit")
    return name


def default_name(folder: Path) -> str:
    """The lab's name when none is given: its folder's name (``repx init my-lab`` makes the
    lab ``my-lab``), made valid by turning other characters into ``-``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).lstrip("-._")
    return cleaned if _NAME.match(cleaned) else TEMPLATE_NAME


def repx_flake_url() -> str:
    """The ``inputs.repx.url`` of a generated flake: this machine's repx flake, as a path
    URL (works offline). Characters a URL or a Nix string cannot hold are percent-encoded."""
    return "path:" + urllib.parse.quote(str(FLAKE_DIR), safe="/-_.~+")


def _nix_string(text: str) -> str:
    """``text`` as a double-quoted Nix string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def repx_input_line(template_line: str) -> str:
    """The line of a generated flake that names the repx input.

    Nix 2.8 decodes no percent-escape in a ``path:`` URL, so a repx installed in a folder
    whose path a URL cannot hold as is (a space, a quote, non-ASCII letters) is named with the
    input's attribute-set form, which takes the path as a plain string.
    """
    url = repx_flake_url()
    if url == f"path:{FLAKE_DIR}":
        return template_line.replace(REPX_URL_PLACEHOLDER, url)
    indent = template_line[: len(template_line) - len(template_line.lstrip())]
    return (f'{indent}inputs.repx = {{ type = "path"; path = {_nix_string(str(FLAKE_DIR))}; }};'
            + ("\n" if template_line.endswith("\n") else ""))


def _template_text(name: str) -> str:
    path = TEMPLATE_DIR / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RepxError(
            f"repx's lab template is incomplete: cannot read {path} ({exc.strerror}); "
            "reinstall repx or run it from a full clone"
        ) from exc


def scaffold_files(name: str = TEMPLATE_NAME, *, flake: bool = False) -> dict[str, str]:
    """The files ``repx init`` writes for a lab called ``name``: relative path -> text."""
    check_name(name)
    files = {path: _template_text(path).replace(TEMPLATE_NAME, name) for path in LAB_FILES}
    if flake:
        text = _template_text(FLAKE_FILE)
        if REPX_URL_PLACEHOLDER not in text:
            raise RepxError(f"{TEMPLATE_DIR / FLAKE_FILE} has no {REPX_URL_PLACEHOLDER} to "
                            "replace with the repx flake's path")
        lines = [line for line in text.splitlines(keepends=True)
                 if not line.lstrip().startswith(TEMPLATE_COMMENT)]
        lines = [repx_input_line(line) if REPX_URL_PLACEHOLDER in line else line
                 for line in lines]
        files[FLAKE_FILE] = "".join(lines).replace(TEMPLATE_NAME, name)
    return files


def init_lab(folder: Path, *, name: str | None = None, flake: bool = False,
             force: bool = False) -> list[Path]:
    """Write the scaffold (and with ``flake`` a flake.nix) into ``folder`` (created if
    missing); return the files written. ``name`` defaults to the folder's name.

    Refuses (UsageError) when any of its files already exists, unless ``force``: a lab
    folder someone already worked in must not be overwritten by accident.
    """
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} exists and is not a folder")
    files = scaffold_files(default_name(folder) if name is None else name, flake=flake)
    existing = [path for path in files if (folder / path).exists()]
    if existing and not force:
        raise UsageError(f"{folder} already has {', '.join(existing)}; choose an empty "
                         "folder, or pass --force to overwrite these files")
    written = []
    for path, text in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written
