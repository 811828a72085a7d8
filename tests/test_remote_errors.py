"""Targets that cannot work, against the real sshd: each is one clear message, no traceback,
and nothing half-done on either side.

Every test gets a private ssh control folder (``REPX_SSH_CONTROL_DIR``): a control master
left by another test must not carry a connection that this test's target could not open.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from repx.store import Store
from tests.buildutil import copy_example, repx
from tests.conftest import require_nix
from tests.ssh_target import SshRig, ssh_rig_fixture

ssh_rig = ssh_rig_fixture()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/simple, its lab built here once (each test writes its own repx.toml)."""
    require_nix()
    folder = copy_example("simple", tmp_path_factory.mktemp("errors"))
    repx("lab", "build", cwd=folder)
    return folder


@pytest.fixture
def control_dir() -> Iterator[dict[str, str]]:
    """A private ssh control folder for this test (short: a socket path has ~100 bytes)."""
    folder = tempfile.mkdtemp(prefix="rxc-")
    yield {"REPX_SSH_CONTROL_DIR": folder}
    # End the masters this test started, then remove their sockets.
    for socket in Path(folder).iterdir():
        subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "x"],
                       capture_output=True, timeout=10, check=False)
    shutil.rmtree(folder, ignore_errors=True)


def use_target(rig: SshRig, lab: Path, **settings: object) -> str:
    """Make ``[targets.t]`` the lab's only target; its base_path."""
    (lab / "repx.toml").unlink(missing_ok=True)
    return rig.write_target(lab, "t", **settings)  # type: ignore[arg-type]


def build_on_target(lab: Path, env: dict[str, str], name: str = "t"
                    ) -> subprocess.CompletedProcess[str]:
    return repx("build", "--target", name, "--lab", "result", cwd=lab, check=False, env=env,
                timeout=300)


def assert_clear_failure(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Failed, said so in repx's own words with ``expected`` in them, without a traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert result.stderr.startswith("repx: "), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "internal error" not in result.stderr, result.stderr
    for text in expected:
        assert text.lower() in result.stderr.lower(), result.stderr


def remote_exists(rig: SshRig, path: str) -> bool:
    return rig.ssh(["test", "-e", path], check=False).returncode == 0


def no_local_records(lab: Path) -> bool:
    store = lab / ".repx"
    if not Store.exists(store):
        return True
    with Store(store, readonly=True) as opened:
        return not list(opened.records())


def test_unknown_host(ssh_rig: SshRig, lab: Path, control_dir: dict[str, str]) -> None:
    use_target(ssh_rig, lab, host="no-such-host.invalid")
    result = build_on_target(lab, control_dir)
    assert_clear_failure(result, "cannot reach t", "Could not resolve hostname")
    pulled = repx("pull", "--target", "t", "--lab", "result", cwd=lab, check=False,
                  env=control_dir)
    assert_clear_failure(pulled, "cannot reach t", "Could not resolve hostname")
    assert no_local_records(lab)


@pytest.mark.parametrize("which", ["unknown", "changed"])
def test_a_host_key_that_is_not_known_is_refused(ssh_rig: SshRig, lab: Path, which: str,
                                                 control_dir: dict[str, str]) -> None:
    alias = ssh_rig.alias_unknown_hostkey if which == "unknown" else ssh_rig.alias_wrong_hostkey
    base = use_target(ssh_rig, lab, host=alias)
    result = build_on_target(lab, control_dir)
    assert_clear_failure(result, "cannot reach t", "Host key verification failed")
    assert not remote_exists(ssh_rig, base)  # nothing was sent to whoever answered
    assert no_local_records(lab)


def test_a_refused_key(ssh_rig: SshRig, lab: Path, control_dir: dict[str, str]) -> None:
    base = use_target(ssh_rig, lab, host=ssh_rig.alias_refused_key)
    result = build_on_target(lab, control_dir)
    assert_clear_failure(result, "cannot reach t", "Permission denied (publickey)")
    assert not remote_exists(ssh_rig, base)


def test_a_connection_is_not_lent_to_another_identity(
        ssh_rig: SshRig, lab: Path, control_dir: dict[str, str]) -> None:
    """Two targets on the same host, port and user but with another key: the second must
    authenticate itself, not ride on the first one's control master."""
    (lab / "repx.toml").unlink(missing_ok=True)
    good = ssh_rig.write_target(lab, "good")
    refused = ssh_rig.write_target(lab, "refused", host=ssh_rig.alias_refused_key)
    try:
        first = build_on_target(lab, control_dir, "good")
        assert first.returncode == 0, first.stderr
        second = build_on_target(lab, control_dir, "refused")
        assert_clear_failure(second, "cannot reach refused", "Permission denied (publickey)")
        assert not remote_exists(ssh_rig, refused)
    finally:
        ssh_rig.wipe(good)
        ssh_rig.wipe(refused)


@pytest.mark.parametrize("python", ["python9.99", "/opt/no-such/python3"])
def test_missing_python(ssh_rig: SshRig, lab: Path, python: str,
                        control_dir: dict[str, str]) -> None:
    base = use_target(ssh_rig, lab, python=python)
    result = build_on_target(lab, control_dir)
    assert_clear_failure(result, f"the remote has no {python!r}", "Python 3.11")
    assert not remote_exists(ssh_rig, f"{base}/repx")
    ssh_rig.wipe(base)


def payload_sizes() -> tuple[int, int]:
    """What repx itself ships: the sum of its files' sizes, and the same with each file
    rounded up to a 4 KiB page (what a tmpfs really uses for it)."""
    from repx.remote.ship import payload_files

    sizes = [f.source.stat().st_size for f in payload_files()]
    return sum(sizes), sum(-(-size // 4096) * 4096 for size in sizes)


@pytest.mark.parametrize("disk", ["too small to try", "fills while unpacking"])
def test_remote_disk_full(ssh_rig: SshRig, lab: Path, disk: str,
                          control_dir: dict[str, str]) -> None:
    """A base_path on a small tmpfs: refused before sending when the free space is below
    what repx itself needs; and when the space looks enough but runs out while unpacking
    (a tmpfs gives each small file a whole page), a clear error too. Either way nothing is
    left half-made on the remote."""
    base = use_target(ssh_rig, lab,
                      base_path=f"{ssh_rig.small_dir}/base-{uuid.uuid4().hex[:8]}")
    if disk == "fills while unpacking":
        exact, in_pages = payload_sizes()
        ssh_rig.resize_small_disk(f"{(exact + in_pages) // 2 // 1024}k")
    try:
        result = build_on_target(lab, control_dir)
        if disk == "too small to try":
            assert_clear_failure(result, "base_path has", "MB free", "repx itself needs")
        else:
            assert_clear_failure(result, "No space left on device")
        # Nothing half-made there: no repx marked complete, no store, no job record...
        leftovers = ssh_rig.ssh(["find", base, "-name", "COMPLETE", "-o", "-name", "data.mdb"],
                                check=False).stdout
        assert leftovers.strip() == ""
        # ... and the partial files are gone again: the small disk has room.
        used = ssh_rig.ssh(["df", "--output=used", "-k", ssh_rig.small_dir]).stdout.split()[-1]
        assert int(used) < 256, f"{used} KiB left behind on the small disk"
        assert no_local_records(lab)
    finally:
        ssh_rig.wipe(base)
        ssh_rig.resize_small_disk("2m")


def test_a_malicious_base_path_runs_nothing(ssh_rig: SshRig, lab: Path,
                                            control_dir: dict[str, str]) -> None:
    """One base_path with every trick: command substitution, a space and ';', backquotes,
    and a quote that would end a single-quoted word. build, status and pull all work on
    the folder of that very name, and none of the commands in it runs."""
    tag = uuid.uuid4().hex[:8]
    markers = [f"/tmp/pwned-{tag}-{n}" for n in range(4)]
    base = (f"/tmp/x $(touch {markers[0]}); touch {markers[1]} `touch {markers[2]}`"
            f"'; touch {markers[3]}; '")
    top = "/tmp/x $(touch "
    try:
        use_target(ssh_rig, lab, base_path=base)
        result = build_on_target(lab, control_dir)
        assert result.returncode == 0, result.stderr
        # The base is that very folder, made private to the account.
        mode = ssh_rig.ssh(["stat", "-c", "%a", base]).stdout.strip()
        assert mode == "700", f"{base!r} has mode {mode}"
        status = repx("status", "--target", "t", "--lab", "result", cwd=lab, check=False,
                      env=control_dir)
        assert status.returncode == 0, status.stderr
        store = lab / "pulled"
        pulled = repx("pull", "--target", "t", "--lab", "result", "--store", str(store),
                      "--json", cwd=lab, check=False, env=control_dir)
        assert pulled.returncode == 0, pulled.stderr
        with Store(store, readonly=True) as opened:
            assert len(list(opened.records())) == 3
        shutil.rmtree(store)
        found = ssh_rig.ssh(f"ls -d /tmp/pwned-{tag}-* $HOME/pwned-* 2>/dev/null || true").stdout
        assert found.strip() == ""
        for marker in markers:
            assert not Path(marker).exists()
    finally:
        ssh_rig.wipe(top)


def test_a_base_path_with_a_line_break_is_refused(ssh_rig: SshRig, lab: Path,
                                                  control_dir: dict[str, str]) -> None:
    use_target(ssh_rig, lab, base_path="/tmp/ok\ntouch /tmp/pwned")
    result = build_on_target(lab, control_dir)
    assert result.returncode == 2
    assert "targets.t.base_path contains a line break" in result.stderr
    assert str(lab / "repx.toml") in result.stderr
    assert shlex.quote("/tmp/pwned") and not Path("/tmp/pwned").exists()


@pytest.mark.parametrize("kind", ["writable by others", "symlink"])
def test_a_base_path_that_is_not_private_is_refused(ssh_rig: SshRig, lab: Path, kind: str,
                                                    control_dir: dict[str, str]) -> None:
    base = use_target(ssh_rig, lab)
    if kind == "symlink":
        ssh_rig.ssh(["mkdir", "-p", f"{base}-real"])
        ssh_rig.ssh(["ln", "-s", f"{base}-real", base])
    else:
        ssh_rig.ssh(["mkdir", "-p", base])
        ssh_rig.ssh(["chmod", "0777", base])
    try:
        result = build_on_target(lab, control_dir)
        expected = "a symlink is refused" if kind == "symlink" else "may be written by other"
        assert_clear_failure(result, expected)
        assert not remote_exists(ssh_rig, f"{base}/repx")
        assert not remote_exists(ssh_rig, f"{base}-real/repx")
    finally:
        ssh_rig.ssh(["rm", "-rf", base, f"{base}-real"])
