"""The files a job receives: its inputs JSON, its params JSON and run manifests.

The stage scripts read these files with bash itself (nix/lib/script.nix), which is fast
only for JSON laid out as one ``"key": value`` per line; :func:`write_json_lines` writes
exactly that (and it stays valid JSON for ``jq``). Every path a job receives is absolute,
so a script may ``cd`` anywhere.
"""

from __future__ import annotations

import json
import os
from typing import Any

from repx.errors import LabError
from repx.expand import Job

_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_lines_text(mapping: dict[str, Any]) -> str:
    """``mapping`` as a JSON object with one ``"key": value`` member per line."""
    if not mapping:
        return "{}\n"
    body = ",\n".join(f" {_ENCODE(str(k))}: {_ENCODE(v)}" for k, v in mapping.items())
    return "{\n" + body + "\n}\n"


def write_json_lines(path: str, mapping: dict[str, Any]) -> None:
    """Write :func:`json_lines_text` of ``mapping`` to ``path`` (replacing it)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json_lines_text(mapping))


def write_json(path: str, value: Any) -> None:
    """Write ``value`` as indented JSON (manifests and lists, read with jq)."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, ensure_ascii=False)
        handle.write("\n")


def output_path(template: object, out_dir: str, *, job: str, name: str) -> str:
    """The absolute path of an output declared as ``$out/...`` for a job whose ``$out`` is
    ``out_dir``."""
    if not isinstance(template, str):
        raise LabError(f"job {job}: output '{name}' is not a path template: {template!r}")
    if template == "$out":
        return out_dir
    if template.startswith("$out/"):
        return out_dir + template[4:]
    if template.startswith("${out}/"):
        return out_dir + template[6:]
    if os.path.isabs(template):
        return template
    return os.path.join(out_dir, template)


def declared_outputs(job_outputs: dict[str, Any], out_dir: str, job: str) -> dict[str, str]:
    """Every declared output that is a file path, resolved against ``out_dir``.

    Non-path outputs (a scatter's ``worker__arg`` shape) are left out: nothing on disk
    corresponds to them.
    """
    return {
        name: output_path(template, out_dir, job=job, name=name)
        for name, template in job_outputs.items()
        if isinstance(template, str)
    }


class InputResolver:
    """Turns a job's input sources into absolute paths in one store.

    ``out_dir_of`` maps a job id to its ``out`` directory (``Store.out_dir`` as a string,
    inlined because this runs once per input of every job in a build).
    """

    def __init__(self, jobs: dict[str, Job], outputs_root: str, store_root: str) -> None:
        self.jobs = jobs
        self.outputs_root = outputs_root
        self.store_root = store_root

    def out_dir(self, job_id: str) -> str:
        return f"{self.outputs_root}/{job_id}/out"

    def meta_dir(self, job_id: str) -> str:
        return f"{self.outputs_root}/{job_id}/repx"

    def resolve(
        self, job: Job, manifest_writer: Any = None, runtime: dict[str, str] | None = None
    ) -> dict[str, str]:
        """``{input name: absolute path}`` for ``job``.

        ``runtime`` supplies the values only known while the job runs (``worker__item``,
        ``worker__outs``); a scatter-gather job's static inputs leave them out.
        ``manifest_writer(run, job_ids) -> path`` writes an inter-run manifest.
        """
        resolved: dict[str, str] = {}
        for name, source in job.inputs.items():
            if "job" in source:
                producer = self.jobs[source["job"]]
                template = producer.outputs.get(source["output"])
                if template is None:
                    raise LabError(
                        f"job {job.id}: input '{name}' maps output '{source['output']}' of "
                        f"{producer.id}, which declares {sorted(producer.outputs)}"
                    )
                resolved[name] = output_path(
                    template, self.out_dir(producer.id), job=producer.id, name=source["output"]
                )
            elif "file" in source:
                resolved[name] = source["file"]
            elif "run_manifest" in source:
                if manifest_writer is None:
                    raise LabError(f"job {job.id}: input '{name}' needs a run manifest writer")
                resolved[name] = manifest_writer(source["run_manifest"], source["jobs"])
            elif "runtime" in source:
                kind = source["runtime"]
                if kind == "store__base":
                    resolved[name] = self.store_root
                elif runtime is not None and kind in runtime:
                    resolved[name] = runtime[kind]
            else:
                raise LabError(f"job {job.id}: input '{name}' has an unknown source {source!r}")
        return resolved

    def manifest_entries(
        self, job_ids: list[str], statuses: dict[str, str]
    ) -> list[dict[str, Any]]:
        """The inter-run manifest of a run: one entry per job (id, run, stage, pname,
        params, status, outputs by name → absolute path)."""
        entries = []
        for job_id in job_ids:
            job = self.jobs[job_id]
            out = self.out_dir(job_id)
            entries.append({
                "id": job_id,
                "run": job.run,
                "stage": job.stage,
                "pname": job.pname,
                "params": job.params,
                "status": statuses.get(job_id, "not run"),
                "outputs": declared_outputs(job.outputs, out, job_id),
            })
        return entries
