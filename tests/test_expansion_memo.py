"""An expansion that reuses an earlier one's ids gives the very graph a full expansion gives.

Each case expands a lab, edits it (a value changed, added, removed or moved, an axis
grown, a zip row changed, a script changed, an upstream run edited), then expands the
edited lab twice: in full, and with the first expansion's memo. Both graphs must hold the
same jobs in the same order with the same ids, params, sources, wiring, resources and
runs, and every id must be the definition's (tests/test_expand_reference.py); the count of
reused ids shows the memo was really taken where it applies, and left alone where it does
not. Synthetic lab directories as in tests/test_expand.py (no Nix); the last tests go
through the no-op index file and the build's own lookup of the last lab.
"""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Any

import pytest

from repx.engine.build import _expanded
from repx.engine.noop_index import expansion_memo, index_path, write_index
from repx.lab.blueprint import load_lab
from repx.lab.expand import expand_lab
from repx.lab.expansion_memo import ExpansionMemo, RunMemo
from repx.lab.graph import JobGraph, selection_closure
from repx.lab.open import LabOptions
from repx.store import Store
from tests.test_expand import axis, dep, run, stage, write_lab, zip_
from tests.test_expand_reference import chain, check_graph, inter_run


def memo_of(graph: JobGraph) -> ExpansionMemo:
    return ExpansionMemo(list(graph.jobs), dict(graph.expansion_memo))


def job_fields(graph: JobGraph) -> list[tuple[Any, ...]]:
    return [(j.id, j.pname, j.stage, j.runs, j.params, j.param_sources, j.resources,
             j.depends_on, j.upstream, j.inputs) for j in graph.jobs.values()]


def assert_same_graph(reused: JobGraph, full: JobGraph) -> None:
    assert list(reused.jobs) == list(full.jobs)
    assert job_fields(reused) == job_fields(full)
    assert {n: (r.job_ids, r.dependencies) for n, r in reused.runs.items()} == \
        {n: (r.job_ids, r.dependencies) for n, r in full.runs.items()}
    assert reused.expansion_memo == full.expansion_memo
    check_graph(reused)


def expand_edit(tmp_path: Path, before: tuple[dict[str, Any], ...],
                after: tuple[dict[str, Any], ...]) -> tuple[JobGraph, JobGraph, JobGraph]:
    """(the first graph, the edited lab reusing its memo, the edited lab in full)."""
    first = expand_lab(load_lab(write_lab(tmp_path, *before, name="before")))
    edited = load_lab(write_lab(tmp_path, *after, name="after"))
    return first, expand_lab(edited, reuse=memo_of(first)), expand_lab(edited)


def two_axes(xs: list[Any], ys: list[Any]) -> dict[str, Any]:
    """gen(x, y) -> fit(y): fit is memoised on y (one job per y value, not per combination),
    and ``free`` depends on y alone."""
    gen = stage("gen", params={"x": 0, "y": 0}, outputs={"d": "$out/d"})
    fit = stage("fit", params={"y": 0}, inputs={"d": ""}, outputs={"m": "$out/m"},
                deps=[dep("gen", ("d", "d"))])
    free = stage("free", params={"y": 0}, outputs={"f": "$out/f"})
    return run("r", [gen, fit, free], axes=[axis("x", xs), axis("y", ys)])


def zipped(rows: list[tuple[int, str]], extra: list[int]) -> dict[str, Any]:
    s = stage("s", params={"a": 0, "b": "", "c": 0}, outputs={"o": "$out/o"})
    return run("z", [s], axes=[axis("c", extra)],
               zips=[zip_("ab", a=[a for a, _ in rows], b=[b for _, b in rows])])


def undeclared(values: list[int]) -> dict[str, Any]:
    """A key no stage declares multiplies the combinations; their identical jobs collapse."""
    s = stage("s", params={"v": 0}, outputs={"o": "$out/o"})
    return run("u", [s], axes=[axis("v", [1, 2]), axis("unused", values)])


CASES = [
    pytest.param((chain([1, 2, 3]),), (chain([1, 2, 4]),), True, id="value-changed"),
    pytest.param((chain([1, 2, 3]),), (chain([1, 2, 3, 5]),), True, id="value-added"),
    pytest.param((chain([1, 2, 3]),), (chain([1, 3]),), True, id="value-removed"),
    pytest.param((chain([1, 2, 3]),), (chain([3, 1, 2]),), True, id="values-reordered"),
    pytest.param((chain([1, 2, 3]),), (chain([1, 2, 3], seeds=[1, 2, 3]),), True,
                 id="second-axis-grown"),
    pytest.param((chain([1, None, 3]),), (chain([1, None, 4]),), True, id="null-value-kept"),
    pytest.param((two_axes([1, 2, 3], ["a", "b"]),), (two_axes([1, 2, 9], ["a", "b"]),), True,
                 id="stage-memoised-on-one-axis"),
    pytest.param((two_axes([1, 2, 3], ["a", "b"]),), (two_axes([1, 2, 3], ["a", "c"]),), True,
                 id="memoised-axis-changed"),
    pytest.param((zipped([(1, "p"), (2, "q")], [7, 8, 9]),),
                 (zipped([(1, "p"), (2, "r")], [7, 8, 9]),), True, id="zip-row-changed"),
    pytest.param((undeclared([1, 2, 3, 5]),), (undeclared([1, 2, 4, 5]),), True,
                 id="undeclared-key-collapses"),
    pytest.param((chain([1, 2, 3]),), (chain([1, 2, 3], script="/nix/store/s-gen2/bin/gen"),),
                 False, id="script-changed"),
    pytest.param((chain([1, 2]),), (chain([1, 2], mapping=("e", "d")),), False,
                 id="wiring-changed"),
    pytest.param(inter_run([1, 2, 4, 5]), inter_run([1, 3, 4, 5]), True,
                 id="upstream-run-edited"),
]


@pytest.mark.parametrize(("before", "after", "reuses"), CASES)
def test_reusing_gives_the_full_expansion(tmp_path: Path, before: tuple[dict[str, Any], ...],
                                          after: tuple[dict[str, Any], ...],
                                          reuses: bool) -> None:
    first, with_memo, full = expand_edit(tmp_path, before, after)
    assert_same_graph(with_memo, full)
    assert full.reused_ids == 0
    # Only jobs the first lab had can be read; some combinations the memo holds are hashed
    # anyway, as a check, so fewer are read than kept.
    kept = set(first.jobs) & set(full.jobs)
    assert (with_memo.reused_ids > 0) == reuses
    assert with_memo.reused_ids < len(kept) or not kept


def test_a_stage_varying_by_value_keeps_no_memo(tmp_path: Path) -> None:
    table = [{"params": {"v": v}, "outputs": {"o": f"$out/o{v}"}} for v in (1, 2)]
    s = stage("s", params={"v": 1}, outputs={"o": "$out/o1"},
              dynamic={"attrs": ["outputs"], "table": table})
    graph = expand_lab(load_lab(write_lab(tmp_path, run("d", [s], axes=[axis("v", [1, 2])]))))
    assert graph.expansion_memo == {}


def tampered(memo: ExpansionMemo, run_name: str) -> ExpansionMemo:
    """The memo with the cells of ``run_name`` rotated: every reused id is another job's."""
    entry = memo.runs[run_name]
    cells = array("I", [*entry.cells[1:], entry.cells[0]])
    return ExpansionMemo(memo.ids, {**memo.runs, run_name: entry._replace(cells=cells)})


def test_a_memo_whose_ids_are_wrong_is_caught_and_dropped(tmp_path: Path) -> None:
    values = list(range(40))
    first = expand_lab(load_lab(write_lab(tmp_path, chain(values), name="before")))
    edited = load_lab(write_lab(tmp_path, chain([*values[:-1], 99]), name="after"))
    graph = expand_lab(edited, reuse=tampered(memo_of(first), "sweep"))
    assert_same_graph(graph, expand_lab(edited))
    assert graph.reused_ids == 0


def test_a_memo_of_another_shape_is_not_taken(tmp_path: Path) -> None:
    first = expand_lab(load_lab(write_lab(tmp_path, chain([1, 2]), name="before")))
    memo = memo_of(first)
    entry = memo.runs["sweep"]
    edited = load_lab(write_lab(tmp_path, chain([1, 2]), name="after"))
    for broken in (entry._replace(stages=entry.stages + 1),
                   entry._replace(cells=entry.cells[:-1]),
                   entry._replace(dims=entry.dims[:1]),
                   entry._replace(cells=array("I", [len(memo.ids)] * len(entry.cells)))):
        graph = expand_lab(edited, reuse=ExpansionMemo(memo.ids, {"sweep": broken}))
        assert graph.reused_ids == 0
        assert_same_graph(graph, expand_lab(edited))


def test_the_index_of_all_runs_keeps_the_memo(tmp_path: Path) -> None:
    graph = expand_lab(load_lab(write_lab(tmp_path, two_axes([1, 2, 3], ["a", "b"]))))
    everything = tmp_path / "all.msgpack"
    write_index(everything, graph, selection_closure(graph, []), everything=True)
    read = expansion_memo(everything)
    assert read is not None
    assert list(read.ids) == list(graph.jobs)
    assert read.runs == graph.expansion_memo
    selection = tmp_path / "run.msgpack"
    write_index(selection, graph, selection_closure(graph, ["r"]))
    assert expansion_memo(selection) is None
    assert expansion_memo(tmp_path / "missing.msgpack") is None


def test_a_malformed_memo_entry_is_left_out(tmp_path: Path) -> None:
    graph = expand_lab(load_lab(write_lab(tmp_path, chain([1, 2]), two_axes([1], ["a"]))))
    graph.expansion_memo["r"] = RunMemo("key", [[1]], 3, array("I"))  # type: ignore[list-item]
    path = tmp_path / "all.msgpack"
    write_index(path, graph, selection_closure(graph, []), everything=True)
    read = expansion_memo(path)
    assert read is not None and set(read.runs) == {"sweep"}


def test_a_build_reuses_the_lab_its_store_built_last(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first_dir = write_lab(tmp_path, chain([1, 2, 3, 4, 5, 6, 7, 8]), name="first")
    edited_dir = write_lab(tmp_path, chain([1, 2, 3, 4, 5, 6, 7, 9]), name="edited")
    with Store(tmp_path / ".repx") as store:
        index = index_path(tmp_path / "repx", first_dir, ())
        _expanded(LabOptions(lab_dir=str(first_dir)), first_dir, index, (), store)
        assert expansion_memo(index) is not None
        store.set_meta("last_build", {"lab": str(first_dir), "targets": []})
        edited_index = index_path(tmp_path / "repx", edited_dir, ())
        graph = _expanded(LabOptions(lab_dir=str(edited_dir)), edited_dir, edited_index, (),
                          store)
        assert graph.reused_ids > 0
        assert_same_graph(graph, expand_lab(load_lab(edited_dir)))
        # A last build of a selection says nothing about all runs: nothing is reused.
        store.set_meta("last_build", {"lab": str(first_dir), "targets": ["sweep"]})
        edited_index.unlink()
        graph = _expanded(LabOptions(lab_dir=str(edited_dir)), edited_dir, edited_index, (),
                          store)
        assert graph.reused_ids == 0


def test_a_run_reaching_a_job_made_before_keeps_no_memo(tmp_path: Path) -> None:
    # Run "two" shares the job v=2 with run "one"; in "simulation" a second pipeline reaches
    # the jobs of the first. Such a job has no position of its own in its run's cells.
    shared = stage("s", params={"v": 0}, outputs={"o": "$out/o"})
    runs = (run("one", [shared], axes=[axis("v", [1, 2, 3])]),
            run("two", [shared], axes=[axis("v", [2, 4, 5])]))
    graph = expand_lab(load_lab(write_lab(tmp_path, *runs, name="shared")))
    assert set(graph.expansion_memo) == {"one"}
    sim = expand_lab(load_lab(write_lab(tmp_path, *inter_run([1, 2], extra_pipeline=True),
                                        name="pipelines")))
    assert "simulation" not in sim.expansion_memo
    edited = load_lab(write_lab(tmp_path, run("one", [shared], axes=[axis("v", [1, 2, 6])]),
                                runs[1], name="edited"))
    assert_same_graph(expand_lab(edited, reuse=memo_of(graph)), expand_lab(edited))
