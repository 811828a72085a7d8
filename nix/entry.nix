# What `repx lab build` builds for a lab file (the flake route builds a flake's
# output instead): the user's lab.nix called with repx's library, a package set
# (the host set, or a real nixpkgs) and the git hash, plus the arguments given
# on the command line (`--arg NAME EXPR`, `--argstr NAME VALUE`).
#
# The formals are prefixed `repx` so that they cannot collide with the names of
# a lab's own arguments; every other argument nix-build receives is a lab
# argument and goes to the lab function (gitHash included: a lab argument wins).
#
# repx passes the lab file and nixpkgs as strings (`--argstr`): `--arg` would
# parse them as Nix expressions, and a folder named `My Experiments` or
# `Projekt 2 "neu"` is not one. `/. + string` makes the absolute string a path
# again, so `import` of it gives a lab whose `./runs/x.nix` resolve beside it.
# A path value (`--arg repxLabFile /abs/lab.nix`, as older callers pass) is
# taken as it is.
{ repxLabFile
, repxNixpkgs ? null
, repxSlice ? null
, repxLabArgNames ? [ ]
, gitHash ? "unknown"
, ...
}@entryArgs:
let
  u = import ./lib/internal/prelude.nix;
  inherit (builtins) attrNames filter functionArgs isAttrs isFunction toJSON;
  asPath = name: value:
    if builtins.isPath value then value
    else if builtins.isString value && builtins.substring 0 1 value == "/" then /. + value
    else throw "repx entry point: ${name} must be an absolute path, got ${toJSON value}.";
  labPath = asPath "repxLabFile" repxLabFile;
  labFile = toString labPath;
  pkgs = if repxNixpkgs == null then import ./pkgs { }
    else import (asPath "repxNixpkgs" repxNixpkgs) { };
  repx-lib = import ./lib;
  # mkLab learns the lab file's name for its messages, and the entry's package
  # set when the lab gives none.
  labLib = repx-lib // {
    mkLab = args: repx-lib.mkLab ({ inherit pkgs; } // args // { _labFile = labFile; });
  };
  labFn = import labPath;
  labArgs = removeAttrs entryArgs [ "repxLabFile" "repxNixpkgs" "repxSlice" "repxLabArgNames" ];
  given = { inherit pkgs; repx-lib = labLib; } // labArgs;
  # A lab argument must be named in the lab function's formals: Nix cannot
  # tell whether a function has `...`, and an argument dropped in silence
  # would build another lab than the one asked for.
  formals = if isFunction labFn then functionArgs labFn else { };
  unknownArgs = filter (n: !(formals ? ${n})) repxLabArgNames;
  argsOk =
    if repxLabArgNames != [ ] && !isFunction labFn then
      throw "lab file '${labFile}': it is not a function, so it takes no arguments (given: ${u.showList repxLabArgNames})."
    else if unknownArgs != [ ] then
      throw "lab file '${labFile}': it takes no argument ${u.showList unknownArgs} (its arguments: ${u.showList (attrNames formals)}); name it in the function's arguments, e.g. { pkgs, repx-lib, ${builtins.head unknownArgs} ? null, ... }:"
    else true;
  missingArgs = filter (n: !formals.${n} && !(given ? ${n})) (attrNames formals);
  requiredOk =
    if missingArgs == [ ] then true
    else throw "lab file '${labFile}': it needs the argument ${u.showList missingArgs}; give it on the command line with --arg ${builtins.head missingArgs} EXPR or --argstr ${builtins.head missingArgs} VALUE.";
  result = if isFunction labFn then u.callWith labFn given else labFn;
  checked =
    if isAttrs result && result ? lab then result
    else throw "lab file '${labFile}': it must be a function { pkgs, repx-lib, gitHash ? \"unknown\", ... }: returning repx-lib.mkLab { ... }.";
in
assert argsOk && requiredOk;
if repxSlice == null then checked.lab
else checked.runs.${repxSlice} or (throw "lab file '${labFile}': there is no run '${repxSlice}'; runs: ${toJSON (attrNames checked.runs)}.")
