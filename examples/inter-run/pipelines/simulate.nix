# simulate -> summarize (implicit mapping of "samples").
# The attribute names equal the pnames, so the job manifests that downstream
# runs read name the stages the same way either way.
{ repx, pkgs, ... }:
repx.mkPipe rec {
  simulate = repx.callStage ../stages/simulate.nix [ ];
  summarize = repx.callStage ../stages/summarize.nix [ simulate ];
}
