# First stage of the report run. It reads the ranking through the analysis
# run's manifest (hard dependency: analysis succeeded) and looks at the
# simulation run's manifest too (soft dependency: simulation finished, maybe
# not successfully), counting the summaries that actually exist.
{ pkgs }:
{
  pname = "write-report";
  version = "1.0";

  inputs = {
    metadata__analysis = "";
    metadata__simulation = "";
    store__base = "";
  };

  outputs = {
    report = "$out/report.md";
  };

  runDependencies = [ pkgs.jq pkgs.coreutils ];

  run = { inputs, outputs, ... }: ''
    ranking=$(jq -r '.jobs[] | select(.stage == "rank") | .outputs.ranking' \
      "${inputs.metadata__analysis}")
    if [ ! -f "$ranking" ]; then
      echo "no ranking in the analysis manifest" >&2
      exit 1
    fi
    simulations=$(jq '[.jobs[] | select(.stage == "simulate")] | length' \
      "${inputs.metadata__simulation}")
    present=0
    while read -r summary; do
      if [ -f "$summary" ]; then
        present=$((present + 1))
      fi
    done < <(jq -r '.jobs[] | select(.stage == "summarize") | .outputs.summary' \
      "${inputs.metadata__simulation}")
    {
      echo "# Simulation report"
      echo
      echo "simulate jobs: $simulations, summaries present: $present"
      echo
      jq -r '.[] | "\(.rank). seed \(.seed): mean \(.mean)"' "$ranking"
    } > "${outputs.report}"
  '';
}
