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
    let given = def.params or def.parameters or { }; in
    if def ? params && def ? parameters then
      throw "${what} in '${file}': give either 'params' or its alias 'parameters', not both."
    else if isAttrs given then given
    else throw "${what} in '${file}': 'params' must be an attribute set of default values (params = { seed = 1; };), got ${u.describe given}.";

  # pname and version are part of every job id, and a job id is a folder name
  # in the store: no '/', no white space or control characters (a pname from
  # a { params }: function is checked for every combination).
  checkIdPart = file: attr: value:
    if !isString value then value
    else if builtins.match "[^/[:space:][:cntrl:]]+" value != null then value
    else throw "stage file '${file}': ${attr} ${toJSON value} cannot be part of a job id (a folder name in the store): use no '/', white space or control characters${if value == "" then ", and not an empty string" else ""}.";

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
      units = axisUnits ++ zipUnits;
      # (One unit is its own product: its sets, without a copy of each.)
      combos = if length units == 1 then builtins.head units else u.product units;
      effective = c: defaults // u.filterAttrs (_: v: v != null) c;
      # A null value means the default; without one, `defaults // c` is `effective c`.
      anyNull = builtins.any (unit: builtins.any (x:
        builtins.any (v: v == null) (builtins.attrValues x)) unit) units;
    in
    {
      # Each combination once, in the order of its JSON text: the rows of a
      # dynamic table (the lab JSON lists them in this order).
      rows = u.uniqueJSON (map effective combos);
      # Every combination, in product order, a repeated one (two zip rows that
      # give the same values) as often as it occurs: what the check of `run` in
      # mkExecutable renders, which needs neither order nor uniqueness. Neither
      # sorting half a million JSON texts nor filtering nulls per combination is
      # then paid by a stage whose `run` turns out not to depend on the values.
      # Every combination names the same params; when they are all the declared
      # ones, `defaults // c` is c itself.
      all =
        if anyNull then map effective combos
        else if combos != [ ] && builtins.all (p: builtins.head combos ? ${p}) declared then combos
        else map (c: defaults // c) combos;
    };

  # Inside `run`, `params.<p>` (and `parameters.<p>`) is the bash expansion of
  # the job's value, ${params["<p>"]}: a value reaches the script as data (quotes
  # and $(...) in it are printed, never run), and the script text does not depend
  # on the values, so it is checked once and serves every job of the stage.
  # repx/lab/script_checks.py spells the expansion the same way.
  expansionOf = p:
    "\${params[\"${builtins.replaceStrings [ "\\" "\"" "$" "`" ] [ "\\\\" "\\\"" "\\$" "\\`" ] p}\"]}";
  expansionsOf = params: mapAttrs (p: _: expansionOf p) params;

  # The text bash holds for a value at run time (the params JSON as the script
  # header reads it): strings (and store paths) raw, null empty, booleans and
  # numbers as their JSON text.
  bashText = v:
    if isString v || builtins.isPath v || u.isDerivation v then "${v}"
    else if v == null then ""
    else if v == true then "true"
    else if v == false then "false"
    else toJSON v;

  contains = text: part:
    builtins.stringLength (builtins.replaceStrings [ part ] [ "" ] text) != builtins.stringLength text;

  # One executable (simple stage main, scatter, step, gather).
  #
  # `run` is rendered once with the params as bash expansions. A `run` can still
  # make its text depend on the values in Nix (`if params.seed == 2 then ...`,
  # `lib.toUpper params.x`, a `writeText` of a param): so for every distinct
  # combination `c` of the stage's params (`combos`), `run` is also rendered with
  # c's values and compared with the expansion text with c's values put in.
  # Any difference makes the executable value-dependent: it then gets one
  # script per combination (`variants`, in `combos` order), in which only the
  # params that change the text are values and the others stay expansions
  # (all are values when no single param explains the difference).
  #
  # Nix cannot interpolate a number, boolean or null ("${params.seed}" is an
  # error with the value 2, and fine with the expansion): so a probe rendering
  # with such a param set to a path (which interpolation copies to the store,
  # and toString does not) finds the params the text interpolates directly.
  # Those are given as their bash text in the value rendering; every other
  # param is given as its value, and `toString` of it is what the expansion is
  # compared with. `outputsAt c` is the stage's outputs for c when they are a
  # { params }: function (null: static outputs). `combos` are the rows (their
  # order is the variants'); `checkCombos` the same combinations as the check
  # walks them (any order, repeats allowed: effectiveCombos's `all`).
  mkExecutable = { name, version, def, params, inputs, outputs, runDependencies, resources, file
                 , combos ? [ ], checkCombos ? combos, outputsAt ? null, stage ? name }:
    let
      # For messages: the stage, and which of its scripts (a scatter-gather phase).
      label = if stage == name then "stage '${stage}'" else "stage '${stage}' ('${name}')";
      runFn = def.run or (throw "stage file '${file}': '${name}' has no 'run' attribute (a function { inputs, outputs, params, ... }: returning the bash script).");
      names = attrNames params;
      expansions = expansionsOf params;
      inputRefs = mapAttrs (n: _: "\${inputs[\"${n}\"]}") inputs;
      render = paramValues: outs:
        let
          body =
            if !isFunction runFn then throw "stage file '${file}': 'run' of '${name}' must be a function { inputs, outputs, params, ... }: returning a string."
            else runFn (argsFor paramValues outs);
        in
        if isString body then body
        else throw "stage file '${file}': 'run' of '${name}' must return a string (the bash script), got ${u.describe body}.";

      body = builtins.addErrorContext
        "repx: while rendering 'run' of ${label} (file '${file}'): inside `run`, params.<p> and parameters.<p> are the bash expansions \${params[\"<p>\"]} (strings), not the values, so Nix cannot test or compute with them there (`if params.flag`, `params.n + 1`); do that in bash (if [ \"\${params.flag}\" = true ]), or in a { params }: function of pname, inputs, outputs or resources."
        (render expansions outputs);

      takes = if isFunction runFn then functionArgs runFn else { };
      getsAll = takes == { };
      # u.callWith with the formals read once: `run` is called once per
      # combination, so its arguments are built as the one set it asks for
      # rather than as every argument and then intersected with its formals.
      wants = n: getsAll || takes ? ${n};
      fixedArgs = (if wants "pkgs" then { inherit pkgs; } else { })
        // (if wants "inputs" then { inputs = inputRefs; } else { });
      wantsOutputs = wants "outputs";
      wantsParams = wants "params";
      wantsParameters = wants "parameters";
      argsFor = v: outs: fixedArgs // (
        if wantsOutputs then
          (if wantsParams then
            (if wantsParameters then { outputs = outs; params = v; parameters = v; } else { outputs = outs; params = v; })
          else if wantsParameters then { outputs = outs; parameters = v; } else { outputs = outs; })
        else if wantsParams then
          (if wantsParameters then { params = v; parameters = v; } else { params = v; })
        else if wantsParameters then { parameters = v; } else { });
      mayDepend = (names != [ ] && (wantsParams || wantsParameters))
        || (outputsAt != null && wantsOutputs);

      isText = v: isString v || builtins.isPath v || u.isDerivation v;
      probe = ./param-probe.txt;
      probeCopy = "${probe}";
      interpolatedDirectly = p:
        builtins.any (c: !(isText c.${p})) checkCombos
        && contains body (expansionOf p)
        && contains (builtins.addErrorContext
          "repx: while rendering 'run' of ${label} (file '${file}') with the path ${toString probe} for params.${p}, to find whether it interpolates params.${p} directly."
          (render (expansions // { ${p} = probe; }) outputs)) probeCopy;
      direct = filter interpolatedDirectly names;
      valueOf = p: v: if elem p direct then bashText v else v;
      # The text the value rendering holds where the expansion text holds ${params["p"]}.
      # (`textOf p` makes its `direct` test once: fillIn calls it per combination.)
      textOf = p: if elem p direct then bashText
        else (v: if isText v then bashText v else toString v);
      patterns = map expansionOf names;
      fillers = map (p: let valueText = textOf p; in c: valueText c.${p}) names;
      fillIn = c: text: builtins.replaceStrings patterns (map (f: f c) fillers) text;
      # The params `run` gets for c (c itself when no param is interpolated directly).
      valuesFor = c: if direct == [ ] then c else mapAttrs valueOf c;
      realOutputs = c: if outputsAt == null then outputs else outputsAt c;
      # Output templates stay expansions where they give c's outputs exactly.
      outputsFor = c:
        if outputsAt == null then outputs
        else mapAttrs (n: t:
          let real = (realOutputs c).${n} or t; in
          if isString t && fillIn c t == real then t else real) outputs;

      renderAt = c: builtins.addErrorContext
        "repx: while rendering 'run' of ${label} (file '${file}') with the param values ${builtins.unsafeDiscardStringContext (toJSON c)}, to find whether its text depends on them beyond the bash expansions; a `run` that tests a number or boolean param in Nix must interpolate it as toString params.<p>."
        (render (valuesFor c) (realOutputs c));
      rendered = map renderAt combos;
      count = length combos;
      at = i: builtins.elemAt combos i;
      # body and the probes first: their errors are not about any one combination.
      # Every combination is rendered (a text may depend on two values at once);
      # the rows themselves only when one differs.
      dependent = mayDepend && builtins.seq body (builtins.seq direct
        (builtins.any (c: renderAt c != fillIn c body) checkCombos));

      # Which params change the text on their own (each value tried with the
      # other params left as expansions).
      valuesOf = p: u.uniqueJSON (map (c: c.${p}) combos);
      changesText = p: builtins.any (v:
        render (expansions // { ${p} = valueOf p v; }) outputs
          != builtins.replaceStrings [ (expansionOf p) ] [ (textOf p v) ] body) (valuesOf p);
      responsible = filter changesText names;
      partial = map (c: render (expansions // mapAttrs valueOf (u.filterAttrs (p: _: elem p responsible) c)) (outputsFor c)) combos;
      partialExact = builtins.all (i: fillIn (at i) (builtins.elemAt partial i) == builtins.elemAt rendered i)
        (u.range 0 (count - 1));
      variantBodies = if partialExact then partial else rendered;
      variantOutputs = if partialExact then map outputsFor combos else map realOutputs combos;

      variantKeys = builtins.genList (i: builtins.hashString "sha256"
        (builtins.unsafeDiscardStringContext
          (toJSON [ (builtins.elemAt variantBodies i) (builtins.elemAt variantOutputs i) ]))) count;
      variantsByKey = listToAttrs (builtins.genList (i: {
        name = builtins.elemAt variantKeys i;
        value = exeFor (builtins.elemAt variantBodies i) (builtins.elemAt variantOutputs i);
      }) count);

      exeFor = text: outs:
        let script = scripts.mkScript { inherit name version runDependencies; body = text; }; in
        {
          script = script.path;
          path = script.searchPath;
          body = text;
          run_dependencies = map toString (filter (x: x != null) runDependencies);
          inputs = mapAttrs (n: v: if isString v then v else toJSON v) inputs;
          outputs = blueprintOutputs file outs;
          resources = if resources == { } then null else resources;
        };
    in
    {
      exe = exeFor body outputs;
      # One EXE (and script derivation) per distinct text, shared by its rows;
      # `variantKeys` tells the rows' EXEs apart without comparing them.
      variants = if !dependent then null else map (k: variantsByKey.${k}) variantKeys;
      inherit variantKeys;
    };

  # Outputs go to the blueprint as declared, non-strings included: Python checks
  # every template against one rule (repx/lab/outputs.py) and names the stage, so a
  # list or a number is an error there, not silently dropped here. Only a function
  # cannot be written as JSON at all.
  blueprintOutputs = file: mapAttrs (n: v:
    if isFunction v then throw "stage file '${file}': output '${n}' is a function; an output is a path template such as \"$out/${n}.txt\"."
    else v);

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
      version = checkIdPart file "version" (def.version or "1.1");
      versionOk = if isString version then true
        else throw "stage file '${file}': 'version' must be a string, got ${u.describe version}.";

      dynamicAttrs = filter (a: isFunction (def.${a} or null)) [ "pname" "inputs" "outputs" "resources" ];
      dynChecks = builtins.all (a: checkDynamic file a def.${a}) dynamicAttrs;

      # The raw attribute (static value, or the { params }: function). Inputs and
      # outputs are attribute sets, what a function returns too: a list there
      # would otherwise fail inside repx's library without naming the file.
      setOf = attr: fromFunction: v:
        let example = if u.hasPrefix "outputs" attr || u.hasPrefix "gather." attr
          then "{ result = \"$out/result.txt\"; }" else "{ data = \"\"; }"; in
        if isAttrs v then v
        else throw "stage file '${file}': '${attr}' must be an attribute set${if fromFunction then " (also what its { params }: function returns)" else ""}, e.g. ${attr} = ${example}; got ${u.describe v}.";
      setAttr = attr: raw:
        if isFunction raw then { params }: setOf attr true (callDynamic raw params)
        else setOf attr false raw;
      inputsAttr = if isSG then setAttr "scatter.inputs" (def.scatter.inputs or { }) // setAttr "inputs" (def.inputs or { }) else setAttr "inputs" (def.inputs or { });
      outputsAttr = setAttr (if isSG then "gather.outputs" else "outputs") (if isSG then def.gather.outputs or { } else def.outputs or { });
      rawOf = a: if a == "inputs" then inputsAttr else if a == "outputs" then outputsAttr else def.${a};
      resolveWith = raw: params: if isFunction raw then callDynamic raw params else raw;

      staticPname =
        if isFunction (def.pname or null) then null
        else if def ? pname && isString def.pname then checkIdPart file "pname" def.pname
        else if def ? pname then throw "stage file '${file}': 'pname' must be a string or a { params }: function, got ${u.describe def.pname}."
        else throw "stage file '${file}': 'pname' is required.";

      # Values at the stage defaults name the stage in messages and scripts.
      pname = if staticPname != null then staticPname
        else checkIdPart file "pname (from its function, at the stage's default params)" (callDynamic def.pname defaults);
      inputsFirst = resolveWith inputsAttr defaults;
      # Output templates seen by `run`: a { params }: function is called with
      # the params' bash expansions, so `$out/model-${params.model}.bin` becomes
      # a template bash completes at run time (Python checks it against the
      # table); `outputsAtFor` gives the values for one combination.
      outputsForRun = raw: if isFunction raw then callDynamic raw (expansionsOf defaults) else raw;
      outputsAtFor = raw: if isFunction raw then (c: callDynamic raw c) else null;
      resourcesFirst = resolveWith (def.resources or null) defaults;

      # Input names over every combination this stage sees in the run.
      combos = key: (effectiveCombos { pname = staticPname; inherit key defaults; }).rows;
      checkCombos = key: (effectiveCombos { pname = staticPname; inherit key defaults; }).all;
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

      # Every executable of the stage as mkExecutable gives it ({ exe, variants }),
      # for the run's combinations `cs` of the stage's params.
      executablesFor = key: cs:
        if isSG then (sgWith cs (checkCombos key)).executables
        else {
          main = mkExecutable {
            name = pname;
            inherit version def file;
            params = defaults;
            inputs = unionInputs key;
            outputs = outputsForRun outputsAttr;
            outputsAt = outputsAtFor outputsAttr;
            combos = cs;
            checkCombos = checkCombos key;
            runDependencies = runDeps;
            resources = if resourcesFirst == null then { } else resourcesFirst;
          };
        };
      # The blueprint's EXE objects, each chosen from { exe, variants } by `pick`.
      pickExecutables = pick: exes:
        if exes ? main then { main = pick exes.main; }
        else {
          scatter = pick exes.scatter;
          steps = mapAttrs (_: pick) exes.steps;
          gather = pick exes.gather;
        };
      listExecutables = exes:
        if exes ? main then [ exes.main ]
        else [ exes.scatter exes.gather ] ++ builtins.attrValues exes.steps;
      variantAt = i: e: if e.variants == null then e.exe else builtins.elemAt e.variants i;

      sgWith = cs: checkCs: import ./scatter-gather.nix {
        inherit u pname version file defaults runDeps mkExecutable phaseKeys stepKeys def inputsAttr;
        outputsFor = outputsForRun;
        outputsAt = outputsAtFor outputsAttr;
        combos = cs;
        checkCombos = checkCs;
      };
      sg = sgWith [ ] [ ];

      # Per-combination rows: the { params }: attributes, and the executables
      # when a `run` renders differently for different values. A row's
      # `executables` is an index into the distinct executable sets (`variants`),
      # so a sweep whose scripts differ by one param stays a small blueprint.
      tableFor = cs: exes:
        let
          exeList = listExecutables exes;
          valueDependent = builtins.any (e: e.variants != null) exeList;
          attrs = dynamicAttrs ++ (if valueDependent then [ "executables" ] else [ ]);
          rowKeys = builtins.genList (i: builtins.concatStringsSep ":"
            (map (e: if e.variants == null then "" else builtins.elemAt e.variantKeys i) exeList))
            (length cs);
          distinctKeys = attrNames (listToAttrs (map (k: { name = k; value = null; }) rowKeys));
          firstRowOf = listToAttrs (builtins.genList (i: { name = builtins.elemAt rowKeys i; value = i; }) (length cs));
          indexOf = listToAttrs (builtins.genList (j: { name = builtins.elemAt distinctKeys j; value = j; })
            (length distinctKeys));
        in
        if attrs == [ ] then null
        else {
          inherit attrs;
          variants = if valueDependent
            then map (k: pickExecutables (variantAt firstRowOf.${k}) exes) distinctKeys
            else null;
          table = builtins.genList (i:
            let p = builtins.elemAt cs i; in
            { params = p; } // listToAttrs (map (a:
              let v = resolveWith (rawOf a) p; in {
                name = a;
                value =
                  if a == "inputs" then mapAttrs (resolveInputDefault dir) v
                  else if a == "outputs" then blueprintOutputs file v
                  else if a == "pname" then checkIdPart file "pname (from its function, for params ${toJSON p})" v
                  else v;
              }) dynamicAttrs)
            // (if valueDependent then { executables = indexOf.${builtins.elemAt rowKeys i}; } else { }))
            (length cs);
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
      # Who this node is, without its deps: a function made afresh by each
      # callStage call (kept by `//` copies). mkRun compares nodes by it to find
      # a cycle of stages before `_key`, which hashes the deps' keys, recurses.
      _identity = _: null;
      _key = stageKey;
      inherit pname version file kind outputNames inputNames;
      deps = wired;
      # Blueprint entry (docs/blueprint.md, STAGE) once mkRun knows the
      # stage's key, the keys of its producers and its inter-run inputs.
      blueprint = { key, keyOf, interRun }:
        let
          cs = combos key;
          exes = executablesFor key cs;
        in
        {
          inherit key version file kind pname;
          params = defaults;
          inputs = mapAttrs (resolveInputDefault dir) (unionInputs key);
          outputs = blueprintOutputs file (resolveWith outputsAttr defaults);
          resources = resourcesFirst;
          dynamic = tableFor cs exes;
          deps = map (d: { inherit (d) explicit mappings; stage = keyOf d.stage; }) wired;
          inter_run = interRun;
          # A value-dependent executable's static EXE is its first row's.
          executables = pickExecutables (variantAt 0) exes;
        } // (if isSG then { scatter_gather = sg.layout; } else { });
    };
}
