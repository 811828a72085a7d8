# The smallest complete lab: one run, one pipeline of three stages, no sweep.
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
let
  simulation = repx-lib.callRun ./runs/simulation.nix [ ];
in
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "1.0.0";
  runs = {
    inherit simulation;
  };
}
