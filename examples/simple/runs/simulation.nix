# No sweep: every stage uses its default params (producer: n = 10).
{ pkgs, repx-lib, ... }:
{
  name = "simulation";
  pipelines = [ ../pipelines/main.nix ];
  params = { };
}
