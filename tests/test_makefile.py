"""``repx makefile``: `make -j2` gives the outputs and store records `repx build` gives, a
second `make` runs nothing, and the stamps follow the store."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from repx.lab import LabOptions, open_lab
from repx.store import JobRecord, Store
from tests.conftest import EXAMPLES, require_nix
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
@pytest.mark.parametrize("example", ["inter-run", "scatter-gather"])
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
    assert text.count("\t$(Q)$(REPX_BUILD) ") == len(graph.jobs)

    first = make(folder, "-j2")
    ran = re.findall(r"^repx: \S+ (\S+)$", first.stdout, re.M)
    assert sorted(ran) == sorted(graph.jobs)

    by_build, by_make = records(built), records(made)
    assert sorted(by_make) == sorted(by_build)  # units of scatter-gather jobs included
    for job_id, record in by_build.items():
        assert comparable(by_make[job_id]) == comparable(record), job_id
    for job_id in graph.jobs:
        assert by_make[job_id].status.value == "succeeded"
        assert output_tree(made, job_id) == output_tree(built, job_id)
        assert (made / "outputs" / job_id / "repx" / "make.stamp").is_file()
    # Each recipe ran its one job: every job was claimed by a repx process of its own.
    assert len({by_make[j].owner for j in graph.jobs}) == len(graph.jobs)
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
    assert "RUN_simulation :=" in text and "RUN_analysis" not in text
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
    assert f"simulation/simulate {simulate}" in again.stdout
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

    bad = repx("makefile", "--store", str(tmp_path / "my store"), cwd=folder, check=False)
    assert bad.returncode == 2 and "characters make cannot use" in bad.stderr
