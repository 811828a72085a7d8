# repx host package set.
#
# A stand-in for nixpkgs on a machine that has Nix (e.g. Debian's nix-bin) but no
# nixpkgs checkout.  Each package is a derivation whose $out/bin holds copies
# of the host's own binaries, made to run from the store alone, so a lab
# written against nixpkgs (`pkgs.jq`, `"${pkgs.coreutils}/bin/sort"`,
# `pkgs.lib.range`, `pkgs.runCommand` ...) evaluates and runs unchanged, and
# the closure of its scripts runs where only /nix/store exists (a bwrap
# sandbox, a container image, a machine without those tools).
#
#   * named packages (jq, coreutils, python3, gnused ...) expose the host's
#     binaries of that package; a named package with none of its binaries on
#     the host throws an error that says how to install it;
#   * any other attribute that names a file in one of hostPath's directories
#     exposes just that program (`pkgs.rsync` -> $out/bin/rsync);
#   * a package carries its programs, the libraries they load and their
#     script interpreters; glibc (loader, libc, libm ...) is one shared store
#     path; python3 carries its standard library and perl its core library
#     (closure.sh says how, and the rules);
#   * every derivation records the sha256 of each binary it copies, so its
#     out path changes when the host binary changes.  Hashing is lazy: it only
#     happens for packages whose derivation is actually instantiated.
#   * python3.withPackages (ps: [ ps.numpy ... ]) gives the store python3 with
#     copies of the modules once its builder has imported every one with the
#     host python3, and otherwise fails the build naming the Debian and pip
#     package of each missing one (see "Python").
#   * pkgs.repx-py (ps.repx-py in withPackages) is repx's own repx_py and
#     repx.analysis, from the Python sources beside nix/ (nix/repx-py.nix):
#     standard library only, for analysis stages.
#
# Nix builtins only: no nixpkgs lib.  See docs/host-packages.md.
{ system ? builtins.currentSystem
, hostPath ? [ "/usr/local/bin" "/usr/bin" "/bin" "/usr/local/sbin" "/usr/sbin" "/sbin" ]
}:

let
  inherit (builtins)
    attrNames concatStringsSep elem filter foldl' genList hasAttr head
    isFunction length listToAttrs mapAttrs match pathExists readDir
    replaceStrings stringLength substring;

  # ---------------------------------------------------------------- lib ----

  lib = rec {
    inherit (builtins)
      attrNames attrValues concatStringsSep filter elem foldl' genList head
      tail length listToAttrs mapAttrs toString isString isList isAttrs isInt
      isFloat isBool isFunction all any sort hasAttr getAttr elemAt
      removeAttrs intersectAttrs functionArgs replaceStrings stringLength
      substring toJSON fromJSON;

    id = x: x;
    const = x: _: x;
    fix = f: let x = f x; in x;

    range = first: last:
      if first > last then [ ] else genList (n: first + n) (last - first + 1);
    optional = cond: elem: if cond then [ elem ] else [ ];
    optionals = cond: elems: if cond then elems else [ ];
    optionalString = cond: string: if cond then string else "";
    optionalAttrs = cond: as: if cond then as else { };

    concatStrings = builtins.concatStringsSep "";
    concatMap = f: list: builtins.concatLists (map f list);
    concatMapStrings = f: list: concatStrings (map f list);
    concatMapStringsSep = sep: f: list: builtins.concatStringsSep sep (map f list);
    concatLists = builtins.concatLists;
    flatten = x:
      if builtins.isList x then concatMap flatten x else [ x ];
    unique = foldl' (acc: e: if builtins.elem e acc then acc else acc ++ [ e ]) [ ];
    last = list: builtins.elemAt list (builtins.length list - 1);
    reverseList = list:
      let l = builtins.length list; in genList (n: builtins.elemAt list (l - n - 1)) l;
    foldr = op: nul: list:
      let
        len = builtins.length list;
        fold' = n: if n == len then nul else op (builtins.elemAt list n) (fold' (n + 1));
      in fold' 0;
    foldl = op: nul: list: foldl' op nul list;
    count = pred: list: builtins.length (builtins.filter pred list);
    imap0 = f: list: genList (n: f n (builtins.elemAt list n)) (builtins.length list);
    imap1 = f: list: genList (n: f (n + 1) (builtins.elemAt list n)) (builtins.length list);
    zipListsWith = f: fst: snd:
      genList (n: f (builtins.elemAt fst n) (builtins.elemAt snd n))
        (lib.min (builtins.length fst) (builtins.length snd));
    min = x: y: if x < y then x else y;
    max = x: y: if x > y then x else y;

    nameValuePair = name: value: { inherit name value; };
    filterAttrs = pred: set:
      listToAttrs (concatMap
        (name: let v = set.${name}; in if pred name v then [ (nameValuePair name v) ] else [ ])
        (builtins.attrNames set));
    mapAttrsToList = f: attrs: map (name: f name attrs.${name}) (builtins.attrNames attrs);
    mapAttrs' = f: set: listToAttrs (mapAttrsToList f set);
    genAttrs = names: f: listToAttrs (map (n: nameValuePair n (f n)) names);
    attrByPath = attrPath: default: set:
      if attrPath == [ ] then set
      else if builtins.isAttrs set && set ? ${head attrPath}
      then attrByPath (builtins.tail attrPath) default set.${head attrPath}
      else default;
    recursiveUpdate = lhs: rhs:
      lhs // mapAttrs
        (name: v:
          if lhs ? ${name} && builtins.isAttrs v && builtins.isAttrs lhs.${name}
            && !(v ? type && v.type == "derivation")
          then recursiveUpdate lhs.${name} v
          else v)
        rhs;
    cartesianProduct = attrsOfLists:
      foldl'
        (listOfAttrs: attrName:
          concatMap
            (attrs: map (v: attrs // { ${attrName} = v; }) attrsOfLists.${attrName})
            listOfAttrs)
        [ { } ]
        (builtins.attrNames attrsOfLists);
    cartesianProductOfSets = cartesianProduct;

    hasPrefix = pref: str: substring 0 (stringLength pref) str == pref;
    hasSuffix = suffix: content:
      let
        lenContent = stringLength content;
        lenSuffix = stringLength suffix;
      in lenContent >= lenSuffix
        && substring (lenContent - lenSuffix) lenContent content == suffix;
    removePrefix = prefix: str:
      if hasPrefix prefix str
      then substring (stringLength prefix) (stringLength str - stringLength prefix) str
      else str;
    removeSuffix = suffix: str:
      if hasSuffix suffix str
      then substring 0 (stringLength str - stringLength suffix) str
      else str;
    stringToCharacters = s: genList (p: substring p 1 s) (stringLength s);
    splitString = sep: s:
      builtins.filter builtins.isString
        (builtins.split (escapeRegex sep) (builtins.toString s));
    escapeRegex = replaceStrings
      (stringToCharacters "\\[{()^$?*+|.")
      (map (c: "\\" + c) (stringToCharacters "\\[{()^$?*+|."));
    toUpper = replaceStrings
      (stringToCharacters "abcdefghijklmnopqrstuvwxyz")
      (stringToCharacters "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    toLower = replaceStrings
      (stringToCharacters "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
      (stringToCharacters "abcdefghijklmnopqrstuvwxyz");
    escapeShellArg = arg: "'" + replaceStrings [ "'" ] [ "'\\''" ] (builtins.toString arg) + "'";
    escapeShellArgs = args: builtins.concatStringsSep " " (map escapeShellArg args);

    makeBinPath = paths: builtins.concatStringsSep ":" (map (p: "${p}/bin") paths);
    makeSearchPath = sub: paths: builtins.concatStringsSep ":" (map (p: "${p}/${sub}") paths);
    getExe = drv:
      "${drv}/bin/${drv.meta.mainProgram or drv.pname or (builtins.parseDrvName drv.name).name}";
    getBin = drv: drv.bin or drv;
    getOutput = output: drv: drv.${output} or drv;
    isDerivation = x: builtins.isAttrs x && x ? type && x.type == "derivation";
  };

  inherit (lib) concatMap concatMapStrings escapeShellArg;

  # ------------------------------------------------- host program lookup ----

  # PATH-like directories to search, in order.  Shim directories (pyenv,
  # rbenv, asdf ...) hold wrapper scripts that pick a program at run time
  # from the caller's environment: never link to those.
  dirs = filter
    (d: match "(.*/)?shims(/.*)?" d == null && pathExists d)
    (map (d: let s = toString d; in
      if stringLength s > 1 && substring (stringLength s - 1) 1 s == "/"
      then substring 0 (stringLength s - 1) s else s)
      hostPath);

  # name -> absolute path of the first file (or symlink) with that name in
  # `dirs`.  Earlier directories win, as in $PATH.
  dirPrograms = d:
    let entries = readDir d; in
    listToAttrs (concatMap
      (n: if entries.${n} == "directory" then [ ] else [ { name = n; value = d + "/" + n; } ])
      (attrNames entries));
  found = foldl' (acc: d: dirPrograms d // acc) { } dirs;

  hostPathText = concatStringsSep ":" (map toString hostPath);

  # Pure evaluation (flakes without --impure) has no builtins.currentSystem,
  # and there every host directory looks absent.
  pureEval = !(builtins ? currentSystem);

  # Derivation names may only hold [A-Za-z0-9+._?=-].
  sanitizeName = s:
    if match "[A-Za-z0-9+._?=-]*" s != null then s
    else concatMapStrings (c: if match "[A-Za-z0-9+._?=-]" c != null then c else "_")
      (lib.stringToCharacters s);

  # Environment of every builder here: /bin/sh and the host's coreutils and
  # findutils assemble outputs; the builders that copy host programs also
  # need patchelf (Debian's package puts it in /usr/bin).
  buildPATH = "/usr/bin:/bin";

  # The shell library of the builders that copy host programs (see its
  # header for the rules).  A store path: editing it changes every package.
  closureTools = ./closure.sh;

  # ------------------------------------------------------- host glibc ----

  # The host's dynamic loader and glibc's own libraries, copied once into one
  # store path that every package loads them from (as nixpkgs' glibc), so
  # that they are not copied into each package.  Its identity is their
  # hashes.  null when the host has no glibc found here (another libc, or
  # pure evaluation): each package then carries its own loader and libc.
  glibcLoaders = {
    x86_64-linux = "ld-linux-x86-64.so.2";
    aarch64-linux = "ld-linux-aarch64.so.1";
    i686-linux = "ld-linux.so.2";
    armv7l-linux = "ld-linux-armhf.so.3";
    riscv64-linux = "ld-linux-riscv64-lp64d.so.1";
    powerpc64le-linux = "ld64.so.2";
  };
  multiarchTriplets = {
    x86_64-linux = "x86_64-linux-gnu";
    aarch64-linux = "aarch64-linux-gnu";
    i686-linux = "i386-linux-gnu";
    armv7l-linux = "arm-linux-gnueabihf";
    riscv64-linux = "riscv64-linux-gnu";
    powerpc64le-linux = "powerpc64le-linux-gnu";
  };
  # glibc's libraries (those present are copied; others are libraries of
  # their own packages, copied into the packages that load them).
  glibcLibraries = [
    "libc.so.6" "libm.so.6" "libmvec.so.1" "libpthread.so.0" "libdl.so.2"
    "librt.so.1" "libresolv.so.2" "libutil.so.1" "libanl.so.1"
    "libnss_files.so.2" "libnss_dns.so.2" "libnss_compat.so.2"
    "libnss_hesiod.so.2" "libBrokenLocale.so.1" "libc_malloc_debug.so.0"
    "libthread_db.so.1" "libmemusage.so" "libpcprofile.so"
  ];
  glibcLoader = glibcLoaders.${system} or null;
  glibcDir =
    let
      candidates =
        (if multiarchTriplets ? ${system}
         then [ "/lib/${multiarchTriplets.${system}}" "/usr/lib/${multiarchTriplets.${system}}" ]
         else [ ])
        ++ [ "/lib64" "/usr/lib64" "/lib" "/usr/lib" ];
      withGlibc = filter
        (d: pathExists "${d}/libc.so.6" && pathExists "${d}/${glibcLoader}")
        candidates;
    in
    if glibcLoader == null || withGlibc == [ ] then null else head withGlibc;

  hostGlibc =
    if glibcDir == null then null
    else
      let files = filter (n: pathExists "${glibcDir}/${n}") ([ glibcLoader ] ++ glibcLibraries); in
      derivation {
        name = "host-glibc";
        inherit system;
        builder = "/bin/sh";
        args = [ "-c" ("set -e\nmkdir -p \"$out/lib\"\n" + concatMapStrings
          (n: "cp -L ${escapeShellArg "${glibcDir}/${n}"} \"$out/lib/\"${escapeShellArg n}\n")
          files) ];
        PATH = buildPATH;
        # The identity of the host glibc: the hashes of what is copied.
        hostFiles = concatMapStrings
          (n: "${n} ${builtins.hashFile "sha256" "${glibcDir}/${n}"}\n") files;
        preferLocalBuild = true;
        allowSubstitutes = false;
      };

  # What every builder that copies host files is told about the host glibc.
  glibcEnv = {
    hostGlibc = if hostGlibc == null then "" else hostGlibc;
    glibcLoader = if glibcLoader == null then "" else glibcLoader;
  };

  # Make one host package.
  #   attr:         attribute name (and pname)
  #   bins:         program names to look for; those found are copied into $out/bin
  #   aliases:      name -> program name (of `bins`) also exposed under
  #                 another name, e.g. python -> python3, as nixpkgs' python3
  #                 provides (a link to the program's copy)
  #   debian:       Debian package to suggest when nothing is installed
  #   interpreters: named packages whose programs this package's scripts may
  #                 have as interpreter (besides its own programs and bash)
  #   closure:      builder shell run after the programs are copied (closure.sh
  #                 functions: what an interpreter needs to start)
  #   scriptShell:  whether scripts get the host bash package as sh/bash
  #                 (false for the shells themselves, which it would need)
  mkHostPackage =
    { attr, bins, aliases ? { }, debian ? attr, main ? null, extra ? (_: { })
    , interpreters ? [ ], closure ? "", scriptShell ? true, env ? { } }:
    let
      present = filter (b: hasAttr b found) bins;
      aliasLinks = concatMap
        (a: if hasAttr aliases.${a} found && !(elem a present)
            then [ { name = a; target = found.${aliases.${a}}; } ]
            else [ ])
        (attrNames aliases);
      links = map (b: { name = b; target = found.${b}; }) present ++ aliasLinks;
      mainProgram =
        if main != null && elem main present then main
        else if elem attr present then attr
        else head present;
      shellPackage = if scriptShell && installed "bash" then named.bash else null;
      interpreterLines = concatMap
        (a: map (name: "${name} ${named.${a}}/bin/${name}\n")
          (attrNames named.${a}.repxHostBinaries))
        (filter installed interpreters);

      script =
        ". \"$closureTools\"\n"
        + concatMapStrings
          (l: "add_program ${escapeShellArg l.name} ${escapeShellArg l.target}\n")
          links
        + closure
        + "finish\n";

      drv = derivation (glibcEnv // env // {
        name = "host-" + sanitizeName attr;
        pname = attr;
        version = "host";
        inherit system closureTools;
        builder = "/bin/sh";
        args = [ "-c" script ];
        PATH = buildPATH;
        what = "pkgs.${attr}";
        scriptShell = if shellPackage == null then "" else shellPackage;
        scriptInterpreters = concatStringsSep "" interpreterLines;
        # The identity of the host binaries: their content hashes.  Forced only
        # when this derivation is instantiated (drvPath / outPath).
        hostBinaries = concatMapStrings
          (l: "${l.name} ${l.target} ${builtins.hashFile "sha256" l.target}\n")
          links;
        preferLocalBuild = true;
        allowSubstitutes = false;
      });

      pkg = drv // {
        pname = attr;
        version = "host";
        out = pkg;
        bin = pkg;
        all = [ pkg ];
        outputName = "out";
        outputs = [ "out" ];
        meta = {
          inherit mainProgram;
          description = "Host binaries of '${attr}' (${concatStringsSep ", " (map (l: l.name) links)})";
          repxHost = true;
        };
        repxHostBinaries = listToAttrs (map (l: { inherit (l) name; value = l.target; }) links);
      } // extra pkg;
    in
    if present == [ ] && pureEval then
      throw ("repx host package set: 'pkgs.${attr}': Nix evaluates in pure mode (a flake "
        + "without --impure), which hides the host's programs from the host package set; "
        + "build with --impure.")
    else if present == [ ] then
      throw ("repx host package set: 'pkgs.${attr}' is not installed on this machine "
        + "(looked for ${concatStringsSep ", " bins} in ${hostPathText}). "
        + "Install it (e.g. apt-get install ${debian}) or pass a real nixpkgs with --nixpkgs.")
    else pkg;

  # ----------------------------------------------------- named packages ----

  # GNU coreutils' programs (kill, hostname and uptime are left out: on most
  # hosts those come from procps / inetutils instead).
  coreutilsPrograms = [
    "[" "arch" "b2sum" "base32" "base64" "basename" "basenc" "cat" "chcon"
    "chgrp" "chmod" "chown" "chroot" "cksum" "comm" "cp" "csplit" "cut" "date"
    "dd" "df" "dir" "dircolors" "dirname" "du" "echo" "env" "expand" "expr"
    "factor" "false" "fmt" "fold" "groups" "head" "hostid" "id" "install"
    "join" "link" "ln" "logname" "ls" "md5sum" "mkdir" "mkfifo" "mknod"
    "mktemp" "mv" "nice" "nl" "nohup" "nproc" "numfmt" "od" "paste" "pathchk"
    "pinky" "pr" "printenv" "printf" "ptx" "pwd" "readlink" "realpath" "rm"
    "rmdir" "runcon" "seq" "sha1sum" "sha224sum" "sha256sum" "sha384sum"
    "sha512sum" "shred" "shuf" "sleep" "sort" "split" "stat" "stdbuf" "stty"
    "sum" "sync" "tac" "tail" "tee" "test" "timeout" "touch" "tr" "true"
    "truncate" "tsort" "tty" "uname" "unexpand" "uniq" "unlink" "users" "vdir"
    "wc" "who" "whoami" "yes"
  ];

  # attr = { bins; aliases?; debian?; main?; extra?; interpreters?; closure?;
  #          scriptShell?; env? } (see mkHostPackage)
  specs = {
    coreutils = { bins = coreutilsPrograms; main = "ls"; };
    # The shells run scripts everywhere else, so they have none of their own.
    bash = { bins = [ "bash" ]; aliases = { sh = "bash"; }; scriptShell = false; };
    bashInteractive = {
      bins = [ "bash" ]; aliases = { sh = "bash"; }; debian = "bash"; scriptShell = false;
    };
    dash = { bins = [ "dash" ]; scriptShell = false; };
    gnused = { bins = [ "sed" ]; debian = "sed"; };
    gnugrep = { bins = [ "grep" "egrep" "fgrep" ]; debian = "grep"; };
    findutils = { bins = [ "find" "xargs" ]; };
    gawk = { bins = [ "gawk" "awk" ]; };
    jq = { bins = [ "jq" ]; };
    python3 = {
      bins = [ "python3" "pydoc3" "python3-config" ];
      aliases = { python = "python3"; pydoc = "pydoc3"; python-config = "python3-config"; };
      # The standard library (not the host's site- or dist-packages: modules
      # come through withPackages, as in nixpkgs).
      closure = lib.optionalString (found ? python3)
        "python_stdlib python3 ${escapeShellArg found.python3}\n";
      env = { inherit pycacheProgram; };
      extra = self: {
        interpreter = "${self}/bin/python3";
        executable = "python3";
        # See "Python" below: the host python3 with modules checked to import.
        withPackages = pythonWithPackages self;
        pkgs = pythonPackages;
      };
    };
    gnutar = { bins = [ "tar" ]; debian = "tar"; };
    gzip = {
      bins = [ "gzip" "gunzip" "zcat" "zgrep" "zegrep" "zfgrep" "zdiff" "zcmp"
               "zless" "zmore" "znew" "zforce" "gzexe" "uncompress" ];
    };
    bzip2 = {
      bins = [ "bzip2" "bunzip2" "bzcat" "bzip2recover" "bzgrep" "bzegrep"
               "bzfgrep" "bzdiff" "bzcmp" "bzless" "bzmore" ];
    };
    xz = {
      bins = [ "xz" "unxz" "xzcat" "xzgrep" "xzegrep" "xzfgrep" "xzdiff" "xzcmp"
               "xzless" "xzmore" "xzdec" "lzma" "unlzma" "lzcat" "lzmainfo" "lzmadec" ];
      debian = "xz-utils";
    };
    zstd = { bins = [ "zstd" "unzstd" "zstdcat" "zstdmt" "zstdgrep" "zstdless" ]; };
    zip = { bins = [ "zip" "zipcloak" "zipnote" "zipsplit" ]; };
    unzip = { bins = [ "unzip" "funzip" "unzipsfx" "zipgrep" "zipinfo" ]; };
    curl = { bins = [ "curl" ]; };
    wget = { bins = [ "wget" ]; };
    git = { bins = [ "git" "git-receive-pack" "git-upload-pack" "git-upload-archive" "git-shell" ]; };
    perl = {
      bins = [ "perl" "perldoc" "prove" "cpan" "pod2man" "pod2text" ];
      # The core library (not site or vendor modules).
      closure = lib.optionalString (found ? perl) "perl_lib perl ${escapeShellArg found.perl}\n";
    };
    which = { bins = [ "which" ]; debian = "debianutils"; };
    diffutils = { bins = [ "diff" "cmp" "diff3" "sdiff" ]; };
    patch = { bins = [ "patch" ]; };
    file = { bins = [ "file" ]; };
    procps = {
      bins = [ "ps" "kill" "pgrep" "pkill" "pidwait" "pidof" "top" "free" "vmstat"
               "uptime" "w" "watch" "pmap" "pwdx" "sysctl" "slabtop" "tload" ];
    };
    util-linux = {
      bins = [ "flock" "getopt" "setsid" "taskset" "ionice" "renice" "chrt"
               "prlimit" "nsenter" "unshare" "script" "logger" "uuidgen"
               "lscpu" "lsblk" "findmnt" "mountpoint" "fallocate" "hexdump"
               "column" "rev" "more" "whereis" "look" "cal" "mount" "umount" ];
      main = "flock";
    };
    hello = { bins = [ "hello" ]; };
    bc = { bins = [ "bc" "dc" ]; };
    shellcheck = { bins = [ "shellcheck" ]; };
    graphviz = {
      bins = [ "dot" "neato" "twopi" "circo" "fdp" "sfdp" "osage" "patchwork"
               "gvpr" "gc" "acyclic" "ccomps" "unflatten" "tred" "gvpack" "gvmap" ];
      main = "dot";
    };
    gnumake = { bins = [ "make" ]; debian = "make"; };
    gcc = { bins = [ "gcc" "g++" "cc" "c++" "cpp" ]; };
    gfortran = { bins = [ "gfortran" ]; };
    clang = { bins = [ "clang" "clang++" ]; };
    binutils = {
      bins = [ "ld" "as" "ar" "nm" "objdump" "objcopy" "strip" "ranlib" "readelf"
               "size" "strings" "addr2line" "c++filt" ];
      main = "ld";
    };
    cmake = { bins = [ "cmake" "ctest" "cpack" ]; };
    pkg-config = { bins = [ "pkg-config" ]; };
    sqlite = { bins = [ "sqlite3" ]; debian = "sqlite3"; };
    openssh = { bins = [ "ssh" "scp" "sftp" "ssh-keygen" "ssh-agent" "ssh-add" "ssh-keyscan" ]; debian = "openssh-client"; };
    openssl = { bins = [ "openssl" ]; };
    gnupg = { bins = [ "gpg" "gpgv" "gpg-agent" "gpgconf" ]; };
    rsync = { bins = [ "rsync" ]; };
    less = { bins = [ "less" "lessecho" "lesskey" ]; };
    time = { bins = [ "time" ]; };
    tree = { bins = [ "tree" ]; };
    moreutils = {
      bins = [ "sponge" "ts" "chronic" "combine" "errno" "ifdata" "ifne" "isutf8"
               "lckdo" "mispipe" "pee" "vidir" "vipe" "zrun" ];
      main = "sponge";
      interpreters = [ "perl" ];
    };
    parallel = { bins = [ "parallel" "sem" "niceload" ]; interpreters = [ "perl" ]; };
    nodejs = { bins = [ "node" "nodejs" "npm" "npx" ]; };
    ripgrep = { bins = [ "rg" ]; };
    fd = { bins = [ "fdfind" "fd" ]; debian = "fd-find"; };
    imagemagick = { bins = [ "magick" "convert" "identify" "mogrify" "composite" "montage" "compare" ]; };
    ffmpeg = { bins = [ "ffmpeg" "ffprobe" ]; };
    gnuplot = { bins = [ "gnuplot" ]; };
    R = { bins = [ "R" "Rscript" ]; debian = "r-base"; };
    iproute2 = { bins = [ "ip" "ss" "bridge" "tc" ]; };
    netcat = { bins = [ "nc" "netcat" ]; debian = "netcat-openbsd"; };
    strace = { bins = [ "strace" ]; };
    gdb = { bins = [ "gdb" ]; };
    valgrind = { bins = [ "valgrind" ]; };
    # Debian's are links to pg_wrapper, a perl script.
    postgresql = {
      bins = [ "psql" "postgres" "initdb" "pg_ctl" "pg_dump" "pg_restore" ];
      interpreters = [ "perl" ];
    };
    docker = { bins = [ "docker" ]; debian = "docker.io"; };
    lua = { bins = [ "lua" "luac" ]; debian = "lua5.4"; };
    ruby = { bins = [ "ruby" "irb" "gem" ]; };
    go = { bins = [ "go" "gofmt" ]; debian = "golang"; };
    rustc = { bins = [ "rustc" "rustdoc" ]; };
    cargo = { bins = [ "cargo" ]; };
  };

  named = mapAttrs (attr: spec: mkHostPackage (spec // { inherit attr; })) specs;

  # Every other program on hostPath, one derivation each; a versioned python3
  # (python3.11) carries its standard library, as python3 does.
  programs = mapAttrs
    (name: _: mkHostPackage ({ attr = name; bins = [ name ]; }
      // lib.optionalAttrs (match "python3\\.[0-9]+" name != null) {
        closure = "python_stdlib ${escapeShellArg name} ${escapeShellArg found.${name}}\n";
        env = { inherit pycacheProgram; };
      }))
    found;

  installed = attr: filter (b: hasAttr b found) specs.${attr}.bins != [ ];

  # Packages the build helpers put on PATH (like nixpkgs' stdenv), those present.
  stdenvPackages = map (a: named.${a}) (filter installed [
    "coreutils" "findutils" "diffutils" "gnused" "gnugrep" "gawk" "gnutar"
    "gzip" "bzip2" "xz" "bash"
  ]);

  shellBuilder =
    if installed "bash" then "${named.bash}/bin/bash" else "/bin/sh";
  shellFlags =
    if installed "bash" then "set -eo pipefail" else "set -e";

  addPassthru = drv: passthru: meta:
    let self = drv // passthru // { inherit meta; out = self; }; in self;

  # ------------------------------------------------------ build helpers ----

  runCommandWith = { name, env ? { }, script, local ? false }:
    let
      inputs = (env.nativeBuildInputs or [ ]) ++ (env.buildInputs or [ ])
        ++ (env.propagatedBuildInputs or [ ]) ++ stdenvPackages;
      drvAttrs = removeAttrs env [ "passthru" "meta" ] // {
        inherit name system;
        builder = shellBuilder;
        args = [ "-c" "${shellFlags}\neval \"$buildCommand\"" ];
        buildCommand = script;
        PATH = lib.makeBinPath inputs + ":" + buildPATH;
      } // (if local then { preferLocalBuild = true; allowSubstitutes = false; } else { });
    in
    addPassthru (derivation drvAttrs) (env.passthru or { }) (env.meta or { });

  runCommand = name: env: script: runCommandWith { inherit name env script; };
  runCommandLocal = name: env: script: runCommandWith { inherit name env script; local = true; };

  writeTextFile =
    { name, text, executable ? false, destination ? "", checkPhase ? "", meta ? { }, passthru ? { } }:
    addPassthru
      (derivation {
        inherit name system text executable destination checkPhase;
        builder = "/bin/sh";
        passAsFile = [ "text" ];
        PATH = buildPATH;
        args = [ "-c" ''
          set -e
          target="$out$destination"
          if [ -n "$destination" ]; then mkdir -p "$(dirname "$target")"; fi
          cp "$textPath" "$target"
          if [ -n "$executable" ]; then chmod +x "$target"; fi
          eval "$checkPhase"
        '' ];
        preferLocalBuild = true;
        allowSubstitutes = false;
      })
      passthru
      meta;

  writeText = name: text: writeTextFile { inherit name text; };
  writeTextDir = path: text: writeTextFile {
    name = builtins.baseNameOf path; inherit text; destination = "/${path}";
  };
  writeScript = name: text: writeTextFile { inherit name text; executable = true; };
  writeScriptBin = name: text: writeTextFile {
    inherit name text; executable = true; destination = "/bin/${name}";
    meta.mainProgram = name;
  };
  runtimeShell = shellBuilder;
  writeShellScript = name: text: writeTextFile {
    inherit name; executable = true;
    text = "#!${runtimeShell}\n${text}\n";
  };
  writeShellScriptBin = name: text: writeTextFile {
    inherit name; executable = true; destination = "/bin/${name}";
    text = "#!${runtimeShell}\n${text}\n";
    meta.mainProgram = name;
  };

  symlinkJoin = { name, paths, postBuild ? "", passthru ? { }, meta ? { }, ... }@args:
    let
      env = removeAttrs args [ "name" "paths" "postBuild" "passthru" "meta" ];
    in
    addPassthru
      (derivation (env // {
        inherit name system paths postBuild;
        builder = "/bin/sh";
        PATH = buildPATH;
        args = [ "-c" ''
          set -e
          mkdir -p "$out"
          for p in $paths; do
            (cd "$p" && find -L . -mindepth 1 -type d) | while IFS= read -r d; do
              mkdir -p "$out/$d"
            done
            (cd "$p" && find -L . -mindepth 1 ! -type d) | while IFS= read -r f; do
              f="''${f#./}"
              if [ ! -e "$out/$f" ] && [ ! -L "$out/$f" ]; then ln -s "$p/$f" "$out/$f"; fi
            done
          done
          eval "$postBuild"
        '' ];
        preferLocalBuild = true;
        allowSubstitutes = false;
      }))
      passthru
      meta;

  callPackage = fn: args:
    let f = if isFunction fn then fn else import fn; in
    f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // args);

  # ------------------------------------------------------------- Python ----

  # python3.withPackages, and Python packages made from source for the host
  # python3 (repx's own nix/package.nix).  The host set cannot build Python
  # modules, so asking for one is a promise checked at build time: the
  # builder imports every requested module with the host python3 and fails,
  # naming the Debian package and the pip name of each one that does not
  # import.  Rules:
  #   * the check runs the host interpreter (its host path: a virtualenv's
  #     python finds its site-packages only when started through the venv's
  #     path), so it sees the modules where they are installed;
  #   * what the imports loaded from outside the standard library and the
  #     store (each top-level package or module, with the other top-level
  #     entries and the metadata folder of its distribution) is copied into
  #     $out/lib/python3/site-packages, with the libraries its extension
  #     modules load; the store python3 (the host python3 package) then
  #     imports every module again from there, so a module that works only
  #     from the host fails the build;
  #   * the result runs the store python3 through a wrapper script that puts
  #     those folders on PYTHONPATH: it needs nothing outside the store;
  #   * user site-packages (~/.local) are off at build and at run time, as in
  #     nixpkgs' Python environments: builders have no $HOME, so a module
  #     found only there would pass one and fail the other;
  #   * the out path follows the host python3 binary (through the host
  #     python3 package, which hashes it) and the list of modules; it does not
  #     follow the installed modules' versions, which Nix cannot see (a copy
  #     once built stays as it was).

  # nixpkgs' python3Packages attribute -> how the host provides the module:
  #   import: the module to import (default: the attribute, "-" -> "_")
  #   debian: the Debian package (default "python3-<attribute>"; null: none
  #           in Debian 12)
  #   pip:    the name on PyPI (default: the attribute)
  pythonModuleTable = {
    # numbers, tables, plots
    numpy = { };
    scipy = { };
    pandas = { };
    polars = { debian = null; };
    pyarrow = { debian = null; };
    matplotlib = { };
    seaborn = { };
    plotly = { };
    bokeh = { debian = null; };
    altair = { };
    statsmodels = { };
    scikit-learn = { import = "sklearn"; debian = "python3-sklearn"; };
    scikit-image = { import = "skimage"; debian = "python3-skimage"; };
    sympy = { };
    mpmath = { };
    numba = { };
    numexpr = { };
    xarray = { };
    dask = { };
    joblib = { };
    networkx = { };
    igraph = { };
    pywavelets = { import = "pywt"; debian = "python3-pywt"; pip = "PyWavelets"; };
    emcee = { };
    astropy = { };
    biopython = { import = "Bio"; };
    pysam = { };
    shapely = { };
    pyproj = { };
    gdal = { import = "osgeo"; pip = "GDAL"; };
    torch = { };
    jax = { debian = null; };
    opencv4 = { import = "cv2"; debian = "python3-opencv"; pip = "opencv-python"; };
    # data files and formats
    h5py = { };
    netcdf4 = { import = "netCDF4"; pip = "netCDF4"; };
    tables = { };
    zarr = { };
    fsspec = { };
    openpyxl = { };
    xlrd = { };
    xlsxwriter = { };
    pillow = { import = "PIL"; debian = "python3-pil"; };
    imageio = { };
    tifffile = { };
    pyyaml = { import = "yaml"; debian = "python3-yaml"; };
    toml = { };
    tomli = { };
    tomlkit = { };
    jsonschema = { };
    msgpack = { };
    lmdb = { };
    sqlalchemy = { };
    lxml = { };
    beautifulsoup4 = { import = "bs4"; debian = "python3-bs4"; };
    simplejson = { };
    ujson = { };
    orjson = { debian = null; };
    protobuf = { import = "google.protobuf"; };
    zstandard = { };
    lz4 = { };
    blake3 = { debian = null; };
    # programs, services, text
    requests = { };
    click = { };
    rich = { };
    tqdm = { };
    tabulate = { };
    colorama = { };
    termcolor = { };
    jinja2 = { };
    markdown = { };
    pygments = { };
    docutils = { };
    sphinx = { };
    psutil = { };
    pexpect = { };
    paramiko = { };
    cryptography = { };
    pyzmq = { import = "zmq"; debian = "python3-zmq"; };
    mpi4py = { };
    pyserial = { import = "serial"; debian = "python3-serial"; };
    boto3 = { };
    doit = { };
    bashlex = { debian = null; };
    tree-sitter = { debian = null; };
    tree-sitter-bash = { debian = null; };
    pydot = { };
    pygraphviz = { };
    tkinter = { debian = "python3-tk"; pip = null; };
    pyqt5 = { import = "PyQt5"; pip = "PyQt5"; };
    # the language and its tools
    attrs = { import = "attr"; debian = "python3-attr"; };
    pydantic = { };
    six = { };
    python-dateutil = { import = "dateutil"; debian = "python3-dateutil"; };
    pytz = { debian = "python3-tz"; };
    regex = { };
    natsort = { };
    toolz = { };
    more-itertools = { };
    cloudpickle = { };
    typing-extensions = { };
    packaging = { };
    filelock = { };
    platformdirs = { };
    cffi = { };
    cython = { import = "Cython"; debian = "cython3"; };
    pybind11 = { };
    setuptools = { };
    pip = { };
    wheel = { };
    pytest = { };
    pytest-xdist = { import = "xdist"; };
    pytest-cov = { import = "pytest_cov"; };
    hypothesis = { };
    coverage = { };
    mypy = { };
    flake8 = { };
    black = { debian = "black"; };
    ipython = { import = "IPython"; };
    ipykernel = { };
    jupyter-core = { };
    nbformat = { };
    nbconvert = { };
    notebook = { };
  };

  pythonModule = attr: spec: {
    repxPythonModule = true;
    pname = attr;
    importName = spec.import or (replaceStrings [ "-" ] [ "_" ] attr);
    debian = if spec ? debian then spec.debian else "python3-" + attr;
    pip = if spec ? pip then spec.pip else attr;
  };

  pythonModules = mapAttrs pythonModule pythonModuleTable;

  # repx's own analysis packages, repx_py and repx.analysis (nix/repx-py.nix):
  # a derivation of the Python sources beside nix/ (in a checkout the
  # repository, in an installed wheel repx/_flake), which import with the
  # standard library alone, so they need nothing from the host.
  repxPy = import ../repx-py.nix { inherit pkgs; src = ../..; };

  # `ps` of python3.withPackages (and python3.pkgs, python3Packages).  Nix has
  # no hook for a missing attribute, so only the table's names exist, and
  # repx-py (alias repx_py, the module's name).
  pythonPackages = pythonModules // {
    python = named.python3;
    repx-py = repxPy;
    repx_py = repxPy;
  };

  # A module named by its PyPI name (a pyproject.toml dependency): the
  # table's entry under its normalized name (PEP 503, as nixpkgs names them),
  # else the import name guessed the usual way and no Debian package.
  pythonModuleByPipName = pipName:
    let
      bare = head (match "[[:space:]]*([A-Za-z0-9][A-Za-z0-9._-]*).*" pipName);
      attr = replaceStrings [ "_" "." ] [ "-" "-" ] (lib.toLower bare);
    in
    pythonModules.${attr} or (pythonModule attr { debian = null; pip = bare; });

  describeValue = x:
    if lib.isString x then "the string ${builtins.toJSON x}"
    else if builtins.isAttrs x then
      let names = attrNames x; in
      "a set with attributes " + concatStringsSep ", "
        (genList (builtins.elemAt names) (lib.min 6 (length names)))
        + (if length names > 6 then ", ..." else "")
    else "a ${builtins.typeOf x}";

  # What one element of a package list asks for: modules to import, and
  # derivations whose site-packages go on PYTHONPATH.
  pythonRequirement = what: index: x:
    if builtins.isAttrs x && (x.repxPythonModule or false) then { modules = [ x ]; packages = [ ]; }
    else if lib.isDerivation x then
      { modules = x.repxPython.modules or [ ]; packages = [ x ] ++ (x.repxPython.packages or [ ]); }
    else throw ("repx host package set: ${what}: element ${toString (index + 1)} of the "
      + "package list is ${describeValue x}, not a Python package; name modules as ps.NAME "
      + "(e.g. ps.numpy; the names are in nix/pkgs/default.nix), or give a derivation "
      + "that has lib/python3/site-packages.");

  # Imports every module of $checkRequest (JSON) with the running
  # interpreter; on failure prints one line per module saying how to install
  # it, and exits 1.  $checkPhase "host" runs it with the host python3 and,
  # when $checkCollect names a file, writes there what to copy (lines "FOLDER
  # TAB NAME": a top-level entry of a sys.path folder); "store" runs it with
  # the store python3 on the copies.  Written for any Python 3.
  pythonCheckProgram = ''
    import importlib, json, os, sys
    request = json.loads(os.environ["checkRequest"])
    on_host = os.environ.get("checkPhase", "host") == "host"
    version = "%d.%d.%d" % tuple(sys.version_info[:3])
    if on_host:
        where = "the host python3 %s (Python %s)" % (request["interpreter"], version)
    else:
        where = "the store copy of the host python3 %s (Python %s)" % (
            request["interpreter"], version)
    minimum = request["minimumPython"]
    if minimum and tuple(sys.version_info[:len(minimum)]) < tuple(minimum):
        sys.stderr.write("repx host package set: %s needs Python %s or newer; %s is too old.\n"
                         "Install a newer python3, or pass a real nixpkgs with --nixpkgs.\n"
                         % (request["what"], ".".join(map(str, minimum)), where))
        sys.exit(1)
    problems = []
    for module in request["modules"]:
        name = module["importName"]
        try:
            importlib.import_module(name)
        except Exception as error:
            # "No module named X" for the module (or its parent) itself says
            # all; any other error means it is there but broken: show it.
            missing = getattr(error, "name", None) or "?"
            absent = isinstance(error, ImportError) and (
                name == missing or name.startswith(missing + "."))
            label = module["pname"]
            if name != label.replace("-", "_"):
                label += " (import " + name + ")"
            ways = []
            if module["debian"]:
                ways.append("apt-get install " + module["debian"])
            if module["pip"]:
                ways.append("pip install " + module["pip"])
            how = " or ".join(ways)
            failure = "%s: %s" % (type(error).__name__, error)
            if not on_host:
                how = ("it imports on the host, but not from its copy in the store: %s "
                       "(a module that loads files from outside its folder?)" % failure)
            elif not ways:
                how = "part of this package, but importing it fails: " + failure
            elif not absent:
                how += " (it is installed, but importing it fails: %s)" % failure
            problems.append("%s: %s" % (label, how))
    if problems:
        sys.stderr.write("repx host package set: %s: these Python modules do not import "
                         "with %s:\n" % (request["what"], where))
        for line in problems:
            sys.stderr.write("  " + line + "\n")
        if on_host:
            sys.stderr.write("Install them for that python3, or pass a real nixpkgs with "
                             "--nixpkgs.\n")
        sys.exit(1)

    def folder_entries(folder, wanted):
        # Every top-level name of a distribution that provides one of
        # `wanted` (its other packages, its bundled libraries, its metadata):
        # from a .dist-info's RECORD, or an .egg-info's top_level.txt.
        result = set(wanted)
        try:
            names = os.listdir(folder)
        except OSError:
            return result
        for name in names:
            meta = os.path.join(folder, name)
            provided = set()
            if name.endswith(".dist-info") and os.path.isfile(os.path.join(meta, "RECORD")):
                with open(os.path.join(meta, "RECORD"), encoding="utf-8") as record:
                    for line in record:
                        top = line.split(",", 1)[0].replace("\\", "/").split("/", 1)[0]
                        if top and top not in ("..", ".", "__pycache__") and ":" not in top:
                            provided.add(top)
            elif name.endswith(".egg-info") and os.path.isdir(meta):
                try:
                    with open(os.path.join(meta, "top_level.txt"), encoding="utf-8") as tops:
                        for line in tops:
                            line = line.strip()
                            if line:
                                provided.update((line, line + ".py"))
                except OSError:
                    pass
            if provided & wanted:
                result.add(name)
                result.update(p for p in provided if os.path.exists(os.path.join(folder, p)))
        return result

    collect = os.environ.get("checkCollect")
    if on_host and collect:
        import sysconfig
        real = os.path.realpath
        stdlib = set(real(p) for p in (sysconfig.get_path("stdlib"),
                                        sysconfig.get_path("platstdlib"),
                                        sysconfig.get_config_var("DESTSHARED")) if p)
        store = os.environ.get("NIX_STORE", "/nix/store") + os.sep
        folders = sorted(set(real(p) for p in sys.path if p and os.path.isdir(p)),
                         key=len, reverse=True)
        wanted = {}
        for module in list(sys.modules.values()):
            files = []
            if getattr(module, "__file__", None):
                files.append(module.__file__)
            else:  # a namespace package
                files.extend(list(getattr(module, "__path__", None) or []))
            for path in files:
                path = real(path)
                folder = next((f for f in folders if path.startswith(f + os.sep)), None)
                if folder is None or folder in stdlib or folder.startswith(store):
                    continue
                top = path[len(folder) + 1:].split(os.sep, 1)[0]
                if top != "__pycache__":
                    wanted.setdefault(folder, set()).add(top)
        with open(collect, "w", encoding="utf-8") as listing:
            for folder in sorted(wanted):
                for top in sorted(folder_entries(folder, wanted[folder])):
                    listing.write("%s\t%s\n" % (folder, top))
  '';

  # Makes the byte code of every .py file under the folders named on the
  # command line valid in the store, where Python can neither write caches
  # nor trust timestamps (Nix sets every mtime to 1): an existing .pyc's
  # header becomes "hash-based, unchecked" with the source's hash (the code
  # is the same), and a missing one is compiled that way.
  pycacheProgram = ''
    import importlib.util, os, py_compile, sys
    magic = importlib.util.MAGIC_NUMBER
    unchecked = (1).to_bytes(4, "little")
    for root in sys.argv[1:]:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if not name.endswith(".py"):
                    continue
                source = os.path.join(folder, name)
                try:
                    with open(source, "rb") as handle:
                        digest = importlib.util.source_hash(handle.read())
                except OSError:
                    continue
                have = False
                for level in ("", 1, 2):
                    cached = importlib.util.cache_from_source(source, optimization=level)
                    if not os.path.isfile(cached):
                        continue
                    with open(cached, "r+b") as handle:
                        if handle.read(4) == magic:
                            handle.seek(4)
                            handle.write(unchecked + digest)
                            have = have or level == ""
                if not have:
                    try:
                        py_compile.compile(source, doraise=True, invalidation_mode=
                                           py_compile.PycInvalidationMode.UNCHECKED_HASH)
                    except Exception:
                        pass  # not Python 3 (test data, templates): never imported
  '';

  # The builder of withPackages environments and host Python packages.
  #   install:    shell run before the check, with $site =
  #               $out/lib/python3/site-packages (a package copies its
  #               sources there and puts $site on $pythonpath)
  #   afterCheck: shell run after the check passed and the modules were
  #               copied (and byte-compiled)
  #   wrappers:   shell that writes $out/bin with `write_wrapper FILE ARGS`,
  #               a script that exec's the store python3 with ARGS (shell
  #               words, already quoted) and the package's PYTHONPATH
  #   env:        more derivation attributes (the builder's environment)
  #   checkWithStorePython: the first check runs the store python3 instead of
  #               the host's: it has no site-packages, so nothing the host
  #               installed can pass the check or be copied (a package that
  #               must need only the standard library, such as repx-py)
  mkHostPython =
    { name, what, python3, modules, packages, description, wrappers
    , install ? "", afterCheck ? "", minimumPython ? null, env ? { }
    , passthru ? { }, meta ? { }, checkWithStorePython ? false }:
    let
      interpreter = python3.repxHostBinaries.python3 or (throw ("repx host package set: "
        + "${what}: the host python3 package has no python3 program (only "
        + concatStringsSep ", " (attrNames python3.repxHostBinaries) + ")."));
      # The interpreter of the first check (whose modules are copied).
      checkedPython = if checkWithStorePython then "${python3}/bin/python3" else interpreter;
      script = ''
        . "$closureTools"
        # Builders run as Nix's build users (build-users-group): an
        # interpreter under a private home (/root/.pyenv ...) is out of reach.
        if [ ! -x "$hostPython" ]; then
          echo "repx host package set: $what: the Nix builder (user $(id -un)) cannot run the host python3 $hostPython: Nix builds run as the build users, so the interpreter and its directories must be readable and executable by them (a home directory such as /root is private); use a python3 outside it, or pass a real nixpkgs with --nixpkgs." >&2
          exit 1
        fi
        pythonpath=
        for pkg in $pythonPackages; do
          found=
          for dir in "$pkg"/lib/python3/site-packages "$pkg"/lib/python3.*/site-packages; do
            if [ -d "$dir" ]; then pythonpath="$pythonpath''${pythonpath:+:}$dir"; found=1; fi
          done
          if [ -z "$found" ]; then
            echo "repx host package set: $what: $pkg has no lib/python3/site-packages, so it is not a Python package" >&2
            exit 1
          fi
        done
        site="$out/lib/python3/site-packages"
        ${install}
        collected="$TMPDIR/repx-python-modules"
        (
          if [ -n "$pythonpath" ]; then export PYTHONPATH="$pythonpath"; fi
          export PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 checkPhase=host
          export checkCollect="$collected"
          "$hostPython" -c "$checkProgram"
        )
        # What the imports loaded from the host goes into $site.
        while IFS="$tab" read -r folder entry; do
          copy_item "$folder/$entry" "$site/$entry"
        done < "$collected"
        if [ -d "$site" ]; then
          case ":$pythonpath:" in
            *":$site:"*) ;;
            *) pythonpath="$site''${pythonpath:+:$pythonpath}" ;;
          esac
          bundle_shared_objects "$site" 1
          PYTHONDONTWRITEBYTECODE=1 "$storePython" -S -E -c "$pycacheProgram" "$site"
        fi
        (
          if [ -n "$pythonpath" ]; then export PYTHONPATH="$pythonpath"; fi
          export PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 checkPhase=store
          "$storePython" -c "$checkProgram"
        )
        ${afterCheck}
        write_wrapper() {
          {
            echo "#!$scriptShell/bin/sh"
            echo "# $description"
            if [ -n "$pythonpath" ]; then
              echo "PYTHONPATH='$pythonpath'\''${PYTHONPATH:+:\"\$PYTHONPATH\"}"
              echo 'export PYTHONPATH'
            fi
            echo 'PYTHONNOUSERSITE=1'
            echo 'export PYTHONNOUSERSITE'
            printf 'exec %s %s"$@"\n' "'$storePython'" "$2"
          } > "$1"
          chmod +x "$1"
        }
        ${wrappers}
        rmdir "$out/lib" 2>/dev/null || true
      '';
      drv = derivation (glibcEnv // env // {
        inherit name system what description closureTools pycacheProgram;
        builder = "/bin/sh";
        args = [ "-c" script ];
        PATH = buildPATH;
        hostPython = checkedPython;
        # The host python3 package: its derivation hashes the binary, so this
        # out path changes with it.  Its copy of the interpreter runs the
        # result, and its libraries need no copy here.
        hostPythonPackage = python3;
        storePython = "${python3}/bin/python3";
        providedLibDirs = "${python3}/lib";
        scriptShell = if installed "bash" then named.bash
          else throw ("repx host package set: ${what}: the Python wrappers are scripts for "
            + "bash, which is not on hostPath (${hostPathText}).");
        pythonPackages = packages;
        checkProgram = pythonCheckProgram;
        checkRequest = builtins.toJSON {
          inherit what minimumPython;
          interpreter = checkedPython;
          modules = map (m: { inherit (m) pname importName debian pip; }) modules;
        };
        preferLocalBuild = true;
        allowSubstitutes = false;
      });
    in
    addPassthru drv passthru meta;

  pythonWithPackages = python3: f:
    let
      what = "pkgs.python3.withPackages";
      requested =
        if isFunction f then f pythonPackages
        else throw ("repx host package set: ${what} takes a function of the package set, "
          + "e.g. python3.withPackages (ps: [ ps.numpy ps.pandas ]); it was given "
          + describeValue f + ".");
      list =
        if lib.isList requested then requested
        else throw ("repx host package set: ${what}: the function must return a list of "
          + "packages, e.g. (ps: [ ps.numpy ]); it returned ${describeValue requested}.");
      requirements = lib.imap0 (pythonRequirement what) list;
      modules = lib.unique (concatMap (r: r.modules) requirements);
      packages = lib.unique (concatMap (r: r.packages) requirements);
      names = map (p: p.pname or p.name) packages
        ++ map (m: m.pname) (filter (m: m.pip != null || m.debian != null) modules);
      env = mkHostPython {
        name = "host-python3-env";
        inherit what python3 modules packages;
        description = "host python3 with "
          + (if names == [ ] then "no other modules" else concatStringsSep ", " names)
          + " (repx host package set)";
        wrappers = ''
          write_wrapper "$out/bin/python3" ""
          ln -s python3 "$out/bin/python"
          minor=$("$hostPython" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
          ln -s python3 "$out/bin/python$minor"
        '';
        passthru = {
          pname = "python3-env";
          version = "host";
          interpreter = "${env}/bin/python3";
          executable = "python3";
          sitePackages = "lib/python3/site-packages";
          pkgs = pythonPackages;
          withPackages = _: throw ("repx host package set: withPackages on the result of "
            + "withPackages is not supported; list every package in one "
            + "python3.withPackages call.");
          repxPython = { inherit modules packages; };
        };
        meta = {
          mainProgram = "python3";
          description = "Host python3 with checked modules: ${concatStringsSep ", " names}";
        };
      };
    in
    env;

  # repx-internal (nix/package.nix): a Python package from source for the
  # host python3.  `modules` are the top-level module folders (or .py files)
  # of `src` copied into $out/lib/python3/site-packages; `dependencies` are
  # PyPI names (or ps.NAME specs, or host Python package derivations) that
  # must import; `scripts` maps a program name to "module:function";
  # `preCheck` is shell run once the sources are in $site, before the import
  # checks (a package's own check, with $storePython); `checkWithStorePython`
  # and `env` as for mkHostPython.
  hostPythonPackage =
    { pname, version, src, modules, dependencies ? [ ], scripts ? { }
    , minimumPython ? null, postInstall ? "", python3 ? named.python3, meta ? { }
    , checkWithStorePython ? false, env ? { }, preCheck ? "" }:
    let
      what = "${pname} ${version} (a Python package for the host python3)";
      requirements = lib.imap0 (pythonRequirement what)
        (map (d: if lib.isString d then pythonModuleByPipName d else d) dependencies);
      dependencyModules = lib.unique (concatMap (r: r.modules) requirements);
      dependencyPackages = lib.unique (concatMap (r: r.packages) requirements);
      ownModules = map
        (m: pythonModule (lib.removeSuffix ".py" m) { debian = null; pip = null; })
        modules;
      # A -c program, not a script with a shebang: the wrapper must set
      # PYTHONPATH for the interpreter and everything it starts.
      scriptCode = programName: entry:
        let parts = lib.splitString ":" entry; in
        if length parts != 2
        then throw ("repx host package set: ${what}: script ${programName}: entry point "
          + "${builtins.toJSON entry} is not \"module:function\".")
        else ''
          import sys
          # -c puts the working directory first on sys.path: a click.py there
          # would shadow the real module.
          if sys.path[:1] == [""]:
              del sys.path[0]
          sys.argv[0] = ${builtins.toJSON programName}
          from ${head parts} import ${lib.last parts}
          sys.exit(${lib.last parts}())
        '';
      pkg = mkHostPython {
        name = "host-${sanitizeName pname}-${version}";
        inherit what python3 minimumPython checkWithStorePython;
        modules = dependencyModules ++ ownModules;
        packages = dependencyPackages;
        description = "${pname} ${version} for the host python3 (repx host package set)";
        env = env // { packageSource = src; };
        install = ''
          mkdir -p "$site"
          for module in ${lib.escapeShellArgs modules}; do
            cp -R "$packageSource/$module" "$site/"
          done
          chmod -R u+w "$site"
          pythonpath="$site''${pythonpath:+:$pythonpath}"
        '' + preCheck;
        # The sources are byte-compiled with the copied modules (hash-based
        # .pyc files: the store is read-only and Nix resets every mtime).
        # postInstall comes after, so that it can add links (into other
        # store paths) that the compiler must not walk.
        afterCheck = postInstall;
        wrappers = concatMapStrings
          (programName: "write_wrapper \"$out/bin/\"${escapeShellArg programName} "
            + escapeShellArg ("-c " + escapeShellArg (scriptCode programName scripts.${programName}) + " ")
            + "\n")
          (attrNames scripts);
        passthru = {
          inherit pname version;
          sitePackages = "lib/python3/site-packages";
          repxPython = { modules = dependencyModules ++ ownModules; packages = dependencyPackages; };
        };
        meta = { mainProgram = pname; } // meta;
      };
    in
    pkg;

  helpers = {
    inherit lib system runCommand runCommandLocal writeTextFile writeText
      writeTextDir writeScript writeScriptBin writeShellScript
      writeShellScriptBin symlinkJoin callPackage runtimeShell;
    runCommandNoCC = runCommand;
    runCommandCC = runCommand;
    pkgs = pkgs;
    hostPath = hostPath;
    python3Packages = pythonPackages;
    # repx_py and repx.analysis for analysis stages (also ps.repx-py).
    repx-py = repxPy;
    # repx-internal: nix/package.nix builds repx with it on this set.
    __repxHostPythonPackage = hostPythonPackage;
    # Marker so repx can recognise this set (and explain "attribute missing").
    __repxHostPackageSet = true;
    # Named packages: which binaries they look for and whether any is here.
    __repxHostPackages = mapAttrs
      (attr: spec: {
        inherit (spec) bins;
        installed = installed attr;
        debian = spec.debian or attr;
      })
      specs;
  };

  pkgs = programs // named // helpers;
in
pkgs
