"""``repx.doit``: a lab's jobs as doit tasks, driven by a real ``doit`` run.

Every test runs ``python -m doit`` in a project folder (``dodo.py`` beside a lab folder, the
store and doit's dep file inside the test's tmp folder) and reads doit's own report:
``.  NAME`` for a task it executed, ``-- NAME`` for one it found up to date. What ran is also
observed by the jobs themselves (each appends a line to an execution log outside the store),
so a task that doit reports executed but that repx did not run (or the reverse) is caught.
Expected task names are spelled from ``repx list jobs --json``, not from ``repx.doit``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from repx.store import Status
from tests.buildutil import (
    CONSUMER,
    OTHER,
    PIPE,
    PRODUCER,
    SWEEP_RUN,
    list_jobs,
    log_lines,
    records,
    repx_env,
    write_lab,
)
from tests.conftest import require_nix

#: The user's dodo.py: the lab's tasks, a summary of every consumer's result (depending on
#: the lab by job ids, reading the outputs when it runs), and a copy of other's output
#: (depending on it by file_dep, which the job task's targets order).
DODO = '''
from pathlib import Path

from repx.doit import RepxLab

LAB = RepxLab("lab", store=".repx")


def task_lab():
    """The lab's jobs."""
    yield from LAB.tasks()


def summarize(target):
    results = LAB.outputs("main", stage="consumer", output="result")
    Path(target).write_text("".join(sorted(Path(p).read_text() for p in results)))


def task_summary():
    return {"actions": [(summarize, ["summary.txt"])], "targets": ["summary.txt"],
            **LAB.needs("main", stage="consumer")}


def task_copy():
    (other,) = LAB.outputs("main", stage="other", output="result")
    return {"actions": [f"cp {other} copy.txt"], "file_dep": [other],
            "targets": ["copy.txt"]}
'''


@dataclass
class DoitRun:
    """One finished ``doit`` command: exit code, output, and the tasks it reported."""

    code: int
    output: str
    #: Tasks doit executed (``.  NAME``), in order.
    executed: list[str]
    #: Tasks doit found up to date (``-- NAME``).
    up_to_date: list[str]


class Project:
    """A doit project folder: ``dodo.py``, the lab in ``lab/``, the store ``.repx``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lab = root / "lab"
        self.store = root / ".repx"
        self.log = root / "executions.log"
        self.db = root / "doit-state" / "doit.db"
        self.db.parent.mkdir(parents=True)
        (root / "dodo.py").write_text(textwrap.dedent(DODO).lstrip())

    def write_lab(self, *, sweep: str = "[ 1 2 ]", fail_other: bool = False) -> None:
        fail = 'echo "boom: no other today" >&2; exit 3' if fail_other else ""
        write_lab(self.lab, {"run.nix": SWEEP_RUN, "pipe.nix": PIPE, "producer.nix": PRODUCER,
                             "consumer.nix": CONSUMER, "other.nix": OTHER},
                  SWEEP=sweep, LOG=str(self.log), FAIL=fail)

    def doit(self, *args: str, dodo: str = "dodo.py", expect: int | None = 0) -> DoitRun:
        """``python -m doit -f DODO --db-file DB ARGS`` here; checks the exit code."""
        result = subprocess.run(
            [sys.executable, "-m", "doit", "-f", dodo, "--db-file", str(self.db), *args],
            cwd=self.root, env=repx_env(), capture_output=True, text=True, check=False,
            timeout=120)
        output = result.stdout + result.stderr
        if expect is not None and result.returncode != expect:
            pytest.fail(f"doit {' '.join(args)}: exit code {result.returncode}, expected "
                        f"{expect}\n{output}")
        lines = result.stdout.splitlines()
        return DoitRun(result.returncode, output,
                       [line[3:] for line in lines if line.startswith(".  ")],
                       [line[3:] for line in lines if line.startswith("-- ")])

    def task_names(self) -> dict[str, str]:
        """job id -> its doit task name, spelled from ``repx list jobs`` of the last build."""
        return {job["id"]: f"lab:{job['run']}/{job['stage']}/{job['id'][:8]}"
                for job in list_jobs(self.lab)}

    def executions(self) -> list[str]:
        return sorted(log_lines(self.log))


@pytest.fixture
def project(tmp_path: Path) -> Project:
    require_nix()
    if importlib.util.find_spec("doit") is None:
        pytest.fail("doit is not installed in this environment: pip install doit "
                    "(it is a dependency of repx)")
    project = Project(tmp_path)
    project.write_lab()
    return project


@pytest.mark.nix
def test_doit_runs_each_job_once_then_nothing_then_exactly_the_changed_jobs(
        project: Project) -> None:
    first = project.doit()
    names = project.task_names()
    assert len(names) == 5
    assert sorted(first.executed) == sorted([*names.values(), "summary", "copy"])
    assert first.up_to_date == []
    assert project.executions() == ["consumer 1", "consumer 2", "other", "producer 1",
                                    "producer 2"]
    assert set(r.status for r in records(project.store).values()) == {Status.SUCCEEDED}
    assert (project.root / "summary.txt").read_text() == "WORD 1\nWORD 2\n"
    assert (project.root / "copy.txt").read_text() == "other\n"
    # doit ran each job after its producer, and the user's tasks after the jobs they read.
    order = first.executed.index
    for job in list_jobs(project.lab):
        for upstream in job["depends_on"]:
            assert order(names[upstream]) < order(names[job["id"]])
    consumers = [names[j["id"]] for j in list_jobs(project.lab) if j["pname"] == "consumer"]
    assert max(map(order, consumers)) < order("summary")

    second = project.doit()
    assert second.executed == []
    assert sorted(second.up_to_date) == sorted([*names.values(), "summary", "copy"])
    assert len(project.executions()) == 5

    # A new param value: the producer of a=3 and its consumer are new jobs; nothing else is.
    project.write_lab(sweep="[ 1 3 ]")
    third = project.doit()
    after = project.task_names()
    changed = sorted(set(after) - set(names))
    assert len(changed) == 2
    assert sorted(third.executed) == sorted([after[i] for i in changed] + ["summary"])
    assert sorted(third.up_to_date) == sorted(
        [after[i] for i in after if i not in changed] + ["copy"])
    assert project.executions() == ["consumer 1", "consumer 2", "consumer 3", "other",
                                    "producer 1", "producer 2", "producer 3"]
    assert (project.root / "summary.txt").read_text() == "WORD 1\nWORD 3\n"

    assert project.doit().executed == []


@pytest.mark.nix
def test_doit_reports_lab_and_job_failures_without_a_traceback(project: Project) -> None:
    # A lab that does not build: one failing task with Nix's message; the tasks that need the
    # lab do not run. (copy reads an output path when doit loads dodo.py, so it has its own
    # dodo file here.)
    (project.root / "needs_only.py").write_text(
        (project.root / "dodo.py").read_text().split("def task_copy")[0])
    (project.lab / "other.nix").write_text("{ broken\n")
    broken = project.doit("--continue", dodo="needs_only.py", expect=2)
    assert broken.executed == ["lab:error"]
    assert "TaskFailed - taskid:lab:error" in broken.output
    assert "repx: building the lab" in broken.output and "other.nix" in broken.output
    assert "UnmetDependency - taskid:summary" in broken.output
    assert "Traceback" not in broken.output

    # The same lab read at load time (task_copy): doit stops with repx's message.
    at_load = project.doit(expect=3)
    assert "ERROR: repx: building the lab" in at_load.output
    assert "Traceback" not in at_load.output

    # A job that fails: its task fails with repx's reason and the job's stderr; the user's
    # task that needs it does not run.
    project.write_lab(fail_other=True)
    failed = project.doit("--continue", expect=2)
    (other,) = [job for job in list_jobs(project.lab) if job["pname"] == "other"]
    other_task = project.task_names()[other["id"]]
    assert f"TaskFailed - taskid:{other_task}" in failed.output
    assert f"repx: job {other['id']} (main/other) did not succeed" in failed.output
    assert "boom: no other today" in failed.output and "exit code 3" in failed.output
    assert "copy" not in failed.executed and "summary" in failed.executed
    assert records(project.store)[other["id"]].status is Status.FAILED
    assert "Traceback" not in failed.output

    # A dodo.py asking for a run the lab does not have, and one naming no lab at all.
    (project.root / "typo.py").write_text(
        "from repx.doit import RepxLab\nLAB = RepxLab('lab')\n"
        "def task_lab():\n    yield from LAB.tasks()\n"
        "def task_x():\n    return {'actions': ['true'], **LAB.needs('mian')}\n")
    typo = project.doit(dodo="typo.py", expect=3)
    assert "ERROR: repx: unknown target 'mian'" in typo.output and "runs: main" in typo.output
    (project.root / "nowhere.py").write_text(
        "from repx.doit import lab_tasks\n"
        "def task_lab():\n    yield from lab_tasks('nowhere')\n")
    nowhere = project.doit(dodo="nowhere.py", expect=1)
    assert "TaskFailed - taskid:lab:error" in nowhere.output
    assert f"repx: lab file {project.root / 'nowhere'} does not exist" in nowhere.output
    assert "Traceback" not in typo.output + nowhere.output
