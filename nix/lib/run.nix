# mkRun: a run definition (name, pipelines, params sweep) into its blueprint
# (docs/blueprint.md, runs/<name>.json). Expansion of the cartesian product
# happens in Python; here the axes are validated and the pipelines evaluated.
{ pkgs, repx-lib }:
let
  u = import ./internal/prelude.nix;
  inherit (builtins) attrNames attrValues concatMap elem filter isAttrs isFunction isList
    isPath isString length listToAttrs map mapAttrs match toJSON;

  validKeys = [ "pkgs" "repx-lib" "name" "pipelines" "params" "parameters" "paramsDependencies"
    "parametersDependencies" "hashMode" "override" "overrideDerivation" ];
  internalKeys = [ "_file" "_key" "_interRun" ];
  hashModes = [ "pure" "params-only" ];

  # "stage.param": the stage is everything before the last dot.
  splitKey = key:
    let m = match "(.*)\\.([^.]+)" key; in
    if m == null then { inherit key; stage = null; param = key; }
    else { inherit key; stage = builtins.head m; param = builtins.elemAt m 1; };

  # A param value as it goes into the blueprint: derivations and paths become
  # store path strings (their content is then part of the job identity).
  paramValue = v:
    if u.isDerivation v then "${v}"
    else if isPath v then "${builtins.path { path = v; name = u.storeName (baseNameOf v); }}"
    else v;
in
args:
let
  name = args.name or (throw "mkRun: a run needs a 'name'.");
  file = args._file or "<run>";
  where = "run '${name}' (file '${file}')";
  keysOk = u.checkKeys {
    what = "Run definition '${name}'";
    inherit file;
    valid = validKeys ++ internalKeys;
    set = args;
  };
  hashMode = args.hashMode or "pure";
  hashModeOk = if elem hashMode hashModes then true
    else throw "${where}: invalid hashMode ${toJSON hashMode}. Valid: ${u.showList hashModes}.";
  aliasOk = if args ? params && args ? parameters then
      throw "${where}: give either 'params' or its alias 'parameters', not both."
    else if args ? paramsDependencies && args ? parametersDependencies then
      throw "${where}: give either 'paramsDependencies' or its alias 'parametersDependencies', not both."
    else true;
  rawParams = args.params or args.parameters or (throw "${where}: 'params' is required (use params = { }; for a run without a sweep).");
  paramsOk = if isAttrs rawParams then true
    else throw "${where}: 'params' must be an attribute set of lists, got ${u.describe rawParams}.";

  isZip = v: isAttrs v && v._repx_zip or false;
  zipKeys = filter (k: isZip rawParams.${k}) (attrNames rawParams);
  axisKeys = filter (k: !(isZip rawParams.${k})) (attrNames rawParams);

  unwrap = k:
    let v = rawParams.${k}; in
    if isAttrs v && v._repx_param or false then v.values
    else if isList v then v
    else throw "${where}: parameter '${k}' must be a list of values (a sweep), got ${u.describe v}. Write ${k} = [ ${if isString v then toJSON v else "value"} ]; for a single value.";

  axes = map (k:
    let values = map paramValue (unwrap k); in
    if values == [ ] then throw "${where}: parameter '${k}' has an empty list of values; empty lists produce zero combinations."
    else splitKey k // { inherit values; }) axisKeys;

  zips = map (label:
    let
      z = rawParams.${label};
      members = attrNames z.groups;
    in
    if z.length == 0 then throw "${where}: utils.zip '${label}' has empty lists; empty lists produce zero combinations."
    else {
      inherit label;
      members = map splitKey members;
      rows = builtins.genList (i: map (m: paramValue (builtins.elemAt z.groups.${m} i)) members) z.length;
    }) zipKeys;

  # Zip collisions (a name both plain and zipped, or in two zips).
  zipMembers = concatMap (l: attrNames rawParams.${l}.groups) zipKeys;
  zipOk =
    let
      plainClash = filter (m: elem m axisKeys) zipMembers;
      dup = filter (m: length (filter (x: x == m) zipMembers) > 1) zipMembers;
    in
    if plainClash != [ ] then throw "${where}: parameter '${builtins.head plainClash}' is defined both as a normal parameter and inside utils.zip."
    else if dup != [ ] then throw "${where}: parameter '${builtins.head dup}' appears in more than one utils.zip group."
    else true;

  runContext = { inherit name file axes zips; };
  helpers = (import ./pipeline.nix { inherit pkgs repx-lib; }) runContext;

  pipelineList = args.pipelines or (throw "${where}: 'pipelines' is required (a list of pipeline files).");
  pipelinesOk = if isList pipelineList && pipelineList != [ ] then true
    else throw "${where}: 'pipelines' must be a non-empty list of pipeline files.";

  interRun = args._interRun or [ ];

  # Whether two stages (callStage results, or `//` copies of one) are the same
  # node: compared by their `_identity` function alone, which is equal only to
  # itself, so this never walks into the stages' deps.
  sameStage = a: b:
    builtins.intersectAttrs { _identity = null; } a == builtins.intersectAttrs { _identity = null; } b;

  # The first cycle among the stages reachable from `roots` through their deps
  # (a list of stages, the first repeated at the end), or null. A stage's key
  # hashes its deps' keys, so a cycle must be found before any key is asked
  # for: Nix would otherwise stop with a bare "infinite recursion".
  stageCycle = roots:
    let
      isIn = list: s: builtins.any (sameStage s) list;
      from = s: list: if sameStage (builtins.head list) s then list else from s (builtins.tail list);
      visit = state: path: s:
        if state.cycle != null || isIn state.done s then state
        else if isIn path s then state // { cycle = from s path ++ [ s ]; }
        else
          let after = builtins.foldl' (st: d: visit st (path ++ [ s ]) d.node) state s.deps; in
          after // { done = after.done ++ [ s ]; };
    in
    (builtins.foldl' (st: s: visit st [ ] s) { done = [ ]; cycle = null; } roots).cycle;

  pipelineBlueprint = index: p:
    let
      pfile = u.sourceName p;
      result = u.callFile "a pipeline" p (pkgs // {
        inherit pkgs repx-lib;
        repx = helpers;
      });
      named = if isAttrs result
        then filter (k: isAttrs result.${k} && result.${k}._repx_virtual_job or false) (attrNames result)
        else throw "pipeline file '${pfile}' (run '${name}'): a pipeline must return repx.mkPipe { ... } (an attribute set of stages), got ${u.describe result}.";
      direct = map (k: result.${k} // { key = result.${k}._key; _name = k; }) named;
      cycle = stageCycle (map (k: result.${k}) named);
      labelOf = s:
        let same = filter (k: sameStage result.${k} s) named; in
        if same != [ ] then builtins.head same else s.pname;
      acyclic =
        let
          members = builtins.genList (builtins.elemAt cycle) (length cycle - 1);
          files = map (s: "\n  ${labelOf s}: stage file '${s.file}'") members;
        in
        if cycle == null then true
        else throw ("pipeline file '${pfile}' (run '${name}'): its stages depend on each other in a cycle: "
          + "${builtins.concatStringsSep " → " (map labelOf cycle)}.\n"
          + "A stage cannot depend on itself, even through other stages; remove one of these dependencies:"
          + builtins.concatStringsSep "" files);
      # Stages reached only through deps (e.g. bound in a let) belong too.
      closure = builtins.genericClosure {
        startSet = direct;
        operator = s: map (d: d.node // { key = d.node._key; }) s.deps;
      };
      nameOf = s: s._name or s.pname;
      keyByNode = listToAttrs (map (s: { name = s._key; value = nameOf s; }) closure);
      keyOf = nodeKey: keyByNode.${nodeKey};
      names = map nameOf closure;
      dupNames = filter (n: length (filter (x: x == n) names) > 1) (u.unique names);
      stagesOk = if dupNames == [ ] then true
        else throw "pipeline file '${pfile}' (run '${name}'): two different stages are both named ${u.showList dupNames}; give them distinct attribute names or pnames.";
      interRunFor = s:
        if s.deps != [ ] then [ ]
        else concatMap (d:
          let target = "metadata__${d.run}"; in
          if elem target s.inputNames then [ (d // { inherit target; }) ] else [ ]) interRun;
      stageBlueprint = s: s.blueprint {
        key = nameOf s;
        inherit keyOf;
        interRun = interRunFor s;
      };
    in
    assert acyclic;
    assert stagesOk;
    {
      file = pfile;
      stages = map stageBlueprint closure;
    };

  pipelineBlueprints = builtins.genList
    (i: pipelineBlueprint i (builtins.elemAt pipelineList i)) (length pipelineList);

  paramsDeps = args.paramsDependencies or args.parametersDependencies or [ ];
in
assert keysOk && hashModeOk && aliasOk && paramsOk && zipOk && pipelinesOk;
{
  inherit name file;
  key = args._key or name;
  hash_mode = hashMode;
  dependencies = map (d: { inherit (d) run type; }) interRun;
  inherit axes zips;
  params_dependencies = map toString paramsDeps;
  pipelines = pipelineBlueprints;
}
