# repx-lib: the public Nix API (mkLab, callRun, mkRun, mkUtils,
# utils, mkPipelineHelpers), built from Nix builtins only so that it works
# with the host package set (nix/pkgs) or a real nixpkgs alike.
{ pkgs }:
let
  self = {
    inherit (import ./lab.nix { inherit pkgs; repx-lib = self; }) mkLab callRun;
    mkRun = import ./run.nix { inherit pkgs; repx-lib = self; };
    mkUtils = import ./utils.nix;
    utils = import ./utils.nix { inherit pkgs; };
    # The `repx` argument that pipeline files receive, for a given run context.
    mkPipelineHelpers = run: (import ./pipeline.nix { inherit pkgs; repx-lib = self; }) ({
      name = "<run>";
      file = "<run>";
      axes = [ ];
      zips = [ ];
    } // run);
  };
in
self
