"""How long labs take to evaluate, build, expand, plan and check, from 200 jobs to a million.

Two tables:

* **Phases** of a 2-stage ``a × b`` sweep (median of 3): Nix evaluation (``nix-instantiate``),
  the lab build (``nix-build``, scripts already built) and Python's expansion + hashing
  (blueprint to job ids), at 200, 2 048 and 20 000 jobs, and with a ``{ params }:`` outputs
  function;
* **Scale**: 20 000, 200 000 and 1 000 000 jobs (100 × 100, 1 000 × 100, 1 000 × 500
  combinations over 2 stages), each phase a whole ``repx`` process with its peak RSS:
  ``repx lab build``; ``repx build --dry-run --json`` against a fresh store; and the no-op
  ``repx build --json`` against a store that holds every job. Running a million jobs is out
  of reach, so that store is written directly: a succeeded record per job (the store's own
  ``put``) and each declared output file, then one untimed dry run writes the lab's no-op
  index (as the first build of a lab does). Both are timed from the lab folder (the way
  people run them: the Nix build of ``lab.nix`` included) and with ``--lab DIR`` (the built
  lab: repx's own share). Last, one value of ``a`` is edited and a dry run against that store
  says what would run: the one-change path (the Nix build of the edited lab, an expansion
  that reuses the last lab's ids, the plan; its peak RSS has a column of its own, as the
  issue's RSS target names the other phases). The table gives µs per job, the growth of each
  phase from 20 000
  to 1 000 000 jobs against the 50× growth of the jobs (linear = 1.0×), and the ratio of
  each phase at 1 000 000 jobs to the issue's targets (lab build ≤ 10 s, dry run ≤ 10 s,
  no-op ≤ 5 s, peak RSS ≤ 600 MB; ≤ 1 meets it).

Run: ``python bench/bench_expand.py`` (``make bench`` runs every bench; ~10 minutes, most of
it Nix evaluating the million-job lab), ``--quick`` (20 000 and 200 000 jobs only: 6–8 minutes
measured here under load 12–20; the million-job rows of bench/run.py's targets table are
then extrapolated). Results also go to ``bench/results/expand.json``, with the targets rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_peers import Sample, checked, measure  # noqa: E402

from repx.lab.blueprint import load_lab  # noqa: E402
from repx.lab.expand import expand_lab  # noqa: E402
from repx.lab.nix import NIX_DIR, NIX_OPTIONS  # noqa: E402

#: (a values, b values) of the scale table's sweeps: 2 jobs per combination.
SCALE_SIDES = ((100, 100), (1000, 100), (1000, 500))
QUICK_SCALE_SIDES = SCALE_SIDES[:2]

#: The issue's targets at 1 000 000 jobs: seconds, and MB (10^6 bytes) of peak RSS.
TARGETS = {"lab build": 10.0, "dry run": 10.0, "no-op": 5.0}
RSS_TARGET_MB = 600.0
#: The phase measured beside the issue's: not part of the peak RSS its target is about.
ONE_CHANGE = "one change"
TARGET_JOBS = 1_000_000
#: "Linear" growth: each phase's time growth over the jobs' growth at most this (1.0 = exactly
#: linear; a fixed start-up cost makes it smaller).
LINEAR_TOLERANCE = 1.25
MIB_TO_MB = 1024 * 1024 / 1e6

RESULTS = REPO / "bench" / "results" / "expand.json"


def write_lab(folder: Path, side: int, dynamic: bool = False, b_side: int | None = None,
              edited: bool = False) -> None:
    """A lab with one run sweeping a × b (side × side, or side × b_side, combinations) over
    two stages.

    With ``dynamic`` the first stage's outputs are a ``{ params }:`` function, which
    Nix evaluates once per combination. ``edited`` replaces the first value of ``a`` (1)
    by ``side + 1``: one sweep value edited, the change researchers make most.
    """
    a_values = (f"[ {side + 1} ] ++ repx-lib.utils.range 2 {side}" if edited
                else f"repx-lib.utils.range 1 {side}")
    outputs = ('{ params }: { value = "$out/value-${toString params.a}.txt"; }' if dynamic
               else '{ value = "$out/value.txt"; }')
    files = {
        "lab.nix": """
            { pkgs, repx-lib, gitHash ? "unknown", ... }:
            repx-lib.mkLab {
              inherit pkgs repx-lib gitHash;
              lab_version = "1";
              runs = { sweep = repx-lib.callRun ./run.nix [ ]; };
            }
        """,
        "run.nix": f"""
            {{ pkgs, repx-lib, ... }}:
            {{
              name = "sweep";
              pipelines = [ ./pipe.nix ];
              params = {{
                a = {a_values};
                b = repx-lib.utils.range 1 {b_side or side};
              }};
            }}
        """,
        "pipe.nix": """
            { repx, ... }:
            repx.mkPipe rec {
              first = repx.callStage ./first.nix [ ];
              second = repx.callStage ./second.nix [ first ];
            }
        """,
        "first.nix": """
            { pkgs }:
            {
              pname = "first";
              params = { a = 0; b = 0; };
              outputs = OUTPUTS;
              run = { outputs, params, ... }: ''
                echo "${toString params.a} ${toString params.b}" > "${outputs.value}"
              '';
            }
        """,
        "second.nix": """
            { pkgs }:
            {
              pname = "second";
              inputs = { value = ""; };
              outputs = { total = "$out/total.txt"; };
              run = { inputs, outputs, ... }: ''
                cat "${inputs.value}" > "${outputs.total}"
              '';
            }
        """,
    }
    for name, text in files.items():
        text = textwrap.dedent(text).lstrip().replace("OUTPUTS", outputs)
        (folder / name).write_text(text)


def timed(func, repeat: int = 3) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def nix(command: str, lab_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command, str(NIX_DIR / "entry.nix"), "--arg", "repxLabFile", str(lab_file), *NIX_OPTIONS,
         *(["--no-out-link"] if command == "nix-build" else [])],
        capture_output=True, text=True, check=True,
    )


def phases_table(quick: bool) -> list[str]:
    """The phase split (Nix evaluation, lab build, expansion) at small sizes."""
    rows = []
    cases = ((10, False), (100, False)) if quick else \
        ((10, False), (32, False), (100, False), (100, True))
    for side, dynamic in cases:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_lab(folder, side, dynamic)
            lab_file = folder / "lab.nix"
            lab_dir = Path(nix("nix-build", lab_file).stdout.strip())  # warm Nix caches
            evaluation = timed(lambda lab_file=lab_file: nix("nix-instantiate", lab_file))
            build = timed(lambda lab_file=lab_file: nix("nix-build", lab_file))
            graph = expand_lab(load_lab(lab_dir))
            expansion = timed(lambda lab_dir=lab_dir: expand_lab(load_lab(lab_dir)))
            rows.append((side * side, dynamic, len(graph.jobs), evaluation, build, expansion))
    lines = ["expansion of an a × b sweep over 2 stages (median of 3)",
             f"{'combinations':>12} {'dynamic':>7} {'jobs':>7} {'nix eval s':>11} "
             f"{'lab build s':>12} {'expand+hash s':>14} {'µs/job':>7}"]
    for combos, dynamic, jobs, evaluation, build, expansion in rows:
        flag = "yes" if dynamic else "no"
        lines.append(f"{combos:>12} {flag:>7} {jobs:>7} {evaluation:>11.3f} {build:>12.3f} "
                     f"{expansion:>14.3f} {expansion / jobs * 1e6:>7.1f}")
    return lines


def repx_tool() -> str:
    """The ``repx`` beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("repx")
    return str(beside) if beside.exists() else (shutil.which("repx") or "repx")


def fill_store(store: Path, lab_dir: Path) -> int:
    """Record every job of the lab as succeeded, with its declared outputs on disk, and
    the lab as a gc root: what the store holds after building the lab (see the doc)."""
    from repx.engine.contract import declared_outputs
    from repx.store import JobRecord, Status, Store

    graph = expand_lab(load_lab(lab_dir))
    now = time.time()
    with Store(store) as opened:
        with opened.batch():
            for job in graph.jobs.values():
                opened.put(JobRecord(job.id, Status.SUCCEEDED, exit_code=0, started=now,
                                     finished=now, lab=str(lab_dir), run=job.run,
                                     stage=job.stage))
        folders = opened.folders
        for job in graph.jobs.values():
            out_dir = folders.out_dir(job.id)
            os.makedirs(out_dir)
            for path in declared_outputs(job.outputs, out_dir, job.id).values():
                with open(path, "w") as handle:
                    handle.write("1\n")
        opened.add_root(str(lab_dir))
    return len(graph.jobs)


def scale_row(root: Path, a_side: int, b_side: int) -> dict[str, object]:
    """Every phase of the scale table for one a × b sweep (fresh folder and stores)."""
    repx = repx_tool()
    folder = root / f"lab-{a_side}x{b_side}"
    folder.mkdir()
    write_lab(folder, a_side, b_side=b_side)
    jobs = 2 * a_side * b_side
    checked(measure([repx, "lab", "build", "--json"], folder), "untimed first lab build")
    samples: dict[str, Sample] = {}
    samples["lab build"] = checked(measure([repx, "lab", "build", "--json"], folder),
                                   "repx lab build")
    built = json.loads(samples["lab build"].stdout)
    if built.get("jobs") != jobs:
        raise SystemExit(f"repx lab build: {built.get('jobs')} jobs, expected {jobs}")
    lab_dir = Path(built["lab"])
    fresh = root / f"fresh-{a_side}x{b_side}"
    samples["dry run"] = checked(
        measure([repx, "build", "--dry-run", "--json", "--store", str(fresh)], folder),
        "repx build --dry-run")
    samples["dry run --lab"] = checked(
        measure([repx, "build", "--dry-run", "--json", "--store", str(fresh), "--lab",
                 str(lab_dir)], folder), "repx build --dry-run --lab")
    would = json.loads(samples["dry run --lab"].stdout)
    if len(would["would_run"]) != jobs:
        raise SystemExit(f"dry run: {len(would['would_run'])} jobs would run, expected {jobs}")
    store = root / f"store-{a_side}x{b_side}"
    filled = fill_store(store, lab_dir)
    checked(measure([repx, "build", "--dry-run", "--json", "--store", str(store), "--lab",
                     str(lab_dir)], folder), "untimed dry run (writes the no-op index)")
    for name, extra in (("no-op", []), ("no-op --lab", ["--lab", str(lab_dir)])):
        runs = [checked(measure([repx, "build", "--json", "--store", str(store), *extra],
                                folder), f"repx build ({name})") for _ in range(3)]
        for sample in runs:
            summary = json.loads(sample.stdout)
            if summary["executed"] or len(summary["up_to_date"]) != filled:
                raise SystemExit(f"{name}: not a no-op ({len(summary['executed'])} executed)")
        samples[name] = sorted(runs, key=lambda s: s.seconds)[1]  # the median of 3
    # One value of a edited: its b_side combinations (2 jobs each) are new, every other
    # job's id comes from the expansion memo of the lab the no-op builds named.
    write_lab(folder, a_side, b_side=b_side, edited=True)
    samples[ONE_CHANGE] = checked(
        measure([repx, "build", "--dry-run", "--json", "--store", str(store)], folder),
        "repx build --dry-run after one edit")
    changed = json.loads(samples[ONE_CHANGE].stdout)
    if len(changed["would_run"]) != 2 * b_side or len(changed["up_to_date"]) != jobs - 2 * b_side:
        raise SystemExit(f"one change: {len(changed['would_run'])} jobs would run, expected "
                         f"{2 * b_side}")
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(fresh, ignore_errors=True)
    return {"jobs": jobs, "seconds": {k: v.seconds for k, v in samples.items()},
            "rss_mib": {k: v.rss_kib / 1024 for k, v in samples.items()}}


def peak_mib(row: dict[str, Any]) -> float:
    """The largest RSS of the issue's phases (the one-change phase is reported apart)."""
    return max(v for k, v in row["rss_mib"].items() if k != ONE_CHANGE)


def scale_table(rows: list[dict[str, object]]) -> list[str]:
    """The scale table, the growth from the smallest to the largest row, and the targets."""
    phases = ["lab build", "dry run", "dry run --lab", "no-op", "no-op --lab", ONE_CHANGE]
    header = f"{'jobs':>9} " + " ".join(f"{p + ' s':>15}" for p in phases) + \
        f" {'peak RSS MiB':>13} {'1-change MiB':>13}"
    lines = ["scale: an a × b sweep over 2 stages, whole repx processes (no-op: median of 3;"
             " one change: a dry run after one value of a is edited)", header]
    for row in rows:
        seconds, rss = row["seconds"], row["rss_mib"]
        lines.append(f"{row['jobs']:>9} " + " ".join(f"{seconds[p]:>15.2f}" for p in phases)
                     + f" {peak_mib(row):>13.0f} {rss.get(ONE_CHANGE, 0):>13.0f}")
    lines.append(f"{'µs/job':>9} " + " ".join(
        f"{rows[-1]['seconds'][p] / rows[-1]['jobs'] * 1e6:>15.1f}" for p in phases))
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        growth = last["jobs"] / first["jobs"]
        lines.append(f"growth {first['jobs']} -> {last['jobs']} jobs ({growth:.0f}x the jobs); "
                     "time growth / job growth (1.0 = linear):")
        rss_growth = peak_mib(last) / peak_mib(first)
        lines.append("  " + ", ".join(
            f"{p} {last['seconds'][p] / first['seconds'][p] / growth:.2f}" for p in phases)
            + f", peak RSS {rss_growth / growth:.2f}")
    last = rows[-1]
    target_line = ", ".join(f"{p} {last['seconds'][p]:.2f} s / {t:g} s = "
                            f"{last['seconds'][p] / t:.2f}" for p, t in TARGETS.items())
    peak = peak_mib(last) * MIB_TO_MB
    lines.append(f"targets at {last['jobs']} jobs (ratio ≤ 1 meets it): {target_line}, "
                 f"peak RSS {peak:.0f} MB / {RSS_TARGET_MB:g} MB = "
                 f"{peak / RSS_TARGET_MB:.2f}")
    if last["jobs"] != TARGET_JOBS:
        lines.append(f"  (the targets are for {TARGET_JOBS} jobs; this run's largest is "
                     f"{last['jobs']}: see the extrapolation in bench/run.py's table)")
    return lines


def _extrapolate(rows: list[dict[str, Any]], value: Callable[[dict[str, Any]], float]
                 ) -> float:
    """A phase's value at TARGET_JOBS from the measured rows: the line through the smallest
    and largest rows (a fixed start-up cost does not grow), else proportional to the jobs."""
    first, last = rows[0], rows[-1]
    if len(rows) > 1 and last["jobs"] > first["jobs"]:
        slope = (value(last) - value(first)) / (last["jobs"] - first["jobs"])
        return value(last) + slope * (TARGET_JOBS - last["jobs"])
    return value(last) * TARGET_JOBS / last["jobs"]


def target_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's million-job targets as rows for bench/run.py's combined table.

    Each row: ``row`` (what), ``value``, ``target``, ``unit``, ``ratio`` (value / target, ≤ 1
    meets it), ``met`` (None when not measured at the target's size), ``jobs`` (where it was
    measured), ``target_jobs`` and ``note``. Below a million jobs (``--quick``) ``met``
    stays None, and ``extrapolated`` holds the value estimated at a million from the
    measured rows (``why`` for the growth row, which cannot be estimated).
    """
    last = rows[-1]
    at_target = last["jobs"] == TARGET_JOBS
    out: list[dict[str, Any]] = []

    def add(name: str, value: float, target: float, unit: str,
            get: Callable[[dict[str, Any]], float] | None, note: str = "",
            why: str = "") -> None:
        row: dict[str, Any] = {"row": name, "value": value, "target": target, "unit": unit,
                               "ratio": value / target, "jobs": last["jobs"], "note": note,
                               "target_jobs": TARGET_JOBS,
                               "met": value <= target if at_target else None}
        if not at_target and get is not None:
            row["extrapolated"] = _extrapolate(rows, get)
        elif not at_target:
            row["why"] = why
        out.append(row)

    for phase, limit in TARGETS.items():
        add(f"1M jobs: {phase}", last["seconds"][phase], limit, "s",
            lambda r, phase=phase: r["seconds"][phase])
    # Not extrapolated: below a million jobs the peak is Nix's evaluator growing toward the
    # heap it reserves up front (up to 384 MiB), which a line through two sizes overstates
    # (2 280 MB extrapolated from 200 000 jobs, 576 MB measured at a million).
    add("1M jobs: peak RSS", peak_mib(last) * MIB_TO_MB, RSS_TARGET_MB, "MB",
        None, why="not extrapolated (Nix reserves its heap up front); run without --quick")
    if len(rows) > 1:
        first = rows[0]
        growth = last["jobs"] / first["jobs"]
        per_phase = {p: last["seconds"][p] / first["seconds"][p] / growth for p in TARGETS}
        per_phase["peak RSS"] = peak_mib(last) / peak_mib(first) / growth
        worst = max(per_phase, key=per_phase.__getitem__)
        note = f"worst: {worst}; " + ", ".join(f"{p} {g:.2f}" for p, g in per_phase.items())
        row = {"row": f"growth {first['jobs']} -> {last['jobs']} jobs (time / jobs growth)",
               "value": per_phase[worst], "target": LINEAR_TOLERANCE, "unit": "x",
               "ratio": per_phase[worst] / LINEAR_TOLERANCE, "jobs": last["jobs"],
               "target_jobs": TARGET_JOBS,
               "note": note,
               "met": per_phase[worst] <= LINEAR_TOLERANCE if at_target else None}
        if not at_target:
            row["why"] = f"not up to {TARGET_JOBS} jobs (quick run)"
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="20 000 and 200 000 jobs only (no million-job lab)")
    parser.add_argument("--scale-only", action="store_true", help="skip the phase table")
    parser.add_argument("--sides", metavar="AxB,...", default=None,
                        help="the scale table's sweeps instead of the default ones, e.g. "
                             "1000x500 (2 jobs per combination)")
    args = parser.parse_args()
    sides = QUICK_SCALE_SIDES if args.quick else SCALE_SIDES
    if args.sides:
        try:
            sides = tuple((int(a), int(b)) for a, b in
                          (part.split("x") for part in args.sides.split(",")))
        except ValueError:
            parser.error(f"--sides {args.sides}: expected AxB[,AxB...], e.g. 1000x500")
    if not args.scale_only:
        print("\n".join(phases_table(args.quick)), flush=True)
        print()
    rows = []
    with tempfile.TemporaryDirectory(prefix="repx-bench-expand-") as tmp:
        for a_side, b_side in sides:
            rows.append(scale_row(Path(tmp), a_side, b_side))
            print(f"  ({rows[-1]['jobs']} jobs measured)", flush=True)
    lines = scale_table(rows)
    print("\n".join(lines))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "quick": args.quick, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load": os.getloadavg(), "rows": rows, "targets": target_rows(rows)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
