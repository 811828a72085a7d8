# Shell functions of the host package set's builders (nix/pkgs/default.nix):
# they copy host programs into $out together with everything the programs
# load, so that a package runs where only /nix/store exists (a bwrap sandbox,
# a container image, a machine without the host's tools).  POSIX sh: the
# builders run /bin/sh with the host's /usr/bin:/bin, plus patchelf.
#
# Rules:
#   * a program is copied under its own name into $out/bin; names whose host
#     files are one file (xz/unxz, gawk/awk, python/python3) become relative
#     links to the first copy, so a multi-call program still sees the name it
#     was started by;
#   * a dynamically linked program gets the host glibc package's loader as
#     ELF interpreter ($hostGlibc/lib, one store path shared by every package)
#     and DT_RPATH $out/lib:$hostGlibc/lib.  DT_RPATH, not DT_RUNPATH: the
#     loader uses a program's DT_RPATH for the dependencies of its libraries
#     and of what it dlopen()s too, so libraries and plugins are not patched;
#   * every library the host's loader resolves for it (the whole tree, as
#     `ld.so --list` prints it) is copied into $out/lib, except glibc's own,
#     which come from $hostGlibc;
#   * a script (#!) gets a store interpreter: one of the package's own
#     programs, the host bash package for sh/bash/dash, or an interpreter
#     the package declares ($scriptInterpreters); anything else fails the
#     build, naming the script and its interpreter;
#   * nothing is left pointing into the host: links in copied trees that leave
#     the tree are replaced by a copy of their target.
#
# Environment (derivation attributes):
#   out                 the output
#   what                the package, for messages ("pkgs.jq")
#   hostGlibc           the host glibc package (store path), or empty when the
#                       host has no glibc the set recognises: then each
#                       package carries its own loader and libc
#   glibcLoader         file name of the loader in $hostGlibc/lib
#   scriptShell         the host bash package (store path), or empty
#   scriptInterpreters  lines "NAME PATH": more interpreters for scripts
#   providedLibDirs     store folders whose libraries need no copy (a Python
#                       environment's interpreter package), space-separated

# shellcheck shell=sh
# shellcheck disable=SC2154  # the variables above come from the derivation
# shellcheck disable=SC2016  # $ORIGIN and Perl code are literal on purpose
set -e

fail() {
  echo "repx host package set: $what: $*" >&2
  exit 1
}

command -v patchelf >/dev/null 2>&1 \
  || fail "patchelf is not installed; the host set needs it to make copied programs load their libraries from the store (apt-get install patchelf)"

tab=$(printf '\t')
repx_programs="$TMPDIR/repx-programs"   # lines: host realpath TAB name in $out/bin
repx_scripts="$TMPDIR/repx-scripts"     # lines: name in $out/bin TAB host file
: > "$repx_programs"
: > "$repx_scripts"
mkdir -p "$out/bin"

# program_named REALPATH: sets `program` to the name under which the host
# file REALPATH is already in $out/bin; fails when it is not.
program_named() {
  while IFS="$tab" read -r known program; do
    if [ "$known" = "$1" ]; then return 0; fi
  done < "$repx_programs"
  return 1
}

# The search path written into copied programs and libraries.
store_rpath="$out/lib${hostGlibc:+:$hostGlibc/lib}"

# copy_library NAME HOSTPATH: put a library that a copied file needs into
# $out/lib, unless the store already provides it.  Sets `copied_library`.
copy_library() {
  case $2 in "$out"/*) return 0 ;; esac
  if [ -n "$hostGlibc" ] && [ -e "$hostGlibc/lib/$1" ]; then return 0; fi
  for dir in $providedLibDirs; do
    if [ -e "$dir/$1" ]; then return 0; fi
  done
  copied_library=1
  if [ -e "$out/lib/$1" ]; then return 0; fi
  mkdir -p "$out/lib"
  cp -L "$2" "$out/lib/$1" || fail "cannot copy the library $2 (needed by a program of this package)"
  chmod u+w "$out/lib/$1"
  # A library with a search path of its own (DT_RUNPATH) would not use the
  # program's: point it at the store.
  if [ -n "$(patchelf --print-rpath "$out/lib/$1" 2>/dev/null)" ]; then
    patchelf --force-rpath --set-rpath "$store_rpath" "$out/lib/$1"
  fi
}

# copy_libraries LOADER FILE STRICT: copy every library FILE loads, as the
# host's LOADER resolves them.  A library the loader cannot find fails the
# build when STRICT is 1 (a program that cannot run on the host either),
# else it is reported and skipped (an optional plugin of a Python package).
copy_libraries() {
  copied_library=
  listed=0
  if [ -x "$1" ]; then
    listing=$("$1" --list "$2" 2>&1) || listed=$?
  else
    listing=$(ldd "$2" 2>&1) || listed=$?
  fi
  while read -r soname arrow location rest; do
    [ "$arrow" = "=>" ] || continue
    if [ "$location" = "not" ]; then
      if [ "$3" = 1 ]; then
        fail "$2 needs the library $soname, which the host's dynamic loader does not find (the program cannot run on this host either)"
      fi
      echo "repx host package set: $what: warning: $2 needs $soname, which the host does not have; skipped" >&2
      continue
    fi
    copy_library "$soname" "$location"
  done <<EOF
$listing
EOF
  if [ "$listed" != 0 ] && [ "$3" = 1 ]; then
    fail "the host's dynamic loader cannot list the libraries of $2: $listing"
  fi
}

# store_loader HOSTLOADER: sets `loader` to the loader (ELF interpreter) for
# copied programs whose host loader is HOSTLOADER.
store_loader() {
  loader=${1##*/}
  if [ -n "$hostGlibc" ] && [ -e "$hostGlibc/lib/$loader" ]; then
    loader="$hostGlibc/lib/$loader"
    return
  fi
  mkdir -p "$out/lib"
  if [ ! -e "$out/lib/$loader" ]; then
    cp -L "$1" "$out/lib/$loader"
    chmod u+w "$out/lib/$loader"
  fi
  loader="$out/lib/$loader"
}

# add_program NAME HOSTPATH: copy one host program into $out/bin/NAME.  A
# dynamically linked program loads its loader and libraries from the store; a
# script is noted for `finish`; a static program or another file stays as it is.
add_program() {
  real=$(readlink -f "$2") || real=
  if [ -z "$real" ] || [ ! -r "$real" ]; then
    fail "the Nix build user $(id -un) cannot read $2: it is a dangling link, or it lies in a folder the build users may not enter (Nix builds run as the build users, so a program under a private home such as /root is out of reach)"
  fi
  if program_named "$real"; then
    ln -s "$program" "$out/bin/$1"
    return
  fi
  printf '%s\t%s\n' "$real" "$1" >> "$repx_programs"
  cp "$real" "$out/bin/$1"
  chmod u+w "$out/bin/$1"
  if interpreter=$(patchelf --print-interpreter "$real" 2>/dev/null) && [ -n "$interpreter" ]; then
    copy_libraries "$interpreter" "$real" 1
    store_loader "$interpreter"
    patchelf --set-interpreter "$loader" --force-rpath --set-rpath "$store_rpath" "$out/bin/$1"
  elif [ "$(head -c 2 "$real")" = "#!" ]; then
    printf '%s\t%s\n' "$1" "$real" >> "$repx_scripts"
  fi
}

# The store interpreter for a script's interpreter $1 (a path, or a bare
# name after `env`); $2 is the script, for the message.
store_interpreter() {
  case $1 in
    /*)
      if program_named "$(readlink -f "$1" 2>/dev/null || echo "$1")"; then
        echo "$out/bin/$program"
        return
      fi ;;
    *)
      if [ -e "$out/bin/$1" ] || [ -L "$out/bin/$1" ]; then
        echo "$out/bin/$1"
        return
      fi ;;
  esac
  base=${1##*/}
  while read -r name location; do
    if [ -n "$name" ] && [ "$name" = "$base" ]; then
      echo "$location"
      return
    fi
  done <<EOF
$scriptInterpreters
EOF
  case $base in
    sh | dash | ash | bash)
      [ -n "$scriptShell" ] \
        || fail "$2 is a script for $1, and this package set has no bash to run it from the store (bash is not on hostPath)"
      if [ "$base" = bash ]; then echo "$scriptShell/bin/bash"; else echo "$scriptShell/bin/sh"; fi
      return ;;
  esac
  case $base in python3*) base=python3 ;; esac
  fail "$2 is a script for $1, which is not in this package's closure (a script gets the package's own programs, bash for sh/bash, or an interpreter its named package declares). Run it with its interpreter instead (runDependencies = [ pkgs.$base ], then \`$base $2\`: that needs the host file, so not in a sandbox), or pass a real nixpkgs with --nixpkgs"
}

# fix_script NAME HOSTFILE: rewrite the #! line of $out/bin/NAME to a store
# interpreter; the rest of the script is the host's, byte for byte.
fix_script() {
  IFS= read -r line < "$2" || true
  line=${line#??}
  while :; do
    case $line in
      [" $tab"]*) line=${line#?} ;;
      *) break ;;
    esac
  done
  interpreter=${line%%[" $tab"]*}
  arguments=${line#"$interpreter"}
  if [ "${interpreter##*/}" = env ]; then
    # #!/usr/bin/env NAME [ARG]: NAME is looked up like a bare name.
    while :; do
      case $arguments in
        [" $tab"]*) arguments=${arguments#?} ;;
        *) break ;;
      esac
    done
    interpreter=${arguments%%[" $tab"]*}
    arguments=${arguments#"$interpreter"}
    case $interpreter in
      "" | -*) fail "$2 starts with '#!${line}', which the host set cannot point into the store" ;;
    esac
  fi
  target=$(store_interpreter "$interpreter" "$2")
  {
    printf '#!%s%s\n' "$target" "$arguments"
    tail -n +2 "$2"
  } > "$out/bin/$1"
}

# copy_tree SOURCE DEST [NAME...]: copy a folder (links kept), minus the
# top-level entries NAME; links that leave it become copies of their targets.
copy_tree() {
  source=$(readlink -f "$1")
  dest=$2
  shift 2
  mkdir -p "$dest"
  cp -R "$source/." "$dest/"
  for pattern in "$@"; do
    for name in "$dest"/$pattern; do
      rm -rf "$name"
    done
  done
  chmod -R u+w "$dest"
  localize_links "$source" "$dest"
}

# localize_links SOURCE DEST: DEST is a copy of SOURCE; make every link in
# it resolve inside DEST (a link to a host file outside SOURCE becomes a
# copy of that file; a dangling link is removed).
localize_links() {
  find "$2" -type l > "$TMPDIR/repx-links"
  while IFS= read -r link; do
    target=$(readlink -f "$1/${link#"$2"/}" 2>/dev/null) || target=
    case $target in
      "$1"/*)
        inside="$2/${target#"$1"/}"
        if [ "$(readlink -f "$link")" != "$(readlink -f "$inside")" ]; then
          rm -f "$link"
          ln -s "$inside" "$link"
        fi ;;
      *)
        rm -f "$link"
        if [ -n "$target" ] && [ -e "$target" ]; then
          cp -RL "$target" "$link"
          chmod -R u+w "$link"
        fi ;;
    esac
  done < "$TMPDIR/repx-links"
}

# copy_item SOURCE DEST: copy a file or a folder (merged into DEST).
copy_item() {
  if [ -d "$1" ]; then
    copy_tree "$1" "$2"
  else
    mkdir -p "${2%/*}"
    cp -L "$1" "$2"
    chmod u+w "$2"
  fi
}

# bundle_shared_objects DIR FOREIGN: the shared objects in DIR (Python
# extension modules, Perl XS modules) find the libraries they load: those
# the store does not provide yet are copied into $out/lib.  An object gets
# DT_RPATH <its $ORIGIN entries>:$out/lib:$hostGlibc/lib when it has a search
# path of its own (which would hide the program's), or when FOREIGN is 1 (a
# program of another package loads it, whose DT_RPATH lacks this $out/lib)
# and it needs a library copied here.
bundle_shared_objects() {
  lister=
  if [ -n "$hostGlibc" ]; then lister="$hostGlibc/lib/$glibcLoader"; fi
  find "$1" -type f \( -name '*.so' -o -name '*.so.*' \) > "$TMPDIR/repx-objects"
  while IFS= read -r object; do
    patchelf --print-needed "$object" >/dev/null 2>&1 || continue
    copy_libraries "$lister" "$object" 0
    own=$(patchelf --print-rpath "$object" 2>/dev/null) || own=
    if [ -n "$own" ] || { [ "$2" = 1 ] && [ -n "$copied_library" ]; }; then
      kept=
      old_ifs=$IFS
      IFS=:
      for entry in $own; do
        case $entry in
          '$ORIGIN'*) kept="$kept$entry:" ;;
        esac
      done
      IFS=$old_ifs
      patchelf --force-rpath --set-rpath "$kept$store_rpath" "$object"
    fi
  done < "$TMPDIR/repx-objects"
}

# write_exec_wrapper FILE TARGET LINES: FILE is a script (run by the host bash
# package) that runs the shell LINES, then exec's TARGET with its arguments.
write_exec_wrapper() {
  [ -n "$scriptShell" ] || fail "a wrapper for $2 needs bash, which is not on hostPath"
  {
    echo "#!$scriptShell/bin/sh"
    echo "# $what from the repx host package set"
    printf '%s\n' "$3"
    printf 'exec %s "$@"\n' "'$2'"
  } > "$1"
  chmod 555 "$1"
}

# python_stdlib NAME HOSTPYTHON: $out/bin/NAME (the copied interpreter)
# starts from the store: the standard library and lib-dynload of HOSTPYTHON go
# to $out/lib/pythonX.Y, where Python looks first (it searches upwards from
# its executable for lib/pythonX.Y/os.py), minus site-packages and
# dist-packages (modules come through withPackages) and config-* (static
# libraries for building extensions).  Byte code is made valid for the store
# (see $pycacheProgram).
python_stdlib() {
  info=$("$2" -S -c 'import sys, sysconfig
print("%d.%d" % sys.version_info[:2])
print(sysconfig.get_path("stdlib"))
print(sysconfig.get_config_var("DESTSHARED") or "")') \
    || fail "the Nix build user $(id -un) cannot run $2 to find its standard library"
  { read -r version; read -r stdlib; read -r dynload; } <<EOF
$info
EOF
  [ -f "$stdlib/os.py" ] || fail "$2 reports its standard library at $stdlib, which has no os.py"
  lib="$out/lib/python$version"
  copy_tree "$stdlib" "$lib" site-packages dist-packages 'config-*'
  if [ -n "$dynload" ] && [ -d "$dynload" ] && [ ! -d "$lib/lib-dynload" ]; then
    copy_tree "$dynload" "$lib/lib-dynload"
  fi
  bundle_shared_objects "$lib" 0
  PYTHONDONTWRITEBYTECODE=1 "$out/bin/$1" -S -E -c "$pycacheProgram" "$lib"
  prefix=$("$out/bin/$1" -E -c 'import sys; print(sys.prefix)')
  [ "$prefix" = "$out" ] \
    || fail "the copied $1 does not find its standard library in $out (its sys.prefix is $prefix)"
}

# perl_lib NAME HOSTPERL: $out/bin/NAME runs the copied perl with its core
# library.  Perl's @INC is compiled in (host paths), so the core folders of
# HOSTPERL's @INC (not site, vendor or /etc) are copied under
# $out/lib/perl5/<host path>, the program moves to $out/libexec and
# $out/bin/NAME becomes a wrapper that puts them first on PERL5LIB.
perl_lib() {
  folders=$("$2" -MConfig -e '
    my %other = map { $_ => 1 } grep { defined && length }
      @Config{qw(sitelibexp sitearchexp vendorlibexp vendorarchexp)};
    print "$_\n" for grep { m{^/} && !m{^/etc/} && !$other{$_} && -d } @INC;') \
    || fail "the Nix build user $(id -un) cannot run $2 to find its library"
  perl5lib=
  while IFS= read -r folder; do
    [ -n "$folder" ] || continue
    copy_tree "$folder" "$out/lib/perl5$folder"
    perl5lib="$perl5lib${perl5lib:+:}$out/lib/perl5$folder"
  done <<EOF
$folders
EOF
  [ -n "$perl5lib" ] || fail "$2 has no core library folder in its @INC"
  bundle_shared_objects "$out/lib/perl5" 0
  mkdir -p "$out/libexec"
  mv "$out/bin/$1" "$out/libexec/$1"
  write_exec_wrapper "$out/bin/$1" "$out/libexec/$1" "PERL5LIB='$perl5lib'\${PERL5LIB:+:\"\$PERL5LIB\"}
export PERL5LIB"
}

# finish: the scripts get their store interpreters; empty folders go.
finish() {
  while IFS="$tab" read -r name host; do
    fix_script "$name" "$host"
  done < "$repx_scripts"
  rmdir "$out/lib" 2>/dev/null || true
}
