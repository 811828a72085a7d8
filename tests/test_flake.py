"""Labs built through flakes, the package set a lab gives mkLab, and lab arguments.

Everything runs real Nix 2.8 offline: the repx flake is taken as a ``path:`` input (a copy of
the flake's files, so the checkout's venv and stores are not copied into the Nix store), the
flake features are switched on by repx for its own calls only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.buildutil import repx
from tests.conftest import EXAMPLES, REPO, require_nix, write_files

pytestmark = pytest.mark.nix

#: What a flake input needs of the checkout (the same set the wheel ships).
FLAKE_FILES = ("flake.nix", "pyproject.toml", "nix", "repx", "repx_py")

SYSTEM = subprocess.run(["nix-instantiate", "--eval", "--expr", "builtins.currentSystem"],
                        capture_output=True, text=True, check=False).stdout.strip().strip('"')


@pytest.fixture(scope="module")
def repx_flake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repx flake source, usable as ``path:`` input."""
    require_nix()
    root = tmp_path_factory.mktemp("repx-flake")
    for name in FLAKE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name,
                            ignore=shutil.ignore_patterns("__pycache__", "_flake", "*.pyc"))
        else:
            shutil.copy2(source, root / name)
    return root


def lab_flake(repx_source: Path, *, pkgs: str, lab_file: str = "./lab.nix",
              extra: str = "") -> str:
    return f"""
    {{
      inputs.repx.url = "path:{repx_source}";
      outputs = {{ self, repx }}:
        let
          system = "{SYSTEM}";
          pkgs = {pkgs};
          lab = import {lab_file} {{ inherit pkgs; repx-lib = repx.lib; gitHash = "flake"; }};
        in {{
          packages.${{system}} = {{
            lab = lab.lab // {{ inherit (lab) runs; }};
            default = lab.lab;
            {extra}
          }};
        }};
    }}
    """


def job_ids(folder: Path, *args: str) -> list[str]:
    listed = repx("list", "jobs", "--json", *args, cwd=folder)
    return sorted(job["id"] for job in json.loads(listed.stdout))


def test_flake_lab_builds_the_same_jobs_as_its_lab_file(repx_flake: Path,
                                                        tmp_path: Path) -> None:
    folder = tmp_path / "lab"
    shutil.copytree(EXAMPLES / "param-sweep", folder,
                    ignore=shutil.ignore_patterns("result", ".repx"))
    expected = job_ids(folder, "-f", "lab.nix")
    # Only flake.nix beside nix/: `repx build` must take the flake.
    (folder / "nix").mkdir()
    (folder / "lab.nix").rename(folder / "nix" / "lab.nix")
    for name in ("runs", "pipelines", "stages"):
        if (folder / name).exists():
            shutil.move(folder / name, folder / "nix" / name)
    write_files(folder, {"flake.nix": lab_flake(
        repx_flake, pkgs="repx.legacyPackages.${system}", lab_file="./nix/lab.nix")})

    assert job_ids(folder, "--impure") == expected

    store = tmp_path / "store"
    first = json.loads(repx("build", "--impure", "--store", str(store), "--json",
                            cwd=folder).stdout)
    assert len(first["executed"]) == len(expected) and first["failed"] == []
    again = json.loads(repx("build", "--impure", "--store", str(store), "--json",
                            cwd=folder).stdout)
    assert again["executed"] == [] and len(again["up_to_date"]) == len(expected)
    # The lab was linked beside the flake, as for a lab file.
    assert (folder / "result" / "lab.json").is_file()


def test_host_package_set_in_a_pure_flake_says_to_use_impure(repx_flake: Path,
                                                            make_lab) -> None:
    folder = make_lab({
        "run.nix": '{ ... }: { name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }',
        "stage.nix": """
        { pkgs }:
        { pname = "work"; outputs = { "data.out" = "$out/x"; };
          run = { outputs, ... }: ''echo hi > "${outputs."data.out"}"''; }
        """,
    })
    (folder / "flake.nix").write_text(lab_flake(repx_flake,
                                                pkgs="repx.legacyPackages.${system}"))
    (folder / "lab.nix").rename(folder / "the-lab.nix")
    text = (folder / "flake.nix").read_text().replace("./lab.nix", "./the-lab.nix")
    (folder / "flake.nix").write_text(text)
    failed = repx("lab", "build", cwd=folder, check=False)
    assert failed.returncode != 0
    assert "--impure" in failed.stderr and "Traceback" not in failed.stderr


#: A package set made of builtins only, as a test of pure evaluation: no host paths are
#: read at evaluation time, and the system is named by the set.
BUILTINS_PKGS = """
let
  system = "SYSTEM";
  host = name: programs: derivation {
    inherit name system;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-c" ("mkdir -p $out/bin; for p in " + programs
      + "; do ln -s /usr/bin/$p $out/bin/$p; done") ];
  };
in {
  inherit system;
  bash = host "bash" "bash";
  coreutils = host "coreutils" "cat echo mkdir rm ls seq tr";
  findutils = host "findutils" "find xargs";
  gnused = host "gnused" "sed";
  gnugrep = host "gnugrep" "grep";
  jq = host "jq" "jq";
  my-tool = derivation {
    name = "my-tool"; inherit system; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
    args = [ "-c" ("mkdir -p $out/bin; printf '#!/bin/sh\\\\necho from-my-tool\\\\n'"
      + " > $out/bin/my-tool; chmod +x $out/bin/my-tool") ];
  };
}
"""


def test_pure_flake_with_a_builtins_only_package_set(repx_flake: Path, make_lab,
                                                     tmp_path: Path) -> None:
    folder = make_lab({
        "pkgs.nix": BUILTINS_PKGS.replace("SYSTEM", SYSTEM),
        "run.nix": '{ ... }: { name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }',
        "stage.nix": """
        { pkgs }:
        { pname = "work"; outputs = { "data.out" = "$out/x"; };
          runDependencies = [ pkgs.my-tool ];
          run = { outputs, ... }: ''my-tool > "${outputs."data.out"}"''; }
        """,
    })
    (folder / "lab.nix").rename(folder / "the-lab.nix")
    (folder / "flake.nix").write_text(lab_flake(repx_flake, pkgs="import ./pkgs.nix",
                                                lab_file="./the-lab.nix"))
    # No --impure: the evaluation is pure.
    store = tmp_path / "store"
    built = json.loads(repx("build", "--store", str(store), "--json", cwd=folder).stdout)
    assert len(built["executed"]) == 1 and built["failed"] == []
    outputs = list(store.glob("outputs/*/out/x"))
    assert [p.read_text().strip() for p in outputs] == ["from-my-tool"]


def test_flake_output_chosen_with_file_hash_attr(repx_flake: Path, tmp_path: Path) -> None:
    folder = tmp_path / "lab"
    shutil.copytree(EXAMPLES / "simple", folder, ignore=shutil.ignore_patterns("result"))
    (folder / "lab.nix").rename(folder / "lab-file.nix")
    write_files(folder, {"flake.nix": lab_flake(
        repx_flake, pkgs="repx.legacyPackages.${system}", lab_file="./lab-file.nix",
        extra="other = lab.lab;")})
    built = repx("lab", "build", "-f", "flake.nix#other", "--impure", "-o", "other",
                 cwd=folder)
    assert "run simulation: 3 jobs" in built.stdout
    assert (folder / "other" / "lab.json").is_file()

    missing = repx("lab", "build", "-f", "flake.nix#nothing", "--impure", cwd=folder,
                   check=False)
    assert missing.returncode != 0
    assert "nothing" in missing.stderr and "-f flake.nix#ATTR" in missing.stderr

    with_arg = repx("lab", "build", "--impure", "--argstr", "x", "y", cwd=folder,
                    check=False)
    assert with_arg.returncode != 0 and "flake lab takes its arguments" in with_arg.stderr

    not_a_flake = repx("lab", "build", "-f", "lab-file.nix#lab", cwd=folder, check=False)
    assert not_a_flake.returncode != 0 and "is not a flake.nix" in not_a_flake.stderr


# --------------------------------------------------------------- mkLab's package set


def test_a_package_added_to_mklab_pkgs_reaches_the_stage(make_lab, tmp_path: Path) -> None:
    """An overlay (here `pkgs // { ... }`) given to mkLab is what stages receive."""
    folder = make_lab({
        "lab.nix": """
        { pkgs, repx-lib, gitHash ? "unknown", ... }:
        let
          withTool = pkgs // {
            make-pkg = pkgs.writeShellScriptBin "make-pkg" "echo made-by-overlay";
          };
        in
        repx-lib.mkLab {
          pkgs = withTool;
          inherit repx-lib gitHash;
          lab_version = "1.0";
          runs = { main = repx-lib.callRun ./run.nix [ ]; };
        }
        """,
        "run.nix": '{ ... }: { name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }',
        "stage.nix": """
        { pkgs }:
        { pname = "work"; outputs = { "data.out" = "$out/x"; };
          runDependencies = [ pkgs.make-pkg ];
          run = { outputs, ... }: ''make-pkg > "${outputs."data.out"}"''; }
        """,
    })
    store = tmp_path / "store"
    built = json.loads(repx("build", "--store", str(store), "--json", cwd=folder).stdout)
    assert len(built["executed"]) == 1
    assert [p.read_text().strip() for p in store.glob("outputs/*/out/x")] == ["made-by-overlay"]


def test_a_package_the_set_lacks_still_gets_the_clear_message(make_lab) -> None:
    folder = make_lab({
        "run.nix": '{ ... }: { name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }',
        "stage.nix": """
        { pkgs }:
        { pname = "work"; outputs = { "data.out" = "$out/x"; };
          runDependencies = [ pkgs.make-pkg ];
          run = { outputs, ... }: ''make-pkg > "${outputs."data.out"}"''; }
        """,
    })
    failed = repx("lab", "build", cwd=folder, check=False)
    assert failed.returncode != 0
    assert "make-pkg" in failed.stderr and "Traceback" not in failed.stderr
    assert "not installed on this machine" in failed.stderr


# ---------------------------------------------------------------------- lab arguments

LAB_WITH_ARGS = """
{ pkgs, repx-lib, gitHash ? "unknown", greeting, count ? 1, mountDir ? "/default" }:
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "${greeting}-${toString (count * 2)}-${mountDir}";
  runs = { main = repx-lib.callRun ./run.nix [ ]; };
}
"""

RUN_AND_STAGE = {
    "run.nix": '{ ... }: { name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }',
    "stage.nix": """
    { pkgs }:
    { pname = "work"; outputs = { "data.out" = "$out/x"; };
      run = { outputs, ... }: ''echo hi > "${outputs."data.out"}"''; }
    """,
}


def lab_version(folder: Path) -> str:
    return json.loads((folder / "result" / "lab.json").read_text())["lab_version"]


def test_arg_and_argstr_reach_the_lab_function(make_lab) -> None:
    folder = make_lab({"lab.nix": LAB_WITH_ARGS, **RUN_AND_STAGE})
    repx("lab", "build", "--argstr", "greeting", "hello", "--arg", "count", "3", cwd=folder)
    assert lab_version(folder) == "hello-6-/default"
    # Every command that builds the lab takes them (here `list runs`).
    listed = repx("list", "runs", "--argstr", "greeting", "hi", "--argstr", "mountDir", "/m",
                  cwd=folder)
    assert "main" in listed.stdout
    assert lab_version(folder) == "hi-2-/m"


def test_lab_argument_errors_name_the_argument(make_lab) -> None:
    folder = make_lab({"lab.nix": LAB_WITH_ARGS, **RUN_AND_STAGE})
    missing = repx("lab", "build", cwd=folder, check=False)
    assert missing.returncode != 0
    assert "needs the argument" in missing.stderr and "greeting" in missing.stderr
    assert "--argstr greeting VALUE" in missing.stderr

    unknown = repx("lab", "build", "--argstr", "greeting", "x", "--argstr", "colour", "red",
                   cwd=folder, check=False)
    assert unknown.returncode != 0
    assert "takes no argument" in unknown.stderr and "colour" in unknown.stderr

    twice = repx("list", "runs", "--argstr", "greeting", "a", "--arg", "greeting", '"b"',
                 cwd=folder, check=False)
    assert twice.returncode != 0 and "given twice" in twice.stderr

    bad_expr = repx("lab", "build", "--argstr", "greeting", "x", "--arg", "count", "1 +",
                    cwd=folder, check=False)
    assert bad_expr.returncode != 0 and "Traceback" not in bad_expr.stderr

    reserved = repx("lab", "build", "--argstr", "repxSlice", "x", cwd=folder, check=False)
    assert reserved.returncode != 0 and "reserved" in reserved.stderr


def test_a_lab_argument_overrides_the_git_hash(make_lab) -> None:
    folder = make_lab({**RUN_AND_STAGE})
    repx("lab", "build", "--argstr", "gitHash", "abc123", cwd=folder)
    manifest = json.loads((folder / "result" / "lab.json").read_text())
    assert manifest["git_hash"] == "abc123"


# ------------------------------------------------------------------ the template


def test_init_flake_template_builds_through_the_flake(repx_flake: Path, tmp_path: Path) -> None:
    """`repx init --flake` writes a flake that builds the same jobs as its lab.nix."""
    folder = tmp_path / "my-lab"
    repx("init", str(folder), "--flake", "--name", "noise", cwd=tmp_path)
    flake = (folder / "flake.nix").read_text()
    assert 'inputs.repx.url = "path:' in flake
    # The checkout itself (with its venv) is not copied into the Nix store: point the input
    # at the copy of the flake source.
    url = flake.split('inputs.repx.url = "', 1)[1].split('"', 1)[0]
    (folder / "flake.nix").write_text(flake.replace(url, f"path:{repx_flake}"))

    via_lab_file = job_ids(folder, "-f", "lab.nix")
    via_flake = job_ids(folder, "-f", "flake.nix", "--impure")
    assert via_flake == via_lab_file and len(via_flake) == 8
    sliced = repx("lab", "build", "-f", "flake.nix#lab", "--run", "sweep", "--impure",
                  "-o", "slice", cwd=folder)
    assert "run sweep" in sliced.stdout


def test_repx_flake_outputs(repx_flake: Path) -> None:
    """The repx flake's outputs, evaluated purely: lib takes no package set, the template
    and overlay are there."""
    expr = f"""
    let
      repx = builtins.getFlake "path:{repx_flake}";
      names = builtins.attrNames repx.lib;
    in {{
      inherit names;
      lib_is_set = builtins.isAttrs repx.lib;
      template = builtins.pathExists "${{repx.templates.default.path}}/flake.nix";
      overlay = builtins.isFunction repx.overlays.default;
      systems = builtins.attrNames repx.packages;
    }}
    """
    result = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command flakes", "eval", "--json",
         "--impure", "--expr", expr],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"mkLab", "callRun", "mkRun", "mkUtils", "utils", "mkPipelineHelpers"} <= set(
        data["names"])
    assert data["lib_is_set"] and data["template"] and data["overlay"]
    assert SYSTEM in data["systems"]
