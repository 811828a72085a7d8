"""repx against doit, Snakemake and a bare spawn loop on N independent 2-stage chains.

The workload (docs/benchmarks.md, "Peers"): for i in 0..N-1, job A_i writes i to a file and
B_i reads A_i's output and writes it twice: 2N one-line shell jobs. Every tool runs the same
DAG on the same machine in the same invocation of this script, so the ratios are meaningful
even when absolute times are noisy.

Phases, each a whole-process wall time (monotonic clock) with the peak RSS of the largest
process in the tree (``/usr/bin/time -v``, else ``RUSAGE_CHILDREN`` in a fresh child):

* cold: untimed reset (outputs and store deleted, ``sync``), then every job at 2 workers;
* no-op: the same command again, median of 3;
* one-change: untimed edit of one chain's parameter, then the same command: exactly 2 jobs
  must run (checked from repx's ``--json`` and from the outputs' mtimes for the others);
  repx's is the median of 3 edits, each to a new value and followed by an untimed no-op;
* baselines, no engine, 2 threads: (a) ``bash -c '<command>'`` per job; (b) the very
  invocations repx makes (``<script> <out> <inputs.json> <params.json>`` from its store).

After the rows: the issue's targets, each as value / target (cold against doit + LMDB and
against 1.5x baseline (a), wall and CPU; no-op against 1.5x the stat walk of baseline (a);
one-change against 1.2x repx's no-op; peak RSS), also written to ``peers.json`` for
bench/run.py's combined table; then the job-cost breakdown (:func:`job_cost`: one job of
the repx run started alone, piece by piece; ``--no-breakdown`` skips it).

Run: ``python bench/bench_peers.py`` (N=10 000, Snakemake N=1 000), ``--quick`` (N=1 000,
Snakemake N=200), ``--n 1000``, ``--tools repx,doit``. Results: a table on stdout and
``bench/results/peers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"
RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent
GNU_TIME = Path("/usr/bin/time")
WORKERS = 2
NOOP_REPEAT = 3
TOOLS = ("repx", "doit", "doit-lmdb", "snakemake", "baseline-a", "baseline-b")

# Targets from the issue (repx at 20 000 jobs on this 2-core machine), each relative to a
# figure of the same run so that load on a shared machine cancels out.
#: Cold at most doit + LMDB's cold, and at most this many times baseline (a)'s.
TARGET_COLD_VS_DOIT_LMDB = 1.0
TARGET_COLD_VS_BASELINE_A = 1.5
#: No-op at most this many times the stat walk of the same outputs (baseline (a)'s no-op).
TARGET_NOOP_VS_STAT = 1.5
#: One change (one sweep value edited) at most this many times repx's own no-op.
TARGET_ONE_CHANGE_VS_NOOP = 1.2
#: The jobs the issue's targets are stated at.
TARGET_JOBS = 20_000
#: ``--quick``: enough jobs that the per-job costs, not the start-up of each tool, decide the
#: ratios (about a minute); Snakemake stays small (it grows superlinearly).
QUICK_N = 1_000
QUICK_SNAKE_N = 200
#: Runs of each variant in the job-cost breakdown (interleaved in rounds).
BREAKDOWN_RUNS = 150
BREAKDOWN_ROUNDS = 3
#: Peak RSS of any repx phase, MB (10^6 bytes).
TARGET_RSS_MB = 150.0

# Measures the largest process of a tree when GNU time is missing: a fresh interpreter has
# waited for nothing else, so its RUSAGE_CHILDREN peak is the command tree's.
_RUSAGE_CHILD = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[2:]).returncode\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "open(sys.argv[1], 'w').write(f'{r.ru_maxrss} {r.ru_utime + r.ru_stime}')\n"
    "sys.exit(code)\n"
)


class BenchError(RuntimeError):
    """A tool did not do what the workload requires (wrong job count, failed command)."""


@dataclass
class Sample:
    """One timed command: wall and CPU seconds, peak RSS of its largest process, exit status.

    CPU time (user + system of the whole tree) is the steadier figure when other work shares
    the machine; wall time is what a user waits.
    """

    seconds: float
    rss_kib: int
    cpu_s: float
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


@dataclass
class Result:
    """One row of the table: a tool at one N."""

    tool: str
    n: int
    jobs: int
    cold_s: float | None = None
    cold_cpu_s: float | None = None
    noop_s: float | None = None
    noop_samples: list[float] = field(default_factory=list)
    one_change_s: float | None = None
    one_change_samples: list[float] = field(default_factory=list)
    dry_run_s: float | None = None
    rss_kib: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def peak_rss_mib(self) -> float | None:
        return max(self.rss_kib.values()) / 1024 if self.rss_kib else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool, "n": self.n, "jobs": self.jobs, "cold_s": self.cold_s,
            "cold_cpu_s": self.cold_cpu_s,
            "noop_s": self.noop_s, "noop_samples": self.noop_samples,
            "one_change_s": self.one_change_s,
            "one_change_samples": self.one_change_samples, "dry_run_s": self.dry_run_s,
            "peak_rss_mib": self.peak_rss_mib,
            "rss_mib": {k: v / 1024 for k, v in self.rss_kib.items()},
            "notes": self.notes, "error": self.error,
        }


# ----------------------------------------------------------------------------- measuring


def measure(argv: Sequence[str], cwd: Path, *, env: dict[str, str] | None = None,
            timeout: float | None = None) -> Sample:
    """Run argv once; time it from outside and read the peak RSS of its largest process."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss", delete=False) as handle:
        rss_file = handle.name
    if GNU_TIME.exists():
        wrapped = [str(GNU_TIME), "-v", "-o", rss_file, *argv]
    else:
        wrapped = [sys.executable, "-c", _RUSAGE_CHILD, rss_file, *argv]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=out, stderr=err,
                                start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, 9)
            proc.wait()
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    text = Path(rss_file).read_text()
    os.unlink(rss_file)
    if GNU_TIME.exists():
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        rss = int(match.group(1)) if match else 0
        cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)",
                                               text))
    else:
        fields = text.split()
        rss, cpu = (int(fields[0]), float(fields[1])) if len(fields) == 2 else (0, 0.0)
    code = proc.returncode
    if GNU_TIME.exists() and "Command exited with non-zero status" in text:
        code = int(re.search(r"non-zero status (\d+)", text).group(1))  # type: ignore[union-attr]
    return Sample(seconds, rss, cpu, code, stdout, stderr, timed_out)


def checked(sample: Sample, what: str) -> Sample:
    """Fail the tool's row (not the whole bench) when its command failed."""
    if sample.timed_out:
        raise BenchError(f"{what}: timed out after {sample.seconds:.0f} s")
    if sample.returncode:
        tail = (sample.stderr or sample.stdout).strip().splitlines()[-15:]
        raise BenchError(f"{what}: exit {sample.returncode}\n  " + "\n  ".join(tail))
    return sample


def creation_probe(root: Path, folders: int = 300) -> float:
    """Microseconds to create one inode under ``root`` now (a folder and a file in it,
    ``folders`` times; removed again).

    Printed with the results because it moves the cold rows: a repx job creates about eight
    inodes (its three folders, the inputs and params JSON, two logs, ``record.json``), a
    doit or bare-loop job one. On ext4 without a journal (this project's VMs) inode
    allocation skips every recently freed inode by reading it, so after mass deletions in
    the same place (a previous bench's cleanup, a test suite) creation can cost ten times
    what it does on a fresh file system (docs/benchmarks.md).
    """
    probe = root / "creation-probe"
    probe.mkdir()
    began = time.perf_counter()
    for k in range(folders):
        folder = probe / str(k)
        folder.mkdir()
        (folder / "f").write_bytes(b"x")
    seconds = time.perf_counter() - began
    shutil.rmtree(probe)
    return seconds / (2 * folders) * 1e6


def settle() -> None:
    """Flush dirty pages so one phase's writeback is not billed to the next (see the note)."""
    os.sync()
    time.sleep(0.5)


def median_noop(run: Callable[[], Sample], result: Result, check: Callable[[Sample], None]
                ) -> None:
    samples = []
    for _ in range(NOOP_REPEAT):
        sample = run()
        check(sample)
        samples.append(sample)
    result.noop_samples = [round(s.seconds, 4) for s in samples]
    result.noop_s = statistics.median(s.seconds for s in samples)
    result.rss_kib["noop"] = max(s.rss_kib for s in samples)


# ------------------------------------------------------------------- file-based workloads


def chain_files(n: int) -> list[tuple[str, str, str]]:
    """(param file, A output, B output) for every chain, relative to a workdir."""
    return [(f"p/p_{i}", f"a/out_{i}", f"b/out2_{i}") for i in range(n)]


def write_params(work: Path, n: int) -> None:
    (work / "p").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (work / "p" / f"p_{i}").write_text(f"{i}\n")


def reset_outputs(work: Path, extra: Sequence[str] = ()) -> None:
    """Delete outputs and the tool's state; recreate the output folders."""
    for name in ("a", "b", *extra):
        path = work / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for name in ("a", "b"):
        (work / name).mkdir()
    settle()


def output_stamps(work: Path, n: int) -> dict[str, tuple[int, int] | None]:
    """(inode, mtime_ns) of every output, None when missing: a rerun changes one of them."""
    stamps: dict[str, tuple[int, int] | None] = {}
    for _, a, b in chain_files(n):
        for rel in (a, b):
            try:
                st = os.stat(work / rel)
                stamps[rel] = (st.st_ino, st.st_mtime_ns)
            except FileNotFoundError:
                stamps[rel] = None
    return stamps


def rewritten(before: dict[str, tuple[int, int] | None], after: dict[str, Any]) -> list[str]:
    return sorted(rel for rel, stamp in after.items() if stamp != before.get(rel))


def check_outputs(work: Path, n: int, changed: int | None = None) -> None:
    """Every B output holds its chain's value twice (chain ``changed`` got an extra line)."""
    for i in range(n):
        text = (work / f"b/out2_{i}").read_text()
        value = f"{i}\n" + ("change\n" if i == changed else "")
        if text != value * 2:
            raise BenchError(f"b/out2_{i} holds {text!r}, expected {value * 2!r}")


def file_tool(result: Result, work: Path, command: list[str], *, state: Sequence[str],
              env: dict[str, str] | None, timeout: float | None) -> None:
    """cold / no-op / one-change for a tool driven by files (doit, Snakemake)."""
    n = result.n
    reset_outputs(work, state)
    cold = checked(measure(command, work, env=env, timeout=timeout), "cold run")
    result.cold_s, result.rss_kib["cold"] = cold.seconds, cold.rss_kib
    result.cold_cpu_s = cold.cpu_s
    check_outputs(work, n)

    def noop() -> Sample:
        before = output_stamps(work, n)
        sample = checked(measure(command, work, env=env, timeout=timeout), "no-op run")
        if changed := rewritten(before, output_stamps(work, n)):
            raise BenchError(f"no-op rewrote {len(changed)} outputs, e.g. {changed[:3]}")
        return sample

    median_noop(noop, result, lambda _s: None)
    with open(work / "p" / "p_0", "a") as handle:
        handle.write("change\n")
    before = output_stamps(work, n)
    change = checked(measure(command, work, env=env, timeout=timeout), "one-change run")
    changed = rewritten(before, output_stamps(work, n))
    if changed != ["a/out_0", "b/out2_0"]:
        raise BenchError(f"one-change rewrote {len(changed)} outputs, not 2: {changed[:5]}")
    check_outputs(work, n, changed=0)
    result.one_change_s, result.rss_kib["one_change"] = change.seconds, change.rss_kib
    (work / "p" / "p_0").write_text("0\n")


def bench_doit(root: Path, n: int, backend: str) -> Result:
    """doit 0.37 on the same DAG (dodo.py in bench/peers), ``doit -n 2`` for every phase.

    ``backend`` is doit's default ``dbm`` (dbm.dumb with this pyenv Python) or ``lmdb``, the
    plug-in in bench/peers/doit_lmdb.py registered through doit.cfg.
    """
    result = Result("doit" if backend == "dbm" else f"doit-{backend}", n, 2 * n)
    work = root / result.tool
    work.mkdir()
    write_params(work, n)
    dep_file = ".doit.db" if backend == "dbm" else ".doit.lmdb"
    (work / "config.json").write_text(json.dumps({"n": n, "backend": backend,
                                                  "dep_file": dep_file}))
    shutil.copy(PEERS / "dodo.py", work / "dodo.py")
    if backend == "lmdb":
        shutil.copy(PEERS / "doit_lmdb.py", work / "doit_lmdb.py")
        (work / "doit.cfg").write_text("[BACKEND]\nlmdb = doit_lmdb:LmdbDB\n")
    env = {**os.environ, "PYTHONPATH": str(work)}
    if backend == "dbm":
        result.notes.append(f"doit's dbm backend resolves to {_dbm_default()} on this Python")
    state = [".doit.db", ".doit.db.dat", ".doit.db.dir", ".doit.db.bak", ".doit.lmdb"]
    file_tool(result, work, [sys.executable, "-m", "doit", "-n", str(WORKERS)], state=state,
              env=env, timeout=None)
    return result


def _dbm_default() -> str:
    """Which stdlib dbm doit's default backend gets on this Python (why doit is slow here)."""
    for name in ("dbm.gnu", "dbm.ndbm", "dbm.dumb"):
        try:
            __import__(name)
            return name
        except ImportError:
            continue
    return "none"


def bench_snakemake(root: Path, n: int, timeout: float) -> Result:
    """Snakemake on the same DAG (rules A, B and ``all``), ``--cores 2``, default scheduler."""
    result = Result("snakemake", n, 2 * n)
    work = root / "snakemake"
    work.mkdir()
    write_params(work, n)
    shutil.copy(PEERS / "Snakefile", work / "Snakefile")
    (work / "config.yaml").write_text(json.dumps({"n": n}))
    command = [_tool("snakemake"), "--cores", str(WORKERS)]
    file_tool(result, work, command, state=[".snakemake"], env=None, timeout=timeout)
    return result


def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def bench_baseline_a(root: Path, n: int) -> Result:
    """The same 2N commands as the file workloads, ``bash -c`` each, 2 threads, no engine.

    Its no-op is the make-style floor: one stat of each input and output, mtimes compared.
    """
    result = Result("baseline-a", n, 2 * n)
    work = root / "baseline-a"
    work.mkdir()
    write_params(work, n)
    jobs: list[dict[str, Any]] = []
    pairs: list[list[str]] = []
    for i, (p, a, b) in enumerate(chain_files(n)):
        jobs.append({"argv": ["bash", "-c", f"cat {p} > {a}"], "deps": []})
        jobs.append({"argv": ["bash", "-c", f"cat {a} {a} > {b}"], "deps": [2 * i]})
        pairs += [[str(work / p), str(work / a)], [str(work / a), str(work / b)]]
    jobs_file, stat_file = root / "baseline-a.jobs.json", root / "baseline-a.stat.json"
    jobs_file.write_text(json.dumps(jobs))
    stat_file.write_text(json.dumps(pairs))
    script = str(PEERS / "baseline.py")
    reset_outputs(work)
    cold = checked(measure([sys.executable, script, "run", str(jobs_file), str(WORKERS)], work),
                   "baseline cold")
    result.cold_s, result.rss_kib["cold"] = cold.seconds, cold.rss_kib
    result.cold_cpu_s = cold.cpu_s
    check_outputs(work, n)
    median_noop(lambda: checked(measure([sys.executable, script, "stat", str(stat_file)], work),
                                "stat floor"), result, lambda _s: None)
    result.notes.append("no-op = stat of every input/output and an mtime comparison")
    return result


# ---------------------------------------------------------------------------------- repx

LAB_NIX = """
    { pkgs, repx-lib, gitHash ? "unknown", ... }:
    repx-lib.mkLab {
      inherit pkgs repx-lib gitHash;
      lab_version = "1";
      runs = { chains = repx-lib.callRun ./run.nix [ ]; };
    }
"""
RUN_NIX = """
    { pkgs, repx-lib, ... }:
    {
      name = "chains";
      pipelines = [ ./pipe.nix ];
      params = { i = VALUES; };
    }
"""
PIPE_NIX = """
    { repx, ... }:
    repx.mkPipe rec {
      a = repx.callStage ./a.nix [ ];
      b = repx.callStage ./b.nix [ a ];
    }
"""
STAGE_A = """
    { pkgs }:
    {
      pname = "a";
      version = "1";
      params = { i = 0; };
      outputs = { out = "$out/out.txt"; };
      runDependencies = [ pkgs.coreutils ];
      run = { outputs, params, ... }: ''
        echo "${toString params.i}" > "${outputs.out}"
      '';
    }
"""
STAGE_B = """
    { pkgs }:
    {
      pname = "b";
      version = "1";
      inputs = { out = ""; };
      outputs = { out2 = "$out/out2.txt"; };
      runDependencies = [ pkgs.coreutils ];
      run = { inputs, outputs, ... }: ''
        cat "${inputs.out}" "${inputs.out}" > "${outputs.out2}"
      '';
    }
"""


def sweep_values(n: int, first: int | None) -> str:
    """``i`` over 0..n-1 (utils.range is inclusive); ``first`` replaces chain 0's value."""
    return (f"[ {first} ] ++ repx-lib.utils.range 1 {n - 1}" if first is not None
            else f"repx-lib.utils.range 0 {n - 1}")


def write_repx_lab(folder: Path, n: int, changed: bool = False,
                   first: int | None = None) -> None:
    """The workload as a repx lab: one run sweeping ``i``, a pipeline a → b (``changed``:
    chain 0 swept at n instead of 0; ``first``: at that value)."""
    value = first if first is not None else (n if changed else None)
    files = {"lab.nix": LAB_NIX, "run.nix": RUN_NIX.replace("VALUES", sweep_values(n, value)),
             "pipe.nix": PIPE_NIX, "a.nix": STAGE_A, "b.nix": STAGE_B}
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())


def repx_json(sample: Sample, what: str) -> dict[str, Any]:
    checked(sample, what)
    try:
        return json.loads(sample.stdout)
    except json.JSONDecodeError as exc:
        raise BenchError(f"{what}: --json printed no JSON ({exc}): {sample.stdout[:300]!r}"
                         ) from exc


def expect_counts(summary: dict[str, Any], what: str, *, executed: int, up_to_date: int
                  ) -> None:
    counts = {k: len(summary.get(k) or []) for k in ("executed", "up_to_date", "failed",
                                                     "blocked")}
    want = {"executed": executed, "up_to_date": up_to_date, "failed": 0, "blocked": 0}
    if counts != want:
        raise BenchError(f"{what}: repx reported {counts}, expected {want}")


@dataclass
class RepxState:
    """What baseline (b) needs from the repx run: the lab, its store, its job list."""

    lab_dir: Path
    store: Path
    jobs: list[dict[str, Any]]


def bench_repx(root: Path, n: int, name: str = "repx") -> tuple[Result, RepxState | None]:
    """repx build -j 2 on a generated lab: cold, no-op (x3), one chain's param changed."""
    result = Result("repx", n, 2 * n)
    folder = root / name / "lab"
    store = root / name / "store"
    write_repx_lab(folder, n)
    repx = _tool("repx")
    built = repx_json(measure([repx, "lab", "build", "--json"], folder), "repx lab build")
    if built.get("jobs") != 2 * n:
        raise BenchError(f"repx lab build: {built.get('jobs')} jobs, expected {2 * n}")
    dry = measure([repx, "build", "--dry-run", "--json", "--store", str(store)], folder)
    would = repx_json(dry, "repx build --dry-run")
    result.dry_run_s, result.rss_kib["dry_run"] = dry.seconds, dry.rss_kib
    if len(would.get("would_run", [])) != 2 * n:
        raise BenchError(f"dry run: {len(would.get('would_run', []))} jobs, expected {2 * n}")

    command = [repx, "build", "-j", str(WORKERS), "--store", str(store), "--json"]
    settle()
    cold = measure(command, folder)
    expect_counts(repx_json(cold, "repx cold build"), "cold", executed=2 * n, up_to_date=0)
    result.cold_s, result.rss_kib["cold"] = cold.seconds, cold.rss_kib
    result.cold_cpu_s = cold.cpu_s

    def noop() -> Sample:
        sample = measure(command, folder)
        expect_counts(repx_json(sample, "repx no-op"), "no-op", executed=0, up_to_date=2 * n)
        return sample

    median_noop(noop, result, lambda _s: None)
    # One edit after no-ops, three times (each a value no build had: 2 jobs run), the median
    # as for the no-op. An untimed no-op after each edit leaves the store as the first edit
    # found it; the last edit is the lab checked below (chain 0 at n).
    changes = []
    for first in (n + 2, n + 1, n):
        write_repx_lab(folder, n, first=first)
        change = measure(command, folder)
        summary = repx_json(change, "repx one-change")
        expect_counts(summary, "one-change", executed=2, up_to_date=2 * n - 2)
        changes.append(change)
        noop()
    result.one_change_samples = [round(c.seconds, 4) for c in changes]
    result.one_change_s = statistics.median(c.seconds for c in changes)
    result.rss_kib["one_change"] = max(c.rss_kib for c in changes)

    lab = repx_json(measure([repx, "lab", "build", "--json"], folder), "repx lab build")
    listing = checked(measure([repx, "list", "jobs", "--json", "--lab", lab["lab"]], folder),
                      "repx list jobs")
    jobs = json.loads(listing.stdout)
    values = sorted(j["params"]["i"] for j in jobs if j["pname"] == "a")
    if values != [*range(1, n), n]:
        raise BenchError("the changed lab does not sweep i over 1..n")
    for job in jobs:
        if job["pname"] == "b":
            text = (store / "outputs" / job["id"] / "out" / "out2.txt").read_text()
            if len(set(text.split())) != 1 or len(text.split()) != 2:
                raise BenchError(f"job {job['id']} wrote {text!r}")
    return result, RepxState(Path(lab["lab"]), store, jobs)


def bench_baseline_b(root: Path, state: RepxState) -> Result:
    """repx's own job invocations without repx: same scripts, same JSON, 2 threads.

    The ``out`` folders are deleted first (the cold state); logs go where repx keeps them
    when repx writes them (``<store>/outputs/<id>/repx/std{out,err}.log``).
    """
    n = len(state.jobs) // 2
    result = Result("baseline-b", n, len(state.jobs))
    index = {job["id"]: k for k, job in enumerate(state.jobs)}
    outputs = state.store / "outputs"
    first_meta = outputs / state.jobs[0]["id"] / "repx"
    keep_logs = (first_meta / "stdout.log").exists() or (first_meta / "stderr.log").exists()
    jobs = []
    for job in state.jobs:
        meta = outputs / job["id"] / "repx"
        out = outputs / job["id"] / "out"
        if not (meta / "inputs.json").exists() or not (meta / "params.json").exists():
            raise BenchError(f"repx wrote no inputs.json/params.json for {job['id']}")
        if out.exists():
            shutil.rmtree(out)
        jobs.append({"argv": [job["scripts"]["main"], str(out), str(meta / "inputs.json"),
                              str(meta / "params.json")],
                     "deps": [index[d] for d in job["depends_on"]],
                     "log": str(meta) + "/" if keep_logs else None})
    result.notes.append("logs to the store's std{out,err}.log" if keep_logs
                        else "stdout/stderr to /dev/null (repx kept no logs)")
    jobs_file = root / "baseline-b.jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    settle()
    cold = checked(measure([sys.executable, str(PEERS / "baseline.py"), "run", str(jobs_file),
                            str(WORKERS)], root), "baseline (b) cold")
    result.cold_s, result.rss_kib["cold"] = cold.seconds, cold.rss_kib
    result.cold_cpu_s = cold.cpu_s
    missing = [j["id"] for j in state.jobs
               if not any((outputs / j["id"] / "out").glob("*.txt"))]
    if missing:
        raise BenchError(f"{len(missing)} jobs wrote no output, e.g. {missing[0]}")
    return result


# ---------------------------------------------------------------------- job-cost breakdown


@dataclass
class CostRow:
    """One variant of the breakdown: median CPU (user + system) and wall ms per run."""

    what: str
    cpu_ms: float
    wall_ms: float


def _run_once(argv: list[str], env: dict[str, str], logs: Path) -> tuple[float, float]:
    """Start ``argv`` as repx starts a job (posix_spawn, own session, logs to files) and wait
    for it; (CPU s of the child, wall s)."""
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, str(logs / "stdout.log"),
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
               (os.POSIX_SPAWN_OPEN, 2, str(logs / "stderr.log"),
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)]
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
    _pid, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if status:
        raise BenchError(f"breakdown: {argv[0]} exited with status {status}: "
                         f"{(logs / 'stderr.log').read_text()[-500:]}")
    return usage.ru_utime + usage.ru_stime, wall


def job_cost(state: RepxState, root: Path) -> list[CostRow]:
    """Where one job's milliseconds go: a B job of the repx run started alone, piece by piece.

    Each variant runs BREAKDOWN_RUNS times per round, the variants interleaved over
    BREAKDOWN_ROUNDS rounds (so a burst of load hits them alike); the median round counts.
    CPU is the child's own (``wait4``), the steadier figure on a shared machine.
    """
    job = next(j for j in state.jobs if j["pname"] == "b")
    meta = state.store / "outputs" / job["id"] / "repx"
    script = Path(job["scripts"]["main"])
    text = script.read_text()
    bash = text.splitlines()[0][2:].strip()
    cut = text.rindex("\nset -x\n") + 1
    work = root / "breakdown"
    out, logs = work / "out", work / "logs"
    for folder in (out, logs):
        folder.mkdir(parents=True, exist_ok=True)
    header_only = work / "header-only"
    header_only.write_text(text[:cut] + ":\n")
    header_only.chmod(0o755)
    inputs = json.loads((meta / "inputs.json").read_text())
    source = next(iter(inputs.values()))
    args = [str(out), str(meta / "inputs.json"), str(meta / "params.json")]
    env = dict(os.environ)
    c_env = {**env, "LC_ALL": "C"}
    variants: list[tuple[str, list[str], dict[str, str]]] = [
        ("bash start: `bash -c :`", [bash, "-c", ":"], env),
        ("baseline (a)'s job: `bash -c 'cat IN IN > OUT'`",
         [bash, "-c", f"cat {source} {source} > {out}/out2.txt"], env),
        ("repx script, header only (body `:`)", [str(header_only), *args], env),
        ("repx script, whole job (header, `set -x`, body)", [str(script), *args], env),
        ("the same with LC_ALL=C (not done: the user's locale)", [str(script), *args], c_env),
    ]
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
    for _ in range(BREAKDOWN_ROUNDS):
        for name, argv, variant_env in variants:
            cpu = wall = 0.0
            for _ in range(BREAKDOWN_RUNS):
                for left in out.iterdir():  # a cold job's out/ is empty (no `rm` to run)
                    left.unlink()
                c, w = _run_once(argv, variant_env, logs)
                cpu, wall = cpu + c, wall + w
            samples[name].append((cpu / BREAKDOWN_RUNS * 1e3, wall / BREAKDOWN_RUNS * 1e3))
    return [CostRow(name, statistics.median(c for c, _ in rounds),
                    statistics.median(w for _, w in rounds))
            for name, rounds in samples.items()]


def job_cost_lines(rows: list[CostRow], results: list[Result]) -> list[str]:
    """The breakdown table, and the engine's own cost per job from the cold rows."""
    lines = ["job cost (one B job started alone, median of "
             f"{BREAKDOWN_ROUNDS} rounds x {BREAKDOWN_RUNS} runs):",
             f"  {'what':<56} {'CPU ms':>7} {'wall ms':>8}"]
    lines += [f"  {r.what:<56} {r.cpu_ms:>7.2f} {r.wall_ms:>8.2f}" for r in rows]
    by = {r.what.split(":")[0]: r for r in rows}
    start, header = by.get("bash start"), by.get("repx script, header only (body `")
    if start and header:
        lines.append(f"  {'=> the header over a bare bash start':<56} "
                     f"{header.cpu_ms - start.cpu_ms:>7.2f} {header.wall_ms - start.wall_ms:>8.2f}")
    rows_by_tool = {r.tool: r for r in results if not r.error}
    repx, base_b = rows_by_tool.get("repx"), rows_by_tool.get("baseline-b")
    if repx and repx.cold_s and repx.cold_cpu_s:
        lines.append(f"  {'repx cold, per job (whole build / jobs)':<56} "
                     f"{repx.cold_cpu_s / repx.jobs * 1e3:>7.2f} "
                     f"{repx.cold_s / repx.jobs * 1e3:>8.2f}")
        if base_b and base_b.cold_cpu_s and base_b.cold_s:
            lines.append(f"  {'baseline (b) cold, per job':<56} "
                         f"{base_b.cold_cpu_s / base_b.jobs * 1e3:>7.2f} "
                         f"{base_b.cold_s / base_b.jobs * 1e3:>8.2f}")
    return lines


# ------------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or not b else f"{a / b:.1f}x"


def report(results: list[Result]) -> list[str]:
    """The table, the ratios against repx at the same N, and the repx targets."""
    repx = {r.n: r for r in results if r.tool == "repx" and not r.error}
    lines = [f"{'tool':<11} {'N':>6} {'jobs':>6} {'cold s':>8} {'no-op s':>8} "
             f"{'1-change s':>10} {'peak RSS MiB':>12} {'vs repx (cold/no-op)':>21} "
             f"{'cold CPU s':>10}"]
    for r in results:
        if r.error:
            lines.append(f"{r.tool:<11} {r.n:>6} {r.jobs:>6}  FAILED: {r.error.splitlines()[0]}")
            continue
        ref = repx.get(r.n)
        vs = "–" if ref is None or r.tool == "repx" else (
            f"{ratio(r.cold_s, ref.cold_s)} / {ratio(r.noop_s, ref.noop_s)}")
        lines.append(f"{r.tool:<11} {r.n:>6} {r.jobs:>6} {fmt(r.cold_s):>8} {fmt(r.noop_s, 3):>8} "
                     f"{fmt(r.one_change_s, 3):>10} {fmt(r.peak_rss_mib, 1):>12} {vs:>21} "
                     f"{fmt(r.cold_cpu_s, 1):>10}")
    lines.append("")
    lines.append("ratios: tool / repx at the same N (>1 means repx is faster or smaller)")
    lines.append(f"{'tool':<11} {'N':>6} {'cold':>7} {'no-op':>7} {'1-change':>9} {'RSS':>7} "
                 f"{'cold CPU':>9}")
    for r in results:
        ref = repx.get(r.n)
        if r.error or ref is None or r.tool == "repx":
            continue
        lines.append(f"{r.tool:<11} {r.n:>6} {ratio(r.cold_s, ref.cold_s):>7} "
                     f"{ratio(r.noop_s, ref.noop_s):>7} "
                     f"{ratio(r.one_change_s, ref.one_change_s):>9} "
                     f"{ratio(r.peak_rss_mib, ref.peak_rss_mib):>7} "
                     f"{ratio(r.cold_cpu_s, ref.cold_cpu_s):>9}")
    lines += ["", *targets(results)]
    return lines


def target_rows(results: list[Result]) -> list[dict[str, Any]]:
    """The issue's targets for repx at the largest N measured, as rows of bench/run.py's
    combined table (also written to peers.json).

    Each row: ``row`` (what), ``value`` and ``target`` in ``unit``, ``ratio`` (value /
    target: ≤ 1 meets it), ``met`` (None when a figure is missing), ``jobs`` (repx's jobs),
    ``target_jobs`` (the size the issue states the target at) and ``note``.
    """
    repx_rows = [r for r in results if r.tool == "repx" and not r.error]
    if not repx_rows:
        return []
    ref = max(repx_rows, key=lambda r: r.n)

    def peer(tool: str) -> Result | None:
        return next((r for r in results if r.tool == tool and r.n == ref.n and not r.error),
                    None)

    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, base: float | None, factor: float, unit: str,
            note: str) -> None:
        target = base * factor if base is not None else None
        ok = value is not None and target is not None and target > 0
        rows.append({"row": name, "value": value, "target": target, "unit": unit,
                     "ratio": value / target if ok else None,  # type: ignore[operator]
                     "met": value <= target if ok else None,  # type: ignore[operator]
                     "jobs": ref.jobs, "target_jobs": TARGET_JOBS, "note": note})

    lmdb, base_a = peer("doit-lmdb"), peer("baseline-a")
    for name, tool, other, factor in (
            ("cold vs doit + LMDB", "doit-lmdb", lmdb, TARGET_COLD_VS_DOIT_LMDB),
            ("cold vs 1.5x baseline (a)", "baseline-a", base_a, TARGET_COLD_VS_BASELINE_A)):
        note = f"{tool} not measured"
        if other:
            note = f"{tool} {fmt(other.cold_s)} s"
            if ref.cold_cpu_s and other.cold_cpu_s:
                note += (f"; CPU {ref.cold_cpu_s:.1f} s vs {other.cold_cpu_s:.1f} s = "
                         f"{ref.cold_cpu_s / other.cold_cpu_s:.2f}x")
        add(name, ref.cold_s, other.cold_s if other else None, factor, "s", note)
    add("no-op vs 1.5x stat walk", ref.noop_s, base_a.noop_s if base_a else None,
        TARGET_NOOP_VS_STAT, "s",
        "stat walk = baseline (a)'s no-op" if base_a else "baseline-a not measured")
    add("one change vs 1.2x no-op", ref.one_change_s, ref.noop_s, TARGET_ONE_CHANGE_VS_NOOP,
        "s", "2 jobs rerun, the rest up to date")
    rss_mb = ref.peak_rss_mib * 1024 * 1024 / 1e6 if ref.peak_rss_mib else None
    add("peak RSS (repx, any phase)", rss_mb, TARGET_RSS_MB, 1.0, "MB", "")
    return rows


def targets(results: list[Result]) -> list[str]:
    """The issue's targets for repx, checked at the largest N measured, one line each."""
    rows = target_rows(results)
    if not rows:
        return ["targets: repx was not measured"]
    jobs = rows[0]["jobs"]
    size = "" if jobs == TARGET_JOBS else f"; the issue states them at {TARGET_JOBS} jobs"
    lines = [f"targets (repx, {jobs} jobs{size}; ratio = value / target, <= 1 meets it):"]
    for row in rows:
        mark = "–" if row["met"] is None else "ok" if row["met"] else "MISSED"
        note = f" ({row['note']})" if row["note"] else ""
        lines.append(f"  [{mark}] {row['row']}: {fmt(row['value'], 3)} {row['unit']} vs "
                     f"{fmt(row['target'], 3)} {row['unit']}, ratio {fmt(row['ratio'])}{note}")
    repx = max((r for r in results if r.tool == "repx" and not r.error), key=lambda r: r.n)
    base_b = next((r for r in results if r.tool == "baseline-b" and r.n == repx.n
                   and not r.error), None)
    if base_b and repx.cold_s and base_b.cold_s:
        lines.append(f"  [info] cold vs baseline (b), repx's own invocations without repx: "
                     f"{repx.cold_s / base_b.cold_s:.2f}x")
    return lines


# --------------------------------------------------------------------------------- main


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("doit", "snakemake", "lmdb"):
        try:
            from importlib.metadata import version
            found[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing peer is reported, not fatal
            found[name] = "missing"
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    found["repx"] = commit or "unknown"
    return found


def run_row(results: list[Result], tool: str, n: int, func: Callable[[], Result]) -> Result:
    print(f"  {tool} N={n} ...", end="", flush=True)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        result = func()
    except BenchError as exc:
        result = Result(tool, n, 2 * n, error=str(exc))
    result.notes.append(f"load average before: {load:.2f}")
    results.append(result)
    print(f" {time.perf_counter() - start:.0f} s" + (" FAILED" if result.error else ""),
          flush=True)
    if result.error:
        print("    " + result.error.replace("\n", "\n    "), flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="chains for repx/doit/baselines")
    parser.add_argument("--snake-n", type=int, default=1_000, help="chains for Snakemake")
    parser.add_argument("--quick", action="store_true",
                        help=f"N={QUICK_N} ({2 * QUICK_N} jobs), Snakemake N={QUICK_SNAKE_N}")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help=f"comma-separated subset of {','.join(TOOLS)}")
    parser.add_argument("--snake-timeout", type=float, default=900.0,
                        help="seconds before a Snakemake run is abandoned")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip the job-cost breakdown (one job's pieces, ~10 s)")
    args = parser.parse_args(argv)
    n, snake_n = ((QUICK_N, QUICK_SNAKE_N) if args.quick
                  else (args.n, min(args.snake_n, args.n)))
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")

    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="repx-bench-peers-"))
    results: list[Result] = []
    creation_us = creation_probe(root)
    print(f"N-chain peers benchmark: N={n} ({2 * n} jobs), Snakemake N={snake_n}, "
          f"{WORKERS} workers, work dir {root} (creating an inode there: "
          f"{creation_us:.0f} us)", flush=True)
    try:
        state: RepxState | None = None
        if "repx" in tools or "baseline-b" in tools:
            def repx_main() -> Result:
                nonlocal state
                result, state = bench_repx(root, n)
                return result
            run_row(results, "repx", n, repx_main)
        breakdown: list[CostRow] = []
        if state is not None and not args.no_breakdown:
            try:
                breakdown = job_cost(state, root)
            except BenchError as exc:
                print(f"  job-cost breakdown FAILED: {exc}", flush=True)
        if "baseline-b" in tools:
            if state is None:
                results.append(Result("baseline-b", n, 2 * n,
                                      error="needs a successful repx run (its store and JSON)"))
            else:
                run_row(results, "baseline-b", n, lambda: bench_baseline_b(root, state))
        if "baseline-a" in tools:
            run_row(results, "baseline-a", n, lambda: bench_baseline_a(root, n))
        if "doit" in tools:
            run_row(results, "doit", n, lambda: bench_doit(root, n, "dbm"))
        if "doit-lmdb" in tools:
            run_row(results, "doit-lmdb", n, lambda: bench_doit(root, n, "lmdb"))
        if "snakemake" in tools:
            if "repx" in tools and snake_n != n:
                run_row(results, "repx", snake_n, lambda: bench_repx(root, snake_n, "repx-s")[0])
            run_row(results, "snakemake", snake_n,
                    lambda: bench_snakemake(root, snake_n, args.snake_timeout))
    finally:
        if args.keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    total = time.perf_counter() - started

    print()
    lines = report(results)
    print("\n".join(lines))
    if breakdown:
        print("\n" + "\n".join(job_cost_lines(breakdown, results)))
    print(f"\ntotal wall time of this benchmark: {total:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "n": n, "snake_n": snake_n, "workers": WORKERS, "cpus": os.cpu_count(),
        "rss_method": "/usr/bin/time -v" if GNU_TIME.exists() else "RUSAGE_CHILDREN",
        "versions": versions(), "total_s": round(total, 1),
        "inode_creation_us": round(creation_us, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick, "load": os.getloadavg(),
        "results": [r.to_dict() for r in results],
        "targets": target_rows(results),
        "job_cost": [{"what": r.what, "cpu_ms": round(r.cpu_ms, 3),
                      "wall_ms": round(r.wall_ms, 3)} for r in breakdown],
    }, indent=2) + "\n")
    print(f"results: {args.out}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
