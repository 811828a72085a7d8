"""The no-op check done while Nix builds the lab: it may only ever save time.

A build starts Nix on the lab file, and meanwhile checks whether the lab the store built
last (same targets) is still up to date. Its answer is used only when Nix then gives that
very lab directory; for any other lab it is dropped. These tests run real builds (Nix, the
store, bash jobs) and watch the check itself, so that a positive answer for the old lab is
seen to be thrown away when the lab changed, and a lab that fails to build still reports
its own error first, and stops nothing it should not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import repx.engine.build as engine_build
import repx.engine.plan as engine_plan
import repx.store.lmdb_store as lmdb_store
from repx.engine.build import BuildOptions, dry_run, run_build
from repx.errors import LabError
from repx.lab import LabOptions, open_lab
from repx.lab.open import start_locating_lab
from repx.lab.progress import LabReporter, Phase
from tests.buildutil import CONSUMER, OTHER, PIPE, PRODUCER, SWEEP_RUN, log_lines, write_lab
from tests.conftest import require_nix


class Lab:
    """A two-stage sweep over ``a`` plus one independent job, its store and the log every
    job appends to (what ran, seen from outside the store)."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "lab"
        self.store = root / ".repx"
        self.log = root / "ran.log"
        self.write("[ 1 2 ]")

    def write(self, sweep: str) -> None:
        write_lab(self.folder, {"run.nix": SWEEP_RUN, "pipe.nix": PIPE, "producer.nix": PRODUCER,
                                "consumer.nix": CONSUMER, "other.nix": OTHER},
                  LOG=str(self.log), SWEEP=sweep, FAIL="")

    def options(self) -> LabOptions:
        return LabOptions(lab_file=str(self.folder / "lab.nix"), out_link=None)

    def build(self, **build: Any) -> tuple[engine_build.BuildResult, list[str]]:
        """The build's result and the log lines its jobs wrote."""
        before = len(log_lines(self.log))
        result = run_build(self.options(), self.store, BuildOptions(jobs=2, **build))
        return result, sorted(log_lines(self.log)[before:])


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    require_nix()
    lab = Lab(tmp_path)
    result, ran = lab.build()
    assert len(result.executed) == 5 and len(ran) == 5
    return lab


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[engine_build._CheckedAhead]:
    """Every answer the check ahead gave, in order."""
    seen: list[engine_build._CheckedAhead] = []
    check = engine_build._check_ahead

    def recorded(*args: Any, **kwargs: Any) -> engine_build._CheckedAhead:
        answer = check(*args, **kwargs)
        seen.append(answer)
        return answer

    monkeypatch.setattr(engine_build, "_check_ahead", recorded)
    return seen


@pytest.mark.nix
def test_an_unchanged_lab_is_answered_by_the_check_ahead(
        lab: Lab, answers: list[engine_build._CheckedAhead]) -> None:
    result, ran = lab.build()
    assert ran == [] and result.executed == [] and len(result.up_to_date) == 5
    assert len(answers) == 1 and answers[0].found is not None
    assert sorted(answers[0].found.ids) == sorted(result.up_to_date)


@pytest.mark.nix
def test_an_edited_lab_runs_its_new_jobs_although_the_old_lab_is_up_to_date(
        lab: Lab, answers: list[engine_build._CheckedAhead]) -> None:
    """The store's last lab is checked (and found up to date) while Nix builds the edited
    lab; that answer is for another lab, so the new jobs run all the same."""
    lab.build()  # a no-op: the store's last build is now of this very lab
    lab.write("[ 1 2 3 ]")
    plan = dry_run(lab.options(), lab.store, BuildOptions())
    assert len(plan.to_run) == 2 and len(plan.up_to_date) == 5
    result, ran = lab.build()
    assert ran == ["consumer 3", "producer 3"] and len(result.executed) == 2
    old_lab = answers[0].expected
    assert answers[0].found is not None
    # The dry run and the build checked the old lab: not the answer for this lab, but
    # kept as what it is, the old lab's jobs found up to date.
    assert [a.expected for a in answers[1:]] == [old_lab, old_lab]
    assert [(a.index, a.found) for a in answers[1:]] == [(None, None), (None, None)]
    old_ids = sorted(answers[0].found.ids)
    assert [sorted(a.elsewhere.ids) for a in answers[1:] if a.elsewhere] == [old_ids, old_ids]
    # The edited lab is the last build now: the next build's check ahead is about it.
    again, ran = lab.build()
    assert ran == [] and len(again.up_to_date) == 7
    assert answers[3].expected != old_lab and answers[3].found is not None


@pytest.fixture
def outputs_looked_at(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The jobs each plan looked at the outputs of in one pass (the common shape)."""
    looked: list[list[str]] = []
    incomplete = engine_plan._OutputPaths.incomplete

    def recorded(self: engine_plan._OutputPaths, jobs: Any, job_ids: list[str]) -> set[str]:
        looked.append(list(job_ids))
        return incomplete(self, jobs, job_ids)

    monkeypatch.setattr(engine_plan._OutputPaths, "incomplete", recorded)
    return looked


@pytest.fixture
def records_read_by_plans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many job records each plan read (its statuses)."""
    counts: list[int] = []
    planning = False
    each_record = lmdb_store._each_record
    plan_build = engine_build.plan_build

    def counted(txn: Any, h: Any, job_ids: Any, convert: Any) -> Any:
        job_ids = list(job_ids)
        if planning:
            counts.append(len(job_ids))
        return each_record(txn, h, job_ids, convert)

    def planned(*args: Any, **kwargs: Any) -> Any:
        nonlocal planning
        planning = True
        try:
            return plan_build(*args, **kwargs)
        finally:
            planning = False

    monkeypatch.setattr(lmdb_store, "_each_record", counted)
    monkeypatch.setattr(engine_build, "plan_build", planned)
    return counts


@pytest.mark.nix
@pytest.mark.parametrize("between", ["no-op", "edit"])
def test_an_edited_lab_looks_only_at_the_jobs_the_old_lab_did_not_vouch_for(
        lab: Lab, answers: list[engine_build._CheckedAhead],
        outputs_looked_at: list[list[str]], records_read_by_plans: list[int],
        between: str) -> None:
    """The jobs an edit did not reach were found up to date by the check ahead (on the
    lab the edit replaces): the plan looks at neither their outputs nor their records
    again, whether the build before was a no-op (closure mark) or itself an edit."""
    if between == "no-op":
        lab.build()
    else:
        lab.write("[ 1 2 4 ]")
        result, ran = lab.build()
        assert ran == ["consumer 4", "producer 4"]
    outputs_looked_at.clear()
    records_read_by_plans.clear()
    before = len(answers)
    lab.write("[ 1 2 3 ]")
    result, ran = lab.build()
    assert ran == ["consumer 3", "producer 3"] and len(result.up_to_date) == 5
    vouched = answers[before].elsewhere
    assert vouched is not None and len(vouched.ids) == (5 if between == "no-op" else 7)
    assert outputs_looked_at == [[]]  # the 5 shared jobs were vouched for, the 2 new never ran
    assert records_read_by_plans == [2]  # the 2 new jobs' (none yet), no shared one's
    # The old lab's expansion memo came from the check too, and gave the very ids a full
    # expansion of the edited lab gives.
    assert answers[before].memo is not None
    assert sorted(open_lab(lab.options()).jobs) == sorted([*result.executed,
                                                           *result.up_to_date])


@pytest.mark.nix
def test_an_output_the_old_lab_lost_is_rebuilt_by_the_edited_lab(
        lab: Lab, answers: list[engine_build._CheckedAhead],
        outputs_looked_at: list[list[str]]) -> None:
    """An old lab with an output gone is no answer at all: the edited lab's plan looks at
    every job's outputs itself and runs the one that lost its output, besides the new."""
    lab.build()
    outputs = lab.store / "outputs"
    other = next(p for p in outputs.iterdir() if (p / "out" / "other.txt").exists())
    (other / "out" / "other.txt").unlink()
    lab.write("[ 1 2 3 ]")
    result, ran = lab.build()
    assert ran == ["consumer 3", "other", "producer 3"]
    assert answers[-1].elsewhere is None and answers[-1].found is None
    assert len(outputs_looked_at) == 1 and other.name in outputs_looked_at[0]


@pytest.mark.nix
def test_a_lost_output_of_the_same_lab_is_rebuilt(
        lab: Lab, answers: list[engine_build._CheckedAhead]) -> None:
    outputs = lab.store / "outputs"
    other = next(p for p in outputs.iterdir() if (p / "out" / "other.txt").exists())
    (other / "out" / "other.txt").unlink()
    result, ran = lab.build()
    assert ran == ["other"] and result.executed == [other.name]
    assert answers[0].index is not None and answers[0].found is None


@pytest.mark.nix
def test_a_build_of_other_targets_is_not_checked_ahead(
        lab: Lab, answers: list[engine_build._CheckedAhead]) -> None:
    """The last build was of every run; a build of one run has another index."""
    result, ran = lab.build(targets=("main",))
    assert ran == [] and len(result.up_to_date) == 5
    assert answers[0].expected is None and answers[0].store is not None
    # Now the store's last build is of `main`: the same selection is checked ahead.
    lab.build(targets=("main",))
    assert answers[1].found is not None


@pytest.mark.nix
def test_a_forced_build_checks_nothing_ahead(
        lab: Lab, answers: list[engine_build._CheckedAhead]) -> None:
    result, ran = lab.build(force=("other",))
    assert ran == ["other"] and len(result.executed) == 1
    assert answers == []


@pytest.mark.nix
def test_a_broken_lab_reports_its_own_error_before_an_unusable_store(lab: Lab) -> None:
    """The store's database is gone (its job folders remain): opening it fails. The lab
    does not build either, and its error is the one reported, as when the store was
    opened only after the lab."""
    (lab.store / "db" / "data.mdb").unlink()
    (lab.folder / "run.nix").write_text("{ pkgs, repx-lib, ... }: { name = ; }\n")
    with pytest.raises(LabError, match="building the lab"):
        lab.build()


#: A lab whose evaluation waits on a build (import from derivation) that sleeps.
SLOW_LAB = """
{ pkgs, repx-lib, ... }:
builtins.readFile (derivation {
  name = "repx-test-slow-@NONCE@";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "/bin/sleep 20; echo @NONCE@ > $out" ];
})
"""


def slow_lab(root: Path) -> tuple[Path, str]:
    """The slow lab's folder, and the text its builder's command line holds."""
    nonce = str(time.time_ns())
    return write_lab(root, {"lab.nix": SLOW_LAB}, NONCE=nonce), f"echo {nonce} > "


def sleepers(mark: str) -> list[str]:
    """The processes whose command line holds ``mark``: the slow lab's builder."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if mark in command:
            found.append(command)
    return found


class Phases(LabReporter):
    def __init__(self) -> None:
        self.finished: list[tuple[str, bool]] = []

    def phase_finished(self, phase: Phase, seconds: float, ok: bool) -> None:
        self.finished.append((phase.name, ok))


@pytest.mark.nix
def test_a_failing_lab_build_finishes_its_phase_and_raises(tmp_path: Path) -> None:
    require_nix()
    folder = write_lab(tmp_path / "lab", {"lab.nix": "{ pkgs, ... }: throw \"no lab here\"\n"})
    phases = Phases()
    location = start_locating_lab(LabOptions(lab_file=str(folder / "lab.nix"),
                                             out_link=None, reporter=phases))
    assert location.known is None
    with pytest.raises(LabError, match="no lab here"):
        location.wait()
    assert phases.finished == [("nix build", False)]
    location.cancel()  # after the wait: nothing left to stop, and no second phase end
    assert phases.finished == [("nix build", False)]


@pytest.mark.nix
def test_cancel_stops_a_lab_build_still_running(tmp_path: Path) -> None:
    """Cancelling stops Nix and the builder it waits on, and ends the phase."""
    require_nix()
    folder, builder = slow_lab(tmp_path / "lab")
    phases = Phases()
    location = start_locating_lab(LabOptions(lab_file=str(folder / "lab.nix"),
                                             out_link=None, reporter=phases))
    process = location._build._process  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while not sleepers(builder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers(builder), "the slow lab's builder never started"
    assert process.poll() is None
    location.cancel()
    assert process.returncode is not None
    assert phases.finished == [("nix build", False)]
    deadline = time.monotonic() + 10
    while sleepers(builder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers(builder) == []


@pytest.mark.nix
def test_an_interrupted_check_ahead_stops_the_lab_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the store is checked: the Nix build is stopped, not left behind."""
    require_nix()
    folder, builder = slow_lab(tmp_path / "lab")
    started: list[Any] = []
    start = engine_build.start_locating_lab

    def recorded(options: LabOptions) -> Any:
        location = start(options)
        started.append(location._build._process)
        return location

    def interrupted(*_args: Any, **_kwargs: Any) -> engine_build._CheckedAhead:
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_build, "start_locating_lab", recorded)
    monkeypatch.setattr(engine_build, "_check_ahead", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_build(LabOptions(lab_file=str(folder / "lab.nix"), out_link=None),
                  tmp_path / ".repx", BuildOptions())
    assert started and started[0].returncode is not None
    deadline = time.monotonic() + 10
    while sleepers(builder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers(builder) == []
