"""Run every benchmark of bench/ in turn (``make bench``), then one table of the issue's targets.

Each bench prints its own tables and writes ``bench/results/<name>.json``. The closing table
collects, from those files, every target of the performance issue with the measured value,
the target, their ratio (value / target: ≤ 1 meets it) and whether it is met. A result file
written before this run started is not used ("not measured in this run"), so every verdict
in the table comes from the same run and the same machine load.

Run: ``python bench/run.py`` (everything, full sizes), ``--quick`` (each bench's quick mode,
or its smallest sizes when it has none), ``--only peers,expand`` (a subset), ``--table``
(no bench: the table from the result files already in bench/results/), ``--markdown`` (the
table as Markdown, for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: (script, its arguments under --quick). A bench without a ``--quick`` of its own gets its
#: smallest sizes that still show the point.
BENCHES: list[tuple[str, list[str]]] = [
    ("bench_expand.py", ["--quick"]),
    ("bench_peers.py", ["--quick"]),
    ("bench_make.py", ["--n", "500", "--per-job-n", "50"]),
    ("bench_slurm.py", ["--quick"]),
    ("bench_remote.py", ["--n", "2000", "--build-n", "200"]),
    ("bench_runtimes.py", ["--n", "50"]),
    ("bench_report.py", ["--jobs", "1000"]),
]

#: The issue's SLURM targets, checked from bench_slurm.py's slurm.json when it carries no
#: ``targets`` rows of its own.
SLURM_SUBMIT_S = 1.0
SLURM_CANCEL_S = 1.0
SLURM_E2E_RATIO = 1.2

SLURM_ROWS = ("SLURM: submit a stage (whole command)", "SLURM: repx cancel of it",
              "SLURM: end to end vs 1.2x plain sbatch")

#: Where each group of rows comes from, in the issue's order.
SOURCES = (("peers.json", "bench_peers.py"), ("expand.json", "bench_expand.py"),
           ("slurm.json", "bench_slurm.py"))


def short(name: str) -> str:
    """``bench_peers.py`` -> ``peers``: the name ``--only`` takes."""
    return name.removeprefix("bench_").removesuffix(".py")


def byte_compile() -> None:
    """Write repx's bytecode (``.pyc``) before anything is timed, as ``pip install`` does
    for an installed repx: an editable checkout run with PYTHONDONTWRITEBYTECODE set (or
    freshly edited) would otherwise compile every module it imports in every timed
    process, a cost no installed repx has."""
    import compileall

    compileall.compile_dir(str(HERE.parent / "repx"), quiet=1)


def run_benches(names: Sequence[str], quick: bool) -> int:
    """Run the benches one after the other (never two at once: they time whole processes),
    repx byte-compiled first (:func:`byte_compile`)."""
    byte_compile()
    status = 0
    for name, quick_args in BENCHES:
        if short(name) not in names:
            continue
        argv = [sys.executable, str(HERE / name), *(quick_args if quick else [])]
        print(f"\n== {name} {' '.join(argv[2:])}".rstrip(), flush=True)
        status |= subprocess.run(argv, check=False).returncode
    return status


def slurm_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The three SLURM targets from slurm.json's measurements; a part the run skipped
    (``bench_slurm.py --only``) gives rows that say so."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float, target: float, jobs: int, note: str = "") -> None:
        rows.append({"row": name, "value": value, "target": target, "unit": "s",
                     "ratio": value / target, "met": value <= target, "jobs": jobs,
                     "note": note})

    submit = data.get("repx_submit")
    if submit:
        add(SLURM_ROWS[0], submit["seconds_whole"], SLURM_SUBMIT_S, submit["jobs"],
            f"{submit.get('sbatch_calls', '?')} sbatch calls; in process "
            f"{submit.get('seconds_in_process', float('nan')):.3f} s")
        add(SLURM_ROWS[1], submit["cancel_s"], SLURM_CANCEL_S, submit["jobs"])
    else:
        rows += [{"row": name, "missing": "not in slurm.json (its run skipped 'submit')"}
                 for name in SLURM_ROWS[:2]]
    e2e = data.get("e2e")
    if e2e and e2e.get("repx") and e2e.get("plain"):
        plain = statistics.median(x["seconds"] for x in e2e["plain"])
        repx = statistics.median(x["seconds"] for x in e2e["repx"])
        add(SLURM_ROWS[2], repx, SLURM_E2E_RATIO * plain, e2e["jobs"],
            f"plain sbatch arrays {plain:.2f} s, repx {repx:.2f} s: "
            f"{repx / plain:.3f}x (median of {len(e2e['repx'])})")
    else:
        rows.append({"row": SLURM_ROWS[2], "missing": "not in slurm.json (its run skipped 'e2e')"})
    return rows


def missing_rows(source: str, why: str) -> list[dict[str, Any]]:
    """Placeholder rows for a bench whose results are absent or unreadable."""
    names = {
        "peers.json": ["cold vs doit + LMDB", "cold vs 1.5x baseline (a)",
                       "no-op vs 1.5x stat walk", "one change vs 1.2x no-op",
                       "peak RSS (repx, any phase)"],
        "expand.json": ["1M jobs: lab build", "1M jobs: dry run", "1M jobs: no-op",
                        "1M jobs: peak RSS", "growth 20000 -> 1000000 jobs"],
        "slurm.json": list(SLURM_ROWS),
    }[source]
    return [{"row": name, "missing": why} for name in names]


def collect(since: float | None) -> list[dict[str, Any]]:
    """Every target row, from the result files written at or after ``since`` (any age when
    None)."""
    rows: list[dict[str, Any]] = []
    for source, bench in SOURCES:
        path = RESULTS / source
        if not path.exists():
            rows += missing_rows(source, f"not measured ({bench} wrote no {source})")
            continue
        written = path.stat().st_mtime
        if since is not None and written < since:
            rows += missing_rows(source, "not measured in this run")
            continue
        try:
            data = json.loads(path.read_text())
            found = data["targets"] if "targets" in data else slurm_rows(data)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError,
                statistics.StatisticsError) as exc:
            rows += missing_rows(source, f"unreadable {source}: {type(exc).__name__} {exc}")
            continue
        when = time.strftime("%H:%M", time.localtime(written))
        rows += [{**row, "source": source, "when": when,
                  "quick": bool(data.get("quick"))} for row in found]
    return rows


def number(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    digits = 0 if unit == "MB" else 2 if unit == "x" or value >= 10 else 3
    return f"{value:.{digits}f} {unit}"


def status(row: dict[str, Any]) -> str:
    """met / NOT met, or why there is no verdict (and the million-job extrapolation)."""
    if "missing" in row:
        return row["missing"]
    if row.get("met") is None:
        if "extrapolated" in row:
            guess = row["extrapolated"]
            verdict = "would meet" if guess <= row["target"] else "would miss"
            return f"– at 1M ~{number(guess, row['unit'])} ({verdict}; extrapolated)"
        return f"– {row.get('why') or 'a figure is missing'}"
    verdict = "met" if row["met"] else "NOT met"
    wanted = row.get("target_jobs")
    if wanted and row.get("jobs") and row["jobs"] != wanted:
        verdict += f" (at {row['jobs']} jobs; stated for {wanted})"
    return verdict


def table(rows: list[dict[str, Any]], markdown: bool) -> list[str]:
    """The rows as a fixed-width table (or Markdown)."""
    cells = []
    for row in rows:
        if "missing" in row:
            cells.append([row["row"], "", "", "", "", status(row), ""])
            continue
        ratio = "–" if row.get("ratio") is None else f"{row['ratio']:.2f}"
        cells.append([row["row"], f"{row['jobs']}", number(row.get("value"), row["unit"]),
                      number(row.get("target"), row["unit"]), ratio, status(row),
                      f"{row['source']} {row['when']}"])
    head = ["target", "jobs", "measured", "target value", "ratio", "status", "from"]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|---|---|"]
        return lines + ["| " + " | ".join(c) + " |" for c in cells]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    right = {1, 2, 3, 4}

    def line(c: list[str]) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w)
                         for i, (v, w) in enumerate(zip(c, widths, strict=True))).rstrip()

    return [line(head), *(line(c) for c in cells)]


def report(rows: list[dict[str, Any]], markdown: bool) -> list[str]:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    quick = any(r.get("quick") for r in rows)
    lines = [f"targets of the performance issue (ratio = measured / target, <= 1 meets it; "
             f"load average now {load}{'; QUICK run: smaller sizes' if quick else ''})"]
    lines += table(rows, markdown)
    notes = [f"  {r['row']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        lines += ["notes:", *notes]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="each bench's quick mode (or smallest sizes)")
    parser.add_argument("--only", default=",".join(short(n) for n, _ in BENCHES),
                        help="comma-separated benches to run, e.g. peers,expand")
    parser.add_argument("--table", action="store_true",
                        help="run nothing: the targets table from bench/results/ as it is")
    parser.add_argument("--markdown", action="store_true", help="the targets table as Markdown")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - {short(n) for n, _ in BENCHES}
    if unknown:
        parser.error(f"unknown benches: {', '.join(sorted(unknown))} "
                     f"(known: {', '.join(short(n) for n, _ in BENCHES)})")
    started = time.time()
    code = 0 if args.table else run_benches(names, args.quick)
    print()
    print("\n".join(report(collect(None if args.table else started), args.markdown)))
    return code


if __name__ == "__main__":
    sys.exit(main())
