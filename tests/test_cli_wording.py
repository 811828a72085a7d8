"""What the CLI says about counts and labs: "1 job" (never "1 jobs"), ``repx cache show``'s
"not a job of this lab" only for a job the current lab does not have, and the store of a
lab named with ``-f`` beside it (as its ``result`` link is).

One lab of one run: a stage with a sweep of ``x`` values (one value at first, so every
count is 1), built with the real CLI on a real store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from repx.display import plural
from tests.buildutil import repx
from tests.conftest import require_nix

RUN_NIX = """
{{ pkgs, repx-lib, ... }}:
{{
  name = "main";
  pipelines = [ ./pipe.nix ];
  params = {{ x = [ {values} ]; }};
}}
"""

STAGE_NIX = """
{ pkgs }:
{
  pname = "square";
  params = { x = 0; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    echo "$(( ${toString params.x} * ${toString params.x} ))" > "${outputs.result}"
  '';
}
"""


def one_job_lab(make_lab: Callable[..., Path], values: str = "2") -> Path:
    return make_lab({"run.nix": RUN_NIX.format(values=values), "stage.nix": STAGE_NIX})


def job_ids(folder: Path) -> list[str]:
    return [job["id"] for job in json.loads(
        repx("list", "jobs", "--json", "--lab", "result", cwd=folder).stdout)]


def test_plural_says_one_job_and_two_jobs() -> None:
    assert [plural(n, "job") for n in (0, 1, 2)] == ["0 jobs", "1 job", "2 jobs"]
    assert plural(1, "branch", "branches") == "1 branch"
    assert plural(3, "branch", "branches") == "3 branches"


@pytest.mark.nix
def test_counts_of_one_are_singular_everywhere(make_lab: Callable[..., Path]) -> None:
    require_nix()
    folder = one_job_lab(make_lab)
    built = repx("lab", "build", cwd=folder).stdout
    assert "  run main: 1 job\n" in built and "1 distinct job\n" in built, built
    assert "1 job would run, 0 up to date" in repx("build", "--dry-run", cwd=folder).stdout
    repx("build", cwd=folder)
    listed = repx("list", "jobs", "--lab", "result", cwd=folder).stdout
    assert listed.splitlines()[-1].startswith("1 job: "), listed
    assert repx("cache", "ls", cwd=folder).stdout.splitlines()[-1].startswith("1 job, ")
    verified = repx("cache", "verify", cwd=folder).stdout
    assert "verified 1 job (" in verified and "1 file," in verified, verified
    gc = repx("gc", "--dry-run", cwd=folder).stdout
    assert "reachable from 1 root" in gc and "1 roots" not in gc, gc
    assert "0 orphan folders" in gc
    for text in (built, listed, verified, gc):
        assert "1 jobs" not in text and "1 roots" not in text


@pytest.mark.nix
def test_cache_show_says_not_of_this_lab_only_for_other_labs_jobs(
        make_lab: Callable[..., Path], tmp_path: Path) -> None:
    require_nix()
    folder = one_job_lab(make_lab)
    repx("build", cwd=folder)
    [old] = job_ids(folder)
    shown = repx("cache", "show", old, cwd=folder)
    assert "not a job of this lab" not in shown.stdout, shown.stdout
    assert "status    succeeded" in shown.stdout
    assert json.loads(repx("cache", "show", old, "--json", cwd=folder).stdout)[
        "in_current_lab"] is True
    # From a subfolder of the lab: the same lab, the same answer.
    (folder / "notes").mkdir()
    assert "not a job of this lab" not in repx("cache", "show", old,
                                               cwd=folder / "notes").stdout

    # The sweep changes: the old job is no longer one of the current lab's.
    (folder / "run.nix").write_text(RUN_NIX.format(values="3"))
    repx("build", cwd=folder)
    [new] = job_ids(folder)
    assert new != old
    assert "(not a job of this lab" in repx("cache", "show", old, cwd=folder).stdout
    assert "not a job of this lab" not in repx("cache", "show", new, cwd=folder).stdout

    # Outside any lab there is nothing to compare with: no claim either way.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = str(folder / ".repx")
    outside = repx("cache", "show", old, "--store", store, cwd=elsewhere)
    assert "not a job of this lab" not in outside.stdout
    assert json.loads(repx("cache", "show", old, "--json", "--store", store,
                           cwd=elsewhere).stdout)["in_current_lab"] is None


@pytest.mark.nix
def test_a_lab_named_with_f_has_its_store_beside_it(make_lab: Callable[..., Path]) -> None:
    require_nix()
    folder = one_job_lab(make_lab, "2 3")
    parent = folder.parent
    built = repx("-v", "build", "-f", f"{folder.name}/lab.nix", cwd=parent)
    assert "2 executed" in built.stdout, built.stderr
    assert (folder / "result" / "lab.json").is_file()
    assert (folder / ".repx" / "db").is_dir() and not (parent / ".repx").exists()
    assert f"repx: store: {folder / '.repx'} (beside the lab file)" in built.stderr
    # Every command with the same -f finds the same store; so does the lab's own folder.
    again = repx("build", "-f", str(folder), cwd=parent)
    assert "0 executed, 2 up to date" in again.stdout, again.stdout
    assert "0 executed, 2 up to date" in repx("build", cwd=folder).stdout
    status = json.loads(repx("status", "--json", "-f", f"{folder.name}/lab.nix",
                             cwd=parent).stdout)
    assert status["store"] == str(folder / ".repx") and status["total"]["succeeded"] == 2
    # --store as typed still wins.
    elsewhere = parent / "other-store"
    repx("build", "-f", f"{folder.name}/lab.nix", "--store", str(elsewhere), cwd=parent)
    assert (elsewhere / "db").is_dir()
