# Scatter-gather in both forms: a step mini-DAG (partial-sums) and the
# single-worker form (legacy-worker), side by side in one pipeline.
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
let
  chunked-sum = repx-lib.callRun ./runs/chunked-sum.nix [ ];
in
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "1.0.0";
  runs = {
    inherit chunked-sum;
  };
}
