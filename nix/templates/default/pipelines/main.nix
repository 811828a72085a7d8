# The pipeline: its stages and how their outputs feed each other's inputs.
# `[ generate ]` maps generate's output "samples" to summarize's input of the
# same name (write [ [ generate "samples" "other_name" ] ] to map it explicitly).
{ repx, pkgs, ... }:
repx.mkPipe rec {
  generate = repx.callStage ../stages/generate.nix [ ];
  summarize = repx.callStage ../stages/summarize.nix [ generate ];
}
