"""The execution contract, Python side: what a job is started with and where its outputs are.

A stage script is started as ``script OUT INPUTS_JSON PARAMS_JSON`` (:func:`job_argv`; the
header that reads these is ``nix/lib/internal/script.nix``), in the job folder laid out by
:mod:`repx.store.layout`. Every path a job receives is absolute, so a script may ``cd``
anywhere.

* **Output templates** resolve with :func:`resolve_output`, the one rule used by the
  engine (what to check and hash after a run), the no-op index, the store views and the
  analysis API: ``$out`` and ``${out}`` stand for the job's ``out/`` folder; a relative
  template is relative to it; an absolute template is taken as written.
* **Inputs** resolve with :class:`InputResolver`: a producer's output, a file of the lab,
  an inter-run manifest, or a value only known at run time.
* **JSON files.** The stage scripts read the inputs and params files with bash itself,
  which is fast only for JSON laid out as one ``"key": value`` per line;
  :func:`write_json_lines` writes exactly that (and it stays valid JSON for ``jq``).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from repx.errors import LabError

if TYPE_CHECKING:
    from repx.lab.blueprint import Executable
    from repx.lab.graph import Job
    from repx.store.layout import JobFolders

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


def job_argv(script: str, out_dir: str, inputs_json: str, params_json: str) -> list[str]:
    """The command line of a job: ``$1`` its ``out/``, ``$2`` its inputs JSON, ``$3`` its
    params JSON. The SLURM wrapper spells the same line in bash from this function."""
    return [script, out_dir, inputs_json, params_json]


def resolve_output(template: object, out_dir: str, *, job: str, name: str) -> str:
    """The path that output ``name`` (declared as ``template``) of ``job`` names, for a job
    whose ``out/`` is ``out_dir`` (the rule is in the module doc)."""
    if not isinstance(template, str):
        raise LabError(f"job {job}: output '{name}' is not a path template: {template!r}")
    for var in ("$out", "${out}"):
        if template == var:
            return out_dir
        if template.startswith(var + "/"):
            return out_dir + template[len(var):]
    if os.path.isabs(template):
        return template
    return os.path.join(out_dir, template)


def declared_outputs(job_outputs: dict[str, Any], out_dir: str, job: str) -> dict[str, str]:
    """Every declared output that is a file path, resolved against ``out_dir``.

    Non-path outputs (a scatter's ``worker__arg`` shape) are left out: nothing on disk
    corresponds to them.
    """
    return {
        name: resolve_output(template, out_dir, job=job, name=name)
        for name, template in job_outputs.items()
        if isinstance(template, str)
    }


class InputResolver:
    """Turns a job's input sources into absolute paths in one store."""

    def __init__(self, jobs: dict[str, Job], folders: JobFolders) -> None:
        self.jobs = jobs
        self.folders = folders

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
                resolved[name] = resolve_output(template, self.folders.out_dir(producer.id),
                                                job=producer.id, name=source["output"])
            elif "file" in source:
                resolved[name] = source["file"]
            elif "run_manifest" in source:
                if manifest_writer is None:
                    raise LabError(f"job {job.id}: input '{name}' needs a run manifest writer")
                resolved[name] = manifest_writer(source["run_manifest"], source["jobs"])
            elif "runtime" in source:
                kind = source["runtime"]
                if kind == "store__base":
                    resolved[name] = self.folders.store_root
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
            out = self.folders.out_dir(job_id)
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


def step_inputs(
    job: Job,
    exe: Executable,
    *,
    static_inputs: dict[str, str],
    item_path: str,
    dep_out_dirs: dict[str, str],
) -> dict[str, str]:
    """The inputs of one step unit: its work item, its dependency steps' outputs, and the
    stage's own inputs (or the step's defaults) for everything else."""

    resolved: dict[str, str] = {}
    steps = job.stage_def.steps
    mapped: dict[str, str] = {}
    for dep in exe.deps:
        source_exe = steps[dep.stage]
        for mapping in dep.mappings:
            template = source_exe.outputs.get(mapping.source)
            if template is None:
                raise LabError(
                    f"stage '{job.pname}' (file {job.stage_file}): step '{exe.step}' maps "
                    f"output '{mapping.source}' of step '{dep.stage}', which declares "
                    f"{sorted(source_exe.outputs)}"
                )
            mapped[mapping.target] = resolve_output(
                template, dep_out_dirs[dep.stage], job=job.id, name=mapping.source
            )
    for name, declared in exe.inputs.items():
        if name == "worker__item":
            resolved[name] = item_path
        elif name in mapped:
            resolved[name] = mapped[name]
        elif name in static_inputs:
            resolved[name] = static_inputs[name]
        elif declared.file:
            resolved[name] = declared.file
        elif declared.default not in ("", None):
            resolved[name] = str(declared.default)
        else:
            raise LabError(
                f"stage '{job.pname}' (file {job.stage_file}): input '{name}' of step "
                f"'{exe.step}' is not provided by another step, by the stage's inputs "
                f"({', '.join(sorted(static_inputs)) or 'none'}) or by a default"
            )
    # Inputs mapped by a dependency but not declared still reach the step.
    for name, path in mapped.items():
        resolved.setdefault(name, path)
    return resolved
