"""The head start of ``repx build`` (repx.lab.head_start): the lab's Nix build starts before
the command line loads. The guess it starts from must never change what is built: a build
whose options turn out otherwise cancels it, and so does a command that ends first.

Everything runs for real (Nix, the store, the ``repx`` entry point as a process). Every
other test that runs ``python -m repx.cli build`` goes through the head start as well.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from repx.cli import main as cli
from repx.lab import LabOptions, head_start
from repx.lab.progress import ConsoleLabReporter, LabReporter
from tests.buildutil import REPX, repx_env
from tests.conftest import require_nix
from tests.test_check_ahead import Lab, sleepers, slow_lab


@pytest.fixture(autouse=True)
def no_head_start_left() -> Iterator[None]:
    """Each test starts with no head start and leaves none running."""
    head_start.cancel()
    yield
    head_start.cancel()


@pytest.mark.parametrize("args", [
    [], ["-j", "2", "--store", "s", "--json"], ["a", "@group", "--dry-run", "-kq"],
    ["--force", "job", "--runtime", "bwrap", "-j2"],
])
def test_options_that_leave_the_lab_alone_give_the_default_lab(args: list[str]) -> None:
    options = head_start.guessed_options(args)
    assert options == LabOptions()
    assert type(options.reporter) is ConsoleLabReporter and options.reporter.verbose == 0


@pytest.mark.parametrize("args", [
    ["--lab", "result"], ["--lab=result"], ["-f", "x.nix"], ["--file=x.nix"], ["-kf", "x"],
    ["--nixpkgs", "/p"], ["--arg", "n", "1"], ["--argstr", "n", "1"], ["--impure"],
    ["--target", "cluster"], ["-h"], ["--help"], ["--", "--lab"],
])
def test_any_option_that_may_change_the_lab_means_no_guess(args: list[str]) -> None:
    assert head_start.guessed_options(["-j", "2", *args]) is None


def test_the_guess_reads_the_nixpkgs_click_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(head_start.NIXPKGS_ENV, "/some/nixpkgs")
    assert head_start.guessed_options([]) == LabOptions(nixpkgs="/some/nixpkgs")
    monkeypatch.setenv(head_start.NIXPKGS_ENV, "")
    assert head_start.guessed_options([]) == LabOptions()


def test_no_head_start_for_other_commands_or_where_no_lab_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in (["status"], ["lab", "build"], ["-v", "build"], [], ["build"]):
        head_start.start(argv)  # the last finds no lab.nix here: left for the command to say
        assert head_start._started is None, argv


@pytest.mark.nix
def test_an_other_reporting_is_not_taken_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-v`` prints what the lab build does: a build started with the quiet reporter
    must not be adopted for it."""
    require_nix()
    lab = Lab(tmp_path)
    monkeypatch.chdir(lab.folder)
    head_start.start(["build"])
    started = head_start._started
    assert started is not None
    verbose = LabOptions(reporter=ConsoleLabReporter(verbose=1))
    assert head_start.take(verbose) is None
    assert head_start.take(LabOptions(reporter=LabReporter())) is None  # nothing left
    assert started.known is None  # cancelled, never waited for


@pytest.mark.nix
def test_a_build_with_the_guessed_options_adopts_the_started_lab(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_nix()
    lab = Lab(tmp_path)
    monkeypatch.chdir(lab.folder)
    head_start.start(["build", "--json"])
    started = head_start._started
    assert started is not None and started.known is None  # Nix is running
    result = CliRunner().invoke(cli, ["build", "--json", "-j", "2", "--store", str(lab.store)],
                                env=repx_env())
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["executed"]) == 5
    assert started.known == (lab.folder / "result").resolve()  # waited for by the build
    assert head_start._started is None


@pytest.mark.nix
def test_a_build_of_an_other_lab_cancels_the_head_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guess was this folder's lab; the command builds another: the guessed build is
    stopped (with the builder it waits on) and the other lab is built and run."""
    require_nix()
    folder, builder = slow_lab(tmp_path / "slow")
    lab = Lab(tmp_path)
    monkeypatch.chdir(folder)
    head_start.start(["build"])
    deadline = time.monotonic() + 30
    while not sleepers(builder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers(builder), "the slow lab's builder never started"
    result = CliRunner().invoke(cli, ["build", "--json", "-f", str(lab.folder / "lab.nix"),
                                      "--store", str(lab.store)], env=repx_env())
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["executed"]) == 5
    deadline = time.monotonic() + 10
    while sleepers(builder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers(builder) == []
    assert not (folder / "result").exists()


@pytest.mark.nix
def test_a_command_that_fails_first_leaves_no_lab_build_behind(tmp_path: Path) -> None:
    """``repx build --no-such-option`` (the real entry point, as a process): the usage error
    is said, and the Nix build the head start began is stopped; left running, it would reach
    the slow lab's builder within a second and keep it for 20 s."""
    require_nix()
    folder, builder = slow_lab(tmp_path / "slow")
    done = subprocess.run([*REPX, "build", "--no-such-option"], cwd=folder, env=repx_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "No such option '--no-such-option'" in done.stderr
    assert "Traceback" not in done.stderr
    time.sleep(3)
    assert sleepers(builder) == []
    assert not (folder / "result").exists()


@pytest.mark.nix
def test_the_entry_point_builds_and_then_finds_everything_up_to_date(tmp_path: Path) -> None:
    require_nix()
    lab = Lab(tmp_path)
    runs = [subprocess.run([*REPX, "build", "-j", "2", "--json", "--store", str(lab.store)],
                           cwd=lab.folder, env=repx_env(), capture_output=True, text=True,
                           timeout=180, check=True) for _ in range(2)]
    first, second = (json.loads(run.stdout) for run in runs)
    assert len(first["executed"]) == 5
    assert second["executed"] == [] and sorted(second["up_to_date"]) == sorted(
        first["executed"])
