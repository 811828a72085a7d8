# Summary statistics of one simulation. No params: one job per simulate job.
{ pkgs }:
{
  pname = "summarize";
  version = "1.0";

  inputs = {
    samples = "";
  };

  outputs = {
    summary = "$out/summary.json";
  };

  runDependencies = [ pkgs.jq ];

  run = { inputs, outputs, ... }: ''
    jq '{
      seed,
      count: (.values | length),
      mean: (.values | add / length),
      min: (.values | min),
      max: (.values | max)
    }' "${inputs.samples}" > "${outputs.summary}"
  '';
}
