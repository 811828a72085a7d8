# generate -> train (pname "train-model") -> evaluate, all with implicit mappings
# (generate's "dataset" -> train's "dataset"; train's "metrics" -> evaluate's "metrics").
{ repx, pkgs, ... }:
repx.mkPipe rec {
  generate = repx.callStage ../stages/generate.nix [ ];
  train = repx.callStage ../stages/train.nix [ generate ];
  evaluate = repx.callStage ../stages/evaluate.nix [ train ];
}
