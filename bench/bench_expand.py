"""How long a 10 000-combination sweep takes to evaluate, build and expand.

Three phases are timed separately, each the median of a few repetitions:

* Nix evaluation: ``nix-instantiate`` of the lab (no build);
* lab build: ``nix-build`` of the already evaluated lab (scripts cached by Nix);
* expansion + hashing: Python loading the blueprint and computing every job id.

Run: ``python bench/bench_expand.py`` (``make bench`` runs every bench).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from repx.lab.blueprint import load_lab  # noqa: E402
from repx.lab.expand import expand_lab  # noqa: E402
from repx.lab.nix import NIX_DIR, NIX_OPTIONS  # noqa: E402


def write_lab(folder: Path, side: int, dynamic: bool = False) -> None:
    """A lab with one run sweeping a × b (side × side combinations) over two stages.

    With ``dynamic`` the first stage's outputs are a ``{ params }:`` function, which
    Nix evaluates once per combination.
    """
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
              params = {{ a = repx-lib.utils.range 1 {side}; b = repx-lib.utils.range 1 {side}; }};
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


def main() -> None:
    rows = []
    for side, dynamic in ((10, False), (32, False), (100, False), (100, True)):
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
    print("expansion of an a × b sweep over 2 stages (median of 3)")
    print(f"{'combinations':>12} {'dynamic':>7} {'jobs':>7} {'nix eval s':>11} {'lab build s':>12} "
          f"{'expand+hash s':>14} {'µs/job':>7}")
    for combos, dynamic, jobs, evaluation, build, expansion in rows:
        flag = "yes" if dynamic else "no"
        print(f"{combos:>12} {flag:>7} {jobs:>7} {evaluation:>11.3f} {build:>12.3f} "
              f"{expansion:>14.3f} "
              f"{expansion / jobs * 1e6:>7.1f}")


if __name__ == "__main__":
    main()
