"""The original RepX's Python API, implemented over :mod:`repx.analysis`.

Analysis code written for the original (``from repx_py import Experiment``) runs unchanged:
in a notebook over a built lab, and inside an analysis stage over the ``metadata__<run>``
manifest the stage receives. Each call keeps the original's meaning, including the error
types its callers catch (``KeyError``, ``FileNotFoundError``, ``ValueError``); the
exceptions raised here are also :class:`repx.analysis.AnalysisError`, so the message says
what to do.

Where this layer departs from the original, on purpose:

* ``filter(param_<name>=…)`` (and ``param_<name>__contains=…``) tests the job's effective
  param, as the original's documentation says (its code matched nothing), and a plain key
  that is no attribute of a job (``seed=42``) tests the effective param of that name. A key
  that names neither for any job of the collection is an error, not an empty result.
* The default resolver finds outputs in repx's store (``<store>/outputs/<id>/out/``): the
  store ``repx build`` used (``store=``, ``$REPX_STORE``, ``./.repx`` or the ``.repx``
  beside the lab), where the original looked in ``./.repx-cache``. Given a resolver, the
  experiment reads no store unless ``store=`` is given too; statuses are then ``unknown``.
* ``Experiment()`` without a lab opens ``./result``; ``get_job`` also takes a unique id
  prefix; ``load_json``, which the original documented but lacked, exists; pandas is
  imported only by ``load_csv`` and ``to_dataframe``, so everything else runs on the
  standard library (a stage's plain ``python3``).
* Jobs also have repx's ``run``, ``stage``, ``pname``, ``version`` and ``status``, and
  ``analysis`` (the :class:`repx.analysis.JobView`; ``Experiment.analysis`` is the
  :class:`repx.analysis.Experiment`) for the rest of repx's API: statuses, timings, logs,
  ``collect``.
"""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from repx.report import analysis
from repx.report.analysis import SUCCEEDED, UNKNOWN, AnalysisError, OutputMissingError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

__all__ = [
    "ArtifactResolver",
    "Experiment",
    "JobCollection",
    "JobView",
    "LocalCacheResolver",
    "ManifestResolver",
    "MetadataError",
    "MetadataNotFoundError",
    "NotFoundError",
]

logger = logging.getLogger(__name__)

#: The filter operators of the original (``name__contains="train"``).
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "startswith": lambda actual, wanted: str(actual).startswith(wanted),
    "endswith": lambda actual, wanted: str(actual).endswith(wanted),
    "contains": lambda actual, wanted: wanted in str(actual),
}

#: The prefix of a filter key that names an effective param (``param_learning_rate``).
PARAM_PREFIX = "param_"

_MISSING = object()


class NotFoundError(AnalysisError, KeyError):
    """An unknown job id, run or output key (a ``KeyError``, as in the original)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return self.message


class MetadataNotFoundError(AnalysisError, FileNotFoundError):
    """The run metadata file given to :meth:`Experiment.from_run_metadata` does not exist."""

    def __str__(self) -> str:
        return self.message


class MetadataError(AnalysisError, ValueError):
    """A file given as run metadata is not one (a ``ValueError``, as in the original)."""


# ------------------------------------------------------------------------------ resolvers


class ArtifactResolver(ABC):
    """Where a job's output files are: ``resolve_path(job, "results.csv")``."""

    @abstractmethod
    def resolve_path(self, job: JobView, relative_path: str) -> Path:
        """The path of ``relative_path`` under the job's output folder."""


class LocalCacheResolver(ArtifactResolver):
    """Outputs under ``<cache_dir>/<job id>/out/`` (repx's store keeps them in
    ``<store>/outputs/<id>/out/``, so ``cache_dir`` is a store's ``outputs`` folder)."""

    def __init__(self, cache_dir: str | os.PathLike[str] = ".repx-cache") -> None:
        self.cache_dir = Path(cache_dir).resolve()

    def resolve_path(self, job: JobView, relative_path: str) -> Path:
        return self.cache_dir / job.id / "out" / relative_path

    def __repr__(self) -> str:
        return f"LocalCacheResolver({str(self.cache_dir)!r})"


class ManifestResolver(ArtifactResolver):
    """Outputs in the folder a mapping gives for each job id (``{id: folder}``)."""

    def __init__(self, job_output_map: dict[str, str | os.PathLike[str]]) -> None:
        self.mapping = {k: Path(v) for k, v in job_output_map.items()}

    def resolve_path(self, job: JobView, relative_path: str) -> Path:
        if job.id not in self.mapping:
            raise FileNotFoundError(
                f"No output path recorded for job '{job.id}' in the provided manifest.")
        return self.mapping[job.id] / relative_path


# ------------------------------------------------------------------------------ the jobs


class JobView:
    """One job: its metadata, effective params and outputs (the original's ``JobView``).

    Any other attribute is looked up in the job's metadata (``job.resource_hints``).
    """

    __slots__ = ("_exp", "_view")

    def __init__(self, experiment: Experiment, view: analysis.JobView) -> None:
        self._exp = experiment
        self._view = view

    @property
    def analysis(self) -> analysis.JobView:
        """The same job in :mod:`repx.analysis` (statuses, timings, logs, ``load_text``)."""
        return self._view

    @property
    def _metadata(self) -> dict[str, Any]:
        return self._exp._job_metadata(self._view)

    # ---- the original's properties

    @property
    def id(self) -> str:
        return self._view.id

    @property
    def name(self) -> str:
        """``<pname>-<version>`` (the stage's name and version)."""
        return str(self._metadata.get("name") or self.id)

    @property
    def stage_type(self) -> str:
        """``simple`` or ``scatter-gather``."""
        return str(self._metadata.get("stage_type") or "simple")

    @property
    def params(self) -> dict[str, Any]:
        """The values of the params the job's stage declares."""
        return self._view.params

    @property
    def effective_params(self) -> dict[str, Any]:
        """The upstream jobs' effective params, then the job's own on top."""
        return self._view.effective_params

    @property
    def executables(self) -> dict[str, Any]:
        return dict(self._metadata.get("executables") or {})

    @property
    def outputs(self) -> dict[str, str]:
        """Output name -> template (``$out/data.csv``): ``main``'s, or ``gather``'s for a
        scatter-gather job."""
        exe = "gather" if self.stage_type == "scatter-gather" else "main"
        return dict(self.executables.get(exe, {}).get("outputs") or {})

    @property
    def input_mappings(self) -> list[dict[str, Any]]:
        """Where each input comes from (``job_id``, ``source_output``, ``target_input``…):
        ``main``'s, or ``scatter``'s for a scatter-gather job."""
        exe = "scatter" if self.stage_type == "scatter-gather" else "main"
        return list(self.executables.get(exe, {}).get("inputs") or [])

    @property
    def executable_path(self) -> str | None:
        """The script of a simple job (None for scatter-gather jobs, or when unknown)."""
        if self.stage_type != "simple":
            return None
        graph = self._exp.analysis.graph
        if graph is not None:
            return graph.jobs[self.id].executables["main"].script
        path = self.executables.get("main", {}).get("path")
        return str(path) if path else None

    @property
    def dependencies(self) -> JobCollection:
        """The upstream jobs (producers of this job's inputs)."""
        return JobCollection(self._exp, [v.id for v in self._view.depends_on])

    # ---- repx's

    @property
    def run(self) -> str:
        return self._view.run

    @property
    def stage(self) -> str:
        """The stage's key in its pipeline."""
        return self._view.stage

    @property
    def pname(self) -> str:
        return self._view.pname

    @property
    def version(self) -> str:
        return self._view.version

    @property
    def status(self) -> str:
        """``succeeded``, ``failed``, … ``unknown`` (no store read, or a manifest that does
        not say); see :attr:`repx.analysis.JobView.status`."""
        return self._view.status

    # ---- outputs

    def get_output_path(self, output_key: str) -> Path:
        """The path of declared output ``output_key``, through the experiment's resolver.

        Like the original, the path is returned whether or not the file exists; an
        undeclared key is a ``KeyError`` (:class:`NotFoundError`) listing the declared ones.
        """
        outputs = self.outputs
        template = outputs.get(output_key)
        if not template:
            raise NotFoundError(
                f"Output key '{output_key}' not found in job '{self.id}' ({self.name}). "
                f"Available keys: {sorted(outputs)}")
        if os.path.isabs(template):
            return Path(template)
        for prefix in ("$out/", "${out}/"):
            if template.startswith(prefix):
                template = template[len(prefix):]
                break
        else:
            if template in ("$out", "${out}"):
                template = ""
        return self._exp.resolver.resolve_path(self, template)

    def _existing_file(self, output_key_or_filename: str) -> Path:
        if output_key_or_filename in self.outputs:
            path = self.get_output_path(output_key_or_filename)
            what = f"output '{output_key_or_filename}'"
        else:
            path = self._exp.resolver.resolve_path(self, output_key_or_filename)
            what = f"file '{output_key_or_filename}'"
        if not path.is_file():
            status = self.status
            if status in (SUCCEEDED, UNKNOWN):
                why = ("although the job succeeded; `repx cache verify` checks the store"
                       if status == SUCCEEDED else
                       f"(the job's status is unknown here; `repx status {self.id[:12]}` "
                       "says whether it ran)")
            else:
                why = (f"because the job is {status}; `repx build {self.run}` runs it"
                       + (f" (its stderr log: {self._view.stderr_log})"
                          if status == "failed" and self._view.stderr_log else ""))
            raise OutputMissingError(
                f"{what} of job {self.id} ({self.name}) is missing: {path} does not exist "
                f"{why}")
        return path

    def load_csv(self, output_key_or_filename: str, **kwargs: Any) -> pd.DataFrame:
        """``pandas.read_csv`` of a declared output (by key) or a file under the job's
        output folder; ``kwargs`` go to ``read_csv``. Needs pandas."""
        pandas = analysis._pandas()
        path = self._existing_file(output_key_or_filename)
        logger.debug("Loading CSV for job %s from %s", self.id, path)
        return pandas.read_csv(path, **kwargs)

    def load_json(self, output_key_or_filename: str) -> Any:
        """The parsed JSON of a declared output (by key) or of a file under the job's output
        folder."""
        with open(self._existing_file(output_key_or_filename), encoding="utf-8") as handle:
            return json.load(handle)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        value = self._metadata.get(key, _MISSING)
        if value is _MISSING:
            raise AttributeError(f"'JobView' object has no attribute or data key '{key}'")
        return value

    def __repr__(self) -> str:
        return f"<JobView id={self.id} name={self.name}>"


def _filter_key(key: str) -> tuple[str, Callable[[Any, Any], bool] | None]:
    """``name__contains`` -> ("name", contains); a key without a known operator suffix is
    tested for equality."""
    attribute, sep, op = key.rpartition("__")
    if sep and attribute and op in OPERATORS:
        return attribute, OPERATORS[op]
    return key, None


def _lookup(job: JobView, name: str) -> Any:
    """What a filter key names on ``job``: ``param_<p>`` is effective param ``p`` (or a
    param named ``param_<p>`` itself); else the attribute (metadata keys included); else the
    effective param ``name``; else _MISSING."""
    if name.startswith(PARAM_PREFIX):
        params = job.effective_params
        return params.get(name[len(PARAM_PREFIX):], params.get(name, _MISSING))
    try:
        return getattr(job, name)
    except AttributeError:
        return job.effective_params.get(name, _MISSING)


class JobCollection(Sequence[JobView]):
    """A sequence of jobs that filters and turns into a DataFrame (the original's)."""

    def __init__(self, experiment: Experiment, job_ids: Iterable[str]) -> None:
        self._exp = experiment
        self._job_ids = list(job_ids)

    def filter(self, predicate: Callable[[JobView], bool] | None = None,
               **kwargs: Any) -> JobCollection:
        """The jobs that pass ``predicate`` (if given) and every keyword test.

        ``name="x"`` is equality; ``name__startswith=``, ``__endswith=``, ``__contains=``
        compare ``str()`` of the value. A key is a job attribute (``id``, ``name``,
        ``stage_type``, ``run``, ``stage``, ``status``… or a metadata key), or
        ``param_<name>`` for effective param ``<name>``, or a bare effective param name.
        A key that names nothing on any job of the collection raises :class:`AnalysisError`.
        """
        tests = [(key, *_filter_key(key), wanted) for key, wanted in kwargs.items()]
        jobs = [self._exp.get_job(i) for i in self._job_ids]
        for key, name, _, _ in tests:
            if jobs and all(_lookup(job, name) is _MISSING for job in jobs):
                params = sorted({p for job in jobs for p in job.effective_params})
                what = (f"a param '{name[len(PARAM_PREFIX):]}'" if name.startswith(PARAM_PREFIX)
                        else f"an attribute or a param '{name}'")
                raise AnalysisError(
                    f"filter({key}=…): no job here has {what}; "
                    "attributes: id, name, stage_type, run, stage, pname, version, status "
                    f"(and metadata keys); params: {', '.join(params) or '(none)'} (also "
                    f"as {PARAM_PREFIX}<name>); operators: "
                    + ", ".join(f"__{op}" for op in OPERATORS))

        def match(job: JobView) -> bool:
            if predicate is not None and not predicate(job):
                return False
            for _, name, op, wanted in tests:
                actual = _lookup(job, name)
                if actual is _MISSING:
                    return False
                if op is None:
                    if actual != wanted:
                        return False
                elif not op(actual, wanted):
                    return False
            return True

        return JobCollection(self._exp, [job.id for job in jobs if match(job)])

    def to_dataframe(self) -> pd.DataFrame:
        """One row per job: ``job_id`` (the index when unique), ``name`` and the effective
        params (nested values flattened as ``a.b``). Needs pandas."""
        pandas = analysis._pandas()
        rows = []
        for job in self:
            row: dict[str, Any] = {"job_id": job.id, "name": job.name}
            row.update(job.effective_params)
            rows.append(row)
        if not rows:
            return pandas.DataFrame()
        frame = pandas.json_normalize(rows)
        if frame["job_id"].is_unique:
            frame = frame.set_index("job_id")
        return frame

    def __iter__(self) -> Iterator[JobView]:
        return (self._exp.get_job(i) for i in self._job_ids)

    def __len__(self) -> int:
        return len(self._job_ids)

    @overload
    def __getitem__(self, index: int) -> JobView: ...

    @overload
    def __getitem__(self, index: slice) -> JobCollection: ...

    def __getitem__(self, index: int | slice) -> JobView | JobCollection:
        if isinstance(index, slice):
            return JobCollection(self._exp, self._job_ids[index])
        return self._exp.get_job(self._job_ids[index])

    def __repr__(self) -> str:
        return f"<JobCollection size={len(self)}>"


# ------------------------------------------------------------------------------ experiment


class Experiment:
    """A lab's jobs and their outputs (the original's ``Experiment``).

    ``lab_path``: a built lab (``./result``, the default), or a ``lab.nix`` / a folder with
    one. ``resolver``: where outputs are; by default repx's store (``store=``, else
    ``$REPX_STORE``, ``./.repx`` or the ``.repx`` beside the lab). With a resolver and no
    ``store=``, no store is read (statuses are ``unknown``).
    """

    def __init__(self, lab_path: str | os.PathLike[str] | None = None,
                 resolver: ArtifactResolver | None = None, *,
                 store: str | os.PathLike[str] | None = None) -> None:
        lab = "result" if lab_path is None else lab_path
        if resolver is not None and store is None:
            inner = analysis.Experiment(lab, store=False)
        else:
            inner = analysis.Experiment(lab, store=store)
            if resolver is None:
                resolver = LocalCacheResolver(inner.store_path / "outputs")
        self._init(inner, resolver, inner.lab_path)

    def _init(self, inner: analysis.Experiment, resolver: ArtifactResolver,
              path: Path) -> None:
        self.analysis = inner
        self.resolver = resolver
        self.path = path
        self._views = {view.id: view for view in inner.jobs()}
        self._cache: dict[str, JobView] = {}

    @classmethod
    def from_run_metadata(cls, metadata_path: str | os.PathLike[str],
                          store_base: str | os.PathLike[str]) -> Experiment:
        """The experiment inside an analysis stage: the jobs of the ``metadata__<run>`` file
        it received, their outputs under ``store_base`` (the ``store__base`` input;
        ``<store_base>/outputs`` when that folder exists, as in the original).

        Reads the manifests repx writes and the original's run metadata (see
        :meth:`repx.analysis.Experiment.from_manifest`). A missing file is a
        ``FileNotFoundError``, a file that is no run metadata a ``ValueError``.
        """
        meta = Path(metadata_path)
        if not meta.is_file():
            raise MetadataNotFoundError(
                f"Metadata file not found: {meta} (pass the metadata__<run> input of the "
                "stage, e.g. \"${inputs.metadata__simulation}\")")
        base = Path(store_base)
        outputs = base / "outputs"
        try:
            inner = analysis.Experiment.from_manifest(meta, store_base=base)
        except AnalysisError as exc:
            raise MetadataError(exc.message) from None
        self = cls.__new__(cls)
        self._init(inner, LocalCacheResolver(outputs if outputs.is_dir() else base),
                   Path("."))
        return self

    # ---- the original's methods

    def runs(self) -> dict[str, dict[str, Any]]:
        """Run name -> its metadata (``type``, ``name``, ``gitHash``, ``dependencies``,
        ``jobs``)."""
        return {run: self.analysis.run_metadata(run) for run in self.analysis.runs}

    def jobs(self) -> JobCollection:
        """Every job of every run."""
        return JobCollection(self, self._views)

    def get_job(self, job_id: str) -> JobView:
        """The job whose id is ``job_id`` (or uniquely starts with it); ``KeyError``
        (:class:`NotFoundError`) otherwise."""
        job = self._cache.get(job_id)
        if job is not None:
            return job
        view = self._views.get(job_id)
        if view is None:
            try:
                view = self.analysis.job(job_id)
            except AnalysisError as exc:
                raise NotFoundError(f"Job ID '{job_id}' not found: {exc.message}") from None
        job = self._cache[view.id] = JobView(self, view)
        return job

    def get_run_for_job(self, job_id: str) -> tuple[str, dict[str, Any]]:
        """``(run name, run metadata)`` of the run that has the job."""
        run = self.get_job(job_id).run
        return run, self.analysis.run_metadata(run)

    @property
    def effective_params(self) -> dict[str, dict[str, Any]]:
        """Job id -> its effective params."""
        return {job_id: view.effective_params for job_id, view in self._views.items()}

    # ---- internals

    def _job_metadata(self, view: analysis.JobView) -> dict[str, Any]:
        document = self.analysis.run_metadata(view.run)
        entry = document["jobs"].get(view.id)
        if entry is None:  # a job shared by runs, listed under another one
            for run in view.runs:
                entry = self.analysis.run_metadata(run)["jobs"].get(view.id)
                if entry is not None:
                    break
        return entry or {}

    def __repr__(self) -> str:
        return (f"<Experiment {self.path}: {len(self._views)} jobs in runs "
                f"{', '.join(self.analysis.runs)}; {self.resolver!r}>")
