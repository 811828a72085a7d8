# The container images of a lab directory, as its containerMode says:
#   "unified": one image, "lab", for every run of the lab directory;
#   "per-run": one image per run, named like the run;
#   "none":    no image.
# An image holds the closure of what its runs' blueprints reference: the stage
# scripts, the default input files and the store paths given as params. It is
# built by one builtins-only derivation per lab directory (the host's python3
# runs docker-archive.py; exportReferencesGraph hands it each root's closure),
# whose inputs are only those store paths and the image names, so two lab
# builds with the same runs reuse one images derivation.
let
  inherit (builtins) attrValues concatLists genList head isAttrs isList isPath isString length
    listToAttrs match stringLength substring toJSON;

  storePathPattern = "(${builtins.storeDir}/[^/]+)(/[^\n]*)?";

  # The top store path of a string that is a store path (or a file inside one),
  # keeping the string's context so that the derivation depends on it.
  storeRoot = s:
    let m = match storePathPattern s; in
    if m == null || match ".*\\.drv" (head m) != null then [ ]
    else [ (substring 0 (stringLength (head m)) s) ];

  # Every store path a blueprint value references, in any nesting.
  storePathsIn = v:
    if isString v then (if builtins.hasContext v then storeRoot v else [ ])
    else if isPath v then storeRoot "${v}"
    else if isAttrs v then
      (if v ? outPath then storeRoot "${v}" else concatLists (map storePathsIn (attrValues v)))
    else if isList v then concatLists (map storePathsIn v)
    else [ ];

  plain = builtins.unsafeDiscardStringContext;

  # Sorted, each path once (an attribute name drops the context; the value keeps it).
  uniquePaths = paths: attrValues (listToAttrs (map (p: { name = plain p; value = p; }) paths));
in
{
  # The image name of each run (null for "none").
  imageNames = { containerMode, runs }:
    listToAttrs (map (r: {
      name = r.name;
      value =
        if containerMode == "unified" then "lab"
        else if containerMode == "per-run" then r.name
        else null;
    }) runs);

  # null for "none", else the derivation whose out is linked as <lab>/images.
  imagesDerivation = { system, containerMode, runs }:
    let
      groups =
        if containerMode == "unified" then [ { name = "lab"; members = runs; } ]
        else if containerMode == "per-run" then map (r: { name = r.name; members = [ r ]; }) runs
        else [ ];
      rootsOf = members: uniquePaths (concatLists (map storePathsIn members));
      allRoots = uniquePaths (concatLists (map (g: rootsOf g.members) groups));
      graphName = i: "closure-${toString i}";
      indexOf = listToAttrs (genList (i: { name = plain (builtins.elemAt allRoots i); value = i; })
        (length allRoots));
      spec = {
        inherit system;
        images = map (g: {
          inherit (g) name;
          runs = map (r: r.name) g.members;
          graphs = map (p: graphName indexOf.${plain p}) (rootsOf g.members);
        }) groups;
      };
    in
    if groups == [ ] then null
    else builtins.derivation {
      name = "repx-images";
      inherit system;
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      imagesSpec = toJSON spec;
      imageBuilder = ./docker-archive.py;
      passAsFile = [ "imagesSpec" ];
      exportReferencesGraph = concatLists (genList (i: [ (graphName i) (builtins.elemAt allRoots i) ])
        (length allRoots));
      args = [ "-c" ''
        if ! command -v python3 >/dev/null; then
          echo "repx: building the lab's container images (containerMode) needs python3 on the build machine; install it or set containerMode = \"none\" in mkLab" >&2
          exit 1
        fi
        exec python3 -I -S "$imageBuilder"
      '' ];
    };
}
