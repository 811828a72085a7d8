# A single stage that reads the manifests of both upstream runs.
{ repx, pkgs, ... }:
repx.mkPipe rec {
  write-report = repx.callStage ../stages/write-report.nix [ ];
}
