# callStage: load a stage file, validate it, wire it to its dependencies and
# write its scripts. The result is a "virtual job": a plain attrset describing
# the stage for one run; mkRun turns it into the blueprint (docs/blueprint.md).
{ pkgs, run }:
# run = { name, file, axes, zips } of the run being evaluated (for dynamic attrs).
let
  u = import ./prelude.nix;
  scripts = import ./script.nix { inherit pkgs; };
  inherit (builtins)
    attrNames concatMap elem filter functionArgs hasAttr isAttrs isFunction isList
    isString length listToAttrs mapAttrs toJSON;

  commonKeys = [ "pname" "version" "params" "parameters" "passthru" "resources"
    "runDependencies" "override" "overrideDerivation" ];
  simpleKeys = commonKeys ++ [ "inputs" "outputs" "run" ];
  scatterGatherKeys = commonKeys ++ [ "scatter" "steps" "worker" "gather" "inputs" ];
  phaseKeys = [ "pname" "inputs" "outputs" "run" "runDependencies" "resources" "version" ];
  stepKeys = phaseKeys ++ [ "deps" ];
  specialInputs = [ "worker__item" "worker__outs" "store__base" ];

  # `parameters` is accepted as an alias of `params`; giving both is an error.
  paramsOf = what: file: def:
    if def ? params && def ? parameters then
      throw "${what} in '${file}': give either 'params' or its alias 'parameters', not both."
    else def.params or def.parameters or { };

  # A `{ params }:` attribute; the alias `{ parameters }:` is accepted too.
  checkDynamic = file: attr: f:
    let
      args = attrNames (functionArgs f);
      ok = args == [ "params" ] || args == [ "parameters" ];
    in
    if ok then true
    else throw ''
      stage file '${file}': the '${attr}' attribute is a function, but it must take exactly { params } as argument.
      Got a function with arguments: ${u.showList args}.'';

  callDynamic = f: params:
    let args = attrNames (functionArgs f); in
    if args == [ "parameters" ] then f { parameters = params; } else f { inherit params; };

  # Input default values: a relative file path beside the stage file is copied
  # into the store, so its content is part of the job identity.
  resolveInputDefault = dir: name: default:
    let
      isRelativeFile = isString default && default != "" && !(u.hasPrefix "/" default)
        && !(u.hasPrefix "$" default) && !(elem name specialInputs)
        && !(u.hasPrefix "metadata__" name);
      candidate = dir + "/${default}";
    in
    {
      default = if isString default then default else toJSON default;
      file =
        if dir != null && isRelativeFile && builtins.pathExists candidate
        then "${builtins.path { path = candidate; name = u.storeName (baseNameOf default); }}"
        else null;
    };

  # Wiring of one dependency item to this consumer (implicit or explicit).
  wire = { consumer, inputNames, file }: item:
    if isAttrs item && item._repx_virtual_job or false then
      let
        shared = u.intersectLists item.outputNames inputNames;
      in
      if shared == [ ] then throw ''
        Pipeline connection error in '${file}': implicit dependency resolution failed.
        Stage "${consumer}" depends on "${item.pname}", but they share no matching input/output names.

        Producer "${item.pname}" outputs: ${u.showList item.outputNames}
        Consumer "${consumer}" inputs:  ${u.showList inputNames}

        Use the explicit mapping syntax: [ producer "source_output" "target_input" ]''
      else {
        stage = item._key;
        node = item;
        explicit = false;
        mappings = map (n: { source = n; target = n; }) shared;
      }
    else if isList item then
      let
        n = length item;
        producer = builtins.head item;
        source = builtins.elemAt item 1;
        target = if n == 3 then builtins.elemAt item 2 else source;
      in
      if n != 2 && n != 3 then
        throw "Pipeline connection error in '${file}' (stage \"${consumer}\"): a list dependency must have 2 or 3 elements: [ stage \"source_output\" \"target_input\" ]."
      else if !(isAttrs producer && producer._repx_virtual_job or false) then
        throw "Pipeline connection error in '${file}' (stage \"${consumer}\"): in [ dep ... ], the first element must be a stage (the result of callStage)."
      else if !(builtins.all isString (builtins.tail item)) then
        throw "Pipeline connection error in '${file}' (stage \"${consumer}\"): in [ dep ... ], all elements after the first must be strings."
      else if !(elem source producer.outputNames) then throw ''
        Pipeline connection error in '${file}': stage "${producer.pname}" does not have output "${source}" (wanted by "${consumer}").
        Available outputs: ${u.showList producer.outputNames}''
      else if !(elem target inputNames) then throw ''
        Pipeline connection error in '${file}': stage "${consumer}" does not have input "${target}".
        Available inputs: ${u.showList inputNames}''
      else {
        stage = producer._key;
        node = producer;
        explicit = true;
        mappings = [ { inherit source target; } ];
      }
    else throw "Pipeline connection error in '${file}': a dependency of stage \"${consumer}\" must be a stage or a list [ stage \"source\" \"target\" ], got ${u.describe item}.";

  # The distinct effective declared-param assignments this stage sees in the
  # run, for attributes given as { params }: functions (each is resolved per
  # combination, never once per run).
  # A dot-notation key "S.p" targets this stage when S is its pname; a plain
  # key "p" targets it unless a dot key for the same param does.
  effectiveCombos = { pname, key ? null, defaults }:
    let
      declared = attrNames defaults;
      targets = m: m.stage != null && (m.stage == pname || (key != null && m.stage == key));
      dotted = filter (p: builtins.any (m: m.param == p && targets m) allMembers) declared;
      allMembers = run.axes ++ concatMap (z: z.members) run.zips;
      affects = m: elem m.param declared
        && (if m.stage == null then !(elem m.param dotted) else targets m);
      axisUnits = map (a: map (v: { ${a.param} = v; }) a.values) (filter affects run.axes);
      zipUnit = z:
        let
          idx = filter (i: affects (builtins.elemAt z.members i))
            (u.range 0 (length z.members - 1));
        in
        if idx == [ ] then null
        else map (row: listToAttrs (map (i: {
          name = (builtins.elemAt z.members i).param;
          value = builtins.elemAt row i;
        }) idx)) z.rows;
      zipUnits = filter (x: x != null) (map zipUnit run.zips);
      combos = u.product (axisUnits ++ zipUnits);
      effective = c: defaults // u.filterAttrs (_: v: v != null) c;
    in
    u.uniqueJSON (map effective combos);

  # One executable (simple stage main, scatter, step, gather).
  mkExecutable = { name, version, def, params, inputs, outputs, runDependencies, resources, file }:
    let
      runFn = def.run or (throw "stage file '${file}': '${name}' has no 'run' attribute (a function { inputs, outputs, params, ... }: returning the bash script).");
      paramTokens = mapAttrs (p: _: "__repx_param_${p}__") params;
      inputRefs = mapAttrs (n: _: "\${inputs[\"${n}\"]}") inputs;
      body =
        if !isFunction runFn then throw "stage file '${file}': 'run' of '${name}' must be a function { inputs, outputs, params, ... }: returning a string."
        else u.callWith runFn {
          inherit pkgs;
          inputs = inputRefs;
          outputs = outputs;
          params = paramTokens;
          parameters = paramTokens;
        };
      script = scripts.mkScript {
        inherit name version runDependencies;
        body = if isString body then body
          else throw "stage file '${file}': 'run' of '${name}' must return a string (the bash script), got ${u.describe body}.";
      };
    in
    {
      script = script.path;
      path = script.searchPath;
      inherit body;
      run_dependencies = map toString (filter (x: x != null) runDependencies);
      inputs = mapAttrs (n: v: if isString v then v else toJSON v) inputs;
      outputs = u.filterAttrs (_: isString) outputs;
      resources = if resources == { } then null else resources;
    };

  checkResourcesType = file: r:
    if r == null || isAttrs r then true
    else throw "stage file '${file}': 'resources' must be an attribute set (mem, cpus, time, partition, sbatch_opts), got ${u.describe r}.";
in
{
  callStage = stageFile: deps:
    let
      file = u.sourceName stageFile;
      dir = if isFunction stageFile then null else dirOf stageFile;
      def = u.callFile "callStage's first argument" stageFile (pkgs // { inherit pkgs; });
      defOk = if isAttrs def then true
        else throw "stage file '${file}': a stage file must return an attribute set, got ${u.describe def}.";
      isSG = def ? scatter || def ? steps || def ? gather || def ? worker;
      kind = if isSG then "scatter-gather" else "simple";
      keysOk = u.checkKeys {
        what = "Stage definition (${kind})";
        inherit file;
        valid = if isSG then scatterGatherKeys else simpleKeys;
        set = def;
      };
      defaults = paramsOf "Stage definition" file def;
      version = def.version or "1.1";
      versionOk = if isString version then true
        else throw "stage file '${file}': 'version' must be a string, got ${u.describe version}.";

      dynamicAttrs = filter (a: isFunction (def.${a} or null)) [ "pname" "inputs" "outputs" "resources" ];
      dynChecks = builtins.all (a: checkDynamic file a def.${a}) dynamicAttrs;

      # The raw attribute (static value, or the { params }: function).
      inputsAttr = if isSG then (def.scatter.inputs or { }) // (def.inputs or { }) else def.inputs or { };
      outputsAttr = if isSG then def.gather.outputs or { } else def.outputs or { };
      rawOf = a: if a == "inputs" then inputsAttr else if a == "outputs" then outputsAttr else def.${a};
      resolveWith = raw: params: if isFunction raw then callDynamic raw params else raw;

      staticPname =
        if isFunction (def.pname or null) then null
        else if def ? pname && isString def.pname then def.pname
        else if def ? pname then throw "stage file '${file}': 'pname' must be a string or a { params }: function, got ${u.describe def.pname}."
        else throw "stage file '${file}': 'pname' is required.";

      # Values at the stage defaults name the stage in messages and scripts.
      pname = if staticPname != null then staticPname else callDynamic def.pname defaults;
      inputsFirst = resolveWith inputsAttr defaults;
      paramTokens = mapAttrs (p: _: "__repx_param_${p}__") defaults;
      # Output templates seen by `run`: a { params }: function is called with
      # the param tokens, so `$out/model-${params.model}.bin` becomes a template
      # the script completes at run time (Python checks it against the table).
      outputsForRun = raw: if isFunction raw then callDynamic raw paramTokens else raw;
      resourcesFirst = resolveWith (def.resources or null) defaults;

      # Input names over every combination this stage sees in the run.
      combos = key: effectiveCombos { pname = staticPname; inherit key defaults; };
      inputNamesFor = key:
        if isFunction inputsAttr
        then u.unique (concatMap (p: attrNames (callDynamic inputsAttr p)) (combos key))
        else attrNames inputsAttr;
      inputNames = inputNamesFor null;
      outputNames = attrNames (resolveWith outputsAttr defaults);

      depsOk = if isList deps then true
        else throw "callStage ${file}: the second argument must be a list of dependencies, got ${u.describe deps}.";
      wired = map (wire { consumer = pname; inherit inputNames file; }) deps;

      runDeps = def.runDependencies or [ ];
      runDepsOk = if isList runDeps then true
        else throw "stage file '${file}': 'runDependencies' must be a list of packages.";

      unionInputs = key: builtins.listToAttrs (map (n: {
        name = n;
        value = inputsFirst.${n} or "";
      }) (inputNamesFor key));

      simpleExecutables = key: {
        main = mkExecutable {
          name = pname;
          inherit version def file;
          params = defaults;
          inputs = unionInputs key;
          outputs = outputsForRun outputsAttr;
          runDependencies = runDeps;
          resources = if resourcesFirst == null then { } else resourcesFirst;
        };
      };

      sg = import ./scatter-gather.nix {
        inherit u pname version file defaults runDeps mkExecutable phaseKeys stepKeys def inputsAttr;
        outputsFor = outputsForRun;
      };

      tableFor = key:
        if dynamicAttrs == [ ] then null
        else {
          attrs = dynamicAttrs;
          table = map (p: { params = p; } // listToAttrs (map (a:
            let v = resolveWith (rawOf a) p; in {
              name = a;
              value =
                if a == "inputs" then mapAttrs (resolveInputDefault dir) v
                else if a == "outputs" then u.filterAttrs (_: isString) v
                else v;
            }) dynamicAttrs)) (combos key);
        };

      stageKey = builtins.hashString "sha256" (toJSON {
        inherit file;
        pname = if staticPname != null then staticPname else "<dynamic>";
        deps = map (d: [ d.stage d.mappings ]) wired;
      });
    in
    assert defOk && keysOk && dynChecks && depsOk && runDepsOk && versionOk
      && checkResourcesType file resourcesFirst;
    assert isSG -> sg.valid;
    {
      _repx_virtual_job = true;
      _key = stageKey;
      inherit pname version file kind outputNames inputNames;
      deps = wired;
      # Blueprint entry (docs/blueprint.md, STAGE) once mkRun knows the
      # stage's key, the keys of its producers and its inter-run inputs.
      blueprint = { key, keyOf, interRun }: {
        inherit key version file kind pname;
        params = defaults;
        inputs = mapAttrs (resolveInputDefault dir) (unionInputs key);
        outputs = u.filterAttrs (_: isString) (resolveWith outputsAttr defaults);
        resources = resourcesFirst;
        dynamic = tableFor key;
        deps = map (d: { inherit (d) explicit mappings; stage = keyOf d.stage; }) wired;
        inter_run = interRun;
        executables = if isSG then sg.executables else simpleExecutables key;
      } // (if isSG then { scatter_gather = sg.layout; } else { });
    };
}
