"""Helpers for the ``repx build`` tests: the real CLI in a subprocess, the real store on disk.

The engine tests drive ``python -m repx.cli build`` exactly as a user would (a lab folder,
``--store``, ``--json``), because what they pin — exit codes, signal handling, two builds
on one store, ``kill -9`` — only exists across process boundaries. What the jobs did is
observed from outside the store too (append-only logs the jobs write through a path given
as a param), so a bug in the store cannot hide a job that ran twice.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from repx.store import JobRecord, Status, Store, StoreError
from tests.conftest import EXAMPLES, REPO

REPX = [sys.executable, "-m", "repx.cli"]

#: The input-readiness wait of script.nix is 30 s polling every 2 s; tests cannot afford
#: that when an input is missing on purpose.
FAST_INPUTS = {"REPX_INPUT_TIMEOUT": "1", "REPX_INPUT_POLL": "0.1"}

#: Keys every ``repx build --json`` object has.
JSON_KEYS = {"executed", "up_to_date", "failed", "blocked", "cancelled", "not_started",
             "failures"}

LAB_NIX = """
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "1.0";
  runs = { main = repx-lib.callRun ./run.nix [ ]; };
}
"""


#: The incremental tests' pipeline: the chain below plus an independent ``other`` stage
#: (:data:`OTHER`).
PIPE = """
{ repx, ... }:
repx.mkPipe rec {
  producer = repx.callStage ./producer.nix [ ];
  consumer = repx.callStage ./consumer.nix [ producer ];
  other = repx.callStage ./other.nix [ ];
}
"""

#: A two-stage chain for the incremental tests: ``producer`` (param ``a``) writes
#: ``WORD <a>``, ``consumer`` copies it; both append a line to the ``@LOG@`` file, so a test
#: sees from outside the store which jobs ran.
PRODUCER = """
{ pkgs }:
{
  pname = "producer";
  params = { a = 0; log = "@LOG@"; };
  outputs = { data = "$out/data.txt"; };
  run = { outputs, params, ... }: ''
    echo "producer ${toString params.a}" >> "${params.log}"
    echo "WORD ${toString params.a}" > "${outputs.data}"
  '';
}
"""

CONSUMER = """
{ pkgs }:
{
  pname = "consumer";
  params = { log = "@LOG@"; };
  inputs = { data = ""; };
  outputs = { result = "$out/result.txt"; };
  run = { inputs, outputs, params, ... }: ''
    read -r _ a < "${inputs.data}"
    echo "consumer $a" >> "${params.log}"
    cat "${inputs.data}" > "${outputs.result}"
  '';
}
"""


def repx_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``repx`` subprocess (jobs inherit it)."""
    return {**os.environ, "PYTHONPATH": str(REPO), **FAST_INPUTS, **(extra or {})}


def repx(*args: str, cwd: Path, check: bool = True, timeout: float = 180,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``repx ARGS`` in ``cwd``; fail the test with its stderr when ``check`` and it fails."""
    # A line on repx's stdin: a job that could read it would show it (jobs get /dev/null).
    result = subprocess.run([*REPX, *args], cwd=cwd, env=repx_env(env), capture_output=True,
                            input="stdin of repx\n", text=True, check=False, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"repx {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@dataclass
class Build:
    """One finished ``repx build --json``: exit code, the JSON summary and stderr."""

    code: int
    data: dict[str, Any]
    stdout: str
    stderr: str

    @property
    def executed(self) -> list[str]:
        return self.data["executed"]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def build(folder: Path, store: Path, *args: str, expect: int | None = 0,
          env: dict[str, str] | None = None, timeout: float = 180) -> Build:
    """``repx build --json --store STORE ARGS`` in ``folder``; checks the exit code when
    ``expect`` is not None (the stderr is in the failure message)."""
    result = repx("build", "--json", "--store", str(store), *args, cwd=folder, check=False,
                  env=env, timeout=timeout)
    if expect is not None and result.returncode != expect:
        pytest.fail(f"repx build {' '.join(args)}: exit code {result.returncode}, expected "
                    f"{expect}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    try:
        data = json.loads(result.stdout) if result.stdout.strip() else {}
    except json.JSONDecodeError:
        pytest.fail(f"repx build --json printed no JSON:\n{result.stdout}\n{result.stderr}")
    return Build(result.returncode, data, result.stdout, result.stderr)


@dataclass
class Background:
    """A ``repx build`` started with Popen (to be signalled or raced)."""

    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    files: list[Any] = field(default_factory=list)

    def wait(self, timeout: float = 120) -> Build:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            for handle in self.files:
                handle.close()
        stdout = self.stdout_path.read_text()
        try:
            data = json.loads(stdout) if stdout.strip() else {}
        except json.JSONDecodeError:
            data = {}
        return Build(code, data, stdout, self.stderr_path.read_text())

    def kill(self) -> None:
        """Last resort in ``finally`` blocks: never leave a build running after a test."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for handle in self.files:
            handle.close()


def start_build(folder: Path, store: Path, *args: str, name: str = "bg",
                env: dict[str, str] | None = None) -> Background:
    """Start ``repx build --json --store STORE ARGS`` in ``folder`` without waiting.

    Output goes to files (a pipe nobody reads could fill up and stall the build); the
    process gets a session of its own so a signal meant for it reaches nothing else.
    """
    stdout_path = folder.parent / f"{name}.stdout"
    stderr_path = folder.parent / f"{name}.stderr"
    out = stdout_path.open("wb")
    err = stderr_path.open("wb")
    proc = subprocess.Popen([*REPX, "build", "--json", "--store", str(store), *args],
                            cwd=folder, env=repx_env(env), stdout=out, stderr=err,
                            start_new_session=True)
    return Background(proc, stdout_path, stderr_path, [out, err])


def copy_example(name: str, dest: Path) -> Path:
    """A private copy of ``examples/NAME`` (builds write ./result into the lab folder)."""
    folder = dest / name
    shutil.copytree(EXAMPLES / name, folder,
                    ignore=shutil.ignore_patterns("result", "result-*", ".repx"))
    return folder


#: One run ``main`` over the incremental pipeline, sweeping ``a`` over ``@SWEEP@``.
SWEEP_RUN = """
{ pkgs, repx-lib, ... }:
{
  name = "main";
  pipelines = [ ./pipe.nix ];
  params = { a = @SWEEP@; };
}
"""

#: The pipeline's independent ``other`` stage; ``@FAIL@`` is a line of its script (empty,
#: or a failure).
OTHER = """
{ pkgs }:
{
  pname = "other";
  params = { log = "@LOG@"; };
  outputs = { result = "$out/other.txt"; };
  run = { outputs, params, ... }: ''
    echo "other" >> "${params.log}"
    echo other > "${outputs.result}"
    @FAIL@
  '';
}
"""


def write_lab(root: Path, files: dict[str, str], **placeholders: str) -> Path:
    """Write a lab folder (default ``lab.nix``: one run ``main`` from ``./run.nix``).

    ``@NAME@`` in the texts is replaced by ``placeholders[NAME]`` (Nix and bash both use
    braces, so str.format is no help).
    """
    for name, text in {"lab.nix": LAB_NIX, **files}.items():
        for key, value in placeholders.items():
            text = text.replace(f"@{key}@", value)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def list_jobs(folder: Path) -> list[dict[str, Any]]:
    """``repx list jobs --json`` of the lab built last in ``folder`` (./result)."""
    return json.loads(repx("list", "jobs", "--json", "--lab", "result", cwd=folder).stdout)


def by_pname(jobs: list[dict[str, Any]], pname: str) -> list[dict[str, Any]]:
    return [job for job in jobs if job["pname"] == pname]


def out_dir(store: Path, job_id: str) -> Path:
    return store / "outputs" / job_id / "out"


def output_file(store: Path, job: dict[str, Any], name: str) -> Path:
    """The absolute path of the declared output ``name`` of ``job`` (a list-jobs entry)."""
    template = job["outputs"][name]
    assert template.startswith("$out/"), template
    return out_dir(store, job["id"]) / template[len("$out/"):]


def records(store: Path) -> dict[str, JobRecord]:
    """Every record of the store, read-only (safe while a build writes).

    A store that a build is creating right now has its data file before its databases;
    a read-only open in that instant fails, so it is retried for a moment.
    """
    for attempt in range(50):
        if not Store.exists(store):
            return {}
        try:
            with Store(store, readonly=True) as handle:
                return {record.job_id: record for record in handle.records()}
        except StoreError:
            if attempt == 49:
                raise
            time.sleep(0.02)
    raise AssertionError("unreachable")


def statuses(store: Path) -> dict[str, Status]:
    return {job_id: record.status for job_id, record in records(store).items()}


def log_lines(path: Path) -> list[str]:
    """The lines of an append-only execution log (empty when no job wrote it yet)."""
    return path.read_text().splitlines() if path.exists() else []


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``predicate`` every 20 ms; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def intervals(lines: list[str]) -> dict[str, tuple[float, float]]:
    """``{name: (start, end)}`` from log lines ``start NAME T`` / ``end NAME T``."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for line in lines:
        kind, name, stamp = line.split()
        (starts if kind == "start" else ends)[name] = float(stamp)
    assert starts.keys() == ends.keys(), lines
    return {name: (starts[name], ends[name]) for name in starts}
