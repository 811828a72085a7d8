"""``make -j2 -f lab.mk`` (the Makefile of ``repx makefile``) against ``repx build -j2``.

The workload is bench_peers.py's (N independent chains a_i -> b_i of one-line shell jobs,
2N jobs), the same built lab for every driver, each into a store of its own:

* ``repx build``: ``repx build -j 2 --lab LAB --store DIR --json``;
* ``make``: ``repx makefile --lab LAB --store DIR -o lab.mk``, then ``make -j2 -f lab.mk``
  (one recipe per run, a ``repx build`` taking its slots from make's jobserver);
* ``make per-job`` (only at ``--per-job-n``, it is slow): the design the generated Makefile
  had before, one recipe per job (``repx build --make-stamps JOB`` after its producer's
  stamp), to show what one Python start, lab load and store open per job costs.

Phases: cold (untimed reset, ``sync``, every job), then no-op (the same command again, median
of 3; make must say "Nothing to be done", repx must find every job up to date). Every cold run
is checked: the store holds 2N succeeded jobs afterwards.

Run: ``python bench/bench_make.py`` (N = 1 000 and 10 000: 2 000 and 20 000 jobs),
``--n 500`` (comma-separated), ``--per-job-n 100``. Results: a table on stdout and
``bench/results/make.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_peers import (  # noqa: E402  (bench/ is not a package)
    RESULTS,
    WORKERS,
    BenchError,
    Sample,
    _tool,
    checked,
    measure,
    settle,
    write_repx_lab,
)

NOOP_REPEAT = 3
#: The issue's bound: make within 1.5x of repx build, cold.
TARGET_RATIO = 1.5


@dataclass
class Row:
    """One driver at one N: cold and no-op wall seconds (and CPU seconds, cold)."""

    driver: str
    jobs: int
    cold_s: float | None = None
    cold_cpu_s: float | None = None
    noop_s: float | None = None
    noop_samples: list[float] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def succeeded_jobs(repx: str, lab: str, store: Path, folder: Path) -> int:
    """How many of the lab's jobs the store holds done (``repx build --dry-run``)."""
    dry = checked(measure([repx, "build", "--dry-run", "--json", "--lab", lab, "--store",
                           str(store)], folder), "repx build --dry-run")
    return len(json.loads(dry.stdout)["up_to_date"])


def timed(row: Row, command: list[str], folder: Path, *, reset: Path, jobs_done: Any,
          noop_check: Any) -> None:
    """Cold (from an empty store) then the no-op median; both checked."""
    if reset.exists():
        shutil.rmtree(reset)
    settle()
    cold = checked(measure(command, folder), f"{row.driver} cold")
    row.cold_s, row.cold_cpu_s = cold.seconds, cold.cpu_s
    done = jobs_done()
    if done != row.jobs:
        raise BenchError(f"{row.driver}: {done} jobs done after the cold run, not {row.jobs}")
    samples: list[Sample] = []
    for _ in range(NOOP_REPEAT):
        sample = checked(measure(command, folder), f"{row.driver} no-op")
        noop_check(sample)
        samples.append(sample)
    row.noop_samples = [round(s.seconds, 4) for s in samples]
    row.noop_s = statistics.median(s.seconds for s in samples)


def per_job_makefile(lab_mk: str, jobs: list[dict[str, Any]]) -> str:
    """lab.mk's header with one rule per job instead of one per run (the former design)."""
    header = lab_mk.split("\n.SUFFIXES:")[0]
    lines = [header, ".SUFFIXES:", "all: " + " ".join(f"$(S)/{j['id']}/repx/make.stamp"
                                                     for j in jobs)]
    for job in jobs:
        deps = " ".join(f"$(S)/{d}/repx/make.stamp" for d in job["depends_on"])
        lines.append(f"$(S)/{job['id']}/repx/make.stamp: {deps}")
        lines.append(f"\t+$(Q)$(REPX_BUILD) {job['id']}")
    return "\n".join(lines) + "\n"


def bench_n(root: Path, n: int, per_job: bool) -> list[Row]:
    repx, make = _tool("repx"), shutil.which("make")
    if make is None:
        raise BenchError("GNU make is not installed")
    folder = root / f"n{n}"
    write_repx_lab(folder, n)
    built = json.loads(checked(measure([repx, "lab", "build", "--json"], folder),
                               "repx lab build").stdout)
    lab = built["lab"]
    rows = []

    row = Row("repx build", 2 * n)
    store = root / f"n{n}-build"
    try:
        def build_noop(sample: Sample) -> None:
            if len(json.loads(sample.stdout)["up_to_date"]) != 2 * n:
                raise BenchError("repx build no-op did not find every job up to date")
        timed(row, [repx, "build", "-j", str(WORKERS), "--lab", lab, "--store", str(store),
                    "--json"], folder, reset=store,
              jobs_done=lambda: succeeded_jobs(repx, lab, store, folder), noop_check=build_noop)
    except BenchError as exc:
        row.error = str(exc)
    rows.append(row)

    variants = [("make", "lab.mk")] + ([("make per-job", "per-job.mk")] if per_job else [])
    for driver, name in variants:
        row = Row(driver, 2 * n)
        store = root / f"n{n}-{name}"
        checked(measure([repx, "makefile", "--lab", lab, "--store", str(store), "-o",
                         str(folder / "lab.mk")], folder), "repx makefile")
        if name == "per-job.mk":
            jobs = json.loads(checked(measure([repx, "list", "jobs", "--json", "--lab", lab],
                                              folder), "repx list jobs").stdout)
            (folder / name).write_text(per_job_makefile((folder / "lab.mk").read_text(), jobs))
        try:
            def make_noop(sample: Sample, driver: str = driver) -> None:
                if "Nothing to be done" not in sample.stdout:
                    raise BenchError(f"{driver}: the second make ran something")
            timed(row, [make, f"-j{WORKERS}", "-f", name], folder, reset=store,
                  jobs_done=lambda store=store: succeeded_jobs(repx, lab, store, folder),
                  noop_check=make_noop)
        except BenchError as exc:
            row.error = str(exc)
        rows.append(row)
    return rows


def table(rows: list[Row]) -> str:
    out = ["| driver | jobs | cold s | cold CPU s | no-op s | cold / repx build |",
           "|---|---:|---:|---:|---:|---:|"]
    ref: Row | None = None
    for r in rows:
        if r.driver == "repx build":
            ref = r  # each size's make rows follow its repx build row
        if r.error:
            out.append(f"| {r.driver} | {r.jobs} | error: {r.error.splitlines()[0]} | | | |")
            continue
        ratio = (f"{r.cold_s / ref.cold_s:.2f}x" if ref and ref.cold_s and r.cold_s
                 else "")
        out.append(f"| {r.driver} | {r.jobs:,} | {r.cold_s:.2f} | {r.cold_cpu_s:.2f} | "
                   f"{r.noop_s:.3f} | {ratio} |".replace(",", " "))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1000,10000",
                        help="chains per lab, comma-separated (2N jobs each)")
    parser.add_argument("--per-job-n", type=int, default=100,
                        help="also time the one-recipe-per-job Makefile at this N (0: never)")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.n.split(",") if x]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="repx-bench-make-") as tmp:
        root = Path(tmp)
        if args.per_job_n:
            rows += bench_n(root, args.per_job_n, per_job=True)
        for n in sizes:
            rows += bench_n(root, n, per_job=False)
    print(table(rows))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "make.json").write_text(json.dumps({
        "machine": {"python": platform.python_version(), "cpus": _cpus(),
                    "system": platform.platform()},
        "workers": WORKERS, "rows": [r.to_dict() for r in rows]}, indent=2) + "\n")
    slow = [r for r in rows if r.driver == "make" and not r.error and _ratio(rows, r) and
            _ratio(rows, r) > TARGET_RATIO]  # type: ignore[operator]
    errors = [r for r in rows if r.error]
    for r in slow:
        print(f"make at {r.jobs} jobs is {_ratio(rows, r):.2f}x repx build "
              f"(target {TARGET_RATIO}x)", file=sys.stderr)
    return 1 if errors or slow else 0


def _ratio(rows: list[Row], row: Row) -> float | None:
    """``row``'s cold time over that of the repx build row measured just before it."""
    before = rows[:rows.index(row)]
    ref = next((r for r in reversed(before) if r.driver == "repx build"), None)
    if ref is None or not ref.cold_s or not row.cold_s:
        return None
    return row.cold_s / ref.cold_s


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
