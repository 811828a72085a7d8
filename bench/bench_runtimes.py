"""Per-job overhead of the bwrap, podman and docker runtimes against native.

The workload is bench_peers.py's: N independent 2-stage chains (2N one-line shell jobs), run
by ``repx build -j 2`` cold (a fresh store) once per runtime, on the same lab in the same
invocation, so the ratios to native are meaningful even when absolute times are noisy.
podman runs on a private storage (``--root`` in a temp dir) with this machine's settings;
the run's image is loaded before the timed build (a build loads it once; its load time is
reported on its own). docker is measured only with ``--runtimes …,docker`` and a daemon
(``DOCKER_HOST``).

Run: ``python bench/bench_runtimes.py`` (N=250: 500 jobs), ``--n 100``,
``--runtimes native,bwrap``. Prints a table; writes ``bench/results/runtimes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
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

from repx.engine.runtimes.containers import CONTAINERS_CONF_TEXT  # noqa: E402
from repx.lab.images import lab_images, load_image  # noqa: E402

WORKERS = 2


def repx(*args: str, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """``repx ARGS --json`` (which must succeed); its JSON summary."""
    result = subprocess.run([sys.executable, "-m", "repx.cli", *args, "--json"], cwd=cwd,
                            env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"repx {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=250, help="chains (2N jobs; default 250)")
    parser.add_argument("--runtimes", default="native,bwrap,podman",
                        help="comma-separated (default native,bwrap,podman)")
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")
    root = Path(tempfile.mkdtemp(prefix="repx-bench-runtimes-"))
    runroot = Path(tempfile.mkdtemp(prefix="rbr-", dir="/tmp"))  # podman: < 50 characters
    try:
        folder = root / "lab"
        write_repx_lab(folder, args.n)
        conf = root / "containers.conf"
        conf.write_text(CONTAINERS_CONF_TEXT)
        podman = ["podman", "--root", str(root / "podman"), "--runroot", str(runroot),
                  "--runtime", "runc", "--cgroup-manager=cgroupfs", "--events-backend=none"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(root / "cache"),
               "REPX_PODMAN": shlex.join(podman), "CONTAINERS_CONF": str(conf)}
        # Build the lab (untimed) and load its image where a container runtime needs it.
        repx("lab", "build", cwd=folder, env=env)
        image = lab_images((folder / "result").resolve())["lab"]
        loads: dict[str, float] = {}
        engines = {"podman": podman, "docker": ["docker"]}
        for runtime in runtimes:
            if runtime in engines:
                clock = time.monotonic()
                load_image(image, engines[runtime], env=env)
                loads[runtime] = time.monotonic() - clock
        rows: dict[str, dict[str, Any]] = {}
        for runtime in runtimes:
            subprocess.run(["sync"], check=False)
            clock = time.monotonic()
            summary = repx("build", "-j", str(WORKERS), "--store", str(root / f"s-{runtime}"),
                           "--runtime", runtime, "-q", cwd=folder, env=env)
            seconds = time.monotonic() - clock
            if len(summary["executed"]) != 2 * args.n:
                sys.exit(f"{runtime}: {len(summary['executed'])} jobs ran, not {2 * args.n}")
            rows[runtime] = {"seconds": seconds, "jobs": 2 * args.n,
                             "ms_per_job": 1000 * seconds * WORKERS / (2 * args.n),
                             "image_load_s": loads.get(runtime)}
        native = rows.get("native", {}).get("seconds")
        print(f"{2 * args.n} jobs (N={args.n} chains), -j {WORKERS}, cold, "
              f"{platform.node()} ({os.cpu_count()} CPUs)")
        print(f"{'runtime':<8} {'wall s':>8} {'ms/job/slot':>12} {'x native':>9} {'load s':>7}")
        for runtime, row in rows.items():
            ratio = f"{row['seconds'] / native:.2f}" if native else "-"
            load = f"{row['image_load_s']:.2f}" if row["image_load_s"] is not None else "-"
            print(f"{runtime:<8} {row['seconds']:>8.2f} {row['ms_per_job']:>12.1f} "
                  f"{ratio:>9} {load:>7}")
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "runtimes.json").write_text(json.dumps(
            {"n": args.n, "workers": WORKERS, "runtimes": rows}, indent=1) + "\n")
    finally:
        subprocess.run([*podman, "rmi", "--all", "--force"], capture_output=True, check=False,
                       env={**os.environ, "CONTAINERS_CONF": str(root / "containers.conf")})
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


if __name__ == "__main__":
    main()
