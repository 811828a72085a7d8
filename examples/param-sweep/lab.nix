# The hyper-parameter sweep of the seeds (Parameters, section 2): 3 learning rates x 2 optimizers.
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
let
  sweep = repx-lib.callRun ./runs/hyperparam-sweep.nix [ ];
in
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "1.0.0";
  runs = {
    inherit sweep;
  };
}
