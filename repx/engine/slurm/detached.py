"""Fully detached ``--no-wait`` builds: scatter-gather stages expand themselves on SLURM.

A scatter-gather job's branches are known only once its scatter has run (its work items).
A watching build expands it on the login node then; a ``--no-wait`` build has returned by
then, so without help nothing downstream of a scatter-gather job could be submitted. What
a ``--no-wait`` build does instead:

* **Anchor.** With the scatter it submits an *anchor* job (``repx-anchor-<id>``, a job
  that runs ``true``) that depends ``afterok`` on the scatter. Jobs downstream of the
  scatter-gather job depend on the anchor as they would on the gather. Its SLURM id is
  written to ``<job folder>/repx/anchor`` (:data:`ANCHOR_FILE`).
* **Expansion on the node.** The scatter's job folder gets :data:`HOOK_FILE` (a bash line)
  and :data:`OPTIONS_FILE` (the build's SLURM options, pickled). The scatter's SLURM
  wrapper, after the scatter succeeded, runs the hook: the login node's own Python
  (``sys.executable``, or ``$REPX_NODE_PYTHON``: the interpreter and repx are on the
  shared file system, as on real clusters) runs :func:`expand_on_node`, which computes the
  branch and gather ids (BLAKE3 of the work items, the same code a watching build runs),
  submits one array per step and the gather with ``sbatch``, and points the anchor at the
  gather (``scontrol update JobId=<anchor> Dependency=afterok:<gather>``) before the
  scatter ends, so the anchor, and what waits for it, runs only once the gather
  succeeded. A failure there fails the scatter, and SLURM cancels the anchor and its
  downstream (``--kill-on-invalid-dep``).
* **No database on the node.** Nodes never write the store's LMDB (it lives on the login
  node's file system and is written by one process there): the node writes what it
  submitted to ``<job folder>/repx/detached.json`` (:data:`SUBMITTED_FILE`: the scatter's
  SLURM id and ``{unit id: SLURM id}``) instead of claiming and recording.
* **Reconcile.** A later ``repx status`` or ``repx build`` records the scatter's outcome
  as usual; expanding it then, the SLURM scheduler reads ``detached.json`` (when it names
  that scatter's SLURM id) and adopts the branches and gather (claim, QUEUED with their
  SLURM ids, watched or recorded as they ended) instead of submitting them again
  (:meth:`SlurmScheduler._adopt_detached`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: In the scatter's ``repx/`` folder: the bash line its wrapper runs after it succeeded.
HOOK_FILE = "detached_hook.sh"
#: In the scatter's ``repx/`` folder: (lab path, graph job id, SlurmOptions), pickled.
OPTIONS_FILE = "detached_options.pickle"
#: In the scatter-gather job's ``repx/`` folder: the anchor's SLURM id.
ANCHOR_FILE = "anchor"
#: In the scatter-gather job's ``repx/`` folder: what the node submitted.
SUBMITTED_FILE = "detached.json"

#: How long the node waits for the login node to write the anchor's id (it submits the
#: anchor right after the scatter, milliseconds later).
ANCHOR_WAIT_SECONDS = 120.0


def hook_text(python: str, store_root: str, scatter_id: str) -> str:
    """The hook's bash: run :func:`main` with the login node's interpreter."""
    args = [python, "-m", "repx.engine.slurm.detached", store_root, scatter_id]
    return "exec " + " ".join(_sh(a) for a in args) + "\n"


def write_atomically(path: str, data: bytes) -> None:
    """Write ``path`` through a temporary file beside it (a reader never sees half)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


class _FilesOnlyStore:
    """What :class:`SlurmScheduler` needs of a store, for a compute node: the job folders,
    and claims and records that are only collected (the node never writes the database;
    the login node adopts what it submitted)."""

    def __init__(self, root: Path) -> None:
        from repx.store.layout import JobFolders

        self.root = root
        self.folders = JobFolders(root)
        self.queued: dict[str, str] = {}
        self.failed: list[Any] = []

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield

    def statuses(self, job_ids: Iterable[str]) -> dict[str, Any]:
        del job_ids
        return {}

    def get(self, job_id: str) -> None:
        del job_id

    def get_many(self, job_ids: Iterable[str]) -> dict[str, Any]:
        del job_ids
        return {}

    def claim(self, *args: Any, **kwargs: Any) -> bool:
        del args, kwargs
        return True

    def mark_queued(self, owner: str, slurm_ids: dict[str, str]) -> None:
        del owner
        self.queued.update(slurm_ids)

    def finish(self, record: Any) -> None:
        self.failed.append(record)

    def update(self, record: Any) -> None:
        del record


def expand_on_node(store_root: Path, scatter_id: str, scatter_task: str) -> str:
    """On the scatter's node (``scatter_task``: its SLURM id, as the login node recorded
    it), after it succeeded: submit its branches and gather, point the
    anchor at the gather, write :data:`SUBMITTED_FILE`; a one-line summary. Raises
    :class:`RepxError` when something cannot be submitted (what was is cancelled)."""
    from repx.engine.plan import Plan
    from repx.engine.slurm.scheduler import SlurmScheduler
    from repx.engine.units import Outcome
    from repx.errors import RepxError
    from repx.lab.expand import load_job_graph

    store = _FilesOnlyStore(store_root)
    meta = store.folders.meta_dir(scatter_id)
    with open(f"{meta}/{OPTIONS_FILE}", "rb") as handle:
        lab_path, job_id, options = pickle.load(handle)
    graph = load_job_graph(lab_path)
    plan = Plan(closure=[job_id], up_to_date=[], to_run=[job_id])
    scheduler = SlurmScheduler(graph, store, plan, options)  # type: ignore[arg-type]
    scheduler.on_node = True
    scheduler._build_units()
    scatter = scheduler.units[scatter_id]
    scatter.slurm_id = scatter_task
    scheduler._expand(scatter)
    scheduler._resolve(scatter, Outcome.SUCCEEDED, "")
    (scheduler.submit_dir / "logs").mkdir(parents=True, exist_ok=True)
    while scheduler._submit_round():
        pass
    gather = scheduler.final[job_id]
    job_meta = store.folders.meta_dir(job_id)
    if scheduler.failures or not gather.slurm_id:
        scheduler.cli.scancel(store.queued.values())
        why = scheduler.failures[0].reason if scheduler.failures else "no gather submitted"
        raise RepxError(f"could not submit the branches of {job_id}: {why}")
    anchor = _wait_for_anchor(f"{job_meta}/{ANCHOR_FILE}")
    scheduler.cli._run(["scontrol", "update", f"JobId={anchor}",
                        f"Dependency=afterok:{gather.slurm_id}"])
    submitted = {"scatter": scatter.slurm_id, "anchor": anchor, "units": store.queued}
    write_atomically(f"{job_meta}/{SUBMITTED_FILE}",
                     json.dumps(submitted, sort_keys=True).encode() + b"\n")
    return (f"repx: submitted {len(store.queued)} branch/gather units of {job_id}; anchor "
            f"{anchor} now waits for gather {gather.slurm_id}")


def _wait_for_anchor(path: str) -> str:
    from repx.errors import RepxError

    deadline = time.monotonic() + ANCHOR_WAIT_SECONDS
    while True:
        with contextlib.suppress(FileNotFoundError):
            text = Path(path).read_text().strip()
            if text:
                return text
        if time.monotonic() > deadline:
            raise RepxError(f"{path} never appeared: the build that submitted this scatter "
                            "did not submit its anchor job")
        time.sleep(0.2)


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def main(argv: list[str]) -> int:
    """``python -m repx.engine.slurm.detached STORE SCATTER_ID`` (the scatter's hook)."""
    from repx.errors import RepxError

    if len(argv) != 2:
        sys.stderr.write("usage: python -m repx.engine.slurm.detached STORE SCATTER_ID\n")
        return 2
    env = os.environ
    array = env.get("SLURM_ARRAY_JOB_ID")
    task = f"{array}_{env.get('SLURM_ARRAY_TASK_ID', '0')}" if array else env.get(
        "SLURM_JOB_ID", "")
    # The scatter's own SLURM settings must not leak into the jobs it submits.
    for name in [n for n in env if n.startswith(("SLURM_", "SBATCH_"))]:
        del env[name]
    try:
        print(expand_on_node(Path(argv[0]), argv[1], task))
    except (RepxError, OSError, subprocess.SubprocessError, pickle.PickleError) as exc:
        sys.stderr.write(f"repx (detached scatter-gather): {getattr(exc, 'message', exc)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
