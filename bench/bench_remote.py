"""Shipping a lab to an SSH target, and ``repx build --target`` against the same build run on
the remote directly.

The workload is bench_peers.py's (N independent chains a_i -> b_i of one-line shell jobs).
The target is the test suite's sshd (tests/ssh/sshd.sh: an unprivileged account on
127.0.0.1, no Nix in its namespace), started if it is down, with a fresh ``base_path``:

1. **Shipping** the N-chain lab (default N = 10 000: 20 000 jobs) the first time (repx
   itself and every store path of the closure) and the second time (nothing), bytes and
   seconds, through :func:`repx.remote.ship.ship_lab`.
2. **End to end** on a smaller lab (``--build-n``, default 1 000 chains: 2 000 jobs), with a
   cold remote store each time: ``repx build --target`` here (the lab already shipped; so
   this is the local Nix build of the lab, the check that nothing needs shipping, and the
   remote build with its progress streamed back) against ``ssh HOST <shipped repx> build``
   (what a user logged in there would run).

Run: ``python bench/bench_remote.py`` (``--n 2000 --build-n 200`` for a quick look). Prints
a table; writes ``bench/results/remote.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_peers import write_repx_lab  # noqa: E402

from repx.remote.ship import ensure_repx, ship_lab  # noqa: E402
from repx.remote.targets import find_target  # noqa: E402
from tests.ssh_target import start_rig  # noqa: E402

WORKERS = 2


def run(argv: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """``argv`` (which must succeed) and its wall time."""
    started = time.monotonic()
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds, result


def lab_with_target(folder: Path, n: int, table: str) -> Path:
    write_repx_lab(folder, n)
    (folder / "repx.toml").write_text(table)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="chains of the shipped lab")
    parser.add_argument("--build-n", type=int, default=1_000,
                        help="chains of the end-to-end lab")
    parser.add_argument("--rounds", type=int, default=2,
                        help="end-to-end measurements of each kind (the best is reported)")
    args = parser.parse_args()
    rig = start_rig()
    base = rig.fresh_base_path("bench-remote")
    table = rig.target_table("bench", base)
    root = Path(tempfile.mkdtemp(prefix="repx-bench-remote-"))
    repx = [sys.executable, "-m", "repx.cli"]
    # The load average goes with the numbers: on a shared machine it explains their spread.
    results: dict[str, Any] = {"machine": platform.node(), "cpus": WORKERS, "n": args.n,
                               "build_n": args.build_n, "load_before": os.getloadavg()}
    try:
        big = lab_with_target(root / "big", args.n, table)
        lab_seconds, _ = run([*repx, "lab", "build"], big)
        target = find_target("bench", big)
        shipped = []
        for attempt in ("first", "second"):
            started = time.monotonic()
            remote = ensure_repx(target)
            summary = ship_lab(remote, big / "result")
            shipped.append({"ship": attempt, "seconds": time.monotonic() - started,
                            "paths_sent": summary.paths_sent,
                            "paths_total": summary.paths_total,
                            "bytes_sent": summary.bytes_sent,
                            "repx_bytes": summary.repx_bytes})
        results["lab_build_seconds"] = lab_seconds
        results["shipping"] = shipped

        small = lab_with_target(root / "small", args.build_n, table)
        run([*repx, "build", "--target", "bench", "--dry-run"], small)  # ships it
        remote = ensure_repx(target)
        lab_dir = remote.ssh.run(["cat", f"{base}/last-lab"]).stdout.decode().strip()
        jobs = ["-j", str(WORKERS)]
        direct_argv = remote.ssh.command(remote.argv(
            ["build", "--lab", lab_dir, "--store", remote.store_dir, "--runtime", "bwrap",
             "--json", *jobs]))
        via_target: list[float] = []
        direct: list[float] = []
        executed = 0
        # Alternating rounds, the best of each kept: the machine's other work adds noise.
        for _round in range(args.rounds):
            rig.wipe(f"{base}/store")
            seconds, result = run([*repx, "build", "--target", "bench", "--json", *jobs], small)
            via_target.append(seconds)
            executed = len(json.loads(result.stdout)["executed"])
            rig.wipe(f"{base}/store")
            seconds, result = run(direct_argv, small)
            direct.append(seconds)
            assert len(json.loads(result.stdout)["executed"]) == executed
        results["end_to_end"] = {"jobs": executed, "rounds": args.rounds,
                                 "build_target_seconds": min(via_target),
                                 "remote_direct_seconds": min(direct),
                                 "all_build_target": via_target, "all_direct": direct}
    finally:
        rig.wipe(base)
    results["load_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "remote.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"shipping the {2 * args.n}-job lab (lab build {lab_seconds:.1f} s):")
    print(f"  {'ship':<7} {'paths sent':>12} {'bytes':>12} {'repx bytes':>11} {'seconds':>8}")
    for row in shipped:
        print(f"  {row['ship']:<7} {row['paths_sent']:>5} of {row['paths_total']:<4} "
              f"{row['bytes_sent']:>12} {row['repx_bytes']:>11} {row['seconds']:>8.2f}")
    e = results["end_to_end"]
    print(f"end to end, {e['jobs']} jobs, -j {WORKERS}, cold remote store, best of "
          f"{e['rounds']}: build --target "
          f"{e['build_target_seconds']:.1f} s, on the remote directly "
          f"{e['remote_direct_seconds']:.1f} s "
          f"({e['build_target_seconds'] / e['remote_direct_seconds']:.2f}x)")
    print("load average (1, 5, 15 min) before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}"
          .format(*results["load_before"], *results["load_after"]))


if __name__ == "__main__":
    main()
