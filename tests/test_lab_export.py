"""``repx lab export`` and the unpack cache of ``--lab lab.tar``: the same lab after a round
trip, one unpack for concurrent users, killed and stale unpacks redone, hostile tars refused
(real Nix, real tar files, real processes)."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from repx.errors import LabError, RepxError
from repx.lab.export import (
    EXPORT_FORMAT,
    HEADER_NAME,
    MARKER_NAME,
    export_lab,
    unpack_lab,
    unpacked_lab_of,
)
from repx.lab.images import lab_images, write_docker_archive
from tests.buildutil import REPO, build, out_dir, repx
from tests.imageutil import build_lab_dir, write_two_run_lab

#: A lab id for hand-made tars (32 characters of Nix's base-32 alphabet).
FAKE_ID = "0" * 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The two-run lab (unified image), built and exported once: (lab dir, tar)."""
    base = tmp_path_factory.mktemp("export")
    lab = build_lab_dir(write_two_run_lab(base / "lab"), mode="unified")
    result = repx("lab", "export", "--lab", str(lab), "-o", str(base / "lab.tar"), "--json",
                  cwd=base)
    summary = json.loads(result.stdout)
    assert summary["lab"] == str(lab) and summary["images"].keys() == {"lab"}
    return lab, base / "lab.tar"


def _tree(root: Path) -> dict[str, tuple]:
    """Every entry below ``root``: its type, r-x bits and content (or link target)."""
    entries: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        name = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            entries[name] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            entries[name] = ("dir", st.st_mode & 0o555)
        else:
            entries[name] = ("file", st.st_mode & 0o555,
                             hashlib.sha256(path.read_bytes()).hexdigest())
    return entries


def _unpack_in_subprocess(tar: Path, cache: Path) -> subprocess.Popen[str]:
    code = ("import json, sys; from pathlib import Path; from repx.lab.export import unpack_lab;"
            "u = unpack_lab(Path(sys.argv[1]), Path(sys.argv[2]));"
            "print(json.dumps({'fresh': u.fresh, 'lab': str(u.lab_dir)}))")
    return subprocess.Popen([sys.executable, "-c", code, str(tar), str(cache)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def test_export_then_unpack_gives_the_same_lab(exported: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    lab, tar = exported
    cache = tmp_path / "cache"
    env = {"REPX_LAB_CACHE": str(cache)}
    # `--lab lab.tar` is a lab like any other: the same jobs as the lab directory.
    from_tar = json.loads(repx("list", "jobs", "--json", "--lab", str(tar), cwd=tmp_path,
                               env=env).stdout)
    from_dir = json.loads(repx("list", "jobs", "--json", "--lab", str(lab), cwd=tmp_path).stdout)
    assert [j["id"] for j in from_tar] == [j["id"] for j in from_dir]
    assert len(from_tar) == 4

    unpacked = unpack_lab(tar, cache)
    assert not unpacked.fresh, "the CLI had unpacked it: this call must reuse that unpack"
    assert unpacked.root == cache / unpacked.lab_id
    assert unpacked.lab_store_path == str(lab)
    assert unpacked.lab_dir == unpacked.store_dir / lab.name
    assert unpacked_lab_of(unpacked.lab_dir) == unpacked
    assert unpacked_lab_of(lab) is None
    # Every store path of the closure, byte for byte, with its links and r-x bits.
    closure = subprocess.run(["nix-store", "--query", "--requisites", str(lab)],
                             capture_output=True, text=True, check=True).stdout.split()
    assert sorted(p.name for p in unpacked.store_dir.iterdir()) == sorted(
        Path(p).name for p in closure)
    for path in closure:
        assert _tree(unpacked.store_dir / Path(path).name) == _tree(Path(path)), path
    # Store paths resolve inside the unpack, through the store's own absolute links.
    script = json.loads((lab / "runs" / "a.json").read_text())["pipelines"][0]["stages"][0]
    script_path = script["executables"]["main"]["script"]
    assert unpacked.host_path(script_path).read_bytes() == Path(script_path).read_bytes()
    # The images in the unpack are the lab's images: the same archive bytes.
    images = unpacked.images()
    assert images["lab"].archive_dir.is_relative_to(unpacked.store_dir)
    streams = []
    for image in (images["lab"], lab_images(lab)["lab"]):
        buffer = io.BytesIO()
        write_docker_archive(image, buffer)
        streams.append(hashlib.sha256(buffer.getvalue()).hexdigest())
    assert streams[0] == streams[1]
    # The same lab exports to the same bytes.
    again = export_lab(lab, tmp_path / "again.tar")
    assert again.sha256 == hashlib.sha256(tar.read_bytes()).hexdigest()


def test_a_native_build_of_an_exported_lab_runs_its_jobs(exported: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    # This machine has Nix and the lab's store paths, so the jobs run natively from the
    # unpacked lab (its scripts' /nix/store paths exist).
    _lab, tar = exported
    store = tmp_path / "store"
    done = build(tmp_path, store, "--lab", str(tar),
                 env={"REPX_LAB_CACHE": str(tmp_path / "cache")})
    assert len(done.executed) == 4
    results = sorted((out_dir(store, job) / "result.txt").read_text() for job in done.executed)
    assert results == ["run a n=1\n", "run a n=2\n", "run b n=1\n", "run b n=2\n"]


def test_two_concurrent_unpacks_unpack_once(exported: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    _lab, tar = exported
    cache = tmp_path / "cache"
    cache.mkdir()
    lab_id = json.loads(tarfile.open(tar).extractfile(HEADER_NAME).read())["lab_id"]
    # Hold the lock so both processes are waiting for it at the same time.
    with (cache / f"{lab_id}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        first, second = _unpack_in_subprocess(tar, cache), _unpack_in_subprocess(tar, cache)
        time.sleep(1.0)
        assert first.poll() is None and second.poll() is None, "they must wait for the lock"
        assert not (cache / lab_id).exists()
        fcntl.flock(lock, fcntl.LOCK_UN)
    results = []
    for process in (first, second):
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        results.append(json.loads(stdout))
    assert sorted(r["fresh"] for r in results) == [False, True]
    assert results[0]["lab"] == results[1]["lab"]
    assert sorted(p.name for p in cache.iterdir()) == [lab_id, f"{lab_id}.lock"]


def test_a_killed_unpack_is_redone(tmp_path: Path) -> None:
    # 48 MB of input data make the unpack last long enough to be killed in the middle.
    folder = write_two_run_lab(tmp_path / "lab", {"stage-a.nix": """
        { pkgs }:
        {
          pname = "work-a";
          params = { n = 0; };
          inputs = { data = ./big.bin; };
          outputs = { result = "$out/result.txt"; };
          run = { inputs, outputs, params, ... }: ''
            echo "run a n=${params.n}" > "${outputs.result}"
          '';
        }
        """})
    (folder / "big.bin").write_bytes(os.urandom(48 << 20))
    lab = build_lab_dir(folder, mode="none")
    tar = export_lab(lab, tmp_path / "lab.tar").path
    cache = tmp_path / "cache"
    killed_midway = False
    for _attempt in range(5):
        process = _unpack_in_subprocess(tar, cache)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            partial = list(cache.glob("*.partial-*")) if cache.exists() else []
            if partial and any(partial[0].rglob("*")):
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        process.communicate(timeout=60)
        if process.returncode == -signal.SIGKILL:
            killed_midway = True
            break
    assert killed_midway, "the unpack finished every time before it could be killed"
    lab_id = lab.name.split("-")[0]
    assert not (cache / lab_id).exists(), "a killed unpack must not look complete"
    assert list(cache.glob("*.partial-*")), "the killed unpack left its partial directory"

    unpacked = unpack_lab(tar, cache)
    assert unpacked.fresh
    assert not list(cache.glob("*.partial-*")), "the leftover was removed"
    assert _tree(unpacked.lab_dir) == _tree(lab)
    big = next(p for p in unpacked.store_dir.iterdir() if p.name.endswith("big.bin"))
    assert big.read_bytes() == (folder / "big.bin").read_bytes()


def test_an_unpack_without_its_marker_is_redone(exported: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    lab, tar = exported
    cache = tmp_path / "cache"
    unpacked = unpack_lab(tar, cache)
    assert unpacked.fresh
    # Truncated by hand (or by a full disk): a file cut short and the marker gone.
    victim = unpacked.lab_dir / "lab.json"
    victim.chmod(0o644)
    victim.write_text("{")
    (unpacked.root / MARKER_NAME).unlink()
    again = unpack_lab(tar, cache)
    assert again.fresh
    assert (again.lab_dir / "lab.json").read_bytes() == (lab / "lab.json").read_bytes()
    assert not unpack_lab(tar, cache).fresh


def test_an_unpack_of_another_tar_of_the_same_lab_is_redone(exported: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    _lab, tar = exported
    cache = tmp_path / "cache"
    first = unpack_lab(tar, cache)
    # The same lab id, other bytes (another repx wrote it, or it was edited): stale.
    other = tmp_path / "other.tar"
    with tarfile.open(tar) as source, tarfile.open(other, "w", format=tarfile.PAX_FORMAT) as out:
        for member in source:
            data = source.extractfile(member) if member.isfile() else None
            if member.name == HEADER_NAME:
                text = json.loads(data.read()) | {"note": "re-exported"}
                payload = json.dumps(text).encode()
                member.size = len(payload)
                data = io.BytesIO(payload)
            out.addfile(member, data)
    second = unpack_lab(other, cache)
    assert second.fresh and second.root == first.root
    assert second.tar_sha256 == hashlib.sha256(other.read_bytes()).hexdigest()
    assert unpack_lab(tar, cache).fresh, "back to the first tar: that unpack is stale now"
    # A copy of the tar with another mtime is the same tar: compared by digest, reused.
    copy = tmp_path / "copy.tar"
    copy.write_bytes(tar.read_bytes())
    assert not unpack_lab(copy, cache).fresh


def test_export_refuses_a_closure_that_links_to_the_host(tmp_path: Path) -> None:
    folder = write_two_run_lab(tmp_path / "lab", {"stage-a.nix": """
        { pkgs }:
        {
          pname = "work-a";
          params = { n = 0; };
          outputs = { result = "$out/result.txt"; };
          runDependencies = [ (builtins.derivation {
            name = "host-env-link"; system = pkgs.system; builder = "/bin/sh";
            PATH = "/usr/bin:/bin";
            args = [ "-c" "mkdir -p $out/bin && ln -s /usr/bin/env $out/bin/env" ];
          }) ];
          run = { outputs, params, ... }: ''
            echo "run a n=${params.n}" > "${outputs.result}"
          '';
        }
        """})
    lab = build_lab_dir(folder, mode="none")
    result = repx("lab", "export", "--lab", str(lab), "-o", "lab.tar", cwd=tmp_path,
                  check=False)
    assert result.returncode == 2
    assert "host-env-link/bin/env -> /usr/bin/env points outside the Nix store" in result.stderr
    assert not (tmp_path / "lab.tar").exists()
    assert list(tmp_path.glob(".lab.tar.partial-*")) == []


def test_an_unpacked_lab_cannot_be_exported_again(exported: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    _lab, tar = exported
    unpacked = unpack_lab(tar, tmp_path / "cache")
    with pytest.raises(LabError, match="only a lab in the Nix store can be exported"):
        export_lab(unpacked.lab_dir, tmp_path / "again.tar")


# ------------------------------------------------------------------------- hostile tars


def _member(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "",
            data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def _hostile_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A tar that looks like an export (header, nix/store, a lab) plus ``members``."""
    lab = f"{FAKE_ID}-repx-lab"
    header = json.dumps({"format": EXPORT_FORMAT, "lab": f"/nix/store/{lab}",
                         "lab_id": FAKE_ID, "store_paths": [], "images": {}}).encode()
    base = [_member(HEADER_NAME, data=header), _member("nix", tarfile.DIRTYPE),
            _member("nix/store", tarfile.DIRTYPE), _member(f"nix/store/{lab}", tarfile.DIRTYPE),
            _member(f"nix/store/{lab}/lab.json", data=b"{}"),
            _member(f"nix/store/{lab}/runs", tarfile.DIRTYPE),
            _member("nix/store/aaa-evil", tarfile.DIRTYPE)]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in [*base, *members]:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


HOSTILE = {
    "absolute symlink out of the store": (
        [_member("nix/store/aaa-evil/passwd", tarfile.SYMTYPE, link="/etc/passwd")],
        "points to /etc/passwd, outside the Nix store"),
    "relative symlink out of the store": (
        [_member("nix/store/aaa-evil/up", tarfile.SYMTYPE, link="../../../etc/passwd")],
        "leaves the Nix store"),
    "symlink that escapes through a shallower symlink": (
        [_member("nix/store/aaa-evil/a", tarfile.DIRTYPE),
         _member("nix/store/aaa-evil/a/b", tarfile.DIRTYPE),
         _member("nix/store/aaa-evil/a/b/home", tarfile.SYMTYPE, link="/nix/store/aaa-evil"),
         _member("nix/store/aaa-evil/a/b/out", tarfile.SYMTYPE, link="home/../../../etc")],
        "leaves the Nix store"),
    "member with ..": (
        [_member("nix/store/aaa-evil/../../../etc/cron.d/x")], "contains '..'"),
    "absolute member": ([_member("/etc/cron.d/x")], "has an absolute path"),
    "member outside nix/store": ([_member("etc/passwd")], "is outside nix/store"),
    "member written through a symlink": (
        [_member("nix/store/aaa-evil/dir", tarfile.SYMTYPE, link="/nix/store/aaa-other"),
         _member("nix/store/aaa-evil/dir/file")], "which is not a directory"),
    "hard link to a host file": (
        [_member("nix/store/aaa-evil/shadow", tarfile.LNKTYPE, link="/etc/shadow")],
        "has an absolute path"),
    "device file": ([_member("nix/store/aaa-evil/mem", tarfile.CHRTYPE)], "special file"),
    "the same member twice": (
        [_member("nix/store/aaa-evil/f"), _member("nix/store/aaa-evil/f")], "appears twice"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_tar_is_rejected(tmp_path: Path, case: str) -> None:
    members, message = HOSTILE[case]
    tar = _hostile_tar(tmp_path / "evil.tar", members)
    cache = tmp_path / "cache"
    with pytest.raises(LabError, match=message.replace("(", r"\(").replace(".", r"\.")):
        unpack_lab(tar, cache)
    # Nothing of it is left to be used: no unpack, no partial directory, nothing outside.
    assert sorted(p.name for p in cache.iterdir()) == [f"{FAKE_ID}.lock"]


def test_a_tar_that_is_not_an_export_is_rejected(tmp_path: Path) -> None:
    tar = tmp_path / "plain.tar"
    with tarfile.open(tar, "w") as archive:
        info, data = _member("README", data=b"hello")
        archive.addfile(info, io.BytesIO(data))
    result = repx("list", "jobs", "--lab", str(tar), cwd=tmp_path, check=False,
                  env={"REPX_LAB_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2
    assert f"{tar}: not a repx lab export" in result.stderr
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(RepxError, match="not a readable tar"):
        unpack_lab(garbage, tmp_path / "cache")
