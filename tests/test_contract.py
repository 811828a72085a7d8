"""The execution contract: output templates, argv, JSON files, the SLURM wrapper, job folders."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from repx.engine.contract import (
    declared_outputs,
    job_argv,
    json_lines_text,
    resolve_output,
    write_json_lines,
)
from repx.engine.slurm.scheduler import wrapper_script
from repx.errors import LabError
from repx.lab.outputs import OUTPUT_RULE
from repx.store import StoreError, layout
from repx.store.layout import JobFolders, read_units, unit_ids, units_manifest

OUT = "/store/outputs/abc-job-1/out"

# ------------------------------------------------------------------------ resolve_output


@pytest.mark.parametrize("template", ["$out", "${out}"])
def test_resolve_out_variable_alone(template: str) -> None:
    """``$out`` and ``${out}`` alone name the job's ``out/`` folder."""
    assert resolve_output(template, OUT, job="j", name="n") == OUT


@pytest.mark.parametrize(("template", "suffix"), [
    ("$out/x/y", "/x/y"),
    ("${out}/x", "/x"),
    ("${out}/x/y", "/x/y"),
    ("$out/result.csv", "/result.csv"),
])
def test_resolve_out_variable_prefix(template: str, suffix: str) -> None:
    """``$out/...`` and ``${out}/...`` are paths under ``out/``."""
    assert resolve_output(template, OUT, job="j", name="n") == OUT + suffix


def test_resolve_relative_template() -> None:
    """A relative template is relative to ``out/``."""
    assert resolve_output("a/b", OUT, job="j", name="n") == OUT + "/a/b"
    assert resolve_output("file.txt", OUT, job="j", name="n") == OUT + "/file.txt"


@pytest.mark.parametrize(("template", "path"), [
    ("$out/a/../b", "/b"),
    ("$out/./x", "/x"),
    ("$out//x", "/x"),
    ("a//b/", "/a/b"),
    ("x/..", ""),
    ("$out/", ""),
])
def test_resolve_normalises_to_a_path_under_out(template: str, path: str) -> None:
    """``.``, ``..`` that stays inside and doubled slashes resolve to the plain path."""
    assert resolve_output(template, OUT, job="j", name="n") == OUT + path


@pytest.mark.parametrize(("template", "problem"), [
    ("/abs/p", "is an absolute path"),
    ("/etc/passwd", "is an absolute path"),
    ("$out/../../escape", "climbs out of the job's $out folder"),
    ("../x", "climbs out of the job's $out folder"),
    ("a/../../x", "climbs out of the job's $out folder"),
    ("$outer", "holds a shell expansion"),
    ("$HOME/x", "holds a shell expansion"),
    ("$out/`id`", "holds a shell expansion"),
    ("~/x", "holds a shell expansion"),
    ("", "is empty"),
])
def test_resolve_rejects_a_template_outside_out(template: str, problem: str) -> None:
    """A template that does not name a file of the job's ``out/`` is a lab error naming
    the job, the output, what is wrong and the rule."""
    with pytest.raises(LabError) as info:
        resolve_output(template, OUT, job="abc-job-1", name="table")
    message = info.value.message
    assert "abc-job-1" in message and "'table'" in message
    assert problem in message
    assert OUTPUT_RULE in message


@pytest.mark.parametrize("template", [None, 3, ["$out"], {"a": 1}])
def test_resolve_non_string_raises_lab_error(template: object) -> None:
    """A template that is not a string is a lab error naming the job and the output."""
    with pytest.raises(LabError) as info:
        resolve_output(template, OUT, job="abc-job-1", name="table")
    assert "abc-job-1" in info.value.message
    assert "'table'" in info.value.message


# ------------------------------------------------------------------------ declared_outputs


def test_declared_outputs_resolves_paths_and_skips_the_scatter_shape() -> None:
    """Every path output is resolved; a scatter's ``worker__arg`` shape is left out."""
    outputs = {
        "data": "$out/data.csv",
        "dir": "${out}",
        "rel": "plots/a.png",
        "worker__arg": {"shape": ["a", "b"]},
    }
    assert declared_outputs(outputs, OUT, "j") == {
        "data": OUT + "/data.csv",
        "dir": OUT,
        "rel": OUT + "/plots/a.png",
    }


def test_declared_outputs_rejects_other_non_paths() -> None:
    """Any other non-string output is a lab error, not silently dropped."""
    with pytest.raises(LabError, match="'count' = 3 is not a path template but a number"):
        declared_outputs({"data": "$out/d", "count": 3}, OUT, "j")


def test_declared_outputs_empty() -> None:
    """No outputs, no paths."""
    assert declared_outputs({}, OUT, "j") == {}


# ------------------------------------------------------------------------ job_argv


def test_job_argv_order() -> None:
    """A job runs as ``script OUT INPUTS_JSON PARAMS_JSON``."""
    assert job_argv("/nix/s.sh", "/o", "/i.json", "/p.json") == [
        "/nix/s.sh", "/o", "/i.json", "/p.json"
    ]


# ------------------------------------------------------------------------ JSON lines


def test_json_lines_one_member_per_line() -> None:
    """Each member is one ``"key": value`` line between the braces."""
    text = json_lines_text({"a": 1, "b": "two", "c": [1, 2], "d": {"x": None}})
    assert text == '{\n "a": 1,\n "b": "two",\n "c": [1,2],\n "d": {"x":null}\n}\n'
    lines = text.splitlines()
    assert lines[0] == "{" and lines[-1] == "}"
    assert len(lines) == 6


def test_json_lines_is_valid_json() -> None:
    """The text parses back to the same mapping, nested values included."""
    mapping = {"n": 1.5, "s": 'quote " and \\ back', "nl": "line1\nline2", "l": [True, None],
               "nested": {"k": [1, {"z": "y"}]}, "e": ""}
    text = json_lines_text(mapping)
    assert json.loads(text) == mapping
    assert len(text.splitlines()) == len(mapping) + 2


def test_json_lines_keys_as_strings() -> None:
    """Non-string keys are written as strings, as JSON requires."""
    assert json.loads(json_lines_text({1: "a"})) == {"1": "a"}


def test_json_lines_empty_mapping() -> None:
    """An empty mapping is ``{}`` on one line."""
    assert json_lines_text({}) == "{}\n"
    assert json.loads(json_lines_text({})) == {}


def test_json_lines_non_ascii_kept_raw() -> None:
    """Non-ASCII text is written as is, not as ``\\u`` escapes."""
    text = json_lines_text({"clé": "naïve ∑ 日本"})
    assert '"clé": "naïve ∑ 日本"' in text
    assert "\\u" not in text
    assert json.loads(text) == {"clé": "naïve ∑ 日本"}


def test_write_json_lines_writes_the_text(tmp_path: Path) -> None:
    """``write_json_lines`` writes exactly ``json_lines_text`` in UTF-8, replacing the file."""
    path = tmp_path / "params.json"
    path.write_text("old content that is longer than the new one " * 10)
    mapping = {"α": "β", "n": 2}
    write_json_lines(str(path), mapping)
    assert path.read_text(encoding="utf-8") == json_lines_text(mapping)
    assert json.loads(path.read_bytes().decode("utf-8")) == mapping


# ------------------------------------------------------------------------ SLURM wrapper


def _wrapper() -> str:
    directives = "#SBATCH --job-name=x\n#SBATCH --output=/s/logs/%A_%a.out"
    return wrapper_script(directives, "/store/slurm/it's a table.tsv", "/store/outputs")


def test_wrapper_is_valid_bash(tmp_path: Path) -> None:
    """The generated wrapper parses with ``bash -n`` (table path with a quote included)."""
    script = tmp_path / "w.sbatch"
    script.write_text(_wrapper())
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                            timeout=10, check=False)
    assert result.returncode == 0, result.stderr


def test_wrapper_header_and_directives() -> None:
    """The wrapper is a bash script whose sbatch directives follow the shebang."""
    lines = _wrapper().splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines[1] == "#SBATCH --job-name=x"
    assert lines[2] == "#SBATCH --output=/s/logs/%A_%a.out"


def test_wrapper_quotes_table_path() -> None:
    """The table path is single-quoted so that bash reads it back unchanged."""
    line = next(x for x in _wrapper().splitlines() if x.startswith("table="))
    assert shlex.split(line[len("table="):]) == ["/store/slurm/it's a table.tsv"]


def test_wrapper_uses_job_folder_names() -> None:
    """The wrapper names the same job-folder files as :mod:`repx.store.layout`."""
    text = _wrapper()
    meta = f"$job/{layout.META}"
    assert "job='/store/outputs'/$id" in text
    for name in (layout.INPUTS_JSON, layout.PARAMS_JSON, layout.STDOUT_LOG,
                 layout.STDERR_LOG, layout.EXIT_CODE):
        assert f'"{meta}/{name}"' in text, name
    assert f'for dir in "$job" "$job/{layout.OUT}" "{meta}"; do' in text
    assert f'> "{meta}/{layout.INPUTS_JSON}"' in text
    assert f'> "{meta}/{layout.PARAMS_JSON}"' in text
    assert f'echo "$code" > "{meta}/{layout.EXIT_CODE}"' in text


def test_wrapper_runs_script_with_job_argv_order() -> None:
    """``$script`` is run with the arguments of ``job_argv``: out, inputs, params."""
    text = _wrapper()
    match = re.search(r'^("\$script".*?) \\\n', text, re.MULTILINE)
    assert match is not None
    meta = f"$job/{layout.META}"
    expected = job_argv("$script", f"$job/{layout.OUT}", f"{meta}/{layout.INPUTS_JSON}",
                        f"{meta}/{layout.PARAMS_JSON}")
    assert shlex.split(match.group(1), posix=True) == expected
    assert match.group(1) == " ".join(f'"{arg}"' for arg in expected)


def test_wrapper_reads_table_line_of_task_and_exits_with_code() -> None:
    """Task i reads rows i·pack + 1 … (i + 1)·pack of the table (one row unpacked), runs
    each row in its own subshell that exits with the script's exit code, and an unpacked
    task exits with that code (a packed task's jobs each have their own)."""
    text = _wrapper()
    assert "index=${SLURM_ARRAY_TASK_ID:-0}" in text
    assert "pack=1\n" in text and "first_row=$((index * pack + 1))" in text
    assert 'sed -n "${first_row},$((first_row + pack - 1))p" "$table"' in text
    assert "read -r -u 3 id script inputs params" in text
    row = text.split("# -- one row", 1)[1].split("# -- end of one row", 1)[0]
    assert row.rstrip().endswith('exit "$code"')
    assert text.rstrip().endswith('exit "$task_code"')


# ------------------------------------------------------------------------ JobFolders


def test_job_folders_paths(tmp_path: Path) -> None:
    """A job's folders are ``<store>/outputs/<id>/{out,repx}``; logs live in ``repx/``."""
    folders = JobFolders(tmp_path)
    root = f"{tmp_path}/{layout.OUTPUTS}"
    jid = "abc-job-1"
    assert folders.store_root == str(tmp_path)
    assert folders.outputs_root == root
    assert folders.job_dir(jid) == f"{root}/{jid}"
    assert folders.out_dir(jid) == f"{root}/{jid}/out"
    assert folders.meta_dir(jid) == f"{root}/{jid}/repx"
    assert folders.meta_file(jid, layout.EXIT_CODE) == f"{root}/{jid}/repx/exit_code"
    assert folders.logs(jid) == (f"{root}/{jid}/repx/stdout.log",
                                 f"{root}/{jid}/repx/stderr.log")


def test_job_folders_accepts_str_root() -> None:
    """A string store root gives the same paths as a Path."""
    assert JobFolders("/s").out_dir("j") == JobFolders(Path("/s")).out_dir("j") == \
        "/s/outputs/j/out"


def test_layout_names() -> None:
    """The file names of a job folder are the ones the module doc lists."""
    assert (layout.OUT, layout.META) == ("out", "repx")
    assert (layout.INPUTS_JSON, layout.PARAMS_JSON) == ("inputs.json", "params.json")
    assert (layout.STDOUT_LOG, layout.STDERR_LOG) == ("stdout.log", "stderr.log")
    assert (layout.EXIT_CODE, layout.UNITS_JSON) == ("exit_code", "units.json")
    assert layout.manifest_file("main") == "metadata__main.json"


# ------------------------------------------------------------------------ units.json


def test_units_manifest_round_trip(tmp_path: Path) -> None:
    """``units.json`` written from ``units_manifest`` reads back equal, and its ids follow."""
    branches = [({"x": 1}, {"a": "id-a0", "b": "id-b0"}), ("é", {"a": "id-a1", "b": "id-b1"})]
    manifest = units_manifest("id-scatter", branches)
    assert manifest == {
        "scatter": "id-scatter",
        "branches": [{"item": {"x": 1}, "steps": {"a": "id-a0", "b": "id-b0"}},
                     {"item": "é", "steps": {"a": "id-a1", "b": "id-b1"}}],
    }
    (tmp_path / layout.UNITS_JSON).write_text(json.dumps(manifest, ensure_ascii=False),
                                              encoding="utf-8")
    data = read_units(tmp_path, "job-1")
    assert data == manifest
    assert data is not None
    assert unit_ids(data) == ["id-scatter", "id-a0", "id-b0", "id-a1", "id-b1"]


def test_read_units_missing_file(tmp_path: Path) -> None:
    """No ``units.json`` yet: None."""
    assert read_units(tmp_path, "job-1") is None


@pytest.mark.parametrize("text", ["[1, 2]", '"s"', "3", "null"])
def test_read_units_not_an_object(tmp_path: Path, text: str) -> None:
    """JSON that is not an object is a store error naming the file and the job."""
    path = tmp_path / layout.UNITS_JSON
    path.write_text(text)
    with pytest.raises(StoreError) as info:
        read_units(tmp_path, "job-1")
    assert str(path) in info.value.message
    assert "job-1" in info.value.message


@pytest.mark.parametrize("content", [b"{not json", b"", b'{"scatter": "\xff"}'])
def test_read_units_unreadable(tmp_path: Path, content: bytes) -> None:
    """Invalid JSON (or not UTF-8) is a store error naming the file."""
    path = tmp_path / layout.UNITS_JSON
    path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        read_units(tmp_path, "job-1")
    assert str(path) in info.value.message


def test_unit_ids_ignores_malformed_parts() -> None:
    """Missing or ill-typed members contribute no ids."""
    assert unit_ids({}) == []
    assert unit_ids({"scatter": "", "branches": "no"}) == []
    units = {"scatter": 5, "branches": [7, {"steps": []}, {"steps": {"a": "", "b": 3,
                                                                     "c": "id-c"}}]}
    assert unit_ids(units) == ["id-c"]
