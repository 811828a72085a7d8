# Depends on "simulation" (hard, see lab.nix): its first stage reads the
# simulation run's job manifest through the input metadata__simulation.
{ pkgs, repx-lib, ... }:
{
  name = "analysis";
  pipelines = [ ../pipelines/analyze.nix ];
  params = { };
}
