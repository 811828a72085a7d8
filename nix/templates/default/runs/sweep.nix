# The run "sweep": the pipeline in ../pipelines/main.nix under every combination
# of these params (the cartesian product: 2 seeds x 2 sizes = 4 combinations).
# A plain key sets the param of every stage that declares it; "generate.n" (dot
# notation: <stage pname>.<param>) sets it for the stage "generate" only.
{ pkgs, repx-lib, ... }:
{
  name = "sweep";
  pipelines = [ ../pipelines/main.nix ];
  params = {
    seed = [ 1 2 ];
    "generate.n" = [ 100 1000 ];
  };
}
