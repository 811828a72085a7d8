# aggregate (reads the simulation run's manifest) -> rank (implicit mapping of "table").
{ repx, pkgs, ... }:
repx.mkPipe rec {
  aggregate = repx.callStage ../stages/aggregate.nix [ ];
  rank = repx.callStage ../stages/rank.nix [ aggregate ];
}
