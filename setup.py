"""Build hook: ship repx's flake source inside the wheel, as ``repx/_flake/``.

Everything else about the package is declared in pyproject.toml; this file exists only for
the one thing pyproject cannot say. repx builds labs with its Nix library (``nix/``), and the
flake (``flake.nix``) packages repx itself from the Python sources, so an installed repx needs
both, laid out as in the repository: the wheel carries a self-contained copy of the flake
source that works as a ``path:`` flake input and that :data:`repx.lab.nix.FLAKE_DIR` finds.

Rules of the copy:

* it is made into ``build_lib`` only (what the wheel packs), never into the source tree;
* an editable install (``pip install -e .``) gets no copy: the checkout itself is the flake;
* the package in ``build_lib`` (the copy included) is rebuilt from scratch on every build,
  so a file deleted in the checkout does not linger in the next wheel;
* caches and build leftovers (``__pycache__``, ``*.pyc``, ``*.egg-info``) and ``_flake``
  itself are left out, so the copy holds only source.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: The repository (or the unpacked sdist) this build runs from.
SOURCE_ROOT = Path(__file__).resolve().parent

#: Top-level files of the flake source; the ones missing from the checkout are skipped
#: (flake.nix is optional). README.md is there because pyproject.toml names it as the
#: package's readme, so the copied project still builds with pip.
FLAKE_FILES = ("flake.nix", "pyproject.toml", "README.md")

#: Top-level folders of the flake source, copied whole (minus the ignored names): the Nix
#: library and the Python packages nix/package.nix builds pkgs.repx from.
FLAKE_TREES = ("nix", "repx", "repx_py")

#: Names never copied: caches, build metadata, and the copy itself.
IGNORED_NAMES = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info", "_flake")


def copy_flake_source(source_root: Path, destination: Path) -> None:
    """Copy the flake source of ``source_root`` into ``destination`` (replaced if present)."""
    if not (source_root / "nix" / "entry.nix").is_file():
        raise SystemExit(
            f"repx build: {source_root / 'nix' / 'entry.nix'} is missing; the wheel would "
            "ship without repx's Nix library (build from a full clone or sdist)"
        )
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for name in FLAKE_FILES:
        if (source_root / name).is_file():
            shutil.copy2(source_root / name, destination / name)
    for name in FLAKE_TREES:
        shutil.copytree(source_root / name, destination / name, ignore=IGNORED_NAMES)


class BuildPyWithFlake(build_py):
    """``build_py`` that also writes the flake source into ``build_lib/repx/_flake``."""

    def run(self) -> None:
        # Editable installs import the checkout, which already is the flake source.
        editable = getattr(self, "editable_mode", False)
        package_build = Path(self.build_lib) / "repx"
        if not editable and package_build.exists():
            # build/ survives between builds from a checkout; starting from an empty package
            # keeps a module deleted from the checkout out of the next wheel.
            shutil.rmtree(package_build)
        super().run()
        if not editable:
            copy_flake_source(SOURCE_ROOT, package_build / "_flake")


setup(cmdclass={"build_py": BuildPyWithFlake})
