# mkLab and callRun: the lab's runs, their dependencies and groups, written as
# the lab directory (docs/blueprint.md) by one builtins-only derivation.
# Independent of any package set: the `pkgs` given to mkLab is the one every
# run, pipeline and stage of the lab receives, so overlays reach the stages.
{ repx-lib }:
let
  u = import ./internal/prelude.nix;
  images = import ./internal/images.nix;
  inherit (builtins) attrNames concatMap elem filter isAttrs isList isString length listToAttrs
    mapAttrs match toJSON;

  containerModes = [ "none" "unified" "per-run" ];
  labKeys = [ "pkgs" "repx-lib" "gitHash" "lab_version" "runs" "groups" "containerMode"
    "runContainerMode" ];
  depTypes = [ "hard" "soft" ];

  isPlaceholder = x: isAttrs x && (x._repx_type or null) == "run_placeholder";

  # The lab directory for a list of evaluated runs (dependencies first).
  labDirectory = { drvName, system, runs, groups, gitHash, labVersion, containerMode, runContainerMode, labFile }:
    let
      # The images (containerMode) are their own derivation, linked as images/;
      # lab.json lists them with their digests, which only its build knows, so
      # its "images" value is spliced in from the images' index.json.
      imagesDrv = images.imagesDerivation { inherit system containerMode runs; };
      imageOf = images.imageNames { inherit containerMode runs; };
      imagesPlaceholder = "@repx-images@";
      manifestParts = builtins.split (toJSON imagesPlaceholder)
        (toJSON (manifest // { images = imagesPlaceholder; }));
      manifest = {
        format = "repx-lab/1";
        git_hash = gitHash;
        lab_version = labVersion;
        lab_file = labFile;
        container_mode = containerMode;
        run_container_mode = runContainerMode;
        runs = map (r: r.name) runs;
        inherit groups;
      };
      runEnv = listToAttrs (builtins.genList (i: {
        name = "run${toString i}";
        value = let r = builtins.elemAt runs i; in toJSON (r // { image = imageOf.${r.name}; });
      }) (length runs));
      # A stage's scripts: its executables', and each dynamic variant's (a
      # `run` whose text depends on param values has a script per variant).
      exeScripts = e:
        if e ? main then [ e.main.script ]
        else [ e.scatter.script e.gather.script ] ++ map (n: e.steps.${n}.script) (attrNames e.steps);
      rowScripts = s:
        if s.dynamic != null && elem "executables" s.dynamic.attrs
        then concatMap exeScripts s.dynamic.variants else [ ];
      scriptsOf = r: concatMap (p: concatMap (s: exeScripts s.executables ++ rowScripts s)
        p.stages) r.pipelines;
      # Deduplicated through attribute names (linear; u.unique is quadratic,
      # and a value-dependent stage may have a script per combination).
      scripts = builtins.attrValues (listToAttrs (map (s: {
        name = builtins.unsafeDiscardStringContext s;
        value = s;
      }) (concatMap scriptsOf runs)));
      copyRuns = builtins.concatStringsSep "\n" (builtins.genList (i:
        let r = builtins.elemAt runs i; in
        ''cp "$run${toString i}Path" "$out/runs/${r.name}.json"'') (length runs));
      linkScripts = builtins.concatStringsSep "\n" (map (s:
        ''ln -s "${s}" "$out/scripts/${baseNameOf (dirOf (dirOf s))}"'') scripts);
    in
    builtins.derivation ({
      name = drvName;
      inherit system;
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      # A few copies and links: built where repx runs, never handed to a remote
      # builder (Nix would start its build hook for that, which costs more than
      # the build), and never looked up in a binary cache.
      preferLocalBuild = true;
      allowSubstitutes = false;
      labJSON = toJSON (manifest // { images = { }; });
      labJSONHead = builtins.head manifestParts;
      labJSONTail = builtins.elemAt manifestParts 2;
      passAsFile = [ "labJSON" "labJSONHead" "labJSONTail" "buildScript" ] ++ attrNames runEnv;
      buildScript = ''
        set -eu
        mkdir -p "$out/runs" "$out/scripts"
        ${if imagesDrv == null then ''cp "$labJSONPath" "$out/lab.json"'' else ''
          cat "$labJSONHeadPath" "${imagesDrv}/index.json" "$labJSONTailPath" > "$out/lab.json"
          ln -s "${imagesDrv}" "$out/images"
        ''}
        ${copyRuns}
        ${linkScripts}
      '';
      args = [ "-c" ". \"$buildScriptPath\"" ];
    } // runEnv);
in
{
  callRun = runPath: dependencies:
    if !isList dependencies then
      throw "callRun ${u.sourceName runPath}: the second argument must be a list of run dependencies (use [ ] for none), got ${u.describe dependencies}."
    else { _repx_type = "run_placeholder"; inherit runPath dependencies; };

  mkLab = args:
    let
      labFile = args._labFile or "lab.nix";
      where = "mkLab (file '${labFile}')";
      pkgs =
        if !(args ? pkgs) then throw "${where}: 'pkgs' is required (the package set the lab's stages use: `inherit pkgs;`)."
        else if !isAttrs args.pkgs then throw "${where}: 'pkgs' must be a package set (an attribute set), got ${u.describe args.pkgs}."
        else args.pkgs;
      mkRun = import ./run.nix { inherit pkgs repx-lib; };
      keysOk = u.checkKeys {
        what = "mkLab";
        file = labFile;
        valid = labKeys ++ [ "_labFile" ];
        set = args;
      };
      gitHash = args.gitHash or "unknown";
      labVersion = args.lab_version or (throw "${where}: 'lab_version' is required (a version string for this lab).");
      runsSet = args.runs or (throw "${where}: 'runs' is required (an attribute set of callRun placeholders).");
      groupsSet = args.groups or { };
      containerMode = args.containerMode or "unified";
      runContainerMode = args.runContainerMode or "per-run";
      modeOk = what: m: if elem m containerModes then true
        else throw "${where}: invalid ${what} ${toJSON m}.\nValid: ${u.showList containerModes}.";

      runKeys = attrNames runsSet;
      runsOk = builtins.all (k: isPlaceholder runsSet.${k}
        || throw "${where}: runs.${k} must be a run created with repx-lib.callRun, got ${u.describe runsSet.${k}}.") runKeys;
      keyOfPlaceholder = from: p:
        let
          # Compare run files first: comparing two placeholders that depend on
          # each other would otherwise recurse forever (a cycle of runs).
          samePath = k: builtins.isFunction p.runPath || runsSet.${k}.runPath == p.runPath;
          found = filter (k: samePath k && runsSet.${k} == p) runKeys;
        in
        if found != [ ] then builtins.head found
        else throw "${where}: run '${from}' depends on a run that is not listed in mkLab's runs; add it to runs.";

      # Dependencies of a run key as [ { key; type; } ].
      depsOf = k: map (d:
        if isPlaceholder d then { key = keyOfPlaceholder k d; type = "hard"; }
        else if isList d then
          if length d != 2 then throw "${where}: run '${k}': a list dependency must have exactly 2 elements: [ run \"hard\" | \"soft\" ]."
          else if !(isPlaceholder (builtins.head d)) then throw "${where}: run '${k}': in [ run type ], the first element must be a run (from callRun)."
          else if !(elem (builtins.elemAt d 1) depTypes) then throw "${where}: run '${k}': dependency type must be \"hard\" or \"soft\", got ${u.describe (builtins.elemAt d 1)}."
          else { key = keyOfPlaceholder k (builtins.head d); type = builtins.elemAt d 1; }
        else throw "${where}: run '${k}': a dependency must be a run (from callRun) or a list [ run \"hard\" | \"soft\" ], got ${u.describe d}.")
        runsSet.${k}.dependencies;

      order = u.toposort {
        names = runKeys;
        deps = k: map (d: d.key) (depsOf k);
        onCycle = path: throw "${where}: circular dependency between runs: ${builtins.concatStringsSep " -> " path}.";
      };

      scope = repx-lib // { utils = repx-lib.mkUtils { inherit pkgs; }; };
      runArgsOf = k:
        let
          p = runsSet.${k}.runPath;
          r = u.callFile "a run" p (pkgs // { inherit pkgs; repx-lib = scope; });
        in
        if isAttrs r then r
        else throw "run file '${u.sourceName p}': a run file must return an attribute set (name, pipelines, params), got ${u.describe r}.";
      # A run names itself (the seeds: `name` is required); its key in `runs` is
      # only how lab.nix refers to it.
      nameOf = k: (runArgsOf k).name or (throw "run file '${u.sourceName runsSet.${k}.runPath}' (runs.${k} in '${labFile}'): 'name' is required: the run's name, which commands and job records use (e.g. name = \"${k}\";).");
      names = map nameOf order;
      evaluated = listToAttrs (map (k: {
        name = k;
        value = mkRun (runArgsOf k // {
          pkgs = pkgs;
          repx-lib = scope;
          _file = u.sourceName runsSet.${k}.runPath;
          _key = k;
          _interRun = map (d: { run = nameOf d.key; inherit (d) type; }) (depsOf k);
        });
      }) runKeys);

      dupNames = filter (n: length (filter (x: x == n) names) > 1) (u.unique names);
      badNames = filter (n: !isString n || match "[A-Za-z0-9][A-Za-z0-9._+-]*" n == null) names;
      namesOk =
        if dupNames != [ ] then throw "${where}: duplicate run names: ${u.showList dupNames}. Every run needs its own name."
        else if badNames != [ ] then throw "${where}: invalid run names ${u.showList badNames}: use letters, digits, '.', '_', '+' and '-'."
        else true;

      groupNames = attrNames groupsSet;
      collide = filter (g: elem g names) groupNames;
      groupsOk =
        if !isAttrs groupsSet then throw "${where}: 'groups' must be an attribute set of lists of runs."
        else if collide != [ ] then throw "${where}: group name(s) collide with run name(s): ${u.showList collide}."
        else true;
      groups = mapAttrs (g: members:
        if !isList members then throw "${where}: group '${g}' must be a list of runs."
        else map (m: if isPlaceholder m then nameOf (keyOfPlaceholder "group ${g}" m)
          else throw "${where}: group '${g}' contains an element that is not a run (from callRun).") members)
        groupsSet;

      closureOf = k: u.unique (concatMap (d: closureOf d.key) (depsOf k) ++ [ k ]);
      inOrder = keys: filter (k: elem k keys) order;

      common = {
        inherit gitHash labVersion containerMode runContainerMode labFile;
        system = u.systemOf pkgs;
      };
      checked = keysOk && modeOk "containerMode" containerMode
        && modeOk "runContainerMode" runContainerMode && runsOk && namesOk && groupsOk;
    in
    assert checked;
    {
      lab = labDirectory (common // {
        drvName = "repx-lab";
        runs = map (k: evaluated.${k}) order;
        inherit groups;
      });
      # A slice holds the run and the runs it depends on: their jobs are part
      # of its identities and inputs. It is there under the run's key and, when
      # no other run has that key, under the run's name (`--run NAME`).
      runs =
        let
          slice = k: labDirectory (common // {
            drvName = "repx-lab-${u.storeName (nameOf k)}";
            runs = map (d: evaluated.${d}) (inOrder (closureOf k));
            groups = { };
            containerMode = runContainerMode;
          });
          byKey = listToAttrs (map (k: { name = k; value = slice k; }) runKeys);
          byName = filter (k: !(runsSet ? ${nameOf k})) runKeys;
        in
        listToAttrs (map (k: { name = nameOf k; value = byKey.${k}; }) byName) // byKey;
    };
}
