"""``repx viz``, ``repx makefile`` and ``repx init``: the tools around a build.

Thin commands over :mod:`repx.report.viz`, :mod:`repx.report.makefile` and
:mod:`repx.lab.scaffold`, written like :mod:`repx.cli.store` (shared lab and store options,
one-line errors).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from repx.cli.common import handle_errors, lab_options, store_option
from repx.cli.completion import complete_runs, complete_targets
from repx.display import plural
from repx.errors import UsageError
from repx.lab import LabOptions, open_lab, scaffold
from repx.report import makefile as mk
from repx.report import viz as repx_viz
from repx.store import Store

# ------------------------------------------------------------------------------- viz


def _statuses(store_dir: str, job_ids: list[str]) -> dict[str, str]:
    """Job statuses from the store (read-only); none when there is no store yet."""
    if not Store.exists(store_dir):
        return {}
    with Store(store_dir, readonly=True) as store:
        return {job_id: status.value for job_id, status in store.statuses(job_ids).items()}


@click.argument("runs", nargs=-1, metavar="[RUN|@GROUP]...", shell_complete=complete_runs)
@lab_options
@store_option
@click.option("-o", "--output", metavar="FILE",
              help="Write the graph here (default: DOT on standard output).")
@click.option("--format", "fmt", type=click.Choice(repx_viz.FORMATS), default=None,
              help="dot, svg, png, pdf or jpg (default: from FILE's extension, else dot).")
@click.option("--jobs", "show_jobs", is_flag=True,
              help="One node per job (default: one per stage, with job counts).")
@click.option("--max-jobs", type=click.IntRange(min=1), default=12, show_default=True,
              help="With --jobs, collapse a stage with more jobs than this into one node.")
@handle_errors
def viz(runs: tuple[str, ...], options: LabOptions, store_dir: str, output: str | None,
        fmt: str | None, show_jobs: bool, max_jobs: int) -> None:
    """Draw the lab's runs and stages (--jobs: jobs) coloured by status, as a Graphviz
    graph: DOT text, or SVG/PNG/PDF/JPEG rendered with `dot`.

    Stage nodes show their job count and how many succeeded, failed, run or have not run
    (from the store, if there is one); edges are the pipelines' dependencies and the
    inter-run dependencies (dashed: soft). With --jobs a stage with more than --max-jobs
    jobs is one node with a count.

    Example: repx viz -o lab.svg --jobs
    """
    graph = open_lab(options)
    chosen = repx_viz.selected_runs(graph, runs)
    ids = list(dict.fromkeys(i for r in chosen for i in graph.runs[r].job_ids))
    text = repx_viz.lab_dot(graph, _statuses(store_dir, ids), runs=runs, jobs=show_jobs,
                            max_jobs=max_jobs)
    kind = repx_viz.format_for(output, fmt)
    if output is None or output == "-":
        if kind != "dot":
            raise UsageError(f"--format {kind} needs an output file (-o FILE)")
        click.echo(text, nl=False)
        return
    repx_viz.render(text, Path(output), kind)
    click.echo(f"wrote {output} ({kind})", err=True)


# -------------------------------------------------------------------------- makefile


@click.argument("targets", nargs=-1, metavar="[RUN|@GROUP|JOB]...",
                shell_complete=complete_targets)
@lab_options
@store_option
@click.option("-o", "--output", metavar="FILE",
              help="Write the Makefile here (default: standard output).")
@click.option("--repx", "repx_command", metavar="COMMAND",
              help="How the recipes call repx (default: this Python running repx.cli; "
                   "make REPX=... overrides it too).")
@handle_errors
def makefile(targets: tuple[str, ...], options: LabOptions, store_dir: str,
             output: str | None, repx_command: str | None) -> None:
    """Write a Makefile with one target per job and per run (of RUN, @GROUP or JOB and what
    they need; default every run): `make -j4 -f lab.mk` then runs the jobs as `repx build -j4`
    would, into the same store, and a second `make` does nothing.

    Each job's target is a stamp <store>/outputs/<job-id>/repx/make.stamp; each run is
    one recipe, `repx build --make-stamps RUN`, which takes its job slots from make's
    jobserver and then touches the run's stamp. Phony targets: all (the default), one
    per run, one per job id, and status; $(call repx_output,RUN,STAGE,OUTPUT) names the
    outputs your own rules can depend on. See docs/make.md.

    Example: repx makefile hyperparam-sweep > lab.mk && make -j4 -f lab.mk
    """
    graph = open_lab(options)
    text = mk.makefile_text(graph, store_dir=Path(store_dir), targets=targets,
                            repx_command=repx_command)
    if output is None or output == "-":
        click.echo(text, nl=False)
        return
    Path(output).write_text(text, encoding="utf-8")
    click.echo(f"wrote {output} ({plural(text.count(chr(10) + '# run '), 'run')}, "
               f"{plural(text.count(mk.JOB_TARGET_MARK), 'job')})", err=True)


# ------------------------------------------------------------------------------ init


@click.argument("folder", required=False, default=".", metavar="[DIR]")
@click.option("--name", metavar="NAME",
              help="The lab's name (letters, digits, -_.; default: DIR's name).")
@click.option("--flake", is_flag=True,
              help="Also write a flake.nix building the lab (inputs.repx: this repx).")
@click.option("--force", is_flag=True, help="Overwrite the scaffold's files if they exist.")
@handle_errors
def init(folder: str, name: str | None, flake: bool, force: bool) -> None:
    """Create a small working lab in DIR (default: here): lab.nix, a run, a pipeline, two
    stages and a README explaining each file, for a lab called NAME. `repx build` in DIR
    runs it at once. With --flake also a flake.nix whose repx input is this machine's repx
    flake, so that `nix build --impure .#lab` builds the lab too.

    Example: repx init my-lab --flake && cd my-lab && repx build
    """
    path = Path(folder)
    written = scaffold.init_lab(path, name=name, flake=flake, force=force)
    for file in written:
        click.echo(f"created {os.path.relpath(file)}")
    where = "" if path.resolve() == Path.cwd() else f"cd {shlex.quote(folder)} && "
    click.echo(f"next: {where}repx build   (see README.md in {folder})")


def register(main: click.Group) -> None:
    """Add this module's commands to the ``repx`` group."""
    main.command("viz")(viz)
    main.command("makefile")(makefile)
    main.command("init")(init)
