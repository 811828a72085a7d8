# repx-lib: the public Nix API (mkLab, callRun, mkRun, mkUtils, utils,
# mkPipelineHelpers), built from Nix builtins only. It takes no package set:
# mkLab (and mkRun, mkPipelineHelpers) take `pkgs` from their argument, so the
# same library serves the host package set (nix/pkgs), a real nixpkgs and any
# overlay of either; this is what the flake exports as `lib`.
let
  needPkgs = what: args:
    if args ? pkgs then args.pkgs
    else throw "repx-lib.${what}: 'pkgs' is required (the package set stages use).";
  self = {
    inherit (import ./lab.nix { repx-lib = self; }) mkLab callRun;
    mkRun = args: import ./run.nix { pkgs = needPkgs "mkRun" args; repx-lib = self; } args;
    mkUtils = import ./utils.nix;
    utils = import ./utils.nix { };
    # The `repx` argument that pipeline files receive, for a given run context.
    mkPipelineHelpers = args:
      (import ./pipeline.nix { pkgs = needPkgs "mkPipelineHelpers" args; repx-lib = self; }) ({
        name = "<run>";
        file = "<run>";
        axes = [ ];
        zips = [ ];
      } // removeAttrs args [ "pkgs" "repx-lib" ]);
  };
in
self
