"""gc roots and ``repx gc``: what is kept, what is removed, and what it costs a build.

Real labs (real Nix) and real LMDB stores; store state is written as the executor writes it
(:func:`tests.test_inspect.record_job`).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from repx.errors import UsageError
from repx.lab import LabOptions
from repx.lab.expand import load_job_graph
from repx.report.store_views import human_bytes
from repx.store import Status, Store, gc, layout
from tests.conftest import EXAMPLES, REPO, require_nix
from tests.test_examples import REPX
from tests.test_inspect import (
    BuiltLab,
    build_example,
    dead_pid,
    record_graph_job,
    record_job,
    run_repx,
)


@pytest.fixture(scope="module")
def simple(tmp_path_factory: pytest.TempPathFactory) -> BuiltLab:
    return build_example("simple", tmp_path_factory.mktemp("gc"))


@pytest.fixture(scope="module")
def sg_lab(tmp_path_factory: pytest.TempPathFactory) -> BuiltLab:
    return build_example("scatter-gather", tmp_path_factory.mktemp("gc-sg"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / ".repx")
    yield s
    s.close()


def files_of(store: Store) -> set[str]:
    return set(p.name for p in (store.root / "outputs").iterdir())


# ----------------------------------------------------------------------- build roots


@pytest.mark.nix
def test_register_build_root_records_the_labs_jobs_once(simple: BuiltLab, store: Store) -> None:
    gc.register_build_root(store, simple.graph)
    (root,) = store.roots()
    assert root.lab_path == simple.path and not root.pinned
    assert root.name == Path(simple.path).name
    meta = store.get_meta(gc.root_jobs_key(simple.path))
    assert meta is not None
    assert set(meta["ids"].split("\n")) == set(simple.graph.jobs)
    assert meta["count"] == 3 and meta["sg"] == ""
    # A rebuild of the same lab changes nothing (not even the root's time).
    gc.register_build_root(store, simple.graph)
    assert store.roots() == [root]
    # A pinned root (under its own name) is not joined by an unpinned one on rebuild.
    gc.pin_lab(store, simple.graph, "paper")
    gc.register_build_root(store, simple.graph)
    assert [(r.name, r.pinned) for r in store.roots()] == [("paper", True)]


@pytest.mark.nix
def test_register_build_root_lists_scatter_gather_jobs(sg_lab: BuiltLab, store: Store) -> None:
    gc.register_build_root(store, sg_lab.graph)
    meta = store.get_meta(gc.root_jobs_key(sg_lab.path))
    assert meta is not None
    assert sorted(meta["sg"].split("\n")) == sorted(
        j.id for j in sg_lab.graph.jobs.values() if j.kind == "scatter-gather")
    assert len(meta["sg"].split("\n")) == 2


def fake_graph(n: int, lab: str) -> SimpleNamespace:
    """What register_build_root reads of a graph (lab.path, jobs with kind), for n jobs."""
    jobs = {f"{i:032d}-stage{i % 7}-1.0": SimpleNamespace(kind="simple") for i in range(n)}
    return SimpleNamespace(lab=SimpleNamespace(path=Path(lab)), jobs=jobs)


def test_register_build_root_is_cheap_for_20000_jobs(store: Store) -> None:
    for i in range(50):  # a store that has seen many labs
        gc.register_build_root(store, fake_graph(10, f"/nix/store/{i:032d}-repx-lab"))
    graph = fake_graph(20_000, "/nix/store/" + "z" * 32 + "-repx-lab")
    started = time.perf_counter()
    gc.register_build_root(store, graph)  # type: ignore[arg-type]
    new = time.perf_counter() - started
    noop = []
    for _ in range(5):
        started = time.perf_counter()
        gc.register_build_root(store, graph)  # type: ignore[arg-type]
        noop.append(time.perf_counter() - started)
    meta = store.get_meta(gc.root_jobs_key(str(graph.lab.path)))
    assert meta is not None and meta["count"] == 20_000
    assert len(store.roots()) == 51
    # The build's whole budget for a no-op rebuild of 20 000 jobs is 0.5 s.
    assert min(noop) < 0.01, noop
    assert new < 0.2, new


# -------------------------------------------------------------------------------- collect


@pytest.mark.nix
def test_gc_removes_what_no_root_reaches_and_frees_the_bytes(
        simple: BuiltLab, store: Store, tmp_path: Path) -> None:
    g = simple.graph
    gc.register_build_root(store, g)
    for job in g.jobs.values():
        record_graph_job(store, g, job, size=1000)
    old = [record_job(store, f"{c * 32}-old-1.0", lab="/nix/store/gone-repx-lab",
                      files={"big.bin": b"o" * 4096}, stdout=b"12345")
           for c in "ab"]
    orphan = store.root / "outputs" / "orphan-folder"
    (orphan / "out").mkdir(parents=True)
    (orphan / "out" / "junk").write_bytes(b"j" * 10)
    # What the old jobs' folders hold on disk (out/, logs and what the executor keeps).
    expected_bytes = sum(gc.dir_size(store.job_dir(r.job_id)) for r in old) + 10
    assert expected_bytes > 2 * (4096 + 5) + 10

    dry = gc.collect(store, dry_run=True)
    assert sorted(i for i, _ in dry.removed) == sorted(r.job_id for r in old)
    assert dry.orphans == [("orphan-folder", 10)]
    assert dry.freed_bytes == expected_bytes and dry.reachable == 3
    assert len(list(store.records())) == 5 and orphan.exists()  # nothing removed

    out, _ = run_repx("gc", "--yes", "--store", str(store.root), cwd=tmp_path)
    assert f"gc: removed 2 jobs and 1 orphan folder, freed {human_bytes(expected_bytes)}; " \
           "kept 3 jobs reachable from 1 root" in out
    assert {r.job_id for r in store.records()} == set(g.jobs)
    assert files_of(store) == set(g.jobs)
    out, _ = run_repx("gc", "--dry-run", "--json", "--store", str(store.root), cwd=tmp_path)
    assert json.loads(out)["freed_bytes"] == 0


@pytest.mark.nix
def test_gc_keeps_the_jobs_of_a_lab_nix_has_deleted(simple: BuiltLab, store: Store,
                                                    tmp_path: Path) -> None:
    # A lab outside /nix/store stands in for one nix-collect-garbage removes later.
    copy = tmp_path / "lab-copy"
    shutil.copytree(simple.path, copy, symlinks=True)
    graph = load_job_graph(copy)
    assert set(graph.jobs) == set(simple.graph.jobs)
    gc.register_build_root(store, graph)
    for job in graph.jobs.values():
        record_graph_job(store, simple.graph, job)  # records name another lab
    shutil.rmtree(copy)
    result = gc.collect(store)
    assert result.removed == [] and result.reachable == 3
    assert {r.job_id for r in store.records()} == set(graph.jobs)
    out, _ = run_repx("gc", "roots", "--store", str(store.root), cwd=tmp_path)
    assert f"{copy} (gone from disk)" in out and "  3  " in out


@pytest.mark.nix
def test_gc_keeps_scatter_gather_units(sg_lab: BuiltLab, store: Store) -> None:
    g = sg_lab.graph
    sg = next(j for j in g.jobs.values() if j.pname == "partial-sums")
    gc.register_build_root(store, g)
    record_graph_job(store, g, sg)
    other_lab = "/nix/store/" + "o" * 32 + "-repx-lab"
    # Units listed in units.json; their records name another lab (run by an earlier lab
    # whose root is gone), so only units.json keeps them.
    listed = {"scatter": "s" * 32 + "-partial-sums-scatter",
              "branches": [{"item": 1, "steps": {"square": "q" * 32 + "-square",
                                                 "double": "d" * 32 + "-double"}}]}
    for unit_id in layout.unit_ids(listed):
        record_job(store, unit_id, lab=other_lab, run=sg.run, stage="partial-sums/x",
                   files={"v": b"1"})
    (store.meta_dir(sg.id) / "units.json").write_text(json.dumps(listed))
    # A unit of this lab not (yet) in units.json: kept because its lab is a root.
    pending = record_job(store, "p" * 32 + "-square", lab=str(g.lab.path), files={"v": b"2"})
    stray = record_job(store, "x" * 32 + "-square", lab=other_lab, files={"v": b"3"})
    result = gc.collect(store)
    assert [i for i, _ in result.removed] == [stray.job_id]
    kept = {r.job_id for r in store.records()}
    assert kept == {sg.id, pending.job_id, *layout.unit_ids(listed)}

    # Once the lab is no root, the SG job and its units go too.
    gc.unpin(store, Path(sg_lab.path).name)
    assert "ids" not in (store.get_meta(gc.root_jobs_key(sg_lab.path)) or {})
    result = gc.collect(store)
    assert len(result.removed) == 5
    assert list(store.records()) == [] and files_of(store) == set()


def test_gc_never_removes_a_job_running_under_a_live_process(store: Store,
                                                             tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = record_job(store, "l" * 32 + "-live-1.0", status=Status.RUNNING,
                          pid=sleeper.pid, files={"x": b"1"})
        queued = record_job(store, "q" * 32 + "-queued-1.0", status=Status.QUEUED,
                            pid=sleeper.pid)
        stale = record_job(store, "s" * 32 + "-stale-1.0", status=Status.RUNNING,
                           pid=dead_pid(), files={"x": b"22"})
        result = gc.collect(store)
        assert sorted(result.kept_running) == sorted([live.job_id, queued.job_id])
        assert [i for i, _ in result.removed] == [stale.job_id]
        assert store.get(live.job_id) is not None and store.out_dir(live.job_id).exists()
        out, _ = run_repx("gc", "--dry-run", "--store", str(store.root), cwd=tmp_path)
        assert "and 2 running" in out
    finally:
        sleeper.kill()
        sleeper.wait()
    result = gc.collect(store)
    assert sorted(i for i, _ in result.removed) == sorted([live.job_id, queued.job_id])


@pytest.mark.nix
def test_a_root_without_recorded_ids_is_expanded_once(simple: BuiltLab, store: Store) -> None:
    store.add_root(simple.path)  # as an older repx, or a hand, would
    for job in simple.graph.jobs.values():
        record_graph_job(store, simple.graph, job)
    record_job(store, "z" * 32 + "-junk-1.0")
    dry = gc.collect(store, dry_run=True)
    assert [i for i, _ in dry.removed] == ["z" * 32 + "-junk-1.0"]
    assert store.get_meta(gc.root_jobs_key(simple.path)) is None  # a dry run writes nothing
    gc.collect(store)
    meta = store.get_meta(gc.root_jobs_key(simple.path))
    assert meta is not None and meta["count"] == 3
    assert {r.job_id for r in store.records()} == set(simple.graph.jobs)


# ---------------------------------------------------------------------- pin, unpin, roots


@pytest.mark.nix
def test_pin_unpin_roots_and_keep_recent_from_the_cli(simple: BuiltLab, store: Store,
                                                      tmp_path: Path) -> None:
    g = simple.graph
    st = ["--store", str(store.root)]
    # Three older labs (unpinned build roots), each with one job of its own.
    for i in range(3):
        lab = f"/nix/store/{i:032d}-repx-lab"
        graph = SimpleNamespace(lab=SimpleNamespace(path=Path(lab)),
                                jobs={f"{i:032d}-old-1.0": SimpleNamespace(kind="simple")})
        gc.register_build_root(store, graph)  # type: ignore[arg-type]
        record_job(store, f"{i:032d}-old-1.0", lab=lab, files={"f": b"x" * 100})
        time.sleep(0.01)
    gc.register_build_root(store, g)
    for job in g.jobs.values():
        record_graph_job(store, g, job)

    out, _ = run_repx("gc", "pin", "paper-v1", "--lab", "result", *st, cwd=simple.folder)
    assert out.strip() == f"pinned paper-v1 ({simple.path}, 3 jobs)"
    roots = json.loads(run_repx("gc", "roots", "--json", *st, cwd=tmp_path)[0])
    assert [(r["name"], r["pinned"], r["jobs"]) for r in roots] == [
        (f"{i:032d}-repx-lab", False, 1) for i in range(3)] + [("paper-v1", True, 3)]
    assert roots[-1]["lab"] == simple.path and roots[-1]["lab_exists"]

    _, err = run_repx("gc", "pin", f"{0:032d}-repx-lab", "--lab", "result", *st,
                      cwd=simple.folder, code=2)
    assert "already holds lab /nix/store/" in err

    # --keep-recent 1 drops the two oldest unpinned roots; the pinned one stays.
    out, _ = run_repx("gc", "--keep-recent", "1", "--dry-run", *st, cwd=tmp_path)
    assert out.count("would remove gc root") == 2 and "would remove 2 jobs" in out
    assert len(store.roots()) == 4
    out, _ = run_repx("gc", "--keep-recent", "1", "--yes", *st, cwd=tmp_path)
    assert "removed 2 jobs" in out
    assert [r.name for r in store.roots()] == [f"{2:032d}-repx-lab", "paper-v1"]
    assert {r.job_id for r in store.records()} == {f"{2:032d}-old-1.0", *g.jobs}

    _, err = run_repx("gc", "unpin", "nope", *st, cwd=tmp_path, code=2)
    assert "no gc root named 'nope'" in err
    # Unpinning withdraws the pin, not the lab: it is the automatic root of its build again,
    # dated by that build (newer than the three old labs), so gc keeps its jobs.
    out, _ = run_repx("gc", "unpin", "paper", *st, cwd=tmp_path)
    auto = Path(simple.path).name
    assert out.strip() == (f"unpinned paper-v1: lab {simple.path} is an ordinary gc root "
                           f"again ({auto}; `repx gc unpin {auto}` removes it)")
    assert [(r.name, r.pinned) for r in store.roots()] == [
        (f"{2:032d}-repx-lab", False), (auto, False)]
    out, _ = run_repx("gc", "--yes", *st, cwd=tmp_path)
    assert "removed 0 jobs" in out
    # Unpinning the automatic root removes it; gc (run outside the lab's folder) then
    # collects the lab's jobs.
    out, _ = run_repx("gc", "unpin", auto, *st, cwd=tmp_path)
    assert out.strip() == f"removed gc root {auto} ({simple.path})"
    out, _ = run_repx("gc", "--yes", *st, cwd=tmp_path)
    assert "removed 3 jobs" in out
    assert {r.job_id for r in store.records()} == {f"{2:032d}-old-1.0"}
    _, err = run_repx("gc", "--keep-recent", "-1", *st, cwd=tmp_path, code=2)
    assert "--keep-recent must be 0 or more" in err


def test_pin_refuses_bad_names(store: Store) -> None:
    graph = SimpleNamespace(lab=SimpleNamespace(path=Path("/nix/store/x-repx-lab")), jobs={})
    with pytest.raises(UsageError, match="invalid gc root name"):
        gc.pin_lab(store, graph, " padded ")  # type: ignore[arg-type]
    root = gc.pin_lab(store, graph)  # type: ignore[arg-type]
    assert root.name == "x-repx-lab" and root.pinned


def test_gc_help_says_every_built_lab_stays_a_root(tmp_path: Path) -> None:
    out, _ = run_repx("gc", "--help", cwd=tmp_path)
    assert "Every lab you build stays a gc root" in " ".join(out.split())
    assert "Example: repx gc --dry-run" in out


# --------------------------------------------------------------------- with repx build


@pytest.mark.nix
def test_gc_after_repx_build_keeps_scatter_gather_units_until_unpinned(
        tmp_path: Path) -> None:
    require_nix()
    folder = tmp_path / "scatter-gather"
    shutil.copytree(EXAMPLES / "scatter-gather", folder, symlinks=True,
                    ignore=shutil.ignore_patterns("result", "result-*"))
    run_repx("build", cwd=folder)
    with Store(folder / ".repx", readonly=True) as store:
        records = {r.job_id: r for r in store.records()}
        (root,) = store.roots()
        graph = load_job_graph(root.lab_path)
        sg_units = [i for j in graph.jobs.values() if j.kind == "scatter-gather"
                    for i in layout.unit_ids(layout.read_units(store.meta_dir(j.id), j.id) or {})]
    # 4 lab jobs plus every unit of its two scatter-gather jobs, each a record of its own.
    assert len(records) == 4 + len(sg_units) and set(sg_units) <= set(records)
    roots = json.loads(run_repx("gc", "roots", "--json", cwd=folder)[0])
    assert [(r["jobs"], r["pinned"]) for r in roots] == [(4, False)]

    out, _ = run_repx("gc", cwd=folder)
    assert f"removed 0 jobs and 0 orphan folders, freed 0 B; kept {len(records)} jobs" in out
    run_repx("gc", "pin", "keep", cwd=folder)
    assert [(r["name"], r["pinned"]) for r in
            json.loads(run_repx("gc", "roots", "--json", cwd=folder)[0])] == [("keep", True)]
    run_repx("build", cwd=folder)  # a rebuild adds no unpinned twin of the pinned root
    assert len(json.loads(run_repx("gc", "roots", "--json", cwd=folder)[0])) == 1

    run_repx("gc", "unpin", "keep", cwd=folder)
    run_repx("gc", "unpin", root.name, cwd=folder)  # the automatic root unpinning left
    assert json.loads(run_repx("gc", "roots", "--json", cwd=folder)[0]) == []
    # No root, but ./result is the current lab: gc in its folder keeps everything.
    out, _ = run_repx("gc", "--yes", cwd=folder)
    assert f"removed 0 jobs and 0 orphan folders, freed 0 B; kept {len(records)} jobs " \
           "reachable from 0 roots and the current lab" in out
    st = ["--store", str(folder / ".repx")]
    out, _ = run_repx("gc", "--dry-run", *st, cwd=tmp_path)
    assert f"would remove {len(records)} jobs" in out
    out, _ = run_repx("gc", "--yes", *st, cwd=tmp_path)
    assert f"removed {len(records)} jobs" in out
    assert list((folder / ".repx" / "outputs").iterdir()) == []
    # The next build registers the lab again and runs everything anew.
    out, _ = run_repx("build", cwd=folder)
    assert "4 executed, 0 up to date" in out


# ------------------------------------------------ the current lab, and asking before removing


def fill_store(store: Store, lab: BuiltLab) -> list[str]:
    """The lab's three jobs, recorded as its build records them, plus two jobs of an old
    lab no root reaches, of 1 MiB each; the old jobs' ids."""
    for job in lab.graph.jobs.values():
        record_graph_job(store, lab.graph, job, size=1000)
    return [record_job(store, f"{c * 32}-old-1.0", lab="/nix/store/gone-repx-lab",
                       files={"big.bin": b"o" * 2**20}).job_id for c in "ab"]


def older_roots(store: Store, count: int) -> list[str]:
    """``count`` unpinned roots of other labs, registered after the current lab's (so the
    current lab is the oldest root); their names."""
    names = []
    for i in range(count):
        time.sleep(0.01)
        lab = f"/nix/store/{i:032d}-repx-lab"
        graph = SimpleNamespace(lab=SimpleNamespace(path=Path(lab)),
                                jobs={f"{i:032d}-other-1.0": SimpleNamespace(kind="simple")})
        gc.register_build_root(store, graph)  # type: ignore[arg-type]
        record_job(store, f"{i:032d}-other-1.0", lab=lab, files={"f": b"x"})
        names.append(Path(lab).name)
    return names


@pytest.mark.nix
def test_pin_then_unpin_leaves_the_lab_an_automatic_root_and_gc_keeps_it(
        simple: BuiltLab, store: Store) -> None:
    g = simple.graph
    st = ["--store", str(store.root)]
    gc.register_build_root(store, g)
    built = store.roots()[0]
    old = fill_store(store, simple)
    run_repx("gc", "pin", "p", "--lab", "result", *st, cwd=simple.folder)
    run_repx("gc", "unpin", "p", *st, cwd=simple.folder)
    (root,) = store.roots()
    assert (root.name, root.lab_path, root.pinned) == (built.name, simple.path, False)
    # Dated by its build (when the build recorded the lab's jobs), not by the unpin.
    meta = store.get_meta(gc.root_jobs_key(simple.path))
    assert meta is not None and root.created == meta["created"] <= built.created
    out, _ = run_repx("gc", "--yes", *st, cwd=simple.folder)
    assert "gc: removed 2 jobs" in out and "kept 3 jobs reachable from 1 root" in out
    assert {r.job_id for r in store.records()} == set(g.jobs)
    assert not set(old) & files_of(store)
    # A lab pinned under two names: unpinning one leaves the other pin, adds no root.
    run_repx("gc", "pin", "a", "--lab", "result", *st, cwd=simple.folder)
    run_repx("gc", "pin", "b", "--lab", "result", *st, cwd=simple.folder)
    assert gc.unpin(store, "a").automatic is None
    assert [(r.name, r.pinned) for r in store.roots()] == [("b", True)]


@pytest.mark.nix
def test_keep_recent_never_drops_the_current_lab(simple: BuiltLab, store: Store,
                                                 tmp_path: Path) -> None:
    g = simple.graph
    st = ["--store", str(store.root)]
    gc.register_build_root(store, g)
    fill_store(store, simple)
    others = older_roots(store, 2)
    # In the lab's folder ./result is the current lab: --keep-recent 1 keeps it (oldest
    # root though it is) and the newest other root; the older other root goes.
    out, _ = run_repx("gc", "--keep-recent", "1", "--yes", *st, cwd=simple.folder)
    assert f"removed gc root {others[0]}" in out and "removed 3 jobs" in out
    assert [r.name for r in store.roots()] == [Path(simple.path).name, others[1]]
    assert {r.job_id for r in store.records()} == {*g.jobs, f"{1:032d}-other-1.0"}
    # --keep-recent 0 drops every other unpinned root, never the current lab's.
    out, _ = run_repx("gc", "--keep-recent", "0", "--yes", *st, cwd=simple.folder)
    assert [r.name for r in store.roots()] == [Path(simple.path).name]
    assert {r.job_id for r in store.records()} == set(g.jobs)
    # --lab names the current lab from anywhere; without it (and no ./result) nothing is
    # current, and the lab's root goes like any other.
    out, _ = run_repx("gc", "--keep-recent", "0", "--dry-run", "--lab",
                      str(simple.folder / "result"), *st, cwd=tmp_path)
    assert "would remove 0 jobs" in out
    out, _ = run_repx("gc", "--keep-recent", "0", "--dry-run", *st, cwd=tmp_path)
    assert f"would remove gc root {Path(simple.path).name}" in out
    assert "would remove 3 jobs" in out


@pytest.mark.nix
def test_the_current_lab_is_kept_without_any_root(simple: BuiltLab, store: Store,
                                                  tmp_path: Path) -> None:
    old = fill_store(store, simple)
    assert store.roots() == []
    result = gc.collect(store, keep_labs=[simple.path])
    assert sorted(i for i, _ in result.removed) == sorted(old)
    assert result.kept_labs == [simple.path] and result.reachable == 3
    assert store.get_meta(gc.root_jobs_key(simple.path)) is None  # nothing written for it
    assert gc.current_lab(LabOptions(), cwd=simple.folder) == Path(simple.path)
    assert gc.current_lab(LabOptions(), cwd=tmp_path) is None


@pytest.mark.nix
def test_gc_in_a_subfolder_of_the_lab_takes_the_labs_result_as_current(
        tmp_path: Path) -> None:
    """gc run in ``stages/`` finds the lab upward, as the store's default does: the lab's
    ``result`` is the current lab, as in the lab's folder. The lab file no longer builds,
    so gc could not have found those jobs by building it anew."""
    lab = build_example("simple", tmp_path)
    # A fresh store where the lab's folder keeps it (the checkout's example may hold one).
    shutil.rmtree(lab.folder / ".repx", ignore_errors=True)
    with Store(lab.folder / ".repx") as store:
        old = fill_store(store, lab)
    (lab.folder / "lab.nix").write_text("{ pkgs, ... }: { this is not nix")
    subfolder = lab.folder / "stages"
    assert gc.current_lab(LabOptions(), cwd=subfolder) == Path(lab.path)
    in_subfolder, _ = run_repx("gc", "--dry-run", cwd=subfolder)
    in_lab_folder, _ = run_repx("gc", "--dry-run", cwd=lab.folder)
    assert in_subfolder == in_lab_folder
    assert "would remove 2 jobs" in in_subfolder and "the current lab" in in_subfolder, \
        in_subfolder
    run_repx("gc", "--yes", cwd=subfolder)
    with Store(lab.folder / ".repx", readonly=True) as store:
        assert {r.job_id for r in store.records()} == set(lab.graph.jobs)
        assert not set(old) & files_of(store)


def test_a_lab_file_that_does_not_build_stops_gc(store: Store, tmp_path: Path) -> None:
    require_nix()
    record_job(store, "c" * 32 + "-old-1.0", files={"f": b"x"})
    (tmp_path / "lab.nix").write_text("{ pkgs, ... }: { this is not nix")
    _, err = run_repx("gc", "--yes", "--store", str(store.root), cwd=tmp_path, code=2)
    assert "repx gc keeps the current lab's jobs, and cannot tell which they are" in err
    assert str(tmp_path / "lab.nix") in err and "--lab DIR" in err
    assert len(list(store.records())) == 1


@pytest.mark.nix
def test_without_a_terminal_gc_needs_yes(simple: BuiltLab, store: Store) -> None:
    gc.register_build_root(store, simple.graph)
    old = fill_store(store, simple)
    st = ["--store", str(store.root)]
    out, err = run_repx("gc", *st, cwd=simple.folder, code=4)
    assert [line.split()[:3] for line in out.splitlines()[:2]] == [
        ["would", "remove", i] for i in sorted(old)]
    assert "gc: would remove 2 jobs and 0 orphan folders, would free 2.0 MiB; kept 3 jobs" in out
    assert "gc removed nothing: removing needs confirmation; pass --yes" in err
    data = json.loads(run_repx("gc", "--json", *st, cwd=simple.folder, code=4)[0])
    assert data["dry_run"] is True and data["freed_bytes"] == sum(
        gc.dir_size(store.job_dir(i)) for i in old)
    assert data["kept_labs"] == [simple.path]
    assert len(list(store.records())) == 5  # nothing removed
    # Nothing to remove: nothing to confirm.
    run_repx("gc", "--yes", *st, cwd=simple.folder)
    out, _ = run_repx("gc", *st, cwd=simple.folder)
    assert "gc: removed 0 jobs" in out


def gc_on_a_terminal(store: Store, cwd: Path, answer: bytes) -> tuple[int, str]:
    """Run ``repx gc`` with a pseudo-terminal as stdin/stdout/stderr, answer its prompt
    with ``answer``; (exit code, everything it wrote)."""
    master, slave = os.openpty()
    proc = subprocess.Popen([*REPX, "gc", "--store", str(store.root)], cwd=cwd,
                            stdin=slave, stdout=slave, stderr=slave,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while b"Remove them? [y/N]" not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                seen += os.read(master, 4096)
        os.write(master, answer)
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, seen.decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.nix
def test_on_a_terminal_gc_shows_the_plan_and_asks(simple: BuiltLab, store: Store) -> None:
    gc.register_build_root(store, simple.graph)
    old = fill_store(store, simple)
    code, text = gc_on_a_terminal(store, simple.folder, b"n\n")
    assert code == 4, text
    assert f"would remove {sorted(old)[0]}  1.0 MiB" in text
    assert "gc: would remove 2 jobs and 0 orphan folders, would free 2.0 MiB" in text
    assert text.rstrip().endswith("gc: nothing removed")
    assert len(list(store.records())) == 5
    code, text = gc_on_a_terminal(store, simple.folder, b"y\n")
    assert code == 0, text
    assert "gc: removed 2 jobs and 0 orphan folders, freed 2.0 MiB" in text
    assert {r.job_id for r in store.records()} == set(simple.graph.jobs)


def test_gc_removes_only_what_was_approved(store: Store) -> None:
    first = record_job(store, "a" * 32 + "-old-1.0", files={"f": b"1"})
    plan = gc.collect(store, dry_run=True)
    later = record_job(store, "b" * 32 + "-old-1.0", files={"f": b"2"})
    result = gc.collect(store, approved=plan)
    assert [i for i, _ in result.removed] == [first.job_id]
    assert [r.job_id for r in store.records()] == [later.job_id]
