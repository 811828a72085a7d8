"""The entry point's end: the last garbage collection is skipped, nothing else is.

A process that exits collects its whole heap once more; ``repx.console.main`` freezes the
heap instead (docs/benchmarks.md measures what that spares). These tests run the real entry
point in a fresh interpreter and check both halves: the heap was frozen, and what an ending
process must still do happened (the command's output in full, atexit handlers, a buffered
file flushed by its release).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.buildutil import repx_env

PROBE = textwrap.dedent("""
    import atexit, gc, sys
    from repx.console import main

    sink = open(sys.argv[1], "w")
    sink.write("buffered, never flushed by hand")  # released at teardown, so flushed then
    atexit.register(lambda: print("atexit ran, frozen:", gc.get_freeze_count() > 0))
    sys.argv = ["repx", *sys.argv[2:]]
    try:
        main()
    except SystemExit as ended:
        print("exit code:", ended.code)
        raise
""")


def run_probe(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "sink.txt"), *args],
                          cwd=tmp_path, capture_output=True, text=True, env=repx_env(),
                          timeout=120)


def test_the_heap_is_frozen_and_the_process_still_ends_properly(tmp_path: Path) -> None:
    done = run_probe(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "atexit ran, frozen: True"
    assert lines[-2] == "exit code: 0"
    assert "Usage: repx" in done.stdout and "build" in done.stdout
    assert (tmp_path / "sink.txt").read_text() == "buffered, never flushed by hand"


def test_a_failing_command_keeps_its_message_and_code(tmp_path: Path) -> None:
    done = run_probe(tmp_path, "build", "--jobs", "many")
    assert done.returncode == 2
    assert done.stdout.splitlines()[-2:] == ["exit code: 2", "atexit ran, frozen: True"]
    assert "'many'" in done.stderr and "Traceback" not in done.stderr
