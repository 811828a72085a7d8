# First stage of the analysis run. It declares the runtime-provided inputs
#   metadata__simulation: the simulation run's manifest,
#     {"type": "run", "name": "simulation", ..., "jobs": {<id>: {"stage": ...,
#      "params": {...}, "status": ..., "outputs": {name: absolute path}}, ...}}
#   store__base: the base directory of the store.
# It collects the summary of every simulation into one table, sorted by seed.
{ pkgs }:
{
  pname = "aggregate";
  version = "1.0";

  inputs = {
    metadata__simulation = "";
    store__base = "";
  };

  outputs = {
    table = "$out/summaries.json";
  };

  runDependencies = [ pkgs.jq pkgs.findutils pkgs.coreutils ];

  run = { inputs, outputs, ... }: ''
    if [ ! -d "${inputs.store__base}" ]; then
      echo "store base is not a directory: ${inputs.store__base}" >&2
      exit 1
    fi
    jq -r '.jobs[] | select(.stage == "summarize") | .outputs.summary' \
      "${inputs.metadata__simulation}" \
      | xargs -r cat \
      | jq -s 'sort_by(.seed)' > "${outputs.table}"
    found=$(jq 'length' "${outputs.table}")
    if [ "$found" -eq 0 ]; then
      echo "no summarize job in the simulation manifest" >&2
      exit 1
    fi
  '';
}
