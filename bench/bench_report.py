"""``repx report`` of a big sweep: how large the file is, how long it takes to write, and how
long Chromium takes to open it and to filter its job table.

The lab sweeps one param over N/2 values through two stages (N jobs); the store is filled
with records directly (1 % failed, their downstream jobs blocked, durations spread over
0.1–120 s) instead of running N jobs, since what is measured is the report, not the build.

    .venv/bin/python bench/bench_report.py [--jobs 10000]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from repx.lab import LabOptions, open_lab  # noqa: E402
from repx.report import html_report  # noqa: E402
from repx.store import JobRecord, OutputFile, Status, Store  # noqa: E402
from tests.conftest import write_files  # noqa: E402

LAB = {
    "lab.nix": """
        { pkgs, repx-lib, gitHash ? "unknown", ... }:
        repx-lib.mkLab {
          inherit pkgs repx-lib gitHash;
          lab_version = "1.0";
          runs = { sweep = repx-lib.callRun ./run.nix [ ]; };
        }
    """,
    "run.nix": """
        { pkgs, repx-lib, ... }:
        { name = "sweep"; pipelines = [ ./pipe.nix ];
          params = { seed = builtins.genList (i: i) @HALF@; lr = [ 0.1 ]; }; }
    """,
    "pipe.nix": """
        { repx, ... }:
        repx.mkPipe rec {
          train = repx.callStage ./train.nix [ ];
          evaluate = repx.callStage ./evaluate.nix [ train ];
        }
    """,
    "train.nix": """
        { pkgs }:
        { pname = "train"; params = { seed = 0; lr = 0.0; };
          outputs = { model = "$out/model.bin"; }; resources = { mem = "2G"; cpus = 2; };
          run = { outputs, ... }: ''echo > "${outputs.model}"''; }
    """,
    "evaluate.nix": """
        { pkgs }:
        { pname = "evaluate"; inputs = { model = ""; };
          outputs = { score = "$out/score.json"; };
          run = { outputs, ... }: ''echo > "${outputs.score}"''; }
    """,
}


def fill_store(graph, store_dir: Path) -> None:
    """A record per job: train fails for 1 % of seeds, their evaluate stays without one."""
    rng = random.Random(15)
    now = time.time() - 3600
    failed: set[str] = set()
    with Store(store_dir) as store, store.batch():
        for job in graph.jobs.values():
            if any(up in failed for up in job.depends_on):
                continue
            start = now + rng.random() * 3000
            seconds = rng.lognormvariate(1.5, 1.0) if job.pname == "train" else \
                rng.uniform(0.1, 3)
            bad = job.pname == "train" and rng.random() < 0.01
            if bad:
                failed.add(job.id)
            store.put(JobRecord(
                job_id=job.id, status=Status.FAILED if bad else Status.SUCCEEDED,
                exit_code=1 if bad else 0, started=start, finished=start + min(seconds, 120),
                host=f"node{rng.randrange(8):02d}", lab=str(graph.lab.path), run=job.run,
                stage=job.pname, reason="exit code 1" if bad else "",
                outputs=[] if bad else [OutputFile("model.bin", rng.randrange(1 << 20),
                                                   "0" * 64)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="repx-bench-report-") as tmp:
        folder = Path(tmp) / "lab"
        write_files(folder, {k: v.replace("@HALF@", str(args.jobs // 2))
                             for k, v in LAB.items()})
        graph = open_lab(LabOptions(lab_file=str(folder / "lab.nix"), out_link=None),
                         validate=False)
        fill_store(graph, folder / ".repx")
        out = folder / "report.html"
        clock = time.monotonic()
        summary = html_report.write_report(graph, folder / ".repx", out)
        seconds = time.monotonic() - clock
        print(f"jobs            {summary.jobs}")
        print(f"failed          {summary.failed}")
        print(f"report size     {summary.bytes / 1e6:.2f} MB")
        print(f"write time      {seconds:.2f} s")
        if args.no_browser:
            return 0
        from tests.browserutil import Browser

        with Browser() as browser:
            clock = time.monotonic()
            browser.open(out)
            print(f"chromium load   {time.monotonic() - clock:.2f} s (page of 100 rows)")
            clock = time.monotonic()
            rows = browser.evaluate(
                "(() => { const t = document.getElementById('f-text'); t.value = 'seed=42';"
                " t.dispatchEvent(new Event('input'));"
                " return document.querySelectorAll('#jobs tbody tr.job').length; })()")
            print(f"text filter     {time.monotonic() - clock:.3f} s ({rows} rows)")
            clock = time.monotonic()
            rows = browser.evaluate(
                "(() => { document.getElementById('f-text').value = '';"
                " const s = document.getElementById('f-size'); s.value = '0';"
                " s.dispatchEvent(new Event('change'));"
                " return document.querySelectorAll('#jobs tbody tr.job').length; })()")
            print(f"show all rows   {time.monotonic() - clock:.2f} s ({rows} rows)")
            if browser.errors():
                print(f"console errors: {browser.errors()}")
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
