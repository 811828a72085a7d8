# Three seeds: 3 simulate jobs, 3 summarize jobs.
{ pkgs, repx-lib, ... }:
{
  name = "simulation";
  pipelines = [ ../pipelines/simulate.nix ];
  params = {
    seed = [ 1 2 3 ];
  };
}
