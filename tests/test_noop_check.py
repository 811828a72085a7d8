"""The no-op check in chunks: threads share it, a worker may leave it, and only a check
of every chunk says "up to date".

A synthetic lab (as in tests/test_expand.py) is expanded and its no-op index written; a
real LMDB store holds a SUCCEEDED record per job and real files stand for the outputs. The
chunk is made small so that a few dozen jobs make many chunks.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from repx.engine import noop_index
from repx.engine.noop_index import NoopCheck, up_to_date_ids, write_index
from repx.lab.blueprint import load_lab
from repx.lab.expand import expand_lab
from repx.lab.graph import JobGraph, selection_closure
from repx.store import JobRecord, Status, Store
from tests.test_expand import axis, dep, run, stage, write_lab

JOBS_PER_STAGE = 20


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(noop_index, "CHUNK", 3)


def lab_graph(tmp_path: Path, outputs: dict[str, str]) -> JobGraph:
    gen = stage("gen", params={"x": 0}, outputs=outputs)
    use = stage("use", inputs={"d": ""}, outputs={"u": "$out/u.txt"},
                deps=[dep("gen", (next(iter(outputs)), "d"))])
    return expand_lab(load_lab(write_lab(tmp_path / "lab", run(
        "r", [gen, use], axes=[axis("x", list(range(JOBS_PER_STAGE)))]))))


def filled_store(tmp_path: Path, graph: JobGraph) -> Store:
    """Every job SUCCEEDED, every declared output on disk."""
    store = Store(tmp_path / "store")
    with store.batch():
        for job in graph.jobs.values():
            store.put(JobRecord(job.id, Status.SUCCEEDED, exit_code=0))
            for template in job.outputs.values():
                path = tmp_path / "store" / "outputs" / job.id / "out" / template[5:]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("x")
    return store


def indexed(tmp_path: Path, graph: JobGraph) -> Path:
    index = tmp_path / "index.msgpack"
    write_index(index, graph, selection_closure(graph, []), everything=True)
    return index


def output_of(tmp_path: Path, graph: JobGraph, position: int) -> Path:
    job = list(graph.jobs.values())[position]
    template = next(iter(job.outputs.values()))
    return tmp_path / "store" / "outputs" / job.id / "out" / template[5:]


@pytest.mark.parametrize("outputs", [
    pytest.param({"d": "$out/d.txt"}, id="one-output-per-stage"),
    pytest.param({"d": "$out/d.txt", "e": "$out/sub/e.txt"}, id="two-outputs"),
])
def test_two_workers_share_the_chunks_and_agree_with_one(tmp_path: Path,
                                                         outputs: dict[str, str]) -> None:
    graph = lab_graph(tmp_path, outputs)
    index = indexed(tmp_path, graph)
    with filled_store(tmp_path, graph) as store:
        alone = up_to_date_ids(index, store)
        assert alone is not None and sorted(alone.ids) == sorted(graph.jobs)
        assert alone.ids_text.split("\n") == alone.ids
        check = NoopCheck.open(index, store)
        assert check is not None
        with check:
            taken: list[int] = []
            original = check._chunk_present

            def counted(start: int, end: int) -> bool:
                taken.append(start)
                return original(start, end)

            check._chunk_present = counted  # type: ignore[method-assign]
            worker = threading.Thread(target=check.work)
            worker.start()
            check.work()
            worker.join()
            shared = check.answer()
        # Every chunk once, whichever worker took it.
        assert sorted(taken) == list(range(0, len(graph.jobs), 3))
        assert shared == alone


def test_a_missing_output_anywhere_says_no(tmp_path: Path) -> None:
    graph = lab_graph(tmp_path, {"d": "$out/d.txt"})
    index = indexed(tmp_path, graph)
    with filled_store(tmp_path, graph) as store:
        for position in (0, 17, len(graph.jobs) - 1):
            output_of(tmp_path, graph, position).unlink()
            assert up_to_date_ids(index, store) is None
            check = NoopCheck.open(index, store)
            assert check is not None
            with check:
                worker = threading.Thread(target=check.work)
                worker.start()
                check.work()
                worker.join()
                assert check.answer() is None
            output_of(tmp_path, graph, position).write_text("x")
        assert up_to_date_ids(index, store) is not None


def test_a_stopped_check_has_no_answer_until_someone_finishes_it(tmp_path: Path) -> None:
    """A worker told to stop leaves the rest; the answer is None (not "up to date") until
    another worker has checked every chunk."""
    graph = lab_graph(tmp_path, {"d": "$out/d.txt"})
    index = indexed(tmp_path, graph)
    with filled_store(tmp_path, graph) as store:
        check = NoopCheck.open(index, store)
        assert check is not None
        with check:
            asked = []

            def stop_after_two() -> bool:
                asked.append(1)
                return len(asked) > 2

            check.work(stop=stop_after_two)
            assert check.answer() is None
            check.work()
            answer = check.answer()
        assert answer is not None and sorted(answer.ids) == sorted(graph.jobs)


def test_a_job_not_succeeded_needs_no_check_at_all(tmp_path: Path) -> None:
    graph = lab_graph(tmp_path, {"d": "$out/d.txt"})
    index = indexed(tmp_path, graph)
    with filled_store(tmp_path, graph) as store:
        store.put(JobRecord(next(iter(graph.jobs)), Status.FAILED, exit_code=1))
        assert NoopCheck.open(index, store) is None
        assert NoopCheck.open(tmp_path / "no-such-index.msgpack", store) is None
