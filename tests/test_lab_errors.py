"""Every invalid lab gives one readable message naming the file at fault.

Each case builds a real lab with Nix; the message must name what is wrong and
where, and must not be a Nix stack trace.
"""

from __future__ import annotations

import pytest

from repx.errors import LabError

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
    "outputs function that branches on a param": (
        {"run.nix": run_with('mode = [ "a" "b" ];'),
         "stage.nix": stage_with('pname = "work"; params = { mode = "a"; }; '
                                 'outputs = { params }: { result = if params.mode == "a" '
                                 'then "$out/first" else "$out/second"; }; ' + SIMPLE_RUN)},
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
