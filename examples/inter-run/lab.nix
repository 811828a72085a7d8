# Three runs chained by inter-run dependencies (the seeds' complete example):
#   simulation --hard--> analysis --hard--> report
#   simulation --------------soft---------> report
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
let
  simulation = repx-lib.callRun ./runs/simulation.nix [ ];
  analysis = repx-lib.callRun ./runs/analysis.nix [ simulation ];
  report = repx-lib.callRun ./runs/report.nix [
    [ analysis "hard" ]
    [ simulation "soft" ]
  ];
in
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "1.0.0";
  runs = {
    inherit simulation analysis report;
  };
  groups = {
    compute = [ simulation ];
    all = [ simulation analysis report ];
  };
}
