#            +-> partial_sums (scatter / steps square, double -> combine / gather) -+
#   source --+                                                                      +--> report
#            +-> legacy       (scatter / worker / gather)                          -+
{ repx, pkgs, ... }:
repx.mkPipe rec {
  source = repx.callStage ../stages/source.nix [ ];

  # Implicit: source's output "data" -> the scatter's input "data".
  partial_sums = repx.callStage ../stages/partial-sums.nix [ source ];
  legacy = repx.callStage ../stages/legacy-worker.nix [ source ];

  report = repx.callStage ../stages/report.nix [
    # Implicit: partial_sums' gather output "total" -> input "total".
    partial_sums
    # Explicit: legacy's gather output "final" -> input "listing".
    [ legacy "final" "listing" ]
  ];
}
