"""python3.withPackages in the host package set, and repx packaged by nix/package.nix.

Everything runs the real Nix and real interpreters. The interpreters are virtualenvs the
tests make from Debian's /usr/bin/python3, so what they hold is known exactly: ``full`` has
repx's runtime dependencies (installed with pip from pyproject.toml's list), ``bare`` has
nothing but the standard library. They live in a world-readable temporary folder because
Nix builders run as the build users, who cannot enter /root (where the test's own venv
interpreter comes from) nor pytest's private temporary folders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from repx import __version__ as REPX_VERSION
from repx.lab.nix import summarize_nix_error
from tests.buildutil import build as repx_build
from tests.buildutil import list_jobs, output_file, repx, write_lab
from tests.conftest import REPO, require_nix
from tests.test_host_closure import sandbox_output

pytestmark = pytest.mark.nix

PKGS = REPO / "nix" / "pkgs"
PACKAGE = REPO / "nix" / "package.nix"
NIX_OPTS = ["--option", "substituters", ""]
HOST_PYTHON = Path("/usr/bin/python3")


def nix_str(value: str | os.PathLike[str]) -> str:
    """A Nix string literal for ``value``."""
    return json.dumps(str(value)).replace("${", "\\${")


def host_set(python_dir: Path) -> str:
    """The host package set with ``python_dir``'s python3 first on hostPath."""
    return (f"(import (/. + {nix_str(PKGS)}) {{ hostPath = [ {nix_str(python_dir)} "
            '"/usr/bin" "/bin" ]; })')


def repx_package(pkgs: str) -> str:
    """nix/package.nix built on the package set ``pkgs`` from this checkout."""
    return f"(import (/. + {nix_str(PACKAGE)}) {{ pkgs = {pkgs}; src = /. + {nix_str(REPO)}; }})"


def nix_build(expr: str, out_link: Path) -> list[Path]:
    proc = subprocess.run(["nix-build", *NIX_OPTS, "--out-link", str(out_link), "-E", expr],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return [Path(p) for p in proc.stdout.split()]


def nix_build_error(expr: str) -> str:
    proc = subprocess.run(["nix-build", *NIX_OPTS, "--no-out-link", "-E", expr],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0, f"expected the build to fail, got {proc.stdout!r}"
    return proc.stderr


def nix_eval(expr: str) -> object:
    proc = subprocess.run(["nix-instantiate", *NIX_OPTS, "--eval", "--strict", "--json",
                           "-E", expr], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def nix_eval_error(expr: str) -> str:
    proc = subprocess.run(["nix-instantiate", *NIX_OPTS, "--eval", "--strict", "-E", expr],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0, f"expected an evaluation error, got {proc.stdout!r}"
    return proc.stderr


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd,
                          check=False)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@dataclass(frozen=True)
class Venvs:
    """The test interpreters: their bin/ folders go first on hostPath."""

    full: Path
    bare: Path


def runtime_dependencies() -> list[str]:
    """repx's runtime dependencies, as pyproject.toml lists them (and package.nix reads)."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


@pytest.fixture(scope="module")
def venvs() -> Iterator[Venvs]:
    require_nix()
    if not HOST_PYTHON.is_file():
        pytest.fail(f"{HOST_PYTHON} is missing: these tests make virtualenvs from Debian's "
                    "python3 (apt-get install python3 python3-venv)")
    root = Path(tempfile.mkdtemp(prefix="repx-host-python-"))
    try:
        root.chmod(0o755)  # the Nix build users must reach the interpreters
        for name in ("full", "bare"):
            run(HOST_PYTHON, "-m", "venv", "--without-pip", root / name)
        # The running pip installs into the full venv (--python): the venv needs no pip
        # of its own, and pip's cache makes this quick.
        run(sys.executable, "-m", "pip", "--python", root / "full" / "bin" / "python3",
            "install", "--quiet", "--disable-pip-version-check", *runtime_dependencies())
        yield Venvs(root / "full" / "bin", root / "bare" / "bin")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ withPackages ----


def test_with_packages_runs_the_store_python_with_copies_of_its_modules(venvs: Venvs,
                                                                       tmp_path: Path):
    pkgs = host_set(venvs.full)
    [env] = nix_build(
        f"({pkgs}).python3.withPackages (ps: [ ps.click ps.msgpack ps.tree-sitter ])",
        tmp_path / "env")
    python3 = env / "bin" / "python3"
    # A wrapper script around the store's copy of the interpreter: nothing of the venv.
    assert not python3.is_symlink() and python3.stat().st_mode & stat.S_IXUSR
    assert python3.read_text().startswith("#!/nix/store/")
    assert str(venvs.full.parent) not in python3.read_text()
    code = "import click, msgpack, tree_sitter, sys; print(sys.prefix); print(click.__file__)"
    prefix, click_file = run(python3, "-c", code).split()
    assert prefix.startswith("/nix/store/") and prefix.endswith("-host-python3")
    site = env / "lib" / "python3" / "site-packages"
    assert Path(click_file) == site / "click" / "__init__.py"
    # The distributions come whole: their metadata too.
    assert list(site.glob("msgpack-*.dist-info")) and list(site.glob("tree_sitter-*.dist-info"))
    # ... so the modules (tree_sitter and msgpack load C extensions) import where only the
    # store exists.
    sandboxed = sandbox_output(python3, "-c", "import click, msgpack, tree_sitter; "
                               "print(msgpack.unpackb(msgpack.packb([1, 2])))")
    assert sandboxed == "[1, 2]\n"
    version = run(python3, "-c", "import sys; print('%d.%d' % sys.version_info[:2])").strip()
    for alias in ("python", f"python{version}"):
        assert run(env / "bin" / alias, "-c", "import msgpack; print('ok')").strip() == "ok"
    # User site-packages are off, as at build time.
    assert run(python3, "-c", "import sys; print(sys.flags.no_user_site)").strip() == "1"


def test_missing_modules_fail_the_build_naming_debian_and_pip(venvs: Venvs):
    expr = (f"({host_set(venvs.bare)}).python3.withPackages "
            "(ps: [ ps.pandas ps.scikit-learn ps.polars ps.tkinter ])")
    # Evaluation succeeds: the check is the builder's, at build time.
    assert str(nix_eval(f"({expr}).drvPath")).endswith("-host-python3-env.drv")
    stderr = nix_build_error(expr)
    assert f"the host python3 {venvs.bare / 'python3'}" in stderr
    assert "pandas: apt-get install python3-pandas or pip install pandas\n" in stderr
    assert ("scikit-learn (import sklearn): apt-get install python3-sklearn "
            "or pip install scikit-learn\n") in stderr
    assert "polars: pip install polars\n" in stderr  # not packaged in Debian
    assert "tkinter: apt-get install python3-tk\n" in stderr  # not on PyPI


def test_out_path_follows_the_module_list_and_the_python_binary(venvs: Venvs, tmp_path: Path):
    # Two "host python3" binaries that differ by one byte (only hashed, never run).
    dirs = [tmp_path / "a", tmp_path / "b"]
    for extra, folder in zip((b"", b"\0"), dirs, strict=True):
        folder.mkdir()
        copy = folder / "python3"
        shutil.copyfile(HOST_PYTHON.resolve(), copy)
        with copy.open("ab") as handle:
            handle.write(extra)
        copy.chmod(0o755)

    def env(folder: Path, modules: str) -> str:
        return f"(({host_set(folder)}).python3.withPackages (ps: [ {modules} ])).outPath"

    paths = nix_eval(f"""[
      {env(dirs[0], "ps.click")}
      {env(dirs[0], "ps.click")}
      {env(dirs[0], "ps.click ps.msgpack")}
      {env(dirs[1], "ps.click")}
    ]""")
    assert isinstance(paths, list)
    assert paths[0] == paths[1]
    assert len(set(paths)) == 3, paths


def test_bad_arguments_are_evaluation_errors(venvs: Venvs):
    python3 = f"({host_set(venvs.full)}).python3"
    assert "takes a function of the package set" in nix_eval_error(
        f'({python3}.withPackages [ "numpy" ]).drvPath')
    assert 'element 2 of the package list is the string "numpy"' in nix_eval_error(
        f'({python3}.withPackages (ps: [ ps.click "numpy" ])).drvPath')
    assert "the function must return a list" in nix_eval_error(
        f"({python3}.withPackages (ps: ps.click)).drvPath")
    # python3.pkgs and python3Packages are the same `ps`.
    assert nix_eval(f"""let p = {host_set(venvs.full)}; in [
      p.python3.pkgs.pillow.importName p.python3Packages.pyyaml.importName ]""") == ["PIL", "yaml"]


# --------------------------------------------------------------- through a lab ----

LAB = """
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
repx-lib.mkLab {
  pkgs = @PKGS@;
  inherit repx-lib gitHash;
  lab_version = "1.0";
  runs = { main = repx-lib.callRun ./run.nix [ ]; };
}
"""

RUN = """
{ pkgs, repx-lib, ... }:
{ name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }
"""

PIPE = """
{ repx, ... }:
repx.mkPipe { probe = repx.callStage ./stage.nix [ ]; }
"""

STAGE = """
{ pkgs }:
let py = pkgs.python3.withPackages (ps: [ @MODULES@ ]); in
{
  pname = "probe";
  outputs = { report = "$out/report.txt"; };
  runDependencies = [ py ];
  run = { outputs, ... }: ''
    python3 -c 'import click; print("click", click.__name__)' > "${outputs.report}"
    "${py}/bin/python3" -c 'import msgpack; print(msgpack.unpackb(msgpack.packb([1, 2])))' \\
      >> "${outputs.report}"
  '';
}
"""


def write_python_lab(folder: Path, python_dir: Path, modules: str) -> Path:
    return write_lab(folder, {"lab.nix": LAB, "run.nix": RUN, "pipe.nix": PIPE,
                              "stage.nix": STAGE},
                     PKGS=host_set(python_dir), MODULES=modules)


def test_lab_stage_runs_with_the_modules(venvs: Venvs, tmp_path: Path):
    folder = write_python_lab(tmp_path / "lab", venvs.full, "ps.click ps.msgpack")
    store = tmp_path / "store"
    result = repx_build(folder, store)
    assert len(result.executed) == 1, result.data
    [job] = list_jobs(folder)
    assert output_file(store, job, "report").read_text() == "click click\n[1, 2]\n"


def test_lab_build_shows_the_missing_modules(venvs: Venvs, tmp_path: Path):
    folder = write_python_lab(tmp_path / "lab", venvs.bare, "ps.click ps.pandas")
    failed = repx("lab", "build", cwd=folder, check=False)
    assert failed.returncode == 2, failed.stderr
    # The builder's own lines reach the user, not only Nix's "builder ... failed".
    assert "builder for" in failed.stderr
    assert "click: apt-get install python3-click or pip install click" in failed.stderr
    assert "pandas: apt-get install python3-pandas or pip install pandas" in failed.stderr


def test_builder_logs_are_attributed_to_the_failed_builder():
    stderr = "\n".join([
        "these 2 derivations will be built:",
        "  /nix/store/aaa-one.drv",
        "  /nix/store/bbb-two.drv",
        "building '/nix/store/aaa-one.drv'...",
        "one is fine",
        "building '/nix/store/bbb-two.drv'...",
        "two: the reason",
        "error: builder for '/nix/store/bbb-two.drv' failed with exit code 1",
    ])
    message = summarize_nix_error(stderr)
    assert message.startswith("builder for '/nix/store/bbb-two.drv' failed")
    assert message.splitlines()[1:] == ["last 1 log lines:", "> two: the reason"]
    assert "one is fine" not in message
    # `nix build` puts the log in the error itself: it is not repeated.
    new_cli = ("error: builder for '/nix/store/bbb-two.drv' failed with exit code 1;\n"
               "       last 1 log lines:\n       > two: the reason")
    assert summarize_nix_error("building '/nix/store/bbb-two.drv'...\ntwo: the reason\n"
                               + new_cli).count("two: the reason") == 1


# ------------------------------------------------------------- nix/package.nix ----


def test_repx_package_runs_and_imports_in_with_packages(venvs: Venvs, tmp_path: Path):
    pkgs = host_set(venvs.full)
    package, env = nix_build(
        f"""let pkgs = {pkgs}; repx = {repx_package("pkgs")}; in
        [ repx (pkgs.python3.withPackages (ps: [ repx ])) ]""",
        tmp_path / "result")
    assert run(package / "bin" / "repx", "--version", cwd=tmp_path).strip() == (
        f"repx, version {REPX_VERSION}")
    site = package / "lib" / "python3" / "site-packages"
    assert list((site / "repx").glob("__pycache__/*.pyc")), "sources are byte-compiled"
    # Through withPackages: repx imports from the package, and finds its Nix library
    # there (repx/_flake, as in a wheel), not in this checkout.
    code = ("import repx, repx.cli, repx_py; from repx.lab.nix import nix_entry_file; "
            "print(repx.__file__); print(nix_entry_file()); print(repx_py.__file__)")
    module_file, entry, compat_file = run(env / "bin" / "python3", "-c", code,
                                          cwd=tmp_path).split()
    assert Path(module_file) == site / "repx" / "__init__.py"
    # repx_py, the original's analysis API, ships in the same package.
    assert Path(compat_file) == site / "repx_py" / "__init__.py"
    assert entry.startswith(str(site / "repx" / "_flake" / "nix"))
    assert Path(entry).read_text() == (REPO / "nix" / "entry.nix").read_text()
    # The source in the store holds the package's files, not the checkout's caches or venv.
    flake = (site / "repx" / "_flake").resolve()
    names = {p.name for p in flake.iterdir()}
    assert {"repx", "repx_py", "nix", "pyproject.toml"} <= names <= {
        "repx", "repx_py", "nix", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md",
        "flake.nix", "flake.lock"}
    assert not list(flake.rglob("__pycache__"))


def test_repx_package_fails_when_the_host_python_lacks_its_dependencies(venvs: Venvs):
    stderr = nix_build_error(repx_package(host_set(venvs.bare)))
    assert f"repx {REPX_VERSION} (a Python package for the host python3)" in stderr
    for requirement in runtime_dependencies():
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
        assert f"\n  {name}: " in stderr, requirement
    assert "blake3: pip install blake3\n" in stderr
    assert "click: apt-get install python3-click or pip install click\n" in stderr


def stand_in_nixpkgs(python_packages: list[str]) -> str:
    """A set shaped like nixpkgs for package.nix's nixpkgs branch (there is no nixpkgs here).

    ``buildPythonApplication`` returns its arguments, so the test sees exactly what
    package.nix would hand to nixpkgs; each Python package is its own name.
    """
    names = " ".join(f"{nix_str(name)} = {nix_str('py-' + name)};" for name in python_packages)
    return f"""(let hostLib = (import (/. + {nix_str(PKGS)}) {{ }}).lib; in rec {{
      lib = hostLib;
      shellcheck = "/shellcheck"; bash = "/bash";
      python3.pkgs = {{ {names} setuptools = "py-setuptools";
                        buildPythonApplication = args: args; }};
    }})"""


def test_repx_package_on_nixpkgs_passes_the_pyproject_to_build_python_application():
    names = [re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in runtime_dependencies()]
    with_all = nix_eval(f"""let a = {repx_package(stand_in_nixpkgs(names))}; in {{
      inherit (a) pname version pyproject build-system dependencies pythonImportsCheck;
      main = a.meta.mainProgram;
      source = baseNameOf a.src;
    }}""")
    assert with_all == {
        "pname": "repx", "version": REPX_VERSION, "pyproject": True,
        "build-system": ["py-setuptools"], "dependencies": [f"py-{n}" for n in names],
        "pythonImportsCheck": ["repx", "repx.cli", "repx_py"], "main": "repx",
        "source": with_all["source"],
    }
    assert with_all["source"].endswith("-repx-source")
    # tree-sitter-bash is new in nixpkgs: without it repx still builds; any other
    # missing dependency is an error that names it.
    older = [n for n in names if n != "tree-sitter-bash"]
    assert nix_eval(f"({repx_package(stand_in_nixpkgs(older))}).dependencies") == [
        f"py-{n}" for n in older]
    assert "python3Packages has no 'blake3'" in nix_eval_error(
        f"({repx_package(stand_in_nixpkgs([n for n in names if n != 'blake3']))}).dependencies")


def test_host_python_package_checks_the_python_version(venvs: Venvs, tmp_path: Path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "probe.py").write_text(
        "import sys\n\ndef main():\n    print(sys.argv[0], 42, sys.argv[1:])\n")
    package = f"""(({host_set(venvs.bare)}).__repxHostPythonPackage {{
      pname = "probe"; version = "1"; src = /. + {nix_str(source)};
      modules = [ "probe.py" ]; scripts = {{ probe = "probe:main"; }};
      minimumPython = @MINIMUM@; }})"""
    stderr = nix_build_error(package.replace("@MINIMUM@", "[ 99 0 ]"))
    assert "probe 1 (a Python package for the host python3) needs Python 99.0 or newer" in stderr
    assert f"the host python3 {venvs.bare / 'python3'}" in stderr
    [built] = nix_build(package.replace("@MINIMUM@", "[ 3 0 ]"), tmp_path / "result")
    # The program imports the package's module, not a same-named file where it is run.
    (tmp_path / "probe.py").write_text("def main():\n    print('decoy')\n")
    assert run(built / "bin" / "probe", "x", cwd=tmp_path).strip() == "probe 42 ['x']"


# ------------------------------------------------------------------ ps.repx-py ----

#: Imports what an analysis stage imports, and says where from and whether anything beyond
#: the standard library came along.
ANALYSIS_IMPORTS = """
import sys
import repx_py, repx.analysis
print(repx_py.__file__)
print(repx.analysis.__file__)
print(sorted(m for m in ("lmdb", "msgpack", "blake3", "click") if m in sys.modules))
"""


def test_repx_py_imports_in_with_packages_on_a_bare_python(venvs: Venvs, tmp_path: Path):
    """ps.repx-py needs nothing on the host: the bare venv (standard library only) is enough,
    and the store python3 imports repx_py and repx.analysis from the package's copies."""
    pkgs = host_set(venvs.bare)
    assert len(set(nix_eval(f"""let p = {pkgs}; in [
      p.repx-py.outPath p.python3.pkgs.repx-py.outPath p.python3Packages.repx_py.outPath ]"""
                            ))) == 1, "pkgs.repx-py, ps.repx-py and ps.repx_py are one package"
    [env] = nix_build(f"({pkgs}).python3.withPackages (ps: [ ps.repx-py ])", tmp_path / "env")
    python3 = env / "bin" / "python3"
    module, analysis, loaded = run(python3, "-c", ANALYSIS_IMPORTS, cwd=tmp_path).splitlines()
    site = Path(module).parent.parent
    assert site.parts[:3] == ("/", "nix", "store") and site.parent.parent.parent.name.endswith(
        f"-host-repx-py-{REPX_VERSION}")
    assert Path(analysis) == site / "repx" / "analysis.py"
    assert loaded == "[]"
    # The copies are the checkout's sources, byte-compiled, without the checkout's caches.
    assert (site / "repx_py" / "models.py").read_text() == (
        REPO / "repx_py" / "models.py").read_text()
    assert list((site / "repx_py" / "__pycache__").glob("*.pyc"))
    assert not (site / "repx" / "_flake").exists()
    # Where only the store exists (no host python, no checkout) it imports the same way.
    assert sandbox_output(python3, "-c", ANALYSIS_IMPORTS).splitlines() == [
        module, analysis, "[]"]


def test_repx_py_out_path_follows_the_sources_not_their_caches(tmp_path: Path):
    """Copied with builtins.path and a filter: a __pycache__, a .pyc or a wheel build's _flake
    appearing beside the sources leaves the out path as it was; a changed source does not."""
    require_nix()
    tree = tmp_path / "repx-tree"
    for name in ("nix", "repx", "repx_py"):
        shutil.copytree(REPO / name, tree / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_flake"))
    shutil.copyfile(REPO / "pyproject.toml", tree / "pyproject.toml")
    expr = (f"let p = import (/. + {nix_str(tree / 'nix' / 'pkgs')}) {{ }}; in "
            "[ p.repx-py.outPath (p.python3.withPackages (ps: [ ps.repx-py ])).outPath ]")
    before = nix_eval(expr)
    for cache in ("repx/__pycache__", "repx_py/__pycache__", "repx/report/__pycache__"):
        (tree / cache).mkdir()
        (tree / cache / "analysis.cpython-311.pyc").write_bytes(b"\x00cached")
    (tree / "repx" / "stray.pyc").write_bytes(b"\x00")
    (tree / "repx" / "_flake" / "repx").mkdir(parents=True)
    assert nix_eval(expr) == before
    with (tree / "repx_py" / "models.py").open("a") as handle:
        handle.write("# an edit\n")
    after = nix_eval(expr)
    assert after[0] != before[0] and after[1] != before[1]


def test_repx_py_on_nixpkgs_through_the_flake_overlay():
    """The overlay's pkgs.repx-py and ps.repx-py (pythonPackagesExtensions) on a set shaped
    like nixpkgs: buildPythonPackage of the same sources, with no dependencies, installed
    into the site-packages of the interpreter of the package set it extends."""
    require_nix()
    data = nix_eval(f"""let
      flake = import (/. + {nix_str(REPO / "flake.nix")});
      self = {{ outPath = /. + {nix_str(REPO)}; }};
      overlay = (flake.outputs {{ inherit self; }}).overlays.default;
      hostLib = (import (/. + {nix_str(PKGS)}) {{ }}).lib;
      interpreter = sitePackages: {{
        inherit sitePackages;
        pkgs.buildPythonPackage = args: args;
      }};
      prev = {{
        lib = hostLib;
        python3 = interpreter "lib/python3.12/site-packages";
        pythonPackagesExtensions = [ (_: _: {{ earlier = true; }}) ];
      }};
      final = prev // overlay final prev;
      extensions = final.pythonPackagesExtensions;
      # The python3.13 package set of this nixpkgs, extended as nixpkgs does.
      ps = {{ python = interpreter "lib/python3.13/site-packages"; }}
        // builtins.elemAt extensions 1 ps {{ }};
      top = final.repx-py;
    in {{
      extensions = builtins.length extensions;
      earlier = (builtins.head extensions {{ }} {{ }}).earlier;
      top = {{ inherit (top) pname version pyproject pythonImportsCheck installPhase; }};
      source = baseNameOf top.src;
      attributes = builtins.attrNames top;
      alias = ps.repx_py.pname;
      inPs = ps.repx-py.installPhase;
    }}""")
    assert data["extensions"] == 2 and data["earlier"] is True
    top = data["top"]
    assert {k: top[k] for k in ("pname", "version", "pyproject", "pythonImportsCheck")} == {
        "pname": "repx-py", "version": REPX_VERSION, "pyproject": False,
        "pythonImportsCheck": ["repx_py", "repx.analysis"]}
    assert 'cp -R repx repx_py "$out/lib/python3.12/site-packages/"' in top["installPhase"]
    assert data["source"].endswith("-repx-py-source")
    assert not {"dependencies", "propagatedBuildInputs"} & set(data["attributes"])
    assert data["alias"] == "repx-py"
    assert 'cp -R repx repx_py "$out/lib/python3.13/site-packages/"' in data["inPs"]
