"""``repx.engine.build`` called as a library: the same decisions as ``repx build``.

A library caller gets the no-op fast path too: ``run_build`` and ``dry_run`` answer a
rebuild with nothing to do from the lab's cached job index, without expanding the lab. That
is observed for real: the lab directory of a finished build is copied and its run
blueprints are deleted, so any attempt to expand it fails; only the index can answer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from repx.engine.build import BuildOptions, dry_run, run_build
from repx.errors import LabError
from repx.lab import LabOptions, open_lab
from repx.store import Status, Store
from tests.conftest import EXAMPLES, require_nix


@pytest.fixture
def simple_lab(tmp_path: Path) -> Path:
    """A copy of examples/simple, built: its folder (the lab is linked at ``result``)."""
    require_nix()
    folder = tmp_path / "simple"
    shutil.copytree(EXAMPLES / "simple", folder, symlinks=True,
                    ignore=shutil.ignore_patterns("result", "result-*", ".repx"))
    return folder


@pytest.mark.nix
def test_run_build_from_a_lab_file_then_nothing_to_do(simple_lab: Path) -> None:
    """A lab file is built, expanded and run; the second call runs nothing."""
    store = simple_lab / ".repx"
    options = LabOptions(lab_file=str(simple_lab / "lab.nix"))
    first = run_build(options, store, BuildOptions(jobs=2))
    graph = open_lab(LabOptions(lab_dir=str(simple_lab / "result")), validate=False)
    assert first.exit_code == 0
    assert sorted(first.executed) == sorted(graph.jobs)
    assert first.up_to_date == [] and first.failed == []
    with Store(store, readonly=True) as opened:
        assert set(opened.statuses(graph.jobs).values()) == {Status.SUCCEEDED}
    second = run_build(options, store, BuildOptions(jobs=2))
    assert second.exit_code == 0
    assert second.executed == []
    assert sorted(second.up_to_date) == sorted(graph.jobs)


@pytest.mark.nix
def test_nothing_to_do_is_answered_without_expanding_the_lab(simple_lab: Path,
                                                             tmp_path: Path) -> None:
    """With the lab a root of the store and every job up to date, neither run_build nor
    dry_run reads the lab's blueprints; --force (which must plan) does, and says so."""
    store = simple_lab / ".repx"
    run_build(LabOptions(lab_file=str(simple_lab / "lab.nix")), store, BuildOptions(jobs=2))
    lab_copy = tmp_path / "lab-copy"
    shutil.copytree((simple_lab / "result").resolve(), lab_copy)
    lab_copy.chmod(0o755)
    graph = open_lab(LabOptions(lab_dir=str(lab_copy)), validate=False)
    # The copy is a new lab path: this build expands it, registers it as a root and
    # writes its index; every job is up to date (same ids).
    options = LabOptions(lab_dir=str(lab_copy))
    registered = run_build(options, str(store), BuildOptions())
    assert registered.executed == [] and sorted(registered.up_to_date) == sorted(graph.jobs)

    runs = lab_copy / "runs"
    runs.chmod(0o755)
    for blueprint in runs.iterdir():
        blueprint.chmod(0o644)
        blueprint.unlink()
    with pytest.raises(LabError):
        open_lab(options, validate=False)  # the lab can no longer be expanded

    noop = run_build(options, str(store), BuildOptions())
    assert noop.exit_code == 0
    assert noop.executed == []
    assert sorted(noop.up_to_date) == sorted(graph.jobs)
    plan = dry_run(options, str(store), BuildOptions())
    assert plan.to_run == []
    assert sorted(plan.up_to_date) == sorted(graph.jobs)
    with pytest.raises(LabError):
        run_build(options, str(store), BuildOptions(force=("simulation",)))


@pytest.mark.nix
def test_a_broken_lab_leaves_no_store_behind(tmp_path: Path) -> None:
    """The store directory is created only once the lab has loaded."""
    require_nix()
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "lab.nix").write_text("{ pkgs, repx-lib, ... }: { lab = 1; }\n")
    store = folder / ".repx"
    with pytest.raises(LabError):
        run_build(LabOptions(lab_file=str(folder / "lab.nix"), out_link=None), store,
                  BuildOptions())
    assert not store.exists()
