"""The library API behind every command that needs a lab: build or open it, validate, expand.

``open_lab`` is what the CLI, the tests and notebooks call. It either takes an already
built lab directory (``--lab ./result``) or builds ``lab.nix`` first, so ``repx list jobs``
in a lab's folder (or any folder below it) just works. Its slow phases (the Nix build, the
expansion, the script validation) go to ``LabOptions.reporter`` (:mod:`repx.lab.progress`),
which says nothing unless the caller gives one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from repx.errors import LabError
from repx.lab.nix import LabArgument, LabBuild, find_lab_source, nixpkgs_path, start_lab_build
from repx.lab.progress import QUIET, LabReporter, Phase, reported

if TYPE_CHECKING:
    from repx.lab.expansion_memo import ExpansionMemo
    from repx.lab.graph import JobGraph


@dataclass(frozen=True)
class LabOptions:
    """How to find the lab: a built directory, or a lab file or flake to build (and how).

    ``lab_file`` is a lab.nix, a flake.nix (optionally ``flake.nix#ATTR``) or a folder
    holding one; ``lab_args`` go to a lab file's function; ``impure`` lets a flake
    evaluate impure things such as the host package set; ``reporter`` hears which lab was
    found and the phases of opening it (default: nobody).
    """

    lab_dir: str | None = None
    lab_file: str | None = None
    nixpkgs: str | None = None
    out_link: str | None = "result"
    run_slice: str | None = None
    show_trace: bool = False
    lab_args: tuple[LabArgument, ...] = ()
    impure: bool = False
    reporter: LabReporter = field(default=QUIET, compare=False, repr=False)


def cache_dir() -> Path:
    """Where repx keeps per-user caches (validation results)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "repx"


def is_lab_dir(path: Path) -> bool:
    return (path / "lab.json").is_file() and (path / "runs").is_dir()


def locate_lab(options: LabOptions, cwd: Path | None = None) -> Path:
    """The built lab directory: ``--lab DIR`` as given, ``--lab lab.tar`` unpacked (see
    :mod:`repx.lab.export`), else build the lab file now."""
    return start_locating_lab(options, cwd).wait()


def start_locating_lab(options: LabOptions, cwd: Path | None = None) -> LabLocation:
    """:func:`locate_lab` with the Nix build (if one is needed) left running: the caller
    gets on with what does not need the lab directory and then calls ``wait``."""
    base = cwd or Path.cwd()
    if options.lab_dir is not None:
        path = (base / options.lab_dir).resolve()
        if path.is_file():
            # A lab export (`repx lab export`), unpacked once into the lab cache. Imported
            # here: repx.lab.export uses this module's cache_dir.
            from repx.lab.export import unpack_lab

            return LabLocation(unpack_lab(path).lab_dir, options=options)
        if not is_lab_dir(path):
            raise LabError(
                f"{path} is not a built repx lab (no lab.json/runs/); "
                "build one with `repx lab build`"
            )
        return LabLocation(path, options=options)
    source = find_lab_source(options.lab_file, base)
    options.reporter.lab_found(source, base.absolute())
    link = None
    if options.out_link:
        link = Path(options.out_link)
        if not link.is_absolute():
            link = source.folder / link
    phase = Phase("nix build", "building the lab with Nix")
    started = time.monotonic()
    options.reporter.phase_started(phase)
    try:
        build = start_lab_build(
            source,
            out_link=link,
            nixpkgs=nixpkgs_path(options.nixpkgs),
            run_slice=options.run_slice,
            show_trace=options.show_trace,
            lab_args=options.lab_args,
            impure=options.impure,
        )
    except BaseException:
        options.reporter.phase_finished(phase, time.monotonic() - started, False)
        raise
    return LabLocation(None, build, options.reporter, phase, started, options=options)


class LabLocation:
    """The lab directory, known already or once its Nix build (reported as ``phase``) ends;
    ``options`` are those it was located with (None for the directory of a graph at hand).

    Whoever starts one calls :meth:`wait`, or :meth:`cancel` when it gives up first; as a
    context manager it is cancelled on leaving unless it was waited for.
    """

    def __init__(self, ready: Path | None, build: LabBuild | None = None,
                 reporter: LabReporter = QUIET, phase: Phase | None = None,
                 started: float = 0.0, *, options: LabOptions | None = None) -> None:
        self.options = options
        self._ready = ready
        self._build = build
        self._reporter = reporter
        self._phase = phase
        self._started = started

    @property
    def known(self) -> Path | None:
        """The lab directory if it is known without waiting (given, or built already)."""
        return self._ready

    def wait(self) -> Path:
        """The lab directory (a failed Nix build raises :class:`LabError`)."""
        if self._ready is not None:
            return self._ready
        build, self._build = self._build, None
        assert build is not None, "a lab build is waited for once, and not after a cancel"
        ok = False
        try:
            self._ready = build.wait()
            ok = True
        finally:
            self._finish(ok)
        return self._ready

    def cancel(self) -> None:
        """Stop a build still running (nothing happens once it was waited for)."""
        build, self._build = self._build, None
        if build is not None:
            try:
                build.cancel()
            finally:
                self._finish(False)

    def __enter__(self) -> LabLocation:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.cancel()

    def _finish(self, ok: bool) -> None:
        if self._phase is not None:
            self._reporter.phase_finished(self._phase, time.monotonic() - self._started, ok)
            self._phase = None


def open_lab(options: LabOptions, *, validate: bool = True, cwd: Path | None = None,
             reuse: ExpansionMemo | None = None) -> JobGraph:
    """Build (or open) the lab, validate its scripts, and expand it into the job graph
    (reusing the ids of an earlier expansion, ``reuse``, where they apply:
    :mod:`repx.lab.expansion_memo`)."""
    # Imported here: a no-op build only locates the lab (its answer is the lab's cached
    # index), and the expansion and the script checks (tree-sitter) are most of the
    # import time of a command.
    from repx.lab.blueprint import load_lab
    from repx.lab.expand import expand_lab
    from repx.lab.graph import JobGraph
    from repx.lab.script_checks import check_dynamic_outputs, lab_script_checks, validate_scripts

    lab_dir = locate_lab(options, cwd)
    reporter = options.reporter
    lab = load_lab(lab_dir)
    graph = JobGraph(lab)
    expansion = Phase("expansion", "expanding the lab", unit="jobs",
                      progress=lambda: len(graph.jobs))
    with reported(reporter, expansion):
        expand_lab(lab, into=graph, reuse=reuse)
        expansion.done = len(graph.jobs)
    if validate:
        validation = Phase("script validation", "validating the stage scripts", unit="scripts")
        with reported(reporter, validation):
            check_dynamic_outputs(graph)
            checks = lab_script_checks(graph)
            validation.done = len(checks)
            validation.doing = f"validating {validation.count_text(len(checks))}"
            validate_scripts(checks, cache_dir=cache_dir() / "validated")
    return graph
