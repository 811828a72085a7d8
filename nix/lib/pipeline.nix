# The `repx` argument of pipeline files: mkPipe and callStage, bound to the
# run being evaluated (dynamic stage attributes need its sweep).
{ pkgs, repx-lib }:
run:
let
  stage = import ./internal/stage.nix { inherit pkgs run; };
in
{
  # An identity on the stages attribute set: it marks the set as a pipeline.
  mkPipe = stages:
    if builtins.isAttrs stages then stages
    else throw "repx.mkPipe: expected an attribute set of stages, got ${(import ./internal/prelude.nix).describe stages}.";
  inherit (stage) callStage;
}
