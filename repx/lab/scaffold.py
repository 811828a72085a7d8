"""``repx init``: a small working lab to start from.

The scaffold is the quickstart's first step, so it must build and run as it is, on a
machine with nothing but the host package set: its stage scripts use only ``awk``
(``pkgs.gawk``), pass shellcheck, and call no command their ``runDependencies`` do not
provide. It is a real sweep (2 seeds × 2 sizes) so that ``repx build`` after changing one
param visibly runs only the new jobs. The templates live here as strings rather than as
package data: there are few of them and they must stay in step with this module's tests.
"""

from __future__ import annotations

from pathlib import Path

from repx.errors import UsageError

LAB_NIX = """\
# The lab: every run of the experiment. `repx build` in this folder builds this file
# with Nix (checking every stage script first) and runs the jobs not yet in ./.repx.
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
let
  # A run: a pipeline and the params it sweeps. The list is the runs it depends on.
  sweep = repx-lib.callRun ./runs/sweep.nix [ ];
in
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "0.1.0";
  runs = {
    inherit sweep;
  };
}
"""

RUN_NIX = """\
# The run "sweep": the pipeline in ../pipelines/main.nix under every combination
# of these params (the cartesian product: 2 seeds x 2 sizes = 4 combinations).
# A plain key sets the param of every stage that declares it; "generate.n" (dot
# notation: <stage pname>.<param>) sets it for the stage "generate" only.
{ pkgs, repx-lib, ... }:
{
  name = "sweep";
  pipelines = [ ../pipelines/main.nix ];
  params = {
    seed = [ 1 2 ];
    "generate.n" = [ 100 1000 ];
  };
}
"""

PIPELINE_NIX = """\
# The pipeline: its stages and how their outputs feed each other's inputs.
# `[ generate ]` maps generate's output "samples" to summarize's input of the
# same name (write [ [ generate "samples" "other_name" ] ] to map it explicitly).
{ repx, pkgs, ... }:
repx.mkPipe rec {
  generate = repx.callStage ../stages/generate.nix [ ];
  summarize = repx.callStage ../stages/summarize.nix [ generate ];
}
"""

GENERATE_NIX = """\
# Stage 1: n pseudo-random numbers in [0, 1) from a generator seeded with `seed`.
# `params` are the defaults; the run overrides them. The same params always give
# the same file, so a job's result depends only on what its id covers.
{ pkgs }:
{
  pname = "generate";
  version = "1.0";

  params = {
    n = 100;
    seed = 1;
  };

  outputs = {
    samples = "$out/samples.csv";
  };

  # The commands the script calls; repx checks the script against this list.
  runDependencies = [ pkgs.gawk ];

  run = { outputs, params, ... }: ''
    awk -v n="${toString params.n}" -v seed="${toString params.seed}" 'BEGIN {
      print "i,value"
      state = seed
      for (i = 1; i <= n; i++) {
        state = (state * 75 + 74) % 65537
        printf "%d,%.6f\\n", i, state / 65537
      }
    }' > "${outputs.samples}"
  '';
}
"""

SUMMARIZE_NIX = """\
# Stage 2: count, mean, min and max of the numbers generate wrote, as JSON.
# It declares no params, so it runs once per generate job (4 jobs).
{ pkgs }:
{
  pname = "summarize";
  version = "1.0";

  inputs = {
    samples = "";  # required: provided by the pipeline (generate's "samples")
  };

  outputs = {
    summary = "$out/summary.json";
  };

  runDependencies = [ pkgs.gawk ];

  run = { inputs, outputs, ... }: ''
    awk -F, 'NR > 1 {
      k++; s += $2
      if (k == 1 || $2 < lo) lo = $2
      if (k == 1 || $2 > hi) hi = $2
    }
    END {
      printf "{\\"count\\": %d, \\"mean\\": %.6f, ", k, s / k
      printf "\\"min\\": %.6f, \\"max\\": %.6f}\\n", lo, hi
    }' "${inputs.samples}" > "${outputs.summary}"
  '';
}
"""

README_MD = """\
# A repx lab

Made by `repx init`. It runs a small experiment: draw `n` pseudo-random numbers
with a given `seed`, then summarize them, for 2 seeds x 2 sizes.

```
generate (n, seed) --samples.csv--> summarize --> summary.json
```

## Files

- `lab.nix`: the lab, i.e. its runs (here one, `sweep`). `repx build` builds
  this file.
- `runs/sweep.nix`: the run: which pipeline, and the params it sweeps
  (`seed = [ 1 2 ]` and `"generate.n" = [ 100 1000 ]`: 4 combinations).
- `pipelines/main.nix`: the pipeline: its stages and how outputs feed inputs
  (`summarize` reads the `samples` that `generate` writes).
- `stages/generate.nix`: a stage: params with defaults, declared outputs,
  `runDependencies` (the commands it may call) and the bash script.
- `stages/summarize.nix`: a stage with a required input and no params.
- `.gitignore`: keeps `result` (the built lab) and `.repx/` (the job store)
  out of git.

## Use it

```sh
repx build                      # build the lab, run its 8 jobs (4 generate, 4 summarize)
repx status                     # jobs per run: succeeded, failed, not run
repx list jobs                  # every job with its params
repx show <job-id-prefix>       # one job: params, inputs, outputs, logs
```

Change a param, e.g. `seed = [ 1 2 3 ];` in `runs/sweep.nix`, and run
`repx build` again: only the 4 new jobs run, the others are up to date in the
store (`.repx/`). Outputs are in `.repx/outputs/<job-id>/out/`.

Analyse the results in Python (`pip install 'repx[analysis]'` for pandas):

```python
from repx.analysis import Experiment

exp = Experiment("result", store=".repx")
print(exp.jobs(stage="summarize").to_dataframe())   # one row per job, params as columns
print(exp.collect("summary"))                       # every summary.json, with its params
```

Stage scripts run under `set -euo pipefail` with `$out` as working directory and
only their `runDependencies` (plus bash, coreutils, findutils, sed, grep and jq)
on `PATH`; `repx build` refuses a script that calls anything else, or that
shellcheck warns about.
"""

GITIGNORE = """\
result
result-*
.repx/
"""

#: The files ``repx init`` writes, relative to the lab folder.
FILES: dict[str, str] = {
    "lab.nix": LAB_NIX,
    "runs/sweep.nix": RUN_NIX,
    "pipelines/main.nix": PIPELINE_NIX,
    "stages/generate.nix": GENERATE_NIX,
    "stages/summarize.nix": SUMMARIZE_NIX,
    "README.md": README_MD,
    ".gitignore": GITIGNORE,
}


def init_lab(folder: Path, *, force: bool = False) -> list[Path]:
    """Write the scaffold into ``folder`` (created if missing); return the files written.

    Refuses (UsageError) when any of its files already exists, unless ``force``: a lab
    folder someone already worked in must not be overwritten by accident.
    """
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} exists and is not a folder")
    existing = [name for name in FILES if (folder / name).exists()]
    if existing and not force:
        raise UsageError(f"{folder} already has {', '.join(existing)}; choose an empty "
                         "folder, or pass --force to overwrite these files")
    written = []
    for name, text in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
