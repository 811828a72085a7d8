# The scatter-gather part of callStage: validate scatter / steps / gather and
# write one script per phase. Seed 003's single `worker` sub-stage is accepted
# as a one-step DAG. Each phase is one mkExecutable (stage.nix), rendered for
# the run's combinations `combos` of the stage's params; `outputsAt` gives the
# gather's (the stage's) outputs for one combination when they are dynamic.
{ u, pname, version, file, defaults, runDeps, mkExecutable, phaseKeys, stepKeys, def
, inputsAttr, outputsFor, outputsAt, combos, checkCombos ? combos }:
let
  inherit (builtins) attrNames concatMap elem filter isAttrs isList isString length mapAttrs;

  invalid = msg: throw "Scatter-gather stage \"${pname}\" (file '${file}') is invalid.\n${msg}";

  scatter = def.scatter or (invalid "It has no 'scatter' section.");
  gather = def.gather or (invalid "It has no 'gather' section.");
  steps =
    if def ? steps && def ? worker then invalid "Give either 'steps' or the single 'worker', not both."
    else if def ? steps then def.steps
    else if def ? worker then { worker = def.worker // { deps = def.worker.deps or [ ]; }; }
    else invalid "It has no 'steps' (or 'worker') section.";
  stepNames = attrNames steps;

  checkPhase = what: valid: set:
    if !isAttrs set then invalid "The '${what}' section must be an attribute set."
    else if !(isAttrs (set.inputs or { })) then invalid "The '${what}' section: 'inputs' must be an attribute set of names to default values (inputs = { data = \"\"; };), got ${u.describe set.inputs}."
    else if !(isAttrs (set.outputs or { })) then invalid "The '${what}' section: 'outputs' must be an attribute set of names to path templates (outputs = { result = \"$out/result.txt\"; };), got ${u.describe set.outputs}."
    else u.checkKeys { what = "Scatter-gather stage \"${pname}\", ${what} section"; inherit file valid set; };

  # A step is named by its key in `steps`, which its pname must repeat (the
  # seeds' rule: the key is what deps, unit ids and logs use); the key is part
  # of the step's unit ids (folder names), so it has no '/' or white space.
  stepNameOk = name:
    let step = steps.${name}; in
    if builtins.match "[^/[:space:][:cntrl:]]+" name == null then
      invalid "Step ${builtins.toJSON name}: a step's key is part of its job folders' names; use no '/', white space or control characters."
    else if !(def ? steps) then true
    else if !(step ? pname) then
      invalid "Step \"${name}\" has no 'pname': add pname = \"${name}\"; (a step's pname is its key in 'steps')."
    else if step.pname != name then
      invalid "Step \"${name}\" has pname ${builtins.toJSON step.pname}, but a step's pname must be its key in 'steps' (\"${name}\"): rename the key or the pname so that they match."
    else true;

  scatterOutputs = scatter.outputs or { };
  gatherInputs = gather.inputs or { };

  # Which step a dependency item refers to: the same value as in `steps`
  # (pointer equality), else by its pname.
  stepKeyOf = from: item:
    let
      byValue = filter (k: steps.${k} == item) stepNames;
      byName = if isAttrs item && item ? pname && elem item.pname stepNames then [ item.pname ] else [ ];
      found = byValue ++ byName;
    in
    if found != [ ] then builtins.head found
    else invalid "Step \"${from}\" depends on something that is not one of its steps ${u.showList stepNames}.";

  stepDeps = name:
    let
      step = steps.${name};
      deps = step.deps or (invalid "Step \"${name}\" has no 'deps' (use deps = [ ] for a root step).");
      inputNames = attrNames (step.inputs or { });
      one = item:
        if isList item then
          let
            n = length item;
            dep = stepKeyOf name (builtins.head item);
            source = builtins.elemAt item 1;
            target = if n == 3 then builtins.elemAt item 2 else source;
            depOutputs = attrNames (steps.${dep}.outputs or { });
          in
          if n != 2 && n != 3 then invalid "Step \"${name}\": a list dependency must be [ step \"source_output\" \"target_input\" ]."
          else if !(elem source depOutputs) then invalid "Step \"${name}\": dependency step \"${dep}\" does not have output \"${source}\".\nAvailable outputs: ${u.showList depOutputs}"
          else if !(elem target inputNames) then invalid "Step \"${name}\": explicit mapping targets input \"${target}\", but the step does not declare it.\nAvailable inputs: ${u.showList inputNames}"
          else { step = dep; explicit = true; mappings = [ { inherit source target; } ]; }
        else
          let
            dep = stepKeyOf name item;
            depOutputs = attrNames (steps.${dep}.outputs or { });
            shared = u.intersectLists depOutputs inputNames;
          in
          if shared == [ ] then invalid ''
            Step "${name}": implicit dependency on step "${dep}" found no matching input/output names.
            Step "${dep}" outputs: ${u.showList depOutputs}
            Step "${name}" inputs: ${u.showList inputNames}
            Use explicit mapping: [ ${dep} "source_output" "target_input" ]''
          else { step = dep; explicit = false; mappings = map (n: { source = n; target = n; }) shared; };
    in
    if isList deps then map one deps else invalid "Step \"${name}\": 'deps' must be a list.";

  depNames = name: map (d: d.step) (stepDeps name);
  roots = filter (n: (steps.${n}.deps or [ ]) == [ ]) stepNames;
  sinks = filter (n: !(builtins.any (m: elem n (depNames m)) stepNames)) stepNames;
  order = u.toposort {
    names = stepNames;
    deps = depNames;
    onCycle = path: invalid "The steps form a cycle: ${u.showList path}.";
  };
  sink = builtins.head sinks;
  sinkOutputs = attrNames (steps.${sink}.outputs or { });

  # Inputs a step receives: from dep steps, the work item, or the stage's own
  # inputs (by name). Anything else is an error.
  stepInputsOk = name:
    let
      declared = attrNames (steps.${name}.inputs or { });
      fromDeps = concatMap (d: map (m: m.target) d.mappings) (stepDeps name);
      external = attrNames inputsAttr;
      satisfied = filter (i: elem i fromDeps || i == "worker__item" || elem i external) declared;
      missing = u.subtractLists satisfied declared;
    in
    if missing == [ ] then true
    else invalid ''
      Step "${name}": the following inputs are not satisfied by any step dependency or external input:
      ${u.showList missing}
      Satisfied inputs: ${u.showList satisfied}
      Declared inputs: ${u.showList declared}'';

  valid =
    checkPhase "scatter" phaseKeys scatter
    && checkPhase "gather" phaseKeys gather
    && builtins.all (n: checkPhase "step '${n}'" stepKeys steps.${n}) stepNames
    && builtins.all stepNameOk stepNames
    && (if stepNames == [ ] then invalid "The 'steps' attrset must contain at least one step definition." else true)
    && (if scatterOutputs ? worker__arg then true else invalid "The 'scatter' section MUST define a special output named \"worker__arg\".")
    && (if scatterOutputs ? work__items then true else invalid "The 'scatter' section MUST define an output named \"work__items\".")
    && (if gatherInputs ? worker__outs then true else invalid "The 'gather' section MUST define an input named \"worker__outs\".")
    && (if roots == [ ] then invalid "No root steps found (every step has deps). There must be a cycle." else true)
    && (length order == length stepNames)
    && (if length sinks == 1 then true else invalid "There must be exactly one sink step (a step no other step depends on).\nFound ${toString (length sinks)}: ${u.showList sinks}")
    && (if builtins.any (r: (steps.${r}.inputs or { }) ? worker__item) roots then true
        else invalid "At least one root step must declare a \"worker__item\" input.\nRoot steps: ${u.showList roots}")
    && (if length sinkOutputs == 1 then true
        else invalid "The sink step \"${sink}\" must define exactly one output for gather.\nFound: ${u.showList sinkOutputs}")
    && builtins.all stepInputsOk stepNames;

  phase = { name, section, inputs, outputs, outputsAt ? null, extra ? { } }:
    let
      rendered = mkExecutable {
        inherit name version file combos checkCombos outputsAt;
        stage = pname;
        def = section;
        params = defaults;
        inherit inputs outputs;
        runDependencies = runDeps ++ (section.runDependencies or [ ]);
        resources = section.resources or { };
      };
    in
    {
      exe = rendered.exe // extra;
      variants = if rendered.variants == null then null else map (v: v // extra) rendered.variants;
      inherit (rendered) variantKeys;
    };
in
{
  inherit valid;
  layout = {
    step_order = order;
    inherit sink;
    sink_output = builtins.head sinkOutputs;
    work_items = scatterOutputs.work__items;
  };
  executables = {
    scatter = phase {
      name = "${pname}-scatter";
      section = scatter;
      inputs = inputsAttr;
      outputs = scatterOutputs;
    };
    steps = builtins.listToAttrs (map (n: {
      name = n;
      value = phase {
        name = "${pname}-step-${n}";
        section = steps.${n};
        inputs = steps.${n}.inputs or { };
        outputs = steps.${n}.outputs or { };
        extra = { deps = stepDeps n; };
      };
    }) stepNames);
    gather = phase {
      name = "${pname}-gather";
      section = gather;
      inputs = gatherInputs;
      outputs = outputsFor gather.outputs;
      inherit outputsAt;
    };
  };
}
