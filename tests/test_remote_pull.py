"""``repx pull --target``: a target's finished jobs in the local store, against the real sshd.

Each example lab is built here and run on the test target (``repx build --target``); then
the local store, empty before, is filled by ``repx pull``. The remote's own store is copied
out of band (ssh + tar, not repx) to be the reference: after a pull, ``Experiment`` gives
the same DataFrame over the local store as over that copy, and the pulled files are
byte-identical to the remote's.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from repx.analysis import Experiment
from repx.store import Store
from tests.buildutil import copy_example, repx
from tests.conftest import require_nix
from tests.ssh_target import SshRig, ssh_rig_fixture

ssh_rig = ssh_rig_fixture()


@dataclass
class RemoteLab:
    """An example lab run on the target, and a copy of the target's store beside it."""

    folder: Path
    base_path: str
    reference: Path  #: the remote store, copied out of band

    def pull(self, *args: str, store: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return repx("pull", "--target", "remote", "--lab", "result", "--store", str(store),
                    *args, cwd=self.folder, check=check)

    def pull_json(self, *args: str, store: Path) -> dict[str, object]:
        return json.loads(self.pull("--json", *args, store=store).stdout)


def copy_remote_store(rig: SshRig, base_path: str, dest: Path) -> Path:
    """The remote's ``BASE/store`` copied here with ssh and tar (not with repx)."""
    dest.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(rig.ssh_argv(["tar", "-C", base_path, "-c", "store"]),
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(dest, filter="tar")
    assert proc.returncode == 0
    return dest / "store"


def run_on_target(rig: SshRig, example: str, tmp: Path, base_path: str | None = None
                  ) -> RemoteLab:
    require_nix()
    folder = copy_example(example, tmp)
    base = rig.write_target(folder, "remote",
                            base_path=base_path or rig.fresh_base_path(f"pull-{example}"))
    repx("lab", "build", cwd=folder)
    repx("build", "--target", "remote", "--lab", "result", cwd=folder, timeout=300)
    return RemoteLab(folder, base, copy_remote_store(rig, base, tmp / "reference"))


@pytest.fixture(scope="module")
def sweep(ssh_rig: SshRig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteLab]:
    lab = run_on_target(ssh_rig, "param-sweep", tmp_path_factory.mktemp("sweep"))
    yield lab
    ssh_rig.wipe(lab.base_path)


def frame(lab: Path, store: Path) -> object:
    with Experiment(lab, store=store) as exp:
        return exp.jobs().to_dataframe().sort_values("id").reset_index(drop=True)


def out_files(store: Path) -> dict[str, bytes]:
    root = store / "outputs"
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.glob("*/out/**/*")) if p.is_file()}


def test_pull_gives_the_remote_experiment_then_only_what_is_missing(
        sweep: RemoteLab, tmp_path: Path) -> None:
    local = tmp_path / "store"
    summary = sweep.pull_json(store=local)
    assert len(summary["imported"]) == 13
    assert summary["failed"] == {} and summary["active"] == [] and summary["missing"] == []
    assert summary["bytes_received"] > 0
    ours, theirs = frame(sweep.folder / "result", local), frame(sweep.folder / "result",
                                                                 sweep.reference)
    assert list(ours["status"]) == ["succeeded"] * 13
    assert ours.equals(theirs), f"\n{ours}\n---\n{theirs}"
    assert out_files(local) == out_files(sweep.reference)
    # Records are the remote's, except for the log paths, which name the local folders.
    with Store(local, readonly=True) as mine, Store(sweep.reference, readonly=True) as ref:
        for record in ref.records():
            pulled = mine.get(record.job_id)
            assert pulled is not None
            assert (pulled.started, pulled.finished, pulled.outputs, pulled.host) == (
                record.started, record.finished, record.outputs, record.host)
            assert pulled.stdout_log.startswith(str(local))
            assert mine.verify(pulled) == []
    # The tools that read the store work on it: status, the graph's colours, the report.
    status = repx("status", "--lab", "result", "--store", str(local), "--json",
                  cwd=sweep.folder)
    assert '"succeeded"' in status.stdout
    viz = repx("viz", "--lab", "result", "--store", str(local), cwd=sweep.folder)
    assert "13 jobs: 13 succeeded" in viz.stdout
    report = tmp_path / "report.html"
    repx("report", "--lab", "result", "--store", str(local), "-o", str(report),
         cwd=sweep.folder)
    assert "train-model" in report.read_text()

    # A second pull sends nothing.
    again = sweep.pull_json(store=local)
    assert again["imported"] == [] and len(again["up_to_date"]) == 13
    assert (again["files_received"], again["bytes_received"]) == (0, 0)

    # A damaged local file is sent again: one of another size at once, one of the same
    # size with --verify (which hashes what earlier pulls verified).
    victims = sorted((local / "outputs").glob("*/out/metrics.json"))
    for victim in victims[:2]:
        victim.chmod(0o644)
    victims[0].write_text("{}")
    same_size = bytearray(victims[1].read_bytes())
    same_size[0] ^= 1
    victims[1].write_bytes(bytes(same_size))
    assert sweep.pull_json(store=local)["files_received"] == 1
    assert sweep.pull_json("--verify", store=local)["files_received"] == 1
    assert out_files(local) == out_files(sweep.reference)


def test_include_and_max_size_choose_outputs_and_the_rest_follows_later(
        sweep: RemoteLab, tmp_path: Path) -> None:
    local = tmp_path / "store"
    first = sweep.pull_json("--include", "*.json", store=local)
    pulled = out_files(local)
    assert pulled and all(name.endswith(".json") for name in pulled)
    assert first["outputs_left"] > 0
    # A job without all its outputs runs again for a local build: the planner sees them.
    plan = json.loads(repx("build", "--dry-run", "--lab", "result", "--store", str(local),
                           "--json", cwd=sweep.folder).stdout)
    assert plan["would_run"] and plan["up_to_date"]
    assert all("is missing" in why for why in plan["reasons"].values()), plan["reasons"]
    # The second pull sends exactly what the first left on the target.
    rest = sweep.pull_json(store=local)
    assert rest["files_received"] == first["outputs_left"]
    assert out_files(local) == out_files(sweep.reference)
    # --max-size: nothing over the limit; dataset.csv (~2 KB) is over 100 bytes.
    small = tmp_path / "small"
    sweep.pull_json("--max-size", "100", store=small)
    sizes = {name: len(data) for name, data in out_files(small).items()}
    assert all(size <= 100 for size in sizes.values())
    assert not any(name.endswith("dataset.csv") for name in sizes)


def test_a_remote_file_that_does_not_match_its_record_is_not_recorded(
        sweep: RemoteLab, ssh_rig: SshRig, tmp_path: Path) -> None:
    ref_outputs = sweep.reference / "outputs"
    victim_local = sorted(ref_outputs.glob("*/out/model.txt"))[0]
    job_id = victim_local.parent.parent.name
    remote_file = f"{sweep.base_path}/store/outputs/{job_id}/out/model.txt"
    original = victim_local.read_bytes()
    quoted = shlex.quote(remote_file)
    ssh_rig.ssh(f"chmod u+w {quoted} && printf tampered > {quoted}")
    try:
        local = tmp_path / "store"
        result = sweep.pull(store=local, check=False)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert job_id in result.stderr and "BLAKE3" in result.stderr, result.stderr
        with Store(local, readonly=True) as store:
            assert store.get(job_id) is None  # not half-recorded
            assert len(list(store.records())) == 12  # every other job is
        assert not (local / "outputs" / job_id / "out" / "model.txt").exists()
        assert not list(local.glob(".pull-*"))
    finally:
        ssh_rig.ssh(["sh", "-c", 'cat > "$1"', "sh", remote_file], input=original.decode())
    fixed = sweep.pull_json(store=local)
    assert fixed["imported"] == [job_id]


def test_local_successes_are_kept(sweep: RemoteLab, tmp_path: Path) -> None:
    local = tmp_path / "store"
    repx("build", "--lab", "result", "--store", str(local), cwd=sweep.folder, timeout=300)
    with Store(local, readonly=True) as store:
        before = {r.job_id: r.finished for r in store.records()}
    summary = sweep.pull_json(store=local)
    assert summary["imported"] == []
    assert sorted(summary["kept_local"]) == sorted(before)
    with Store(local, readonly=True) as store:
        assert {r.job_id: r.finished for r in store.records()} == before


def test_scatter_gather_units_come_along(sweep: RemoteLab, ssh_rig: SshRig,
                                        tmp_path: Path) -> None:
    # The same target (and base_path) as the sweep: repx and the shared paths are there.
    lab = run_on_target(ssh_rig, "scatter-gather", tmp_path, base_path=sweep.base_path)
    local = tmp_path / "store"
    summary = lab.pull_json(store=local)
    with Store(lab.reference, readonly=True) as ref, \
            Store(sweep.reference, readonly=True) as before:
        remote_ids = sorted({r.job_id for r in ref.records()}
                            - {r.job_id for r in before.records()})
    assert sorted(summary["imported"]) == remote_ids
    assert len(remote_ids) > 4  # the lab's 4 jobs, plus the units of its gather
    assert frame(lab.folder / "result", local).equals(
        frame(lab.folder / "result", lab.reference))
    assert out_files(local).items() <= out_files(lab.reference).items()
    assert {name.split("/")[0] for name in out_files(local)} <= set(remote_ids)


def test_pull_errors_are_one_line(sweep: RemoteLab, tmp_path: Path) -> None:
    unknown = sweep.pull("no-such-run", store=tmp_path / "s", check=False)
    assert unknown.returncode == 2 and "unknown target 'no-such-run'" in unknown.stderr
    size = sweep.pull("--max-size", "lots", store=tmp_path / "s", check=False)
    assert size.returncode == 2 and "--max-size 'lots' is not a size" in size.stderr
    missing = repx("pull", "--target", "nowhere", "--lab", "result", "--store",
                   str(tmp_path / "s"), cwd=sweep.folder, check=False)
    assert missing.returncode == 2 and "unknown target 'nowhere'" in missing.stderr
    for result in (unknown, size, missing):
        assert "Traceback" not in result.stderr


def test_a_cut_connection_loses_nothing_and_the_next_pull_resumes(
        sweep: RemoteLab, tmp_path: Path) -> None:
    """The ssh of the file transfer dies after 40 000 bytes (a wrapper named by REPX_SSH
    cuts it): jobs whose files all arrived are recorded, no other; the next pull sends only
    the rest."""
    cutter = tmp_path / "ssh-that-breaks"
    cutter.write_text(
        "#!/bin/bash\n"
        'case "$*" in\n'
        '  *_pull-serve*send*) ssh "$@" | head -c 40000; exit 255 ;;\n'
        '  *) exec ssh "$@" ;;\n'
        "esac\n")
    cutter.chmod(0o755)
    local = tmp_path / "store"
    cut = repx("pull", "--target", "remote", "--lab", "result", "--store", str(local),
               cwd=sweep.folder, check=False, env={"REPX_SSH": str(cutter)})
    assert cut.returncode == 1
    assert "Traceback" not in cut.stderr and "the transfer stopped" in cut.stderr, cut.stderr
    with Store(local, readonly=True) as store:
        recorded = list(store.records())
        assert 0 < len(recorded) < 13, cut.stderr
        for record in recorded:  # a record only with every file of it
            assert store.verify(record) == [], record.job_id
    assert not list(local.glob(".pull-*"))
    resumed = sweep.pull_json(store=local)
    assert len(resumed["imported"]) == 13 - len(recorded)
    assert sorted(resumed["up_to_date"]) == sorted(r.job_id for r in recorded)
    assert out_files(local) == out_files(sweep.reference)


def test_pull_only_the_chosen_jobs(sweep: RemoteLab, tmp_path: Path) -> None:
    with Store(sweep.reference, readonly=True) as ref:
        chosen = sorted(r.job_id for r in ref.records() if r.stage == "evaluate")[0]
    local = tmp_path / "store"
    summary = sweep.pull_json(chosen[:12], store=local)
    assert summary["imported"] == [chosen]
    with Store(local, readonly=True) as store:
        assert [r.job_id for r in store.records()] == [chosen]
