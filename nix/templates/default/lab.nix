# my-lab: a repx lab, i.e. every run of the experiment. `repx build` in this
# folder builds this file with Nix (checking every stage script first) and runs
# the jobs not yet in ./.repx.
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
let
  # A run: a pipeline and the params it sweeps. The list is the runs it depends on.
  sweep = repx-lib.callRun ./runs/sweep.nix [ ];
in
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "0.1.0";
  runs = {
    inherit sweep;
  };
}
