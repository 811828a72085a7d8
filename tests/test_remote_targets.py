"""``[targets.NAME]`` in the configuration files: the schema, and an error naming the file
and the key for every bad value, before anything connects anywhere. Also the transport's
command lines: ssh's host-key check stays on and every remote word is quoted."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from repx.errors import UsageError
from repx.remote.ssh import SshTarget
from repx.remote.targets import LOCAL_TARGET, find_target, load_targets
from tests.buildutil import repx


def _config(folder: Path, text: str) -> Path:
    path = folder / "repx.toml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The user's own ~/.config/repx must not leak into these tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("REPX_CONFIG", raising=False)


def test_a_target_is_read_with_its_defaults(tmp_path: Path) -> None:
    _config(tmp_path, """
[targets.cluster]
host = "me@login.example.org"
base_path = "~/repx/"
ssh_options = ["-p", "2222"]
[targets.cluster.resources]
mem = "4G"
""")
    target = find_target("cluster", tmp_path)
    assert (target.host, target.base_path, target.scheduler, target.runtime) == \
        ("me@login.example.org", "~/repx", "local", "bwrap")
    assert target.ssh_options == ("-p", "2222") and target.resources == {"mem": "4G"}
    assert target.origin == tmp_path / "repx.toml"
    assert find_target(LOCAL_TARGET, tmp_path).is_local


def test_the_labs_table_replaces_the_users_table_of_that_name(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    user = tmp_path / "xdg" / "repx" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[targets.a]\nhost = "user-a"\nbase_path = "/u"\nscheduler = "slurm"\n'
                    '[targets.b]\nhost = "user-b"\nbase_path = "/b"\n')
    lab = tmp_path / "lab"
    lab.mkdir()
    _config(lab, '[targets.a]\nhost = "lab-a"\nbase_path = "/l"\n')
    targets = load_targets(lab)
    assert (targets["a"].host, targets["a"].scheduler) == ("lab-a", "local")
    assert targets["b"].host == "user-b" and targets["b"].origin == user


@pytest.mark.parametrize(("table", "message"), [
    ('host = "h"', "base_path is required"),
    ('base_path = "/x"', "host is required"),
    ('host = "h"\nbase_path = "relative/x"', "must be absolute"),
    ('host = "h"\nbase_path = "/x/../etc"', "contains '..'"),
    ('host = "h"\nbase_path = "~"', "give a folder of its own"),
    ('host = "h"\nbase_path = "/x"\nschedulr = "slurm"', "unknown key 'schedulr'"),
    ('host = "h"\nbase_path = "/x"\nscheduler = "pbs"', "scheduler = 'pbs'"),
    ('host = "h"\nbase_path = "/x"\nruntime = "chroot"', "runtime = 'chroot'"),
    ('host = "h"\nbase_path = "/x"\nssh_options = "-p 22"', "ssh_options must be a list"),
    ('host = "-oProxyCommand=x"\nbase_path = "/x"', "starts with '-'"),
    ('host = "h"\nbase_path = "/x"\nssh_options = ["-o", "StrictHostKeyChecking=no"]',
     "host-key check off"),
    ('host = "h"\nbase_path = "/x"\nssh_options = ["-oUserKnownHostsFile=/dev/null"]',
     "host-key check off"),
    ('host = "h"\nbase_path = "/x"\n[targets.c.resources]\nmem = "lots"', "invalid mem"),
])
def test_a_bad_target_is_a_usage_error_naming_file_and_key(tmp_path: Path, table: str,
                                                            message: str) -> None:
    path = _config(tmp_path, f"[targets.c]\n{table}\n")
    with pytest.raises(UsageError) as error:
        find_target("c", tmp_path)
    assert message in error.value.message and str(path) in error.value.message


def test_an_unknown_target_lists_the_known_ones(tmp_path: Path) -> None:
    _config(tmp_path, '[targets.alpha]\nhost = "h"\nbase_path = "/x"\n')
    with pytest.raises(UsageError, match=r"unknown target 'beta' \(targets defined: alpha"):
        find_target("beta", tmp_path)
    # The command line says the same, as one line, exit code 2, before any ssh.
    result = repx("status", "--target", "beta", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "unknown target 'beta'" in result.stderr
    assert "Traceback" not in result.stderr


def test_ssh_keeps_host_key_checking_and_quotes_every_word(tmp_path: Path) -> None:
    ssh = SshTarget("cluster", ssh_options=("-p", "2222"), control_dir=tmp_path / "c")
    hostile = "/base $(touch /tmp/x); rm -rf ~ `id` 'q' \"d\""
    command = ssh.command(["ls", "--", hostile])
    assert command[-2:] == ["cluster", shlex.join(["ls", "--", hostile])]
    # The remote shell splits the last word back into exactly the words given.
    assert shlex.split(command[-1]) == ["ls", "--", hostile]
    text = " ".join(command)
    assert "BatchMode=yes" in text and "StrictHostKeyChecking" not in text
    assert "-p 2222" in text and command.index("--") == len(command) - 3
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o700
