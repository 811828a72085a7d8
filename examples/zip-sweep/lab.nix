# A cartesian axis (workload) crossed with a zipped pair (mode, multiplier).
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
let
  zip-sweep = repx-lib.callRun ./runs/zip-sweep.nix [ ];
in
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "1.0.0";
  runs = {
    inherit zip-sweep;
  };
}
