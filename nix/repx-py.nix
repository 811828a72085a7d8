# repx's analysis packages alone, for an analysis stage's interpreter:
# `repx_py` (the original RepX's analysis API) and the `repx` Python sources,
# of which it uses `repx.analysis`.
#
#   runDependencies = [ (pkgs.python3.withPackages (ps: [ ps.repx-py ])) ];
#
# Both import with the Python standard library alone (pandas only when a
# DataFrame is asked for; the store database only when asked), so unlike
# pkgs.repx (nix/package.nix) this package has no dependencies and needs
# nothing installed on the host. The host package set provides it as
# pkgs.repx-py and ps.repx-py (alias ps.repx_py); the flake's overlay
# provides the same names on nixpkgs.
#
#   import ./nix/repx-py.nix { pkgs = import ./nix/pkgs { }; src = ./.; }
#   import ./nix/repx-py.nix { pkgs = import <nixpkgs> { }; src = ./.; }
#
# Arguments: `pkgs` (nixpkgs, or repx's host package set nix/pkgs), `src` (the
# folder holding repx/ and repx_py/: a checkout's root, a flake's `self`, or
# an installed wheel's repx/_flake) and `python3` (pkgs.python3 by default).
#
#   * The source is repx/ and repx_py/ only, without caches (__pycache__,
#     .pyc files, the _flake copy a wheel build leaves in repx/), taken with
#     builtins.path under a fixed name: the out path follows the Python
#     sources, not where they lie nor what has run from them.
#   * With the host package set the sources are copied (and byte-compiled)
#     into $out/lib/python3/site-packages. The build runs only the store
#     python3, which carries the standard library and no site-packages: it
#     imports repx_py and repx.analysis and reads a run metadata file through
#     them (Experiment.from_run_metadata, as an analysis stage does), so a
#     module-level import of anything else (lmdb, msgpack, blake3 ...) fails
#     the build.
#   * With nixpkgs it is python3.pkgs.buildPythonPackage of the same sources,
#     with no dependencies, so its import check sees the standard library only.
{ pkgs, src, python3 ? pkgs.python3 }:

let
  inherit (builtins) baseNameOf elem fromJSON fromTOML head match pathExists readFile
    split stringLength substring toString;

  # The source folder as a plain path string (a flake's `self` is a set).
  root = toString (src.outPath or src);

  what = "repx-py (repx_py and repx.analysis for an analysis stage's python3)";

  # The host set's nix/ can be evaluated without repx's Python sources beside
  # it (a copy of nix/ alone): say so where the package is asked for.
  present = pathExists (root + "/repx_py/__init__.py") && pathExists (root + "/repx/__init__.py");
  required = value:
    if present then value
    else throw ("${what}: ${root} has no repx/ and repx_py/ (the Python sources sit beside "
      + "nix/ in a checkout, a flake and an installed wheel's repx/_flake); use nix/ from "
      + "one of those.");

  # The two packages, without caches: their store path follows their sources only.
  packageTrees = [ "repx" "repx_py" ];
  inherit (pkgs.lib) hasSuffix;
  ignored = name:
    elem name [ "__pycache__" "_flake" ]
    || hasSuffix ".pyc" name || hasSuffix ".pyo" name || hasSuffix ".egg-info" name;
  source = builtins.path {
    name = "repx-py-source";
    path = src.outPath or src;
    filter = path: _type:
      let
        relative = substring (stringLength root + 1) (stringLength path) (toString path);
      in
      elem (head (split "/" relative)) packageTrees && !ignored (baseNameOf path);
  };

  version = head (match ".*__version__ = \"([^\"]+)\".*" (readFile (root + "/repx/__init__.py")));

  # The Python the sources are written for (pyproject.toml's requires-python,
  # ">=3.11" -> [ 3 11 ]), when the source folder has the project file.
  minimumPython =
    let
      project = root + "/pyproject.toml";
      requirement =
        if pathExists project then (fromTOML (readFile project)).project.requires-python or ""
        else "";
      m = match "[[:space:]]*>=[[:space:]]*([0-9]+)\\.([0-9]+).*" requirement;
    in
    if m == null then null else map fromJSON m;

  description = "repx_py and repx.analysis (repx's analysis APIs), standard library only";

  # Run by the store python3 with -S (no site module, so no site-packages) and
  # only the package on PYTHONPATH: what an analysis stage does with the
  # package, on the standard library alone.
  standardLibraryCheck = ''
    import json, os, sys, tempfile
    try:
        import repx_py
        import repx.analysis
        folder = tempfile.mkdtemp()
        metadata = os.path.join(folder, "metadata__probe-run.json")
        with open(metadata, "w", encoding="utf-8") as handle:
            json.dump({"type": "run", "name": "probe-run", "gitHash": "0", "dependencies": {},
                       "jobs": {"probe0job": {"name": "probe-1.0", "params": {"seed": 1},
                                              "executables": {"main": {
                                                  "inputs": [],
                                                  "outputs": {"data": "$out/data.csv"}}}}}},
                      handle)
        [job] = repx_py.Experiment.from_run_metadata(metadata, folder).jobs()
        expected = os.path.join(folder, "probe0job", "out", "data.csv")
        if job.effective_params != {"seed": 1} or str(job.get_output_path("data")) != expected:
            raise AssertionError("read %r, %r" % (job.effective_params,
                                                  job.get_output_path("data")))
        repx.analysis.Experiment.from_manifest(metadata, store_base=folder).jobs()
    except Exception as error:
        sys.stderr.write(
            "repx host package set: %s: repx_py and repx.analysis must import and read a run metadata file with the "
            "Python standard library alone (Python %s), but: %s: %s\n"
            % (os.environ["what"], sys.version.split()[0], type(error).__name__, error))
        sys.exit(1)
  '';

  # ------------------------------------------------------ host package set ----

  hostPackage = pkgs.__repxHostPythonPackage {
    pname = "repx-py";
    inherit version python3 minimumPython;
    src = source;
    modules = packageTrees;
    # The store python3 runs every check: it has no site-packages, so a
    # module the host has installed cannot make the check pass (nor be
    # copied into the package).
    checkWithStorePython = true;
    env = { inherit standardLibraryCheck; };
    # First, so that a failure says what the rule is.
    preCheck = ''
      (
        export PYTHONPATH="$site" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1
        cd "$TMPDIR" && "$storePython" -S -c "$standardLibraryCheck"
      )
    '';
    meta = { inherit description; };
  };

  # ---------------------------------------------------------------- nixpkgs ----

  nixpkgsPackage = python3.pkgs.buildPythonPackage {
    pname = "repx-py";
    inherit version;
    src = source;
    # Plain sources: nothing to build, they are copied where python3 looks.
    pyproject = false;
    dontBuild = true;
    installPhase = ''
      runHook preInstall
      mkdir -p "$out/${python3.sitePackages}"
      cp -R repx repx_py "$out/${python3.sitePackages}/"
      runHook postInstall
    '';
    # No dependencies: the import check runs with the standard library alone.
    pythonImportsCheck = [ "repx_py" "repx.analysis" ];
    meta = { inherit description; };
  };
in
required (if pkgs.__repxHostPackageSet or false then hostPackage else nixpkgsPackage)
