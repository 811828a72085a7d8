"""repx on SLURM against raw sbatch, on the test cluster (tests/slurm/cluster.sh).

Four questions, answered on the same machine in the same run so the ratios mean something:

1. Submission throughput. (a) ``sbatch --hold --wrap true`` one job at a time, N times;
   (b) one raw ``sbatch --hold --array=0-9999`` (once: it takes milliseconds); (c) ``repx
   build --scheduler slurm --no-wait`` of a lab whose one stage sweeps 10 000 values
   (one-line shell jobs, lab built beforehand, fresh store each time, median of 2). For (c)
   both the whole command (Python start, lab load, store, sbatch) and repx's own in-process
   ``seconds`` are reported, with the number of sbatch calls (one ``<store>/slurm/*.sbatch``
   file per call) and the time of the ``repx cancel`` that follows. Everything submitted is
   cancelled at once.
2. End to end: 500 chains x 2 stages (``second`` reads ``first``'s output: 1 000 jobs) run
   to completion, ``repx build --scheduler slurm --poll 0.5`` against plain sbatch of the
   very wrapper scripts and tables repx generated (copied, store paths rewritten to a fresh
   folder), submitted as two arrays with ``--dependency=aftercorr:<first>`` and watched with
   ``squeue`` every 0.5 s until none of them remains. The variants alternate (repx, plain,
   plain, repx, ...) so a drift in the machine's load does not favour one.

3. Packing: one stage of 2 000 jobs of 0.2 s (``sleep 0.2``) end to end: ``repx build
   --scheduler slurm`` unpacked (one array task per job, split by MaxArraySize) and with
   ``--pack 50`` (40 tasks), against plain sbatch arrays of the very scripts and tables
   repx generated for the unpacked run: seconds, ratio to plain, array tasks, sbatch calls.
4. Retry overhead: one stage of 200 jobs of 0.2 s, ``repx build --scheduler slurm
   --retries 1`` asking for 128M (every job succeeds the first time) against the same jobs
   asking for 64M, where every 10th touches 80 MB, ends OUT_OF_MEMORY (a real cgroup kill)
   and is retried with twice the memory; alternated, median of 3: seconds, ratio, sbatch
   calls, attempts, and the extra seconds per retried job.

The cluster advertises 32 CPUs on a 2-core VM and slurmctld starts jobs in scheduling passes
(about one per second here, ~32 jobs each), so the end-to-end time is dominated by SLURM
itself; the ratio is what shows repx's overhead. Machine load is printed with the results:
another benchmark running at the same time shows up there.

Every array task counts against slurmctld's MaxJobCount (100 000 here) until MinJobAge
(600 s) after it ended, even held and cancelled: one run leaves ~36 000 records behind. So
the script first waits, if needed, until there is room for its jobs plus 10 000 for other
users (a second run within 10 minutes waits up to MinJobAge), rather than make everyone's
sbatch fail with "Resource temporarily unavailable".

If the cluster is down the script runs ``tests/slurm/cluster.sh start`` (idempotent; needs
root unless already up) and stops with a clear message if SLURM still does not answer.
Whatever happens, every job it submitted is cancelled before it exits.

Run: ``python bench/bench_slurm.py`` (``make bench`` runs every bench); ``--repeat 3``,
``--chains 500``, ``--sweep 10000``, ``--singles 200``, ``--pack-jobs 2000``, ``--pack 50``,
``--retry-jobs 200``, ``--retry-every 10``, ``--retry-repeat 3``; ``--only packing,retries``
runs only those parts (of ``submit,e2e,packing,retries``); ``--quick`` (about 2 minutes: one
run of each, 200 chains, 500 packed jobs, 100 retry jobs, the 10 000-job submission kept).
Results: tables on stdout and ``bench/results/slurm.json`` (``slurm-<parts>.json`` for
``--only``).

repx runs with its bytecode cache allowed (``PYTHONDONTWRITEBYTECODE`` is dropped): an
installed repx has its ``.pyc`` files, and compiling 120 modules at every command would
add about a second to each whole-command time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
BIN = Path(sys.executable).parent
POLL = 0.5

# Goals from the issue.
TARGET_SUBMIT_S = 1.0   # repx submits a 10 000-job stage in under 1 s
TARGET_CANCEL_S = 1.0   # `repx cancel` of that stage in under 1 s
TARGET_E2E_RATIO = 1.2  # repx end to end within 1.2x of plain sbatch arrays
#: The parts of the bench, in the order they run (``--only`` picks some).
PARTS = ("submit", "e2e", "packing", "retries")
#: Job records left free for other users of the cluster (a test suite running meanwhile).
RESERVE_JOBS = 10000


class BenchError(RuntimeError):
    """The cluster is unusable or a run did not do what the workload requires."""


def run(argv: Sequence[str], *, cwd: Path | None = None, check: bool = True,
        timeout: float = 120, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a command, failing with its own last words (not a bare exit status)."""
    try:
        proc = subprocess.run(list(argv), cwd=cwd, text=True, timeout=timeout,
                              stdout=subprocess.DEVNULL if quiet else subprocess.PIPE,
                              stderr=subprocess.PIPE)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(argv[:3])} ...` did not finish within {timeout} s"
                         ) from None
    if check and proc.returncode != 0:
        said = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise BenchError(f"`{' '.join(argv[:3])} ...` exited {proc.returncode}: "
                         f"{said[-1] if said else ''}")
    return proc


def repx_argv() -> list[str]:
    """The repx of this venv (as `make bench` installs it), else this interpreter's module."""
    exe = BIN / "repx"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "repx.cli"]


def load() -> tuple[float, float, float]:
    return os.getloadavg()


def fmt_load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


# ------------------------------------------------------------------------------ the cluster


def ensure_cluster() -> None:
    """The cluster must answer; start it (idempotent) if it does not, else fail clearly."""
    for tool in ("sbatch", "squeue", "scancel", "sacct"):
        if shutil.which(tool) is None and not CLUSTER.exists():
            raise BenchError(f"`{tool}` is not on PATH and {CLUSTER} is missing")
    status = run([str(CLUSTER), "status"], check=False, timeout=60)
    if status.returncode == 0:
        return
    print(f"SLURM cluster not up; running {CLUSTER.relative_to(REPO)} start", flush=True)
    started = run([str(CLUSTER), "start"], check=False, timeout=600)
    status = run([str(CLUSTER), "status"], check=False, timeout=60)
    if status.returncode != 0:
        tail = "\n".join((started.stdout + started.stderr).strip().splitlines()[-15:])
        raise BenchError("the SLURM test cluster is not usable (tests/slurm/cluster.sh "
                         "start failed; it needs root unless the cluster is already up; see "
                         f"docs/slurm-cluster.md):\n{tail}\n{status.stdout.strip()}")


def slurm_config() -> dict[str, str]:
    """``scontrol show config`` as a dict (MaxJobCount, MinJobAge, ...)."""
    out = run(["scontrol", "show", "config"]).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in
                                                 out.splitlines()) if v}


def wait_for_room(jobs: int, reserve: int = RESERVE_JOBS) -> None:
    """Wait until slurmctld can take ``jobs`` more job records and still leave ``reserve``
    for other users of the cluster.

    Every task of an array counts against MaxJobCount, even held or cancelled, until
    MinJobAge after it ended (600 s here): this bench leaves ~36 000 records behind, so a
    second run within 10 minutes would otherwise make everyone's sbatch fail with "Resource
    temporarily unavailable" (MaxJobCount 100 000).
    """
    config = slurm_config()
    limit = int(config.get("MaxJobCount", "10000"))
    age = int(config.get("MinJobAge", "300 sec").split()[0])
    deadline = time.monotonic() + age + 60
    told = False
    while True:
        count = len(run(["squeue", "-h", "-t", "all", "-r", "-o", "%i"],
                        timeout=60).stdout.splitlines())
        if count + jobs + reserve <= limit:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"slurmctld holds {count} job records (MaxJobCount {limit}); "
                             f"this bench needs {jobs} more plus {reserve} left for others, "
                             f"and finished jobs did not age out within MinJobAge ({age} s)")
        if not told:
            print(f"waiting for finished jobs to age out of slurmctld (MinJobAge {age} s): "
                  f"{count} records + {jobs} needed + {reserve} reserve > MaxJobCount "
                  f"{limit}", flush=True)
            told = True
        time.sleep(10)


@dataclass
class Ledger:
    """Everything this script put on SLURM, so that ``finally`` leaves nothing queued."""

    job_ids: set[str] = field(default_factory=set)
    stores: list[Path] = field(default_factory=list)

    def cancel_all(self) -> None:
        for store in self.stores:
            if (store / "db").exists():
                run([*repx_argv(), "cancel", "--store", str(store)], check=False,
                    timeout=300, quiet=True)
        ids = sorted(self.job_ids)
        for start in range(0, len(ids), 200):
            run(["scancel", *ids[start:start + 200]], check=False)
        wait_gone(ids, 60)


def squeue_active(array_ids: Iterable[str]) -> list[str]:
    """Lines of squeue (default states: pending, running, completing) for these jobs."""
    ids = sorted({i.split("_")[0] for i in array_ids if i})
    if not ids:
        return []
    found: list[str] = []
    for start in range(0, len(ids), 200):
        proc = run(["squeue", "-h", "-j", ",".join(ids[start:start + 200]), "-o", "%i %T"],
                   check=False)
        if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
            raise BenchError(f"squeue failed: {proc.stderr.strip()}")
        found += [line for line in proc.stdout.splitlines() if line.strip()]
    return found


def wait_gone(ids: Iterable[str], timeout: float) -> bool:
    """Wait until none of ``ids`` is pending/running/completing (cancelled tasks that had
    started linger a moment as COMPLETING)."""
    ids = list(ids)
    deadline = time.monotonic() + timeout
    while squeue_active(ids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def foreign_jobs(root: Path) -> int:
    """Jobs in the queue that this script did not submit (their working directory is not
    under ``root``): another user of the cluster, e.g. a test suite run concurrently."""
    out = run(["squeue", "-h", "-o", "%Z"], check=False).stdout.splitlines()
    return sum(1 for line in out if line.strip() and not line.startswith(str(root)))


class Sampler(threading.Thread):
    """While a run lasts, every 2 s: the 1-min load and the foreign jobs in the queue, so a
    slow run can be told apart from a busy machine."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.loads: list[float] = []
        self.foreign: list[int] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self.loads.append(os.getloadavg()[0])
            with contextlib.suppress(BenchError):
                self.foreign.append(foreign_jobs(self.root))
            if self._stop_event.wait(2.0):
                return

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_event.set()
        self.join()

    def summary(self) -> dict[str, float]:
        return {"load_max": max(self.loads, default=0.0),
                "load_mean": statistics.fmean(self.loads) if self.loads else 0.0,
                "foreign_max": max(self.foreign, default=0)}


# ------------------------------------------------------------------------------ the labs


LAB = """
    { pkgs, repx-lib, gitHash ? "unknown", ... }:
    repx-lib.mkLab {
      inherit pkgs repx-lib gitHash;
      lab_version = "1";
      runs = { sweep = repx-lib.callRun ./run.nix [ ]; };
    }
"""

RUN = """
    { pkgs, repx-lib, ... }:
    { name = "sweep"; pipelines = [ ./pipe.nix ]; params = { i = builtins.genList (x: x) N; }; }
"""

FIRST = """
    { pkgs }:
    {
      pname = "first"; version = "1";
      params = { i = 0; };
      outputs = { value = "$out/value.txt"; };
      run = { outputs, params, ... }: ''
        echo "${toString params.i}" > "${outputs.value}"
      '';
    }
"""

SECOND = """
    { pkgs }:
    {
      pname = "second"; version = "1";
      inputs = { value = ""; };
      outputs = { copy = "$out/copy.txt"; };
      run = { inputs, outputs, ... }: ''
        cat "${inputs.value}" > "${outputs.copy}"
      '';
    }
"""


def write_lab(folder: Path, n: int, chained: bool) -> Path:
    """One run sweeping ``i`` over n values: stage ``first`` alone, or ``first`` →
    ``second``; then ``repx lab build`` (untimed: Nix is not what is measured here)."""
    stages = ("first = repx.callStage ./first.nix [ ];\n"
              + ("  second = repx.callStage ./second.nix [ first ];\n" if chained else ""))
    pipe = "{ repx, ... }:\nrepx.mkPipe rec {\n  " + stages + "}\n"
    files = {"lab.nix": LAB, "run.nix": RUN.replace("N", str(n)), "first.nix": FIRST,
             "second.nix": SECOND}
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    (folder / "pipe.nix").write_text(pipe)
    built = json.loads(run([*repx_argv(), "lab", "build", "--json"], cwd=folder,
                           timeout=600).stdout)
    want = n * (2 if chained else 1)
    if built.get("jobs") != want:
        raise BenchError(f"repx lab build: {built.get('jobs')} jobs, expected {want}")
    return folder / "result"


def sbatch_files(store: Path) -> list[Path]:
    folder = store / "slurm"
    return sorted(folder.glob("*.sbatch")) if folder.is_dir() else []


# ---------------------------------------------------------------- part 1: submission


def bench_singles(n: int, work: Path, ledger: Ledger) -> dict[str, float]:
    """n x ``sbatch --hold --wrap true``, one process each: what a per-job submitter pays."""
    start = time.perf_counter()
    ids = []
    for _ in range(n):
        out = run(["sbatch", "--parsable", "--hold", "--output=/dev/null", f"--chdir={work}",
                   "--job-name=bench-single", "--wrap", "true"]).stdout
        ids.append(out.strip().split(";")[0])
        ledger.job_ids.add(ids[-1])
    seconds = time.perf_counter() - start
    cancel = time.perf_counter()
    run(["scancel", *ids])
    cancel = time.perf_counter() - cancel
    wait_gone(ids, 60)
    return {"jobs": n, "seconds": seconds, "jobs_per_s": n / seconds, "cancel_s": cancel}


def bench_raw_array(size: int, work: Path, ledger: Ledger) -> dict[str, float]:
    """``sbatch --hold --array`` of ``size`` tasks, in as few arrays as MaxArraySize allows
    (one after another), then one ``scancel`` of the array ids. Once only: it takes
    milliseconds, and each repetition would hold ``size`` more job records in slurmctld for
    MinJobAge (see wait_for_room)."""
    limit = int(slurm_config().get("MaxArraySize", "1001"))
    arrays = []
    start = time.perf_counter()
    for first in range(0, size, limit):
        last = min(size, first + limit) - 1
        out = run(["sbatch", "--parsable", "--hold", f"--array=0-{last - first}",
                   "--output=/dev/null", f"--chdir={work}", "--job-name=bench-array",
                   "--wrap", "true"]).stdout
        arrays.append(out.strip().split(";")[0])
        ledger.job_ids.add(arrays[-1])
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    run(["scancel", *arrays])
    cancel = time.perf_counter() - start
    wait_gone(arrays, 60)
    return {"jobs": size, "seconds": seconds, "jobs_per_s": size / seconds, "cancel_s": cancel,
            "calls": len(arrays)}


def bench_repx_submit(lab: Path, size: int, root: Path, ledger: Ledger,
                      repeat: int) -> dict[str, Any]:
    """``repx build --scheduler slurm --no-wait`` of a ``size``-job stage into a fresh
    store, then ``repx cancel``; medians of whole command, in-process seconds, cancel."""
    whole, inside, cancels, calls = [], [], [], []
    for rep in range(repeat):
        store = root / f"submit-{rep}"
        ledger.stores.append(store)
        start = time.perf_counter()
        proc = run([*repx_argv(), "build", "--lab", str(lab), "--scheduler", "slurm",
                    "--no-wait", "--store", str(store), "--json", "-q"], cwd=lab.parent)
        whole.append(time.perf_counter() - start)
        summary = json.loads(proc.stdout)
        if len(summary["submitted"]) != size:
            raise BenchError(f"repx submitted {len(summary['submitted'])} jobs, "
                             f"expected {size}")
        inside.append(float(summary["seconds"]))
        calls.append(len(sbatch_files(store)))
        start = time.perf_counter()
        out = run([*repx_argv(), "cancel", "--store", str(store)], cwd=lab.parent,
                  timeout=300).stdout
        cancels.append(time.perf_counter() - start)
        if f"{size} SLURM jobs cancelled" not in out.splitlines()[-1]:
            raise BenchError(f"repx cancel: {out.splitlines()[-1]!r}")
        arrays = store_arrays(store)
        if not wait_gone(arrays, 60):
            raise BenchError(f"jobs of {store} still queued 60 s after repx cancel")
    return {"jobs": size, "seconds_whole": statistics.median(whole),
            "seconds_in_process": statistics.median(inside),
            "jobs_per_s": size / statistics.median(inside),
            "cancel_s": statistics.median(cancels), "sbatch_calls": max(calls),
            "samples_whole": whole, "samples_in_process": inside}


def store_arrays(store: Path) -> set[str]:
    """The SLURM arrays (and plain jobs) the store's records name."""
    from repx.engine.slurm.arrays import task_of
    from repx.store import Store

    with Store(store, readonly=True) as opened:
        return {task_of(r.slurm_id).split("_")[0] for r in opened.records() if r.slurm_id}


def store_tasks(store: Path) -> int:
    """How many SLURM tasks (array tasks or plain jobs) ran the store's jobs (the jobs of a
    packed task share one)."""
    from repx.engine.slurm.arrays import task_of
    from repx.store import Store

    with Store(store, readonly=True) as opened:
        return len({task_of(r.slurm_id) for r in opened.records() if r.slurm_id})


# ---------------------------------------------------------------- part 2: end to end


def bench_repx_e2e(lab: Path, store: Path, jobs: int, ledger: Ledger,
                   extra: Sequence[str] = ()) -> dict[str, Any]:
    """``repx build --scheduler slurm --poll 0.5`` into a fresh store, waiting for all."""
    ledger.stores.append(store)
    start = time.perf_counter()
    proc = run([*repx_argv(), "build", "--lab", str(lab), "--scheduler", "slurm", "--poll",
                str(POLL), "--store", str(store), "--json", "-q", *extra], cwd=lab.parent,
               timeout=900, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        # The store is deleted when the bench ends: say now what the failed jobs said.
        raise BenchError(f"repx build into {store} exited {proc.returncode}: "
                         f"{failed_logs(store) or proc.stderr.strip()[-2000:]}")
    summary = json.loads(proc.stdout)
    if len(summary["executed"]) != jobs or summary["failed"] or summary["blocked"]:
        raise BenchError(f"repx e2e: {len(summary['executed'])} executed, "
                         f"failed {summary['failed'][:3]}, blocked {summary['blocked'][:3]}")
    return {"seconds": seconds, "in_process": float(summary["seconds"]),
            "sbatch_calls": len(sbatch_files(store))}


def failed_logs(store: Path, most: int = 3) -> str:
    """The failure and the last stderr lines of up to ``most`` failed jobs of ``store``."""
    from repx.store import Status, Store

    with Store(store, readonly=True) as opened:
        failed = [r for r in opened.records() if r.status is Status.FAILED][:most]
    said = []
    for record in failed:
        try:
            tail = Path(record.stderr_log).read_text(errors="replace").splitlines()[-5:]
        except (OSError, TypeError):
            tail = ["(no stderr log)"]
        said.append(f"{record.job_id} (SLURM {record.slurm_id}, {record.reason}): "
                    + " | ".join(tail))
    return "; ".join(said)


def plain_copy(template: Path, target: Path) -> list[tuple[str, Path, str]]:
    """repx's wrapper scripts and tables from store ``template``, with its paths rewritten
    to ``target``: [(stage name, script, --array list)] in submission order."""
    (target / "slurm" / "logs").mkdir(parents=True)
    arrays = []
    for script in sbatch_files(template):
        table = script.with_suffix(".tsv")
        for source in (script, table):
            text = source.read_text().replace(str(template), str(target))
            (target / "slurm" / source.name).write_text(text)
        (target / "slurm" / script.name).chmod(0o755)
        name = next(line.split("=", 1)[1] for line in script.read_text().splitlines()
                    if line.startswith("#SBATCH --job-name="))
        rows = table.read_text().splitlines()
        indices = [i for i, row in enumerate(rows) if row.strip()]
        if indices != list(range(len(indices))):
            raise BenchError(f"{table}: expected a dense table, got holes")
        arrays.append((name, target / "slurm" / script.name, f"0-{len(indices) - 1}"))
    order = {"first": 0, "second": 1}
    arrays.sort(key=lambda a: order.get(a[0].split("-")[1], 9))
    if [a[0].split("-")[1] for a in arrays] != ["first", "second"]:
        raise BenchError(f"expected one array per stage, found {[a[0] for a in arrays]}")
    return arrays


def bench_plain_e2e(template: Path, target: Path, jobs: int, ledger: Ledger) -> dict[str, Any]:
    """The same two arrays with raw sbatch (aftercorr between them, as repx submits them),
    polled with squeue every 0.5 s; timed from the first sbatch to the last completion."""
    arrays = plain_copy(template, target)
    ids: list[str] = []
    start = time.perf_counter()
    for _name, script, spec in arrays:
        args = ["sbatch", "--parsable", f"--array={spec}"]
        if ids:
            args += [f"--dependency=aftercorr:{ids[-1]}", "--kill-on-invalid-dep=yes"]
        ids.append(run([*args, str(script)]).stdout.strip().split(";")[0])
        ledger.job_ids.add(ids[-1])
    deadline = time.monotonic() + 900
    while squeue_active(ids):
        if time.monotonic() > deadline:
            raise BenchError(f"plain sbatch arrays {ids} still running after 900 s")
        time.sleep(POLL)
    seconds = time.perf_counter() - start
    codes = [p.read_text().strip() for p in (target / "outputs").glob("*/repx/exit_code")]
    if len(codes) != jobs or set(codes) != {"0"}:
        raise BenchError(f"plain sbatch: {len(codes)} exit codes, not all 0: "
                         f"{sorted(set(codes))}")
    return {"seconds": seconds, "sbatch_calls": len(arrays)}


# ---------------------------------------------------------------- part 3: packing


SLEEPER = """
    { pkgs }:
    {
      pname = "first"; version = "1";
      params = { i = 0; };
      outputs = { value = "$out/value.txt"; };
      runDependencies = [ pkgs.coreutils ];
      run = { outputs, params, ... }: ''
        sleep 0.2
        echo "${toString params.i}" > "${outputs.value}"
      '';
    }
"""


def write_sleep_lab(folder: Path, n: int) -> Path:
    """One run, one stage of ``n`` jobs of 0.2 s; then ``repx lab build`` (untimed)."""
    files = {"lab.nix": LAB, "run.nix": RUN.replace("N", str(n)), "first.nix": SLEEPER,
             "pipe.nix": "{ repx, ... }:\nrepx.mkPipe rec {\n  first = repx.callStage "
                         "./first.nix [ ];\n}\n"}
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    built = json.loads(run([*repx_argv(), "lab", "build", "--json"], cwd=folder,
                           timeout=600).stdout)
    if built.get("jobs") != n:
        raise BenchError(f"repx lab build: {built.get('jobs')} jobs, expected {n}")
    return folder / "result"


def bench_plain_arrays(template: Path, target: Path, jobs: int,
                       ledger: Ledger) -> dict[str, Any]:
    """repx's unpacked scripts and tables from store ``template`` (paths rewritten to
    ``target``), each submitted as a plain ``sbatch --array`` (no dependencies: one stage),
    polled with squeue every 0.5 s until none remains."""
    (target / "slurm" / "logs").mkdir(parents=True)
    arrays = []
    for script in sbatch_files(template):
        table = script.with_suffix(".tsv")
        for source in (script, table):
            text = source.read_text().replace(str(template), str(target))
            (target / "slurm" / source.name).write_text(text)
        rows = [r for r in table.read_text().splitlines() if r.strip()]
        arrays.append((target / "slurm" / script.name, f"0-{len(rows) - 1}"))
    ids = []
    start = time.perf_counter()
    for script, spec in arrays:
        ids.append(run(["sbatch", "--parsable", f"--array={spec}", str(script)]
                       ).stdout.strip().split(";")[0])
        ledger.job_ids.add(ids[-1])
    deadline = time.monotonic() + 900
    while squeue_active(ids):
        if time.monotonic() > deadline:
            raise BenchError(f"plain sbatch arrays {ids} still running after 900 s")
        time.sleep(POLL)
    seconds = time.perf_counter() - start
    codes = [p.read_text().strip() for p in (target / "outputs").glob("*/repx/exit_code")]
    if len(codes) != jobs or set(codes) != {"0"}:
        raise BenchError(f"plain sbatch: {len(codes)} exit codes, not all 0")
    return {"seconds": seconds, "sbatch_calls": len(arrays), "tasks": jobs}


def bench_packing(root: Path, args: argparse.Namespace, ledger: Ledger) -> dict[str, Any]:
    """Part 3: repx unpacked, plain sbatch arrays of its scripts, repx ``--pack``; in that
    order, then again in reverse for each further repetition."""
    jobs = args.pack_jobs
    lab = write_sleep_lab(root / "packing", jobs)
    found: dict[str, list[dict[str, Any]]] = {"repx": [], "plain": [], "packed": []}
    template = None
    for rep in range(args.pack_repeat):
        order = ["repx", "plain", "packed"]
        for variant in order if rep % 2 == 0 else order[::-1]:
            if variant == "plain" and template is None:
                continue  # plain copies the scripts of a repx run: after it
            with Sampler(root) as sampler:
                if variant == "plain":
                    assert template is not None
                    result = bench_plain_arrays(template, root / f"pack-plain-{rep}", jobs,
                                                ledger)
                else:
                    store = root / f"pack-{variant}-{rep}"
                    extra = ["--pack", str(args.pack)] if variant == "packed" else []
                    result = bench_repx_e2e(lab, store, jobs, ledger, extra)
                    result["tasks"] = store_tasks(store)
                    if variant == "repx":
                        template = template or store
            found[variant].append({**result, **sampler.summary()})
            print(f"  packing {variant} run {rep + 1}: {result['seconds']:.2f} s, "
                  f"{result['tasks']} tasks", flush=True)
    if not found["plain"]:  # one repetition in reverse order never ran plain after repx
        assert template is not None
        found["plain"].append(bench_plain_arrays(template, root / "pack-plain-last", jobs,
                                                 ledger))
    return {"jobs": jobs, "pack": args.pack, **found}


# ---------------------------------------------------------------- part 4: retry overhead


#: Every job sleeps 0.2 s; every ``EVERY``-th one (``i % EVERY == 0``) also touches 80 MB,
#: which a 64M cgroup limit kills (OUT_OF_MEMORY) and the retry's 128M does not.
RETRIER = """
    { pkgs }:
    {
      pname = "first"; version = "1";
      params = { i = 0; };
      outputs = { value = "$out/value.txt"; };
      resources = { mem = "MEM"; };
      runDependencies = [ pkgs.coreutils pkgs.python3 ];
      run = { outputs, params, ... }: ''
        sleep 0.2
        if [ $(( ${toString params.i} % EVERY )) -eq 0 ]; then
          python3 -c "b = b'x' * (80 * 1024 * 1024); print(len(b))"
        fi
        echo "${toString params.i}" > "${outputs.value}"
      '';
    }
"""


def write_retry_lab(folder: Path, n: int, every: int, mem: str) -> Path:
    """One stage of ``n`` jobs of 0.2 s, every ``every``-th touching 80 MB, all asking for
    ``mem``; then ``repx lab build`` (untimed)."""
    stage = RETRIER.replace("MEM", mem).replace("EVERY", str(every))
    files = {"lab.nix": LAB, "run.nix": RUN.replace("N", str(n)), "first.nix": stage,
             "pipe.nix": "{ repx, ... }:\nrepx.mkPipe rec {\n  first = repx.callStage "
                         "./first.nix [ ];\n}\n"}
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    built = json.loads(run([*repx_argv(), "lab", "build", "--json"], cwd=folder,
                           timeout=600).stdout)
    if built.get("jobs") != n:
        raise BenchError(f"repx lab build: {built.get('jobs')} jobs, expected {n}")
    return folder / "result"


def store_attempts(store: Path) -> dict[str, int]:
    """Retried jobs and the failure kinds of their first attempts (must be OUT_OF_MEMORY:
    anything else means the workload did not do what this part measures)."""
    from repx.store import Store

    with Store(store, readonly=True) as opened:
        records = list(opened.records())
    retried = [r for r in records if len(r.attempts) > 1]
    kinds = {r.attempts[0].get("failure") for r in retried}
    if kinds - {"OUT_OF_MEMORY"}:
        raise BenchError(f"{store}: first attempts failed with {sorted(map(str, kinds))}, "
                         "expected only OUT_OF_MEMORY")
    return {"retried": len(retried), "attempts": sum(len(r.attempts) for r in records)}


def bench_retries(root: Path, args: argparse.Namespace, ledger: Ledger) -> dict[str, Any]:
    """Part 4: the same jobs with ``--retries 1``, once asking for 128M (all succeed the
    first time) and once for 64M (every ``--retry-every``-th is OUT_OF_MEMORY, then
    retried with 128M); alternated, ``--retry-repeat`` runs each."""
    jobs, every = args.retry_jobs, args.retry_every
    labs = {"clean": write_retry_lab(root / "retry-clean", jobs, every, "128M"),
            "retried": write_retry_lab(root / "retry-oom", jobs, every, "64M")}
    found: dict[str, list[dict[str, Any]]] = {"clean": [], "retried": []}
    for rep in range(args.retry_repeat):
        order = ("clean", "retried") if rep % 2 == 0 else ("retried", "clean")
        for variant in order:
            store = root / f"retry-{variant}-{rep}"
            with Sampler(root) as sampler:
                result = bench_repx_e2e(labs[variant], store, jobs, ledger,
                                        ["--retries", "1"])
            result.update(store_attempts(store), tasks=store_tasks(store))
            want = len(range(0, jobs, every)) if variant == "retried" else 0
            if result["retried"] != want:
                raise BenchError(f"{variant}: {result['retried']} jobs retried, expected "
                                 f"{want}")
            found[variant].append({**result, **sampler.summary()})
            print(f"  retries {variant} run {rep + 1}: {result['seconds']:.2f} s, "
                  f"{result['retried']} retried, {result['sbatch_calls']} sbatch calls",
                  flush=True)
    return {"jobs": jobs, "every": every, **found}


def retries_report(p: dict[str, Any]) -> list[str]:
    """The retry table: seconds with and without OUT_OF_MEMORY first attempts, their ratio,
    sbatch calls, and the extra seconds per retried job."""
    names = {"clean": "mem 128M: every job succeeds first time",
             "retried": "mem 64M: OUT_OF_MEMORY, retried at 128M"}
    medians = {v: statistics.median(x["seconds"] for x in p[v]) for v in names}
    retried = p["retried"][0]["retried"]
    lines = [f"retries: one stage of {p['jobs']} jobs of 0.2 s, --retries 1, every "
             f"{p['every']}th touches 80 MB (median of {len(p['clean'])} alternated runs)",
             f"{'variant':<44} {'retried':>7} {'attempts':>8} {'sbatch calls':>12} "
             f"{'median s':>9} {'runs s':>16} {'max load':>8}"]
    for variant, name in names.items():
        runs = p[variant]
        listed = ", ".join(f"{x['seconds']:.2f}" for x in runs)
        # The watcher resubmits the failures it sees in each round: calls vary by run.
        calls = sorted({x["sbatch_calls"] for x in runs})
        spread = f"{calls[0]}" if len(calls) == 1 else f"{calls[0]}-{calls[-1]}"
        lines.append(f"{name:<44} {runs[0]['retried']:>7} {runs[0]['attempts']:>8} "
                     f"{spread:>12} {medians[variant]:>9.2f} {listed:>16} "
                     f"{max(x.get('load_max', 0.0) for x in runs):>8.1f}")
    extra = medians["retried"] - medians["clean"]
    lines.append(f"ratio retried / clean: {medians['retried'] / medians['clean']:.2f}; "
                 f"extra {extra:.2f} s for {retried} retried jobs = "
                 f"{extra / max(retried, 1):.3f} s per retry")
    return lines


# ------------------------------------------------------------------------------- report


def report(info: dict[str, Any]) -> list[str]:
    """The tables of the parts that ran and the goals, as printed (and pasted into
    docs/benchmarks.md)."""
    lines: list[str] = []
    if "repx_submit" in info:
        lines += submit_report(info)
    if "e2e" in info:
        lines += e2e_report(info)
    for part, table in (("packing", packing_report), ("retries", retries_report)):
        if part in info:
            lines += [*table(info[part]), ""]
    lines.append(f"load 1/5/15 min before {fmt_load(info['load_start'])}, after "
                 f"{fmt_load(info['load_end'])}; {info['machine']}")
    return lines


def submit_report(info: dict[str, Any]) -> list[str]:
    """Part 1's table and its two goals."""
    s, a, r = info["singles"], info["raw_array"], info["repx_submit"]
    head = (f"{'submitter':<44} {'jobs':>6} {'sbatch calls':>12} {'seconds':>8} "
            f"{'jobs/s':>9} {'cancel s':>8}")

    def row(name: str, jobs: int, calls: int, seconds: float, cancel: str) -> str:
        return (f"{name:<44} {jobs:>6} {calls:>12} {seconds:>8.3f} {jobs / seconds:>9.0f} "
                f"{cancel:>8}")

    lines = [
        f"submission (repx: median of {info['repeat_submit']}, raw sbatch once; load 1/5/15 min "
        f"{fmt_load(info['load_submit'])}; foreign jobs queued {info['foreign_submit']})",
        head,
        row("sbatch --hold --wrap true, one call per job", s["jobs"], s["jobs"], s["seconds"],
            f"{s['cancel_s']:.3f}"),
        row(f"sbatch --hold --array (arrays of <= {info.get('max_array_size', '?')})",
            a["jobs"], a.get("calls", 1), a["seconds"], f"{a['cancel_s']:.3f}"),
        row("repx build --no-wait, whole command", r["jobs"], r["sbatch_calls"],
            r["seconds_whole"], f"{r['cancel_s']:.3f}"),
        row("repx build --no-wait, in process", r["jobs"], r["sbatch_calls"],
            r["seconds_in_process"], ""),
        f"goal: repx submits a {r['jobs']}-job stage in <= {TARGET_SUBMIT_S:.0f} s: "
        f"{'met' if r['seconds_whole'] <= TARGET_SUBMIT_S else 'NOT met'} "
        f"(whole command {r['seconds_whole']:.3f} s, ratio to target "
        f"{r['seconds_whole'] / TARGET_SUBMIT_S:.2f}; in process "
        f"{r['seconds_in_process']:.3f} s; {r['sbatch_calls']} sbatch calls: "
        f"MaxArraySize {info.get('max_array_size', '?')})",
        f"goal: `repx cancel` of it in <= {TARGET_CANCEL_S:.0f} s: "
        f"{'met' if r['cancel_s'] <= TARGET_CANCEL_S else 'NOT met'} "
        f"(whole command {r['cancel_s']:.3f} s, ratio to target "
        f"{r['cancel_s'] / TARGET_CANCEL_S:.2f}); cancel s = scancel <array id> for raw "
        "sbatch, `repx cancel --store` for repx",
        "",
    ]
    return lines


def e2e_report(info: dict[str, Any]) -> list[str]:
    """Part 2's table and its goal."""
    e = info["e2e"]
    medians = {v: statistics.median(x["seconds"] for x in e[v]) for v in ("plain", "repx")}
    names = {"plain": "plain sbatch arrays + squeue every 0.5 s",
             "repx": "repx build --scheduler slurm --poll 0.5"}
    lines = [
        f"end to end: {e['chains']} chains x 2 stages (second reads first) = {e['jobs']} "
        f"jobs, median of {len(e['repx'])} alternated runs",
        f"{'variant':<44} {'sbatch calls':>12} {'median s':>9} {'jobs/s':>7} "
        f"{'runs s':>22} {'max load':>8} {'foreign jobs':>12}",
    ]
    for v in ("plain", "repx"):
        runs = ", ".join(f"{x['seconds']:.2f}" for x in e[v])
        lines.append(
            f"{names[v]:<44} {e[v][0]['sbatch_calls']:>12} {medians[v]:>9.2f} "
            f"{e['jobs'] / medians[v]:>7.1f} {runs:>22} "
            f"{max(x['load_max'] for x in e[v]):>8.1f} "
            f"{max(x['foreign_max'] for x in e[v]):>12}")
    ratio = medians["repx"] / medians["plain"]
    pairs = ", ".join(f"{x['seconds'] / y['seconds']:.2f}"
                      for x, y in zip(e["repx"], e["plain"], strict=True))
    inproc = statistics.median(x["in_process"] for x in e["repx"])
    lines += [
        f"repx in process (its `seconds`): {inproc:.2f} s. ratio repx / plain: {ratio:.3f} "
        f"(per run pair: {pairs}); goal <= {TARGET_E2E_RATIO}: "
        f"{'met' if ratio <= TARGET_E2E_RATIO else 'NOT met'} (load before it "
        f"{fmt_load(info['load_e2e'])})",
        "",
    ]
    return lines


def packing_report(p: dict[str, Any]) -> list[str]:
    """The packing table: each variant's median seconds, its ratio to plain sbatch arrays,
    the array tasks and sbatch calls it took."""
    names = {"plain": "plain sbatch arrays of repx's scripts",
             "repx": "repx build --scheduler slurm",
             "packed": f"repx build --scheduler slurm --pack {p['pack']}"}
    plain = statistics.median(x["seconds"] for x in p["plain"])
    lines = [f"packing: one stage of {p['jobs']} jobs of 0.2 s, end to end (median of "
             f"{len(p['repx'])} runs each)",
             f"{'variant':<44} {'tasks':>6} {'sbatch calls':>12} {'median s':>9} "
             f"{'ratio':>6} {'max load':>8}"]
    for variant in ("plain", "repx", "packed"):
        runs = p[variant]
        seconds = statistics.median(x["seconds"] for x in runs)
        lines.append(f"{names[variant]:<44} {runs[0]['tasks']:>6} "
                     f"{runs[0]['sbatch_calls']:>12} {seconds:>9.2f} {seconds / plain:>6.2f} "
                     f"{max(x.get('load_max', 0.0) for x in runs):>8.1f}")
    return lines


def measure(root: Path, args: argparse.Namespace, ledger: Ledger,
            info: dict[str, Any]) -> None:
    """The parts ``args.only`` names, filling ``info``; everything submitted is recorded
    in ``ledger``."""
    info["load_start"] = load()
    if "submit" in args.only:
        measure_submit(root, args, ledger, info)
    if "e2e" in args.only:
        measure_e2e(root, args, ledger, info)
    if "packing" in args.only and args.pack_jobs:
        info["packing"] = bench_packing(root, args, ledger)
    if "retries" in args.only and args.retry_jobs:
        info["retries"] = bench_retries(root, args, ledger)
    info["load_end"] = load()


def measure_submit(root: Path, args: argparse.Namespace, ledger: Ledger,
                   info: dict[str, Any]) -> None:
    """Part 1: single sbatch calls, one raw array, repx's 10 000-job submission."""
    (root / "raw").mkdir()
    wide = write_lab(root / "wide", args.sweep, chained=False)
    info["foreign_submit"] = foreign_jobs(root)
    info["load_submit"] = load()
    info["singles"] = bench_singles(args.singles, root / "raw", ledger)
    info["raw_array"] = bench_raw_array(args.sweep, root / "raw", ledger)
    info["max_array_size"] = slurm_config().get("MaxArraySize", "?")
    info["repx_submit"] = bench_repx_submit(wide, args.sweep, root, ledger,
                                            args.repeat_submit)


def measure_e2e(root: Path, args: argparse.Namespace, ledger: Ledger,
                info: dict[str, Any]) -> None:
    """Part 2: repx and plain sbatch arrays of its scripts, alternated."""
    chains = write_lab(root / "chains", args.chains, chained=True)
    jobs = 2 * args.chains
    e2e: dict[str, Any] = {"chains": args.chains, "jobs": jobs, "repx": [], "plain": []}
    info["e2e"] = e2e
    info["load_e2e"] = load()
    template = None
    for rep in range(args.repeat):
        order = ("repx", "plain") if rep % 2 == 0 else ("plain", "repx")
        for variant in order:
            with Sampler(root) as sampler:
                if variant == "repx":
                    store = root / f"e2e-repx-{rep}"
                    result = bench_repx_e2e(chains, store, jobs, ledger)
                    template = template or store
                else:
                    assert template is not None
                    result = bench_plain_e2e(template, root / f"e2e-plain-{rep}", jobs,
                                             ledger)
            e2e[variant].append({**result, **sampler.summary()})
            print(f"  e2e {variant} run {rep + 1}: {result['seconds']:.2f} s "
                  f"(max load {sampler.summary()['load_max']:.1f}, foreign jobs up to "
                  f"{sampler.summary()['foreign_max']})", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3,
                        help="end-to-end runs per variant (median)")
    parser.add_argument("--repeat-submit", type=int, default=2,
                        help="runs of the repx 10 000-job submission (median)")
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--sweep", type=int, default=10000)
    parser.add_argument("--chains", type=int, default=500)
    parser.add_argument("--pack-jobs", type=int, default=2000,
                        help="jobs of 0.2 s of the packing part (0: skip it)")
    parser.add_argument("--pack", type=int, default=50, help="--pack of the packed run")
    parser.add_argument("--pack-repeat", type=int, default=1,
                        help="runs of each packing variant (median)")
    parser.add_argument("--retry-jobs", type=int, default=200,
                        help="jobs of 0.2 s of the retry part (0: skip it)")
    parser.add_argument("--retry-every", type=int, default=10,
                        help="every N-th job of the retry part runs out of memory once")
    parser.add_argument("--retry-repeat", type=int, default=3,
                        help="runs of each retry variant (median)")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to run, of {','.join(PARTS)}")
    parser.add_argument("--quick", action="store_true",
                        help="about 2 minutes: one run of each, 200 chains, 500 packed "
                             "jobs, 100 retry jobs")
    args = parser.parse_args(argv)
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(args.only) - set(PARTS))
    if not args.only:
        parser.error(f"--only: name at least one part of {', '.join(PARTS)}")
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(PARTS)}")
    for name in ("repeat", "repeat_submit", "pack", "pack_repeat", "retry_every",
                 "retry_repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.quick:
        args.repeat, args.repeat_submit, args.singles = 1, 1, 50
        args.chains, args.pack_jobs, args.pack_repeat = 200, 500, 1
        args.retry_jobs, args.retry_repeat = 100, 1
    # An installed repx has its bytecode cache: measure that, not a recompile per command.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    parts = set(args.only)
    needed = ((args.singles + args.sweep * (1 + args.repeat_submit)) * ("submit" in parts)
              + 2 * args.chains * 2 * args.repeat * ("e2e" in parts)
              + 3 * args.pack_jobs * args.pack_repeat * ("packing" in parts)
              + 3 * args.retry_jobs * args.retry_repeat * ("retries" in parts))
    try:
        ensure_cluster()
        wait_for_room(needed)
    except BenchError as exc:
        print(f"bench_slurm: {exc}", file=sys.stderr)
        return 1
    ledger = Ledger()
    info: dict[str, Any] = {"machine": f"{platform.node()} {os.cpu_count()} CPUs",
                            "sweep": args.sweep, "repeat_submit": args.repeat_submit}
    try:
        with tempfile.TemporaryDirectory(prefix="repx-bench-slurm-") as tmp:
            try:
                measure(Path(tmp), args, ledger, info)
            finally:
                ledger.cancel_all()  # before the stores it names are deleted
    except BenchError as exc:
        print(f"bench_slurm: {exc}", file=sys.stderr)
        return 1
    lines = report(info)
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    # A run of some parts does not overwrite the results of a full run.
    name = "slurm" if set(args.only) == set(PARTS) else "slurm-" + "-".join(args.only)
    (RESULTS / f"{name}.json").write_text(json.dumps({**info, "table": lines}, indent=2,
                                                   default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
