# workload is a normal (cartesian) axis; mode and multiplier move in lockstep:
# fast <-> 2 and slow <-> 3, never fast <-> 3.
# Combinations: 3 workloads x 2 zipped rows = 6.
{ pkgs, repx-lib, ... }:
{
  name = "zip-sweep";
  pipelines = [ ../pipelines/main.nix ];
  params = {
    workload = [ "a" "b" "c" ];
    config = repx-lib.utils.zip {
      mode = [ "fast" "slow" ];
      multiplier = [ 2 3 ];
    };
  };
}
