"""Run every benchmark of bench/ in turn (``make bench``); each prints its own table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = ["bench_expand.py", "bench_peers.py", "bench_make.py", "bench_slurm.py",
           "bench_runtimes.py", "bench_report.py"]


def main() -> int:
    here = Path(__file__).resolve().parent
    status = 0
    for name in BENCHES:
        print(f"\n== {name}", flush=True)
        status |= subprocess.run([sys.executable, str(here / name)], check=False).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
