"""The node side of ``--artifact-store node-local``: the bash unpack the SLURM wrapper runs.

Run here with bash alone (no SLURM needed to pin its rules): two concurrent unpacks on one
"node" unpack once; a killed unpack's partial directory is removed and the lab unpacked
again; a tar whose bytes differ from the validated export fails with the reason; the result
is the layout and marker of repx's own unpack cache, so ``unpack_lab`` reuses it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from repx.engine.slurm.node_local import prepare_node_lab, unpack_script
from repx.lab.export import unpack_lab
from tests.buildutil import copy_example, repx
from tests.conftest import require_nix

pytestmark = pytest.mark.nix


def run_unpack(script: str) -> subprocess.Popen[str]:
    """The wrapper's unpack step with a ``fail`` that exits 1 printing its reason."""
    text = ("set -uo pipefail\nfail() { echo \"FAIL: $1\" >&2; exit 1; }\n" + script
            + 'echo "$node_store"\n')
    return subprocess.Popen(["bash", "-c", text], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_the_node_unpack_is_once_complete_and_checked(tmp_path: Path) -> None:
    require_nix()
    folder = copy_example("simple", tmp_path)
    tar = tmp_path / "lab.tar"
    repx("lab", "export", "-o", str(tar), cwd=folder)
    login = unpack_lab(tar, tmp_path / "login-cache")
    store = tmp_path / "store"
    node = tmp_path / "node"
    node_lab = prepare_node_lab(login.lab_dir, store, f"'{node}'")
    assert Path(node_lab.tar).parent == store / "slurm" / "labs"
    assert node_lab.sha256 == login.tar_sha256
    script = unpack_script(node_lab)

    # Two jobs starting at once on one node: one unpack, both use it.
    first, second = run_unpack(script), run_unpack(script)
    outs = [p.communicate(timeout=60) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    root = node / "repx-labs" / node_lab.lab_id
    assert {o[0].strip() for o in outs} == {str(root / "nix" / "store")}
    assert (root / "nix" / "store" / Path(node_lab.lab).name / "lab.json").is_file()
    assert sorted(p.name for p in (node / "repx-labs").iterdir()) == \
        [node_lab.lab_id, f"{node_lab.lab_id}.lock"]
    # repx's own unpack cache accepts the node's unpack as complete (no second unpack).
    assert not unpack_lab(Path(node_lab.tar), node / "repx-labs").fresh

    # A killed unpack (partial directory, no marker at the root) is removed and redone.
    marker = root / "repx-unpacked.json"
    marker.unlink()
    (node / "repx-labs" / f"{node_lab.lab_id}.partial-999").mkdir()
    again = run_unpack(script)
    assert again.communicate(timeout=60)[0].strip() == str(root / "nix" / "store")
    assert marker.is_file()
    assert not list((node / "repx-labs").glob("*.partial-*"))

    # A tar that is not the validated export is refused before anything is extracted.
    marker.unlink()
    with open(node_lab.tar, "r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"x")
    bad = run_unpack(script)
    _out, err = bad.communicate(timeout=60)
    assert bad.returncode == 1 and "is not the export repx checked" in err, err
