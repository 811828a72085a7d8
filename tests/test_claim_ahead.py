"""Claims taken ahead of a free slot (``LocalScheduler._claim_ahead``).

A build of millisecond jobs claims the next ones before a slot frees, so that a slot is
filled the moment its job ends and one commit carries dozens of claims. What must hold:
fewer commits than jobs; a claim that never became a run is given back exactly (the record
it replaced, its ``record.json``, or no record at all); a job that ended shows as ended
while others still run; units of slow stages are never claimed ahead.

The lab's 40 jobs are the stage ``work`` swept over ``i``. Each appends its ``i`` to a log
outside the store; with ``@FAIL_AFTER@`` set, a job that finds that many lines or more in the log
fails, so a build stops (fail-fast) while jobs are claimed ahead; with the marker file
present every job fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from repx.engine import local
from repx.engine.build import BuildOptions, run_build
from repx.lab import LabOptions
from repx.store import Status, Store
from repx.store.layout import RECORD_JSON
from repx.store.lmdb_store import Store as LmdbStore
from repx.store.records import JobRecord
from tests.buildutil import records, start_build, wait_for, write_lab
from tests.conftest import require_nix

STAGE = """
{ pkgs }:
{
  pname = "work";
  params = { i = 0; log = "@LOG@"; marker = "@MARKER@"; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    [[ ! -e "${params.marker}" ]] || { echo "the marker is there" >&2; exit 3; }
    lines=0
    [[ ! -e "${params.log}" ]] || lines=$(wc -l < "${params.log}")
    echo "${toString params.i}" >> "${params.log}"
    if (( @FAIL_AFTER@ > 0 && lines >= @FAIL_AFTER@ )); then exit 4; fi
    echo ok > "${outputs.result}"
  '';
}
"""

JOBS = 40


def sweep_lab(root: Path, fail_after: int = 0, stage: str = STAGE) -> Path:
    """The 40-job lab (see the module doc) in ``root/lab``."""
    files = {
        "run.nix": f"""
            {{ pkgs, repx-lib, ... }}:
            {{ name = "main"; pipelines = [ ./pipe.nix ];
              params = {{ i = repx-lib.utils.range 1 {JOBS}; }}; }}
        """,
        "pipe.nix": """
            { repx, ... }:
            repx.mkPipe rec { work = repx.callStage ./stage.nix [ ]; }
        """,
        "stage.nix": stage,
    }
    return write_lab(root / "lab", files, LOG=str(root / "ran.log"),
                     MARKER=str(root / "marker"), FAIL_AFTER=str(fail_after))


class Spy:
    """Counts the store's commits and what builds give back, by wrapping the store class
    (the build opens its own store object)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches = 0
        self.given_back: list[str] = []
        spy = self
        batch, unclaim = LmdbStore.batch, LmdbStore.unclaim

        def counted_batch(store: LmdbStore) -> Any:
            spy.batches += 1
            return batch(store)

        def recorded_unclaim(store: LmdbStore, owner: str,
                             replaced: dict[str, bytes | None]) -> list[str]:
            ids = unclaim(store, owner, replaced)
            spy.given_back.extend(ids)
            return ids

        monkeypatch.setattr(LmdbStore, "batch", counted_batch)
        monkeypatch.setattr(LmdbStore, "unclaim", recorded_unclaim)


def ran(root: Path) -> list[str]:
    log = root / "ran.log"
    return log.read_text().split() if log.exists() else []


@pytest.mark.nix
def test_fast_jobs_share_commits_and_all_succeed(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """40 millisecond jobs at -j 2: every one runs once and is recorded, in far fewer
    commits than one per job, and no claim is left over."""
    require_nix()
    lab = sweep_lab(tmp_path)
    spy = Spy(monkeypatch)
    result = run_build(LabOptions(lab_file=str(lab / "lab.nix")), tmp_path / "store",
                       BuildOptions(jobs=2))
    assert result.exit_code == 0
    assert len(result.executed) == JOBS
    assert sorted(map(int, ran(tmp_path))) == list(range(1, JOBS + 1))
    held = records(tmp_path / "store")
    assert {r.status for r in held.values()} == {Status.SUCCEEDED} and len(held) == JOBS
    assert spy.batches < JOBS // 2, f"{spy.batches} commits for {JOBS} jobs"
    assert spy.given_back == []


@pytest.mark.nix
def test_a_stopped_build_gives_back_the_claims_it_did_not_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail-fast while jobs are claimed ahead: those jobs end with exactly the record they
    had before the build (here: the failure of an earlier build, and its record.json)."""
    require_nix()
    lab = sweep_lab(tmp_path, fail_after=12)
    store = tmp_path / "store"
    options = LabOptions(lab_file=str(lab / "lab.nix"))
    (tmp_path / "marker").touch()
    first = run_build(options, store, BuildOptions(jobs=2, keep_going=True))
    assert first.exit_code != 0 and len(first.failed) == JOBS
    before = records(store)
    files_before = {job_id: record_file(store, job_id) for job_id in before}
    assert all(files_before.values())
    (tmp_path / "marker").unlink()

    spy = Spy(monkeypatch)
    second = run_build(options, store, BuildOptions(jobs=2))
    assert second.exit_code != 0
    assert spy.given_back, "no claim was taken ahead: the test shows nothing"
    started = set(ran(tmp_path))
    held = records(store)
    assert not [j for j, r in held.items() if r.status in (Status.RUNNING, Status.QUEUED)]
    for job_id in spy.given_back:
        assert held[job_id] == before[job_id], f"{job_id}: its record changed"
        assert record_file(store, job_id) == files_before[job_id]
    # Every job either ran in the second build or still has the first build's record.
    ran_now = {j for j in held if held[j] != before[j]}
    assert len(ran_now) == len(started) < JOBS


@pytest.mark.nix
def test_a_claim_given_back_leaves_no_record_when_there_was_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a fresh store, jobs claimed ahead and never started have no record afterwards."""
    require_nix()
    lab = sweep_lab(tmp_path, fail_after=12)
    spy = Spy(monkeypatch)
    result = run_build(LabOptions(lab_file=str(lab / "lab.nix")), tmp_path / "store",
                       BuildOptions(jobs=2))
    assert result.exit_code != 0
    assert spy.given_back
    held = records(tmp_path / "store")
    assert not set(spy.given_back) & set(held)
    assert len(held) == len(ran(tmp_path))
    assert {r.status for r in held.values()} <= {Status.SUCCEEDED, Status.FAILED}


SLOW_STAGE = STAGE.replace('echo ok > "${outputs.result}"',
                           'echo ok > "${outputs.result}"\n'
                           '    if (( ${toString params.i} == 1 )); then\n'
                           '      while [[ ! -e "${params.marker}.go" ]]; do sleep 0.05; done\n'
                           '    fi')


@pytest.mark.nix
def test_a_job_that_ended_shows_as_ended_while_others_run(tmp_path: Path) -> None:
    """Job i=1 waits for a file the test writes only once every other job is recorded
    SUCCEEDED in the store: their outcomes are committed while a job still runs, not
    held back for the next claims."""
    require_nix()
    lab = sweep_lab(tmp_path, stage=SLOW_STAGE)
    store = tmp_path / "store"
    background = start_build(lab, store, "-j", "2")
    try:
        def others_recorded() -> bool:
            done = [r for r in records(store).values() if r.status is Status.SUCCEEDED]
            return len(done) == JOBS - 1
        wait_for(others_recorded, "39 jobs recorded while job i=1 runs", timeout=60)
        running = [r for r in records(store).values() if r.status is Status.RUNNING]
        assert len(running) == 1
    finally:
        (tmp_path / "marker.go").touch()
    outcome = background.wait()
    assert outcome.code == 0, outcome.stderr
    assert len(records(store)) == JOBS


def test_only_units_of_fast_stages_count_for_claims_ahead() -> None:
    """A unit counts at its stage's mean duration: not at all before one of its stage has
    ended, nor when its stage's units last longer than the window."""
    scheduler = local.LocalScheduler.__new__(local.LocalScheduler)
    fast = SimpleNamespace(label="fast")
    slow = SimpleNamespace(label="slow")
    scheduler._stage_seconds = {}
    assert scheduler._ahead_estimate(fast) is None
    scheduler._stage_seconds = {"fast": local.CLAIM_AHEAD_SECONDS / 5,
                                "slow": local.CLAIM_AHEAD_SECONDS * 2}
    assert scheduler._ahead_estimate(fast) == local.CLAIM_AHEAD_SECONDS / 5
    assert scheduler._ahead_estimate(slow) is None


PIPE_FAST_THEN_SLOW = """
    { repx, ... }:
    repx.mkPipe rec {
      work = repx.callStage ./stage.nix [ ];
      slow = repx.callStage ./slow.nix [ work ];
    }
"""

SLOW = """
{ pkgs }:
{
  pname = "slow";
  inputs = { result = ""; };
  outputs = { copy = "$out/copy.txt"; };
  run = { inputs, outputs, ... }: ''
    sleep 0.12
    cp "${inputs.result}" "${outputs.copy}"
  '';
}
"""


@pytest.mark.nix
def test_a_slow_stage_after_a_fast_one_is_not_claimed_ahead(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """40 millisecond jobs, each followed by a 0.12 s one: the fast stage's units are
    claimed ahead, the slow stage's never (their stage's duration, not the build's mean,
    is what counts)."""
    require_nix()
    lab = sweep_lab(tmp_path)
    write_lab(lab, {"pipe.nix": PIPE_FAST_THEN_SLOW, "slow.nix": SLOW})
    ahead: list[str] = []
    claim = LmdbStore.claim

    def recorded_claim(store: LmdbStore, job_id: str, *args: Any, **kwargs: Any) -> bool:
        if kwargs.get("replaced") is not None:
            ahead.append(job_id)
        return claim(store, job_id, *args, **kwargs)

    monkeypatch.setattr(LmdbStore, "claim", recorded_claim)
    result = run_build(LabOptions(lab_file=str(lab / "lab.nix")), tmp_path / "store",
                       BuildOptions(jobs=2))
    assert result.exit_code == 0 and len(result.executed) == 2 * JOBS
    assert [j for j in ahead if "-work-" in j], "the fast stage was not claimed ahead"
    assert [j for j in ahead if "-slow-" in j] == []


def test_unclaim_restores_what_the_claim_replaced(tmp_path: Path) -> None:
    """Store.unclaim: the replaced record comes back byte for byte with its record.json,
    a job that had none is forgotten, and claims not held by the owner are left alone."""
    with Store(tmp_path / "store") as store:
        def claim(job_id: str, owner: str, replaced: dict[str, bytes | None]) -> bool:
            return store.claim(job_id, owner, host="h", pid=1, lab="lab", run="r",
                               stage="s", replaced=replaced)

        old = "a" * 32 + "-old-1"
        new = "b" * 32 + "-new-1"
        other = "c" * 32 + "-other-1"
        first: dict[str, bytes | None] = {}
        assert claim(old, "first", first)
        (Path(store.folders.meta_dir(old))).mkdir(parents=True)
        store.finish(JobRecord(old, Status.FAILED, owner="first", reason="broke"))
        failed = store.get(old)
        failed_file = record_file(tmp_path / "store", old)
        assert failed_file and json.loads(failed_file)["status"] == "failed"

        replaced: dict[str, bytes | None] = {}
        assert claim(old, "second", replaced) and claim(new, "second", replaced)
        assert claim(other, "third", {})
        assert set(replaced) == {old, new} and replaced[new] is None
        assert JobRecord.from_msgpack(replaced[old] or b"") == failed
        assert record_file(tmp_path / "store", old) is None  # the claim removed it
        given = store.unclaim("second", {**replaced, other: None})
        assert sorted(given) == sorted([old, new])
        assert store.get(old) == failed
        assert record_file(tmp_path / "store", old) == failed_file
        assert store.get(new) is None
        assert store.get(other) is not None and store.get(other).status is Status.RUNNING


def record_file(store: Path, job_id: str) -> str | None:
    path = store / "outputs" / job_id / "repx" / RECORD_JSON
    return path.read_text() if path.exists() else None
