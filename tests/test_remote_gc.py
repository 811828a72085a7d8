"""``show``, ``cache`` and ``gc`` with ``--target`` act on the remote's store: what they
report is what that store holds (read back from its folder on disk: the rig's account lives
on this machine and the tests run as root), and a remote gc after the lab changed removes
the jobs no remote gc root reaches, then the shipped labs and store paths only those roots
used, while the current lab stays whole and built. A real sshd (tests/ssh/sshd.sh), no Nix
there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from repx.store import Store
from tests.buildutil import build, repx, write_lab
from tests.conftest import require_nix
from tests.remoteutil import CHAIN_PIPE, COPY_CONSUMER, remote_jobs, shipped_line
from tests.ssh_target import SshRig, ssh_rig_fixture

ssh_rig = ssh_rig_fixture()

RUN = """
{ pkgs, repx-lib, ... }:
{
  name = "main";
  pipelines = [ ./pipe.nix ];
  params = { a = [ 1 2 ]; };
}
"""

#: ``blob`` is a store path of its own: another data.bin is another lab (new job ids) with
#: one store path the first lab lacks, and the first lab's data.bin only it uses.
PRODUCER = """
{ pkgs }:
{
  pname = "producer";
  params = { a = 0; blob = ./data.bin; };
  outputs = { data = "$out/data.txt"; };
  run = { outputs, params, ... }: ''
    echo "WORD ${toString params.a} $(cat ${params.blob})" > "${outputs.data}"
  '';
}
"""


#: What a job folder's name in the remote store may be that no record names (a build
#: killed before recording, a copy by hand): gc removes it as an orphan.
ORPHAN = "0000orphan"


def _lab(folder: Path, data: str) -> Path:
    write_lab(folder, {"run.nix": RUN, "pipe.nix": CHAIN_PIPE, "producer.nix": PRODUCER,
                       "consumer.nix": COPY_CONSUMER})
    (folder / "data.bin").write_text(data)
    return folder


def _stored(store_dir: Path) -> dict[str, dict[str, object]]:
    """The remote store's records, read from its LMDB on disk (not through repx there)."""
    with Store(store_dir, readonly=True) as store:
        return {r.job_id: {"status": r.status.value, "run": r.run, "stage": r.stage,
                           "bytes": sum(f.size for f in r.outputs)}
                for r in store.records()}


def _pool(base: Path, suffix: str) -> list[str]:
    """The shipped store paths of the remote's pool whose name ends with ``suffix``."""
    return sorted(p.name for p in (base / "paths").iterdir() if p.name.endswith(suffix))


def _labs(base: Path) -> list[str]:
    return sorted(p.name for p in (base / "labs").iterdir() if p.is_dir())


@pytest.fixture
def base(ssh_rig: SshRig) -> str:
    require_nix()
    path = ssh_rig.fresh_base_path("r1-gc")
    yield path
    ssh_rig.wipe(path)


def test_show_cache_and_gc_act_on_the_remote_store(ssh_rig: SshRig, base: str,
                                                   tmp_path: Path) -> None:
    folder = _lab(tmp_path / "lab", "first")
    ssh_rig.write_target(folder, "t", base_path=base)
    remote = Path(base)
    store_dir = remote / "store"
    first = build(folder, tmp_path / "unused", "--target", "t")
    assert len(first.executed) == 4 and first["failed"] == []
    stored = _stored(store_dir)
    assert set(stored) == set(first.executed)

    # show job: the remote lab's view of the job joined with the remote store's record.
    producer = next(i for i, r in stored.items() if r["stage"] == "producer")
    shown = json.loads(repx("show", "job", producer[:10], "--json", "--target", "t",
                            cwd=folder).stdout)
    assert shown["id"] == producer and shown["in_lab"] is True
    assert shown["status"] == "succeeded" and shown["stage"] == "producer"
    assert shown["params"]["a"] in (1, 2)
    assert shown["job_dir"] == str(store_dir / "outputs" / producer)
    assert shown["outputs_bytes"] == stored[producer]["bytes"] > 0
    text = repx("show", producer, "--target", "t", cwd=folder).stdout
    assert producer in text and str(store_dir) in text

    # cache ls / stats: the remote store's records, nothing of the (empty) local one.
    rows = json.loads(repx("cache", "ls", "--json", "--target", "t", cwd=folder).stdout)
    assert {row["id"]: {k: row[k] for k in ("status", "run", "stage", "bytes")}
            for row in rows} == stored
    ssh_rig.ssh(["mkdir", f"{store_dir}/outputs/{ORPHAN}"])
    stats = json.loads(repx("cache", "stats", "--json", "--target", "t", cwd=folder).stdout)
    assert stats["store"] == str(store_dir) and stats["records"] == 4
    assert stats["by_status"]["succeeded"] == 4 and stats["orphan_folders"] == 1
    assert stats["outputs_bytes"] == sum(r["bytes"] for r in stored.values())
    assert stats["roots"] == 1 and stats["last_build"]["executed"] == 4
    assert not (tmp_path / "unused").exists() and not (folder / ".repx").exists()

    # Another data.bin: a second lab (four new jobs, one new store path) is shipped.
    old_blob = _pool(remote, "-data.bin")
    assert len(old_blob) == 1
    _lab(folder, "second")
    second = build(folder, tmp_path / "unused", "--target", "t")
    assert len(second.executed) == 4 and not set(second.executed) & set(first.executed)
    assert len(_labs(remote)) == 2 and len(_pool(remote, "-data.bin")) == 2
    before = len(list((remote / "paths").iterdir()))
    # The first lab is still a gc root of the remote store: a plain gc keeps its jobs (it
    # removes the orphan folder only) and no shipped lab goes.
    kept = repx("gc", "--target", "t", "-y", cwd=folder)
    assert f"removed orphan folder outputs/{ORPHAN}" in kept.stdout, kept.stdout
    assert "shipped lab" not in kept.stderr, kept.stderr
    assert set(remote_jobs(folder, "t")) == set(first.executed) | set(second.executed)
    assert len(_labs(remote)) == 2 and not (store_dir / "outputs" / ORPHAN).exists()

    # show job of the first lab's job: the store still has it, the current lab does not.
    older = json.loads(repx("show", "job", first.executed[0], "--json", "--target", "t",
                            cwd=folder).stdout)
    assert older["in_lab"] is False and older["status"] == "succeeded"

    # A dry run says what would go and removes nothing, there or of what was shipped.
    planned = repx("gc", "--target", "t", "--keep-recent", "0", "--dry-run", cwd=folder)
    assert "gc: would remove 4 jobs" in planned.stdout, planned.stdout
    assert "shipped lab" not in planned.stderr, planned.stderr
    assert len(_stored(store_dir)) == 8 and len(_labs(remote)) == 2
    assert len(list((remote / "paths").iterdir())) == before

    # --keep-recent 0 drops the first lab's root: its jobs' folders go, then the lab
    # shipped for it and the store paths only it linked (its data.bin among them).
    collected = repx("gc", "--target", "t", "--keep-recent", "0", "-y", cwd=folder)
    assert "gc: removed 4 jobs" in collected.stdout, collected.stdout
    match = re.search(r"removed (\d+) shipped labs? and (\d+) store paths? no gc root uses",
                      collected.stderr)
    assert match is not None, collected.stderr
    labs_removed, paths_removed = int(match.group(1)), int(match.group(2))
    assert labs_removed == 1 and paths_removed >= 1
    assert len(list((remote / "paths").iterdir())) == before - paths_removed
    assert set(_pool(remote, "-data.bin")).isdisjoint(old_blob)
    assert len(_labs(remote)) == 1
    assert set(_stored(store_dir)) == set(second.executed)
    for job_id in first.executed:
        assert not (store_dir / "outputs" / job_id).exists(), job_id
    for job_id in second.executed:
        assert (store_dir / "outputs" / job_id / "out").is_dir(), job_id
    gone = repx("show", "job", first.executed[0], "--target", "t", cwd=folder, check=False)
    assert gone.returncode == 2 and first.executed[0][:8] in gone.stderr, gone.stderr

    # The current lab was kept whole: a rebuild ships and executes nothing.
    again = build(folder, tmp_path / "unused", "--target", "t")
    assert again.executed == [] and sorted(again["up_to_date"]) == sorted(second.executed)
    assert "shipped nothing" in shipped_line(again.stderr)
    # The first lab again: what gc pruned is shipped anew, and its jobs run again.
    _lab(folder, "first")
    back = build(folder, tmp_path / "unused", "--target", "t")
    assert sorted(back.executed) == sorted(first.executed)
    sent = re.search(r"shipped (\d+) store paths? of", shipped_line(back.stderr))
    assert sent is not None and int(sent.group(1)) >= 1, back.stderr
