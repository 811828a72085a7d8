"""``--scratch node-local``: a SLURM job writes ``$out`` on its node's disk, and its outputs
reach the shared store only once it succeeded, complete and verified.

Why: a job that writes straight into ``<store>/outputs/<id>/out`` on the shared file system
leaves half its files there when its node dies, and it loads the shared file system with
every small write. With node-local scratch:

1. **Run.** The wrapper (:func:`repx.engine.slurm.scheduler.wrapper_script`) gives the job
   ``$out`` = ``<scratch dir>/repx-scratch/<id>.<slurm job id>`` on the node (the scratch
   dir is ``--scratch-dir``, else ``$REPX_SCRATCH_DIR``, else ``$TMPDIR``, else /tmp, as
   the node evaluates it). The job folder's ``out/`` is removed before the run: during the
   run and after any failure the store has *no* ``out/`` for the job at all.
2. **Commit** (exit code 0 only). The node computes the BLAKE3 manifest of the scratch
   ``$out`` (path, size, digest of every file, the store's own rules:
   :func:`tree_manifest`) with the login node's Python (``sys.executable``, on the shared
   file system as repx itself is, or ``$REPX_NODE_PYTHON``; nodes need no repx install and
   no ``b3sum``), copies the scratch into a staging folder inside the job folder
   (``<job>/.commit-<slurm job id>``), syncs it, writes the manifest to
   ``repx/scratch_manifest.json`` and only then renames the staging folder to ``out/`` (one
   atomic ``rename``). Only after that does it write the exit code 0.
3. **Verify.** The watcher on the login node, before recording the job as succeeded, hashes
   ``out/`` (as for every job) and compares that with the node's manifest
   (:func:`manifest_mismatch`); a difference fails the job, naming the file.

So a node that dies (or a job cancelled) at any point leaves either nothing in ``out/`` or
a complete copy whose exit code was never written (a failed job, rerun by the next build;
the wrapper of the rerun removes a leftover staging folder and ``out/`` first).

``--keep-failed-scratch``: a job that did not succeed (its exit code, a failed commit, a
SIGTERM from scancel or a time limit) leaves its scratch as ``repx/failed-scratch.tar`` in
its job folder, for a post-mortem. The scratch itself is always removed when the wrapper
ends; a scratch left by a killed node is removed by the next job of the same id there.

Under an isolating runtime the sandbox's command line, made on the login node, binds the
store's ``out/``; node-local scratch is for native jobs (a clear error says so).
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from repx.store.layout import EXCLUDED_OUTPUTS, OUT

#: ``--scratch`` values: where a SLURM job's ``$out`` is written while it runs.
SCRATCH_MODES = ("shared", "node-local")

#: The environment variables behind ``--scratch-dir`` and the node's interpreter.
SCRATCH_DIR_ENV = "REPX_SCRATCH_DIR"
NODE_PYTHON_ENV = "REPX_NODE_PYTHON"

#: The node's scratch dir when none is set (bash, evaluated on the node).
DEFAULT_SCRATCH_DIR = "${REPX_SCRATCH_DIR:-${TMPDIR:-/tmp}}"

#: Under the scratch dir: one folder per running job.
SCRATCH_FOLDER = "repx-scratch"

#: In the job's ``repx/`` folder: the manifest the node computed of its scratch ``$out``.
SCRATCH_MANIFEST = "scratch_manifest.json"
#: In the job's ``repx/`` folder: a failed job's scratch (``--keep-failed-scratch``).
FAILED_SCRATCH_TAR = "failed-scratch.tar"
#: The prefix of a staging folder (``<job>/.commit-<slurm job id>``) inside the job folder.
STAGING_PREFIX = ".commit-"



@dataclass(frozen=True)
class Scratch:
    """Node-local scratch as the wrapper uses it."""

    #: The scratch dir as bash text evaluated on the node.
    root: str = DEFAULT_SCRATCH_DIR
    #: Archive a failed job's scratch into its job folder.
    keep_failed: bool = False
    #: The interpreter the node runs :func:`tree_manifest` with.
    python: str = ""


def scratch_from(mode: str | None, root: str | None, keep_failed: bool) -> Scratch | None:
    """The :class:`Scratch` of ``--scratch MODE --scratch-dir ROOT --keep-failed-scratch``
    (None: jobs write ``$out`` in the shared store). A root must be absolute: it names a
    folder on every node, not on this machine."""
    from repx.errors import UsageError

    if mode in (None, "shared"):
        if root is not None or keep_failed:
            raise UsageError("--scratch-dir and --keep-failed-scratch go with "
                             "--scratch node-local")
        return None
    if mode not in SCRATCH_MODES:
        raise UsageError(f"--scratch={mode!r}: use one of {', '.join(SCRATCH_MODES)}")
    text = DEFAULT_SCRATCH_DIR
    if root is not None:
        if not root.startswith("/"):
            raise UsageError(f"--scratch-dir={root!r}: give an absolute path (a folder on "
                             "each compute node's local disk)")
        text = _sh(root)
    python = os.environ.get(NODE_PYTHON_ENV, "").strip() or sys.executable
    return Scratch(root=text, keep_failed=keep_failed, python=python)


def prepare_script(scratch: Scratch, job: str, meta: str, stderr_log: str) -> str:
    """Bash run before the job: make the row's scratch ``$out`` (``out_dir``), remove what an
    earlier attempt left (its staging folder, ``out/``, its manifest and archive), and arm
    the trap that archives (``--keep-failed-scratch``) and removes the scratch when the
    wrapper ends. ``job`` and ``meta`` are the wrapper's bash expressions of the folders."""
    archive = ""
    if scratch.keep_failed:
        archive = f"""    if [[ ${{scratch_committed:-0}} != 1 && -d $out_dir ]]; then
      tar -cf "{meta}/{FAILED_SCRATCH_TAR}.partial" -C "$out_dir" . 2>> "{stderr_log}" \\
        && mv -f -- "{meta}/{FAILED_SCRATCH_TAR}.partial" "{meta}/{FAILED_SCRATCH_TAR}"
    fi
"""
    return f"""# Node-local scratch (repx.engine.slurm.scratch): $out is on this node's disk and
# reaches the store only complete, after the job succeeded.
scratch_remove() {{ [[ -e $1 || -L $1 ]] || return 0; chmod -R u+w -- "$1" 2> /dev/null
                   rm -rf -- "$1"; }}
scratch_base={scratch.root}/{SCRATCH_FOLDER}
mkdir -p -- "$scratch_base" || fail "cannot create the scratch dir $scratch_base"
for leftover in "$scratch_base/$id".* "{job}/{STAGING_PREFIX}"*; do scratch_remove "$leftover"; done
scratch_remove "{job}/{OUT}"
rm -f -- "{meta}/{SCRATCH_MANIFEST}" "{meta}/{FAILED_SCRATCH_TAR}"
scratch_python={_sh(scratch.python)}
out_dir=$scratch_base/$id.${{SLURM_JOB_ID:-$$}}
mkdir -- "$out_dir" || fail "cannot create $out_dir"
scratch_end() {{
{archive}    scratch_remove "$out_dir"
}}
trap scratch_end EXIT
trap 'exit 143' TERM
"""


def commit_script(scratch: Scratch, job: str, meta: str, stderr_log: str) -> str:
    """Bash run after the job when ``code`` is 0: manifest, copy, sync, rename into
    ``out/`` (see the module docstring); ``fail`` on any error, so the job fails."""
    del scratch  # its settings are in the variables prepare_script set
    return f"""if (( code == 0 )); then
  staging={job}/{STAGING_PREFIX}${{SLURM_JOB_ID:-$$}}
  "$scratch_python" -m repx.engine.slurm.scratch "$out_dir" \\
    > "{meta}/.{SCRATCH_MANIFEST}.partial" 2>> "{stderr_log}" \\
    || fail "cannot compute the BLAKE3 manifest of $out_dir with $scratch_python (set \\
{NODE_PYTHON_ENV} to a Python that imports repx on the nodes)"
  mkdir -- "$staging" && cp -a -- "$out_dir/." "$staging/" 2>> "{stderr_log}" \\
    || fail "cannot copy $out_dir into $staging"
  sync -f "$staging" 2> /dev/null
  mv -f -- "{meta}/.{SCRATCH_MANIFEST}.partial" "{meta}/{SCRATCH_MANIFEST}" \\
    || fail "cannot write {meta}/{SCRATCH_MANIFEST}"
  mv -T -- "$staging" "{job}/{OUT}" || fail "cannot move $staging to {job}/{OUT}"
  scratch_committed=1
fi
"""


def tree_manifest(root: str) -> list[tuple[str, int, str]]:
    """(path, size, BLAKE3) of every file under ``root``, by the rules of
    :meth:`repx.store.Store.manifest`: links followed to the file they name, links to
    directories not descended, dangling links, fifos and sockets left out, SLURM's
    ``slurm-*.out`` at the top skipped; sorted by path."""
    import blake3

    files: list[tuple[str, int, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        top = rel_dir == "."
        for name in sorted(filenames):
            if top and any(fnmatch.fnmatchcase(name, pat) for pat in EXCLUDED_OUTPUTS):
                continue
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            digest = blake3.blake3(max_threads=blake3.blake3.AUTO).update_mmap(full).hexdigest()
            rel = name if top else f"{rel_dir}/{name}".replace(os.sep, "/")
            files.append((rel, st.st_size, digest))
    files.sort()
    return files


def manifest_mismatch(node_manifest: str, stored: Sequence[tuple[str, int, str]]) -> str | None:
    """Why the store's ``out/`` (``stored``: path, size, BLAKE3 as the watcher hashed it)
    is not what the job wrote on its node (the manifest file ``node_manifest``), or None
    when they are the same files with the same content."""
    try:
        with open(node_manifest, encoding="utf-8") as handle:
            wrote = {str(p): (int(s), str(d)) for p, s, d in json.load(handle)}
    except (OSError, ValueError, TypeError) as exc:
        return f"its node's manifest {node_manifest} cannot be read ({exc})"
    have = {p: (s, d) for p, s, d in stored}
    for path in sorted(wrote.keys() | have.keys()):
        if path not in have:
            return (f"its output {path} written on the node's scratch is missing from the "
                    "store's copy (a link into the scratch dir?)")
        if path not in wrote:
            return f"the store's copy has {path}, which the job did not write on its node"
        if have[path] != wrote[path]:
            return (f"the store's copy of its output {path} differs from what the job wrote "
                    "on its node (size or BLAKE3)")
    return None


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def main(argv: Sequence[str]) -> int:
    """``python -m repx.engine.slurm.scratch DIR``: the node's manifest of DIR, as JSON."""
    if len(argv) != 1 or not os.path.isdir(argv[0]):
        sys.stderr.write("usage: python -m repx.engine.slurm.scratch DIR\n")
        return 2
    json.dump(tree_manifest(argv[0]), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
