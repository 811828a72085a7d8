"""Shell completion: the scripts ``repx completion`` prints, and what TAB offers in a real lab.

Completions are asked for the way a shell asks: the installed ``repx`` command run with
``_REPX_COMPLETE=<shell>_complete``, ``COMP_WORDS`` and ``COMP_CWORD``, in a folder holding a
built lab (``./result``) and a store (``./.repx``) made by a real ``repx build``; and once
through bash itself, sourcing the generated script and calling its function.

The lab has two runs, ``alpha`` (x = 1, 2) and ``beta`` (x = 3), and a group ``both``; only
``alpha`` is built, so the store holds alpha's two jobs and beta's job exists only in the lab.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from repx.lab import LabOptions, open_lab
from repx.store import Store
from tests.buildutil import repx
from tests.conftest import PIPE_ONE_STAGE, REPO, require_nix, write_files

LAB_FILES = {
    "lab.nix": """
        { pkgs, repx-lib, gitHash ? "unknown", ... }:
        let
          alpha = repx-lib.callRun ./alpha.nix [ ];
          beta = repx-lib.callRun ./beta.nix [ ];
        in
        repx-lib.mkLab {
          inherit pkgs repx-lib gitHash;
          lab_version = "1.0";
          runs = { inherit alpha beta; };
          groups = { both = [ alpha beta ]; };
        }
        """,
    "alpha.nix": """
        { pkgs, repx-lib, ... }:
        { name = "alpha"; pipelines = [ ./pipe.nix ]; params = { x = [ 1 2 ]; }; }
        """,
    "beta.nix": """
        { pkgs, repx-lib, ... }:
        { name = "beta"; pipelines = [ ./pipe.nix ]; params = { x = [ 3 ]; }; }
        """,
    "pipe.nix": PIPE_ONE_STAGE,
    "stage.nix": """
        { pkgs }:
        {
          pname = "work";
          params = { x = 1; };
          outputs = { result = "$out/result.txt"; };
          run = { outputs, params, ... }: ''
            echo "${toString params.x}" > "${outputs.result}"
          '';
        }
        """,
}


def repx_command() -> Path:
    """The installed ``repx`` script: the program the completion scripts call."""
    command = Path(sys.executable).parent / "repx"
    if not command.is_file():
        pytest.fail(f"{command} does not exist: install repx into this Python "
                    "(pip install -e .) so that the `repx` command exists")
    return command


def shell_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The user's environment, with the installed repx first on PATH and no REPX_STORE."""
    env = {k: v for k, v in os.environ.items() if k != "REPX_STORE"}
    env["PATH"] = f"{repx_command().parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    return {**env, **(extra or {})}


@dataclass
class Completion:
    """What one completion request printed (the shell's protocol, parsed)."""

    values: list[str]
    helps: dict[str, str]
    stderr: str
    seconds: float


def complete(words: list[str], cwd: Path, *, shell: str = "bash",
             env: dict[str, str] | None = None) -> Completion:
    """Ask ``repx`` for the completions of the last word of ``words`` (``""``: a new word),
    exactly as the generated script of ``shell`` does."""
    started = time.monotonic()
    result = subprocess.run(
        [str(repx_command())], cwd=cwd, capture_output=True, text=True, check=False,
        timeout=60,
        env=shell_env({"_REPX_COMPLETE": f"{shell}_complete",
                       "COMP_WORDS": " ".join(words), "COMP_CWORD": str(len(words) - 1),
                       **(env or {})}))
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    # No candidates is one empty line.
    lines = result.stdout.splitlines() if result.stdout.strip() else []
    values, helps = [], {}
    if shell == "zsh":  # type, value, help ("_" for none): three lines per item
        for kind, value, text in zip(lines[::3], lines[1::3], lines[2::3], strict=True):
            assert kind == "plain"
            values.append(value)
            helps[value] = text
    else:
        for line in lines:
            kind, _, value = line.partition(",")
            assert kind == "plain", line
            values.append(value)
    return Completion(values, helps, result.stderr, seconds)


@dataclass
class BuiltLab:
    folder: Path
    store: Path
    alpha_jobs: list[str]
    beta_jobs: list[str]


@pytest.fixture(scope="module")
def built_lab(tmp_path_factory: pytest.TempPathFactory) -> BuiltLab:
    """The two-run lab, built into ./result, with alpha's jobs run into ./.repx."""
    require_nix()
    folder = tmp_path_factory.mktemp("completion") / "lab"
    write_files(folder, LAB_FILES)
    cache = {"XDG_CACHE_HOME": str(folder.parent / "cache")}
    repx("build", "alpha", cwd=folder, env=cache)
    graph = open_lab(LabOptions(lab_dir=str(folder / "result")), validate=False)
    jobs = {run: graph.runs[run].job_ids for run in ("alpha", "beta")}
    assert len(jobs["alpha"]) == 2 and len(jobs["beta"]) == 1
    return BuiltLab(folder, folder / ".repx", jobs["alpha"], jobs["beta"])


# ------------------------------------------------------------------------ the scripts


@pytest.mark.parametrize(("shell", "registration"), [
    ("bash", "complete -o nosort -F _repx_completion repx"),
    ("zsh", "compdef _repx_completion repx"),
    ("fish", 'complete --no-files --command repx --arguments "(_repx_completion)"'),
])
def test_completion_script_for_each_shell(shell: str, registration: str,
                                          tmp_path: Path) -> None:
    result = subprocess.run([str(repx_command()), "completion", shell], cwd=tmp_path,
                            env=shell_env(), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert result.stderr == ""
    assert f"_REPX_COMPLETE={shell}_complete" in script
    assert "_repx_completion" in script
    assert registration in script
    if shell == "bash":
        syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True,
                                check=False)
        assert syntax.returncode == 0, syntax.stderr


def test_completion_of_an_unknown_shell_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run([str(repx_command()), "completion", "tcsh"], cwd=tmp_path,
                            env=shell_env(), capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "'tcsh' is not one of 'bash', 'zsh', 'fish'" in result.stderr


def test_commands_and_options_complete_without_a_lab(tmp_path: Path) -> None:
    """click's own candidates (commands, options) work anywhere; run and job arguments then
    offer nothing, silently."""
    commands = complete(["repx", "comp"], tmp_path)
    assert commands.values == ["completion"]
    assert "--keep-going" in complete(["repx", "build", "--keep"], tmp_path).values
    for words in (["repx", "status", ""], ["repx", "show", ""], ["repx", "build", "a"]):
        empty = complete(words, tmp_path)
        assert empty.values == [] and empty.stderr == "", words


# --------------------------------------------------------- runs, groups and job ids


@pytest.mark.nix
def test_runs_and_groups_complete_from_the_built_lab(built_lab: BuiltLab) -> None:
    folder = built_lab.folder
    assert sorted(complete(["repx", "status", ""], folder).values) == ["@both", "alpha",
                                                                       "beta"]
    assert complete(["repx", "viz", "@"], folder).values == ["@both"]
    assert complete(["repx", "lab", "build", "--run", "b"], folder).values == ["beta"]
    # A run already on the command line is not offered again.
    assert sorted(complete(["repx", "status", "alpha", ""], folder).values) == ["@both",
                                                                                "beta"]
    # An empty target word offers runs and groups, not the lab's every job id.
    assert sorted(complete(["repx", "build", ""], folder).values) == ["@both", "alpha",
                                                                      "beta"]


@pytest.mark.nix
def test_job_ids_complete_from_the_store_and_the_lab(built_lab: BuiltLab) -> None:
    folder = built_lab.folder
    every_job = sorted(built_lab.alpha_jobs + built_lab.beta_jobs)
    assert sorted(complete(["repx", "show", ""], folder).values) == every_job
    alpha_job, beta_job = built_lab.alpha_jobs[0], built_lab.beta_jobs[0]
    for job in (alpha_job, beta_job):
        prefix = job[:3]
        expected = sorted(j for j in every_job if j.startswith(prefix))
        assert sorted(complete(["repx", "build", prefix], folder).values) == expected
        assert sorted(complete(["repx", "cache", "rm", prefix], folder).values) == expected
    # zsh shows the help: the stored jobs' status, the lab's stage and run.
    helps = complete(["repx", "trace-params", ""], folder, shell="zsh").helps
    assert helps[alpha_job] == "work (run alpha, succeeded)"
    assert helps[beta_job] == "work (run beta)"


@pytest.mark.nix
def test_lab_and_store_options_on_the_command_line_are_used(built_lab: BuiltLab,
                                                            tmp_path: Path) -> None:
    """Elsewhere, ``--lab`` names the lab; ``--store``/REPX_STORE name the store, whose last
    build gives the lab when nothing else does."""
    lab = str(built_lab.folder / "result")
    store = str(built_lab.store)
    every_job = sorted(built_lab.alpha_jobs + built_lab.beta_jobs)
    assert sorted(complete(["repx", "list", "jobs", "--lab", lab, ""], tmp_path).values) == [
        "@both", "alpha", "beta"]
    assert sorted(complete(["repx", "status", "--store", store, ""], tmp_path).values) == [
        "@both", "alpha", "beta"]
    with_env = complete(["repx", "log", ""], tmp_path, env={"REPX_STORE": store})
    assert sorted(with_env.values) == every_job
    # A wrong --lab gives nothing, not the candidates of another lab.
    assert complete(["repx", "status", "--lab", str(tmp_path), "--store", store, ""],
                    tmp_path).values == []
    with Store(store, readonly=True) as opened:
        roots = [root.name for root in opened.roots()]
    assert roots, "repx build registers its lab as a gc root"
    assert complete(["repx", "gc", "unpin", "--store", store, ""], tmp_path).values == roots


@pytest.mark.nix
def test_completion_never_builds_and_stays_quiet(built_lab: BuiltLab,
                                                 tmp_path: Path) -> None:
    """A lab file changed since the build: TAB offers the built lab's runs and builds
    nothing (./result is untouched). A broken lab or store gives no candidates, no noise."""
    folder = tmp_path / "changed"
    shutil.copytree(built_lab.folder, folder, symlinks=True)
    lab_nix = folder / "lab.nix"
    lab_nix.write_text(lab_nix.read_text().replace("inherit alpha beta;",
                                                   "inherit alpha beta; gamma = beta;"))
    link = os.readlink(folder / "result")
    answer = complete(["repx", "build", ""], folder)
    assert sorted(answer.values) == ["@both", "alpha", "beta"]
    assert os.readlink(folder / "result") == link
    assert answer.seconds < 5, f"completion took {answer.seconds:.1f} s"

    broken = tmp_path / "broken"
    (broken / "result" / "runs").mkdir(parents=True)
    (broken / "result" / "lab.json").write_text("{not json")
    (broken / ".repx" / "db").mkdir(parents=True)
    (broken / ".repx" / "db" / "data.mdb").write_text("not an LMDB file")
    for words in (["repx", "status", ""], ["repx", "show", ""], ["repx", "gc", "unpin", ""]):
        nothing = complete(words, broken)
        assert nothing.values == [] and nothing.stderr == "", words


@pytest.mark.nix
def test_a_real_bash_session_completes_runs_and_jobs(built_lab: BuiltLab) -> None:
    """bash sources the script and calls its function the way TAB does; COMPREPLY holds
    the candidates."""
    job = built_lab.beta_jobs[0]
    script = f"""
        source <(repx completion bash)
        COMP_WORDS=(repx status ""); COMP_CWORD=2
        _repx_completion repx
        echo "runs: ${{COMPREPLY[*]}}"
        COMPREPLY=()
        COMP_WORDS=(repx show {job[:4]}); COMP_CWORD=2
        _repx_completion repx
        echo "jobs: ${{COMPREPLY[*]}}"
    """
    result = subprocess.run(["bash", "-c", script], cwd=built_lab.folder, env=shell_env(),
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert sorted(lines[0].removeprefix("runs: ").split()) == ["@both", "alpha", "beta"]
    every_job = built_lab.alpha_jobs + built_lab.beta_jobs
    expected = sorted(j for j in every_job if j.startswith(job[:4]))
    assert sorted(lines[1].removeprefix("jobs: ").split()) == expected
