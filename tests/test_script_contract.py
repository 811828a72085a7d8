"""The generated stage script honours the execution contract when run by hand.

These run the real script that Nix wrote (one bash process) with the three
arguments of the contract: out dir, inputs JSON, params JSON.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from repx.engine.contract import json_lines_text
from repx.identity import canonical_json
from repx.lab.script_checks import param_expansion, render_body

STAGE = """
{ pkgs }:
{
  pname = "echoer";
  params = { text = "a b"; number = 0.5; flag = true; empty = null; quote = "it's"; };
  inputs = { data = "/etc/hostname"; };
  outputs = { result = "$out/result.txt"; };
  run = { inputs, outputs, params, ... }: ''
    printf '%s|' "${params.text}" "${toString params.number}" "${toString params.flag}" \\
      "${toString params.empty}" "${params.quote}" > "${outputs.result}"
    printf '%s|' "''${params[text]}" "$(cat "${inputs.data}")" "$PATH" >> "${outputs.result}"
  '';
}
"""

PIPE = """
{ repx, ... }:
repx.mkPipe { echoer = repx.callStage ./stage.nix [ ]; }
"""

RUN = """
{ pkgs, repx-lib, ... }:
{ name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }
"""


@pytest.fixture
def script(make_lab, build, tmp_path: Path):
    graph = build(make_lab({"stage.nix": STAGE, "pipe.nix": PIPE, "run.nix": RUN}))
    (job,) = graph.jobs.values()
    return job


def write_repx_json(path: Path, data: dict) -> None:
    """The layout repx writes: one "key": value per line (read by bash without jq)."""
    path.write_text(json.dumps(data, indent=1))


def run_script(job, tmp_path: Path, params: dict, *, compact: bool = False,
               env: dict | None = None) -> subprocess.CompletedProcess[str]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    data = tmp_path / "data.txt"
    data.write_text("payload")
    inputs, params_file = tmp_path / "inputs.json", tmp_path / "params.json"
    write_repx_json(inputs, {"data": str(data)})
    if compact:
        params_file.write_text(json.dumps(params, separators=(",", ":")))
    else:
        write_repx_json(params_file, params)
    return subprocess.run([job.executables["main"].script, str(out), str(inputs),
                           str(params_file)], capture_output=True, text=True,
                          env=env or {"HOME": str(tmp_path)}, check=False)


@pytest.mark.nix
@pytest.mark.parametrize("compact", [False, True], ids=["repx-layout", "jq-fallback"])
def test_params_render_as_validation_renders_them(script, tmp_path: Path, compact: bool) -> None:
    params = {"text": "x & y \\ z", "number": 0.25, "flag": False, "empty": None,
              "quote": "it's &ok"}
    result = run_script(script, tmp_path, params, compact=compact)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "out" / "result.txt").read_text().split("|")
    names = ["text", "number", "flag", "empty", "quote"]
    expected_line = render_body("|".join(map(param_expansion, names)), params).split("|")
    assert written[:5] == expected_line
    assert written[5] == params["text"]  # the ${params[name]} array
    assert written[6] == "payload"  # $inputs
    path_dirs = written[7].split(":")
    assert all(d.startswith("/nix/store/") for d in path_dirs)
    assert {Path(d).parent.name.split("-", 1)[1] for d in path_dirs} == {
        "host-bash", "host-coreutils", "host-findutils", "host-gnused", "host-gnugrep",
        "host-jq"}


def _layouts(params: dict) -> dict[str, str]:
    """The same params JSON in the layout repx writes and in layouts written by hand."""
    repx_layout = json_lines_text(params)
    return {
        "repx": repx_layout,
        "slurm-wrapper": canonical_json(params) + "\n",
        "indent-2": json.dumps(params, indent=2),
        "one-line": json.dumps(params),
        "crlf": repx_layout.replace("\n", "\r\n"),
        "spaces-after-values": repx_layout.replace(",\n", " ,\n").replace("\n}", "  \n}"),
    }


@pytest.mark.nix
@pytest.mark.parametrize("layout", list(_layouts({})))
def test_every_json_layout_gives_the_same_values(script, tmp_path: Path, layout: str) -> None:
    """bash reads repx's own layout and the SLURM wrapper's compact line without jq; any
    other valid JSON goes to jq. All must give the very values, also for strings holding
    the separators the bash readers cut at (a backslash escape sends any layout to jq)."""
    params = {"text": "a: b, c", "number": -1.5e-07, "flag": True, "empty": None,
              "quote": "it's, {x}:,"}
    text = _layouts(params)[layout]
    assert json.loads(text) == params
    (tmp_path / "params.json").write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    data = tmp_path / "data.txt"
    data.write_text("payload")
    (tmp_path / "inputs.json").write_text(json_lines_text({"data": str(data)}))
    result = subprocess.run([script.executables["main"].script, str(out),
                             str(tmp_path / "inputs.json"), str(tmp_path / "params.json")],
                            capture_output=True, text=True, env={"HOME": str(tmp_path)},
                            check=False)
    assert result.returncode == 0, result.stderr
    written = (out / "result.txt").read_text().split("|")
    names = ["text", "number", "flag", "empty", "quote"]
    assert written[:5] == render_body("|".join(map(param_expansion, names)), params).split("|")
    assert written[6] == "payload"


@pytest.mark.nix
def test_out_is_cleared_except_slurm_logs_and_is_the_cwd(script, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "stale.txt").write_text("old")
    (out / ".hidden").write_text("old")
    (out / "slurm-42.out").write_text("log")
    # Every declared param, as repx writes them (a missing one is an unbound variable).
    params = {"text": "t", "number": 1, "flag": True, "empty": None, "quote": "q"}
    result = run_script(script, tmp_path, params)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["result.txt", "slurm-42.out"]


@pytest.mark.nix
def test_unreadable_input_times_out_with_a_message(script, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    inputs = tmp_path / "inputs.json"
    write_repx_json(inputs, {"data": str(tmp_path / "never.txt")})
    params = tmp_path / "params.json"
    write_repx_json(params, {})
    result = subprocess.run(
        [script.executables["main"].script, str(out), str(inputs), str(params)],
        capture_output=True, text=True, check=False,
        env={"REPX_INPUT_TIMEOUT": "2", "REPX_INPUT_POLL": "1"})
    assert result.returncode == 1
    assert "inputs not readable after 2 s: data=" in result.stderr
    assert "never.txt" in result.stderr


@pytest.mark.nix
def test_script_runs_under_set_euxo_pipefail(script) -> None:
    text = Path(script.executables["main"].script).read_text()
    assert "set -euo pipefail" in text and "set -x" in text
