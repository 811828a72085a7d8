# repx itself as a Nix package (pkgs.repx).
#
# The flake's overlay calls it with the repository as `src`:
#
#   overlays.default = final: prev: {
#     repx = final.callPackage ./nix/package.nix { src = self; };
#   };
#
# and it works without a flake too, on either kind of package set:
#
#   import ./nix/package.nix { pkgs = import ./nix/pkgs { }; src = ./.; }
#   import ./nix/package.nix { pkgs = import <nixpkgs> { }; src = ./.; }
#
# Arguments: `pkgs` (nixpkgs, or repx's host package set nix/pkgs), `src`
# (the repository: a path, or a flake's `self`) and `python3` (the
# interpreter, pkgs.python3 by default).
#
# The package is made from what the repository says once: the version from
# repx/__init__.py, the dependencies, the Python requirement and the programs
# from pyproject.toml.
#
#   * With nixpkgs: buildPythonApplication from the pyproject (setuptools),
#     with the dependencies from python3Packages.  setup.py puts the Nix
#     library in the package as repx/_flake, as in every wheel.
#   * With the host package set (no nixpkgs): the Python sources are copied
#     into $out/lib/python3/site-packages/repx for the host python3, and
#     $out/bin/repx runs that python3 with them.  The build checks that the
#     host python3 imports every dependency, and fails naming the pip (and
#     Debian) package of each one that does not.  The result also works in
#     `python3.withPackages (ps: [ pkgs.repx ])`, which imports repx and repx_py.
#     See docs/host-packages.md.
{ pkgs, src, python3 ? pkgs.python3 }:

let
  inherit (builtins)
    baseNameOf concatMap elem fromJSON fromTOML head match readFile split
    stringLength substring toString;

  # The repository as a plain path string (a flake's `self` is a set).
  root = toString (src.outPath or src);

  # Only what a build of repx reads (the files setup.py copies into a wheel,
  # and what pip needs to build one), minus caches: a checkout's .venv, build
  # leftovers and test output never reach the store.
  topLevel = [ "repx" "repx_py" "nix" "pyproject.toml" "setup.py" "MANIFEST.in" "README.md" "flake.nix" "flake.lock" ];
  inherit (pkgs.lib) hasSuffix;
  ignored = name:
    elem name [ "__pycache__" "_flake" ]
    || hasSuffix ".pyc" name || hasSuffix ".pyo" name || hasSuffix ".egg-info" name;
  source = builtins.path {
    name = "repx-source";
    path = src.outPath or src;
    filter = path: _type:
      let
        relative = substring (stringLength root + 1) (stringLength path) (toString path);
      in
      elem (head (split "/" relative)) topLevel && !ignored (baseNameOf path);
  };

  project = (fromTOML (readFile (root + "/pyproject.toml"))).project;
  version = head (match ".*__version__ = \"([^\"]+)\".*" (readFile (root + "/repx/__init__.py")));
  # requires-python ">=3.11" -> [ 3 11 ]
  minimumPython =
    let m = match "[[:space:]]*>=[[:space:]]*([0-9]+)\\.([0-9]+).*" (project.requires-python or "");
    in if m == null then null else map fromJSON m;
  description = project.description;

  # A requirement's distribution name in nixpkgs' spelling (PEP 503):
  # "tree_sitter>=0.22" -> "tree-sitter".
  nixpkgsName = requirement:
    let bare = head (match "[[:space:]]*([A-Za-z0-9][A-Za-z0-9._-]*).*" requirement); in
    pkgs.lib.toLower (builtins.replaceStrings [ "_" "." ] [ "-" "-" ] bare);

  # ------------------------------------------------------------ nixpkgs ----

  # Dependencies some nixpkgs releases do not package yet: without them repx
  # still runs, and says what is missing when it needs one.
  optionalInNixpkgs = [ "tree-sitter-bash" ];

  nixpkgsPackage =
    let
      ps = python3.pkgs;
      dependencies = concatMap
        (requirement:
          let name = nixpkgsName requirement; in
          if ps ? ${name} then [ ps.${name} ]
          else if elem name optionalInNixpkgs then [ ]
          else throw "nix/package.nix: this nixpkgs' python3Packages has no '${name}' (a dependency of repx in pyproject.toml).")
        project.dependencies;
    in
    ps.buildPythonApplication {
      pname = "repx";
      inherit version;
      src = source;
      pyproject = true;
      build-system = [ ps.setuptools ];
      inherit dependencies;
      # repx runs nix-build from PATH (the machine's Nix, which matches its
      # daemon); shellcheck and bash validate stage scripts and are taken
      # from nixpkgs only when the machine has none.
      makeWrapperArgs = [ "--suffix" "PATH" ":" (pkgs.lib.makeBinPath [ pkgs.shellcheck pkgs.bash ]) ];
      pythonImportsCheck = [ "repx" "repx.cli" "repx_py" ];
      # The test suite needs Nix builds (and a SLURM cluster): run it from a
      # checkout, not inside a Nix build.
      doCheck = false;
      meta = {
        inherit description;
        mainProgram = "repx";
      };
    };

  # -------------------------------------------------- host package set ----

  hostPackage = pkgs.__repxHostPythonPackage {
    pname = "repx";
    inherit version python3 minimumPython;
    src = source;
    # repx_py: the original RepX's analysis API (`import repx_py`), over repx.analysis.
    modules = [ "repx" "repx_py" ];
    dependencies = project.dependencies;
    scripts = project.scripts;
    # repx finds its Nix library at repx/_flake when installed (see
    # repx/lab/nix.py, FLAKE_DIR); a wheel carries a copy, here a link to
    # the filtered source is enough.
    postInstall = ''ln -s "$packageSource" "$site/repx/_flake"'';
    meta = { inherit description; };
  };
in
if pkgs.__repxHostPackageSet or false then hostPackage else nixpkgsPackage
