"""Which package provides a command, for the hints of a missing program.

A stage's ``runDependencies`` lists packages, but a script calls commands, and the two names
differ for many common tools: ``awk`` is in ``pkgs.gawk``, ``sed`` in ``pkgs.gnused``. A hint
that says ``pkgs.awk`` sends the author to an attribute nixpkgs does not have, so the hints
name the nixpkgs attribute (the host package set, ``nix/pkgs``, uses the same names).
"""

from __future__ import annotations

#: Commands whose nixpkgs package has another name (a command not listed here is assumed to
#: be its package's name, as ``jq`` is ``pkgs.jq``).
PACKAGE_OF_COMMAND: dict[str, str] = {
    **dict.fromkeys(("awk", "gawk"), "gawk"),
    "sed": "gnused",
    **dict.fromkeys(("grep", "egrep", "fgrep"), "gnugrep"),
    **dict.fromkeys(("find", "xargs"), "findutils"),
    "tar": "gnutar",
    "make": "gnumake",
    **dict.fromkeys(("diff", "cmp", "diff3", "sdiff"), "diffutils"),
    **dict.fromkeys(("gunzip", "zcat"), "gzip"),
    **dict.fromkeys(("bunzip2", "bzcat"), "bzip2"),
    **dict.fromkeys(("unxz", "xzcat"), "xz"),
    **dict.fromkeys(("ps", "pgrep", "pkill", "free", "top", "watch", "uptime"), "procps"),
    **dict.fromkeys(("flock", "getopt", "setsid", "column", "hexdump", "rev"), "util-linux"),
    **dict.fromkeys(("python", "pydoc"), "python3"),
    **dict.fromkeys(("ssh", "scp", "sftp", "ssh-keygen"), "openssh"),
    **dict.fromkeys(("dot", "neato"), "graphviz"),
    "sqlite3": "sqlite",
    "Rscript": "R",
    "node": "nodejs",
    "rg": "ripgrep",
    "dc": "bc",
    **dict.fromkeys(("ip", "ss"), "iproute2"),
    "nc": "netcat",
    **dict.fromkeys(("ld", "as", "nm", "objdump", "strip", "readelf"), "binutils"),
    **dict.fromkeys(("cc", "g++", "c++"), "gcc"),
    **dict.fromkeys((
        "[", "base64", "basename", "cat", "chmod", "cp", "cut", "date", "dd", "df", "dirname",
        "du", "echo", "env", "expr", "head", "id", "ln", "ls", "md5sum", "mkdir", "mktemp",
        "mv", "nproc", "od", "paste", "printf", "readlink", "realpath", "rm", "rmdir", "seq",
        "sha256sum", "shuf", "sleep", "sort", "split", "stat", "tac", "tail", "tee", "test",
        "timeout", "touch", "tr", "true", "false", "uniq", "wc", "yes",
    ), "coreutils"),
}


def package_for(command: str) -> str:
    """The nixpkgs attribute (``pkgs.<this>``) that provides ``command``."""
    return PACKAGE_OF_COMMAND.get(command, command)
