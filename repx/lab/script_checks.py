"""Build-time validation of stage scripts, and how a script body renders params.

A stage script runs with a PATH that holds only its runDependencies and a few core tools, under
``set -euxo pipefail``. A missing command or a bash mistake would otherwise surface hours later
on a cluster node, one job at a time. So every script executable is checked when the lab is
built, before any job runs, and a lab with a bad script does not build:

* **shellcheck** (severity warning and above) on the body, behind a prelude that mirrors the
  runtime header so the variables the runtime provides (``out``, ``inputs``, ``params``…) are
  known and ``set -e`` is in effect (shellcheck then, correctly, stays quiet about ``cd``
  without ``|| exit``);
* **bash -n**: the authoritative answer to "does bash parse this";
* **dependency analysis** with tree-sitter-bash: every command name the script calls must be a
  builtin, a function the script defines, an existing absolute path, or an executable in one of
  the job's PATH directories. Everything else is reported, all names at once, so the user fixes
  runDependencies in one edit;
* **quoting of params**: ``params.x`` in ``run`` is the bash expansion ``${params["x"]}``
  (nix/lib/internal/stage.nix), which bash leaves as literal text inside single quotes and
  quoted here-documents; such a use is reported rather than running with the wrong text.

The script text does not depend on param values (they are bash expansions), so each script is
checked once, as it is, whatever values its jobs get.

Passing results are cached (an empty file per blake3 key of body + PATH dirs + validator
version) so rebuilding an unchanged lab does not re-run shellcheck on every script.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from repx.errors import LabError, ValidationError
from repx.identity import canonical_json
from repx.lab.command_packages import package_for

if TYPE_CHECKING:
    from repx.lab.blueprint import Executable, Stage
    from repx.lab.graph import JobGraph

#: Bump when the checks change, so cached "passed" verdicts of older rules are not trusted.
VALIDATOR_VERSION = "2"

#: Seconds a single shellcheck / bash -n may take before the script is reported as failing.
SUBPROCESS_TIMEOUT = 120

#: Bash builtins and reserved words: never looked up on PATH.
BUILTINS: frozenset[str] = frozenset(
    """
    alias bg bind break builtin caller cd command compgen complete compopt continue declare
    dirs disown echo enable eval exec exit export false fc fg getopts hash help history jobs
    kill let local logout mapfile popd printf pushd pwd read readarray readonly return set
    shift shopt source suspend test times trap true type typeset ulimit umask unalias unset
    wait . : [ [[
    """.split()
)

#: Reserved words. tree-sitter-bash parses most as structure, but ``time`` and ``coproc``
#: (and anything after error recovery) can show up in command position.
KEYWORDS: frozenset[str] = frozenset(
    "! case coproc do done elif else esac fi for function if in select then time until while "
    "{ } ]]".split()
)

#: Commands that run another command given as an argument; that command must exist too.
#: Value: the short options that consume the next word (so ``nice -n 5 foo`` checks ``foo``).
WRAPPERS: dict[str, frozenset[str]] = {
    "xargs": frozenset(
        {"-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s", "--arg-file", "--delimiter"}
        | {"--max-args", "--max-chars", "--max-lines", "--max-procs", "--process-slot-var"}
    ),
    "env": frozenset({"-u", "-C", "-S", "--unset", "--chdir", "--split-string"}),
    "exec": frozenset({"-a"}),
    "nohup": frozenset(),
    "nice": frozenset({"-n", "--adjustment"}),
    "time": frozenset({"-f", "-o", "--format", "--output"}),
    "timeout": frozenset({"-s", "-k", "--signal", "--kill-after"}),
    "command": frozenset(),
    "stdbuf": frozenset({"-i", "-o", "-e", "--input", "--output", "--error"}),
}

#: Runtime-provided variables, declared for shellcheck so SC2154 does not fire on them.
#: ``set -euxo pipefail`` mirrors the runtime header of the execution contract.
_PRELUDE_LINES: tuple[str, ...] = (
    "#!/usr/bin/env bash",
    "set -euxo pipefail",
    'out="$1"',
    'inputs_json="$2"',
    'params_json="$3"',
    'parameters_json="$3"',
    "declare -A inputs=()",
    "declare -A params=()",
    "declare -A parameters=()",
)
PRELUDE = "\n".join(_PRELUDE_LINES) + "\n"
PRELUDE_LINE_COUNT = len(_PRELUDE_LINES)

_GCC_LINE = re.compile(r"^-:(\d+):(\d+): (\w+): (.*)$")
_SC_CODE = re.compile(r"\[(SC\d+)\]$")
_NIX_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_'-]*$")


@dataclass(frozen=True)
class ScriptCheck:
    """One executable's script to validate.

    Attributes:
        stage: the stage pname, used only in messages.
        executable: ``"main"``, ``"scatter"``, ``"step-<name>"`` or ``"gather"``.
        file: the stage's ``.nix`` file, so the user knows what to edit.
        body: the user's script body, as written (params in it are bash expansions, see
            :func:`param_expansion`).
        path_dirs: the bin directories on the job's PATH (runDependencies + core tools).
    """

    stage: str
    executable: str
    file: str
    body: str
    path_dirs: list[str]


@dataclass
class Finding:
    """One problem with one script.

    Attributes:
        kind: ``"shellcheck"``, ``"syntax"`` or ``"missing-commands"``.
        text: the human-readable description (may span lines); the error message prefixes
            it with the stage, file and executable.
        commands: for ``missing-commands``, the missing names, sorted.
        codes: for ``shellcheck``, the SC codes reported (e.g. ``["SC2154"]``).
    """

    kind: str
    text: str
    commands: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# shellcheck and bash -n


def _require_tool(name: str, hint: str) -> str:
    """Return the tool's path, or raise: a silently skipped check would be a lie."""
    path = shutil.which(name)
    if path is None:
        raise ValidationError(
            f"{name} is not installed but is needed to validate stage scripts; {hint}"
        )
    return path


def _run(argv: list[str], stdin: str) -> subprocess.CompletedProcess[str] | None:
    """Run a checker on ``stdin``; ``None`` on timeout (reported as a finding by the caller)."""
    try:
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None


def _shellcheck(body: str) -> list[Finding]:
    """shellcheck the body behind the prelude; report warning-and-above, in body line numbers.

    Style/info findings do not fail: Debian's shellcheck 0.9.0 flags e.g. SC2002 (useless cat)
    as style, which newer releases no longer do by default, and a lab must not fail to build
    depending on the distribution. Findings on prelude lines (e.g. SC2034 "params appears
    unused") are about our declarations, not the user's script, so they are dropped.
    """
    exe = _require_tool("shellcheck", "install it (apt-get install shellcheck, or `make setup`)")
    proc = _run([exe, "-s", "bash", "-S", "warning", "-f", "gcc", "-"], PRELUDE + body)
    if proc is None:
        return [Finding("shellcheck", f"shellcheck timed out after {SUBPROCESS_TIMEOUT} s")]
    if proc.returncode not in (0, 1):
        raise ValidationError(
            f"shellcheck failed to run (exit {proc.returncode}): {proc.stderr.strip()}"
        )
    lines: list[str] = []
    codes: list[str] = []
    for raw in proc.stdout.splitlines():
        m = _GCC_LINE.match(raw)
        if m is None:
            if raw.strip():
                lines.append(f"  {raw.strip()}")
            continue
        line, col, severity, message = int(m[1]), int(m[2]), m[3], m[4]
        if line <= PRELUDE_LINE_COUNT:
            continue
        code = _SC_CODE.search(message)
        if code:
            codes.append(code[1])
        lines.append(f"  line {line - PRELUDE_LINE_COUNT}:{col}: {severity}: {message}")
    if not lines:
        return []
    return [Finding("shellcheck", "shellcheck reports:\n" + "\n".join(lines), codes=codes)]


def _bash_syntax(body: str) -> list[Finding]:
    """``bash -n``: bash itself is the authority on what parses (tree-sitter recovers silently)."""
    exe = _require_tool("bash", "install bash")
    proc = _run([exe, "-n"], body)
    if proc is None:
        return [Finding("syntax", f"bash -n timed out after {SUBPROCESS_TIMEOUT} s")]
    if proc.returncode == 0:
        return []
    # "/usr/bin/bash: line 3: syntax error…" -> "line 3: syntax error…"
    lines = [ln.removeprefix(f"{exe}: ") for ln in proc.stderr.strip().splitlines()]
    detail = "\n".join(f"  {ln}" for ln in lines) or "  (no message)"
    return [Finding("syntax", "bash cannot parse the script:\n" + detail)]


# --------------------------------------------------------------------------------------------
# dependency analysis (tree-sitter-bash)

_LANGUAGE: Any = None


def _parser() -> Any:
    """A fresh parser per call (parsers are not shared across threads); the language is shared."""
    global _LANGUAGE
    try:
        import tree_sitter
        import tree_sitter_bash
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ValidationError(
            f"tree-sitter-bash is needed to validate stage scripts ({exc}); "
            "install repx with its dependencies (pip install -e .)"
        ) from exc
    if _LANGUAGE is None:
        _LANGUAGE = tree_sitter.Language(tree_sitter_bash.language())
    return tree_sitter.Parser(_LANGUAGE)


def _literal(node: Any) -> str | None:
    """The word's value if it is fully literal (``ls``, ``'ls'``, ``"ls"``, ``\\ls``), else None.

    Names built from expansions (``$cmd``, ``${x}/bin/y``) cannot be known at build time and are
    skipped rather than guessed.
    """
    kind = node.type
    text = node.text.decode("utf-8", "replace")
    if kind == "command_name":
        return _literal(node.children[0]) if node.child_count == 1 else None
    if kind in ("word", "number"):
        return re.sub(r"\\(.)", r"\1", text)
    if kind == "raw_string":
        return text[1:-1]
    if kind == "string":
        parts: list[str] = []
        for child in node.children:
            if child.type == '"':
                continue
            if child.type != "string_content":
                return None
            parts.append(child.text.decode("utf-8", "replace"))
        return "".join(parts)
    if kind == "concatenation":
        out: list[str] = []
        for child in node.children:
            value = _literal(child)
            if value is None:
                return None
            out.append(value)
        return "".join(out)
    return None


def _walk(root: Any) -> Iterator[Any]:
    """Every node, iteratively (deeply nested scripts must not hit the recursion limit)."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def _wrapped(wrapper: str, args: list[str | None]) -> list[str]:
    """The commands a wrapper (``xargs``, ``env``, ``timeout``…) runs, wrappers included.

    ``None`` in ``args`` is a non-literal word: the analysis stops there (unknowable).
    ``command -v x`` / ``-V`` asks whether ``x`` exists and runs nothing, so it is not a use.
    """
    found: list[str] = []
    current = wrapper
    i = 0
    while current in WRAPPERS:
        takes_value = WRAPPERS[current]
        need_duration = current == "timeout"
        target: str | None = None
        while i < len(args):
            arg = args[i]
            i += 1
            if arg is None:
                return found
            if arg.startswith("-"):
                if current == "command" and arg in ("-v", "-V"):
                    return found
                if arg in takes_value:
                    i += 1
                continue
            if _is_assignment(arg) or (current == "env" and "=" in arg):
                continue
            if need_duration:
                need_duration = False
                continue
            target = arg
            break
        if target is None:
            return found
        found.append(target)
        current = target
    return found


def _is_assignment(word: str) -> bool:
    """``NAME=value`` (as ``env`` and command prefixes take it)."""
    return re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word) is not None


def called_commands(body: str) -> tuple[set[str], set[str]]:
    """Return (command names called, function names defined) in ``body``.

    Command substitutions, backticks, process substitutions, pipelines, subshells and the
    commands run by wrappers all count: each is a process the job's PATH must provide.
    """
    tree = _parser().parse(body.encode("utf-8", "surrogateescape"))
    commands: set[str] = set()
    functions: set[str] = set()
    for node in _walk(tree.root_node):
        if node.type == "function_definition":
            name = node.child_by_field_name("name")
            if name is not None:
                value = _literal(name)
                if value:
                    functions.add(value)
        elif node.type == "command":
            name_node = node.child_by_field_name("name")
            if name_node is None:
                continue
            name = _literal(name_node)
            if not name or name.startswith(("$", "-")) or "=" in name:
                continue
            commands.add(name)
            if name in WRAPPERS:
                args = [_literal(a) for a in node.children_by_field_name("argument")]
                commands.update(_wrapped(name, args))
    return commands, functions


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def missing_commands(body: str, path_dirs: list[str]) -> list[str]:
    """The command names ``body`` calls that neither bash nor ``path_dirs`` provide, sorted."""
    commands, functions = called_commands(body)
    missing: set[str] = set()
    for name in commands:
        if name in BUILTINS or name in KEYWORDS or name in functions:
            continue
        if name.startswith("/"):
            if not _is_executable(name):
                missing.add(name)
            continue
        if "/" in name:
            continue  # relative to the job's cwd ($out): only known at run time
        if not any(_is_executable(os.path.join(d, name)) for d in path_dirs):
            missing.add(name)
    return sorted(missing)


def _missing_finding(missing: list[str]) -> Finding:
    # The hint names packages, not commands: awk is in pkgs.gawk (there is no pkgs.awk).
    packages = dict.fromkeys(
        package_for(m) for m in missing
        if not m.startswith("/") and _NIX_IDENT.match(package_for(m))
    )
    example = " ".join(f"pkgs.{name}" for name in packages) or "pkgs.<package>"
    text = (
        "script calls commands that its runDependencies do not provide: "
        + ", ".join(missing)
        + f"\n  add them to runDependencies (e.g. runDependencies = [ {example} ];)"
    )
    return Finding("missing-commands", text, commands=list(missing))


# --------------------------------------------------------------------------------------------
# params inside quotes bash does not expand

#: The expansion ``params.<p>`` renders to (see :func:`param_expansion`); group 1 is the
#: escaped name.
_EXPANSION = re.compile(r'\$\{params\["((?:[^"\\]|\\.)*)"\]\}')

#: Commands that expand a single-quoted argument later, in the same shell (so the params
#: array is there): ``trap '... ${params["x"]}' EXIT`` is fine.
_EXPANDS_LATER: frozenset[str] = frozenset({"trap", "eval"})


def _command_name(node: Any) -> str | None:
    """The literal name of the command ``node`` is an argument of (None if not one)."""
    parent = node.parent
    while parent is not None and parent.type in ("concatenation", "string"):
        parent = parent.parent
    if parent is None or parent.type != "command":
        return None
    name = parent.child_by_field_name("name")
    return _literal(name) if name is not None else None


def quoted_param_expansions(body: str) -> list[tuple[str, int]]:
    """(param, body line) for each param expansion that bash will not expand.

    Inside single quotes (``'…'``, ``$'…'``) and quoted here-documents (``<<'EOF'``) bash
    keeps ``${params["x"]}`` as literal text, so the job would see that text, not the value;
    the old rendering pasted values even there, so labs written for it meet this first.
    """
    if "${params[" not in body:
        return []
    tree = _parser().parse(body.encode("utf-8", "surrogateescape"))
    found: list[tuple[str, int]] = []
    for node in _walk(tree.root_node):
        if node.type in ("raw_string", "ansi_c_string"):
            if _command_name(node) in _EXPANDS_LATER:
                continue
        elif node.type == "heredoc_body":
            start = next((c for c in node.parent.children if c.type == "heredoc_start"), None)
            delimiter = start.text.decode("utf-8", "replace") if start is not None else ""
            if not any(q in delimiter for q in "'\"\\"):
                continue
        else:
            continue
        text = node.text.decode("utf-8", "surrogateescape")
        for m in _EXPANSION.finditer(text):
            line = node.start_point[0] + text.count("\n", 0, m.start()) + 1
            found.append((re.sub(r"\\(.)", r"\1", m.group(1)), line))
    return found


def _quoted_finding(quoted: list[tuple[str, int]]) -> Finding:
    uses = ", ".join(f"params.{name} (line {line})" for name, line in quoted)
    name = quoted[0][0]
    text = (
        f"{uses}: inside `run`, params are bash expansions (${{params[\"{name}\"]}}), and bash "
        "does not expand them inside single quotes or a quoted here-document (<<'EOF'), so the "
        f'job would see that text instead of the value\n  write "${{params.{name}}}" in double '
        f'quotes, or pass the value in: an argument, or an environment variable '
        f'(P="${{params.{name}}}" python3 - <<\'EOF\' … os.environ["P"] …)'
    )
    return Finding("quoting", text)


# --------------------------------------------------------------------------------------------
# public API


def check_script(check: ScriptCheck) -> list[Finding]:
    """Every problem of one script; ``[]`` when it passes.

    shellcheck and the dependency analysis run only when bash parses the script: the syntax
    error is what the user must fix first, shellcheck would only repeat it less precisely, and
    tree-sitter's error recovery invents commands (``fi`` as a command name).
    """
    findings = _bash_syntax(check.body)
    if findings:
        return findings
    findings = _shellcheck(check.body)
    missing = missing_commands(check.body, list(check.path_dirs))
    if missing:
        findings.append(_missing_finding(missing))
    quoted = quoted_param_expansions(check.body)
    if quoted:
        findings.append(_quoted_finding(quoted))
    return findings


def cache_key(check: ScriptCheck) -> str:
    """What a passing verdict depends on: the body, the PATH dirs and the rules' version.

    Stage name and file are only in messages, so two stages sharing a script share a verdict.
    PATH dirs are Nix store paths in practice (immutable), so their names stand for content.
    """
    h = blake3.blake3()
    for part in (VALIDATOR_VERSION, check.body, *check.path_dirs):
        data = part.encode("utf-8", "surrogateescape")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _describe(check: ScriptCheck) -> str:
    return f"stage '{check.stage}' (file {check.file}, executable {check.executable})"


def validate_scripts(checks: list[ScriptCheck], cache_dir: Path | None = None) -> None:
    """Validate every script; raise one ValidationError listing every failing executable.

    All failures are reported together (not the first one) so a lab with several broken
    stages is fixed in one round. Checks run in parallel threads: the work is in shellcheck
    and bash subprocesses, so the GIL is not the bottleneck.
    """
    todo: dict[str, list[ScriptCheck]] = {}
    for check in checks:
        key = cache_key(check)
        if cache_dir is not None and (cache_dir / key).exists():
            continue
        todo.setdefault(key, []).append(check)
    if not todo:
        return
    _require_tool("shellcheck", "install it (apt-get install shellcheck, or `make setup`)")

    # Imported here: a lab whose scripts all passed before needs no pool, and
    # concurrent.futures loads logging with it.
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(todo), (os.cpu_count() or 4) + 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = dict(zip(todo, pool.map(lambda k: check_script(todo[k][0]), todo), strict=True))

    failures: list[tuple[tuple[str, str, str], str]] = []
    for key, findings in results.items():
        if not findings:
            _mark_passed(cache_dir, key)
            continue
        for check in todo[key]:
            for finding in findings:
                failures.append(
                    (
                        (check.stage, check.file, check.executable),
                        f"{_describe(check)}: {finding.text}",
                    )
                )
    if failures:
        failures.sort(key=lambda item: item[0])
        count = len({item[0] for item in failures})
        header = f"script validation failed for {count} stage executable(s):"
        raise ValidationError(header + "\n" + "\n".join(text for _, text in failures))


def _mark_passed(cache_dir: Path | None, key: str) -> None:
    """Record a pass; the cache is an optimisation, so an unwritable directory is not an error."""
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        (cache_dir / key).touch()
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# params in a script body, and the checks of a whole lab


def param_expansion(name: str) -> str:
    """What ``params.<name>`` renders to inside ``run``: the bash expansion of the job's value.

    The same spelling as ``expansionOf`` in nix/lib/internal/stage.nix (a backslash, double
    quote, dollar or backquote in the key is escaped with a backslash).
    """
    key = re.sub(r'([\\"$`])', r"\\\1", name)
    return '${params["' + key + '"]}'


def render_param(value: object) -> str:
    """A param value as bash holds it at run time (the header reads the params JSON).

    Strings raw, numbers and booleans as their JSON text (``true``/``false``), null empty.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return canonical_json(value)


def render_body(exe: Executable | str, params: dict[str, Any]) -> str:
    """The body of ``exe`` (an Executable or a body string) with each param expansion
    (:func:`param_expansion`) replaced by ``render_param(params[p])``: the text bash runs.

    Expansions of params not in ``params`` are left as they are.
    """
    body = exe if isinstance(exe, str) else exe.body
    if not params or "${params[" not in body:
        return body
    values = {param_expansion(p): render_param(v) for p, v in params.items()}
    pattern = re.compile("|".join(re.escape(e) for e in values))
    return pattern.sub(lambda m: values[m.group(0)], body)


def _stage_executables(stage: Stage) -> list[tuple[str, Executable]]:
    """The stage's executables and, for a value-dependent ``run``, those of each dynamic row."""
    exes = stage.all_executables()
    if stage.dynamic is not None and "executables" in stage.dynamic.attrs:
        for row in stage.dynamic.table:
            exes.extend(row.executables.items())
    return exes


def lab_script_checks(graph: JobGraph) -> list[ScriptCheck]:
    """One check per distinct script of the lab, its text as it is (value-independent).

    The PATH dirs are looked up where the lab's store paths are on this machine: /nix/store,
    or the store of an unpacked export (``--lab lab.tar`` where Nix is not)."""
    lab_dir = Path(graph.lab.path).absolute()
    unpacked = None
    # A lab in the real Nix store belongs to no unpack: the export module (slow to import)
    # is only needed for one that is elsewhere.
    if str(lab_dir.parent) != "/nix/store":
        from repx.lab.export import unpacked_lab_of  # imports repx.lab.open, which imports us

        unpacked = unpacked_lab_of(lab_dir)

    def local(path_dir: str) -> str:
        if unpacked is not None and path_dir.startswith("/nix/store/"):
            return str(unpacked.store_dir / path_dir[len("/nix/store/"):])
        return path_dir

    checks: dict[str, ScriptCheck] = {}
    for run in graph.lab.runs:
        for pipeline in run.pipelines:
            for stage in pipeline.stages:
                for exe_name, exe in _stage_executables(stage):
                    if exe.script in checks:
                        continue
                    checks[exe.script] = ScriptCheck(
                        stage=stage.pname,
                        executable=exe_name,
                        file=stage.file,
                        body=exe.body,
                        path_dirs=[local(d) for d in exe.path.split(":") if d],
                    )
    return list(checks.values())


def check_dynamic_outputs(graph: JobGraph) -> None:
    """Each job's output paths, as its script will complete them, match the lab's values.

    A ``{ params }:`` outputs function reaches the script as a template with the params'
    bash expansions. When ``run`` interpolates an output, a function that branches on a
    value gives its jobs scripts of their own (their templates are then the values); when it
    does not, nothing tells the script which branch a job is in, so the file would be
    written elsewhere than repx looks. Say so at build time.
    """
    # Outputs and templates without param expansions render the same for every job of a
    # stage variant (the jobs sharing one shape, which holds both): checked once per shape,
    # by its id (the graph holds every shape), so a million jobs cost a million lookups.
    checked: set[int] = set()
    for job in graph.jobs.values():
        shape = job.shape
        if id(shape) in checked:
            continue
        if shape.kind != "simple" or "main" not in shape.executables:
            checked.add(id(shape))
            continue
        template = shape.executables["main"].outputs
        if not any(isinstance(t, str) and "${params[" in t
                   for t in (*template.values(), *shape.outputs.values())):
            checked.add(id(shape))
        for name, path in job.outputs.items():
            rendered = render_body(template.get(name, path), job.params)
            if rendered != path:
                raise LabError(
                    f"stage '{job.pname}' (file {job.stage_file}): its outputs function gives "
                    f"'{name}' = {path!r} for params {json.dumps(job.params)}, but the script "
                    f"would write {rendered!r}; write output paths by interpolating params "
                    '(e.g. "$out/model-${params.model}.bin"), not by branching on them, or '
                    f"write the file as ${{outputs.{name}}} in run"
                )
