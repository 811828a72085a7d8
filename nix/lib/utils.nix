# mkUtils: parameter helpers for run files (scan, dirs, files, zip, range…).
{ pkgs ? { } }:
let
  u = import ./internal/prelude.nix;
  inherit (builtins) attrNames concatStringsSep filter isAttrs isList isPath isString length
    map match readDir toJSON;

  # Values of scan/dirs/files are store paths, one per entry: each entry is
  # copied on its own, so changing one file changes only the jobs that use it.
  entryPath = src: name: "${builtins.path { path = src + "/${name}"; name = u.storeName name; }}";

  isStorePath = s: isString s && u.hasPrefix builtins.storeDir s;

  scan = { src, type ? "any", match ? null }:
    let
      validTypes = [ "any" "file" "directory" ];
      typeOk = if builtins.elem type validTypes then true
        else throw "utils.scan: type must be one of ${u.showList validTypes}, got ${toJSON type}.";
      fromDrv = u.isDerivation src || isStorePath (toString src);
      base = if u.isDerivation src then "${src}" else src;
      entries = readDir base;
      wanted = n:
        let t = entries.${n}; in
        (type == "any"
          || (type == "file" && (t == "regular" || t == "symlink"))
          || (type == "directory" && t == "directory"))
        && (match == null || builtins.match match n != null);
      names = filter wanted (attrNames entries);
      values = map (n: if fromDrv then "${base}/${n}" else entryPath src n) names;
      srcOk =
        if isPath src || u.isDerivation src || isString src then true
        else throw "utils.scan: 'src' must be a path or a derivation, got ${u.describe src}.";
    in
    assert typeOk && srcOk;
    if !fromDrv && !(builtins.pathExists src) then
      throw "utils.scan: the folder ${toString src} does not exist."
    else {
      _repx_param = true;
      inherit values;
      context = if fromDrv then [ (toString src) ] else values;
    };
in
{
  list = values:
    if isList values then { _repx_param = true; inherit values; context = [ ]; }
    else throw "utils.list: expected a list, got ${u.describe values}.";

  range = first: last: u.range first last;

  inherit scan;
  dirs = src: scan { inherit src; type = "directory"; };
  files = src: scan { inherit src; type = "file"; };

  zip = groups:
    let
      names = attrNames groups;
      notLists = filter (n: !isList groups.${n}) names;
      lengths = map (n: length groups.${n}) names;
      first = builtins.head lengths;
      same = builtins.all (l: l == first) lengths;
      described = concatStringsSep ", " (map (n: "'${n}' has ${toString (length groups.${n})} items") names);
    in
    if !isAttrs groups then throw "utils.zip: expected an attribute set of lists, got ${u.describe groups}."
    else if names == [ ] then throw "utils.zip: needs at least one parameter list."
    else if notLists != [ ] then throw "utils.zip: every value must be a list; not a list: ${u.showList notLists}."
    else if !same then throw "utils.zip: all parameter lists must have the same length, but ${described}"
    else { _repx_zip = true; inherit groups; length = first; };

  env = vars: if vars == { } then "" else
    "export " + concatStringsSep " " (map (n: "${n}=${toString vars.${n}}") (attrNames vars));
}
