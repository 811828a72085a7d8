"""The runtime chosen by a configuration file: ``repx.toml`` next to the lab, the user's
``~/.config/repx/config.toml``; the command line and the environment take precedence.

The lab's one job fails when it sees the host's ``/usr`` and reads a file only a mount
shows it: it succeeds only under bwrap with the configuration's mount, so each outcome
says which settings won.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.buildutil import build, out_dir, repx_env, write_lab
from tests.conftest import require_nix

pytestmark = pytest.mark.nix

FILES = {
    "run.nix": '{ ... }: { name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }\n',
    "pipe.nix": "{ repx, ... }:\nrepx.mkPipe { work = repx.callStage ./stage.nix [ ]; }\n",
    "stage.nix": """
        { pkgs }:
        {
          pname = "work";
          outputs = { result = "$out/result.txt"; };
          run = { outputs, ... }: ''
            if [ -e /usr/bin ]; then echo "the host's /usr is visible" >&2; exit 1; fi
            read -r secret < "@SECRET@"
            echo "$secret" > "${outputs.result}"
          '';
        }
    """,
}


def test_a_config_file_selects_bwrap_and_its_mounts(tmp_path: Path) -> None:
    require_nix()
    if shutil.which("bwrap") is None:
        pytest.fail("bwrap is not installed (apt-get install bubblewrap)", pytrace=False)
    folder = tmp_path / "lab"
    secret = tmp_path / "data" / "secret.txt"
    write_lab(folder, FILES, SECRET=str(secret))
    secret.parent.mkdir()
    secret.write_text("from the mount\n")
    # A relative mount is relative to the configuration file.
    (folder / "repx.toml").write_text('runtime = "bwrap"\nmounts = ["../data/secret.txt:ro"]\n')
    env = repx_env({"XDG_CONFIG_HOME": str(tmp_path / "config-home")})
    env.pop("REPX_RUNTIME", None)
    env.pop("REPX_CONFIG", None)

    done = build(folder, tmp_path / "configured", env=env)
    [job] = done.data["executed"]
    assert (out_dir(tmp_path / "configured", job) / "result.txt").read_text() == \
        "from the mount\n"

    # The environment, then the command line, win over the file: natively the job sees /usr.
    for store, args, extra in [("by-env", (), {"REPX_RUNTIME": "native"}),
                               ("by-cli", ("--runtime", "native"), {})]:
        native = build(folder, tmp_path / store, *args, expect=1, env={**env, **extra})
        assert native.data["failed"] == [job], native.stderr

    # The user's file applies when the lab has none; the lab's file wins over it.
    user = tmp_path / "config-home" / "repx" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('runtime = "native"\n')
    again = build(folder, tmp_path / "lab-wins", env=env)
    assert again.data["executed"] == [job]
    (folder / "repx.toml").unlink()
    user.write_text(f'runtime = "bwrap"\nmounts = ["{secret}"]\n')
    assert build(folder, tmp_path / "user", env=env).data["executed"] == [job]


@pytest.mark.parametrize(("text", "message"), [
    ('runtime = "kvm"\n', "runtime = 'kvm' is not a runtime"),
    ('runtim = "bwrap"\n', "unknown setting 'runtim'"),
    ("mounts = \"/tmp\"\n", "mounts must be a list"),
    ('runtime = "bwrap"\nmounts = ["missing"]\n', "does not exist"),
    ("runtime = \n", "not valid TOML"),
])
def test_a_bad_config_file_is_a_usage_error_naming_it(text: str, message: str,
                                                       tmp_path: Path) -> None:
    folder = tmp_path / "lab"
    write_lab(folder, FILES, SECRET="/nonexistent")
    (folder / "repx.toml").write_text(text)
    env = repx_env({"XDG_CONFIG_HOME": str(tmp_path / "config-home")})
    env.pop("REPX_RUNTIME", None)
    result = build(folder, tmp_path / "store", expect=2, env=env)
    assert message in result.stderr and str(folder / "repx.toml") in result.stderr, \
        result.stderr
