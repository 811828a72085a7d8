# Declares only "workload", like prepare, but it still runs 6 times: a job's
# identity includes its upstream job, and each of the 6 process jobs is different.
{ pkgs }:
{
  pname = "tally";
  version = "1.0";

  params = {
    workload = "a";
  };

  inputs = {
    result = "";
  };

  outputs = {
    tally = "$out/tally.txt";
  };

  runDependencies = [ pkgs.coreutils ];

  run = { inputs, outputs, params, ... }: ''
    line=$(cat "${inputs.result}")
    value=$(printf '%s\n' "$line" | sed -n 's/.*result=\([0-9]*\)$/\1/p')
    if [ -z "$value" ]; then
      echo "no result in: $line" >&2
      exit 1
    fi
    printf 'workload %s: %s (from "%s")\n' "${params.workload}" "$value" "$line" \
      > "${outputs.tally}"
  '';
}
