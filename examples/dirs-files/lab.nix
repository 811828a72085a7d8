# Sweeping over directories and files found in the lab's own data/ folder.
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
let
  grading = repx-lib.callRun ./runs/grading.nix [ ];
in
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "1.0.0";
  runs = {
    inherit grading;
  };
}
