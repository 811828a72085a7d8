"""Helpers for the image and lab-export tests: a two-run lab and a private podman.

The lab uses the host package set, whose packages carry copies of their programs and
libraries, so its closure runs where nothing of the host is (an image, an unpack on a
machine without those tools).

podman runs with a root and runroot under the test's tmp dir (never the machine's own image
storage), runc and cgroupfs, and a containers.conf without default ulimits: the settings
this machine needs (crun fails on its hybrid cgroups; see docs/isolation.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

from repx.lab import LabOptions
from repx.lab.nix import LabArgument
from repx.lab.open import locate_lab
from tests.conftest import require_nix, write_files

#: Two runs; ``b`` depends on ``a`` (so the slice of ``b`` holds both). The modes are lab
#: arguments, so one folder gives every containerMode.
LAB_NIX = """
{ pkgs, repx-lib, gitHash ? "unknown", mode ? "unified", runMode ? "per-run", ... }:
let
  a = repx-lib.callRun ./run-a.nix [ ];
  b = repx-lib.callRun ./run-b.nix [ a ];
in
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "1.0";
  containerMode = mode;
  runContainerMode = runMode;
  runs = { inherit a b; };
}
"""


def _run_files(run: str) -> dict[str, str]:
    return {
        f"run-{run}.nix": f"""
            {{ ... }}:
            {{ name = "{run}"; pipelines = [ ./pipe-{run}.nix ]; params = {{ n = [ 1 2 ]; }}; }}
            """,
        f"pipe-{run}.nix": f"""
            {{ repx, ... }}:
            repx.mkPipe {{ work = repx.callStage ./stage-{run}.nix [ ]; }}
            """,
        f"stage-{run}.nix": f"""
            {{ pkgs }}:
            {{
              pname = "work-{run}";
              params = {{ n = 0; }};
              outputs = {{ result = "$out/result.txt"; }};
              run = {{ outputs, params, ... }}: ''
                echo "run {run} n=${{params.n}}" > "${{outputs.result}}"
              '';
            }}
            """,
    }


def write_two_run_lab(folder: Path, extra: dict[str, str] | None = None) -> Path:
    """Write the two-run test lab into ``folder`` (``extra`` adds or replaces files)."""
    files = {"lab.nix": LAB_NIX, **_run_files("a"), **_run_files("b"), **(extra or {})}
    write_files(folder, files)
    return folder


def build_lab_dir(folder: Path, *, mode: str = "unified", run_mode: str = "per-run",
                  run_slice: str | None = None) -> Path:
    """Build the lab in ``folder`` with these container modes; its store path."""
    require_nix()
    arguments = (LabArgument("mode", mode, is_string=True),
                 LabArgument("runMode", run_mode, is_string=True))
    return locate_lab(LabOptions(lab_file=str(folder / "lab.nix"), out_link=None,
                                 run_slice=run_slice, lab_args=arguments))


def lab_manifest(lab_dir: Path) -> dict:
    return json.loads((lab_dir / "lab.json").read_text())


class Podman:
    """podman on a private storage under ``base`` (nothing of the host's storage)."""

    def __init__(self, base: Path) -> None:
        for tool, package in (("podman", "podman"), ("runc", "runc")):
            if shutil.which(tool) is None:
                pytest.fail(f"the image tests need {tool} (apt-get install {package})")
        conf = base / "containers.conf"
        base.mkdir(parents=True, exist_ok=True)
        conf.write_text(textwrap.dedent("""
            [containers]
            default_ulimits = []
            """))
        self.env = {"CONTAINERS_CONF": str(conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        # podman refuses a runroot longer than 50 characters (pytest's tmp paths are).
        self.runroot = Path(tempfile.mkdtemp(prefix="repx-podman-", dir="/tmp"))
        self.command = ["podman", "--root", str(base / "root"), "--runroot",
                        str(self.runroot), "--runtime", "runc",
                        "--cgroup-manager=cgroupfs", "--events-backend=none"]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.command, *args], capture_output=True, text=True,
                                env=self.env, check=False, timeout=300)
        if check and result.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} failed ({result.returncode}):\n"
                        f"{result.stderr}")
        return result

    def close(self) -> None:
        """Remove every image of this storage (no container outlives a ``run --rm``)."""
        self.run("rmi", "--all", "--force", check=False)
        shutil.rmtree(self.runroot, ignore_errors=True)
