"""What opening a lab shows while it runs: a live line for a slow phase on a terminal only,
the phase times with ``-v``, nothing at all from the library API by default.

The terminal case runs the real CLI on a pseudo-terminal (Python's ``pty``) with a lab whose
expansion takes seconds here: 200 000 jobs of a one-stage run (measured: about 3.5 s of
expansion and 3 s of Nix on this 2-core machine).
"""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from repx.lab import LabOptions, open_lab
from repx.lab.progress import ConsoleLabReporter, Phase, reported
from tests.buildutil import REPX, repx, repx_env
from tests.conftest import require_nix

#: A one-stage run whose sweep has ``{x} × {y}`` combinations.
SWEEP_RUN = """
{{ pkgs, repx-lib, ... }}:
{{
  name = "main";
  pipelines = [ ./pipe.nix ];
  params = {{ x = builtins.genList (i: i) {x}; y = builtins.genList (i: i) {y}; }};
}}
"""

SWEEP_STAGE = """
{ pkgs }:
{
  pname = "work";
  params = { x = 0; y = 0; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    echo "${toString params.x} ${toString params.y}" > "${outputs.result}"
  '';
}
"""


def sweep_lab(make_lab, x: int, y: int) -> Path:
    return make_lab({"run.nix": SWEEP_RUN.format(x=x, y=y), "stage.nix": SWEEP_STAGE})


@pytest.fixture(autouse=True)
def _a_terminal_that_redraws(monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal tests' TERM: a CI's TERM=dumb would turn every live display off."""
    monkeypatch.setenv("TERM", "xterm-256color")


#: How rich erases a live line (moves up to it, clears it) when the display stops.
ERASE_LINE = "\x1b[1A\x1b[2K"


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal (what a live line is drawn on)."""

    def isatty(self) -> bool:
        return True


# ------------------------------------------------------------------------- the reporter


def test_a_slow_phase_gets_a_live_line_that_is_erased() -> None:
    stream = FakeTerminal()
    reporter = ConsoleLabReporter(stream, show_after=0.05)
    made = {"jobs": 0}
    phase = Phase("expansion", "expanding the lab", unit="jobs", progress=lambda: made["jobs"])
    with reported(reporter, phase):
        for _ in range(6):
            made["jobs"] += 1000
            time.sleep(0.05)
    text = stream.getvalue()
    assert re.search(r"expanding the lab… \d+s · \d+ jobs", re.sub(r"\x1b\[[0-9;]*m", "", text)), \
        repr(text)
    assert text.endswith(ERASE_LINE)  # the line is gone once the phase is over
    # and nothing else was printed: every line drawn is the phase's line
    assert {re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).strip()[:17]
            for line in re.split(r"[\r\n]", text)} <= {"", "expanding the lab"}


def test_a_quick_phase_and_a_non_terminal_show_nothing() -> None:
    terminal = FakeTerminal()
    with reported(ConsoleLabReporter(terminal), Phase("nix build", "building the lab")):
        time.sleep(0.05)
    assert terminal.getvalue() == ""  # under a second: no line that flashes and vanishes
    log = io.StringIO()  # a file or a pipe: never a live line, however long
    with reported(ConsoleLabReporter(log, show_after=0.0), Phase("nix build", "building")):
        time.sleep(0.3)
    assert log.getvalue() == ""


def test_verbose_prints_each_phase_time_also_when_a_phase_fails() -> None:
    stream = io.StringIO()
    reporter = ConsoleLabReporter(stream, verbose=1)
    phase = Phase("expansion", "expanding the lab", unit="jobs")
    with reported(reporter, phase):
        phase.done = 1
    assert re.fullmatch(r"repx: expansion: \d+\.\d\ds \(1 job\)\n", stream.getvalue())
    terminal = FakeTerminal()
    failing = ConsoleLabReporter(terminal, verbose=1, show_after=0.01)
    with pytest.raises(ValueError), reported(failing, Phase("nix build", "building")):
        time.sleep(0.1)
        raise ValueError("the lab is broken")
    # The live line is erased before the error is printed; a failed phase has no time.
    assert terminal.getvalue().endswith(ERASE_LINE) and "repx: nix build" not in \
        terminal.getvalue()


# ------------------------------------------------------------------- the library, the CLI


@pytest.mark.nix
def test_the_library_is_quiet_by_default(make_lab, capfd: pytest.CaptureFixture[str]) -> None:
    require_nix()
    folder = sweep_lab(make_lab, 3, 2)
    graph = open_lab(LabOptions(lab_file=str(folder / "lab.nix"), out_link=None))
    assert len(graph.jobs) == 6
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


@pytest.mark.nix
def test_verbose_cli_prints_the_phase_times_and_a_pipe_gets_nothing_else(make_lab) -> None:
    require_nix()
    folder = sweep_lab(make_lab, 3, 2)
    verbose = repx("-v", "lab", "build", cwd=folder)
    lines = verbose.stderr.splitlines()
    assert lines[0] == f"repx: lab: {folder / 'lab.nix'}"
    assert re.fullmatch(r"repx: nix build: \d+\.\d\ds", lines[1]), lines
    assert re.fullmatch(r"repx: expansion: \d+\.\d\ds \(6 jobs\)", lines[2]), lines
    assert re.fullmatch(r"repx: script validation: \d+\.\d\ds \(1 script\)", lines[3]), lines
    assert len(lines) == 4 and "6 distinct jobs" in verbose.stdout
    quiet = repx("lab", "build", cwd=folder)  # stderr is a pipe: no progress, no times
    assert quiet.stderr == "" and quiet.stdout == verbose.stdout


def run_on_terminal(args: list[str], cwd: Path, timeout: float = 120,
                    env: dict[str, str] | None = None) -> tuple[int, str]:
    """``repx ARGS`` with stdout and stderr on a pseudo-terminal: its exit code and all it
    wrote there."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen([*REPX, *args], cwd=cwd, env=repx_env(env),
                               stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary)
    os.close(secondary)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                data = os.read(primary, 65536)
            except OSError:  # the terminal closed: the process has exited
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    os.close(primary)
    code = process.wait(timeout=10)
    return code, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.nix
def test_a_terminal_sees_the_expansion_count_of_a_big_lab(make_lab) -> None:
    require_nix()
    folder = sweep_lab(make_lab, 500, 400)  # 200 000 jobs
    # Expanding 200 000 jobs takes well under the default second before a line is drawn.
    code, coloured = run_on_terminal(["list", "runs"], folder,
                                     env={"REPX_PROGRESS_AFTER": "0.05"})
    assert code == 0, coloured
    text = re.sub(r"\x1b\[[0-9;]*m", "", coloured)  # without its colours
    counts = [int(n) for n in re.findall(r"expanding the lab… \d+s · (\d+) jobs", text)]
    assert counts, f"no expansion line on the terminal:\n{text[-2000:]!r}"
    assert counts == sorted(counts) and 0 < counts[-1] <= 200_000  # a count that grows
    table = text.rsplit(ERASE_LINE, 1)[1]  # the line is erased before the output
    assert re.search(r"^main\s+200000\s+pure", table, re.M), table


def test_progress_after_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``REPX_PROGRESS_AFTER`` sets the delay before a live line; a bad value keeps the
    default instead of failing the command."""
    from repx.lab.progress import SHOW_AFTER, show_after_setting
    monkeypatch.setenv("REPX_PROGRESS_AFTER", "0.25")
    assert show_after_setting() == 0.25
    assert ConsoleLabReporter(io.StringIO()).show_after == 0.25
    for bad in ("soon", "-1", ""):
        monkeypatch.setenv("REPX_PROGRESS_AFTER", bad)
        assert show_after_setting() == SHOW_AFTER
