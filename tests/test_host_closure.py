"""Self-contained closures of the host package set (nix/pkgs/default.nix, nix/pkgs/closure.sh).

A lab built on the host set must run where only ``/nix/store`` exists: on a node without the
host's tools, in a container image, or in a bwrap sandbox. So every program here runs inside
a real bwrap sandbox that holds the Nix store (read-only), a private ``/tmp``, ``/proc``,
``/dev`` and the folders a job writes, and no ``/usr``, ``/lib``, ``/bin`` or ``/etc``; its
output must be the one the same program gives natively. The closures are also read
statically: every link, ELF interpreter and ``#!`` line in them must point into the store.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.buildutil import build as repx_build
from tests.buildutil import copy_example, list_jobs, out_dir
from tests.conftest import REPO, require_nix

pytestmark = pytest.mark.nix

PKGS = REPO / "nix" / "pkgs"
NIX_OPTS = ["--option", "substituters", ""]
STORE = Path("/nix/store")


def require_bwrap() -> str:
    """bwrap's path; a missing bwrap fails the test (never a skip): it is the sandbox."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.fail("bwrap is not installed: these tests run programs in a sandbox that holds "
                    "only the Nix store (apt-get install bubblewrap)", pytrace=False)
    return bwrap


def store_only(*command: str | os.PathLike[str], writable: tuple[Path, ...] = (),
               ) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in a bwrap sandbox that holds only the Nix store (read-only), the
    folders ``writable``, a private /tmp, /proc and /dev, with an empty environment:
    nothing of the host's /usr, /lib, /bin or /etc."""
    args = [require_bwrap(), "--unshare-all", "--die-with-parent",
            "--ro-bind", str(STORE), str(STORE), "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/tmp"]
    for folder in writable:
        args += ["--bind", str(folder), str(folder)]
    args += ["--chdir", "/", "--clearenv", "--"]
    return subprocess.run([*args, *map(str, command)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False, timeout=120)


def sandbox_output(*command: str | os.PathLike[str]) -> str:
    """stdout of ``command`` in the store-only sandbox; it must succeed and print no error."""
    result = store_only(*command)
    assert result.returncode == 0, (f"{command} failed in the sandbox ({result.returncode}):\n"
                                    f"{result.stdout}\n{result.stderr}")
    assert result.stderr == "", result.stderr
    return result.stdout


def native_output(*command: str | os.PathLike[str]) -> str:
    """stdout of ``command`` run natively, with the same empty environment."""
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, check=False, env={}, timeout=120)
    assert result.returncode == 0, f"{command} failed natively:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def nix_str(value: str | os.PathLike[str]) -> str:
    """A Nix string literal for ``value``."""
    return json.dumps(str(value)).replace("${", "\\${")


def host_set(host_path: list[Path] | None = None) -> str:
    args = ""
    if host_path is not None:
        args = "hostPath = [ " + " ".join(nix_str(p) for p in host_path) + " ]; "
    return f"(import (/. + {nix_str(PKGS)}) {{ {args}}})"


def nix_build(expr: str, out_link: Path) -> list[Path]:
    proc = subprocess.run(["nix-build", *NIX_OPTS, "--out-link", str(out_link), "-E", expr],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return [Path(p) for p in proc.stdout.split()]


def closure(*paths: Path) -> list[Path]:
    """``nix-store -qR``: every store path the given ones need at run time."""
    proc = subprocess.run(["nix-store", "-qR", *map(str, paths)], capture_output=True,
                          text=True, check=True)
    return [Path(p) for p in proc.stdout.split()]


def elf_interpreter(path: Path) -> str | None:
    """The ELF interpreter (PT_INTERP) of ``path``; None for a static program or a file
    that is not a 64-bit ELF."""
    with path.open("rb") as handle:
        header = handle.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:
            return None
        order = "<" if header[5] == 1 else ">"
        (table,) = struct.unpack_from(order + "Q", header, 32)
        entry_size, count = struct.unpack_from(order + "HH", header, 54)
        for index in range(count):
            handle.seek(table + index * entry_size)
            kind, _flags, offset, _vaddr, _paddr, size = struct.unpack(
                order + "IIQQQQ", handle.read(40))
            if kind == 3:  # PT_INTERP
                handle.seek(offset)
                return handle.read(size).rstrip(b"\0").decode()
    return None


def files_of(path: Path) -> Iterator[Path]:
    yield path
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                yield Path(root, name)


def host_references(paths: list[Path]) -> list[str]:
    """Everything in ``paths`` that would reach outside the store: links, the ELF
    interpreters of programs and the ``#!`` interpreters of bin/ and libexec/ scripts that
    are not store paths."""
    problems = []
    for top in paths:
        for path in files_of(top):
            if path.is_symlink():
                target = os.path.realpath(path)
                if not target.startswith(f"{STORE}/"):
                    problems.append(f"{path}: a link to {os.readlink(path)}")
                continue
            if not path.is_file():
                continue
            # Libraries are loaded, not run (libc.so.6 has an interpreter only to print
            # its version when it is run).
            library = ".so" in path.name
            interpreter = None if library else elf_interpreter(path)
            if interpreter is not None and not interpreter.startswith(f"{STORE}/"):
                problems.append(f"{path}: ELF interpreter {interpreter}")
            # Programs only: a library's module with a #! line (Python's webbrowser.py)
            # is imported, or run by its interpreter (python3 -m webbrowser).
            if path.parent.name in ("bin", "libexec") and os.access(path, os.X_OK):
                with path.open("rb") as handle:
                    first = handle.readline(256)
                if first.startswith(b"#!"):
                    word = first[2:].split()[0].decode() if first[2:].split() else ""
                    if not word.startswith(f"{STORE}/"):
                        problems.append(f"{path}: script for {word}")
    return problems


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    require_nix()
    require_bwrap()


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The host packages the tests run, built in one nix-build."""
    out = tmp_path_factory.mktemp("host-closure") / "result"
    names = ["bash", "coreutils", "jq", "gnused", "gnugrep", "findutils", "gawk", "perl",
             "python3", "stdlib_env", "empty_env"]
    paths = nix_build(f"""
      let
        p = {host_set()};
        probe = p.writeTextDir "lib/python3/site-packages/repx_probe.py" ''
          import json, sqlite3
          def main():
              db = sqlite3.connect(":memory:")
              (total,) = db.execute("select 40 + 2").fetchone()
              print(json.dumps({{"probe": total}}))
        '';
      in [
        p.bash p.coreutils p.jq p.gnused p.gnugrep p.findutils p.gawk p.perl p.python3
        (p.python3.withPackages (ps: [ probe ]))
        (p.python3.withPackages (ps: [ ]))
      ]""", out)
    assert len(paths) == len(names), paths
    return dict(zip(names, paths, strict=True))


# ------------------------------------------------------------------ the sandbox ----


def test_the_sandbox_has_nothing_but_the_store(packages: dict[str, Path]):
    """The control: the host's own programs cannot run in the sandbox, so what runs there
    is the closure alone."""
    bash = packages["bash"] / "bin" / "bash"
    assert sandbox_output(bash, "-c", "for d in /usr /lib /lib64 /bin /etc /home; do "
                                      "[[ -e $d ]] && echo $d; done; echo done") == "done\n"
    host_jq = shutil.which("jq")
    assert host_jq is not None, "the host's jq is this test's control (apt-get install jq)"
    result = store_only(host_jq, "-n", "1")
    assert result.returncode != 0 and "No such file or directory" in result.stderr


# ------------------------------------------------------------------- a lab ----


def test_example_lab_runs_in_the_sandbox_with_the_native_outputs(tmp_path: Path):
    """examples/simple: the closure of its stage scripts holds everything they run (store
    paths only), and each script, started by its own #! line inside the sandbox, writes
    byte for byte what the native build wrote."""
    folder = copy_example("simple", tmp_path)
    native_store = tmp_path / "store"
    repx_build(folder, native_store)
    jobs = list_jobs(folder)
    scripts = [Path(job["scripts"]["main"]) for job in jobs]
    needed = closure(*scripts)
    names = sorted(p.name.split("-", 1)[1] for p in needed)
    for name in ("host-bash", "host-coreutils", "host-gawk", "host-jq", "host-glibc"):
        assert name in names, names
    assert host_references(needed) == []
    # glibc is one shared store path: no package carries a libc of its own.
    assert [p for p in needed if list(p.glob("lib/libc.so.6"))] == [
        p for p in needed if p.name.endswith("-host-glibc")]

    sandbox_store = tmp_path / "sandbox"
    produced: dict[str, Path] = {}
    by_id = {job["id"]: job for job in jobs}
    pending = list(jobs)
    while pending:
        job = next(j for j in pending if all(d in produced for d in j["depends_on"]))
        pending.remove(job)
        out = sandbox_store / job["id"] / "out"
        args = sandbox_store / job["id"] / "repx"
        args.mkdir(parents=True)
        # The job's inputs are the sandbox's own outputs of the jobs before it.
        inputs = {}
        for name, source in job["inputs"].items():
            template = by_id[source["job"]]["outputs"][source["output"]]
            inputs[name] = str(produced[source["job"]] / template.removeprefix("$out/"))
        (args / "inputs.json").write_text(json.dumps(inputs, indent=1) + "\n")
        native_args = native_store / "outputs" / job["id"] / "repx"
        shutil.copyfile(native_args / "params.json", args / "params.json")
        result = store_only(job["scripts"]["main"], out, args / "inputs.json",
                            args / "params.json", writable=(sandbox_store,))
        assert result.returncode == 0, f"{job['pname']} failed in the sandbox:\n{result.stderr}"
        produced[job["id"]] = out
        native = out_dir(native_store, job["id"])
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in native.iterdir())
        for path in native.iterdir():
            assert (out / path.name).read_bytes() == path.read_bytes(), (job["pname"], path.name)
    plotter = next(job for job in jobs if job["pname"] == "plotter")
    assert (produced[plotter["id"]] / "plot.txt").read_text().endswith("sum = 55\n")


# ------------------------------------------------------------- the programs ----


TOOLS_SCRIPT = r"""
set -euo pipefail
work=$(mktemp -d)
mkdir -p "$work/a/b"
printf 'x\n' > "$work/a/one.txt"
printf 'y\n' > "$work/a/b/two.txt"
printf 'z\n' > "$work/a/b/three.dat"
printf '{"a": [1, 2, 3]}' | jq -c '.a | map(. * 2)'
echo hello world | sed -E 's/(o+)/[\1]/g'
printf 'a1\nb22\nc333\n' | grep -E '[0-9]{2}'
printf 'a1\nb22\nc333\n' | egrep -c 'c'
find "$work/a" -name '*.txt' -printf '%P\n' | sort
find "$work/a" -type f | xargs cat | sort | tr -d '\n'; echo
seq 1 5 | awk '{ s += $1 } END { print s }'
printf '3\n1\n2\n' | sort -n | paste -sd, -
echo -n abc | sha256sum | cut -c1-16
perl -MPOSIX=floor -MList::Util=sum -e 'print sum(1 .. 4), " ", floor(2.7), "\n"'
rm -r "$work"
"""

TOOLS_OUTPUT = """[2,4,6]
hell[o] w[o]rld
b22
c333
1
b/two.txt
one.txt
xyz
15
1,2,3
ba7816bf8f01cfea
10 2
"""


def test_core_tools_run_in_the_sandbox(packages: dict[str, Path]):
    """jq, sed, grep (and egrep, a #!/bin/sh script on Debian), find, xargs, awk,
    coreutils and perl with its core modules, from their closures alone."""
    tools = ["coreutils", "jq", "gnused", "gnugrep", "findutils", "gawk", "perl"]
    path = ":".join(str(packages[name] / "bin") for name in tools)
    bash = packages["bash"] / "bin" / "bash"
    command = (bash, "-c", f"export PATH={path}\n{TOOLS_SCRIPT}")
    assert sandbox_output(*command) == TOOLS_OUTPUT
    assert native_output(*command) == TOOLS_OUTPUT
    assert host_references([packages[name] for name in tools]) == []


PYTHON_CODE = """
import bz2, ctypes, decimal, hashlib, json, lzma, sqlite3, ssl, sys, unicodedata, zlib
data = b"repx" * 100
assert bz2.decompress(bz2.compress(data)) == lzma.decompress(lzma.compress(data)) == data
assert zlib.decompress(zlib.compress(data)) == data
print(json.dumps({
    "prefix": sys.prefix,
    "version": "%d.%d" % sys.version_info[:2],
    "path": sys.path[1:],
    "sqlite": sqlite3.connect(":memory:").execute("select 6 * 7").fetchone()[0],
    "sha256": hashlib.sha256(b"abc").hexdigest()[:16],
    "decimal": str(decimal.Decimal(1) / decimal.Decimal(8)),
    "ctypes": ctypes.c_int(7).value,
    "tls": ssl.OPENSSL_VERSION.split()[0],
    "latin1": "\\u00e9".encode("latin-1").hex(),
    "name": unicodedata.name("\\u00e9"),
}, sort_keys=True))
"""


def test_python3_starts_in_the_sandbox_with_its_standard_library(packages: dict[str, Path]):
    """python3 finds its standard library and lib-dynload (sqlite3, ssl, lzma, ctypes ...,
    with the libraries they load) in its own store path, and nothing else: the host's
    site- and dist-packages are not on its path."""
    python3 = packages["python3"] / "bin" / "python3"
    report = sandbox_output(python3, "-c", PYTHON_CODE)
    facts = json.loads(report)
    prefix = str(packages["python3"])
    lib = f"{prefix}/lib/python{facts['version']}"
    assert facts == {
        "prefix": prefix, "version": facts["version"],
        "path": [f"{prefix}/lib/python{facts['version'].replace('.', '')}.zip", lib,
                 f"{lib}/lib-dynload"],
        "sqlite": 42, "sha256": "ba7816bf8f01cfea", "decimal": "0.125", "ctypes": 7,
        "tls": "OpenSSL", "latin1": "e9", "name": "LATIN SMALL LETTER E WITH ACUTE"}
    assert native_output(python3, "-c", PYTHON_CODE) == report
    assert host_references([packages["python3"]]) == []


def test_with_packages_runs_in_the_sandbox(packages: dict[str, Path]):
    """A withPackages environment (a module from a derivation, a standard-library-only
    list) and an empty one start from the store: the wrapper's #! shell, the interpreter and
    the modules are all in the closure."""
    for name in ("stdlib_env", "empty_env"):
        env = packages[name]
        assert host_references(closure(env)) == []
        assert packages["python3"] in closure(env)
    python3 = packages["stdlib_env"] / "bin" / "python3"
    code = "import repx_probe; repx_probe.main()"
    assert sandbox_output(python3, "-c", code) == '{"probe": 42}\n'
    assert native_output(python3, "-c", code) == '{"probe": 42}\n'
    assert sandbox_output(packages["empty_env"] / "bin" / "python3", "-c",
                          "import json; print(json.dumps([1]))") == "[1]\n"


# -------------------------------------------------------------- clear errors ----


@pytest.fixture
def readable_tmp() -> Iterator[Path]:
    """A temporary folder that Nix's build users can read (pytest's are private to root):
    host packages copy their programs as those users."""
    folder = Path(tempfile.mkdtemp(prefix="repx-host-closure-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_script_whose_interpreter_is_not_in_the_closure_fails_the_build(readable_tmp: Path):
    """A host program that is a script for an interpreter the package does not carry
    (here perl, for a program that is not a named package) would fail where only the store
    exists: its build fails and says why, rather than give a package that runs only here."""
    folder = readable_tmp / "bin"
    folder.mkdir()
    tool = folder / "repx-perl-tool"
    tool.write_text("#!/usr/bin/perl\nprint 42;\n")
    tool.chmod(0o755)
    proc = subprocess.run(
        ["nix-build", *NIX_OPTS, "--no-out-link", "-E",
         f'{host_set([folder, Path("/usr/bin"), Path("/bin")])}."repx-perl-tool"'],
        capture_output=True, text=True, check=False)
    assert proc.returncode != 0, proc.stdout
    message = " ".join(proc.stderr.split())
    assert (f"repx host package set: pkgs.repx-perl-tool: {tool.resolve()} is a script for "
            "/usr/bin/perl, which is not in this package's closure") in message
    # ... and how to run it anyway.
    assert f"runDependencies = [ pkgs.perl ], then `perl {tool.resolve()}`" in message
    assert "--nixpkgs" in message
