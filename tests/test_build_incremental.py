"""Minimal re-execution: after a change, ``repx build`` runs exactly the jobs whose result
can differ, and nothing else.

test_invalidation.py pins which *ids* change; these tests pin what the engine *runs*. Every
job appends one line to an execution log outside the store (its path is a param, the same
for every build of the lab folder), so "what ran" is observed by the jobs themselves, not
taken from the build's own report; both must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from repx.store import Status
from tests.buildutil import (
    CONSUMER,
    OTHER,
    PIPE,
    PRODUCER,
    build,
    by_pname,
    list_jobs,
    log_lines,
    output_file,
    records,
    repx,
)
from tests.buildutil import write_lab as write_files
from tests.conftest import require_nix

RUN = """
{ pkgs, repx-lib, ... }:
{
  name = "main";
  @HASHMODE@
  pipelines = [ ./pipe.nix ];
  params = { a = [ 1 2 ]; };
}
"""

class Lab:
    """The lab folder, its store and execution log; ``build`` returns what ran, twice over
    (the build's ``executed`` ids, and the log lines the jobs appended meanwhile)."""

    def __init__(self, root: Path, *, hash_mode: str = "") -> None:
        self.folder = root / "lab"
        self.store = root / ".repx"
        self.log = root / "executions.log"
        self.hash_mode = hash_mode
        self.write()

    def write(self, *, word: str = "WORD", sweep: str = "[ 1 2 ]") -> None:
        write_files(self.folder, {
            "run.nix": RUN.replace("[ 1 2 ]", sweep), "pipe.nix": PIPE,
            "producer.nix": PRODUCER.replace("WORD", word), "consumer.nix": CONSUMER,
            "other.nix": OTHER,
        }, LOG=str(self.log), HASHMODE=self.hash_mode, FAIL="")

    def build(self, *args: str) -> tuple[list[str], list[str]]:
        before = len(log_lines(self.log))
        result = build(self.folder, self.store, *args)
        return result.executed, sorted(log_lines(self.log)[before:])

    def jobs(self, pname: str | None = None) -> list[dict]:
        jobs = list_jobs(self.folder)
        return by_pname(jobs, pname) if pname else jobs

    def ids(self, pname: str, **params: object) -> list[str]:
        return sorted(j["id"] for j in self.jobs(pname)
                      if all(j["params"].get(k) == v for k, v in params.items()))


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """The lab, built once: 2 producers, 2 consumers, 1 other, all run."""
    require_nix()
    lab = Lab(tmp_path)
    executed, ran = lab.build()
    assert len(executed) == 5
    assert ran == ["consumer 1", "consumer 2", "other", "producer 1", "producer 2"]
    return lab


@pytest.mark.nix
def test_second_build_runs_nothing(lab: Lab) -> None:
    assert lab.build() == ([], [])


@pytest.mark.nix
def test_new_sweep_value_runs_only_the_new_jobs(lab: Lab) -> None:
    lab.write(sweep="[ 1 2 3 ]")
    executed, ran = lab.build()
    assert ran == ["consumer 3", "producer 3"]
    producer = lab.ids("producer", a=3)
    consumer = [j["id"] for j in lab.jobs("consumer") if j["depends_on"] == producer]
    assert sorted(executed) == sorted(producer + consumer)


@pytest.mark.nix
def test_script_edit_reruns_that_stage_and_its_downstream_only(lab: Lab) -> None:
    lab.write(word="EDITED")
    executed, ran = lab.build()
    assert ran == ["consumer 1", "consumer 2", "producer 1", "producer 2"]
    assert sorted(executed) == sorted(lab.ids("producer") + lab.ids("consumer"))
    for consumer in lab.jobs("consumer"):
        assert output_file(lab.store, consumer, "result").read_text().startswith("EDITED ")


@pytest.mark.nix
def test_params_only_hash_mode_ignores_a_script_edit(tmp_path: Path) -> None:
    require_nix()
    lab = Lab(tmp_path, hash_mode='hashMode = "params-only";')
    assert len(lab.build()[0]) == 5
    lab.write(word="EDITED")
    assert lab.build() == ([], [])
    for consumer in lab.jobs("consumer"):
        assert output_file(lab.store, consumer, "result").read_text().startswith("WORD ")


@pytest.mark.nix
def test_force_a_stage_reruns_that_stage_only(lab: Lab) -> None:
    before = records(lab.store)
    executed, ran = lab.build("--force", "producer")
    assert ran == ["producer 1", "producer 2"]
    assert sorted(executed) == lab.ids("producer")
    after = records(lab.store)
    for job_id in lab.ids("consumer") + lab.ids("other"):
        assert after[job_id].finished == before[job_id].finished
    for job_id in lab.ids("producer"):
        assert after[job_id].finished > before[job_id].finished


@pytest.mark.nix
def test_verify_reruns_a_job_whose_output_changed_in_place(lab: Lab) -> None:
    (consumer,) = [j for j in lab.jobs("consumer")
                   if j["depends_on"] == lab.ids("producer", a=1)]
    result = output_file(lab.store, consumer, "result")
    assert result.read_text() == "WORD 1\n"
    result.write_text("WORD 9\n")  # same size: only the checksum can tell
    assert lab.build() == ([], [])  # a plain build stats, it does not hash
    dry = repx("build", "--dry-run", "--verify", "--json", "--store", str(lab.store),
               cwd=lab.folder)
    assert '"would_run": [\n    "' + consumer["id"] in dry.stdout
    executed, ran = lab.build("--verify")
    assert (executed, ran) == ([consumer["id"]], ["consumer 1"])
    assert result.read_text() == "WORD 1\n"
    assert lab.build("--verify") == ([], [])


@pytest.mark.nix
def test_deleted_output_file_reruns_that_job(lab: Lab) -> None:
    (producer,) = [j for j in lab.jobs("producer") if j["params"]["a"] == 2]
    output_file(lab.store, producer, "data").unlink()
    executed, ran = lab.build()
    assert (executed, ran) == ([producer["id"]], ["producer 2"])
    assert output_file(lab.store, producer, "data").read_text() == "WORD 2\n"
    assert records(lab.store)[producer["id"]].status is Status.SUCCEEDED


@pytest.mark.nix
def test_dry_run_names_the_missing_output_and_its_path(lab: Lab) -> None:
    """The plan checks outputs relative to the store's outputs folder, yet says where the
    missing file should be in full."""
    (producer,) = [j for j in lab.jobs("producer") if j["params"]["a"] == 1]
    missing = output_file(lab.store, producer, "data")
    missing.unlink()
    plan = json.loads(repx("build", "--dry-run", "--json", "--store", str(lab.store),
                           cwd=lab.folder).stdout)
    assert plan["would_run"] == [producer["id"]]
    assert plan["reasons"] == {producer["id"]: f"output 'data' is missing ({missing})"}


@pytest.mark.nix
def test_deleted_upstream_output_is_rebuilt_for_a_consumer_that_must_run(lab: Lab) -> None:
    """The consumer's script changes (new ids) while its producer's output was deleted:
    the producer must run again first, else the consumer waits for an input that nobody
    will write and fails ("inputs not readable after ...")."""
    (producer,) = [j for j in lab.jobs("producer") if j["params"]["a"] == 1]
    output_file(lab.store, producer, "data").unlink()
    consumer_nix = lab.folder / "consumer.nix"
    consumer_nix.write_text(consumer_nix.read_text().replace('"consumer $a"',
                                                             '"consumer v2 $a"'))
    result = build(lab.folder, lab.store, "-j", "2")
    consumers = lab.ids("consumer")
    assert sorted(result.executed) == sorted([producer["id"], *consumers])
    for consumer in lab.jobs("consumer"):
        assert output_file(lab.store, consumer, "result").read_text().startswith("WORD ")
