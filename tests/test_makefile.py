"""``repx makefile``: `make -j2` gives the outputs and store records `repx build` gives, a
second `make` runs nothing, the stamps follow the store, and make's -k, -n, targets and the
user's own rules work as make users expect; one `repx build` per run, not one per job."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repx.lab import LabOptions, open_lab
from repx.store import JobRecord, Store
from tests.conftest import EXAMPLES, require_nix, write_files
from tests.test_examples import repx


def require_make() -> str:
    make = shutil.which("make")
    if make is None:
        pytest.fail("GNU make is not installed (apt-get install make)")
    return make


def make(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([require_make(), "-f", "lab.mk", *args], cwd=folder,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"make {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n"
                    f"{result.stderr}")
    return result


def records(store_dir: Path) -> dict[str, JobRecord]:
    with Store(store_dir, readonly=True) as store:
        return {r.job_id: r for r in store.records()}


def comparable(record: JobRecord) -> tuple:
    """What must be equal between two stores: not timestamps, hosts or pids."""
    return (record.status, record.exit_code, record.lab, record.run, record.stage,
            sorted((f.path, f.size, f.blake3) for f in record.outputs))


def output_tree(store_dir: Path, job_id: str) -> dict[str, bytes]:
    out = store_dir / "outputs" / job_id / "out"
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


@pytest.mark.nix
@pytest.mark.parametrize("example", ["inter-run", "scatter-gather", "param-sweep"])
def test_make_gives_what_repx_build_gives_and_a_second_make_does_nothing(
        example: str, tmp_path: Path) -> None:
    require_nix()
    require_make()
    folder = tmp_path / example
    shutil.copytree(EXAMPLES / example, folder, ignore=shutil.ignore_patterns("result"))
    repx("lab", "build", cwd=folder)
    graph = open_lab(LabOptions(lab_dir=str(folder / "result")), validate=False)

    built, made = folder / "store-build", folder / "store-make"
    repx("build", "--lab", "result", "--store", str(built), "-j4", "--quiet", cwd=folder)
    repx("makefile", "--lab", "result", "--store", str(made), "-o", "lab.mk", cwd=folder)
    text = (folder / "lab.mk").read_text()
    assert text.count("\n# job: ") == len(graph.jobs)  # one target per job
    # Recipes run this interpreter's repx through the package's __main__ (`python -m repx`,
    # whose Ctrl-C is quiet from the start), which the make below then exercises.
    assert f"\nREPX ?= {shlex.quote(sys.executable)} -m repx\n" in text

    first = make(folder, "-j2")
    ran = re.findall(r"^repx: (\S+) \((\d+) jobs?\)$", first.stdout, re.M)
    assert sorted(run for run, _n in ran) == sorted(graph.runs)  # one recipe per run
    assert sum(int(n) for _run, n in ran) == len(graph.jobs)

    by_build, by_make = records(built), records(made)
    assert sorted(by_make) == sorted(by_build)  # units of scatter-gather jobs included
    for job_id, record in by_build.items():
        assert comparable(by_make[job_id]) == comparable(record), job_id
    for job_id in graph.jobs:
        assert by_make[job_id].status.value == "succeeded"
        assert output_tree(made, job_id) == output_tree(built, job_id)
        assert (made / "outputs" / job_id / "repx" / "make.stamp").is_file()
    # Each run's jobs were run by one repx process (its recipe), not one process per job.
    assert len({by_make[j].owner for j in graph.jobs}) == len(graph.runs)
    statuses = [json.loads(repx("status", "--json", "--lab", "result", "--store", str(s),
                                cwd=folder).stdout) for s in (built, made)]
    assert statuses[0]["runs"] == statuses[1]["runs"]

    second = make(folder, "-j2")
    assert "Nothing to be done for 'all'" in second.stdout
    assert "repx:" not in second.stdout
    assert records(made) == by_make  # nothing ran, not even a no-op build
    assert subprocess.run([require_make(), "-q", "-f", "lab.mk"], cwd=folder,
                          check=False).returncode == 0


@pytest.mark.nix
def test_stamps_follow_the_store_and_targets_select_runs(tmp_path: Path) -> None:
    require_nix()
    folder = tmp_path / "inter-run"
    shutil.copytree(EXAMPLES / "inter-run", folder, ignore=shutil.ignore_patterns("result"))
    repx("makefile", "simulation", "-o", "lab.mk", cwd=folder)
    text = (folder / "lab.mk").read_text()
    assert "GROUP_simulation :=" in text and "GROUP_analysis" not in text
    graph = open_lab(LabOptions(lab_dir=str(folder / "result")), validate=False)
    simulation = graph.runs["simulation"].job_ids

    make(folder, "-j2")
    before = records(folder / ".repx")
    assert sorted(before) == sorted(simulation)

    # A job removed from the store takes its stamp with it: make runs it again, and only
    # it (its downstream recipe finds its own job up to date and only renews the stamp).
    simulate = next(j for j in simulation if graph.jobs[j].pname == "simulate")
    repx("cache", "rm", simulate, cwd=folder)
    again = make(folder, "-j2")
    assert "repx: simulation (6 jobs)" in again.stdout
    after = records(folder / ".repx")
    assert sorted(after) == sorted(before)
    changed = [j for j in after if after[j].finished != before[j].finished]
    assert changed == [simulate]
    assert "Nothing to be done" in make(folder).stdout

    # A job a plain `repx build` ran (no stamp yet): its recipe runs nothing.
    repx("build", "analysis", "--quiet", cwd=folder)
    repx("makefile", "-o", "lab.mk", cwd=folder)
    done = records(folder / ".repx")
    make(folder, "analysis")
    assert records(folder / ".repx") == done

    # `make RUN` on an empty store: that run and the runs it depends on, nothing else.
    repx("makefile", "--store", str(tmp_path / "fresh"), "-o", "fresh.mk", cwd=folder)
    make_fresh = subprocess.run([require_make(), "-j2", "-f", "fresh.mk", "analysis"],
                                cwd=folder, capture_output=True, text=True, check=False)
    assert make_fresh.returncode == 0, make_fresh.stderr
    assert sorted(records(tmp_path / "fresh")) == sorted(
        [*simulation, *graph.runs["analysis"].job_ids])

    bad = repx("makefile", "--store", str(tmp_path / "my store"), cwd=folder, check=False)
    assert bad.returncode == 2 and "characters make cannot use" in bad.stderr


# Two runs: `sweep` (gen -> square over i = 0..3; gen fails for i = FAIL) and `other` (one
# independent stage over j = 0, 1).
SWEEP_LAB = {
    "lab.nix": """
        { pkgs, repx-lib, gitHash ? "unknown", ... }:
        repx-lib.mkLab {
          inherit pkgs repx-lib gitHash;
          lab_version = "1";
          runs = { sweep = repx-lib.callRun ./sweep.nix [ ];
                   other = repx-lib.callRun ./other.nix [ ]; };
        }
    """,
    "sweep.nix": """
        { pkgs, repx-lib, ... }:
        { name = "sweep"; pipelines = [ ./sweep-pipe.nix ];
          params = { i = [ 0 1 2 3 ]; fail = [ @FAIL@ ]; }; }
    """,
    "other.nix": """
        { pkgs, repx-lib, ... }:
        { name = "other"; pipelines = [ ./other-pipe.nix ]; params = { j = [ 0 1 ]; }; }
    """,
    "sweep-pipe.nix": """
        { repx, ... }:
        repx.mkPipe rec { gen = repx.callStage ./gen.nix [ ];
                          square = repx.callStage ./square.nix [ gen ]; }
    """,
    "other-pipe.nix": """
        { repx, ... }:
        repx.mkPipe rec { solo = repx.callStage ./solo.nix [ ]; }
    """,
    "gen.nix": """
        { pkgs }:
        { pname = "gen"; params = { i = 0; fail = 99; };
          outputs = { value = "$out/value.txt"; };
          runDependencies = [ pkgs.coreutils ];
          run = { outputs, params, ... }: ''
            [ "${toString params.i}" != "${toString params.fail}" ]
            echo "${toString params.i}" > "${outputs.value}"
          ''; }
    """,
    "square.nix": """
        { pkgs }:
        { pname = "square"; inputs = { value = ""; };
          outputs = { result = "$out/result.txt"; };
          runDependencies = [ pkgs.coreutils ];
          run = { inputs, outputs, ... }: ''
            v=$(cat "${inputs.value}")
            echo "$v $((v * v))" > "${outputs.result}"
          ''; }
    """,
    "solo.nix": """
        { pkgs }:
        { pname = "solo"; params = { j = 0; }; outputs = { out = "$out/solo.txt"; };
          runDependencies = [ pkgs.coreutils ];
          run = { outputs, params, ... }: ''
            echo "${toString params.j}" > "${outputs.out}"
          ''; }
    """,
}


def sweep_lab(root: Path, fail: int) -> tuple[Path, dict[str, dict[str, str]]]:
    """The lab above, built, with its Makefile lab.mk (store ./.repx); jobs by stage, then
    by their i/j param."""
    write_files(root, {name: text.replace("@FAIL@", str(fail))
                       for name, text in SWEEP_LAB.items()})
    repx("lab", "build", cwd=root)
    repx("makefile", "-o", "lab.mk", cwd=root)
    graph = open_lab(LabOptions(lab_dir=str(root / "result")), validate=False)
    jobs: dict[str, dict[str, str]] = {}
    def key_of(job_id: str) -> str:  # square has no params: its producer's i
        job = graph.jobs[job_id]
        if "i" in job.params or "j" in job.params:
            return str(job.params.get("i", job.params.get("j")))
        return key_of(job.depends_on[0])

    for job in graph.jobs.values():
        key = key_of(job.id)
        jobs.setdefault(job.pname, {})[key] = job.id
    return root, jobs


def statuses(store_dir: Path) -> dict[str, str]:
    if not Store.exists(store_dir):
        return {}
    return {job_id: r.status.value for job_id, r in records(store_dir).items()}


def run_make(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """make without failing the test on a non-zero exit (the caller checks)."""
    return subprocess.run([require_make(), *args], cwd=folder, capture_output=True, text=True,
                          check=False, timeout=180)


@pytest.mark.nix
def test_dry_run_targets_and_the_users_own_rules(tmp_path: Path) -> None:
    require_nix()
    require_make()
    folder, jobs = sweep_lab(tmp_path / "lab", fail=99)
    store = folder / ".repx"

    dry = make(folder, "-n", "-j2")
    assert dry.stdout.count("would run ") == 10  # one recipe per run, each a --dry-run
    assert "8 jobs would run" in dry.stdout and "2 jobs would run" in dry.stdout
    assert statuses(store) == {}  # -n ran nothing

    make(folder, "-j2", "other")  # one run: only its jobs
    assert sorted(statuses(store)) == sorted(jobs["solo"].values())

    # One job by id: it and its producer, nothing else.
    make(folder, jobs["square"]["1"])
    assert sorted(statuses(store)) == sorted([*jobs["solo"].values(), jobs["gen"]["1"],
                                              jobs["square"]["1"]])

    # A paper's rule on the sweep's outputs, shared make -j with the repx recipes.
    (folder / "Makefile").write_text(
        "include lab.mk\n"
        "squares.txt: $(call repx_output,sweep,square,result)\n"
        "\tsort $^ > $@\n")
    built = run_make(folder, "-j2", "squares.txt")
    assert built.returncode == 0, built.stdout + built.stderr
    assert (folder / "squares.txt").read_text() == "0 0\n1 1\n2 4\n3 9\n"
    assert set(statuses(store).values()) == {"succeeded"} and len(statuses(store)) == 10
    again = run_make(folder, "-j2", "squares.txt")
    assert "'squares.txt' is up to date" in again.stdout, again.stdout
    assert "repx:" not in again.stdout

    # A job rerun (its record and stamp removed) remakes the figure, and only that job runs.
    before = records(store)
    repx("cache", "rm", jobs["square"]["2"], cwd=folder)
    rerun = run_make(folder, "-j2", "squares.txt")
    assert rerun.returncode == 0 and "sort " in rerun.stdout, rerun.stdout + rerun.stderr
    after = records(store)
    assert [j for j in after if after[j].finished != before[j].finished] == \
        [jobs["square"]["2"]]
    assert "'squares.txt' is up to date" in run_make(folder, "squares.txt").stdout

    (folder / "bad.mk").write_text("include lab.mk\n"
                                   "bad.txt: $(call repx_output,sweep,nope,result)\n")
    unknown = run_make(folder, "-f", "bad.mk", "bad.txt")
    assert unknown.returncode == 2
    assert "repx_output: run 'sweep' has no stage 'nope' with an output 'result'" in \
        unknown.stderr


@pytest.mark.nix
def test_make_k_runs_every_job_but_the_failure_and_what_needs_it(tmp_path: Path) -> None:
    require_nix()
    require_make()
    folder, jobs = sweep_lab(tmp_path / "lab", fail=2)
    store = folder / ".repx"

    stopped = run_make(folder, "-j2", "-f", "lab.mk")  # without -k: stops at the failure
    assert stopped.returncode == 2
    assert statuses(store)[jobs["gen"]["2"]] == "failed"

    kept = run_make(folder, "-k", "-j2", "-f", "lab.mk")
    assert kept.returncode == 2, kept.stdout + kept.stderr
    final = statuses(store)
    assert final.pop(jobs["gen"]["2"]) == "failed"
    assert jobs["square"]["2"] not in final or final.pop(jobs["square"]["2"]) != "succeeded"
    expected = {i for stage in jobs.values() for i in stage.values()} - {
        jobs["gen"]["2"], jobs["square"]["2"]}
    assert set(final) == expected and set(final.values()) == {"succeeded"}
    outputs = store / "outputs"
    for job_id in expected:
        assert (outputs / job_id / "repx" / "make.stamp").is_file(), job_id
    assert not (outputs / jobs["gen"]["2"] / "repx" / "make.stamp").exists()
