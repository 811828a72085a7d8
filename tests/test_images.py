"""Container images as containerMode says: counts, slices, reproducible digests, shared
layers, and a job script run by real podman in a loaded image (real Nix, real podman)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path

import pytest

from repx.lab.images import (
    UNIFIED_IMAGE,
    image_of_run,
    lab_images,
    load_image,
    write_docker_archive,
)
from tests.imageutil import Podman, build_lab_dir, lab_manifest, write_two_run_lab


@pytest.fixture(scope="module")
def lab_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_two_run_lab(tmp_path_factory.mktemp("images") / "lab")


@pytest.fixture
def podman(tmp_path: Path):
    engine = Podman(tmp_path / "podman")
    yield engine
    engine.close()


def _layer_of_each_store_path(image_dir: Path) -> dict[str, str]:
    """Store path -> the digest of the layer holding it (from the image config's history)."""
    manifest = json.loads((image_dir / "manifest.json").read_text())[0]
    config = json.loads((image_dir / manifest["Config"]).read_text())
    layers = {}
    for digest, entry in zip(config["rootfs"]["diff_ids"], config["history"], strict=True):
        for path in entry["created_by"].removeprefix("repx: ").split():
            if path.startswith("/nix/store/"):
                layers[path] = digest
    return layers


@pytest.mark.parametrize(("mode", "expected"), [
    ("unified", {UNIFIED_IMAGE: ["a", "b"]}),
    ("per-run", {"a": ["a"], "b": ["b"]}),
    ("none", {}),
])
def test_image_count_follows_container_mode(lab_folder: Path, mode: str,
                                            expected: dict[str, list[str]]) -> None:
    lab = build_lab_dir(lab_folder, mode=mode)
    images = lab_images(lab)
    assert {name: list(image.runs) for name, image in images.items()} == expected
    assert lab_manifest(lab)["container_mode"] == mode
    for run in ("a", "b"):
        image = image_of_run(lab, run)
        if not expected:
            assert image is None
            assert not (lab / "images").exists()
            continue
        assert image is not None and run in image.runs
        assert (image.archive_dir / "manifest.json").is_file()
        # The image holds the run's own script and the tools it runs, nothing of the host.
        names = [Path(p).name for p in image.store_paths]
        assert any(n.endswith(f"work-{run}-script-1.1") for n in names)
        assert any(n.endswith("-host-bash") for n in names)


@pytest.mark.parametrize(("run_mode", "expected"), [
    ("per-run", {"a": ["a"], "b": ["b"]}),
    ("unified", {UNIFIED_IMAGE: ["a", "b"]}),
    ("none", {}),
])
def test_slices_use_run_container_mode(lab_folder: Path, run_mode: str,
                                       expected: dict[str, list[str]]) -> None:
    # The slice of b holds b and the run it depends on, a; its containerMode is the lab's
    # runContainerMode whatever containerMode says.
    slice_dir = build_lab_dir(lab_folder, mode="none", run_mode=run_mode, run_slice="b")
    assert lab_manifest(slice_dir)["runs"] == ["a", "b"]
    assert {n: list(i.runs) for n, i in lab_images(slice_dir).items()} == expected
    only_a = build_lab_dir(lab_folder, mode="unified", run_mode=run_mode, run_slice="a")
    assert sorted(lab_images(only_a)) == sorted(n for n in expected if n != "b")


def test_same_lab_gives_the_same_image_digest(lab_folder: Path, tmp_path: Path) -> None:
    first = build_lab_dir(lab_folder, mode="per-run")
    # Another folder: another lab.json (lab_file), the same runs, so the same images.
    other = write_two_run_lab(tmp_path / "copy")
    second = build_lab_dir(other, mode="per-run")
    assert first != second
    digests = {n: i.digest for n, i in lab_images(first).items()}
    assert digests == {n: i.digest for n, i in lab_images(second).items()}
    assert (first / "images").resolve() == (second / "images").resolve()
    # Built again from scratch, the images are bit for bit the same (Nix compares).
    images_path = str((first / "images").resolve())
    deriver = subprocess.run(["nix-store", "--query", "--deriver", images_path],
                             capture_output=True, text=True, check=True).stdout.strip()
    check = subprocess.run(["nix-store", "--realise", "--check", deriver,
                            "--option", "substituters", ""],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    # The archive stream is reproducible too (what podman and docker read).
    image = lab_images(first)["a"]
    streams = []
    for _ in range(2):
        buffer = io.BytesIO()
        write_docker_archive(image, buffer)
        streams.append(hashlib.sha256(buffer.getvalue()).hexdigest())
    assert streams[0] == streams[1]


def test_per_run_images_share_the_layers_of_common_store_paths(lab_folder: Path) -> None:
    lab = build_lab_dir(lab_folder, mode="per-run")
    a, b = lab_images(lab)["a"], lab_images(lab)["b"]
    common = set(a.store_paths) & set(b.store_paths)
    # What the two runs share is the packages their scripts run (bash, coreutils, ... and
    # the libraries those carry); each run's own script is its own.
    assert common == {p for p in a.store_paths if "-script-" not in p}
    assert any(p.endswith("-host-bash") for p in common)
    layers_a = _layer_of_each_store_path(a.archive_dir)
    layers_b = _layer_of_each_store_path(b.archive_dir)
    for path in common:
        assert layers_a[path] == layers_b[path], path
    # One layer per store path plus the base layer; shared ones are one file in the lab.
    assert len(a.layers) == len(a.store_paths) + 1
    assert set(a.layers) & set(b.layers) == {a.layers[0], *(layers_a[p] for p in common)}
    pool = {f"sha256:{f.stem}" for f in (lab / "images" / "layers").iterdir()}
    assert pool == set(a.layers) | set(b.layers)
    assert a.digest != b.digest


def test_podman_loads_the_image_and_runs_a_job_script(lab_folder: Path, tmp_path: Path,
                                                      podman: Podman) -> None:
    lab = build_lab_dir(lab_folder, mode="unified")
    image = lab_images(lab)[UNIFIED_IMAGE]
    assert load_image(image, podman.command, env=podman.env) == image.image_id
    listed = podman.run("images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}")
    assert f"sha256:{image.image_id} localhost/{image.tag}" in listed.stdout
    # Loaded once: a second call finds it by its digest and loads nothing.
    assert load_image(image, podman.command, env=podman.env) == image.image_id

    script = next(p for p in image.store_paths if p.endswith("work-a-script-1.1"))
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    (work / "inputs.json").write_text("{}\n")
    (work / "params.json").write_text('{\n  "n": 7\n}\n')
    result = podman.run("run", "--rm", "--network", "none", "-v", f"{work}:/work",
                        image.image_id, f"{script}/bin/work-a", "/work/out",
                        "/work/inputs.json", "/work/params.json")
    assert (work / "out" / "result.txt").read_text() == "run a n=7\n", result.stderr
    # The image is the closure and nothing else: no host /usr, no host /etc/passwd.
    bash = next(p for p in image.store_paths if p.endswith("-host-bash"))
    probe = podman.run("run", "--rm", "--network", "none", image.image_id, f"{bash}/bin/bash",
                       "-c", "[[ ! -e /usr && -d /tmp ]] && cd /nix/store && printf '%s\\n' *")
    assert sorted(probe.stdout.split()) == sorted(Path(p).name for p in image.store_paths)


def test_a_large_closure_is_capped_at_100_layers(tmp_path: Path, podman: Podman) -> None:
    # 120 store paths given as params: more paths than layers, so the least shared paths
    # (nothing else references the inputs or the script) share the last layer, and the
    # packages, which the script and each other reference, keep a layer each.
    folder = write_two_run_lab(tmp_path / "lab", {
        "run-a.nix": """
            { ... }:
            { name = "a"; pipelines = [ ./pipe-a.nix ];
              params = { n = builtins.genList
                (i: builtins.toFile "input-${toString i}" "data ${toString i}\\n") 120; }; }
            """,
    })
    lab = build_lab_dir(folder, mode="per-run", run_slice="a")
    image = lab_images(lab)["a"]
    assert len(image.store_paths) > 120
    assert len(image.layers) == 100
    layer_of = _layer_of_each_store_path(image.archive_dir)
    assert set(layer_of) == set(image.store_paths)
    merged = image.layers[-1]
    assert sum(1 for d in layer_of.values() if d == merged) == len(image.store_paths) - 98
    for path in image.store_paths:
        if "-host-" in path:
            assert layer_of[path] != merged, f"{path} is shared, so it keeps its own layer"
    assert load_image(image, podman.command, env=podman.env) == image.image_id
