"""The execution contract, Python side: what a job is started with and where its outputs are.

A stage script is started as ``script OUT INPUTS_JSON PARAMS_JSON`` (:func:`job_argv`; the
header that reads these is ``nix/lib/internal/script.nix``), in the job folder laid out by
:mod:`repx.store.layout`. Every path a job receives is absolute, so a script may ``cd``
anywhere.

* **Output templates** resolve with :func:`resolve_output`, the one rule used by the
  engine (what to check and hash after a run), the no-op index, the store views and the
  analysis API. The rule itself is :func:`repx.lab.outputs.output_relpath` (the lab layer
  checks every template with it when the lab is expanded): a template is ``$out``,
  ``${out}``, ``$out/REL``, ``${out}/REL`` or a relative ``REL``, where ``REL`` stays
  inside the job's ``out/`` (not absolute, no ``..`` above it, no shell expansion);
  anything else is a lab error. So every declared output is a file of the job's own
  folder, and :func:`resolve_output` returns ``out/`` or ``out/REL`` (``REL``
  normalised), never a path elsewhere. The only non-path output is a scatter's
  ``worker__arg``.
* **The job folder** is made by :func:`prepare_job_folder` before each run: real
  directories, never a symlink a previous run left in their place.
* **Environment**: the job gets repx's environment plus :data:`JOB_ID_ENV`
  (``REPX_JOB_ID``), the id of its job folder.
* **Inputs** resolve with :class:`InputResolver`: a producer's output, a file of the lab,
  an inter-run manifest (written by :mod:`repx.engine.manifest`), or a value only known at
  run time.
* **JSON files.** The stage scripts read the inputs and params files with bash itself,
  which is fast only for JSON laid out as one ``"key": value`` per line;
  :func:`write_json_lines` writes exactly that (and it stays valid JSON for ``jq``).
"""

from __future__ import annotations

import json
import operator
import os
import stat
from collections.abc import Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from repx.errors import LabError
from repx.lab.outputs import OUTPUT_RULE, SHAPE_OUTPUT, output_relpath

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


#: The environment variable every job process gets: the id of the job (unit) it runs for,
#: i.e. the name of its folder under ``<store>/outputs/``. Processes the job starts inherit
#: it, which is how the local scheduler recognises them once they outlive the job's main
#: process (:mod:`repx.engine.descendants`); the SLURM wrapper sets it too.
JOB_ID_ENV = "REPX_JOB_ID"


def job_argv(script: str, out_dir: str, inputs_json: str, params_json: str) -> list[str]:
    """The command line of a job: ``$1`` its ``out/``, ``$2`` its inputs JSON, ``$3`` its
    params JSON. The SLURM wrapper spells the same line in bash from this function."""
    return [script, out_dir, inputs_json, params_json]


def resolve_output(template: object, out_dir: str, *, job: str, name: str) -> str:
    """The path that output ``name`` (declared as ``template``) of ``job`` names, for a job
    whose ``out/`` is ``out_dir`` (the rule is in the module doc; a template that breaks
    it is a LabError, which the lab checks already raised when the lab was expanded)."""
    try:
        rel = output_relpath(template)
    except ValueError as exc:
        raise LabError(f"job {job}: output '{name}' = {template!r} {exc}; {OUTPUT_RULE}") \
            from None
    return f"{out_dir}/{rel}" if rel else out_dir


#: Given as ``out_dir`` to :func:`declared_outputs`, it stands for a job's ``out/`` folder:
#: what follows it is the same for every job that shares the outputs dict (a stage's jobs),
#: so the templates are resolved once for all of them, not once per job.
OUT_MARK = "\0"


def outputs_present(outputs_folder: int, job_ids: Iterable[str],
                    tails: Iterable[str]) -> Iterator[bool]:
    """Whether each ``<job id><tail>`` exists under the open outputs folder, lazily.

    ``access(F_OK)`` relative to the folder's descriptor, in one C-level map: the answer of
    ``stat`` (symlinks followed, a folder that cannot be searched fails), the kernel walking
    three path components instead of the whole store path, at about two thirds of the
    system time. The no-op check and the plan ask it of every job, so it is most of both.
    """
    exists = partial(os.access, mode=os.F_OK, dir_fd=outputs_folder)
    return map(exists, map(operator.add, job_ids, tails))


def declared_outputs(job_outputs: dict[str, Any], out_dir: str, job: str) -> dict[str, str]:
    """Every declared output that is a file path, resolved against ``out_dir``.

    A scatter's :data:`SHAPE_OUTPUT` is left out: nothing on disk corresponds to it.
    """
    return {
        name: resolve_output(template, out_dir, job=job, name=name)
        for name, template in job_outputs.items()
        if name != SHAPE_OUTPUT or isinstance(template, str)
    }


def prepare_job_folder(job_dir: str, out_dir: str, meta_dir: str) -> None:
    """Make the job folder, its ``out/`` and its ``repx/`` real directories before a run.

    A previous run of the job may have left any of them as a symlink (``rm -rf "$out";
    ln -s /elsewhere "$out"``) or a file. Such an entry is removed itself — ``unlink``,
    never a walk through it — and a directory made in its place, so nothing repx writes
    next (the inputs and params JSON, the logs) and nothing the script's header empties
    lies outside the job folder. Costs one ``mkdir`` per folder when they are new, one
    ``lstat`` more when they exist.
    """
    for path in (job_dir, out_dir, meta_dir):
        try:
            os.mkdir(path)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                os.unlink(path)
                os.mkdir(path)


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
