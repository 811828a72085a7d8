"""The N-chain workload for doit (copied into the work directory by bench_peers.py).

``config.json`` beside this file gives ``n`` (chains), ``backend`` and ``dep_file``. Each
chain is A_i ``cat p/p_i > a/out_i`` (the parameter lives in a file so one chain can be
invalidated by editing it) and B_i ``cat a/out_i a/out_i > b/out2_i``.
"""

import json
from pathlib import Path

_CONFIG = json.loads((Path(__file__).parent / "config.json").read_text())
N = int(_CONFIG["n"])

DOIT_CONFIG = {"backend": _CONFIG["backend"], "dep_file": _CONFIG["dep_file"]}


def task_A():
    """Stage A: copy the parameter file."""
    for i in range(N):
        yield {
            "name": str(i),
            "file_dep": [f"p/p_{i}"],
            "targets": [f"a/out_{i}"],
            "actions": [f"cat p/p_{i} > a/out_{i}"],
        }


def task_B():
    """Stage B: read A's output and write it twice."""
    for i in range(N):
        yield {
            "name": str(i),
            "file_dep": [f"a/out_{i}"],
            "targets": [f"b/out2_{i}"],
            "actions": [f"cat a/out_{i} a/out_{i} > b/out2_{i}"],
        }
