"""repx installs like any tool: a wheel (or pipx) from the checkout, into a fresh venv, used
from a folder that has nothing to do with the checkout.

Real pip, real venvs, real Nix. The wheel is built once per module (``pip wheel --no-deps``)
and installed into a venv in a temporary folder; its dependencies come from the package
index through the user's pip cache, so a rerun downloads nothing. Every command runs with an
environment that cannot reach the checkout (no PYTHONPATH, PATH without .venv), so what
works here works for a user who never cloned the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import repx
from tests.conftest import REPO, require_nix

#: The pip cache shared by every run of these tests (the user's own, unless PIP_CACHE_DIR
#: says otherwise); conftest points XDG_CACHE_HOME at a per-session folder, which would
#: otherwise make pip download every dependency on every run.
PIP_CACHE = Path(os.environ.get("PIP_CACHE_DIR") or Path.home() / ".cache" / "pip")

#: System folders only: nix-build, shellcheck and bash, never the checkout's .venv.
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

#: Environment variables that would let a subprocess see the checkout or its venv.
LEAKY_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "REPX_STORE")

#: The jobs of the lab `repx init` writes (two stages over a 2 x 2 sweep).
INIT_LAB_JOBS = 8


def isolated_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """An environment with ``bin_dir`` first on PATH and nothing pointing at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_VARIABLES}
    env.update(PATH=f"{bin_dir}:{SYSTEM_PATH}", PIP_CACHE_DIR=str(PIP_CACHE), **extra)
    return env


def run(command: list[str | Path], *, cwd: Path, env: dict[str, str], check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``command``; fail the test with its output when ``check`` and it fails."""
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                            text=True, check=False, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} exited {result.returncode}\n"
                    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


@dataclass(frozen=True)
class Install:
    """A venv outside the checkout with the wheel built from it installed."""

    wheel: Path
    venv: Path
    #: A folder unrelated to the checkout, where the commands run.
    workdir: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def env(self) -> dict[str, str]:
        return isolated_env(self.bin)


def site_packages(python: Path, env: dict[str, str]) -> Path:
    """The site-packages folder of the environment of ``python``."""
    out = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
              cwd=Path("/"), env=env).stdout
    return Path(out.strip()).resolve()


def installed_paths(python: Path, env: dict[str, str], cwd: Path) -> dict[str, Path]:
    """Where the repx that ``python`` imports lives: its package, FLAKE_DIR and NIX_DIR."""
    code = ("import json, repx, repx.lab.nix as n; print(json.dumps({'package': repx.__file__, "
            "'flake': str(n.FLAKE_DIR), 'nix': str(n.NIX_DIR)}))")
    paths = json.loads(run([python, "-c", code], cwd=cwd, env=env).stdout)
    return {key: Path(value).resolve() for key, value in paths.items()}


def assert_uses_its_own_copy(python: Path, env: dict[str, str], cwd: Path) -> None:
    """The repx of ``python`` and its Nix library come from its site-packages, not the clone."""
    site = site_packages(python, env)
    paths = installed_paths(python, env, cwd)
    assert paths["package"].is_relative_to(site), paths
    assert paths["flake"] == site / "repx" / "_flake", paths
    assert paths["nix"] == site / "repx" / "_flake" / "nix", paths
    assert (paths["nix"] / "entry.nix").is_file()
    for path in paths.values():
        assert not path.is_relative_to(REPO.resolve()), f"{path} is inside the checkout"


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Install:
    """Build the wheel from the checkout and install it (with its deps) into a fresh venv."""
    root = tmp_path_factory.mktemp("install")
    dist = root / "dist"
    env = isolated_env(Path(sys.executable).parent)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, REPO],
        cwd=root, env=env)
    wheels = list(dist.glob("repx_lab-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=root, env=env)
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheels[0]], cwd=root,
        env=isolated_env(venv / "bin"), timeout=300)
    workdir = root / "elsewhere"
    workdir.mkdir()
    return Install(wheel=wheels[0], venv=venv, workdir=workdir)


def checkout_files(folder: str) -> set[str]:
    """The source files of ``folder`` in the checkout (no caches), relative to the checkout."""
    return {
        str(path.relative_to(REPO)) for path in (REPO / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_wheel_ships_the_flake_source(install: Install) -> None:
    with zipfile.ZipFile(install.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"repx_lab-{repx.__version__}.dist-info/METADATA").decode()
    flake = {name.removeprefix("repx/_flake/") for name in names
             if name.startswith("repx/_flake/")}
    expected = (checkout_files("nix") | checkout_files("repx") | checkout_files("repx_py")
                | {"pyproject.toml"})
    if (REPO / "flake.nix").is_file():
        expected.add("flake.nix")
    assert expected - flake == set(), "missing from repx/_flake"
    assert not [name for name in flake if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in flake if name.startswith("repx/_flake")], "_flake nests itself"
    # The package itself is in the wheel next to its flake copy, once.
    assert "repx/lab/nix.py" in names and "repx/__main__.py" in names
    # repx_py (the original's analysis API) is a top-level package beside repx.
    assert "repx_py/__init__.py" in names and "repx_py/models.py" in names
    assert "Name: repx-lab\n" in metadata
    assert f"Version: {repx.__version__}\n" in metadata
    assert "Requires-Dist: doit\n" in metadata


@pytest.mark.nix
def test_installed_wheel_builds_a_lab_from_an_unrelated_folder(install: Install) -> None:
    require_nix()
    repx_cli = install.bin / "repx"
    assert_uses_its_own_copy(install.bin / "python", install.env, install.workdir)

    out = run([repx_cli, "init", "lab"], cwd=install.workdir, env=install.env).stdout
    assert "next: cd lab && repx build" in out
    lab = install.workdir / "lab"
    first = run([repx_cli, "build"], cwd=lab, env=install.env).stdout
    assert f"{INIT_LAB_JOBS} executed, 0 up to date, 0 failed" in first
    summaries = list((lab / ".repx" / "outputs").glob("*-summarize-*/out/summary.json"))
    assert len(summaries) == INIT_LAB_JOBS // 2
    for summary in summaries:
        assert json.loads(summary.read_text()), summary
    second = run([repx_cli, "build"], cwd=lab, env=install.env).stdout
    assert f"0 executed, {INIT_LAB_JOBS} up to date, 0 failed" in second

    version = run([install.bin / "python", "-m", "repx", "--version"], cwd=install.workdir,
                  env=install.env).stdout
    assert version.strip() == f"repx, version {repx.__version__}"


@pytest.mark.nix
def test_installed_flake_source_is_a_self_contained_path_flake(install: Install) -> None:
    require_nix()
    if not (REPO / "flake.nix").is_file():
        pytest.fail(f"{REPO / 'flake.nix'} is missing: the repository's flake is what the "
                    "wheel ships as repx/_flake")
    flake = site_packages(install.bin / "python", install.env) / "repx" / "_flake"
    metadata = run(["nix", "--extra-experimental-features", "nix-command flakes",
                    "--option", "substituters", "", "flake", "metadata", "--json",
                    f"path:{flake}"], cwd=install.workdir, env=install.env).stdout
    # Nix copies a path: flake into the store; the copy must hold everything pkgs.repx
    # needs, since nothing outside the flake's folder is reachable from it.
    source = Path(json.loads(metadata)["path"])
    for name in ("flake.nix", "nix/entry.nix", "pyproject.toml", "repx/__init__.py",
                 "repx/lab/nix.py"):
        assert (source / name).is_file(), f"{name} is not in the flake source {source}"


@pytest.mark.nix
def test_incomplete_installation_is_a_clear_error(install: Install) -> None:
    require_nix()
    entry = site_packages(install.bin / "python", install.env) / "repx/_flake/nix/entry.nix"
    lab = install.workdir / "incomplete"
    run([install.bin / "repx", "init", lab], cwd=install.workdir, env=install.env)
    hidden = entry.with_name("entry.nix.hidden")
    entry.rename(hidden)
    try:
        result = run([install.bin / "repx", "build"], cwd=lab, env=install.env, check=False)
    finally:
        hidden.rename(entry)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{entry} does not exist" in result.stderr
    assert "installation is incomplete" in result.stderr


def test_editable_install_uses_the_checkout(tmp_path: Path) -> None:
    """`make setup` installs with -e: the checkout is the flake, and it gets no _flake copy."""
    venv = tmp_path / "editable-venv"
    env = isolated_env(venv / "bin")
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env)
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", "-e", REPO], cwd=tmp_path,
        env=env, timeout=300)
    assert not (REPO / "repx" / "_flake").exists(), "the editable build wrote into the checkout"
    paths = installed_paths(venv / "bin" / "python", env, tmp_path)
    assert paths["package"] == (REPO / "repx" / "__init__.py").resolve()
    assert paths["flake"] == REPO.resolve()
    assert paths["nix"] == (REPO / "nix").resolve()


@pytest.mark.nix
def test_pipx_install_from_the_checkout(install: Install) -> None:
    require_nix()
    run([install.bin / "python", "-m", "pip", "install", "-q", "pipx"], cwd=install.workdir,
        env=install.env, timeout=300)
    pipx = install.venv.parent / "pipx"
    pipx_env = isolated_env(pipx / "bin", PIPX_HOME=str(pipx / "home"),
                            PIPX_BIN_DIR=str(pipx / "bin"), PIPX_MAN_DIR=str(pipx / "man"))
    run([install.bin / "pipx", "install", REPO], cwd=install.workdir, env=pipx_env,
        timeout=300)

    repx_cli = pipx / "bin" / "repx"
    version = run([repx_cli, "--version"], cwd=install.workdir, env=pipx_env).stdout
    assert version.strip() == f"repx, version {repx.__version__}"
    pipx_python = pipx / "home" / "venvs" / "repx-lab" / "bin" / "python"
    assert_uses_its_own_copy(pipx_python, pipx_env, install.workdir)

    lab = install.workdir / "pipx-lab"
    run([repx_cli, "init", lab], cwd=install.workdir, env=pipx_env)
    out = run([repx_cli, "build"], cwd=lab, env=pipx_env).stdout
    assert f"{INIT_LAB_JOBS} executed, 0 up to date, 0 failed" in out
