"""`repx build --scheduler slurm --scratch node-local` on the real cluster.

What is pinned: a job's outputs are written on its node's scratch and land in the store only
after it succeeded, equal to the BLAKE3 manifest the node computed; a job killed mid-write
(its node killed: slurmd and every process of its jobs) leaves no ``out/`` at all in the
shared store, and the next build reruns it and verifies it; ``--keep-failed-scratch`` leaves the
failed job's scratch as a tar in its job folder; a store copy that differs from the node's
manifest is refused; the manifest the node computes follows the store's own rules.
"""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import pytest

from repx.engine.slurm.scratch import (
    FAILED_SCRATCH_TAR,
    SCRATCH_MANIFEST,
    manifest_mismatch,
    tree_manifest,
)
from repx.store import Status, Store
from tests.conftest import require_nix
from tests.slurm_cluster import (
    SCRATCH_MOUNT,
    node_down,
    node_scratch,
    node_up,
    slurm_cluster_fixture,
)
from tests.test_slurm_build import build_json, repx

slurm = slurm_cluster_fixture()

#: A stage of two jobs writing two files each; with HOLD present a job writes the first
#: file, says so in REACHED-<n> and waits (a job caught mid-write); n = 3 fails after
#: writing its first file.
SCRATCH_LAB = {
    "run.nix": """
        { pkgs, repx-lib, ... }:
        { name = "main"; pipelines = [ ./pipe.nix ]; params = { n = [ 1 2 ]; }; }
    """,
    "pipe.nix": """
        { repx, pkgs, ... }:
        repx.mkPipe rec {
          write = repx.callStage ./write.nix [ ];
          after = repx.callStage ./after.nix [ write ];
        }
    """,
    "write.nix": """
        { pkgs }:
        {
          pname = "write"; version = "1";
          params = { n = 0; };
          outputs = { first = "$out/first.txt"; second = "$out/sub/second.txt"; };
          resources = { time = "00:05:00"; };
          runDependencies = [ pkgs.coreutils ];
          run = { outputs, params, ... }: ''
            n=${toString params.n}
            seq 1 20000 > "${outputs.first}"
            if [ -e FLAGS/hold ]; then
              echo "$SLURMD_NODENAME $out" > FLAGS/reached-$n
              while [ -e FLAGS/hold ]; do sleep 0.2; done
            fi
            if [ "$n" = 3 ]; then echo "job 3 fails half-way" >&2; exit 4; fi
            mkdir -p "$out/sub"
            echo "second of $n" > "${outputs.second}"
          '';
        }
    """,
    "after.nix": """
        { pkgs }:
        {
          pname = "after"; version = "1";
          inputs = { second = ""; };
          outputs = { done = "$out/done.txt"; };
          runDependencies = [ pkgs.coreutils ];
          run = { inputs, outputs, ... }: ''
            cat "${inputs.second}" > "${outputs.done}"
          '';
        }
    """,
}


def scratch_lab(make_lab, flags: Path, sweep: str = "[ 1 2 ]") -> Path:
    flags.mkdir(parents=True, exist_ok=True)
    files = {k: v.replace("FLAGS", str(flags)).replace("[ 1 2 ]", sweep)
             for k, v in SCRATCH_LAB.items()}
    return make_lab(files)


def records_of(store: Path, stage: str) -> list:
    return [r for r in Store(store, readonly=True).records() if r.stage == stage]


def assert_verified(store: Path, record) -> None:
    """The record's outputs are the files in out/, and equal to the node's manifest."""
    out = store / "outputs" / record.job_id / "out"
    manifest_file = store / "outputs" / record.job_id / "repx" / SCRATCH_MANIFEST
    assert manifest_file.is_file(), "the job did not run on node-local scratch"
    node = json.loads(manifest_file.read_text())
    recorded = [[f.path, f.size, f.blake3] for f in record.outputs]
    assert recorded == node and [p for p, _s, _d in node] == ["first.txt", "sub/second.txt"]
    assert manifest_mismatch(str(manifest_file), tree_manifest(str(out))) is None
    assert not list((store / "outputs" / record.job_id).glob(".commit-*"))


def wait_for(paths: list[Path], timeout: float = 300) -> None:
    """Wait for the jobs to create ``paths`` (the cluster is shared: others' arrays may
    hold ours back)."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise AssertionError(f"the jobs did not reach {[str(p) for p in paths]}")
        time.sleep(0.2)


@pytest.mark.slurm
@pytest.mark.nix
def test_scratch_job_succeeds_and_its_outputs_are_verified_in_the_store(
        slurm, make_lab, tmp_path: Path) -> None:
    require_nix()
    folder = scratch_lab(make_lab, tmp_path / "flags")
    store = folder / ".repx"
    (folder / "repx.toml").write_text('scratch = "node-local"\n')  # as --scratch node-local
    # --retries: a node another test of this shared cluster kills is not our failure.
    done = build_json(folder, "--scheduler", "slurm", "--poll", "0.3",
                      "--retries", "2")
    assert done["failed"] == [] and len(done["executed"]) == 4, done["failures"]
    for record in records_of(store, "write"):
        assert record.status is Status.SUCCEEDED
        assert_verified(store, record)
        wrote = (store / "outputs" / record.job_id / "out" / "sub" / "second.txt").read_text()
        assert wrote.startswith("second of ")
    # downstream read the committed outputs from the store
    for record in records_of(store, "after"):
        assert (store / "outputs" / record.job_id / "out" / "done.txt").read_text() \
            .startswith("second of ")
    again = build_json(folder, "--scheduler", "slurm", "--scratch", "node-local")
    assert again["executed"] == [] and len(again["up_to_date"]) == 4


@pytest.mark.slurm
@pytest.mark.nix
def test_node_killed_mid_write_leaves_nothing_in_the_store_and_job_is_rerun(
        slurm, make_lab, tmp_path: Path) -> None:
    require_nix()
    flags = tmp_path / "flags"
    folder = scratch_lab(make_lab, flags)
    store = folder / ".repx"
    (flags / "hold").touch()
    first = build_json(folder, "--scheduler", "slurm", "--scratch", "node-local",
                       "--no-wait")
    assert len(first["submitted"]) == 4
    wait_for([flags / "reached-1", flags / "reached-2"])
    writes = {json.loads((store / "outputs" / r.job_id / "repx" / "params.json")
                         .read_text())["n"]: r for r in records_of(store, "write")}
    # Each job has written its first file on its own node's scratch, none in the store.
    node, scratch_out = (flags / "reached-1").read_text().split()
    on_host = node_scratch(node) / Path(scratch_out).relative_to(SCRATCH_MOUNT)
    assert (on_host / "first.txt").is_file(), "job 1 does not write on its node's scratch"
    for record in writes.values():
        assert not (store / "outputs" / record.job_id / "out").exists()
    killed = writes[1]
    try:
        node_down(node)  # slurmd and every process of its jobs SIGKILLed: no trap runs
        deadline = time.monotonic() + 120
        while Store(store, readonly=True).get(killed.job_id).status.active:
            assert time.monotonic() < deadline, "repx status never recorded the killed job"
            repx("status", "--store", str(store), cwd=folder, check=False)
            time.sleep(0.5)
    finally:
        node_up(node)
    after_kill = Store(store, readonly=True).get(killed.job_id)
    assert after_kill.status in (Status.FAILED, Status.CANCELLED), after_kill
    assert not (store / "outputs" / killed.job_id / "out").exists(), \
        "a job killed mid-write left outputs in the shared store"
    assert (on_host / "first.txt").is_file()  # the half-written scratch died with the node
    (flags / "hold").unlink()
    # --retries: a node another test of this shared cluster kills is not our failure.
    rerun = build_json(folder, "--scheduler", "slurm", "--scratch", "node-local",
                       "--poll", "0.3",
                       "--retries", "2")
    assert rerun["failed"] == [], rerun["failures"]
    assert killed.job_id in rerun["executed"]
    for record in records_of(store, "write"):
        assert record.status is Status.SUCCEEDED
        assert_verified(store, record)
    assert Store(store, readonly=True).get(killed.job_id).slurm_id != killed.slurm_id


@pytest.mark.slurm
@pytest.mark.nix
def test_keep_failed_scratch_archives_the_failed_job_and_stores_no_output(
        slurm, make_lab, tmp_path: Path) -> None:
    require_nix()
    folder = scratch_lab(make_lab, tmp_path / "flags", sweep="[ 2 3 ]")
    store = folder / ".repx"
    result = build_json(folder, "--scheduler", "slurm", "--scratch", "node-local",
                        "--keep-failed-scratch", "--keep-going", "--poll", "0.3",
                        check=False)
    assert [f["reason"] for f in result["failures"]] == ["exit code 4"]
    by_status = {r.status: r for r in records_of(store, "write")}
    failed, succeeded = by_status[Status.FAILED], by_status[Status.SUCCEEDED]
    job = store / "outputs" / failed.job_id
    assert not (job / "out").exists(), "a failed job's outputs reached the store"
    with tarfile.open(job / "repx" / FAILED_SCRATCH_TAR) as archive:
        names = sorted(m.name for m in archive.getmembers() if m.isfile())
        assert names == ["./first.txt"]
        member = archive.extractfile("./first.txt")
        assert member is not None and member.read().splitlines()[-1] == b"20000"
    assert not (store / "outputs" / succeeded.job_id / "repx" / FAILED_SCRATCH_TAR).exists()
    assert_verified(store, succeeded)


def test_node_manifest_follows_the_store_rules_and_a_differing_copy_is_refused(
        tmp_path: Path) -> None:
    Store(tmp_path).close()  # a store first: job folders beside no database are refused
    out = tmp_path / "outputs" / "job1" / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("alpha\n")
    (out / "sub" / "b.bin").write_bytes(bytes(range(256)) * 64)
    (out / "link").symlink_to("a.txt")
    (out / "dangling").symlink_to("nowhere")
    (out / "slurm-12.out").write_text("SLURM's log, not an output\n")
    with Store(tmp_path) as store:
        stored = [(f.path, f.size, f.blake3) for f in store.manifest("job1")]
    node = tree_manifest(str(out))
    assert node == stored and [p for p, _s, _d in node] == ["a.txt", "link", "sub/b.bin"]
    manifest = tmp_path / "node.json"
    manifest.write_text(json.dumps(node))
    assert manifest_mismatch(str(manifest), stored) is None
    changed = [(p, s, d if p != "sub/b.bin" else "0" * 64) for p, s, d in stored]
    assert "sub/b.bin differs" in (manifest_mismatch(str(manifest), changed) or "")
    assert "a.txt" in (manifest_mismatch(str(manifest), stored[1:]) or "")
    extra = [*stored, ("new.txt", 1, "0" * 64)]
    assert "new.txt, which the job did not write" in (manifest_mismatch(str(manifest), extra)
                                                      or "")


@pytest.mark.nix
def test_scratch_options_refuse_what_cannot_work(make_lab, tmp_path: Path) -> None:
    require_nix()
    folder = scratch_lab(make_lab, tmp_path / "flags")
    cases = [
        (["--scratch", "node-local"], "are for --scheduler slurm"),
        (["--scheduler", "slurm", "--keep-failed-scratch"], "go with --scratch node-local"),
        (["--scheduler", "slurm", "--scratch", "node-local", "--scratch-dir", "rel/dir"],
         "give an absolute path"),
        (["--scheduler", "slurm", "--scratch", "node-local", "--runtime", "bwrap"],
         "--scratch node-local runs jobs natively"),
    ]
    for args, message in cases:
        proc = repx("build", "--store", str(folder / ".repx"), *args, cwd=folder, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    (folder / "repx.toml").write_text('scratch = "tmpfs"\n')
    proc = repx("build", "--store", str(folder / ".repx"), "--scheduler", "slurm",
                cwd=folder, check=False)
    assert proc.returncode == 2 and "repx.toml: scratch = 'tmpfs'" in proc.stderr, proc.stderr
