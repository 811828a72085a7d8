# Small helpers over Nix builtins (no nixpkgs lib), shared by the repx library.
let
  inherit (builtins)
    attrNames concatStringsSep elem filter foldl' functionArgs genList head
    intersectAttrs isAttrs isFunction isList isPath isString length listToAttrs
    mapAttrs tail toJSON typeOf;
in
rec {
  filterAttrs = pred: set:
    listToAttrs (map (n: { name = n; value = set.${n}; })
      (filter (n: pred n set.${n}) (attrNames set)));

  mapAttrsToList = f: set: map (n: f n set.${n}) (attrNames set);

  unique = list: foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ] list;

  subtractLists = remove: list: filter (x: !(elem x remove)) list;

  intersectLists = a: b: filter (x: elem x a) b;

  range = first: last:
    if first > last then [ ] else genList (i: first + i) (last - first + 1);

  hasPrefix = prefix: s:
    builtins.substring 0 (builtins.stringLength prefix) s == prefix;

  isDerivation = x: isAttrs x && (x.type or null) == "derivation";

  # The system derivations are built for: the one the package set was made for
  # (nixpkgs: stdenv.hostPlatform.system; the host set and plain sets: system).
  # builtins.currentSystem is the last resort only, because pure evaluation
  # (flakes) forbids it.
  systemOf = pkgs:
    pkgs.stdenv.hostPlatform.system or pkgs.system
      or builtins.currentSystem
      or (throw "repx: the package set given to mkLab names no system (pkgs.system or pkgs.stdenv.hostPlatform.system), and pure evaluation has no builtins.currentSystem; give the set a 'system' attribute.");

  # A readable rendering of a list of names for error messages: ["a","b"].
  showList = l: toJSON l;

  # How a value is described in an error message.
  describe = v:
    if isString v then toJSON v
    else if isPath v then toString v
    else if isFunction v then "a function"
    else if isDerivation v then "the derivation ${v.name or "?"}"
    else if isAttrs v then "an attribute set"
    else if isList v then "a list"
    else typeOf v;

  # The file a definition came from, for messages (a function has none).
  sourceName = f: if isFunction f then "<function>" else toString f;

  # callPackage without nixpkgs: pass the arguments the function asks for.
  # A function taking a plain identifier (`args: ...`) gets everything.
  callWith = fn: available:
    let args = functionArgs fn; in
    if args == { } then fn available else fn (intersectAttrs args available);

  # Load a file or accept a function, then call it like callPackage.
  callFile = what: f: available:
    let
      fn =
        if isFunction f then f
        else if isPath f || isString f then import f
        else throw "repx: ${what} must be a path to a .nix file or a function, got ${describe f}.";
    in
    if isFunction fn then callWith fn available else fn;

  # Unknown-attribute check shared by every schema: throws a message that names
  # the file, what was unknown, and the valid set.
  checkKeys = { what, file, valid, set }:
    let unknown = subtractLists valid (attrNames set); in
    if unknown == [ ] then true
    else throw ''
      ${what} in '${file}': unknown attributes ${showList unknown}.
      Valid attributes are: ${showList valid}.'';

  # Nix store names allow only [A-Za-z0-9+._?=-]; anything else becomes '-'.
  storeName = s:
    let
      ok = builtins.match "[A-Za-z0-9+._?=-]" ;
      chars = genList (i: builtins.substring i 1 s) (builtins.stringLength s);
      clean = concatStringsSep "" (map (c: if ok c != null then c else "-") chars);
      trimmed = if hasPrefix "." clean then "_${clean}" else clean;
    in
    if s == "" then "unnamed" else trimmed;

  # Depth-first topological sort with cycle detection; `deps n` lists the
  # names n depends on. The result lists dependencies first; ties by name.
  toposort = { names, deps, onCycle }:
    let
      visit = state: path: n:
        if elem n state.done then state
        else if elem n path then onCycle (path ++ [ n ])
        else
          let
            after = foldl' (s: d: visit s (path ++ [ n ]) d) state (deps n);
          in
          after // { done = after.done ++ [ n ]; };
    in
    (foldl' (s: n: visit s [ ] n) { done = [ ]; } names).done;

  # Cartesian product of "units": each unit is a list of partial attrsets.
  product = units:
    foldl' (acc: unit: builtins.concatMap (a: map (u: a // u) unit) acc) [ { } ] units;

  # Dedupe a list of JSON-able values (order: by their JSON text). Linear, so a
  # 10 000-combination sweep stays cheap. Values may hold store paths (a param
  # that is a file): the name drops their context, the value keeps it.
  uniqueJSON = list:
    builtins.attrValues (listToAttrs (map (x: {
      name = builtins.unsafeDiscardStringContext (toJSON x);
      value = x;
    }) list));

  inherit head tail length;
}
