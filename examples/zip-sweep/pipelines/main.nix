# prepare (declares workload)  -> process (workload, mode, multiplier) -> tally (workload)
# Implicit mappings: prepare's "items" -> process's "items"; process's "result" -> tally's "result".
{ repx, pkgs, ... }:
repx.mkPipe rec {
  prepare = repx.callStage ../stages/prepare.nix [ ];
  process = repx.callStage ../stages/process.nix [ prepare ];
  tally = repx.callStage ../stages/tally.nix [ process ];
}
