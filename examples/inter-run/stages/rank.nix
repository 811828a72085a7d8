# Ranks the seeds by mean sample value (highest first).
{ pkgs }:
{
  pname = "rank";
  version = "1.0";

  inputs = {
    table = "";
  };

  outputs = {
    ranking = "$out/ranking.json";
  };

  runDependencies = [ pkgs.jq ];

  run = { inputs, outputs, ... }: ''
    jq 'sort_by(-.mean, .seed)
        | to_entries
        | map({rank: (.key + 1), seed: .value.seed, mean: .value.mean})' \
      "${inputs.table}" > "${outputs.ranking}"
  '';
}
