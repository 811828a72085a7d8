"""GNU make's jobserver: a ``repx build`` in a make recipe takes its job slots from make, so
``make -jN`` bounds the repx jobs and the Makefile's other rules together, and every token
taken goes back, whatever ends the build."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from repx.engine.jobserver import Jobserver, JobserverUnavailable, jobserver_from_env
from tests.buildutil import REPX, build, repx, repx_env, start_build, write_lab
from tests.conftest import require_nix

# Each job sleeps SECONDS and appends "start T" and "end T" (epoch seconds) to a shared log.
TIMED_STAGE = """
{ pkgs }:
{
  pname = "timed";
  params = { i = 0; log = "@LOG@"; seconds = "1"; fail = 99; };
  outputs = { done = "$out/done.txt"; };
  runDependencies = [ pkgs.coreutils ];
  run = { outputs, params, ... }: ''
    echo "start $(date +%s.%N) ${toString params.i}" >> "${params.log}"
    sleep ${params.seconds}
    echo "end $(date +%s.%N) ${toString params.i}" >> "${params.log}"
    [ "${toString params.i}" != "${toString params.fail}" ]
    echo ok > "${outputs.done}"
  '';
}
"""


def timed_lab(root: Path, log: Path, count: int, *, seconds: str = "1",
              fail: int = 99) -> Path:
    """A lab of ``count`` independent timed jobs (job ``fail`` exits 1)."""
    return write_lab(root / "lab", {
        "run.nix": f"""
            {{ pkgs, repx-lib, ... }}:
            {{ name = "main"; pipelines = [ ./pipe.nix ];
              params = {{ i = repx-lib.utils.range 0 {count - 1}; seconds = [ "{seconds}" ];
                         fail = [ {fail} ]; }}; }}
        """,
        "pipe.nix": """
            { repx, ... }:
            repx.mkPipe rec { timed = repx.callStage ./stage.nix [ ]; }
        """,
        "stage.nix": TIMED_STAGE,
    }, LOG=str(log))


def intervals(log: Path) -> list[tuple[float, float]]:
    """(start, end) of every job or rule that logged both, from the shared log."""
    starts: dict[str, float] = {}
    spans = []
    for line in log.read_text().splitlines():
        kind, when, who = line.split()
        if kind == "start":
            starts[who] = float(when)
        else:
            spans.append((starts.pop(who), float(when)))
    assert not starts, f"started and never ended: {sorted(starts)}"
    return spans


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans that overlap at any moment (an end before a start at the
    same instant: a slot handed on is not two jobs)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans],
                    key=lambda event: (event[0], event[1]))
    running = peak = 0
    for _when, step in events:
        running += step
        peak = max(peak, running)
    return peak


def require_make() -> str:
    make = shutil.which("make")
    if make is None:
        pytest.fail("GNU make is not installed (apt-get install make)")
    return make


class FifoJobserver:
    """A jobserver like make 4.4's ``--jobserver-auth=fifo:PATH``, made by the test: a
    named fifo holding ``tokens`` bytes."""

    def __init__(self, path: Path, tokens: int) -> None:
        os.mkfifo(path)
        self.path = path
        # Held open read-write by the test, as make holds it: opening never blocks, and the
        # tokens stay in the fifo while nobody else has it open.
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        os.write(self.fd, b"+" * tokens)

    def makeflags(self, jobs: int) -> str:
        return f" -j{jobs} --jobserver-auth=fifo:{self.path}"

    def count(self) -> int:
        """How many tokens the fifo holds now (read out and written back)."""
        taken = b""
        while True:
            try:
                chunk = os.read(self.fd, 64)
            except BlockingIOError:
                break
            if not chunk:
                break
            taken += chunk
        if taken:
            os.write(self.fd, taken)
        return len(taken)

    def close(self) -> None:
        os.close(self.fd)


# ---------------------------------------------------------------------- MAKEFLAGS forms


def test_makeflags_forms_are_read_and_tokens_go_back(tmp_path: Path) -> None:
    assert jobserver_from_env({}) is None
    assert jobserver_from_env({"MAKEFLAGS": "k -j"}) is None  # make -j: no jobserver

    # The pipe form: our own non-blocking read end, tokens taken and given back byte for byte.
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, b"ab")
        server = jobserver_from_env({"MAKEFLAGS": f"k -j3 --jobserver-auth={read_fd},{write_fd}"})
        assert isinstance(server, Jobserver) and server.make_jobs == 3
        assert os.get_blocking(read_fd)  # make's own description is left alone
        assert server.try_acquire() and server.try_acquire()
        assert not server.try_acquire()  # empty: never waits
        assert server.tokens == 2
        server.close()
        assert sorted(os.read(read_fd, 8)) == sorted(b"ab")
    finally:
        os.close(read_fd)
        os.close(write_fd)

    # Descriptors make did not pass (a recipe without '+'): closed, or reused by other files.
    closed = jobserver_from_env({"MAKEFLAGS": " -j4 --jobserver-auth=900,901"})
    assert isinstance(closed, JobserverUnavailable) and "'+'" in closed.reason
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        reused = jobserver_from_env({"MAKEFLAGS": f" -j4 --jobserver-auth={a.fileno()},"
                                                  f"{b.fileno()}"})
    assert isinstance(reused, JobserverUnavailable)

    fifo = FifoJobserver(tmp_path / "fifo", 2)
    try:
        server = jobserver_from_env({"MAKEFLAGS": fifo.makeflags(3)})
        assert isinstance(server, Jobserver) and server.where == str(tmp_path / "fifo")
        assert server.try_acquire() and fifo.count() == 1
        server.close()
        assert fifo.count() == 2
    finally:
        fifo.close()
    missing = jobserver_from_env({"MAKEFLAGS": f"-j2 --jobserver-auth=fifo:{tmp_path}/nope"})
    assert isinstance(missing, JobserverUnavailable) and "nope" in missing.reason


# ------------------------------------------------------------------------- real make


@pytest.mark.nix
def test_make_j3_bounds_repx_jobs_and_user_rules_together(tmp_path: Path) -> None:
    """``make -j3``: a rule running ``repx build`` of 30 one-second jobs beside 3 user rules
    that sleep 1 s too: never more than 3 at once, and repx does use the slots it gets."""
    require_nix()
    make = require_make()
    log = tmp_path / "spans.log"
    folder = timed_lab(tmp_path, log, 30)
    repx("lab", "build", cwd=folder)
    store = tmp_path / "store"
    user_rule = "\t@echo \"start $$(date +%s.%N) $@\" >> {log}; sleep 1; " \
                "echo \"end $$(date +%s.%N) $@\" >> {log}\n"
    makefile = folder / "Makefile"
    makefile.write_text(
        ".PHONY: all results fig1 fig2 fig3\n"
        "all: results fig1 fig2 fig3\n"
        "results:\n"
        f"\t+{' '.join(REPX)} build --lab result --store {store} --quiet\n"
        + "".join(f"fig{n}:\n" + user_rule.format(log=log) for n in (1, 2, 3)))
    started = time.monotonic()
    result = subprocess.run([make, "-j3"], cwd=folder, env=repx_env(), capture_output=True,
                            text=True, check=False, timeout=120)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr, result.stderr
    spans = intervals(log)
    assert len(spans) == 33
    assert most_at_once(spans) == 3
    # 33 one-second sleeps in 3 slots: about 11 s; repx alone at one job a time would be 30.
    assert took < 25, f"make -j3 took {took:.1f} s"
    repx_spans = spans_of_jobs(log)
    assert most_at_once(repx_spans) >= 2  # repx took tokens, not only its implicit slot


def spans_of_jobs(log: Path) -> list[tuple[float, float]]:
    """The spans of the repx jobs only (they log a number, the user rules their name)."""
    kept = [line for line in log.read_text().splitlines() if line.split()[2].isdigit()]
    only = log.with_suffix(".jobs")
    only.write_text("\n".join(kept) + "\n")
    return intervals(only)


@pytest.mark.nix
def test_without_plus_repx_warns_and_runs_one_job_at_a_time(tmp_path: Path) -> None:
    require_nix()
    make = require_make()
    log = tmp_path / "spans.log"
    folder = timed_lab(tmp_path, log, 3, seconds="0.3")
    repx("lab", "build", cwd=folder)
    (folder / "Makefile").write_text(
        f"all:\n\t{' '.join(REPX)} build --lab result --store {tmp_path / 'store'} --quiet\n")
    result = subprocess.run([make, "-j4"], cwd=folder, env=repx_env(), capture_output=True,
                            text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "make did not pass its jobserver" in result.stderr
    assert most_at_once(intervals(log)) == 1


@pytest.mark.nix
def test_fifo_jobserver_bounds_the_build_and_gets_every_token_back(tmp_path: Path) -> None:
    """make 4.4's fifo form, made by the test: 3 slots (the implicit one and 2 tokens). The
    build uses all of them, never more, and leaves the fifo as full as it found it: after
    a success, after a failure, and after SIGINT in the middle of the build."""
    require_nix()
    log = tmp_path / "spans.log"
    folder = timed_lab(tmp_path, log, 8, seconds="0.4", fail=5)
    fifo = FifoJobserver(tmp_path / "jobserver.fifo", 2)
    env = {"MAKEFLAGS": fifo.makeflags(3)}
    try:
        store = tmp_path / "store"
        failed = build(folder, store, "--keep-going", expect=1, env=env)
        assert len(failed["failed"]) == 1 and len(failed.executed) == 7
        assert fifo.count() == 2
        assert most_at_once(intervals(log)) == 3

        # Tokens held by someone else are not there to take: with none left, one at a time.
        os.read(fifo.fd, 2)
        log.write_text("")
        build(folder, store, "--force", "timed", "--keep-going", expect=1, env=env)
        assert most_at_once(intervals(log)) == 1
        os.write(fifo.fd, b"++")

        # Interrupted while 3 jobs run: every token back.
        log.write_text("")
        slow = timed_lab(tmp_path / "slow", log, 6, seconds="30")
        running = start_build(slow, tmp_path / "store-slow", env=env)
        try:
            deadline = time.monotonic() + 60
            while log.read_text().count("start") < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert fifo.count() == 0
            os.kill(running.proc.pid, signal.SIGINT)
            stopped = running.wait(timeout=60)
        finally:
            running.kill()
        assert stopped.code == 130
        assert fifo.count() == 2
    finally:
        fifo.close()


@pytest.mark.nix
def test_a_bad_jobserver_setting_is_a_clear_error(tmp_path: Path) -> None:
    require_nix()
    folder = timed_lab(tmp_path, tmp_path / "spans.log", 1, seconds="0")
    bad = build(folder, tmp_path / "store", expect=2,
                env={"MAKEFLAGS": "-j2 --jobserver-auth=bogus"})
    assert "MAKEFLAGS has --jobserver-auth=bogus" in bad.stderr
    assert "Traceback" not in bad.stderr
