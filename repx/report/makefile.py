"""``repx makefile``: the lab's jobs as a Makefile, for people whose workflow is ``make``.

Every job is a target: a stamp file in the store, ``<store>/outputs/<job-id>/repx/make.stamp``,
written by ``repx build --make-stamps`` for every job the build leaves done. Each run is one
recipe, one ``repx build`` of the run's jobs::

    <store>/make/<run>-<hash>.stamp: <the run's job stamps> <the stamps of runs it needs>
            +$(REPX) build --lab <built lab> --store <store> --quiet --make-stamps RUN
            @mkdir -p $(@D) && touch $@

and each job stamp has an empty rule (``stamp: ;``): an existing stamp is up to date, a
missing one (a new job, a failed one, one ``repx cache rm`` removed) makes make remake the
run's stamp, i.e. run the recipe, and repx runs only what the store lacks.

Why one recipe per run and not one per job: a recipe that starts Python, loads the lab and
opens the store costs ~0.4 s, so a recipe per job made a 1 000-job lab 46x slower under make
than ``repx build``. One ``repx build`` per run pays that once and schedules the run's jobs
itself, and the ``+`` hands it make's jobserver (:mod:`repx.engine.jobserver`): ``make -jN``
still bounds everything that runs, the run's jobs and the Makefile's other rules together.
make orders the runs (a run's stamp depends on the stamps of the runs it reads or depends
on), repx the jobs within one. Why not a grouped target (``stamps… &: ; recipe``): make keeps,
for each member, the list of all the others, so memory grows with the square of the run's
size (5 GB for a 20 000-job run).

What make users rely on still holds:

* one target per job (a phony ``<job-id>`` building just that job and its upstream; its
  stamp), one per run (``make RUN``), and the paths of the jobs' outputs as targets
  (``$(call repx_output,RUN,STAGE,OUTPUT)``, each standing for its run's stamp) that the
  user's own rules can depend on, with make's usual mtimes;
* a second ``make`` finds every stamp in place and every run's stamp newer than its jobs',
  and runs nothing;
* ``make -k`` passes ``--keep-going`` (every job not downstream of a failure runs; the run's
  stamp is not touched, its failed job has no stamp), and without ``-k`` the build stops at
  the first failure, as make would;
* ``make -n`` runs ``repx build --dry-run`` (make executes ``+`` lines even then), which
  prints what would run and runs nothing; without ``-j`` one job runs at a time.

Why the job stamp lives in the job's own store folder: ``repx cache rm`` and ``repx gc``
delete that folder with the record, so the stamp can never claim a job the store no longer
holds. A job that ``repx build`` ran has no stamp yet; its run's recipe finds it up to date
and writes it. Job ids already cover everything a job depends on, so make's mtimes between
jobs are not relied on; the run stamps only order the recipes.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from blake3 import blake3

from repx.display import plural
from repx.engine.contract import declared_outputs
from repx.errors import UsageError
from repx.lab.graph import JobGraph, selection_closure
from repx.store import layout

#: The stamp of a job, relative to its folder ``<store>/outputs/<id>``.
STAMP = f"{layout.META}/{layout.MAKE_STAMP}"

#: The folder of the store holding the stamps of the runs' recipes (the store ignores it).
RUN_STAMPS = "make"

#: Starts the comment above each job's phony target (one per job of the Makefile).
JOB_TARGET_MARK = "\n# job: "

#: Characters make cannot take in a target path (it would split or reinterpret it).
_UNSAFE_PATH = re.compile(r"[\s:#=%;\\$'\"*?\[\]()|&<>`]")

#: What a run, stage or output name may hold to be part of a make variable name.
_VARIABLE_SAFE = re.compile(r"[A-Za-z0-9_.+@-]+")

#: Targets of the generated Makefile that a run may not be named after.
_RESERVED = {"all", "status", "list", "clean"}


def default_repx_command() -> str:
    """How recipes call repx: this Python interpreter running this repx (so a Makefile made
    from a virtualenv works without activating it), through the package's ``__main__``
    (``python -m repx``, the documented spelling, whose Ctrl-C is quiet from its first line
    on: :mod:`repx.console`)."""
    return f"{shlex.quote(sys.executable)} -m repx"


def _make_escape(text: str) -> str:
    """Text for a make recipe or variable value (``$`` is make's own)."""
    return text.replace("$", "$$")


def _var_name(run: str, taken: set[str], prefix: str = "RUN_") -> str:
    """A make variable name for ``run``'s list, unique among ``taken``."""
    base = prefix + re.sub(r"[^A-Za-z0-9_]", "_", run)
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def _group_of_jobs(graph: JobGraph, closure: list[str], runs_drawn: list[str]
                   ) -> dict[str, list[str]]:
    """Run -> the jobs its recipe builds: each job of the closure in the first run drawn
    that holds it (a job shared by runs is one make target, so it is in one group)."""
    in_closure = set(closure)
    groups: dict[str, list[str]] = {}
    seen: set[str] = set()
    for run in runs_drawn:
        ids = [i for i in graph.runs[run].job_ids if i in in_closure and i not in seen]
        seen.update(ids)
        if ids:
            groups[run] = ids
    return groups


def makefile_text(
    graph: JobGraph,
    *,
    store_dir: Path,
    targets: Iterable[str] = (),
    repx_command: str | None = None,
) -> str:
    """The Makefile for the jobs of ``targets`` (runs, @groups, job ids; default every run)
    and everything they need."""
    lab_dir = str(graph.lab.path)
    store = str(store_dir)
    for what, path in (("store", store), ("lab", lab_dir)):
        if _UNSAFE_PATH.search(path):
            raise UsageError(f"the {what} path {path!r} has characters make cannot use in "
                             "target names (spaces, ':', '#', '$', quotes…); use a "
                             f"{what} path without them")
    targets = list(targets)
    closure = selection_closure(graph, targets)
    in_closure = set(closure)
    repx_command = repx_command or default_repx_command()

    runs_drawn = [r for r in graph.runs if any(i in in_closure for i in graph.runs[r].job_ids)]
    groups = _group_of_jobs(graph, closure, runs_drawn)
    owner = {job_id: run for run, ids in groups.items() for job_id in ids}
    taken: set[str] = set()
    group_vars = {run: _var_name(run, taken, "GROUP_") for run in groups}
    run_stamps = {run: _run_stamp(run, ids) for run, ids in groups.items()}

    def stamp(job_id: str) -> str:
        return f"$(S)/{job_id}/{STAMP}"

    def owners(job_ids: Iterable[str]) -> list[str]:
        """The run stamps that stand for ``job_ids`` (the recipes that build them)."""
        return [run_stamps[r] for r in dict.fromkeys(owner[i] for i in job_ids
                                                     if i in owner)]

    out: list[str] = []
    add = out.append
    add(f"# Generated by `repx makefile{''.join(' ' + shlex.quote(t) for t in targets)}`: "
        "one target per job and per run of the lab")
    add(f"#   {lab_dir}")
    add("# Run it with `make -j4 -f THIS_FILE` (or `make -f THIS_FILE RUN`); regenerate it")
    add("# after changing the lab (`repx makefile > lab.mk`): it names the jobs of this build")
    add("# of the lab only. Each run is one recipe, a `repx build` of its jobs that takes its")
    add("# slots from make's jobserver (`+`) and touches the stamp of every job it leaves")
    add(f"# done, <store>/outputs/<job-id>/{STAMP}, then the run's stamp in <store>/{RUN_STAMPS}/.")
    add("")
    add(f"REPX ?= {_make_escape(repx_command)}")
    add(f"LAB := {lab_dir}")
    add(f"STORE := {store}")
    add("S := $(STORE)/outputs")
    add("# make's -k, -n and -j reach repx: --keep-going, --dry-run, and one job at a time")
    add("# when make runs without -j (with -jN, make's jobserver hands repx its slots).")
    add("REPX_MAKE_FLAGS = $(if $(findstring k,$(firstword -$(MAKEFLAGS))),--keep-going) \\")
    add("  $(if $(findstring n,$(firstword -$(MAKEFLAGS))),--dry-run) \\")
    add("  $(if $(findstring --jobserver-,$(MAKEFLAGS)),,$(if $(filter -j,$(MAKEFLAGS)),,-j1))")
    add("REPX_BUILD = $(REPX) build --lab $(LAB) --store $(STORE) --quiet --make-stamps "
        "$(REPX_MAKE_FLAGS)")
    add("# `make Q=` shows the full repx command of each recipe.")
    add("Q ?= @")
    add("# $(call repx_output,RUN,STAGE,OUTPUT): the paths of output OUTPUT of every job of")
    add("# STAGE in RUN (a sweep has one per combination); $(call repx_run,RUN): the stamp of")
    add("# the run, newer than its jobs once they are all done. Both are targets a rule of")
    add("# yours can depend on.")
    add("repx_output = $(or $(REPX_OUT.$(1).$(2).$(3)),$(error repx_output: run '$(1)' has no "
        "stage '$(2)' with an output '$(3)' in this Makefile))")
    add("repx_run = $(or $(REPX_RUN.$(1)),$(error repx_run: no run '$(1)' in this Makefile))")
    add("")
    add(".SUFFIXES:")
    run_targets = [r for r in runs_drawn if r not in _RESERVED and not _UNSAFE_PATH.search(r)]
    job_targets = [i for i in closure if not _UNSAFE_PATH.search(i)
                   and i not in _RESERVED and i not in graph.runs]
    add(".PHONY: " + " ".join(["all", "status", *run_targets]))
    add("")
    for run, ids in groups.items():
        _add_list(add, group_vars[run], [stamp(i) for i in ids])
    run_members = {run: [i for i in graph.runs[run].job_ids if i in in_closure]
                   for run in runs_drawn}
    for run in runs_drawn:
        if _make_name(run):
            add(f"REPX_RUN.{run} := " + " ".join(owners(run_members[run])))
    stage_outputs: dict[tuple[str, str, str], list[str]] = {}
    output_rules: dict[str, str] = {}
    for job_id in closure:
        job = graph.jobs[job_id]
        outputs = declared_outputs(job.outputs, f"$(S)/{job_id}/out", job_id)
        safe = {name: path for name, path in outputs.items()
                if not _UNSAFE_PATH.search(path.replace("$(S)", ""))}
        for path in safe.values():
            output_rules.setdefault(path, run_stamps[owner[job_id]])
        for run in job.runs:
            if run in run_members:
                for name, path in safe.items():
                    stage_outputs.setdefault((run, job.pname, name), []).append(path)
    for (run, pname, name), paths in stage_outputs.items():
        if _make_name(run) and _make_name(pname) and _make_name(name):
            _add_list(add, f"REPX_OUT.{run}.{pname}.{name}", paths)
    add("")
    selected = [job.id for job in graph.select(targets)] if targets else closure
    add("all: " + " ".join(owners(selected)))
    for run in run_targets:
        add(f"{run}: " + " ".join(owners(run_members[run])))
    add("status:")
    add("\t$(REPX) status --lab $(LAB) --store $(STORE)")
    add("")
    for run, ids in groups.items():
        own = set(ids)
        outside: list[str] = []
        for job_id in ids:
            job = graph.jobs[job_id]
            outside.extend(d for d in job.depends_on if d not in own)
            dependency_runs = [r for r, _kind in job.inter_run]
            dependency_runs += [r for r, _kind in graph.runs[run].dependencies]
            for dep_run in dict.fromkeys(dependency_runs):
                outside.extend(i for i in run_members.get(dep_run, ()) if i not in own)
        needs = [s for s in owners(outside) if s != run_stamps[run]]
        whole_run = graph.runs[run].job_ids == ids
        what = shlex.quote(run) if whole_run and _make_name(run) else " ".join(ids)
        add(f"# run {run}: {len(ids)} job{'s' if len(ids) != 1 else ''}; its jobs' stamps "
            "stand for themselves (missing: the run is remade)")
        add(f"$({group_vars[run]}): ;")
        add(f"{run_stamps[run]}: $({group_vars[run]})" + "".join(" " + n for n in needs))
        add(f"\t@echo 'repx: {_echo_text(run)} ({plural(len(ids), 'job')})'")
        add(f"\t+$(Q)$(REPX_BUILD) {what}")
        add("\t@mkdir -p $(@D) && touch $@")
    add("")
    add("# One job (and what it needs): `make -f THIS_FILE JOB-ID`.")
    add(".PHONY: " + " ".join(job_targets))
    for job_id in job_targets:
        job = graph.jobs[job_id]
        add(f"{JOB_TARGET_MARK.strip()} {job.run} / {job.pname}"
            + (f" {_params_comment(job.params)}" if job.params else ""))
        add(f"{job_id}:")
        add(f"\t+$(Q)$(REPX_BUILD) {job_id}")
    add("")
    add("# Each declared output stands for its run's stamp: done when the run is.")
    for path, owner_stamp in output_rules.items():
        add(f"{path}: {owner_stamp} ;")
    return "\n".join(out) + "\n"


def _run_stamp(run: str, job_ids: list[str]) -> str:
    """Where the stamp of the recipe building ``job_ids`` of ``run`` lives: named after the
    run and those jobs, so Makefiles of other selections or other builds of the lab never
    take each other's stamps."""
    digest = blake3("\n".join(job_ids).encode()).hexdigest()[:12]
    return f"$(STORE)/{RUN_STAMPS}/{re.sub(r'[^A-Za-z0-9_.-]', '_', run)}-{digest}.stamp"


def _add_list(add: Callable[[str], None], name: str, items: list[str]) -> None:
    """``NAME := item item …``, one item a line."""
    add(f"{name} := \\")
    for n, item in enumerate(items):
        add(f"  {item}" + (" \\" if n < len(items) - 1 else ""))


def _make_name(text: str) -> bool:
    """Whether ``text`` can be part of a make variable name and a ``$(call)`` argument."""
    return bool(_VARIABLE_SAFE.fullmatch(text))


def _echo_text(text: str) -> str:
    """Text safe inside the recipe's single-quoted ``echo`` (and for make)."""
    return re.sub(r"[^A-Za-z0-9_.,+=@/-]", "_", text)


def _params_comment(params: dict[str, object]) -> str:
    # A comment ending in a backslash would swallow the next line: no backslashes.
    text = " ".join(f"{k}={v}" for k, v in params.items())
    text = text.replace("\n", " ").replace("\\", "/")
    return text if len(text) <= 100 else text[:99] + "…"
