# Declares workload, mode and multiplier: one job per combination (6).
# Its output file name and its resource hints depend on the params
# (dynamic attributes, resolved per combination).
{ pkgs }:
{
  pname = "process";
  version = "1.0";

  params = {
    workload = "a";
    mode = "fast";
    multiplier = 1;
  };

  inputs = {
    items = "";
  };

  outputs = { params }: {
    result = "$out/result-${params.mode}.txt";
  };

  resources = { params }: {
    mem = if params.mode == "slow" then "2G" else "1G";
    cpus = 1;
    time = "00:10:00";
  };

  runDependencies = [ pkgs.coreutils ];

  run = { inputs, outputs, params, ... }: ''
    mode="${params.mode}"
    multiplier="${toString params.multiplier}"
    sum=0
    case "$mode" in
      fast)
        # Add the whole file at once.
        sum=$(paste -sd+ "${inputs.items}")
        sum=$((sum))
        ;;
      slow)
        # The same sum, one line at a time.
        while read -r value; do
          sum=$((sum + value))
        done < "${inputs.items}"
        ;;
      *)
        echo "unknown mode: $mode" >&2
        exit 1
        ;;
    esac
    echo "workload=${params.workload} mode=$mode multiplier=$multiplier result=$((sum * multiplier))" \
      > "${outputs.result}"
  '';
}
