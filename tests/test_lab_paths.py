"""Where labs live: folders whose names hold spaces, quotes, ``$`` and non-ASCII letters, and
commands run in a subfolder of a lab.

Researchers' folders are called ``My Experiments`` or ``Projekt 2 "neu"``; every path repx
hands to Nix or to the shell (the lab file, ``--nixpkgs``, the store, the ``result`` link, a
flake's folder) must survive such a name. And as with git and make, a command run in
``lab/stages/`` works on the lab above it, with that lab's store and ``result`` link.
Everything runs the real CLI and real Nix.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from repx.cli.common import default_store_dir
from repx.errors import LabError
from repx.lab.nix import NIX_DIR, NIX_OPTIONS, find_lab_source, find_lab_upward
from tests.buildutil import repx
from tests.conftest import REPO, require_nix, write_files

#: A space, double quotes, a `$` that a shell or Nix would expand, and letters beyond ASCII.
AWKWARD = 'Projekt 2 "neu" $x ü'

#: What a flake input needs of the checkout (as tests/test_flake.py copies it).
FLAKE_FILES = ("flake.nix", "pyproject.toml", "nix", "repx", "repx_py")


def init_lab(parent: Path, name: str = AWKWARD) -> Path:
    """``repx init NAME`` in ``parent``: the scaffold's lab (8 jobs, awk only)."""
    repx("init", name, cwd=parent)
    return parent / name


# --------------------------------------------------------------------- awkward names


@pytest.mark.nix
def test_lab_store_and_result_link_in_awkward_folders(tmp_path: Path) -> None:
    """`repx init` then `repx build` in `Projekt 2 "neu" $x ü`, with a store in another
    awkward folder: the jobs run, `result` is linked beside the lab, the store is where
    it was named."""
    require_nix()
    lab = init_lab(tmp_path)
    assert "lab.nix" in os.listdir(lab)
    store = tmp_path / "St ore 'x' $HOME é" / "st"
    first = repx("build", "--store", str(store), cwd=lab)
    assert "8 executed, 0 up to date, 0 failed" in first.stdout, first.stderr
    link = lab / "result"
    assert link.is_symlink() and os.readlink(link).startswith("/nix/store/")
    assert json.loads((link / "lab.json").read_text())  # the built lab itself
    assert (store / "db").is_dir() and not (lab / ".repx").exists()
    again = repx("build", "--store", str(store), cwd=lab)
    assert "0 executed, 8 up to date" in again.stdout
    status = repx("status", "--store", str(store), cwd=lab).stdout
    assert any(line.split()[:2] == ["sweep", "8"] for line in status.splitlines()), status
    # The store named through the environment.
    listed = repx("list", "jobs", "--status", "succeeded", "--json", cwd=lab,
                  env={"REPX_STORE": str(store)})
    assert len(json.loads(listed.stdout)) == 8


@pytest.mark.nix
def test_nixpkgs_in_an_awkward_folder(make_lab, tmp_path: Path) -> None:
    """`--nixpkgs "…/nix pkgs "q" $y ö"` is the package set the stages get."""
    require_nix()
    nixpkgs = tmp_path / 'nix pkgs "q" $y ö'
    nixpkgs.mkdir()
    host_set = json.dumps(str(NIX_DIR / "pkgs"))
    (nixpkgs / "default.nix").write_text(
        f'args: import (/. + {host_set}) args // {{ origin = "the given nixpkgs"; }}\n')
    folder = make_lab({
        "run.nix": """
            { pkgs, repx-lib, ... }:
            { name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }
        """,
        "stage.nix": """
            { pkgs }:
            {
              pname = "work";
              params = { origin = pkgs.origin or "the host set"; };
              outputs = { result = "$out/result.txt"; };
              run = { outputs, params, ... }: ''
                echo "${params.origin}" > "${outputs.result}"
              '';
            }
        """,
    })
    moved = tmp_path / AWKWARD
    shutil.move(folder, moved)
    [default] = json.loads(repx("list", "jobs", "--json", cwd=moved).stdout)
    assert default["params"] == {"origin": "the host set"}
    [given] = json.loads(repx("list", "jobs", "--json", "--nixpkgs", str(nixpkgs),
                              cwd=moved).stdout)
    assert given["params"] == {"origin": "the given nixpkgs"}
    # The same through REPX_NIXPKGS, and a missing one is named.
    [from_env] = json.loads(repx("list", "jobs", "--json", cwd=moved,
                                 env={"REPX_NIXPKGS": str(nixpkgs)}).stdout)
    assert from_env["params"] == given["params"]
    missing = repx("lab", "build", "--nixpkgs", str(tmp_path / "nope $z"), cwd=moved,
                   check=False)
    assert missing.returncode == 2 and "nope $z" in missing.stderr


@pytest.fixture(scope="module")
def repx_flake_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repx flake's files, copied: a ``path:`` input of the checkout would copy its venv
    into the Nix store."""
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


def awkward_flake_lab(folder: Path, repx_flake: Path) -> Path:
    """`repx init --flake` in ``folder``, its repx input pointed at ``repx_flake``."""
    repx("init", str(folder), "--flake", "--name", "awkward", cwd=folder.parent)
    flake = folder / "flake.nix"
    url = flake.read_text().split('inputs.repx.url = "', 1)[1].split('"', 1)[0]
    flake.write_text(flake.read_text().replace(url, f"path:{repx_flake}"))
    return folder


def git_add_all(folder: Path) -> None:
    git = shutil.which("git")
    assert git is not None, "git is needed to test a flake lab in a git checkout"
    quiet = {"capture_output": True, "check": True, "cwd": folder}
    subprocess.run([git, "init", "-q"], **quiet)
    subprocess.run([git, "add", "."], **quiet)


@pytest.mark.nix
def test_flake_lab_in_an_awkward_folder(repx_flake_copy: Path, tmp_path: Path) -> None:
    """A flake lab in `Projekt 2 "neu" $x ü` builds: Nix reads `DIR#lab` as a URL, which
    such a folder is not, so repx builds `.#lab` in it. Inside a git checkout too; a
    checkout whose own path is awkward is a limit of Nix 2.8, said as such."""
    lab = awkward_flake_lab(tmp_path / AWKWARD, repx_flake_copy)
    built = json.loads(repx("lab", "build", "-f", "flake.nix", "--impure", "--json",
                            cwd=lab).stdout)
    assert built["jobs"] == 8 and (lab / "result" / "lab.json").is_file()
    via_lab_file = json.loads(repx("lab", "build", "--json", cwd=lab).stdout)
    assert via_lab_file["jobs"] == 8

    # An awkward folder inside a git checkout (Nix then sees tracked files only).
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    inside = awkward_flake_lab(checkout / AWKWARD, repx_flake_copy)
    git_add_all(checkout)
    in_git = json.loads(repx("lab", "build", "-f", "flake.nix#lab", "--impure", "--json",
                             "-o", "result-git", cwd=inside).stdout)
    assert in_git["jobs"] == 8 and (inside / "result-git").is_symlink()

    # The checkout itself has the awkward name: Nix 2.8 cannot fetch it; the message says
    # why and what works instead.
    git_add_all(lab)
    refused = repx("lab", "build", "-f", "flake.nix", "--impure", cwd=lab, check=False)
    assert refused.returncode == 2
    assert "is not a valid URL" in refused.stderr
    assert f"hint: Nix reads the git checkout {lab} as a URL" in refused.stderr
    assert "-f lab.nix" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.nix
def test_entry_point_takes_a_path_value_and_refuses_a_relative_string(tmp_path: Path) -> None:
    """nix/entry.nix: repx passes the lab file as a string; a path value (`--arg`, what
    older callers and bench/ pass) still works; a relative string is named, not guessed."""
    require_nix()
    lab = init_lab(tmp_path, "plain")
    entry = str(NIX_DIR / "entry.nix")

    def instantiate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nix-instantiate", entry, *args, *NIX_OPTIONS], cwd=lab,
                              capture_output=True, text=True, check=False)

    as_path = instantiate("--arg", "repxLabFile", str(lab / "lab.nix"))
    as_string = instantiate("--argstr", "repxLabFile", str(lab / "lab.nix"))
    assert as_path.returncode == 0, as_path.stderr
    assert as_string.stdout == as_path.stdout and as_path.stdout.strip().endswith(".drv")
    relative = instantiate("--argstr", "repxLabFile", "lab.nix")
    assert relative.returncode != 0
    assert "repxLabFile must be an absolute path" in relative.stderr


# ------------------------------------------------------------ lookup from a subfolder


@pytest.mark.nix
def test_commands_in_a_subfolder_use_the_lab_above(tmp_path: Path) -> None:
    """From `lab/stages/`: the lab, its `result` link and its store are the lab folder's."""
    require_nix()
    lab = init_lab(tmp_path, "lab")
    stages = lab / "stages"
    built = repx("build", cwd=stages)
    assert "8 executed, 0 up to date, 0 failed" in built.stdout, built.stderr
    assert (lab / "result" / "lab.json").is_file() and not (stages / "result").exists()
    assert (lab / ".repx" / "db").is_dir() and not (stages / ".repx").exists()
    # The jobs ran from stages/ are the lab's: a build in the lab's folder has nothing to do.
    assert "0 executed, 8 up to date" in repx("build", cwd=lab).stdout

    verbose = repx("-v", "status", cwd=stages)
    assert f"repx: store: {lab / '.repx'} (the store of the lab above)" in verbose.stderr
    assert any(line.split()[:3] == ["sweep", "8", "8"] for line in verbose.stdout.splitlines())
    listing = repx("-v", "list", "runs", cwd=stages)
    assert f"repx: lab: {lab / 'lab.nix'} (found above {stages}, in {lab})" in listing.stderr
    assert "sweep" in listing.stdout
    # In the lab's own folder, -v names the lab without "found above".
    here = repx("-v", "list", "runs", cwd=lab)
    assert f"repx: lab: {lab / 'lab.nix'}\n" in here.stderr
    # A lab named with -f has its store beside it too: lab/.repx, with the 8 jobs.
    named = repx("list", "jobs", "-f", "../lab.nix", "--status", "succeeded", cwd=stages)
    assert named.stdout.splitlines()[-1].startswith("8 jobs: "), named.stdout
    assert not (stages / ".repx").exists()


def test_lookup_stops_at_the_repository_root(tmp_path: Path) -> None:
    """A lab.nix above a git checkout is not the checkout's: the walk ends at `.git`."""
    write_files(tmp_path, {"lab.nix": "{ }\n", "repo/sub/deeper/notes.txt": "x\n"})
    (tmp_path / "repo" / ".git").mkdir()
    deeper = tmp_path / "repo" / "sub" / "deeper"
    with pytest.raises(LabError) as error:
        find_lab_source(None, deeper)
    assert f"no lab found: {deeper} has no lab.nix" in error.value.message
    assert f"nor has any folder above it up to {tmp_path / 'repo'}" in error.value.message
    assert default_store_dir(deeper) == deeper / ".repx"
    # Without the .git, the lab above is found, and its store is the default.
    (tmp_path / "repo" / ".git").rmdir()
    found = find_lab_source(None, deeper)
    assert found.lab_file == tmp_path / "lab.nix" and found.lab_root == tmp_path
    assert default_store_dir(deeper) == tmp_path / ".repx"
    # A `.git` file (a worktree, a submodule) is a repository root too; the root's own lab
    # is still found.
    write_files(tmp_path, {"repo/.git": "gitdir: elsewhere\n", "repo/lab.nix": "{ }\n"})
    assert find_lab_source(None, deeper).lab_file == tmp_path / "repo" / "lab.nix"


def test_nearest_lab_and_candidate_order(tmp_path: Path) -> None:
    """The nearest folder with a lab file wins; in a folder, lab.nix, then flake.nix, then
    nix/lab.nix; a lab's nix/ folder belongs to the lab (same store, same root)."""
    (tmp_path / ".git").mkdir()  # where the walk ends, whatever is above the test's folder
    write_files(tmp_path, {
        "outer/lab.nix": "{ }\n",
        "outer/inner/flake.nix": "{ }\n",
        "outer/inner/stages/x.nix": "{ }\n",
        "third/nix/lab.nix": "{ }\n",
        "third/runs/r.nix": "{ }\n",
    })
    inner = find_lab_source(None, tmp_path / "outer" / "inner" / "stages")
    assert inner.lab_file == tmp_path / "outer" / "inner" / "flake.nix" and inner.is_flake
    assert find_lab_upward(tmp_path / "outer").lab_file == tmp_path / "outer" / "lab.nix"
    third = tmp_path / "third"
    for start in (third, third / "runs", third / "nix"):
        found = find_lab_upward(start)
        assert found is not None, start
        assert (found.lab_file, found.lab_root) == (third / "nix" / "lab.nix", third), start
        assert default_store_dir(start) == third / ".repx"
    # A folder named nix with its own lab.nix beside a real lab file above is its own lab.
    write_files(tmp_path, {"third/lab.nix": "{ }\n"})
    assert find_lab_upward(third / "nix").lab_root == third / "nix"
    assert find_lab_upward(tmp_path) is None
