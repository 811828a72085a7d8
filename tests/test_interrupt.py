"""Ctrl-C at any moment of a command: one line, exit code 130, never a Python traceback.

The first few hundred milliseconds of a command are spent importing the command line (click,
LMDB, the engine), before the command's own error handling exists; Ctrl-C there used to end
in a ``KeyboardInterrupt`` traceback. These tests start the real entry points (the ``repx``
console script, ``python -m repx``, ``python -m repx.cli``), send SIGINT from the moment
Python itself is up until 0.6 s later, and read what the user would see. The command builds
a lab whose build takes seconds (a derivation that sleeps), so the later signals arrive while
Nix runs: the command is still going at every delay, and what is measured is how it stops.

The machine may be busy (other builds, a shared cluster): Python's own start-up is measured
again before each attempt, and a signal that still landed before any code of repx ran (a
traceback with no frame of repx) is sent again later; nothing of repx is excused by that.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.buildutil import repx_env
from tests.conftest import require_nix, write_files

#: A lab whose build waits for a derivation that sleeps (`nonce` makes it new every time,
#: so Nix never has it already).
SLOW_LAB = {
    "lab.nix": """
        { pkgs, repx-lib, nonce ? "", ... }:
        let
          slow = builtins.derivation {
            name = "slow-${nonce}";
            system = builtins.currentSystem;
            builder = "/bin/sh";
            PATH = "/usr/bin:/bin";
            args = [ "-c" "sleep 5; echo done > $out" ];
          };
        in
        repx-lib.mkLab {
          inherit pkgs repx-lib;
          gitHash = "${slow}";
          lab_version = "1.0";
          runs = { main = repx-lib.callRun ./run.nix [ ]; };
        }
    """,
    "run.nix": """
        { pkgs, repx-lib, ... }:
        { name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }
    """,
    "pipe.nix": """
        { repx, ... }:
        repx.mkPipe { work = repx.callStage ./stage.nix [ ]; }
    """,
    "stage.nix": """
        { pkgs }:
        {
          pname = "work";
          outputs = { result = "$out/result.txt"; };
          run = { outputs, ... }: ''
            echo hi > "${outputs.result}"
          '';
        }
    """,
}

#: When SIGINT is sent, in seconds after Python itself is up (see :func:`python_startup`):
#: at once, during the imports of the command line (they take 0.4 s or more), then during Nix.
DELAYS = (0.0, 0.05, 0.15, 0.3, 0.6)


def startup_time() -> float:
    """How long this Python takes right now to start (site, the venv's .pth files) and to
    load the entry point's module, repx.console, which installs the quiet handler."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "import repx.console"], env=repx_env(), check=True)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def python_startup() -> float:
    """:func:`startup_time` with margin: the least time after which the delays count.

    Before that no code of repx has run, so nothing of repx can answer a signal. Measured,
    because it is 0.04 s on an idle machine and several times that on a busy one (and
    measured again before each attempt, as the load changes).
    """
    return 2 * max(startup_time() for _ in range(3)) + 0.05


def console_script() -> list[str]:
    """The ``repx`` command pip installed beside this Python (what users type)."""
    script = Path(sys.executable).parent / "repx"
    if not script.is_file():
        pytest.fail(f"no repx console script at {script}: install repx (pip install -e .)")
    return [str(script)]


ENTRY_POINTS = {
    "repx": console_script,
    "python -m repx": lambda: [sys.executable, "-m", "repx"],
    "python -m repx.cli": lambda: [sys.executable, "-m", "repx.cli"],
}


def interrupt(command: list[str], cwd: Path, delay: float, *, whole_group: bool
              ) -> subprocess.CompletedProcess[str]:
    """Start ``command``, send SIGINT after ``delay`` s (to repx alone, or to its whole
    process group as a terminal's Ctrl-C does) and wait for it to end."""
    process = subprocess.Popen(command, cwd=cwd, env=repx_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(delay)
    still_running = process.poll() is None
    if whole_group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert still_running, f"the command had ended before {delay} s: nothing was interrupted"
    return subprocess.CompletedProcess(command, process.returncode, out, err)


#: Python's words when a signal stops its own start-up (site, the .pth files).
_PYTHON_STARTUP = "init_import_site"

#: A traceback's frame: the file it ran.
_FRAME_FILE = re.compile(r'^\s*File "([^"]+)", line \d+', re.MULTILINE)

#: Where repx's code lives: a frame in here means repx code was running.
_REPX_PACKAGE = str(Path(__file__).resolve().parent.parent / "repx") + os.sep


def before_any_repx_code(stderr: str) -> bool:
    """Whether the signal stopped the command before any code of repx ran: in Python's own
    start-up, or in the imports of the console script or of runpy that precede repx (a
    traceback none of whose frames is in the repx package). Nothing repx does can matter
    then; that attempt is made again, later."""
    if _PYTHON_STARTUP in stderr:
        return True
    if "KeyboardInterrupt" not in stderr:
        return False
    files = _FRAME_FILE.findall(stderr)
    return not any(os.path.realpath(f).startswith(_REPX_PACKAGE) for f in files)


#: Attempts per delay when a signal keeps landing before repx (a busy machine); each waits
#: longer for Python to start (:func:`startup_time`, measured anew, and half as much more).
_ATTEMPTS = 6


@pytest.mark.nix
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_ctrl_c_at_any_moment_is_one_line_and_exit_code_130(entry: str, tmp_path: Path,
                                                           python_startup: float) -> None:
    require_nix()
    write_files(tmp_path, SLOW_LAB)
    for delay in DELAYS:
        for whole_group in (False, True):
            margin = 1.0
            for _attempt in range(_ATTEMPTS):
                startup = max(python_startup, 2 * startup_time() + 0.05) * margin
                after = startup + delay
                where = (f"{entry}, SIGINT {after:.2f} s after the start to the "
                         f"{'group' if whole_group else 'process'}")
                command = [*ENTRY_POINTS[entry](), "list", "runs",
                           "--argstr", "nonce", uuid.uuid4().hex]
                result = interrupt(command, tmp_path, after, whole_group=whole_group)
                if not before_any_repx_code(result.stderr):
                    break
                margin *= 1.5
            else:
                pytest.fail(f"{where}: {_ATTEMPTS} times no code of repx had run yet "
                            f"(the machine is too busy for this timing):\n{result.stderr}")
            assert "Traceback" not in result.stderr, f"{where}:\n{result.stderr}"
            assert result.returncode == 130, f"{where}: exit {result.returncode}\n{result.stderr}"
            assert result.stderr.strip().endswith("repx: interrupted"), f"{where}:\n{result.stderr}"
