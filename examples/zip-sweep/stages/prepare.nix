# Declares only "workload": the 6 combinations collapse to 3 distinct jobs
# (mode and multiplier are not this stage's params, so they do not split it).
{ pkgs }:
{
  pname = "prepare";
  version = "1.0";

  params = {
    workload = "a";
  };

  outputs = {
    items = "$out/items.txt";
  };

  runDependencies = [ pkgs.coreutils ];

  run = { outputs, params, ... }: ''
    workload="${params.workload}"
    case "$workload" in
      a) start=1 ;;
      b) start=10 ;;
      c) start=100 ;;
      *) echo "unknown workload: $workload" >&2; exit 1 ;;
    esac
    seq "$start" "$((start + 4))" > "${outputs.items}"
  '';
}
