"""The SSH test target itself: it must be the remote the remote-target tests claim it is.

A rig that silently let a password in, skipped host-key checking, or showed the remote
account the host's Nix would make every remote test pass for the wrong reason, so each of
those properties is checked here against the running sshd.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.slurm_cluster import slurm_problem, start_cluster
from tests.ssh_target import SSHD_SCRIPT, SshRig, ssh_rig_fixture

ssh_rig = ssh_rig_fixture()


def test_the_key_logs_in_as_the_unprivileged_account(ssh_rig: SshRig) -> None:
    proc = ssh_rig.ssh("id -un; id -u; echo $HOME")
    name, uid, home = proc.stdout.split()
    assert name == ssh_rig.user == "repxremote"
    assert int(uid) != 0
    assert home == "/home/repxremote"


def test_the_host_key_is_checked(ssh_rig: SshRig) -> None:
    # Known key: logs in (above). No entry for this host: refused, not accepted on first use.
    unknown = ssh_rig.ssh("true", alias=ssh_rig.alias_unknown_hostkey, check=False)
    assert unknown.returncode == 255
    assert "Host key verification failed" in unknown.stderr
    # Another key on record for 127.0.0.1:PORT: ssh's man-in-the-middle warning.
    wrong = ssh_rig.ssh("true", alias=ssh_rig.alias_wrong_hostkey, check=False)
    assert wrong.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in wrong.stderr
    assert f"[127.0.0.1]:{ssh_rig.port}" in ssh_rig.known_hosts.read_text()


def test_only_the_authorized_key_is_accepted(ssh_rig: SshRig) -> None:
    refused = ssh_rig.ssh("true", alias=ssh_rig.alias_refused_key, check=False)
    assert refused.returncode == 255
    assert "Permission denied (publickey)" in refused.stderr
    # Without a key no other method is even offered: no password, no keyboard-interactive.
    no_key = subprocess.run(
        ["ssh", "-F", str(ssh_rig.config), "-o", "PubkeyAuthentication=no", ssh_rig.alias,
         "true"], capture_output=True, text=True, timeout=30, check=False)
    assert no_key.returncode == 255
    assert "Permission denied (publickey)." in no_key.stderr
    assert ssh_rig.key.stat().st_mode & 0o077 == 0


def test_the_remote_has_no_nix(ssh_rig: SshRig) -> None:
    proc = ssh_rig.ssh(
        "ls -A /nix | wc -l; "
        "for c in nix nix-build nix-store nix-instantiate nix-env nix-shell; do "
        "  command -v $c && echo FOUND; done; "
        "ls /usr/bin /bin | grep -c '^nix' || true; "
        "ls -A /usr/libexec/nix 2>/dev/null | wc -l; "
        "touch /nix/probe 2>/dev/null && echo WRITABLE || echo read-only")
    entries, bin_nix, libexec, writable = proc.stdout.split()
    assert (entries, bin_nix, libexec) == ("0", "0", "0"), proc.stdout
    assert "FOUND" not in proc.stdout
    assert writable == "read-only"
    # ... while this machine keeps its Nix: the mounts stay in sshd's namespace.
    assert shutil.which("nix-build") is not None
    assert Path("/nix/store").is_dir()


def test_the_remote_has_python_311_and_bwrap(ssh_rig: SshRig) -> None:
    version = ssh_rig.ssh(["python3", "-c", "import sys; print(*sys.version_info[:2])"])
    major, minor = map(int, version.stdout.split())
    assert (major, minor) >= (3, 11)
    # repx's default remote runtime: unprivileged bwrap needs user namespaces.
    sandbox = ssh_rig.ssh(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc",
                           "--dev", "/dev", "id", "-u"], check=False)
    assert sandbox.returncode == 0, sandbox.stderr
    assert sandbox.stdout.strip() != "0"


def test_the_small_disk_fills_up(ssh_rig: SshRig) -> None:
    stat = ssh_rig.ssh(["stat", "-c", "%U %a", ssh_rig.small_dir]).stdout.split()
    assert stat == ["repxremote", "700"]
    probe = f"{ssh_rig.small_dir}/fill-{ssh_rig.port}"
    full = ssh_rig.ssh(["dd", "if=/dev/zero", f"of={probe}", "bs=1M", "count=3"], check=False)
    ssh_rig.ssh(["rm", "-f", probe])
    assert full.returncode != 0
    assert "No space left on device" in full.stderr


def test_start_is_idempotent(ssh_rig: SshRig) -> None:
    pid = Path("/run/repx-ssh/sshd.pid").read_text().strip()
    again = subprocess.run(["bash", str(SSHD_SCRIPT), "start"], capture_output=True, text=True,
                           timeout=60, check=False)
    assert again.returncode == 0, again.stderr
    assert Path("/run/repx-ssh/sshd.pid").read_text().strip() == pid
    status = subprocess.run(["bash", str(SSHD_SCRIPT), "status"], capture_output=True,
                            text=True, timeout=30, check=False)
    assert status.returncode == 0
    assert f"127.0.0.1:{ssh_rig.port}" in status.stdout


def test_the_account_may_submit_to_the_test_cluster(ssh_rig: SshRig) -> None:
    """The test cluster enforces associations: the rig gave the account one (sbatch
    --test-only asks slurmctld without queueing anything)."""
    if slurm_problem() is not None:
        start_cluster()
    probe = ssh_rig.ssh(["sbatch", "--test-only", "--wrap", "true"], check=False)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert "to start at" in probe.stdout + probe.stderr
