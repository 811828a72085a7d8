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
      printf "{\"count\": %d, \"mean\": %.6f, ", k, s / k
      printf "\"min\": %.6f, \"max\": %.6f}\n", lo, hi
    }' "${inputs.samples}" > "${outputs.summary}"
  '';
}
