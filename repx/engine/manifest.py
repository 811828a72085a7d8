"""The run manifest: what a first stage of a dependent run reads as ``metadata__<run>``.

One JSON object per run, in the shape of the original RepX's run metadata
(``revision/metadata-<run>.json``), so analysis code written for it runs unchanged
(``repx_py.Experiment.from_run_metadata``, or a script reading
``jobs[id].executables.main.outputs``), plus what repx's own readers use::

    {"type": "run", "name": "simulation", "gitHash": "…", "dependencies": {"other": "hard"},
     "jobs": {
     "<id>": {"name": "<pname>-<version>", "stage_type": "simple", "params": {…},
              "executables": {"main": {"inputs": [{"job_id": "<producer>", …}],
                                       "outputs": {"summary": "$out/summary.json"}}},
              "resource_hints": {"mem": "1G"},
              "id": "<id>", "run": "simulation", "stage": "summarize", "pname": "summarize",
              "outputs": {"summary": "/abs/store/outputs/<id>/out/summary.json"},
              "status": "succeeded"},
     …}}

Rules:

* The original's keys: ``name`` of a job is ``<pname>-<version>``; ``stage_type`` is
  ``simple`` or ``scatter-gather``; ``executables`` has ``main`` for a simple stage, and
  ``scatter`` (its input mappings) plus ``gather`` (its outputs) for a scatter-gather stage,
  as the original's readers look them up; output templates are spelled ``$out/<path>``
  whatever the stage wrote (``${out}/x``, ``x``), because the original's readers strip
  exactly ``$out/``. Input mappings are the original's: ``{"job_id", "source_output",
  "target_input", "type": "intra-pipeline"}`` for a producer's output,
  ``{"type": "inter-run", "source_run", "dependency_type", "target_input"}`` for a manifest,
  ``{"type": "global", "source_value": "store_base", "target_input"}`` for the store; they
  give a job's upstream jobs, so effective params need nothing but the manifest.
  ``resource_hints`` (when the job has any) are the hints the job is scheduled with.
  ``dependencies`` maps each run this run depends on to ``hard`` or ``soft``.
* repx's keys: ``id``, ``run`` (the run of this manifest), ``stage`` (the pipeline key),
  ``pname``, ``outputs`` (absolute paths of the file outputs) and ``status`` (the job's
  outcome when the manifest was written: ``succeeded``, ``failed``, ``blocked``,
  ``cancelled``, ``not started``).
* **Cheap for big runs.** A manifest is written for every job that reads it, each time it
  starts, and a run may have tens of thousands of jobs. Everything but the statuses is the
  same in every copy, so the text of each job is made once per build and run
  (:class:`ManifestWriter`), and a write joins those texts with the statuses. One job per
  line keeps the file readable with ``grep`` and ``less``; ``jq`` reads it as any JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from repx.engine.contract import declared_outputs, resolve_output

if TYPE_CHECKING:
    from repx.lab.graph import Job, JobGraph
    from repx.store.layout import JobFolders

__all__ = ["ManifestWriter", "job_metadata", "out_template", "run_header"]

_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

#: Outputs a scatter-gather job exposes, and the executable holding its input mappings, under
#: the names the original's readers look up.
_SG_OUTPUTS_EXE = "gather"
_SG_INPUTS_EXE = "scatter"


def out_template(path: str, out_dir: str) -> str:
    """``path`` (an absolute output path of a job whose ``out/`` is ``out_dir``) as the
    original's template: ``$out/<relative path>`` (``$out`` for the folder itself); a path
    outside ``out_dir`` is left absolute."""
    if path == out_dir:
        return "$out"
    if path.startswith(out_dir + "/"):
        return "$out" + path[len(out_dir):]
    return path


def _input_mappings(job: Job) -> list[dict[str, Any]]:
    """The original's input mappings of ``job`` (lab files and runtime values have none)."""
    dependency_types = dict(job.inter_run)
    mappings: list[dict[str, Any]] = []
    for name, source in job.inputs.items():
        if "job" in source:
            mappings.append({"job_id": source["job"], "source_output": source["output"],
                             "target_input": name, "type": "intra-pipeline"})
        elif "run_manifest" in source:
            run = source["run_manifest"]
            mappings.append({"type": "inter-run", "source_run": run,
                             "dependency_type": dependency_types.get(run, "hard"),
                             "target_input": name})
        elif source.get("runtime") == "store__base":
            mappings.append({"type": "global", "source_value": "store_base",
                             "target_input": name})
    return mappings


def job_metadata(job: Job, out_dir: str) -> dict[str, Any]:
    """The original's metadata of ``job`` (``name``, ``stage_type``, ``params``,
    ``executables``, ``resource_hints``), for a job whose ``out/`` is ``out_dir``."""
    outputs = {
        name: out_template(resolve_output(template, out_dir, job=job.id, name=name), out_dir)
        for name, template in job.outputs.items() if isinstance(template, str)
    }
    inputs = _input_mappings(job)
    if job.kind == "scatter-gather":
        executables = {_SG_INPUTS_EXE: {"inputs": inputs}, _SG_OUTPUTS_EXE: {"outputs": outputs}}
    else:
        executables = {"main": {"inputs": inputs, "outputs": outputs}}
    entry: dict[str, Any] = {
        "name": f"{job.pname}-{job.version}",
        "stage_type": job.kind,
        "params": job.params,
        "executables": executables,
    }
    if job.resources:
        entry["resource_hints"] = dict(job.resources)
    return entry


def run_header(graph: JobGraph, run: str) -> dict[str, Any]:
    """The run-level keys of ``run``'s manifest (everything but ``jobs``)."""
    return {
        "type": "run",
        "name": run,
        "gitHash": graph.lab.git_hash,
        "dependencies": {other: kind for other, kind in graph.runs[run].dependencies},
    }


class ManifestWriter:
    """Writes the manifests of one build; the text of each run's jobs is made once."""

    def __init__(self, graph: JobGraph, folders: JobFolders) -> None:
        self.graph = graph
        self.folders = folders
        #: run -> (its job ids, the header text, each job's text up to its status)
        self._texts: dict[str, tuple[list[str], str, list[str]]] = {}

    def _static(self, run: str, job_ids: list[str]) -> tuple[str, list[str]]:
        cached = self._texts.get(run)
        if cached is not None and (cached[0] is job_ids or cached[0] == job_ids):
            return cached[1], cached[2]
        header = _ENCODE(run_header(self.graph, run))[:-1] + ',"jobs":{\n'
        texts = []
        for job_id in job_ids:
            job = self.graph.jobs[job_id]
            out_dir = self.folders.out_dir(job_id)
            entry = job_metadata(job, out_dir)
            entry.update({
                "id": job_id, "run": run, "stage": job.stage, "pname": job.pname,
                "outputs": declared_outputs(job.outputs, out_dir, job_id),
            })
            # The entry's text without its closing brace: the status comes last.
            texts.append(f"{_ENCODE(job_id)}:{_ENCODE(entry)[:-1]},\"status\":")
        self._texts[run] = (job_ids, header, texts)
        return header, texts

    def text(self, run: str, job_ids: list[str], statuses: Mapping[str, str]) -> str:
        """The manifest of ``run`` (jobs ``job_ids``, each with its status in
        ``statuses``; a job not there is ``not started``)."""
        header, texts = self._static(run, job_ids)
        body = ",\n".join(
            f"{text}{_ENCODE(str(statuses.get(job_id, 'not started')))}}}"
            for job_id, text in zip(job_ids, texts, strict=True)
        )
        return f"{header}{body}\n}}}}\n"

    def write(self, path: str, run: str, job_ids: list[str],
              statuses: Mapping[str, str]) -> None:
        """Write :meth:`text` to ``path`` (replacing it)."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.text(run, job_ids, statuses))
