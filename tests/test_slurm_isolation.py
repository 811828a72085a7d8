"""Isolating runtimes and exported labs on the real one-node SLURM cluster.

What is pinned: a SLURM build of an exported lab (``--lab lab.tar``) with ``--runtime
bwrap --artifact-store node-local`` runs every job in bwrap on the node, with the store the
node unpacked on its own disk (under ``--artifact-dir``) bound at /nix/store, and gives the
native local build's job ids and byte-identical outputs; a second build submits nothing.
Scatter-gather and inter-run labs under bwrap with the shared store give the native outputs.
The same export under ``--runtime podman``: the node loads the run's image from its unpack.
Node-local artifacts natively, or outside SLURM, are usage errors.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from pathlib import Path

import pytest

from tests.buildutil import build, copy_example, out_dir, repx, repx_env
from tests.conftest import require_nix
from tests.imageutil import Podman
from tests.slurm_cluster import slurm_cluster_fixture

slurm = slurm_cluster_fixture()

pytestmark = [pytest.mark.slurm, pytest.mark.nix]


def out_trees(store: Path, job_ids: list[str]) -> dict[str, dict[str, str]]:
    """sha256 of every file of each job's out/, by path relative to it."""
    return {job_id: {str(p.relative_to(out_dir(store, job_id))):
                     hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in sorted(out_dir(store, job_id).rglob("*")) if p.is_file()}
            for job_id in job_ids}


def sbatch_scripts(store: Path) -> list[Path]:
    return sorted((store / "slurm").glob("*.sbatch"))


def test_exported_lab_under_bwrap_with_node_local_artifacts(slurm, tmp_path: Path) -> None:
    require_nix()
    if shutil.which("bwrap") is None:
        pytest.fail("bwrap is not installed (apt-get install bubblewrap)", pytrace=False)
    folder = copy_example("simple", tmp_path)
    native = build(folder, tmp_path / "native")
    executed = sorted(native.data["executed"])
    assert executed
    tar = tmp_path / "lab.tar"
    repx("lab", "export", "-o", str(tar), cwd=folder)
    node_dir = tmp_path / "node-disk"
    store = tmp_path / "store-slurm"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = repx_env({"REPX_LAB_CACHE": str(tmp_path / "login-cache")})
    args = ("--lab", str(tar), "--scheduler", "slurm", "--poll", "0.3", "--runtime", "bwrap",
            "--artifact-store", "node-local", "--artifact-dir", str(node_dir))
    done = build(elsewhere, store, *args, env=env)
    assert done.data["failed"] == [] and sorted(done.data["executed"]) == executed, done.stderr
    assert out_trees(store, executed) == out_trees(tmp_path / "native", executed)

    # The node unpacked the export once on its disk; the jobs ran in bwrap bound to it.
    unpacks = list((node_dir / "repx-labs").glob("*/repx-unpacked.json"))
    assert len(unpacks) == 1, list((node_dir / "repx-labs").iterdir())
    marker = json.loads(unpacks[0].read_text())
    assert marker["tar_sha256"] == hashlib.sha256(tar.read_bytes()).hexdigest()
    assert not list((node_dir / "repx-labs").glob("*.partial-*"))
    tables = [t.read_text() for t in (store / "slurm").glob("*.tsv")]
    assert tables and all("bwrap" in t and "@REPX_NODE_LOCAL_STORE@" in t for t in tables)
    # The export the nodes read sits in the shared store.
    assert (store / "slurm" / "labs" / f"{marker['lab_id']}.tar").is_file()

    scripts = sbatch_scripts(store)
    again = build(elsewhere, store, *args, env=env)
    assert again.data["executed"] == [] and sorted(again.data["up_to_date"]) == executed
    assert sbatch_scripts(store) == scripts


@pytest.mark.parametrize("example", ["scatter-gather", "inter-run"])
def test_bwrap_on_slurm_with_the_shared_store(slurm, example: str, tmp_path: Path) -> None:
    """Steps, a gather reading its workers' folders, a run manifest: the sandbox on the node
    binds what they read (submitted before their upstream wrote it)."""
    require_nix()
    folder = copy_example(example, tmp_path)
    native = build(folder, tmp_path / "native")
    executed = sorted(native.data["executed"])
    store = tmp_path / "store-slurm"
    done = build(folder, store, "--scheduler", "slurm", "--poll", "0.3", "--runtime", "bwrap")
    assert done.data["failed"] == [] and sorted(done.data["executed"]) == executed, done.stderr
    assert out_trees(store, executed) == out_trees(tmp_path / "native", executed)
    assert all("bwrap" in t.read_text() for t in (store / "slurm").glob("*.tsv"))


def test_exported_lab_in_podman_on_slurm(slurm, tmp_path: Path) -> None:
    """podman on the node: the run's image loaded there from the node's unpack (once), each
    job in a container of it, the native outputs."""
    require_nix()
    folder = copy_example("simple", tmp_path)
    native = build(folder, tmp_path / "native")
    executed = sorted(native.data["executed"])
    tar = tmp_path / "lab.tar"
    repx("lab", "export", "-o", str(tar), cwd=folder)
    engine = Podman(tmp_path / "podman")
    try:
        env = repx_env({"REPX_LAB_CACHE": str(tmp_path / "login-cache"),
                        "REPX_PODMAN": shlex.join(engine.command),
                        "CONTAINERS_CONF": engine.env["CONTAINERS_CONF"]})
        store = tmp_path / "store-slurm"
        done = build(folder, store, "--lab", str(tar), "--scheduler", "slurm", "--poll", "0.3",
                     "--runtime", "podman", "--artifact-store", "node-local",
                     "--artifact-dir", str(tmp_path / "node-disk"), env=env)
        assert done.data["failed"] == [] and sorted(done.data["executed"]) == executed, \
            done.stderr
        assert out_trees(store, executed) == out_trees(tmp_path / "native", executed)
        # The node loaded the lab's one image (by the digest the lab lists).
        images = engine.run("images", "-q", "--no-trunc").stdout.split()
        assert len(images) == 1, images
        tables = [t.read_text() for t in (store / "slurm").glob("*.tsv")]
        assert all(images[0].removeprefix("sha256:") in t for t in tables)
    finally:
        engine.close()


def test_node_local_needs_an_isolating_runtime_and_slurm(tmp_path: Path) -> None:
    require_nix()
    folder = copy_example("simple", tmp_path)
    for args, message in [
        (("--scheduler", "slurm", "--artifact-store", "node-local"),
         "needs an isolating runtime"),
        (("--artifact-store", "node-local"), "are for --scheduler slurm"),
        (("--scheduler", "slurm", "--artifact-store", "node-local", "--runtime", "bwrap",
          "--artifact-dir", "relative/dir"), "give an absolute path"),
    ]:
        result = repx("build", "--store", str(tmp_path / "s"), *args, cwd=folder, check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr
