"""``repx build --target``: labs built here, shipped over a real ssh, run on a remote without
Nix (tests/ssh/sshd.sh: sshd in a mount namespace with an empty /nix), with the remote's
local scheduler (SLURM: tests/test_remote_slurm.py), giving the job ids and the outputs
of a local build.

The remote store is read back with the remote repx (``cache ls --json --target``) and, for
byte comparisons, from its folder on disk: the rig's account lives on this machine, and the
tests run as root.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.buildutil import build, copy_example, out_dir
from tests.conftest import require_nix
from tests.remoteutil import remote_jobs, shipped_line, tree
from tests.ssh_target import SshRig, ssh_rig_fixture

ssh_rig = ssh_rig_fixture()

#: One pool of shipped store paths for the module (examples share most of their closure:
#: that is what incremental shipping is for, and it keeps the module fast).
SHARED = "shared"

EXAMPLES = ["simple", "param-sweep", "scatter-gather", "inter-run", "zip-sweep", "dirs-files",
            "original-style"]


@pytest.fixture(scope="module")
def shared_base(ssh_rig: SshRig) -> str:
    require_nix()
    base = ssh_rig.fresh_base_path("r1-build")
    yield base
    ssh_rig.wipe(base)


@pytest.mark.parametrize("example", EXAMPLES)
def test_an_example_runs_on_the_target_as_it_runs_here(example: str, ssh_rig: SshRig,
                                                       shared_base: str, tmp_path: Path
                                                       ) -> None:
    folder = copy_example(example, tmp_path)
    ssh_rig.write_target(folder, SHARED, base_path=shared_base)
    local_store = tmp_path / "local-store"
    local = build(folder, local_store)
    remote = build(folder, tmp_path / "unused", "--target", SHARED, timeout=240)
    assert sorted(remote.executed) == sorted(local.executed) and remote["failed"] == []
    # The remote recorded the local build's jobs (the module's store also holds the other
    # examples'), and wrote the same bytes.
    recorded = remote_jobs(folder, SHARED)
    assert {job: recorded.get(job) for job in local.executed} == \
        dict.fromkeys(local.executed, "succeeded")
    for job_id in local.executed:
        assert tree(out_dir(Path(shared_base) / "store", job_id)) == \
            tree(out_dir(local_store, job_id)), job_id
    if example == "simple":  # the same for every lab; shown once
        # A second build ships nothing and executes nothing.
        again = build(folder, tmp_path / "unused", "--target", SHARED)
        assert again.executed == [] and sorted(again["up_to_date"]) == sorted(local.executed)
        assert "shipped nothing" in shipped_line(again.stderr)
