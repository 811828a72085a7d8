"""The job folder: the one place where the names of a job's files in the store are spelled.

Every job (and every scatter-gather unit) owns one folder, named by its identity::

    <store>/outputs/<id>/out/                 $out: what the job produced (its outputs)
    <store>/outputs/<id>/repx/stdout.log      the job's stdout
    <store>/outputs/<id>/repx/stderr.log      the job's stderr
    <store>/outputs/<id>/repx/inputs.json     $2: {input name: absolute path}
    <store>/outputs/<id>/repx/params.json     $3: {param: value}
    <store>/outputs/<id>/repx/exit_code       SLURM: the exit code the task's wrapper saw
    <store>/outputs/<id>/repx/record.json     how the job ended (its store record), written
                                              when it finishes: ``repx cache recover`` reads it
    <store>/outputs/<id>/repx/units.json      scatter-gather: the ids of its scatter and steps
    <store>/outputs/<id>/repx/worker_item.json   a step: its branch's work item
    <store>/outputs/<id>/repx/worker_outs.json   a gather: the sink outputs, in item order
    <store>/outputs/<id>/repx/metadata__<run>.json   an inter-run manifest the job reads

The engine builds these paths tens of thousands of times per build, so :class:`JobFolders`
works on plain strings; :class:`repx.store.Store` offers the same folders as ``Path``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from repx.store.errors import StoreError

#: Store directory used when the user names none (beside the lab).
DEFAULT_STORE = ".repx"

#: The folder of a store that holds one folder per job.
OUTPUTS = "outputs"

#: Files in ``out/`` that are not job outputs: SLURM writes its own log there, and the
#: execution contract keeps it when it empties ``$out`` before a run.
EXCLUDED_OUTPUTS = ("slurm-*.out",)

#: A job's ``$out``.
OUT = "out"
#: A job's own files that are not outputs (logs, the JSON it was given).
META = "repx"
#: A copy of the store's gc roots beside ``db/`` (``repx cache recover`` restores them).
ROOTS_JSON = "roots.json"

STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"
INPUTS_JSON = "inputs.json"
PARAMS_JSON = "params.json"
EXIT_CODE = "exit_code"
RECORD_JSON = "record.json"
UNITS_JSON = "units.json"
WORKER_ITEM_JSON = "worker_item.json"
WORKER_OUTS_JSON = "worker_outs.json"
MAKE_STAMP = "make.stamp"


def manifest_file(run: str) -> str:
    """The name of the inter-run manifest of ``run`` in a job's ``repx/`` folder."""
    return f"metadata__{run}.json"


class JobFolders:
    """The folders and files of every job of one store, as strings (see the module doc)."""

    __slots__ = ("store_root", "outputs_root")

    def __init__(self, store_root: str | Path) -> None:
        self.store_root = str(store_root)
        self.outputs_root = f"{self.store_root}/{OUTPUTS}"

    def job_dir(self, job_id: str) -> str:
        return f"{self.outputs_root}/{job_id}"

    def out_dir(self, job_id: str) -> str:
        """The job's ``$out``."""
        return f"{self.outputs_root}/{job_id}/{OUT}"

    def meta_dir(self, job_id: str) -> str:
        """The job's ``repx/`` folder."""
        return f"{self.outputs_root}/{job_id}/{META}"

    def meta_file(self, job_id: str, name: str) -> str:
        """A file of the job's ``repx/`` folder (one of the names above)."""
        return f"{self.outputs_root}/{job_id}/{META}/{name}"

    def logs(self, job_id: str) -> tuple[str, str]:
        """(stdout log, stderr log) of the job."""
        meta = self.meta_dir(job_id)
        return f"{meta}/{STDOUT_LOG}", f"{meta}/{STDERR_LOG}"


# ------------------------------------------------------------------------ units.json


def units_manifest(scatter: str, branches: list[tuple[Any, dict[str, str]]]) -> dict[str, Any]:
    """The content of a scatter-gather job's ``units.json``: its scatter's id, and per branch
    its work item and ``{step: unit id}`` (``repx gc`` keeps these units with the job,
    ``repx show`` lists them, ``repx cancel`` cancels them)."""
    return {
        "scatter": scatter,
        "branches": [{"item": item, "steps": steps} for item, steps in branches],
    }


def read_units(meta_dir: Path, job_id: str) -> dict[str, Any] | None:
    """``units.json`` of a scatter-gather job, or None if it has none yet.

    Raises StoreError naming the file when it exists but is not what the engine writes.
    """
    path = meta_dir / UNITS_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"cannot read {path} (units of job {job_id}): {exc}") from exc
    if not isinstance(data, dict):
        raise StoreError(f"{path} (units of job {job_id}) is not a JSON object")
    return data


def unit_ids(units: dict[str, Any]) -> list[str]:
    """The job ids in a ``units.json``: the scatter, then every branch's steps in order."""
    ids: list[str] = []
    scatter = units.get("scatter")
    if isinstance(scatter, str) and scatter:
        ids.append(scatter)
    branches = units.get("branches")
    for branch in branches if isinstance(branches, list) else []:
        steps = branch.get("steps") if isinstance(branch, dict) else None
        if isinstance(steps, dict):
            ids.extend(v for v in steps.values() if isinstance(v, str) and v)
    return ids
