"""The original RepX's command line works on repx: each alias and option, for real.

One lab is built and run once for the module (``repx run … --continue-on-failure``): a run
``hyper-sweep`` (key ``sweep`` in lab.nix) of gen -> train -> evaluate over lr = 0.1, 0.5,
where train fails for lr 0.5, and a run ``later`` that shares gen and is never built. So the
store holds every state ``list jobs --status`` knows: succeeded, failed, blocked (evaluate
of 0.5), pending (later's report: its input gen succeeded). Every other test reads that
store through the real CLI (a subprocess, as a user types it).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from repx.errors import LabError
from repx.report.lab_views import tail_offset
from tests.buildutil import repx
from tests.conftest import REPO, require_nix, write_files

LAB = {
    "lab.nix": """
        { pkgs, repx-lib, gitHash ? "unknown", ... }:
        repx-lib.mkLab {
          inherit pkgs repx-lib gitHash;
          lab_version = "1.0";
          runs = {
            sweep = repx-lib.callRun ./run-sweep.nix [ ];
            later = repx-lib.callRun ./run-later.nix [ ];
          };
        }
    """,
    "run-sweep.nix": """
        { pkgs, repx-lib, ... }:
        { name = "hyper-sweep"; pipelines = [ ./pipe.nix ]; params = { lr = [ "0.1" "0.5" ]; }; }
    """,
    "run-later.nix": """
        { pkgs, repx-lib, ... }:
        { name = "later"; pipelines = [ ./pipe-later.nix ]; params = { }; }
    """,
    "pipe.nix": """
        { repx, ... }:
        repx.mkPipe rec {
          gen = repx.callStage ./gen.nix [ ];
          train = repx.callStage ./train.nix [ gen ];
          evaluate = repx.callStage ./evaluate.nix [ train ];
        }
    """,
    "pipe-later.nix": """
        { repx, ... }:
        repx.mkPipe rec {
          gen = repx.callStage ./gen.nix [ ];
          report = repx.callStage ./report.nix [ gen ];
        }
    """,
    "gen.nix": """
        { pkgs }:
        {
          pname = "gen";
          params = { seed = 7; };
          outputs = { data = "$out/data.txt"; };
          run = { outputs, params, ... }: ''
            seq 1 ${toString params.seed} > "${outputs.data}"
          '';
        }
    """,
    # 30 lines of stdout ("epoch 1" … "epoch 30") for `repx log -n`; lr 0.5 fails at once
    # while lr 0.1 takes a second, so a fail-fast build never starts evaluate of 0.1.
    "train.nix": """
        { pkgs }:
        {
          pname = "train";
          params = { lr = "0.1"; };
          inputs = { data = ""; };
          outputs = { model = "$out/model.txt"; summary = "$out/results/summary.csv"; };
          run = { inputs, outputs, params, ... }: ''
            lr="${toString params.lr}"
            if [ "$lr" = 0.5 ]; then
              echo "diverged at lr $lr" >&2
              exit 1
            fi
            for i in $(seq 1 30); do echo "epoch $i"; done
            sleep 1
            mkdir -p "$(dirname "${outputs.summary}")"
            printf 'lr,loss\\n%s,0.25\\n' "$lr" > "${outputs.summary}"
            wc -l < "${inputs.data}" > "${outputs.model}"
          '';
        }
    """,
    "evaluate.nix": """
        { pkgs }:
        {
          pname = "evaluate";
          inputs = { model = ""; };
          outputs = { score = "$out/score.txt"; };
          run = { inputs, outputs, ... }: ''
            cat "${inputs.model}" > "${outputs.score}"
          '';
        }
    """,
    "report.nix": """
        { pkgs }:
        {
          pname = "report";
          inputs = { data = ""; };
          outputs = { report = "$out/report.txt"; };
          run = { inputs, outputs, ... }: ''
            cat "${inputs.data}" > "${outputs.report}"
          '';
        }
    """,
}


@dataclass
class Ran:
    """The module's lab after one `repx run hyper-sweep --continue-on-failure`."""

    folder: Path
    store: Path
    build: dict
    #: (stage, lr or None) -> job id
    ids: dict[tuple[str, str | None], str]

    def cli(self, *args: str, check: bool = True, store: bool = True):
        """``repx ARGS`` in the lab's folder (with ``--store``, unless ``store`` is False)."""
        more = ("--store", str(self.store)) if store else ()
        return repx(*args, *more, cwd=self.folder, check=check)


def _job_ids(folder: Path) -> dict[tuple[str, str | None], str]:
    """Each job by its stage and the lr of its train job (evaluate declares no lr)."""
    jobs = {j["id"]: j for j in json.loads(repx("list", "jobs", "--json", cwd=folder).stdout)}

    def lr(job: dict) -> str | None:
        if "lr" in job["params"]:
            return job["params"]["lr"]
        return next((lr(jobs[up]) for up in job["depends_on"] if lr(jobs[up])), None)

    return {(j["stage"], lr(j)): j["id"] for j in jobs.values()}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    require_nix()
    folder = tmp_path_factory.mktemp("compat")
    write_files(folder, LAB)
    store = folder / "store"
    result = repx("run", "hyper-sweep", "--continue-on-failure", "-j", "2", "--json",
                  "--store", str(store), cwd=folder, check=False)
    assert result.returncode == 1, result.stderr  # train of lr 0.5 fails
    return Ran(folder, store, json.loads(result.stdout), _job_ids(folder))


# ------------------------------------------------------------------- run, -k aliases


@pytest.mark.nix
def test_run_is_build_and_continue_on_failure_is_keep_going(ran: Ran, tmp_path: Path) -> None:
    ids = ran.ids
    assert sorted(ran.build["executed"]) == sorted(
        [ids["gen", None], ids["train", "0.1"], ids["evaluate", "0.1"]])
    assert ran.build["failed"] == [ids["train", "0.5"]]
    assert ran.build["blocked"] == [ids["evaluate", "0.5"]]
    assert ids["report", None] not in ran.build["executed"]  # the other run was not asked for

    # Without it, the same build stops starting jobs at the failure: evaluate of 0.1
    # (ready a second after train of 0.5 failed) never starts.
    fail_fast = repx("run", "hyper-sweep", "-j", "2", "--json", "--store",
                     str(tmp_path / "store"), cwd=ran.folder, check=False)
    assert fail_fast.returncode == 1
    assert ids["evaluate", "0.1"] in json.loads(fail_fast.stdout)["not_started"]

    help_text = repx("run", "--help", cwd=ran.folder).stdout
    assert "Alias of `repx build`" in help_text and "--continue-on-failure" in help_text


# -------------------------------------------------------------------------- list jobs


@pytest.mark.nix
def test_list_jobs_status_filters_and_shows_every_state(ran: Ran) -> None:
    ids = ran.ids
    expected = {
        "succeeded": {ids["gen", None], ids["train", "0.1"], ids["evaluate", "0.1"]},
        "failed": {ids["train", "0.5"]},
        "blocked": {ids["evaluate", "0.5"]},
        "pending": {ids["report", None]},
    }
    for state, wanted in expected.items():
        jobs = json.loads(ran.cli("list", "jobs", "--status", state, "--json").stdout)
        assert {j["id"] for j in jobs} == wanted, state
        assert {j["status"] for j in jobs} == {state}
    both = json.loads(ran.cli("list", "jobs", "--status", "failed", "--status", "blocked",
                              "--json").stdout)
    assert {j["id"] for j in both} == expected["failed"] | expected["blocked"]
    table = ran.cli("list", "jobs", "hyper-sweep", "--status", "failed").stdout.splitlines()
    assert table[0].split() == ["JOB", "RUN", "STAGE", "STATUS", "PARAMS"]
    assert table[1].split()[:4] == [ids["train", "0.5"], "hyper-sweep", "train", "failed"]
    bad = ran.cli("list", "jobs", "--status", "done", check=False)
    assert bad.returncode == 2 and "'done' is not one of" in bad.stderr


@pytest.mark.nix
def test_list_jobs_param_columns_are_effective_params(ran: Ran) -> None:
    """evaluate declares no params: lr comes from its train job, seed from gen."""
    ids = ran.ids
    lines = ran.cli("list", "jobs", "-s", "evaluate", "-p", "lr", "--param", "seed",
                    "-p", "nosuch").stdout.splitlines()
    assert lines[0].split() == ["JOB", "RUN", "STAGE", "LR", "SEED", "NOSUCH"]
    rows = {line.split()[0]: line.split()[3:] for line in lines[1:-1]}
    assert rows == {ids["evaluate", "0.1"]: ["0.1", "7", "-"],
                    ids["evaluate", "0.5"]: ["0.5", "7", "-"]}
    jobs = json.loads(ran.cli("list", "jobs", "-s", "evaluate", "-p", "lr", "--json").stdout)
    assert {j["id"]: j["effective_params"] for j in jobs} == {
        ids["evaluate", "0.1"]: {"seed": 7, "lr": "0.1"},
        ids["evaluate", "0.5"]: {"seed": 7, "lr": "0.5"}}


@pytest.mark.nix
def test_list_jobs_output_paths_are_the_jobs_out_folders(ran: Ran) -> None:
    ids = ran.ids
    lines = ran.cli("list", "jobs", "hyper-sweep", "-s", "train",
                    "--output-paths").stdout.splitlines()
    assert lines[0].split()[-2:] == ["OUTPUT", "PATH"]
    paths = {line.split()[0]: line.split()[-1] for line in lines[1:-1]}
    ran_ok = ran.store / "outputs" / ids["train", "0.1"] / "out"
    assert paths[ids["train", "0.1"]] == str(ran_ok)
    assert (Path(paths[ids["train", "0.1"]]) / "model.txt").read_text().strip() == "7"
    jobs = json.loads(ran.cli("list", "jobs", "-s", "evaluate", "--output-paths",
                              "--json").stdout)
    by_id = {j["id"]: j["output_path"] for j in jobs}
    assert by_id[ids["evaluate", "0.5"]] is None  # blocked: never ran
    assert by_id[ids["evaluate", "0.1"]] == str(ran.store / "outputs" / ids["evaluate", "0.1"]
                                                / "out")


@pytest.mark.nix
def test_list_jobs_group_by_stage(ran: Ran) -> None:
    text = ran.cli("list", "jobs", "hyper-sweep", "-g").stdout
    headers = [line for line in text.splitlines() if line.startswith("[")]
    assert headers == ["[gen] 1 job (pname gen)", "[train] 2 jobs (pname train)",
                       "[evaluate] 2 jobs (pname evaluate)"]
    grouped = json.loads(ran.cli("list", "jobs", "--group-by-stage", "--json").stdout)
    assert {stage: len(jobs) for stage, jobs in grouped.items()} == {
        "gen": 1, "train": 2, "evaluate": 2, "report": 1}


@pytest.mark.nix
def test_an_unknown_stage_is_an_error_listing_the_stages(ran: Ran) -> None:
    result = ran.cli("list", "jobs", "--stage", "trian", check=False)
    assert result.returncode == 2
    assert "unknown stage 'trian'" in result.stderr
    listed = result.stderr.split("stages: ", 1)[1].strip().split(", ")
    assert sorted(listed) == ["evaluate", "gen", "report", "train"]
    # A stage of the lab that the selected run does not have: the run's stages are listed.
    result = ran.cli("list", "jobs", "hyper-sweep", "-s", "report", check=False)
    assert result.returncode == 2 and "the selected jobs" in result.stderr
    assert sorted(result.stderr.split("stages: ", 1)[1].strip().split(", ")) == [
        "evaluate", "gen", "train"]


# --------------------------------------------------------------------------- list deps


@pytest.mark.nix
def test_list_deps_is_the_tree_of_upstream_jobs(ran: Ran) -> None:
    ids = ran.ids
    lines = ran.cli("list", "deps", ids["evaluate", "0.5"][:8]).stdout.splitlines()
    assert lines == [
        f"{ids['evaluate', '0.5']}  [evaluate]  blocked",
        f"  {ids['train', '0.5']}  [train]  failed",
        f"    {ids['gen', None]}  [gen]  succeeded",
        "2 upstream jobs",
    ]
    tree = json.loads(ran.cli("list", "dependencies", ids["evaluate", "0.1"], "--json").stdout)
    assert tree["id"] == ids["evaluate", "0.1"] and tree["status"] == "succeeded"
    (train,) = tree["depends_on"]
    assert (train["id"], train["status"]) == (ids["train", "0.1"], "succeeded")
    assert [g["id"] for g in train["depends_on"]] == [ids["gen", None]]


# -------------------------------------------------------------------------- show output


@pytest.mark.nix
def test_show_output_lists_prints_and_gives_paths(ran: Ran) -> None:
    job = ran.ids["train", "0.1"]
    out = ran.store / "outputs" / job / "out"
    listing = ran.cli("show", "output", job[:6]).stdout.splitlines()
    assert listing[0] == f"output folder {out}"
    assert [line.split()[0] for line in listing[1:]] == ["model.txt", "results/",
                                                         "results/summary.csv"]
    assert ran.cli("show", "output", job, "results/summary.csv").stdout == "lr,loss\n0.1,0.25\n"
    assert ran.cli("show", "output", job, "results").stdout.splitlines()[1].split()[0] == (
        "summary.csv")
    assert ran.cli("show", "output", job, "--path").stdout.strip() == str(out)
    assert ran.cli("show", "output", job, "model.txt", "--path").stdout.strip() == str(
        out / "model.txt")
    # `repx show JOB` is `repx show job JOB`.
    assert ran.cli("show", job).stdout == ran.cli("show", "job", job).stdout


@pytest.mark.nix
def test_show_output_never_leaves_the_output_folder(ran: Ran, tmp_path: Path) -> None:
    job = ran.ids["train", "0.1"]
    out = ran.store / "outputs" / job / "out"
    secret = tmp_path / "secret.txt"
    secret.write_text("not the job's\n")
    link = out / "elsewhere"
    os.symlink(secret, link)
    try:
        for path, why in (("../repx/stdout.log", "outside the job's output folder"),
                          ("elsewhere", "outside the job's output folder"),
                          (str(secret), "is an absolute path")):
            result = ran.cli("show", "output", job, path, check=False)
            assert result.returncode == 2, path
            assert why in result.stderr and "not the job's" not in result.stdout, path
    finally:
        link.unlink()
    missing = ran.cli("show", "output", job, "nosuch.csv", check=False)
    assert missing.returncode == 2
    assert "has no output 'nosuch.csv'" in missing.stderr and "results/summary.csv" in (
        missing.stderr)
    blocked = ran.cli("show", "output", ran.ids["evaluate", "0.5"], check=False)
    assert blocked.returncode == 2 and "has no output folder yet" in blocked.stderr


# ---------------------------------------------------------------------------------- log


@pytest.mark.nix
def test_log_lines_prints_the_last_lines(ran: Ran) -> None:
    job = ran.ids["train", "0.1"]
    epochs = [f"epoch {i}" for i in range(1, 31)]
    assert ran.cli("log", job).stdout.splitlines() == epochs
    assert ran.cli("log", job, "-n", "3").stdout.splitlines() == epochs[-3:]
    assert ran.cli("log", job, "--lines", "100").stdout.splitlines() == epochs
    assert ran.cli("log", job, "-n", "0").stdout == ""
    # -f on a finished job: the last lines, then it returns.
    assert ran.cli("log", job, "-n", "2", "-f").stdout.splitlines() == epochs[-2:]
    failed = ran.cli("log", ran.ids["train", "0.5"], "--stderr", "-n", "2").stdout
    assert failed.splitlines() == ["diverged at lr 0.5", "+ exit 1"]  # the set -x trace


def test_tail_offset_counts_lines_from_the_end(tmp_path: Path) -> None:
    log = tmp_path / "log"
    for text in (b"", b"a\n", b"a\nbb\nccc\n", b"a\nbb\nccc", b"\n\n\n", b"x" * 50 + b"\ny\n"):
        log.write_bytes(text)
        lines = text.splitlines(keepends=True)
        for n in range(len(lines) + 2):
            for block in (1, 3, 1 << 16):  # blocks smaller than a line, than the file
                start = tail_offset(log, n, block=block)
                want = b"".join(lines[-n:]) if n else b""
                assert text[start:] == want, (text, n, block)
    assert tail_offset(tmp_path / "missing", 5) == 0


# ------------------------------------------------------------------------ trace-params


@pytest.mark.nix
def test_trace_params_without_a_job_traces_every_job(ran: Ran) -> None:
    ids = ran.ids
    every = json.loads(ran.cli("trace-params", "--json", store=False).stdout)
    assert set(every) == set(ids.values())
    assert every[ids["evaluate", "0.5"]]["effective"] == {"seed": 7, "lr": "0.5"}
    assert every[ids["train", "0.1"]]["params"]["lr"] == {"value": "0.1",
                                                          "source": "sweep:lr"}
    one = json.loads(ran.cli("trace-params", ids["train", "0.1"], "--json", store=False).stdout)
    assert one == every[ids["train", "0.1"]]
    text = ran.cli("trace-params", store=False).stdout
    for job_id in ids.values():
        assert f"job {job_id} (" in text


# ------------------------------------------------------------------ lab build --run NAME


@pytest.mark.nix
def test_lab_build_run_takes_the_run_name_or_its_key(ran: Ran) -> None:
    by_name = json.loads(repx("lab", "build", "--run", "hyper-sweep", "-o", "by-name",
                              "--json", cwd=ran.folder).stdout)
    by_key = json.loads(repx("lab", "build", "--run", "sweep", "-o", "by-key", "--json",
                             cwd=ran.folder).stdout)
    assert by_name == by_key
    assert by_name["runs"] == {"hyper-sweep": 5}
    unknown = repx("lab", "build", "--run", "nosuch", "-o", "x", cwd=ran.folder, check=False)
    assert unknown.returncode == 2
    assert "no run 'nosuch'" in unknown.stderr and '"hyper-sweep"' in unknown.stderr


# ----------------------------------------------------------------------- the awk hint

AWK_STAGE = """
{{ pkgs }}:
{{
  pname = "work";
  outputs = {{ result = "$out/result.txt"; }};
  {deps}
  run = {{ outputs, ... }}: ''
    echo "1 2" | awk '{{ print $2 }}' > "${{outputs.result}}"
  '';
}}
"""


@pytest.mark.nix
def test_a_missing_awk_is_found_in_pkgs_gawk(make_lab, build, tmp_path: Path) -> None:
    """Both ways to miss awk point at the package nixpkgs has, pkgs.gawk (there is no
    pkgs.awk): a script calling awk without it, and runDependencies = [ pkgs.awk ] with a
    package set that (like nixpkgs) has no such attribute."""
    run = ('{ pkgs, repx-lib, ... }:\n'
           '{ name = "main"; pipelines = [ ./pipe.nix ]; params = { }; }\n')
    folder = make_lab({"run.nix": run, "stage.nix": AWK_STAGE.format(deps="")})
    with pytest.raises(LabError) as caught:
        build(folder)
    assert "awk" in caught.value.message
    assert "runDependencies = [ pkgs.gawk ];" in caught.value.message

    nixpkgs = tmp_path / "nixpkgs"
    nixpkgs.mkdir()
    (nixpkgs / "default.nix").write_text(
        f'{{ ... }}: removeAttrs (import {REPO / "nix" / "pkgs"} {{ }}) [ "awk" ]\n')
    folder = make_lab({"run.nix": run,
                       "stage.nix": AWK_STAGE.format(deps="runDependencies = [ pkgs.awk ];")})
    with pytest.raises(LabError) as caught:
        build(folder, nixpkgs=str(nixpkgs))
    message = caught.value.message
    assert "attribute 'awk' missing" in message
    assert "'awk' is a command, not a package: it is in pkgs.gawk" in message

    # With it, the lab builds.
    folder = make_lab({"run.nix": run,
                       "stage.nix": AWK_STAGE.format(deps="runDependencies = [ pkgs.gawk ];")})
    assert len(build(folder)) == 1


def test_shutil_which_finds_gawk() -> None:
    """The lab above needs a gawk on this machine (the host package set exposes it)."""
    if shutil.which("gawk") is None and shutil.which("awk") is None:
        pytest.fail("neither gawk nor awk is installed: apt-get install gawk")
