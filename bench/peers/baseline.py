"""The "no engine" floor: spawn a list of jobs with a few threads, dependencies first.

Usage: ``python baseline.py run JOBS.json THREADS`` or ``python baseline.py stat FILES.json``.

``JOBS.json`` is a list of ``{"argv": [...], "deps": [index, ...], "log": "prefix" | null}``.
A job starts once every job it depends on has succeeded; a job made ready by a finishing job
runs next (depth first), so chains are walked chain by chain as the peer measurements did.
With ``log`` the job's stdout and stderr go to ``<log>stdout.log`` / ``<log>stderr.log``
(what an engine that keeps logs pays), else to /dev/null; stdin is /dev/null and each job
leads its own session, as repx starts its jobs. No store, no status check, no
hashing: whatever an engine spends above this is its own overhead.

``stat`` is the make-style no-op floor: one ``os.stat`` per file and an mtime comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import deque
from typing import Any


def run_jobs(jobs: list[dict[str, Any]], threads: int) -> int:
    """Run every job; return how many failed (a failed job's dependents are skipped)."""
    waiting = [len(job["deps"]) for job in jobs]
    dependents: list[list[int]] = [[] for _ in jobs]
    for index, job in enumerate(jobs):
        for dep in job["deps"]:
            dependents[dep].append(index)
    ready = deque(i for i, count in enumerate(waiting) if count == 0)
    lock = threading.Condition()
    state = {"running": 0, "failed": 0}

    def worker() -> None:
        while True:
            with lock:
                while not ready and state["running"]:
                    lock.wait()
                if not ready:
                    lock.notify_all()
                    return
                index = ready.popleft()
                state["running"] += 1
            job = jobs[index]
            if job.get("log"):
                with open(job["log"] + "stdout.log", "wb") as out, \
                        open(job["log"] + "stderr.log", "wb") as err:
                    code = subprocess.run(job["argv"], stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=err, start_new_session=True,
                                          check=False).returncode
            else:
                code = subprocess.run(job["argv"], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True, check=False).returncode
            with lock:
                state["running"] -= 1
                if code:
                    state["failed"] += 1
                else:
                    for child in reversed(dependents[index]):
                        waiting[child] -= 1
                        if waiting[child] == 0:
                            ready.appendleft(child)
                lock.notify_all()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return state["failed"]


def stat_files(groups: list[list[str]]) -> int:
    """Each group is [input, output]: count outputs older than their input (0 = no-op)."""
    stale = 0
    for source, target in groups:
        if os.stat(source).st_mtime_ns > os.stat(target).st_mtime_ns:
            stale += 1
    return stale


def main() -> int:
    mode, path = sys.argv[1], sys.argv[2]
    with open(path) as handle:
        data = json.load(handle)
    if mode == "stat":
        return 1 if stat_files(data) else 0
    failed = run_jobs(data, int(sys.argv[3]))
    if failed:
        print(f"baseline: {failed} jobs failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
