"""Every invalid lab gives one readable message naming the file at fault.

Each case builds a real lab with Nix; the message must name what is wrong and
where, and must not be a Nix stack trace.
"""

from __future__ import annotations

import pytest

from repx.errors import LabError
from tests.buildutil import repx
from tests.conftest import require_nix

RUN_SIMPLE = """
{ pkgs, repx-lib, ... }:
{ name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }
"""

STAGE_OK = """
{ pkgs }:
{
  pname = "work";
  params = { x = 1; };
  outputs = { result = "$out/result.txt"; };
  run = { outputs, params, ... }: ''
    echo "${toString params.x}" > "${outputs.result}"
  '';
}
"""

TWO_RUNS_LAB = """
{{ pkgs, repx-lib, ... }}:
let
  a = repx-lib.callRun ./run-a.nix [ ];
  b = repx-lib.callRun ./run-b.nix [ a ];
in
repx-lib.mkLab {{
  inherit pkgs repx-lib;
  lab_version = "1";
  runs = {{ inherit a b; }};
  {extra}
}}
"""


def run_file(name: str) -> str:
    return f"""
{{ pkgs, repx-lib, ... }}:
{{ name = "{name}"; pipelines = [ ./pipe.nix ]; params = {{ }}; }}
"""


def run_with(params: str, extra: str = "") -> str:
    return f"""
{{ pkgs, repx-lib, ... }}:
let utils = repx-lib.utils; in
{{ name = "main"; pipelines = [ ./pipe.nix ]; params = {{ {params} }}; {extra} }}
"""


def stage_with(body: str) -> str:
    return "{ pkgs }:\n{\n" + body + "\n}\n"


SIMPLE_RUN = "run = { outputs, ... }: ''\n    echo hi > \"${outputs.result}\"\n  '';"

CASES: dict[str, tuple[dict[str, str], list[str]]] = {
    "duplicate run names": (
        {
            "lab.nix": TWO_RUNS_LAB.format(extra=""),
            "run-a.nix": run_file("same"),
            "run-b.nix": run_file("same"),
            "stage.nix": STAGE_OK,
        },
        ["duplicate run names", '"same"', "lab.nix"],
    ),
    "group collides with run": (
        {
            "lab.nix": TWO_RUNS_LAB.format(extra="groups = { a = [ a ]; };"),
            "run-a.nix": run_file("a"),
            "run-b.nix": run_file("b"),
            "stage.nix": STAGE_OK,
        },
        ["group name(s) collide with run name(s)", '"a"'],
    ),
    "circular run dependencies": (
        {
            "lab.nix": """
                { pkgs, repx-lib, ... }:
                let
                  a = repx-lib.callRun ./run-a.nix [ b ];
                  b = repx-lib.callRun ./run-b.nix [ a ];
                in
                repx-lib.mkLab {
                  inherit pkgs repx-lib; lab_version = "1"; runs = { inherit a b; };
                }
            """,
            "run-a.nix": run_file("a"),
            "run-b.nix": run_file("b"),
            "stage.nix": STAGE_OK,
        },
        ["circular dependency between runs", "a -> b -> a"],
    ),
    "zip length mismatch": (
        {"run.nix": run_with('x = [ 1 ]; z = utils.zip { a = [ 1 2 3 ]; b = [ "x" "y" ]; };'),
         "stage.nix": STAGE_OK},
        ["utils.zip: all parameter lists must have the same length",
         "'a' has 3 items, 'b' has 2 items"],
    ),
    "unknown stage attribute": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": stage_with('pname = "work"; outputs = { result = "$out/r"; }; '
                                 "colour = 1; " + SIMPLE_RUN)},
        ["stage.nix", "unknown attributes", '"colour"', "Valid attributes are"],
    ),
    "unknown run attribute": (
        {"run.nix": run_with("", 'speed = "fast";'), "stage.nix": STAGE_OK},
        ["Run definition 'main'", "run.nix", '"speed"'],
    ),
    "dot notation naming no stage": (
        {"run.nix": run_with('"nosuch.x" = [ 1 2 ];'), "stage.nix": STAGE_OK},
        ["nosuch.x", "run.nix"],
    ),
    "dot notation naming no declared param": (
        {"run.nix": run_with('"work.nosuch" = [ 1 2 ];'), "stage.nix": STAGE_OK},
        ["work.nosuch", "run.nix"],
    ),
    "empty param list": (
        {"run.nix": run_with("x = [ ];"), "stage.nix": STAGE_OK},
        ["parameter 'x' has an empty list", "run.nix"],
    ),
    "param not a list": (
        {"run.nix": run_with("x = 3;"), "stage.nix": STAGE_OK},
        ["parameter 'x' must be a list", "run.nix"],
    ),
    "non-scalar param value": (
        {"run.nix": run_with("x = [ [ 1 2 ] ];"), "stage.nix": STAGE_OK},
        ["x", "scalar", "run.nix"],
    ),
    "floats that collapse in Nix": (
        {"run.nix": run_with("x = [ 0.1234567 0.1234568 ];"), "stage.nix": STAGE_OK},
        ["x", "strings"],
    ),
    "invalid hashMode": (
        {"run.nix": run_with("", 'hashMode = "fast";'), "stage.nix": STAGE_OK},
        ['invalid hashMode "fast"', "params-only", "run.nix"],
    ),
    "invalid containerMode": (
        {"lab.nix": """
            { pkgs, repx-lib, ... }:
            repx-lib.mkLab { inherit pkgs repx-lib; lab_version = "1"; containerMode = "docker";
              runs = { main = repx-lib.callRun ./run.nix [ ]; }; }
         """, "run.nix": RUN_SIMPLE, "stage.nix": STAGE_OK},
        ['invalid containerMode "docker"', "unified"],
    ),
    "required input nobody provides": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": stage_with('pname = "work"; inputs = { data = ""; }; '
                                 'outputs = { result = "$out/r"; }; ' + SIMPLE_RUN)},
        ["input 'data'", "required", "stage.nix"],
    ),
    "dynamic attribute with the wrong signature": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": stage_with('pname = "work"; outputs = { pkgs }: { result = "$out/r"; }; '
                                 + SIMPLE_RUN)},
        ["'outputs' attribute is a function", "{ params }", '["pkgs"]', "stage.nix"],
    ),
    "two sink steps": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": """
            { pkgs }:
            rec {
              pname = "sg";
              scatter = {
                outputs = { work__items = "$out/work_items.json"; worker__arg = { i = 0; }; };
                run = { outputs, ... }: "echo '[1]' > ${outputs.work__items}";
              };
              steps = {
                a = { pname = "a"; inputs = { worker__item = ""; }; outputs = { x = "$out/x"; };
                      deps = [ ]; run = { outputs, ... }: "echo 1 > ${outputs.x}"; };
                b = { pname = "b"; inputs = { worker__item = ""; }; outputs = { y = "$out/y"; };
                      deps = [ ]; run = { outputs, ... }: "echo 1 > ${outputs.y}"; };
              };
              gather = {
                inputs = { worker__outs = "[]"; }; outputs = { result = "$out/r"; };
                run = { outputs, ... }: "echo 1 > ${outputs.result}";
              };
            }
         """},
        ["exactly one sink step", '"a"', '"b"', "stage.nix"],
    ),
    "root step without worker__item": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": """
            { pkgs }:
            {
              pname = "sg";
              scatter = {
                outputs = { work__items = "$out/work_items.json"; worker__arg = { i = 0; }; };
                run = { outputs, ... }: "echo '[1]' > ${outputs.work__items}";
              };
              steps.a = { pname = "a"; inputs = { }; outputs = { x = "$out/x"; };
                          deps = [ ]; run = { outputs, ... }: "echo 1 > ${outputs.x}"; };
              gather = {
                inputs = { worker__outs = "[]"; }; outputs = { result = "$out/r"; };
                run = { outputs, ... }: "echo 1 > ${outputs.result}";
              };
            }
         """},
        ['root step must declare a "worker__item" input'],
    ),
    "unknown resource key": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": stage_with('pname = "work"; outputs = { result = "$out/r"; }; '
                                 'resources = { mem = "1G"; cpuss = 2; }; ' + SIMPLE_RUN)},
        ["unknown resource hint keys", "cpuss", "stage.nix"],
    ),
    "params and parameters both given": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": stage_with('pname = "work"; params = { }; parameters = { }; '
                                 'outputs = { result = "$out/r"; }; ' + SIMPLE_RUN)},
        ["either 'params' or its alias 'parameters'", "stage.nix"],
    ),
    "implicit wiring with nothing shared": (
        {"run.nix": RUN_SIMPLE,
         "pipe.nix": """
            { repx, ... }:
            repx.mkPipe rec {
              work = repx.callStage ./stage.nix [ ];
              next = repx.callStage ./next.nix [ work ];
            }
         """,
         "stage.nix": STAGE_OK,
         "next.nix": stage_with('pname = "next"; inputs = { other = ""; }; '
                                'outputs = { result = "$out/r"; }; ' + SIMPLE_RUN)},
        ["implicit dependency resolution failed", '"next"', '"work"', "explicit mapping"],
    ),
    # A run that writes outputs.result gets a script per value (test_params_as_values.py);
    # one that does not use it cannot be told where the branch puts the file.
    "outputs function that branches on a param": (
        {"run.nix": run_with('mode = [ "a" "b" ];'),
         "stage.nix": stage_with('pname = "work"; params = { mode = "a"; }; '
                                 'outputs = { params }: { result = if params.mode == "a" '
                                 'then "$out/first" else "$out/second"; }; '
                                 "run = { ... }: ''\n    echo hi > first\n  '';")},
        ["outputs function", "interpolating", "stage.nix"],
    ),
    "undeclared program in a script": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": stage_with('pname = "work"; outputs = { result = "$out/r"; }; '
                                 "run = { outputs, ... }: ''\n"
                                 '  frobnicate --fast > "${outputs.result}"\n'
                                 "'';")},
        ["work", "stage.nix", "frobnicate", "runDependencies"],
    ),
}

# --------------------------------------------------- the lab's own file, never repx's nix/lib

#: A stage that reads "data" and writes "data": two of them can depend on each other.
RELAY = """
{{ pkgs }}:
{{
  pname = "{pname}";
  inputs = {{ data = ""; }};
  outputs = {{ data = "$out/data.txt"; }};
  run = {{ inputs, outputs, ... }}: ''
    cat "${{inputs.data}}" > "${{outputs.data}}"
  '';
}}
"""

#: A scatter-gather stage with one step, whose step section is STEP.
ONE_STEP_SG = """
{ pkgs }:
{
  pname = "sg";
  scatter = {
    outputs = { work__items = "$out/work_items.json"; worker__arg = { i = 0; }; };
    run = { outputs, ... }: "echo '[1]' > ${outputs.work__items}";
  };
  steps = { square = STEP; };
  gather = {
    inputs = { worker__outs = "[]"; }; outputs = { result = "$out/r"; };
    run = { outputs, ... }: "echo 1 > ${outputs.result}";
  };
}
"""

STEP_BODY = ('inputs = { worker__item = ""; }; outputs = { x = "$out/x"; }; deps = [ ]; '
             'run = { outputs, ... }: "echo 1 > ${outputs.x}";')

CASES.update({
    "outputs given as a list": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": stage_with('pname = "work"; outputs = [ "$out/r" ]; ' + SIMPLE_RUN)},
        ["stage.nix", "'outputs' must be an attribute set", "got a list",
         'outputs = { result = "$out/result.txt"; }'],
    ),
    "outputs function returning a list": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": stage_with('pname = "work"; params = { x = 1; }; '
                                 'outputs = { params }: [ "$out/r" ]; ' + SIMPLE_RUN)},
        ["stage.nix", "'outputs' must be an attribute set", "{ params }: function", "a list"],
    ),
    "inputs given as a list": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": stage_with('pname = "work"; inputs = [ "data" ]; '
                                 'outputs = { result = "$out/r"; }; ' + SIMPLE_RUN)},
        ["stage.nix", "'inputs' must be an attribute set", "got a list"],
    ),
    "params given as a list": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": stage_with('pname = "work"; params = [ 1 ]; '
                                 'outputs = { result = "$out/r"; }; ' + SIMPLE_RUN)},
        ["stage.nix", "'params' must be an attribute set", "a list"],
    ),
    "step outputs given as a list": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": ONE_STEP_SG.replace(
             "STEP", '{ pname = "square"; inputs = { worker__item = ""; }; '
                     'outputs = [ "$out/x" ]; deps = [ ]; run = { ... }: "true"; }')},
        ["stage.nix", "step 'square'", "'outputs' must be an attribute set", "a list"],
    ),
    "two stages depending on each other": (
        {"run.nix": RUN_SIMPLE,
         "pipe.nix": """
            { repx, ... }:
            repx.mkPipe rec {
              a = repx.callStage ./a.nix [ b ];
              b = repx.callStage ./b.nix [ a ];
              c = repx.callStage ./c.nix [ ];
            }
         """,
         "a.nix": RELAY.format(pname="first"), "b.nix": RELAY.format(pname="second"),
         "c.nix": STAGE_OK},
        ["pipe.nix", "run 'main'", "cycle: a → b → a", "a: stage file", "a.nix",
         "b: stage file", "b.nix"],
    ),
    "a cycle through a stage bound in a let": (
        {"run.nix": RUN_SIMPLE,
         "pipe.nix": """
            { repx, ... }:
            let
              hidden = repx.callStage ./b.nix [ top ];
              middle = repx.callStage ./c.nix [ hidden ];
              top = repx.callStage ./a.nix [ middle ];
            in
            repx.mkPipe { inherit top; }
         """,
         "a.nix": RELAY.format(pname="first"), "b.nix": RELAY.format(pname="second"),
         "c.nix": RELAY.format(pname="third")},
        # Stages without an attribute in the pipeline are named by their pname.
        ["pipe.nix", "cycle: top → third → second → top", "c.nix"],
    ),
    "a stage among its own deps": (
        {"run.nix": RUN_SIMPLE,
         "pipe.nix": "{ repx, ... }:\nrepx.mkPipe rec { a = repx.callStage ./a.nix [ a ]; }\n",
         "a.nix": RELAY.format(pname="first")},
        ["pipe.nix", "cycle: a → a", "a.nix"],
    ),
    "a value that needs itself outside the stages": (
        {"run.nix": RUN_SIMPLE,
         "pipe.nix": """
            { repx, ... }:
            repx.mkPipe rec { work = repx.callStage ./stage.nix [ ]; other = other; }
         """,
         "stage.nix": STAGE_OK},
        ["infinite recursion", "pipe.nix", "refers to itself"],
    ),
    "pname with a slash": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": stage_with('pname = "train/large"; outputs = { result = "$out/r"; }; '
                                 + SIMPLE_RUN)},
        ["stage.nix", 'pname "train/large"', "job id", "no '/'"],
    ),
    "version with a slash": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": stage_with('pname = "work"; version = "2024/1"; '
                                 'outputs = { result = "$out/r"; }; ' + SIMPLE_RUN)},
        ["stage.nix", 'version "2024/1"', "job id"],
    ),
    "dynamic pname with a slash for one combination": (
        {"run.nix": run_with('dataset = [ "small" "big/v2" ];'),
         "stage.nix": stage_with('pname = { params }: "train-${params.dataset}"; '
                                 'params = { dataset = "small"; }; '
                                 'outputs = { result = "$out/r"; }; ' + SIMPLE_RUN)},
        ["stage.nix", '"train-big/v2"', '{"dataset":"big/v2"}', "job id"],
    ),
    "run without a name": (
        {"run.nix": "{ pkgs, repx-lib, ... }:\n{ pipelines = [ ./pipe.nix ]; params = { }; }\n",
         "stage.nix": STAGE_OK},
        ["run.nix", "runs.main", "lab.nix", "'name' is required", 'name = \"main\";'],
    ),
    "step pname that differs from its key": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": ONE_STEP_SG.replace("STEP", '{ pname = "squared"; ' + STEP_BODY + " }")},
        ["stage.nix", 'Step "square" has pname "squared"', "must be its key"],
    ),
    "step without a pname": (
        {"run.nix": RUN_SIMPLE,
         "stage.nix": ONE_STEP_SG.replace("STEP", "{ " + STEP_BODY + " }")},
        ["stage.nix", 'Step "square" has no \'pname\'', 'pname = "square";'],
    ),
})


@pytest.mark.nix
@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_lab_gives_one_readable_message(case: str, make_lab, build) -> None:
    files, fragments = CASES[case]
    folder = make_lab(files)
    with pytest.raises(LabError) as caught:
        build(folder)
    message = caught.value.message
    for fragment in fragments:
        assert fragment in message, f"{case}: {fragment!r} not in:\n{message}"
    assert "--show-trace" not in message
    assert "while evaluating" not in message


@pytest.mark.nix
def test_a_job_id_that_is_no_folder_name_stops_the_build_before_any_store(make_lab) -> None:
    """`repx build` of a stage whose pname holds a '/': one lab error naming the stage file
    (exit 2), and no store is created for a build that cannot start."""
    require_nix()
    folder = make_lab({
        "run.nix": RUN_SIMPLE,
        "stage.nix": stage_with('pname = "a/b"; outputs = { result = "$out/r"; }; '
                                + SIMPLE_RUN),
    })
    result = repx("build", "--store", str(folder / "store"), cwd=folder, check=False)
    assert result.returncode == 2, result.stderr
    assert f"stage file '{folder / 'stage.nix'}'" in result.stderr
    assert 'pname "a/b"' in result.stderr and "invalid job id" not in result.stderr
    assert "Traceback" not in result.stderr
    assert not (folder / "store").exists()
