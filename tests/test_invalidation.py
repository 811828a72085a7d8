"""What changes a job's identity, and what must not, on real Nix builds.

Each test builds a lab, changes one thing, rebuilds, and compares the ids of
jobs keyed by (stage, params).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

LAB = """
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "LABVERSION";
  runs = { main = repx-lib.callRun ./run.nix [ ]; };
}
"""

RUN = """
{ pkgs, repx-lib, ... }:
{
  name = "main";
  HASHMODE
  pipelines = [ ./pipe.nix ];
  params = { a = [ 1 2 3 ]; RUNEXTRA };
}
"""

# The consumer's attribute name sorts before its producer's on purpose: ids must
# follow the dependency order, not the names.
PIPE = """
{ repx, ... }:
repx.mkPipe rec {
  consumer = repx.callStage ./consumer.nix [ producer ];
  producer = repx.callStage ./producer.nix [ ];
  other = repx.callStage ./other.nix [ ];
}
"""

PRODUCER = """
{ pkgs }:
{
  pname = "producer";
  version = "VERSION";
  params = { a = 0; };
  outputs = { data = "$out/data.txt"; };
  RESOURCES
  run = { outputs, params, ... }: ''
    echo "SCRIPT ${toString params.a}" > "${outputs.data}"
  '';
}
"""

CONSUMER = """
{ pkgs }:
{
  pname = "consumer";
  inputs = { data = ""; };
  outputs = { result = "$out/result.txt"; };
  run = { inputs, outputs, ... }: ''
    cat "${inputs.data}" > "${outputs.result}"
  '';
}
"""

OTHER = """
{ pkgs }:
{
  pname = "other";
  outputs = { result = "$out/other.txt"; };
  run = { outputs, ... }: ''
    echo other > "${outputs.result}"
  '';
}
"""

BASE = {
    "LABVERSION": "1.0", "HASHMODE": "", "RUNEXTRA": "", "VERSION": "1.0",
    "RESOURCES": "", "SCRIPT": "value",
}


def files(**changes: str) -> dict[str, str]:
    values = {**BASE, **changes}

    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace(key, value)
        return text

    return {"lab.nix": fill(LAB), "run.nix": fill(RUN), "pipe.nix": PIPE,
            "producer.nix": fill(PRODUCER), "consumer.nix": CONSUMER, "other.nix": OTHER}


def ids(graph) -> dict[tuple[str, str], str]:
    """Job ids keyed by (pname, params, upstream params) — stable across rebuilds."""
    keyed = {}
    for job in graph.jobs.values():
        upstream = [graph.jobs[u].params for u in job.depends_on]
        keyed[(job.pname, json.dumps([job.params, upstream], sort_keys=True))] = job.id
    return keyed


def changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {key[0] + key[1] for key in before if before[key] != after[key]}


@pytest.fixture
def compare(make_lab, build):
    def run(base: dict[str, str], change: dict[str, str]) -> tuple[dict, dict]:
        return ids(build(make_lab(base))), ids(build(make_lab(change)))

    return run


def stages_of(keys: set[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        stage = key.split("[", 1)[0]
        counts[stage] = counts.get(stage, 0) + 1
    return counts


@pytest.mark.nix
def test_script_edit_changes_stage_and_downstream_only(compare) -> None:
    before, after = compare(files(), files(SCRIPT="edited"))
    assert len(before) == 7  # 3 producer, 3 consumer, 1 other
    assert stages_of(changed(before, after)) == {"producer": 3, "consumer": 3}


@pytest.mark.nix
def test_params_only_ignores_script_edits(compare) -> None:
    mode = 'hashMode = "params-only";'
    before, after = compare(files(HASHMODE=mode), files(HASHMODE=mode, SCRIPT="edited"))
    assert changed(before, after) == set()


@pytest.mark.nix
def test_version_bump_changes_ids_in_params_only_mode(compare) -> None:
    mode = 'hashMode = "params-only";'
    before, after = compare(files(HASHMODE=mode), files(HASHMODE=mode, VERSION="2.0"))
    assert stages_of(changed(before, after)) == {"producer": 3, "consumer": 3}


@pytest.mark.nix
def test_resources_never_change_ids(compare) -> None:
    hints = 'resources = { mem = "64G"; cpus = 32; time = "48:00:00"; partition = "gpu"; };'
    before, after = compare(files(), files(RESOURCES=hints))
    assert changed(before, after) == set()


@pytest.mark.nix
def test_undeclared_params_and_lab_metadata_never_change_ids(compare) -> None:
    before, after = compare(files(), files(RUNEXTRA='unused = [ "x" ];', LABVERSION="9.9"))
    assert changed(before, after) == set()


@pytest.mark.nix
def test_changing_one_sweep_value_changes_only_its_jobs(make_lab, build) -> None:
    before = build(make_lab(files()))
    changed_run = files()
    changed_run["run.nix"] = changed_run["run.nix"].replace("[ 1 2 3 ]", "[ 1 2 4 ]")
    after = build(make_lab(changed_run))
    old = {j.id for j in before.jobs.values()}
    new = {j.id for j in after.jobs.values()}
    gone = [before.jobs[i] for i in old - new]
    added = [after.jobs[i] for i in new - old]
    assert sorted(j.pname for j in gone) == ["consumer", "producer"]
    assert {json.dumps(j.params) for j in gone if j.pname == "producer"} == {'{"a": 3}'}
    assert {json.dumps(j.params) for j in added if j.pname == "producer"} == {'{"a": 4}'}


@pytest.mark.nix
def test_git_hash_does_not_change_ids(make_lab, build, tmp_path: Path) -> None:
    import subprocess

    folder = make_lab(files())
    before = ids(build(folder))
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    subprocess.run(["git", "-C", str(folder), "add", "."], check=True)
    subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qm", "x"], check=True)
    graph = build(folder)
    assert graph.lab.git_hash not in ("", "unknown")
    assert ids(graph) == before
