# What `repx lab build` builds: the lab of a user's lab.nix, called with repx's
# own library, the host package set (or a real nixpkgs) and the git hash.
{ labFile
, nixpkgs ? null
, gitHash ? "unknown"
, slice ? null
}:
let
  u = import ./lib/internal/prelude.nix;
  pkgs = if nixpkgs == null then import ./pkgs { } else import nixpkgs { };
  repx-lib = import ./lib { inherit pkgs; };
  # mkLab learns the lab file's name for its messages.
  labLib = repx-lib // {
    mkLab = args: repx-lib.mkLab (args // { _labFile = toString labFile; });
  };
  labFn = import labFile;
  result =
    if builtins.isFunction labFn
    then u.callWith labFn { inherit pkgs gitHash; repx-lib = labLib; }
    else labFn;
  checked =
    if builtins.isAttrs result && result ? lab then result
    else throw "lab file '${toString labFile}': it must be a function { pkgs, repx-lib, gitHash ? \"unknown\", ... }: returning repx-lib.mkLab { ... }.";
in
if slice == null then checked.lab
else checked.runs.${slice} or (throw "lab file '${toString labFile}': there is no run '${slice}'; runs: ${builtins.toJSON (builtins.attrNames checked.runs)}.")
