"""``repx build --target`` with ``scheduler = "slurm"``: every example lab built here runs on
the test cluster through the remote's repx (sbatch as the rig's account, jobs in bwrap
binding the shipped store, no Nix on the remote), with the job ids and outputs of a local
build; ``artifact_store = "node-local"`` has each node unpack the lab's export, which the
remote makes from what was shipped (nothing is sent twice)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.buildutil import build, copy_example, out_dir
from tests.conftest import require_nix
from tests.remoteutil import shipped_line, tree
from tests.ssh_target import SshRig, ssh_rig_fixture

ssh_rig = ssh_rig_fixture()

#: The test cluster's nodes' scratch folders, as the host sees them (docs/slurm-cluster.md).
NODE_SCRATCH = Path("/var/lib/repx-slurm/nodes")

EXAMPLES = ["simple", "param-sweep", "scatter-gather", "inter-run", "zip-sweep", "dirs-files",
            "original-style"]


@pytest.fixture(scope="module")
def shared_base(ssh_rig: SshRig) -> str:
    require_nix()
    base = ssh_rig.fresh_base_path("r1-slurm")
    yield base
    ssh_rig.wipe(base)


@pytest.mark.parametrize("example", EXAMPLES)
def test_an_example_runs_under_slurm_on_the_target(example: str, ssh_rig: SshRig,
                                                   shared_base: str, tmp_path: Path) -> None:
    folder = copy_example(example, tmp_path)
    ssh_rig.write_target(folder, "cluster", base_path=shared_base, scheduler="slurm",
                         resources={"time": "00:05:00"})
    local_store = tmp_path / "local-store"
    local = build(folder, local_store)
    remote = build(folder, tmp_path / "unused", "--target", "cluster", "--poll", "0.2",
                   timeout=300)
    assert sorted(remote.executed) == sorted(local.executed) and remote["failed"] == []
    store = Path(shared_base) / "store"
    for job_id in local.executed:
        assert tree(out_dir(store, job_id)) == tree(out_dir(local_store, job_id)), job_id
    # The jobs went through sbatch: the remote store has the SLURM submissions.
    assert list((store / "slurm").glob("*.sbatch"))
    if example == "simple":
        again = build(folder, tmp_path / "unused", "--target", "cluster")
        assert again.executed == [] and "shipped nothing" in shipped_line(again.stderr)


def test_node_local_artifacts_unpack_the_shipped_lab_on_the_node(ssh_rig: SshRig,
                                                                 tmp_path: Path) -> None:
    require_nix()
    folder = copy_example("simple", tmp_path)
    # No artifact_dir: each node unpacks into its own $TMPDIR, its node-local scratch.
    base = ssh_rig.write_target(folder, "cluster", scheduler="slurm",
                                artifact_store="node-local", resources={"time": "00:05:00"})
    try:
        local_store = tmp_path / "local-store"
        local = build(folder, local_store)
        remote = build(folder, tmp_path / "unused", "--target", "cluster", "--poll", "0.2",
                       timeout=300)
        assert sorted(remote.executed) == sorted(local.executed) and remote["failed"] == []
        for job_id in local.executed:
            assert tree(out_dir(Path(base) / "store", job_id)) == \
                tree(out_dir(local_store, job_id))
        # The export tar the nodes unpacked was made on the remote, from the shipped paths.
        tars = list((Path(base) / "labs").glob("*.tar"))
        assert len(tars) == 1 and (Path(base) / "store" / "slurm" / "labs" / tars[0].name
                                   ).is_file()
        unpacked = [node for node in NODE_SCRATCH.glob("*/scratch")
                    if (node / "repx-labs" / tars[0].stem / "repx-unpacked.json").is_file()]
        assert unpacked, f"no node unpacked {tars[0].stem} into its scratch"
    finally:
        ssh_rig.wipe(base)
