"""Load a built lab directory (``lab.json`` + ``runs/<name>.json``) into plain dataclasses.

The lab directory is written by the Nix side (``nix/lib``) and is the only thing Python
reads from a build; its format is the contract in ``docs/blueprint.md``. This module only
parses and checks the *shape* of that JSON: everything that depends on parameter
combinations (effective params, dot-notation resolution, input defaults, resource merging,
identities) is done by :mod:`repx.lab.expand`, because it is O(jobs) and Nix is slow at it.

Loading must stay cheap (it runs on every CLI call), so it is plain :func:`json.load` and
dataclass construction; the dataclasses are frozen (their dict/list members are shared
and must be treated as read-only). Shape errors raise :class:`~repx.errors.LabError`
naming the file and the JSON location, because a malformed blueprint means the lab was
built by another repx version or by hand and the user needs to know which file to rebuild.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repx.errors import LabError

#: The only lab format this version reads (``lab.json`` ``format`` field).
LAB_FORMAT = "repx-lab/1"

HASH_MODES = ("pure", "params-only")
STAGE_KINDS = ("simple", "scatter-gather")
DEPENDENCY_TYPES = ("hard", "soft")


@dataclass(frozen=True, slots=True)
class Mapping:
    """One wire: output ``source`` of the producer feeds input ``target`` of the consumer."""

    source: str
    target: str


@dataclass(frozen=True, slots=True)
class Dep:
    """A dependency of a stage on another stage of the same pipeline (or of a step on a step).

    ``stage`` is the producer's pipeline key; for scatter-gather step deps it holds the
    producing step's name. ``mappings`` are in the order the Nix side wrote them and are
    part of the consumer's identity.
    """

    stage: str
    explicit: bool
    mappings: tuple[Mapping, ...]


@dataclass(frozen=True, slots=True)
class InterRunDep:
    """A first stage of a dependent run reads run ``run``'s manifest as input ``target``."""

    run: str
    type: str
    target: str


@dataclass(frozen=True, slots=True)
class Input:
    """A declared input: its declared ``default`` and the lab copy of a relative default.

    ``file`` is set by Nix only when the default is a relative path that exists beside the
    stage file (it was copied into the store, so the job identity covers its content).
    """

    default: Any
    file: str | None


@dataclass(frozen=True, slots=True)
class Executable:
    """One script of a stage: ``main``, or ``scatter`` / ``step-<name>`` / ``gather``."""

    name: str
    script: str
    body: str
    run_dependencies: tuple[str, ...]
    inputs: dict[str, Input]
    outputs: dict[str, Any]
    resources: dict[str, Any] | None
    #: The step name for a scatter-gather step, else None.
    step: str | None = None
    #: Step-to-step dependencies (scatter-gather steps only).
    deps: tuple[Dep, ...] = ()
    #: The script's PATH (runDependencies' bin dirs plus the core tools), ``:``-separated.
    path: str = ""


@dataclass(frozen=True, slots=True)
class DynamicRow:
    """The resolved dynamic attributes for one distinct combination of a stage's params.

    Attributes the stage does not compute dynamically are filled in from the static
    values at load time, so a row is always complete.
    """

    params: dict[str, Any]
    pname: str
    inputs: dict[str, Input]
    outputs: dict[str, Any]
    resources: dict[str, Any] | None
    #: The stage's executables for these params: a ``run`` whose text depends on param
    #: values (beyond their bash expansions) has a script per combination.
    executables: dict[str, Executable]


@dataclass(frozen=True, slots=True)
class Dynamic:
    """Which attributes are ``{ params }:`` functions and their per-combination table."""

    attrs: tuple[str, ...]
    table: tuple[DynamicRow, ...]


@dataclass(frozen=True, slots=True)
class ScatterGather:
    """How a scatter-gather stage's branches run (written by Nix beside the executables)."""

    #: Step names in dependency order.
    step_order: tuple[str, ...]
    #: The step whose single output each branch contributes to ``worker__outs``.
    sink: str
    sink_output: str
    #: The scatter's ``work__items`` output template.
    work_items: str


@dataclass(frozen=True, slots=True)
class Stage:
    """A stage as it appears in one pipeline (static values; see :class:`Dynamic`)."""

    key: str
    pname: str
    version: str
    file: str
    kind: str
    params: dict[str, Any]
    inputs: dict[str, Input]
    outputs: dict[str, Any]
    resources: dict[str, Any] | None
    dynamic: Dynamic | None
    deps: tuple[Dep, ...]
    inter_run: tuple[InterRunDep, ...]
    #: ``{"main": …}`` for a simple stage; ``scatter``, ``step-<name>`` (sorted by name),
    #: ``gather`` for a scatter-gather stage. This order is the identity order.
    executables: dict[str, Executable]
    #: Branch layout of a scatter-gather stage (None for a simple stage).
    scatter_gather: ScatterGather | None = None

    @property
    def steps(self) -> dict[str, Executable]:
        """Scatter-gather steps by step name (empty for a simple stage)."""
        return {e.step: e for e in self.executables.values() if e.step is not None}

    def all_executables(self) -> list[tuple[str, Executable]]:
        """(name, executable) pairs in identity order."""
        return list(self.executables.items())


@dataclass(frozen=True, slots=True)
class Pipeline:
    file: str
    stages: tuple[Stage, ...]


@dataclass(frozen=True, slots=True)
class Axis:
    """A plain (non-zip) run param. ``stage`` is set for a dot-notation key."""

    key: str
    stage: str | None
    param: str
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ZipMember:
    key: str
    stage: str | None
    param: str


@dataclass(frozen=True, slots=True)
class Zip:
    """A ``utils.zip`` group: ``rows[i][j]`` is the value of ``members[j]`` in row ``i``."""

    label: str
    members: tuple[ZipMember, ...]
    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True, slots=True)
class RunDependency:
    run: str
    type: str


@dataclass(frozen=True, slots=True)
class Run:
    name: str
    key: str
    #: The user's run definition file (for error messages).
    file: str
    hash_mode: str
    dependencies: tuple[RunDependency, ...]
    axes: tuple[Axis, ...]
    zips: tuple[Zip, ...]
    params_dependencies: tuple[str, ...]
    pipelines: tuple[Pipeline, ...]
    #: The blueprint file this run was loaded from.
    path: Path


@dataclass(frozen=True, slots=True)
class Lab:
    path: Path
    format: str
    git_hash: str
    lab_version: str
    lab_file: str
    container_mode: str
    run_container_mode: str
    #: Run names in the manifest's (topological) order.
    run_names: tuple[str, ...]
    groups: dict[str, tuple[str, ...]]
    #: The runs in ``run_names`` order.
    runs: tuple[Run, ...]

    def run(self, name: str) -> Run:
        """The run called ``name`` (KeyError if the lab has none)."""
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(name)


# --------------------------------------------------------------------------- parsing helpers


class _Ctx:
    """Where we are in which file, so every shape error can say it."""

    __slots__ = ("file",)

    def __init__(self, file: Path) -> None:
        self.file = file

    def fail(self, where: str, problem: str) -> LabError:
        return LabError(
            f"{self.file}: {where}: {problem} (the lab was not written by this version of "
            "repx's Nix library; rebuild it with `repx lab build`)"
        )

    def get(self, obj: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
        if key not in obj:
            raise self.fail(where, f"missing field '{key}'")
        value = obj[key]
        if not isinstance(value, kind):
            raise self.fail(where, f"field '{key}' has the wrong type ({type(value).__name__})")
        return value

    def opt(
        self, obj: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...], default: Any
    ) -> Any:
        value = obj.get(key, default)
        if value is None:
            return default
        if not isinstance(value, kind):
            raise self.fail(where, f"field '{key}' has the wrong type ({type(value).__name__})")
        return value


def _read_json(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise LabError(f"{path}: cannot read lab file: {exc}") from exc


def _mappings(ctx: _Ctx, raw: list[Any], where: str) -> tuple[Mapping, ...]:
    out = []
    for i, m in enumerate(raw):
        w = f"{where}.mappings[{i}]"
        if not isinstance(m, dict):
            raise ctx.fail(w, "expected an object")
        out.append(Mapping(ctx.get(m, "source", w, str), ctx.get(m, "target", w, str)))
    return tuple(out)


def _deps(ctx: _Ctx, raw: list[Any], where: str, name_field: str) -> tuple[Dep, ...]:
    out = []
    for i, d in enumerate(raw):
        w = f"{where}.deps[{i}]"
        if not isinstance(d, dict):
            raise ctx.fail(w, "expected an object")
        out.append(
            Dep(
                stage=ctx.get(d, name_field, w, str),
                explicit=bool(d.get("explicit", False)),
                mappings=_mappings(ctx, ctx.opt(d, "mappings", w, list, []), w),
            )
        )
    return tuple(out)


def _inputs(ctx: _Ctx, raw: Any, where: str) -> dict[str, Input]:
    """Parse ``{name: {"default": …, "file": …}}``; a bare value is taken as the default.

    The bare form is accepted because executables' ``inputs`` are not pinned down by the
    contract and a plain ``{name: default}`` map is the natural Nix rendering.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ctx.fail(where, "field 'inputs' must be an object")
    out: dict[str, Input] = {}
    for name, spec in raw.items():
        if isinstance(spec, dict) and "default" in spec:
            file = spec.get("file")
            if file is not None and not isinstance(file, str):
                raise ctx.fail(f"{where}.inputs.{name}", "field 'file' must be a string or null")
            out[name] = Input(spec["default"], file)
        else:
            out[name] = Input(spec, None)
    return out


def _resources(ctx: _Ctx, raw: Any, where: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ctx.fail(where, "field 'resources' must be an object or null")
    return raw or None


def _outputs(ctx: _Ctx, raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ctx.fail(where, "field 'outputs' must be an object")
    return raw


def _executable(ctx: _Ctx, raw: Any, where: str, name: str, step: str | None) -> Executable:
    if not isinstance(raw, dict):
        raise ctx.fail(where, "expected an executable object")
    return Executable(
        name=name,
        script=ctx.get(raw, "script", where, str),
        body=ctx.opt(raw, "body", where, str, ""),
        run_dependencies=tuple(ctx.opt(raw, "run_dependencies", where, list, [])),
        inputs=_inputs(ctx, raw.get("inputs"), where),
        outputs=_outputs(ctx, raw.get("outputs"), where),
        resources=_resources(ctx, raw.get("resources"), where),
        step=step,
        deps=_deps(ctx, ctx.opt(raw, "deps", where, list, []), where, "step")
        if step is not None
        else (),
        path=ctx.opt(raw, "path", where, str, ""),
    )


def _executables(ctx: _Ctx, raw: Any, where: str, kind: str) -> dict[str, Executable]:
    w = f"{where}.executables"
    if not isinstance(raw, dict):
        raise ctx.fail(where, "field 'executables' must be an object")
    if kind == "simple":
        return {"main": _executable(ctx, ctx.get(raw, "main", w, dict), f"{w}.main", "main", None)}
    exes = {"scatter": _executable(ctx, ctx.get(raw, "scatter", w, dict), f"{w}.scatter",
                                   "scatter", None)}
    steps = ctx.get(raw, "steps", w, dict)
    if not steps:
        raise ctx.fail(w, "a scatter-gather stage needs at least one step")
    for step in sorted(steps):
        exes[f"step-{step}"] = _executable(ctx, steps[step], f"{w}.steps.{step}",
                                           f"step-{step}", step)
    exes["gather"] = _executable(ctx, ctx.get(raw, "gather", w, dict), f"{w}.gather",
                                 "gather", None)
    return exes


def _variant(ctx: _Ctx, row: dict[str, Any], where: str,
             variants: list[dict[str, Executable]]) -> dict[str, Executable]:
    index = ctx.get(row, "executables", where, int)
    if not 0 <= index < len(variants):
        raise ctx.fail(where, f"executables index {index} is not one of the "
                              f"{len(variants)} variants")
    return variants[index]


def _dynamic(
    ctx: _Ctx,
    raw: Any,
    where: str,
    pname: str,
    inputs: dict[str, Input],
    outputs: dict[str, Any],
    resources: dict[str, Any] | None,
    kind: str,
    executables: dict[str, Executable],
) -> Dynamic | None:
    if raw is None:
        return None
    w = f"{where}.dynamic"
    if not isinstance(raw, dict):
        raise ctx.fail(where, "field 'dynamic' must be an object or null")
    attrs = tuple(ctx.get(raw, "attrs", w, list))
    unknown = [a for a in attrs
               if a not in ("pname", "inputs", "outputs", "resources", "executables")]
    if unknown:
        raise ctx.fail(w, f"unknown dynamic attributes {unknown}")
    # A row's "executables" is an index into "variants" (the distinct executable sets).
    variants = [
        _executables(ctx, v, f"{w}.variants[{j}]", kind)
        for j, v in enumerate(ctx.get(raw, "variants", w, list) if "executables" in attrs else [])
    ]
    rows = []
    for i, row in enumerate(ctx.get(raw, "table", w, list)):
        rw = f"{w}.table[{i}]"
        if not isinstance(row, dict):
            raise ctx.fail(rw, "expected an object")
        rows.append(
            DynamicRow(
                params=ctx.get(row, "params", rw, dict),
                pname=ctx.get(row, "pname", rw, str) if "pname" in attrs else pname,
                inputs=_inputs(ctx, row.get("inputs"), rw) if "inputs" in attrs else inputs,
                outputs=_outputs(ctx, row.get("outputs"), rw) if "outputs" in attrs else outputs,
                resources=_resources(ctx, row.get("resources"), rw)
                if "resources" in attrs
                else resources,
                executables=_variant(ctx, row, rw, variants) if "executables" in attrs
                else executables,
            )
        )
    return Dynamic(attrs, tuple(rows))


def _stage(ctx: _Ctx, raw: Any, where: str) -> Stage:
    if not isinstance(raw, dict):
        raise ctx.fail(where, "expected a stage object")
    kind = ctx.get(raw, "kind", where, str)
    if kind not in STAGE_KINDS:
        raise ctx.fail(where, f"unknown stage kind '{kind}' (expected one of {STAGE_KINDS})")
    pname = ctx.get(raw, "pname", where, str)
    inputs = _inputs(ctx, raw.get("inputs"), where)
    outputs = _outputs(ctx, raw.get("outputs"), where)
    resources = _resources(ctx, raw.get("resources"), where)
    executables = _executables(ctx, raw.get("executables"), where, kind)
    inter_run = []
    for i, ir in enumerate(ctx.opt(raw, "inter_run", where, list, [])):
        iw = f"{where}.inter_run[{i}]"
        if not isinstance(ir, dict):
            raise ctx.fail(iw, "expected an object")
        inter_run.append(
            InterRunDep(
                run=ctx.get(ir, "run", iw, str),
                type=ctx.get(ir, "type", iw, str),
                target=ctx.get(ir, "target", iw, str),
            )
        )
    layout = None
    sg = ctx.opt(raw, "scatter_gather", where, dict, None)
    if kind == "scatter-gather" and sg is not None:
        lw = f"{where}.scatter_gather"
        layout = ScatterGather(
            step_order=tuple(ctx.get(sg, "step_order", lw, list)),
            sink=ctx.get(sg, "sink", lw, str),
            sink_output=ctx.get(sg, "sink_output", lw, str),
            work_items=ctx.get(sg, "work_items", lw, str),
        )
    return Stage(
        key=ctx.get(raw, "key", where, str),
        pname=pname,
        version=ctx.get(raw, "version", where, str),
        file=ctx.get(raw, "file", where, str),
        kind=kind,
        params=ctx.opt(raw, "params", where, dict, {}),
        inputs=inputs,
        outputs=outputs,
        resources=resources,
        dynamic=_dynamic(ctx, raw.get("dynamic"), where, pname, inputs, outputs, resources,
                         kind, executables),
        deps=_deps(ctx, ctx.opt(raw, "deps", where, list, []), where, "stage"),
        inter_run=tuple(inter_run),
        executables=executables,
        scatter_gather=layout,
    )


def _run(path: Path, expected_name: str) -> Run:
    ctx = _Ctx(path)
    try:
        raw = _read_json(path)
    except FileNotFoundError:
        raise LabError(
            f"{path}: run '{expected_name}' is listed in lab.json but its blueprint is missing"
        ) from None
    if not isinstance(raw, dict):
        raise ctx.fail("top level", "expected an object")
    name = ctx.get(raw, "name", "top level", str)
    if name != expected_name:
        raise ctx.fail(
            "top level", f"run name '{name}' does not match lab.json ('{expected_name}')"
        )
    hash_mode = ctx.opt(raw, "hash_mode", "top level", str, "pure")
    if hash_mode not in HASH_MODES:
        raise LabError(
            f"run '{name}' (file {raw.get('file', path)}): unknown hashMode '{hash_mode}'; "
            f"valid modes are {', '.join(HASH_MODES)}"
        )
    deps = []
    for i, d in enumerate(ctx.opt(raw, "dependencies", "top level", list, [])):
        w = f"dependencies[{i}]"
        if not isinstance(d, dict):
            raise ctx.fail(w, "expected an object")
        dtype = ctx.get(d, "type", w, str)
        if dtype not in DEPENDENCY_TYPES:
            raise LabError(
                f"run '{name}' (file {raw.get('file', path)}): dependency on run "
                f"'{d.get('run')}' has unknown type '{dtype}'; use \"hard\" or \"soft\""
            )
        deps.append(RunDependency(ctx.get(d, "run", w, str), dtype))
    axes = []
    for i, a in enumerate(ctx.opt(raw, "axes", "top level", list, [])):
        w = f"axes[{i}]"
        if not isinstance(a, dict):
            raise ctx.fail(w, "expected an object")
        axes.append(
            Axis(
                key=ctx.get(a, "key", w, str),
                stage=ctx.opt(a, "stage", w, str, None),
                param=ctx.get(a, "param", w, str),
                values=tuple(ctx.get(a, "values", w, list)),
            )
        )
    zips = []
    for i, z in enumerate(ctx.opt(raw, "zips", "top level", list, [])):
        w = f"zips[{i}]"
        if not isinstance(z, dict):
            raise ctx.fail(w, "expected an object")
        members = []
        for j, m in enumerate(ctx.get(z, "members", w, list)):
            mw = f"{w}.members[{j}]"
            if not isinstance(m, dict):
                raise ctx.fail(mw, "expected an object")
            members.append(
                ZipMember(
                    key=ctx.get(m, "key", mw, str),
                    stage=ctx.opt(m, "stage", mw, str, None),
                    param=ctx.get(m, "param", mw, str),
                )
            )
        rows = []
        for j, r in enumerate(ctx.get(z, "rows", w, list)):
            if not isinstance(r, list) or len(r) != len(members):
                raise ctx.fail(f"{w}.rows[{j}]", f"expected a list of {len(members)} values")
            rows.append(tuple(r))
        zips.append(Zip(ctx.get(z, "label", w, str), tuple(members), tuple(rows)))
    pipelines = []
    for i, p in enumerate(ctx.get(raw, "pipelines", "top level", list)):
        w = f"pipelines[{i}]"
        if not isinstance(p, dict):
            raise ctx.fail(w, "expected an object")
        stages = tuple(
            _stage(ctx, s, f"{w}.stages[{j}]")
            for j, s in enumerate(ctx.get(p, "stages", w, list))
        )
        pipelines.append(Pipeline(ctx.get(p, "file", w, str), stages))
    return Run(
        name=name,
        key=ctx.opt(raw, "key", "top level", str, name),
        file=ctx.opt(raw, "file", "top level", str, str(path)),
        hash_mode=hash_mode,
        dependencies=tuple(deps),
        axes=tuple(axes),
        zips=tuple(zips),
        params_dependencies=tuple(ctx.opt(raw, "params_dependencies", "top level", list, [])),
        pipelines=tuple(pipelines),
        path=path,
    )


def load_lab(lab_dir: str | Path) -> Lab:
    """Load the lab directory ``lab_dir`` (or the ``lab.json`` inside it).

    Raises LabError when the path is not a lab, its format is unknown, or a file is
    malformed; the message names the path so the user knows what to rebuild.
    """
    path = Path(lab_dir)
    if path.name == "lab.json" and path.is_file():
        path = path.parent
    manifest = path / "lab.json"
    try:
        raw = _read_json(manifest)
    except FileNotFoundError:
        if not path.exists():
            raise LabError(
                f"{path}: no such lab directory; build the lab first (`repx lab build`)"
            ) from None
        raise LabError(
            f"{path}: not a repx lab directory (no lab.json inside); point --lab at the "
            "directory `repx lab build` produced (./result by default)"
        ) from None
    ctx = _Ctx(manifest)
    if not isinstance(raw, dict):
        raise ctx.fail("top level", "expected an object")
    fmt = raw.get("format")
    if fmt != LAB_FORMAT:
        raise LabError(
            f"{manifest}: unknown lab format {json.dumps(fmt)}; this repx reads "
            f"\"{LAB_FORMAT}\". Rebuild the lab with this version of repx (`repx lab build`)"
        )
    run_names = tuple(ctx.get(raw, "runs", "top level", list))
    for n in run_names:
        if not isinstance(n, str):
            raise ctx.fail("runs", "run names must be strings")
    if len(set(run_names)) != len(run_names):
        raise ctx.fail("runs", "duplicate run names")
    groups: dict[str, tuple[str, ...]] = {}
    for g, members in ctx.opt(raw, "groups", "top level", dict, {}).items():
        if not isinstance(members, list):
            raise ctx.fail(f"groups.{g}", "expected a list of run names")
        unknown = [m for m in members if m not in run_names]
        if unknown:
            raise ctx.fail(f"groups.{g}", f"names runs that are not in this lab: {unknown}")
        groups[g] = tuple(members)
    runs = tuple(_run(path / "runs" / f"{n}.json", n) for n in run_names)
    return Lab(
        path=path,
        format=fmt,
        git_hash=ctx.opt(raw, "git_hash", "top level", str, "unknown"),
        lab_version=ctx.opt(raw, "lab_version", "top level", str, ""),
        lab_file=ctx.opt(raw, "lab_file", "top level", str, ""),
        container_mode=ctx.opt(raw, "container_mode", "top level", str, "unified"),
        run_container_mode=ctx.opt(raw, "run_container_mode", "top level", str, "per-run"),
        run_names=run_names,
        groups=groups,
        runs=runs,
    )
