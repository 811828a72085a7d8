"""The build's display on a real terminal: a build with failures runs in a tmux pane of 40,
80 and 120 columns, and the pane is captured again and again while it runs and once after.

What must hold on every capture (the scrollback included, wrapped lines joined back):
no line wider than the pane, at most one status line (a redraw that left its old copy
behind would show two), the running jobs only right under it; after the build exactly one
status line is left, the last one, with the elapsed time. Colour on the terminal (failures
red), none with ``NO_COLOR``; ASCII only when the terminal's encoding is not UTF-8; a piped
run gets plain lines without one escape code.

The lab: 20 jobs of 0.3 s, two at a time, every fifth fails (about 3 s a build).
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from repx.display import ASCII, UNICODE
from repx.engine.progress import Part, fit_parts
from repx.lab.progress import ConsoleLabReporter, Phase, reported
from tests.buildutil import REPX, repx, repx_env, write_lab
from tests.conftest import REPO, require_nix

JOBS = 20
FAILING = [x for x in range(JOBS) if x % 5 == 0]
#: A long stage name: at 40 columns the running lines must be cut, not wrapped.
STAGE = "simulate-particle-trajectories"

RUN_NIX = f"""
{{ pkgs, repx-lib, ... }}:
{{
  name = "main";
  pipelines = [ ./pipe.nix ];
  params = {{ x = builtins.genList (i: i) {JOBS}; }};
}}
"""

PIPE_NIX = """
{ repx, pkgs, ... }:
repx.mkPipe rec {
  work = repx.callStage ./stage.nix [ ];
}
"""

STAGE_NIX = """
{ pkgs }:
{
  pname = "@STAGE@";
  params = { x = 0; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    sleep 0.3
    if [ $(( ${toString params.x} % 5 )) -eq 0 ]; then
      echo "x=${toString params.x} diverged" >&2
      exit 1
    fi
    echo "${toString params.x}" > "${outputs.result}"
  '';
}
"""

#: A status line: ``[12/20] · ...``.
STATUS = re.compile(r"^\[\d+/\d+\]")
#: Any escape sequence (what a pipe must never get).
ESCAPE = "\x1b"
#: A colour or attribute (SGR) sequence in a ``capture-pane -e``.
SGR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def _a_terminal_that_redraws(monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal tests' TERM: a CI's TERM=dumb would turn every live display off."""
    monkeypatch.setenv("TERM", "xterm-256color")


def tmux() -> str:
    """The tmux program; a failure, not a skip, when it is missing."""
    found = shutil.which("tmux")
    if found is None:
        pytest.fail("tmux is not installed: run `make setup` (installs Debian's tmux)")
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab folder, built once (each build below still runs every job: a fresh store)."""
    require_nix()
    folder = write_lab(tmp_path_factory.mktemp("display") / "lab",
                       {"run.nix": RUN_NIX, "pipe.nix": PIPE_NIX, "stage.nix": STAGE_NIX},
                       STAGE=STAGE)
    repx("lab", "build", cwd=folder)
    return folder


@dataclass
class PaneRun:
    """What a build in a tmux pane showed: every capture while it ran, the last one (after
    it ended, with its scrollback) and the same with the colours (``capture-pane -e``)."""

    width: int
    during: list[str]
    final: str
    final_coloured: str


@pytest.fixture
def pane_server() -> Iterator[list[str]]:
    """A tmux server of this test alone (its own socket, no user config), killed after."""
    command = [tmux(), "-L", f"repx-test-{uuid.uuid4().hex[:8]}", "-f", os.devnull, "-u"]
    try:
        yield command
    finally:
        subprocess.run([*command, "kill-server"], capture_output=True, check=False)


def build_in_pane(server: list[str], folder: Path, width: int,
                  extra_env: dict[str, str] | None = None) -> PaneRun:
    """``repx build -k -j 2`` with a fresh store in a ``width``-column pane; the captures."""
    store = folder.parent / f"store-{uuid.uuid4().hex[:8]}"
    environment = {**repx_env(), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    # The pane's size and TERM (tmux sets them), colour unless asked otherwise.
    for name in ("COLUMNS", "LINES", "NO_COLOR", "TERM"):
        environment.pop(name, None)
    environment.update(extra_env or {})
    script = folder.parent / f"run-{store.name}.sh"
    exports = "".join(f"export {name}={shlex.quote(value)}\n"
                      for name, value in environment.items() if re.fullmatch(r"\w+", name))
    command = shlex.join([*REPX, "build", "-k", "-j", "2", "--store", str(store)])
    # The tmux server has the test runner's environment, which may say COLUMNS=80 (pytest
    # does): rich would believe it over the pane's real size.
    script.write_text(f"unset COLUMNS LINES NO_COLOR\nexport TERM=screen\n{exports}"
                      f"cd {shlex.quote(str(folder))}\n{command}\n"
                      "echo \"__DONE__ $?\"\nsleep 600\n")
    subprocess.run([*server, "new-session", "-d", "-x", str(width), "-y", "30",
                    f"sh {shlex.quote(str(script))}"], check=True, cwd=REPO)

    def capture(*flags: str) -> str:
        return subprocess.run([*server, "capture-pane", "-p", "-J", "-S", "-", *flags],
                              capture_output=True, text=True, check=True).stdout

    during: list[str] = []
    deadline = time.monotonic() + 120
    while True:
        shot = capture()
        if "__DONE__" in shot:
            break
        during.append(shot)
        if time.monotonic() > deadline:
            pytest.fail(f"the build in tmux did not end in 120 s; the pane:\n{shot}")
        time.sleep(0.15)
    return PaneRun(width, during, capture(), capture("-e"))


def lines_of(shot: str) -> list[str]:
    return [line.rstrip() for line in shot.splitlines()]


def check_fits_and_has_no_stale_lines(run: PaneRun) -> None:
    """Every capture: no line wider than the pane, one status line at most, the running
    jobs right under it."""
    for shot in [*run.during, run.final]:
        lines = lines_of(shot)
        too_wide = [line for line in lines if len(line) > run.width]
        assert not too_wide, f"lines wider than {run.width} columns:\n{shot}"
        status = [i for i, line in enumerate(lines) if STATUS.match(line)]
        assert len(status) <= 1, f"a stale status line was left behind:\n{shot}"
        running = [i for i, line in enumerate(lines) if re.match(r"^  (▸|>) ", line)]
        if running:
            assert status and running == list(range(status[0] + 1, status[0] + 1 +
                                                    len(running))), shot


def check_final_screen(run: PaneRun) -> list[str]:
    """After the build: every failure once, one status line (the last, with the elapsed
    time), no running job left, the recap and the summary; returns the lines."""
    lines = [line for line in lines_of(run.final) if line]
    assert lines[-1].startswith("__DONE__ 1"), run.final  # exit code 1: jobs failed
    status = [line for line in lines if STATUS.match(line)]
    assert len(status) == 1 and status[0].startswith(f"[{JOBS}/{JOBS}]"), run.final
    assert "elapsed" in status[0], status  # the final line keeps the elapsed time
    assert not any(re.match(r"^  (▸|>) ", line) for line in lines), run.final
    assert sum(line.startswith("FAILED ") for line in lines) == len(FAILING), run.final
    assert f"{len(FAILING)} failed jobs:" in lines, run.final
    assert lines[-2] == f"{JOBS - len(FAILING)} executed, 0 up to date, {len(FAILING)} failed"
    return lines


@pytest.mark.nix
@pytest.mark.parametrize("width", [40, 80, 120])
def test_a_build_with_failures_fits_the_pane_and_leaves_no_stale_line(
        lab: Path, pane_server: list[str], width: int) -> None:
    run = build_in_pane(pane_server, lab, width)
    assert any(re.search(r"^\[\d+/\d+\].*\n  ▸ ", shot, re.M) for shot in run.during), \
        "no live block (status and running jobs) was ever drawn"
    check_fits_and_has_no_stale_lines(run)
    check_final_screen(run)
    # Colour on a terminal: the failures red (31), the stderr tails dim (2).
    coloured = run.final_coloured
    assert "\x1b[31mFAILED" in coloured and "\x1b[2m" in coloured, coloured[:2000]


@pytest.mark.nix
def test_no_color_draws_live_but_without_colour(lab: Path, pane_server: list[str]) -> None:
    run = build_in_pane(pane_server, lab, 80, {"NO_COLOR": "1"})
    check_fits_and_has_no_stale_lines(run)
    check_final_screen(run)
    assert not SGR.search(run.final_coloured), run.final_coloured[:2000]


@pytest.mark.nix
def test_a_terminal_that_is_not_utf8_gets_ascii_only(lab: Path, pane_server: list[str]) -> None:
    run = build_in_pane(pane_server, lab, 80, {"LC_ALL": "C", "LANG": "C",
                                              "PYTHONIOENCODING": "ascii"})
    check_fits_and_has_no_stale_lines(run)
    lines = check_final_screen(run)
    for shot in [*run.during, run.final]:
        odd = sorted({char for char in shot if ord(char) > 127})
        assert not odd, f"non-ASCII characters {odd} on a C-locale terminal:\n{shot}"
    status = next(line for line in lines if STATUS.match(line))
    assert " | " in status, status  # the ASCII separator
    assert any(re.search(r"^  > ", shot, re.M) for shot in run.during), \
        "no running job was drawn with the ASCII marker"


@pytest.mark.nix
def test_a_piped_build_gets_plain_lines_without_escape_codes(lab: Path) -> None:
    store = lab.parent / "store-piped"
    result = subprocess.run([*REPX, "build", "-k", "-j", "2", "--store", str(store)],
                            cwd=lab, env={**repx_env(), "TERM": "xterm-256color"},
                            capture_output=True, text=True, check=False, timeout=180)
    assert result.returncode == 1, result.stderr
    assert ESCAPE not in result.stdout and ESCAPE not in result.stderr
    err = result.stderr.splitlines()
    assert err[0] == f"running {JOBS} jobs", err
    assert err[-1].startswith(f"[{JOBS}/{JOBS}]") and "elapsed" in err[-1], err
    assert f"{len(FAILING)} failed jobs:" in result.stdout.splitlines()



# ------------------------------------------------------ the same rules, without a terminal


class AsciiTerminal(io.StringIO):
    """A terminal whose encoding is ASCII (``LC_ALL=C``)."""

    encoding = "ascii"

    def isatty(self) -> bool:
        return True


class Utf8Terminal(AsciiTerminal):
    encoding = "utf-8"


def test_the_lab_line_follows_the_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab's live line: ASCII on an ASCII terminal, no colour with NO_COLOR, cut to the
    width (here 30 columns)."""
    monkeypatch.setenv("COLUMNS", "30")
    monkeypatch.delenv("NO_COLOR", raising=False)
    phase = Phase("expansion", "expanding a lab with a long name", unit="jobs",
                  progress=lambda: 120_000)
    ascii_terminal = AsciiTerminal()
    with reported(ConsoleLabReporter(ascii_terminal, show_after=0.0), phase):
        time.sleep(0.3)
    shown = ascii_terminal.getvalue()
    # ASCII, and the name of the phase shortened so that the time and the count stay.
    assert shown.isascii() and "expanding ..." in shown, repr(shown)
    assert re.search(r" \d+s \| 120000 jobs", shown), repr(shown)
    assert SGR.search(shown)  # colour: a terminal, NO_COLOR unset
    drawn = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line) for line in re.split(r"[\r\n]", shown)]
    assert max(len(line) for line in drawn) <= 30, drawn

    monkeypatch.setenv("NO_COLOR", "1")
    plain = Utf8Terminal()
    with reported(ConsoleLabReporter(plain, show_after=0.0), phase):
        time.sleep(0.3)
    assert "…" in plain.getvalue() and not SGR.search(plain.getvalue())


def test_the_status_line_drops_the_least_useful_parts_first() -> None:
    parts = [Part("[120/2000]", "", 9), Part("100 done", "", 5), Part("3 up to date", "", 3),
             Part("17 failed", "", 8), Part("2 running", "", 4), Part("ETA 3m05s", "", 1),
             Part("elapsed 1m02s", "", 7)]
    assert fit_parts(parts, 200, UNICODE).plain == (
        "[120/2000] · 100 done · 3 up to date · 17 failed · 2 running · ETA 3m05s · "
        "elapsed 1m02s")
    assert fit_parts(parts, 62, ASCII).plain == \
        "[120/2000] | 100 done | 17 failed | 2 running | elapsed 1m02s"
    assert fit_parts(parts, 40, UNICODE).plain == "[120/2000] · 17 failed · elapsed 1m02s"
    assert fit_parts(parts, 8, ASCII).plain == "[120/200"  # one part: cut, never wrapped
