"""The library API behind every command that needs a lab: build or open it, validate, expand.

``open_lab`` is what the CLI, the tests and (later) notebooks call. It either
takes an already built lab directory (``--lab ./result``) or builds ``lab.nix``
first, so ``repx list jobs`` in a lab's folder just works.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from repx.blueprint import load_lab
from repx.errors import LabError
from repx.expand import JobGraph, expand_lab, render_body
from repx.nixbuild import build_lab, find_lab_file, nixpkgs_path
from repx.validate import ScriptCheck, validate_scripts


@dataclass(frozen=True)
class LabOptions:
    """How to find the lab: a built directory, or a lab file to build (and how)."""

    lab_dir: str | None = None
    lab_file: str | None = None
    nixpkgs: str | None = None
    out_link: str | None = "result"
    run_slice: str | None = None
    show_trace: bool = False


def cache_dir() -> Path:
    """Where repx keeps per-user caches (validation results)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "repx"


def is_lab_dir(path: Path) -> bool:
    return (path / "lab.json").is_file() and (path / "runs").is_dir()


def locate_lab(options: LabOptions, cwd: Path | None = None) -> Path:
    """The built lab directory: ``--lab DIR`` as given, else build the lab file now."""
    base = cwd or Path.cwd()
    if options.lab_dir is not None:
        path = (base / options.lab_dir).resolve()
        if not is_lab_dir(path):
            raise LabError(
                f"{path} is not a built repx lab (no lab.json/runs/); "
                "build one with `repx lab build`"
            )
        return path
    lab_file = find_lab_file(options.lab_file, base)
    link = None
    if options.out_link:
        link = Path(options.out_link)
        if not link.is_absolute():
            link = lab_file.parent / link
    return build_lab(
        lab_file,
        out_link=link,
        nixpkgs=nixpkgs_path(options.nixpkgs),
        run_slice=options.run_slice,
        show_trace=options.show_trace,
    )


def script_checks(graph: JobGraph) -> list[ScriptCheck]:
    """One check per distinct script of the lab, its params rendered with the stage defaults."""
    checks: dict[str, ScriptCheck] = {}
    for run in graph.lab.runs:
        for pipeline in run.pipelines:
            for stage in pipeline.stages:
                for exe_name, exe in stage.all_executables():
                    if exe.script in checks:
                        continue
                    checks[exe.script] = ScriptCheck(
                        stage=stage.pname,
                        executable=exe_name,
                        file=stage.file,
                        body=render_body(exe.body, stage.params),
                        path_dirs=[d for d in exe.path.split(":") if d],
                    )
    return list(checks.values())


def check_dynamic_outputs(graph: JobGraph) -> None:
    """Each job's output paths, as its script will complete them, match the lab's values.

    A ``{ params }:`` outputs function reaches the (per-stage) script as a template
    with param tokens; one that branches on a param value instead of interpolating
    it would make the script write elsewhere than repx looks. Say so at build time.
    """
    for job in graph.jobs.values():
        if job.kind != "simple" or "main" not in job.executables:
            continue
        template = job.executables["main"].outputs
        for name, path in job.outputs.items():
            rendered = render_body(template.get(name, path), job.params)
            if rendered != path:
                raise LabError(
                    f"stage '{job.pname}' (file {job.stage_file}): its outputs function gives "
                    f"'{name}' = {path!r} for params {json.dumps(job.params)}, but the script "
                    f"would write {rendered!r}; write output paths by interpolating params "
                    '(e.g. "$out/model-${params.model}.bin"), not by branching on them'
                )


def open_lab(options: LabOptions, *, validate: bool = True, cwd: Path | None = None) -> JobGraph:
    """Build (or open) the lab, validate its scripts, and expand it into the job graph."""
    lab_dir = locate_lab(options, cwd)
    graph = expand_lab(load_lab(lab_dir))
    if validate:
        check_dynamic_outputs(graph)
        validate_scripts(script_checks(graph), cache_dir=cache_dir() / "validated")
    return graph


def jobs_as_json(graph: JobGraph, jobs: list) -> str:
    """``repx list jobs --json``: a list of job objects (the documented fields first)."""
    return json.dumps([job.to_dict() for job in jobs], indent=2, sort_keys=False)
