"""The host package set (nix/pkgs/default.nix), checked with the real Nix.

Nix calls are few and batched: one strict JSON evaluation checks many facts,
one nix-build builds every derivation the tests run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_host_closure import elf_interpreter

pytestmark = pytest.mark.nix

REPO = Path(__file__).resolve().parent.parent
PKGS = REPO / "nix" / "pkgs"
NIX_OPTS = ["--option", "substituters", ""]


def nix_str(value: str | os.PathLike[str]) -> str:
    """A Nix string literal for ``value``."""
    return json.dumps(str(value)).replace("${", "\\${")


def pkgs_expr(host_path: list[Path] | None = None) -> str:
    args = ""
    if host_path is not None:
        args = "hostPath = [ " + " ".join(nix_str(p) for p in host_path) + " ]; "
    return f"(import (/. + {nix_str(PKGS)}) {{ {args}}})"


@pytest.fixture(scope="module", autouse=True)
def _need_nix() -> None:
    missing = [tool for tool in ("nix-instantiate", "nix-build") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found on PATH: these tests need Nix "
            "(e.g. apt-get install nix-bin)",
            pytrace=False,
        )


def nix_eval(expr: str):
    proc = subprocess.run(
        ["nix-instantiate", *NIX_OPTS, "--eval", "--strict", "--json", "-E", expr],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def nix_eval_error(expr: str) -> str:
    proc = subprocess.run(
        ["nix-instantiate", *NIX_OPTS, "--eval", "--strict", "-E", expr],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0, f"expected an evaluation error, got {proc.stdout!r}"
    return proc.stderr


def nix_build(expr: str, out_link: Path) -> list[str]:
    proc = subprocess.run(
        ["nix-build", *NIX_OPTS, "--out-link", str(out_link), "-E", expr],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def host_program() -> str:
    """A program on the host that is not a named package: exposed on its own."""
    for name in ("dpkg", "sqlite3", "rsync", "md5sum"):
        if any(Path(d, name).exists() for d in ("/usr/local/bin", "/usr/bin", "/bin")):
            return name
    raise AssertionError("no candidate host program found")


def run(*cmd: str | Path) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def facts() -> dict:
    prog = host_program()
    p = pkgs_expr()
    return nix_eval(
        f"""
        let p = {p}; in {{
          marker = p.__repxHostPackageSet;
          range = p.lib.range 1 3;
          lib = {{
            optional = p.lib.optional true 1 ++ p.lib.optional false 2;
            optionalString = p.lib.optionalString false "x" + p.lib.optionalString true "y";
            concat = p.lib.concatStringsSep "," [ "a" "b" ];
            unique = p.lib.unique [ 1 2 1 3 ];
            flatten = p.lib.flatten [ 1 [ 2 [ 3 ] ] ];
            imap0 = p.lib.imap0 (i: v: i * v) [ 5 6 ];
            filterAttrs = p.lib.filterAttrs (n: v: v > 1) {{ a = 1; b = 2; }};
            mapAttrsToList = p.lib.mapAttrsToList (n: v: n + v) {{ a = "1"; }};
            prefix = [
              (p.lib.hasPrefix "ab" "abc") (p.lib.hasSuffix "bc" "abc") (p.lib.hasPrefix "b" "abc")
            ];
          }};
          system = p.system == builtins.currentSystem;
          packages = p.__repxHostPackages;
          jq = {{
            inherit (p.jq) name pname version;
            path = p.jq.outPath;  # an "outPath" key would turn the set into a string
            bin = p.jq.bin.outPath;
            out = p.jq.out.outPath;
            str = "${{p.jq}}/bin/jq";
            exe = p.lib.getExe p.jq;
          }};
          coreutils = builtins.attrNames p.coreutils.repxHostBinaries;
          python3 = p.python3.repxHostBinaries;
          program = {{ name = {nix_str(prog)}; bins = p.${{{nix_str(prog)}}}.repxHostBinaries; }};
        }}
        """
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory, facts) -> dict[str, Path]:
    """Build the derivations the tests run, in one nix-build call."""
    out = tmp_path_factory.mktemp("host-pkgs") / "result"
    prog = facts["program"]["name"]
    names = ["jq", "coreutils", "python3", "program", "text", "script", "rc", "join"]
    paths = nix_build(
        f"""
        let p = {pkgs_expr()}; in [
          p.jq
          p.coreutils
          p.python3
          p.${{{nix_str(prog)}}}
          (p.writeText "repx-test-text" "hello ${{p.jq}}/bin/jq\\n")
          (p.writeShellScript "repx-test-script" "echo script-$((1 + 2))")
          (p.runCommand "repx-test-rc" {{ nativeBuildInputs = [ p.jq ]; FOO = "bar"; }} ''
            mkdir -p $out
            echo '{{"a": 41}}' | jq '.a + 1' > $out/jq
            echo "$FOO" | sed s/b/B/ | tr a-z A-Z > $out/foo
            [[ -n "$FOO" ]] && echo bash > $out/shell
            ls ${{p.coreutils}}/bin > $out/ls
          '')
          (p.symlinkJoin {{ name = "repx-test-join"; paths = [ p.jq p.coreutils ]; }})
        ]
        """,
        out,
    )
    assert len(paths) == len(names), paths
    return {name: Path(path) for name, path in zip(names, paths, strict=True)}


def test_marker_lib_and_system(facts):
    assert facts["marker"] is True
    assert facts["range"] == [1, 2, 3]
    assert facts["system"] is True
    assert facts["lib"] == {
        "optional": [1],
        "optionalString": "y",
        "concat": "a,b",
        "unique": [1, 2, 3],
        "flatten": [1, 2, 3],
        "imap0": [0, 6],
        "filterAttrs": {"b": 2},
        "mapAttrsToList": ["a1"],
        "prefix": [True, True, False],
    }


def test_package_attributes(facts):
    jq = facts["jq"]
    assert jq["name"] == "host-jq"
    assert jq["pname"] == "jq"
    assert jq["version"] == "host"
    assert jq["bin"] == jq["out"] == jq["path"]
    assert jq["str"] == jq["exe"] == jq["path"] + "/bin/jq"
    assert {"ls", "mkdir", "sort", "cat", "["} <= set(facts["coreutils"])
    assert facts["packages"]["jq"]["installed"] is True
    assert facts["packages"]["coreutils"]["installed"] is True


def test_jq_builds_and_runs(built):
    assert run(built["jq"] / "bin" / "jq", "--version").startswith("jq")


def test_coreutils_are_copies_that_load_from_the_store(built):
    bindir = built["coreutils"] / "bin"
    for name in ("ls", "mkdir", "sort"):
        # A copy, not a link to the host's file, and its loader is in the store: the
        # closure runs where the host's tools are not (tests/test_host_closure.py).
        assert (bindir / name).is_file() and not (bindir / name).is_symlink()
        assert elf_interpreter(bindir / name).startswith("/nix/store/")
    assert run(bindir / "sort", "/dev/null") == ""


def test_python3_is_a_real_python(facts, built):
    for name, target in facts["python3"].items():
        assert "/shims/" not in target, (name, target)
    exe = built["python3"] / "bin" / "python3"
    assert run(exe, "-c", "import sys; print(sys.version_info[0])").strip() == "3"
    assert run(built["python3"] / "bin" / "python", "-c", "print(1 + 1)").strip() == "2"


def test_arbitrary_host_program(facts, built):
    name = facts["program"]["name"]
    assert list(facts["program"]["bins"]) == [name]
    copy = built["program"] / "bin" / name
    assert copy.is_file() and not copy.is_symlink()
    # The same program: the copy answers as the host's does.
    assert run(copy, "--version") == run(facts["program"]["bins"][name], "--version")


def test_write_helpers_and_run_command(facts, built):
    assert built["text"].read_text() == f"hello {facts['jq']['path']}/bin/jq\n"
    assert run(built["script"]).strip() == "script-3"
    rc = built["rc"]
    assert (rc / "jq").read_text().strip() == "42"
    assert (rc / "foo").read_text().strip() == "BAR"
    assert (rc / "shell").read_text().strip() == "bash"
    assert "ls" in (rc / "ls").read_text().split()
    assert run(built["join"] / "bin" / "jq", "--version").startswith("jq")
    assert (built["join"] / "bin" / "ls").exists()


def test_missing_named_package_errors(tmp_path, facts):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = nix_eval_error(f"{pkgs_expr([empty])}.jq.outPath")
    assert (
        "repx host package set: 'pkgs.jq' is not installed on this machine "
        f"(looked for jq in {empty}). Install it (e.g. apt-get install jq) "
        "or pass a real nixpkgs with --nixpkgs."
    ) in " ".join(err.split())

    missing = [name for name, info in facts["packages"].items() if not info["installed"]]
    if missing:  # a named package that this host lacks, with the real hostPath
        name = "gfortran" if "gfortran" in missing else missing[0]
        err = nix_eval_error(f"{pkgs_expr()}.{nix_str(name)}.outPath")
        assert f"'pkgs.{name}' is not installed on this machine" in err
        assert "--nixpkgs" in err


def test_unknown_attribute_errors():
    err = nix_eval_error(f"{pkgs_expr()}.repx-no-such-program-anywhere")
    assert "repx-no-such-program-anywhere" in err
    assert "missing" in err


@pytest.fixture
def readable_tmp() -> Iterator[Path]:
    """A temporary folder that Nix's build users can read (pytest's are private to root):
    host packages copy their programs as those users."""
    folder = Path(tempfile.mkdtemp(prefix="repx-host-pkgs-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_identity_follows_binary_content(readable_tmp):
    """Same name and path, different content: a different out path."""
    tmp_path = readable_tmp
    bindir = tmp_path / "bin"
    shims = tmp_path / ".pyenv" / "shims"
    bindir.mkdir()
    shims.mkdir(parents=True)
    fake = bindir / "jq"
    fake.write_text("#!/bin/sh\necho fake-jq-1\n")
    fake.chmod(0o755)
    shim = shims / "python3"
    shim.write_text("#!/bin/sh\necho shim\n")
    shim.chmod(0o755)
    (bindir / "python3").symlink_to(fake)
    (bindir / "dangling").symlink_to(tmp_path / "nowhere")

    # /usr/bin after bindir: the fake jq is a #!/bin/sh script, and scripts run with the
    # set's bash.
    expr = f"""
      let p = {pkgs_expr([shims, bindir, Path("/usr/bin")])}; in {{
        jq = p.jq.outPath;
        python3 = p.python3.repxHostBinaries.python3;
        # Hashing is lazy: a package that is not instantiated is never read.
        dangling = p.dangling.pname;
      }}
    """
    first = nix_eval(expr)
    assert first["python3"] == str(bindir / "python3")
    assert first["dangling"] == "dangling"

    out = tmp_path / "result"
    (built,) = nix_build(f"{pkgs_expr([bindir, Path('/usr/bin')])}.jq", out)
    assert built == first["jq"]
    assert run(Path(built) / "bin" / "jq").strip() == "fake-jq-1"
    # Without a bash on hostPath the script could not run from the store: a build error.
    proc = subprocess.run(["nix-build", *NIX_OPTS, "--no-out-link", "-E",
                           f"{pkgs_expr([bindir])}.jq"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert (f"{bindir / 'jq'} is a script for /bin/sh, and this package set has no bash to "
            "run it from the store (bash is not on hostPath)") in " ".join(proc.stderr.split())

    fake.write_text("#!/bin/sh\necho fake-jq-2\n")
    second = nix_eval(expr)
    assert second["jq"] != first["jq"]

    real = nix_eval(f"{pkgs_expr()}.jq.outPath")
    assert real not in (first["jq"], second["jq"])
