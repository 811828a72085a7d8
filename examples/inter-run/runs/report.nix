# Depends on "analysis" (hard) and "simulation" (soft, see lab.nix).
{ pkgs, repx-lib, ... }:
{
  name = "report";
  pipelines = [ ../pipelines/report.nix ];
  params = { };
}
