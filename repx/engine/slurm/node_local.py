"""``--artifact-store node-local``: the lab unpacked on each compute node's own disk.

On a cluster whose nodes have no Nix, the jobs' closures must come from somewhere. With the
default ``shared`` artifact store they are where the login node has them (``/nix/store``
shared to the nodes, or the unpack cache of ``--lab lab.tar`` on a shared file system). With
``node-local`` each node unpacks the lab's export once into its local disk: bwrap binds
that at ``/nix/store``, podman and docker load the run's image from it (the SLURM wrapper,
:func:`repx.engine.slurm.scheduler.wrapper_script`); outputs still go to the shared repx
store.

What the login node does (:func:`prepare_node_lab`): it puts the lab's export into the
shared store, ``<store>/slurm/labs/<lab id>.tar`` with a ``.json`` beside it (its sha256,
size, mtime), either by exporting a lab that is in the Nix store (``repx lab export``) or by
linking/copying the tar that ``--lab lab.tar`` was unpacked from (checked against the
digest of that unpack, which validated every member of it).

What a node does (:func:`unpack_script`, bash run by the SLURM wrapper, so the node needs
bash, coreutils, GNU tar and flock, and neither Nix nor repx): the same layout and rules as
repx's own unpack cache (:mod:`repx.lab.export`), under ``<artifact dir>/repx-labs``::

    <lab id>/nix/store/…            the unpacked store (bound at /nix/store)
    <lab id>/repx-unpacked.json     completion marker, written last (names the tar's sha256)
    <lab id>.lock                   flock: one unpack per node at a time, the rest wait
    <lab id>.partial-<pid>/         an unpack under way, or one that was killed (removed)

The tar's bytes are checked (``sha256sum``) against the digest the login node validated
before anything of it is extracted, so the node extracts exactly the members repx's safe
unpack accepted. The artifact dir is ``--artifact-dir`` (``REPX_ARTIFACT_DIR``), evaluated
on the node, by default ``$TMPDIR`` (else /tmp) there.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from repx.errors import RepxError, UsageError
from repx.lab.images import NIX_STORE

#: ``--artifact-store`` values: where the jobs' closures come from on a compute node.
ARTIFACT_STORES = ("shared", "node-local")

#: The environment variables behind ``--artifact-store`` and ``--artifact-dir``.
ARTIFACT_STORE_ENV = "REPX_ARTIFACT_STORE"
ARTIFACT_DIR_ENV = "REPX_ARTIFACT_DIR"

#: A node's artifact dir when none is set: its ``$TMPDIR`` (bash, evaluated on the node).
DEFAULT_ARTIFACT_DIR = "${TMPDIR:-/tmp}"

#: Where, under the artifact dir, a node keeps its unpacked labs.
NODE_CACHE = "repx-labs"

#: Stands for the node's unpacked store in a wrapped command line; the wrapper replaces it.
NODE_STORE_PLACEHOLDER = "@REPX_NODE_LOCAL_STORE@"

#: Stands for ``-e NAME`` of each variable of the node's environment in a container's
#: command line (the container gets the job's environment as a native job would).
NODE_ENV_PLACEHOLDER = "@REPX_NODE_ENV@"


@dataclass(frozen=True)
class NodeLab:
    """What a node needs to unpack the lab: the export on the shared store and its digest."""

    tar: str
    sha256: str
    lab_id: str
    #: The lab's store path (/nix/store/<lab id>-…), which the unpack must hold.
    lab: str
    #: The artifact dir as bash evaluates it on the node.
    artifact_dir: str = DEFAULT_ARTIFACT_DIR


def artifact_store_from(value: str | None) -> str:
    """``--artifact-store`` (``value``), else ``$REPX_ARTIFACT_STORE``, else ``shared``."""
    name = value if value is not None else (
        os.environ.get(ARTIFACT_STORE_ENV, "").strip() or "shared")
    if name not in ARTIFACT_STORES:
        where = "--artifact-store" if value is not None else ARTIFACT_STORE_ENV
        raise UsageError(f"{where}={name!r}: use one of {', '.join(ARTIFACT_STORES)}")
    return name


def artifact_dir_from(value: str | None) -> str:
    """The node's artifact dir as bash text: ``--artifact-dir`` (``value``), else
    ``$REPX_ARTIFACT_DIR``, else the node's ``$TMPDIR``. A given path must be absolute: it
    names a folder on every node, not on this machine."""
    text = value if value is not None else os.environ.get(ARTIFACT_DIR_ENV, "").strip()
    if not text:
        return DEFAULT_ARTIFACT_DIR
    if not text.startswith("/"):
        where = "--artifact-dir" if value is not None else ARTIFACT_DIR_ENV
        raise UsageError(f"{where}={text!r}: give an absolute path (a folder on each "
                         "compute node's local disk)")
    return _sh(text)


def _identity(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _known_digest(tar: Path) -> str | None:
    """The sha256 recorded beside ``tar`` when the tar is unchanged since, else None."""
    try:
        info = json.loads(tar.with_suffix(".json").read_text())
        if info.get("identity") == _identity(tar):
            return str(info["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _record_digest(tar: Path, digest: str) -> None:
    side = tar.with_suffix(".json")
    partial = side.with_name(f".{side.name}.{os.getpid()}")
    partial.write_text(json.dumps({"sha256": digest, "identity": _identity(tar)}) + "\n")
    os.replace(partial, side)


def prepare_node_lab(lab_dir: Path, store_root: Path, artifact_dir: str) -> NodeLab:
    """Put the lab's export into the shared store for the nodes to unpack (once per lab:
    reused while its recorded digest matches); the :class:`NodeLab` naming it."""
    from repx.lab.export import (
        export_lab,
        file_sha256,
        lab_id_of,
        lab_store_path,
        read_marker,
        unpacked_lab_of,
    )

    labs = store_root / "slurm" / "labs"
    labs.mkdir(parents=True, exist_ok=True)
    unpacked = unpacked_lab_of(lab_dir)
    if unpacked is None:
        store_path = lab_store_path(lab_dir)  # a LabError for a lab outside any store
        lab_id = lab_id_of(store_path)
        tar = labs / f"{lab_id}.tar"
        digest = _known_digest(tar) if tar.exists() else None
        if digest is None:
            digest = export_lab(lab_dir, tar).sha256
            _record_digest(tar, digest)
        return NodeLab(str(tar), digest, lab_id, store_path, artifact_dir)
    tar = labs / f"{unpacked.lab_id}.tar"
    if _known_digest(tar) != unpacked.tar_sha256:
        source = Path(str((read_marker(unpacked.root) or {}).get("tar", "")))
        if not source.is_file():
            raise RepxError(f"--artifact-store node-local: the tar {unpacked.lab_dir} was "
                            f"unpacked from ({source}) is gone; build with --lab LAB.tar "
                            "again so the nodes can unpack it")
        partial = labs / f".{tar.name}.{os.getpid()}"
        try:
            os.link(source, partial)
        except OSError:
            shutil.copyfile(source, partial)
        if file_sha256(partial) != unpacked.tar_sha256:
            partial.unlink()
            raise RepxError(f"--artifact-store node-local: {source} changed since it was "
                            f"unpacked into {unpacked.root}; build with --lab {source} again")
        os.replace(partial, tar)
        _record_digest(tar, unpacked.tar_sha256)
    return NodeLab(str(tar), unpacked.tar_sha256, unpacked.lab_id, unpacked.lab_store_path,
                   artifact_dir)


def unpack_script(node_lab: NodeLab) -> str:
    """Bash for the SLURM wrapper: unpack the lab on this node unless a complete unpack of
    the same tar is there, and set ``node_store`` to its store. Calls ``fail MESSAGE`` (the
    wrapper's) when it cannot. See the module docstring for the layout and the rules."""
    marker = json.dumps({"images": {}, "lab": node_lab.lab, "lab_id": node_lab.lab_id,
                         "tar": node_lab.tar, "tar_sha256": node_lab.sha256},
                        indent=1, sort_keys=True)
    lab_name = node_lab.lab[len(NIX_STORE) + 1:]
    return f"""# The lab, unpacked once on this node's disk (repx.engine.slurm.node_local).
lab_tar={_sh(node_lab.tar)}
lab_sha={node_lab.sha256}
lab_id={node_lab.lab_id}
lab_cache={node_lab.artifact_dir}/{NODE_CACHE}
lab_root=$lab_cache/$lab_id
unpacked() {{ grep -qs "\\"tar_sha256\\": \\"$lab_sha\\"" "$lab_root/repx-unpacked.json"; }}
remove_tree() {{ [[ -e $1 ]] || return 0; chmod -R u+w -- "$1" && rm -rf -- "$1"; }}
if ! unpacked; then
  mkdir -p -- "$lab_cache" || fail "cannot create $lab_cache (set --artifact-dir)"
  exec 9> "$lab_cache/$lab_id.lock" || fail "cannot open $lab_cache/$lab_id.lock"
  flock -w "${{REPX_UNPACK_LOCK_TIMEOUT:-1800}}" 9 \\
    || fail "waited too long for another unpack of $lab_tar on this node"
  if ! unpacked; then
    for leftover in "$lab_cache/$lab_id".partial-* "$lab_cache/$lab_id".stale-*; do
      remove_tree "$leftover"
    done
    partial=$lab_cache/$lab_id.partial-$$
    mkdir -- "$partial" || fail "cannot create $partial"
    echo "$lab_sha  $lab_tar" | sha256sum --check --status \\
      || fail "$lab_tar is not the export repx checked (sha256 differs); build again"
    tar -xf "$lab_tar" -C "$partial" --no-same-owner \\
      || fail "cannot unpack $lab_tar into $partial"
    [[ -f $partial/nix/store/{lab_name}/lab.json ]] || fail "$lab_tar holds no lab"
    printf '%s\\n' {_sh(marker)} > "$partial/repx-unpacked.json" \\
      && sync "$partial/repx-unpacked.json" || fail "cannot write the unpack's marker"
    stale=$lab_cache/$lab_id.stale-$$
    if [[ -e $lab_root ]]; then mv -- "$lab_root" "$stale"; fi
    mv -- "$partial" "$lab_root" || fail "cannot move the unpack to $lab_root"
    remove_tree "$stale"
  fi
  exec 9>&-
fi
node_store=$lab_root/nix/store
"""


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
