"""Shared fixtures: real Nix is required; a missing Nix fails loudly, never skips."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from repx.lab import LabOptions, open_lab

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def require_nix() -> None:
    """Fail (not skip) when Nix is missing: CI must install it (make setup does)."""
    if shutil.which("nix-build") is None:
        pytest.fail("nix-build is not installed: run `make setup` (installs Debian's nix-bin)")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation caches go to a per-session temp dir, not the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


LAB_ONE_RUN = """
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "1.0";
  runs = { main = repx-lib.callRun ./run.nix [ ]; };
}
"""

PIPE_ONE_STAGE = """
{ repx, pkgs, ... }:
repx.mkPipe rec {
  work = repx.callStage ./stage.nix [ ];
}
"""


@pytest.fixture
def make_lab(tmp_path: Path) -> Callable[..., Path]:
    """Write a small lab (defaults: one run, one pipeline, one stage) and return its folder."""
    counter = {"n": 0}

    def make(files: dict[str, str], *, base: dict[str, str] | None = None) -> Path:
        counter["n"] += 1
        root = tmp_path / f"lab{counter['n']}"
        defaults = {"lab.nix": LAB_ONE_RUN, "pipe.nix": PIPE_ONE_STAGE}
        write_files(root, {**defaults, **(base or {}), **files})
        return root

    return make


@pytest.fixture
def build() -> Callable[..., object]:
    """Build and expand a lab folder (no ./result link), returning its JobGraph."""
    require_nix()

    def run(folder: Path, **kwargs: object):
        return open_lab(LabOptions(lab_file=str(folder / "lab.nix"), out_link=None, **kwargs))

    return run
