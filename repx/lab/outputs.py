"""The rule of output templates: every output a lab declares is a file of its job's ``out/``.

A stage declares its outputs as templates (``outputs = { data = "$out/data.csv"; }``). A
template is ``$out`` or ``${out}`` (the job's ``out/`` folder itself), ``$out/REL`` or
``${out}/REL``, or a bare ``REL``, relative to ``out/`` (the script runs there). ``REL``
must stay inside ``out/``: it is not absolute, and once normalised no ``..`` climbs above
``out/``; it holds no ``$`` or backquote and does not start with ``~``, because the template
reaches the script as shell text and bash would expand those, writing elsewhere than repx
looks.

Why: repx checks, hashes, verifies, collects and hands downstream exactly the paths the
templates name. ``"/etc/passwd"`` would let a downstream job read (and, as root, a job
overwrite) a system file; ``"$out/../../escape"`` makes every job of a stage write one shared
file; ``"../x"`` writes beside ``out/``, invisible to the manifest and ``repx cache verify``.
So anything else — an absolute path, an escape, a list, a number — is a lab error, raised
when the lab is expanded (:mod:`repx.lab.expand`, before any job runs or the store is
opened) and naming the stage, its file, the output and this rule. The one output that is
not a path is a scatter's ``worker__arg`` (:data:`SHAPE_OUTPUT`, the shape of a work item).

:func:`output_relpath` is the rule; :func:`check_output_templates` applies it to a stage's
declarations and :func:`repx.engine.contract.resolve_output` to turn a template into the
path every other part of repx uses.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from typing import Any

from repx.errors import LabError

#: The one declared output that is not a path: a scatter's description of a work item.
SHAPE_OUTPUT = "worker__arg"

#: The rule every output template follows (the module doc says why), as error messages
#: state it.
OUTPUT_RULE = (
    "an output is $out, ${out}, $out/REL, ${out}/REL or a relative path REL, where REL is "
    "not absolute, has no '..' that climbs above $out once normalised, and holds no '$', "
    "'`' or leading '~' (the script's shell would expand them)"
)


def output_relpath(template: object) -> str:
    """The path that ``template`` names relative to the job's ``out/`` (``""`` for ``out/``
    itself), normalised when it holds ``.``/``..`` segments or doubled slashes.

    Raises ValueError with what breaks :data:`OUTPUT_RULE` (callers add the stage or job
    and the output name).
    """
    if not isinstance(template, str):
        raise ValueError(f"is not a path template but {_describe(template)}")
    for var in ("$out", "${out}"):
        if template == var:
            return ""
        if template.startswith(var + "/"):
            rel = template[len(var) + 1:].lstrip("/")  # "$out//x" is "$out/x" to bash too
            break
    else:
        if not template:
            raise ValueError("is empty")
        rel = template
    if rel.startswith("/"):
        raise ValueError("is an absolute path")
    if "$" in rel or "`" in rel or rel.startswith("~"):
        raise ValueError("holds a shell expansion besides the leading $out")
    if "/." in "/" + rel or "//" in rel or rel.endswith("/"):
        rel = posixpath.normpath(rel)
        if rel == ".":
            return ""
        if rel == ".." or rel.startswith("../"):
            raise ValueError("climbs out of the job's $out folder")
    return rel


def _describe(value: object) -> str:
    """A non-string template as the lab author wrote it, e.g. ``a list (["a","b"])``."""
    if value is None:
        return "null"
    kind = ("a list" if isinstance(value, (list, tuple))
            else "an attribute set" if isinstance(value, dict)
            else "a boolean" if isinstance(value, bool)
            else "a number" if isinstance(value, (int, float))
            else type(value).__name__)
    text = json.dumps(value, default=repr)
    return f"{kind} ({text if len(text) <= 60 else text[:57] + '...'})"


def check_output_templates(outputs: Mapping[str, Any], where: str, *,
                           scatter: bool = False) -> None:
    """Raise a LabError naming ``where`` (the stage and its file), the output and the rule
    for the first template of ``outputs`` that breaks :data:`OUTPUT_RULE`. A scatter's
    ``outputs`` may hold :data:`SHAPE_OUTPUT` as any value."""
    for name, template in outputs.items():
        if scatter and name == SHAPE_OUTPUT:
            continue
        try:
            output_relpath(template)
        except ValueError as exc:
            shown = json.dumps(template) if isinstance(template, str) else ""
            raise LabError(
                f"{where}: output '{name}'{' = ' + shown if shown else ''} {exc}; "
                f"{OUTPUT_RULE}"
            ) from None


