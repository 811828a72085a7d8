"""The build's progress display: live block on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from repx.engine.progress import ConsoleReporter, QuietReporter, format_seconds
from repx.engine.scheduler import Failure
from repx.engine.units import Outcome, Unit

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _a_terminal_that_redraws(monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal tests' TERM: a CI's TERM=dumb would turn every live display off."""
    monkeypatch.setenv("TERM", "xterm-256color")


def plain(text: str) -> str:
    """``text`` without its colours (SGR escape sequences)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def unit(n: int, outcome: str = "") -> Unit:
    u = Unit(id=f"{n:032d}-stage-1", job=None, role="job", label="stage",  # type: ignore[arg-type]
             script="", outputs={}, cpus=1, mem=0, run_index=0, order=n)
    u.outcome = outcome
    return u


def test_plain_lines_at_each_tenth_and_a_final_line() -> None:
    out = io.StringIO()
    reporter = ConsoleReporter(out)
    reporter.begin(20)
    for n in range(20):
        u = unit(n)
        reporter.started(u)
        u.outcome = Outcome.SUCCEEDED
        reporter.finished(u, 0.01)
        reporter.tick()
    reporter.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "running 20 jobs"
    counts = [line.split("]")[0] for line in lines[1:]]
    assert counts == [f"[{n}/20" for n in range(2, 21, 2)]  # one line per tenth, no repeat
    assert "\x1b" not in out.getvalue()


def test_plain_lines_never_load_rich() -> None:
    """Off a terminal the progress is plain writes: a build logged by CI (or timed by the
    benchmark) does not pay for importing rich, a failure included."""
    script = textwrap.dedent("""
        import io, sys
        from repx.engine.progress import ConsoleReporter
        from repx.engine.scheduler import Failure
        from repx.engine.units import Outcome, Unit
        out = io.StringIO()
        reporter = ConsoleReporter(out)
        reporter.begin(1)
        u = Unit(id="0" * 32 + "-stage-1", job=None, role="job", label="stage", script="",
                 outputs={}, cpus=1, mem=0, run_index=0, order=0)
        reporter.started(u)
        u.outcome = Outcome.FAILED
        reporter.failed(Failure(unit=u.id, job=u.id, label="stage", reason="exited 1",
                                stderr_log="/nonexistent", stdout_log="/nonexistent"))
        reporter.finished(u, 0.1)
        reporter.tick()
        reporter.close()
        print(sorted(m for m in sys.modules if m.split(".")[0] == "rich"))
        print(out.getvalue())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    loaded, *lines = done.stdout.splitlines()
    assert loaded == "[]"
    assert "FAILED stage 00000000000000000000000000000000-stage-1: exited 1" in lines
    assert lines[-2].startswith("[1/1]")


def test_live_block_shows_running_jobs_and_erases_itself(tmp_path: Path) -> None:
    out = Tty()
    reporter = ConsoleReporter(out)
    reporter.begin(3)
    running = [unit(n) for n in range(2)]
    for u in running:
        reporter.started(u)
    reporter._last_draw = -1.0  # draw now, not 0.1 s later
    reporter.tick()
    drawn = plain(out.getvalue())
    assert "[0/3]" in drawn and "2 running" in drawn
    assert drawn.count("▸ stage") == 2
    log = tmp_path / "stderr.log"
    log.write_text("+ false\nsomething broke\n")
    failed = running[0]
    failed.outcome = Outcome.FAILED
    reporter.finished(failed, 1.0)
    reporter.failed(Failure(failed.id, failed.id, "stage", "exit code 1", "", str(log)))
    shown = plain(out.getvalue())
    assert "FAILED stage" in shown and "| something broke" in shown
    redrawn = shown.rsplit("FAILED", 1)[1]
    assert "1 failed" in redrawn and "1 running" in redrawn
    assert redrawn.count("▸ stage") == 1
    reporter.close()
    erased, final = out.getvalue().rsplit("\x1b[1A\x1b[2K" * 2, 1)  # the 2-line block erased
    assert "[1/3]" in final and "elapsed" in final and final.endswith("\n")  # the last line


def test_quiet_shows_only_failures() -> None:
    out = io.StringIO()
    quiet = QuietReporter(out)
    quiet.begin(5)
    quiet.finished(unit(1, Outcome.SUCCEEDED), 1.0)
    assert out.getvalue() == ""
    quiet.failed(Failure("u", "j", "stage", "exit code 2", "o.log", "e.log"))
    assert out.getvalue() == "FAILED stage u: exit code 2\n  logs: e.log\n"


def test_durations_read_well() -> None:
    assert [format_seconds(s) for s in (4.24, 185, 3720)] == ["4.2s", "3m05s", "1h02m"]
