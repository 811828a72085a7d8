"""Params reach a stage script as bash values, never as script text.

Inside ``run``, ``params.x`` renders to the bash expansion ``${params["x"]}`` of the job's
value (nix/lib/internal/stage.nix): a value is printed verbatim whatever it holds, the body
runs inline (no ``eval``: real line numbers, no ``+ eval`` in the log), one script serves the
stage and is validated once as written. A ``run`` that branches on a value in Nix is detected
and gets a script per combination. The script header never follows a link that a job left
in place of its ``$out``.

Everything here is real: Nix builds the lab, ``repx build`` runs the jobs, bash runs the
scripts.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from repx.errors import LabError, ValidationError
from repx.identity import identity_parts, job_id
from repx.lab.expand import load_job_graph
from repx.lab.script_checks import (
    ScriptCheck,
    check_script,
    quoted_param_expansions,
    render_body,
)
from tests.buildutil import build, by_pname, list_jobs, out_dir, write_lab
from tests.conftest import require_nix

# Values that would break (or run) as script text: quotes, a command substitution that would
# create a file, backquotes, a variable, a backslash, a trailing newline-free multi-word text.
HOSTILE = ['say "hi"', "$(touch INJECTED)", "`touch INJECTED2`", "it's $HOME \\n \\ end"]

RUN = """
{ pkgs, repx-lib, ... }:
{
  name = "main";
  pipelines = [ ./pipe.nix ];
  params = { msg = @MSGS@; seed = [ 1 2 3 ]; word = [ "apple" ]; };
}
"""

#: A run without a sweep (tests put their own params in with str.replace).
RUN_DEFAULTS = """
{ pkgs, repx-lib, ... }:
{ name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }
"""

PIPE = """
{ repx, ... }:
repx.mkPipe {
  verbatim = repx.callStage ./verbatim.nix [ ];
  branch = repx.callStage ./branch.nix [ ];
}
"""

# Prints each value three ways: quoted argument, unquoted here-document, bash test.
VERBATIM = """
{ pkgs }:
{
  pname = "verbatim";
  params = { msg = ""; rate = 0.25; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, parameters, ... }: ''
    printf '%s\\n' "${params.msg}" > "${outputs.result}"
    cat >> "${outputs.result}" <<EOF
    ${parameters.msg}
    EOF
    if [ -n "${params.msg}" ]; then echo "rate ${toString params.rate}" >> "${outputs.result}"; fi
  '';
}
"""

# The text of `run` depends on values in Nix: a test of a number, and a string function.
BRANCH = """
{ pkgs }:
{
  pname = "branch";
  params = { seed = 0; msg = ""; word = ""; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }:
    (if params.seed == 2 then "echo TWO" else "echo NOT-TWO") + ''
       > "${outputs.result}"
      word="${builtins.replaceStrings [ "a" ] [ "A" ] params.word}"
      echo "seed ${toString params.seed} $word" >> "${outputs.result}"
      printf '%s\\n' "${params.msg}" >> "${outputs.result}"
    '';
}
"""


SWEEP_FILES = {"run.nix": RUN, "pipe.nix": PIPE, "verbatim.nix": VERBATIM, "branch.nix": BRANCH}


def nix_list(values: list[str]) -> str:
    """A Nix list of strings (JSON string syntax is Nix's, once ``${`` is escaped)."""
    return "[ " + " ".join(json.dumps(v).replace("${", "\\${") for v in values) + " ]"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    """The sweep lab, built and run once: (lab folder, store, its jobs)."""
    require_nix()
    root = tmp_path_factory.mktemp("sweep")
    folder = write_lab(root / "lab", SWEEP_FILES, MSGS=nix_list(HOSTILE))
    store = root / ".repx"
    build(folder, store)
    return folder, store, list_jobs(folder)


def stderr_log(store: Path, job: dict) -> str:
    return (store / "outputs" / job["id"] / "repx" / "stderr.log").read_text()


@pytest.mark.nix
def test_values_with_quotes_and_commands_are_printed_verbatim(sweep) -> None:
    folder, store, jobs = sweep
    verbatim = by_pname(jobs, "verbatim")
    assert sorted(j["params"]["msg"] for j in verbatim) == sorted(HOSTILE)
    for job in verbatim:
        msg = job["params"]["msg"]
        out = out_dir(store, job["id"])
        assert (out / "result.txt").read_text() == f"{msg}\n{msg}\nrate 0.25\n"
        assert not (out / "INJECTED").exists() and not (out / "INJECTED2").exists()


@pytest.mark.nix
def test_body_runs_inline_without_eval(sweep) -> None:
    _, store, jobs = sweep
    for job in jobs:
        log = stderr_log(store, job)
        assert "+ eval" not in log
        first = log.splitlines()[0]
        assert first.startswith(("+ printf", "+ echo")), first


@pytest.mark.nix
def test_run_branching_on_a_value_gets_the_script_its_values_produce(sweep) -> None:
    folder, store, jobs = sweep
    branch = by_pname(jobs, "branch")
    assert len(branch) == 3 * len(HOSTILE)
    for job in branch:
        seed = job["params"]["seed"]
        lines = (out_dir(store, job["id"]) / "result.txt").read_text().splitlines()
        assert lines == ["TWO" if seed == 2 else "NOT-TWO", f"seed {seed} Apple",
                         job["params"]["msg"]]

    # One script per distinct text: seed changes it, msg stays a bash expansion.
    graph = load_job_graph(folder / "result")
    stage_jobs = [j for j in graph.jobs.values() if j.pname == "branch"]
    scripts = {j.params["seed"]: j.executables["main"].script for j in stage_jobs}
    assert len(set(scripts.values())) == 3
    two = next(j for j in stage_jobs if j.params["seed"] == 2).executables["main"].body
    assert two.startswith("echo TWO")
    assert '"${params["msg"]}"' in two and 'word="Apple"' in two and '"seed 2 $word"' in two
    # The verbatim stage's text does not depend on values: one script for all its jobs.
    assert len({j.executables["main"].script for j in graph.jobs.values()
                if j.pname == "verbatim"}) == 1


@pytest.mark.nix
def test_ids_hash_each_jobs_own_script(sweep) -> None:
    folder, _, _ = sweep
    graph = load_job_graph(folder / "result")
    for job in graph.jobs.values():
        assert job_id(identity_parts(job), job.pname, job.version) == job.id
        assert identity_parts(job)["code"][1] == [job.executables["main"].script]


@pytest.mark.nix
def test_changing_one_branch_reruns_only_its_jobs(tmp_path: Path) -> None:
    require_nix()
    folder = write_lab(tmp_path / "lab", SWEEP_FILES, MSGS=nix_list(["one"]))
    store = tmp_path / ".repx"
    assert len(build(folder, store).executed) == 4  # verbatim + branch for seeds 1, 2, 3
    (folder / "branch.nix").write_text(
        (folder / "branch.nix").read_text().replace('"echo TWO"', '"echo DOS"'))
    second = build(folder, store)
    (rerun,) = second.executed
    job = next(j for j in list_jobs(folder) if j["id"] == rerun)
    assert job["pname"] == "branch" and job["params"]["seed"] == 2
    assert (out_dir(store, rerun) / "result.txt").read_text().startswith("DOS\n")


JOINT_RUN = """
{ pkgs, repx-lib, ... }:
{ name = "main"; pipelines = [ ./pipe.nix ]; params = { seed = [ 1 2 3 ]; n = [ 3 4 null ]; }; }
"""

JOINT_PIPE = """
{ repx, ... }:
repx.mkPipe { joint = repx.callStage ./joint.nix [ ]; }
"""

# Only the combination seed = 2, n = 3 changes the text: neither value does on its own.
JOINT = """
{ pkgs }:
{
  pname = "joint";
  params = { seed = 0; n = 3; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }:
    (if params.seed == 2 && params.n == 3 then "echo JOINT" else "echo PLAIN") + ''
       > "${outputs.result}"
    '';
}
"""


@pytest.mark.nix
def test_a_text_that_depends_on_two_values_at_once_is_found(tmp_path: Path) -> None:
    """Every combination is rendered in the check, also when a value is null (the default:
    n = null is n = 3, so two combinations repeat) and no single value changes the text."""
    require_nix()
    folder = write_lab(tmp_path / "lab", {"run.nix": JOINT_RUN, "pipe.nix": JOINT_PIPE,
                                          "joint.nix": JOINT})
    store = tmp_path / ".repx"
    assert len(build(folder, store).executed) == 6  # seeds 1-3 by n 3, 4 (null is 3)
    for job in by_pname(list_jobs(folder), "joint"):
        text = (out_dir(store, job["id"]) / "result.txt").read_text()
        joint = (job["params"]["seed"], job["params"]["n"]) == (2, 3)
        assert text == ("JOINT\n" if joint else "PLAIN\n"), job["params"]
    graph = load_job_graph(folder / "result")
    assert len({j.executables["main"].script for j in graph.jobs.values()}) == 2


BRANCHING_OUTPUTS = """
{ pkgs }:
{
  pname = "placed";
  params = { mode = "a"; };
  outputs = { params }: { result = if params.mode == "a" then "$out/first" else "$out/second"; };
  run = { outputs, params, ... }: ''
    echo "${params.mode}" > "${outputs.result}"
  '';
}
"""


@pytest.mark.nix
def test_an_outputs_function_that_branches_gives_each_job_its_path(tmp_path: Path) -> None:
    """The run interpolates the output, so its text depends on the branch: a script per
    value, each writing where repx looks."""
    require_nix()
    run = RUN_DEFAULTS.replace("params = { }", 'params = { mode = [ "a" "b" ]; }')
    folder = write_lab(tmp_path / "lab", {
        "run.nix": run,
        "pipe.nix": "{ repx, ... }:\nrepx.mkPipe { placed = repx.callStage ./stage.nix [ ]; }\n",
        "stage.nix": BRANCHING_OUTPUTS})
    store = tmp_path / ".repx"
    build(folder, store)
    for job in list_jobs(folder):
        name = "first" if job["params"]["mode"] == "a" else "second"
        assert job["outputs"]["result"] == f"$out/{name}"
        assert (out_dir(store, job["id"]) / name).read_text() == job["params"]["mode"] + "\n"


# A scatter-gather stage whose gather (only) branches on a value in Nix.
SCATTER_GATHER = """
{ pkgs }:
{
  pname = "sg";
  params = { chunks = 2; };
  scatter = {
    outputs = { work__items = "$out/work_items.json"; worker__arg = { index = 0; }; };
    runDependencies = [ pkgs.jq ];
    run = { outputs, params, ... }: ''
      jq -n --argjson n "${toString params.chunks}" '[range($n) | {index: .}]' \\
        > "${outputs.work__items}"
    '';
  };
  worker = {
    inputs = { worker__item = ""; };
    outputs = { result = "$out/partial.txt"; };
    runDependencies = [ pkgs.jq ];
    run = { inputs, outputs, ... }: ''
      jq -r .index "${inputs.worker__item}" > "${outputs.result}"
    '';
  };
  gather = {
    inputs = { worker__outs = "[]"; };
    outputs = { final = "$out/final.txt"; };
    runDependencies = [ pkgs.jq pkgs.findutils pkgs.coreutils ];
    run = { inputs, outputs, params, ... }: ''
      jq -r '.[].result' "${inputs.worker__outs}" | xargs cat > "${outputs.final}"
      echo ${if params.chunks == 3 then "THREE" else "OTHER"} >> "${outputs.final}"
    '';
  };
}
"""


@pytest.mark.nix
def test_a_scatter_gather_phase_that_branches_gets_its_own_scripts(tmp_path: Path) -> None:
    require_nix()
    run = RUN_DEFAULTS.replace("params = { }", "params = { chunks = [ 2 3 ]; }")
    folder = write_lab(tmp_path / "lab", {
        "run.nix": run,
        "pipe.nix": "{ repx, ... }:\nrepx.mkPipe { sg = repx.callStage ./stage.nix [ ]; }\n",
        "stage.nix": SCATTER_GATHER})
    store = tmp_path / ".repx"
    build(folder, store)
    graph = load_job_graph(folder / "result")
    jobs = sorted(graph.jobs.values(), key=lambda j: j.params["chunks"])
    for job, expected in zip(jobs, ["0\n1\nOTHER\n", "0\n1\n2\nTHREE\n"], strict=True):
        assert (out_dir(store, job.id) / "final.txt").read_text() == expected
    # Only the gather's text depends on the value; scatter and worker stay one script each.
    scripts = {name: {j.executables[name].script for j in jobs} for name in jobs[0].executables}
    assert {name: len(found) for name, found in scripts.items()} == {
        "scatter": 1, "step-worker": 1, "gather": 2}


# ------------------------------------------------------------------ validation as written

# Each was rejected when validation pasted the defaults in: SC2050 (constant test), the
# command "/hello", and an empty then-block (a bash syntax error).
FORMERLY_REJECTED = {
    "constant-test": ('{ mode = "fast"; }',
                      'if [ "${params.mode}" = slow ]; then echo slow; fi'),
    "empty-tool-dir": ('{ tool_bin = ""; }',
                       'if [ -n "${params.tool_bin}" ]; then "${params.tool_bin}/hello"; fi'),
    "empty-then-block": ('{ cmd = ""; }',
                         'if [ -n "${params.cmd}" ]; then\n      ${params.cmd}\n    fi'),
}


def stage_file(pname: str, params: str, body: str) -> str:
    return f"""
{{ pkgs }}:
{{
  pname = "{pname}";
  params = {params};
  run = {{ params, ... }}: ''
    {body}
  '';
}}
"""


@pytest.mark.nix
def test_scripts_are_validated_as_written_not_with_defaults(make_lab, build) -> None:
    pipe = "{ repx, ... }:\nrepx.mkPipe {\n" + "".join(
        f"  {name} = repx.callStage ./{name}.nix [ ];\n" for name in FORMERLY_REJECTED) + "}\n"
    files = {f"{name}.nix": stage_file(name, params, body)
             for name, (params, body) in FORMERLY_REJECTED.items()}
    graph = build(make_lab({"run.nix": RUN_DEFAULTS, "pipe.nix": pipe, **files}))
    for name in FORMERLY_REJECTED:
        (job,) = [j for j in graph.jobs.values() if j.pname == name]
        exe = job.executables["main"]
        assert "${params[" in exe.body
        # What the old rendering (defaults pasted in) checked: rejected, for each of the three.
        pasted = render_body(exe, job.params)
        findings = check_script(ScriptCheck(name, "main", job.stage_file, pasted,
                                            exe.path.split(":")))
        assert findings, f"{name}: the pasted-defaults body passed: {pasted!r}"


@pytest.mark.nix
def test_a_param_inside_single_quotes_is_reported(make_lab, build) -> None:
    stage = stage_file("quoted", '{ x = "v"; }',
                       "echo '${params.x}'\n    trap 'echo \"${params.x}\"' EXIT")
    with pytest.raises(ValidationError) as excinfo:
        build(make_lab({"run.nix": RUN_DEFAULTS, "stage.nix": stage}))
    message = excinfo.value.message
    assert "stage 'quoted'" in message and "params.x (line 1)" in message
    assert "line 2" not in message  # trap expands its single-quoted text itself
    assert 'write "${params.x}" in double quotes' in message


def test_quoted_expansions_found_where_bash_does_not_expand() -> None:
    body = (
        "echo '${params[\"a\"]}' \"${params[\"ok\"]}\"\n"
        "python3 - <<'PY'\nprint(\"${params[\"b\"]}\")\nPY\n"
        "cat <<EOF\n${params[\"ok2\"]}\nEOF\n"
        "eval 'echo ${params[\"ok3\"]}'\n"
        "printf %s $'${params[\"c\\\"d\"]}'\n"
    )
    assert quoted_param_expansions(body) == [("a", 1), ("b", 3), ('c"d', 9)]


@pytest.mark.nix
def test_nix_arithmetic_on_a_param_names_the_stage(make_lab, build) -> None:
    stage = stage_file("flagged", "{ flag = false; }",
                       '${if params.flag then "--flag" else ""}')
    with pytest.raises(LabError) as excinfo:
        build(make_lab({"run.nix": RUN_DEFAULTS, "stage.nix": stage}))
    message = excinfo.value.message
    assert "value is a string while a Boolean was expected" in message
    assert "stage 'flagged'" in message and "bash expansions" in message
    assert "{ params }: function" in message
    assert "… while" not in message  # the rest of Nix's trace is left out


@pytest.mark.nix
def test_a_number_interpolated_only_with_its_value_names_stage_and_values(
        make_lab, build) -> None:
    """Nix cannot interpolate the value 2: the branch that does it is seen only when `run`
    is rendered with the values, and the message says which and how to write it."""
    stage = stage_file("counted", "{ seed = 0; }",
                       '${if params.seed == 2 then "echo ${params.seed}" else "echo other"}')
    run = RUN_DEFAULTS.replace("params = { }", "params = { seed = [ 1 2 ]; }")
    with pytest.raises(LabError) as excinfo:
        build(make_lab({"run.nix": run, "stage.nix": stage}))
    message = excinfo.value.message
    assert "cannot coerce an integer to a string" in message
    assert "stage 'counted'" in message and '{"seed":2}' in message
    assert "toString params.<p>" in message


# ------------------------------------------------------------------ line numbers

FAILING = """
{ pkgs }:
{
  pname = "failing";
  params = { divisor = 0; };
  run = { params, ... }: ''
    echo start
    zero="${toString params.divisor}"
    (( 1 / zero ))
  '';
}
"""


@pytest.mark.nix
def test_errors_name_the_script_line_of_the_body(tmp_path: Path) -> None:
    require_nix()
    folder = write_lab(tmp_path / "lab", {
        "run.nix": RUN_DEFAULTS,
        "pipe.nix": "{ repx, ... }:\nrepx.mkPipe { failing = repx.callStage ./stage.nix [ ]; }\n",
        "stage.nix": FAILING})
    store = tmp_path / ".repx"
    build(folder, store, expect=1)
    (job,) = list_jobs(folder)
    log = (store / "outputs" / job["id"] / "repx" / "stderr.log").read_text()
    assert "+ eval" not in log and log.startswith("+ echo start\n"), log
    found = re.search(r"line (\d+): \(\(: 1 / zero ?: division by 0", log)
    assert found, log
    script = load_job_graph(folder / "result").jobs[job["id"]].executables["main"].script
    line = Path(script).read_text().splitlines()[int(found.group(1)) - 1]
    assert line.strip() == "(( 1 / zero ))"


# ------------------------------------------------------------------ a symlinked $out

SWAP = """
{ pkgs }:
{
  pname = "swap";
  params = { victim = ""; };
  run = { params, ... }: ''
    cd /
    rm -rf "$out"
    ln -s "${params.victim}" "$out"
  '';
}
"""


@pytest.mark.nix
def test_a_job_that_links_its_out_elsewhere_never_empties_the_target(tmp_path: Path) -> None:
    require_nix()
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "keep.txt").write_text("precious")
    (victim / "sub" / "deep.txt").write_text("precious too")
    run = RUN_DEFAULTS.replace("params = { }", f'params = {{ victim = [ "{victim}" ]; }}')
    folder = write_lab(tmp_path / "lab", {
        "run.nix": run,
        "pipe.nix": "{ repx, ... }:\nrepx.mkPipe { swap = repx.callStage ./stage.nix [ ]; }\n",
        "stage.nix": SWAP})
    store = tmp_path / ".repx"
    build(folder, store)
    (job,) = list_jobs(folder)
    out = out_dir(store, job["id"])
    assert out.is_symlink()  # what the job did

    build(folder, store, "--force", "swap")  # the rerun's header meets the link
    assert (victim / "keep.txt").read_text() == "precious"
    assert (victim / "sub" / "deep.txt").read_text() == "precious too"

    # The header alone (the script run by hand, no engine in between): the link is removed
    # as a link, out/ is made again as a folder, the target keeps its files.
    script = load_job_graph(folder / "result").jobs[job["id"]].executables["main"].script
    by_hand = tmp_path / "by-hand"
    by_hand.mkdir()
    (by_hand / "out").symlink_to(victim)
    (by_hand / "inputs.json").write_text("{}")
    (by_hand / "params.json").write_text(json.dumps({"victim": str(tmp_path / "elsewhere")}))
    (tmp_path / "elsewhere").mkdir()
    result = subprocess.run([script, str(by_hand / "out"), str(by_hand / "inputs.json"),
                             str(by_hand / "params.json")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt", "sub"]
    assert (by_hand / "out").resolve() == tmp_path / "elsewhere"  # the body's own link
