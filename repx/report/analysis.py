"""The analysis API: a lab's jobs, their params, statuses and outputs, from a notebook.

>>> from repx.analysis import Experiment                      # doctest: +SKIP
>>> exp = Experiment("./result", store=".repx")               # doctest: +SKIP
>>> exp.jobs(stage="train-model", learning_rate=0.01).to_dataframe()   # doctest: +SKIP
>>> exp.collect("metrics")                                    # doctest: +SKIP

It reads what ``repx build`` wrote, and nothing else: the built lab directory (loaded and
expanded as the CLI does, without a Nix build when given ``./result``) and the job store,
opened read-only so a notebook never blocks or disturbs a build running beside it. Inside
an analysis stage of a dependent run, :meth:`Experiment.from_manifest` gives the same API
from the ``metadata__<run>`` manifest the stage receives, with nothing but the standard
library (and pandas for DataFrames). :mod:`repx_py` is the original RepX's API over this one.

Why the design looks the way it does:

* **pandas is optional.** The core package must work without it, so it is imported only
  when a DataFrame is asked for (``to_dataframe``, ``collect``, ``load_csv``); everything
  else (filtering, output paths, ``load_json``) is plain Python.
* **Effective params.** A job's ``params`` are the values of the params its stage declares.
  An ``evaluate`` job downstream of ``train-model`` declares none, yet it *is* the
  evaluation of one learning rate; so filters and DataFrame columns use the *effective*
  params: the upstream jobs' effective params (in dependency order), then the job's own on
  top (the rule of the original repx's Python API).
* **Loud, not empty.** Filtering on a param no selected job has, naming an unknown run or
  stage, or asking for the output of a job that has not (successfully) run raises an error
  that says so and what to do, instead of returning nothing or a path to a missing file.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from repx.engine.contract import resolve_output
from repx.errors import RepxError
from repx.store import layout

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

    from repx.lab.graph import JobGraph
    from repx.store import JobRecord, Store

__all__ = [
    "AnalysisError",
    "Experiment",
    "JobCollection",
    "JobNotRunError",
    "JobView",
    "OutputMissingError",
]

#: What a job without a store record is called (``repx status`` says "not run" too).
NOT_RUN = "not run"
SUCCEEDED = "succeeded"
#: The status of a job whose source does not say: a manifest without statuses (the
#: original's run metadata) or an experiment that reads no store (``store=False``). Its
#: outputs are read when their files exist.
UNKNOWN = "unknown"

#: Columns of :meth:`JobCollection.to_dataframe` before the params: what the job is, how
#: it ended, and (from the record's last attempt) where it ran, what it asked for and used.
JOB_COLUMNS = ("id", "run", "stage", "pname", "status", "started", "finished", "duration",
               "failure", "attempts", "node", "req_mem", "req_time", "max_rss", "elapsed",
               "cpu_time")
#: The columns taken from the record's last attempt (``JobRecord.attempts``), by its keys.
_ATTEMPT_COLUMNS = {"node": "node", "req_mem": "mem", "req_time": "time",
                    "max_rss": "max_rss", "elapsed": "elapsed", "cpu_time": "cpu_time"}

_OUTPUT_DIR_RE = re.compile(rf"/{layout.OUTPUTS}/([^/]+)/{layout.OUT}(?:/|$)")


class AnalysisError(RepxError):
    """A question the lab or the store cannot answer (unknown run, stage, param, output)."""


class JobNotRunError(AnalysisError):
    """The output of a job that has not successfully run was asked for."""


class OutputMissingError(AnalysisError, FileNotFoundError):
    """A succeeded job's output is not on disk (deleted, or the store was copied partially)."""


def _pandas() -> Any:
    """pandas, imported on first use (it is an optional extra)."""
    try:
        import pandas
    except ImportError:
        raise ImportError(
            "DataFrames need pandas, which is not installed: pip install 'repx[analysis]' "
            "(or pip install pandas)"
        ) from None
    return pandas


def _brief(params: Mapping[str, Any], width: int = 80) -> str:
    text = " ".join(f"{k}={json.dumps(v)}" for k, v in params.items())
    return text if len(text) <= width else text[: width - 1] + "…"


# ------------------------------------------------------------------------------- the jobs


@dataclass(eq=False)
class _JobData:
    """What the API knows about one job, from a lab + store or from a manifest."""

    id: str
    run: str
    runs: list[str]
    stage: str
    pname: str
    version: str
    kind: str
    params: dict[str, Any]
    depends_on: list[str]
    #: Output name -> template (``$out/…``) with a lab, absolute path with a manifest.
    outputs: dict[str, Any]
    #: The job's ``out`` and ``repx`` folders when known.
    out_dir: Path | None
    meta_dir: Path | None
    #: The manifest's status (manifest mode, or ``unknown`` without a store; with a store
    #: it is read live).
    manifest_status: str | None = None
    #: The job's entry of a run manifest of the original's shape, as read (manifest mode).
    metadata: dict[str, Any] | None = field(default=None, repr=False)
    effective: dict[str, Any] | None = field(default=None, repr=False)


class JobView:
    """One job: its params, status and timings, and its outputs.

    Obtained from :meth:`Experiment.jobs` or :meth:`Experiment.job`; the status and timings
    are read from the store when asked (a build running beside the notebook shows up).
    """

    __slots__ = ("_exp", "_data")

    def __init__(self, experiment: Experiment, data: _JobData) -> None:
        self._exp = experiment
        self._data = data

    # ---- identity and params

    @property
    def id(self) -> str:
        return self._data.id

    @property
    def run(self) -> str:
        """The first run that has this job (a job shared by runs lists them all in ``runs``)."""
        return self._data.run

    @property
    def runs(self) -> list[str]:
        return list(self._data.runs)

    @property
    def stage(self) -> str:
        """The stage's key in its pipeline (``train``); see also ``pname``."""
        return self._data.stage

    @property
    def pname(self) -> str:
        return self._data.pname

    @property
    def version(self) -> str:
        return self._data.version

    @property
    def kind(self) -> str:
        """``simple`` or ``scatter-gather``."""
        return self._data.kind

    @property
    def params(self) -> dict[str, Any]:
        """The effective values of the params this job's stage declares."""
        return dict(self._data.params)

    @property
    def effective_params(self) -> dict[str, Any]:
        """Upstream jobs' effective params (dependency order), then this job's on top."""
        return dict(self._exp._effective(self._data))

    @property
    def depends_on(self) -> JobCollection:
        """The jobs this job reads outputs of (its producers in the pipeline)."""
        known = self._exp._by_id
        return JobCollection(self._exp, [known[i] for i in self._data.depends_on if i in known])

    @property
    def outputs(self) -> dict[str, Any]:
        """Declared outputs: name -> template (``$out/metrics.csv``) or absolute path."""
        return dict(self._data.outputs)

    # ---- status

    @property
    def record(self) -> JobRecord | None:
        """The store's record of this job (None when it has none, or in manifest mode)."""
        return self._exp._record(self._data.id)

    @property
    def status(self) -> str:
        """``succeeded``, ``failed``, ``cancelled``, ``running``, ``queued`` or ``not run``
        (a manifest may also say ``blocked`` or ``not started``; ``unknown`` when neither a
        store nor the manifest says)."""
        if self._data.manifest_status is not None:
            return self._data.manifest_status
        record = self.record
        return record.status.value if record is not None else NOT_RUN

    @property
    def started(self) -> float | None:
        """Epoch seconds (None when unknown)."""
        record = self.record
        return record.started if record is not None else None

    @property
    def finished(self) -> float | None:
        record = self.record
        return record.finished if record is not None else None

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish (None unless both are known)."""
        record = self.record
        if record is None or record.started is None or record.finished is None:
            return None
        return record.finished - record.started

    @property
    def out_dir(self) -> Path | None:
        """The job's ``$out`` folder in the store (whether or not it exists)."""
        return self._data.out_dir

    @property
    def stdout_log(self) -> Path | None:
        return self._data.meta_dir / layout.STDOUT_LOG if self._data.meta_dir else None

    @property
    def stderr_log(self) -> Path | None:
        return self._data.meta_dir / layout.STDERR_LOG if self._data.meta_dir else None

    # ---- outputs

    def output_path(self, name: str) -> Path:
        """The absolute path of declared output ``name`` of this (succeeded) job.

        Raises :class:`JobNotRunError` when the job has not run or did not succeed,
        :class:`OutputMissingError` when it succeeded but the file is gone, and
        :class:`AnalysisError` for a name the job does not declare.
        """
        outputs = self._data.outputs
        if name not in outputs:
            declared = ", ".join(sorted(outputs)) or "none"
            raise AnalysisError(
                f"job {self.id} (stage {self.pname}) declares no output '{name}'; "
                f"its outputs: {declared}"
            )
        self._require_success(f"output '{name}'")
        path = self._resolve(name, outputs[name])
        if not path.exists():
            if self.status == UNKNOWN:
                raise OutputMissingError(
                    f"output '{name}' of job {self.id} is missing: {path} does not exist (the "
                    "job's status is unknown here, so it may not have run; `repx status "
                    f"{self.id[:12]}` says)")
            raise OutputMissingError(
                f"output '{name}' of job {self.id} is missing: {path} does not exist although "
                "the job succeeded (deleted by hand?); `repx cache verify` checks the whole "
                f"store, and `repx build {self.run}` runs the job again"
            )
        return path

    def output_paths(self) -> dict[str, Path]:
        """Every declared file output by name (see :meth:`output_path`)."""
        return {name: self.output_path(name) for name, t in self._data.outputs.items()
                if isinstance(t, str)}

    def path(self, relative: str = "") -> Path:
        """A file under the job's ``$out`` (declared or not): ``job.path("plots/a.png")``."""
        self._require_success(f"file '{relative}'" if relative else "output folder")
        base = self._data.out_dir
        if base is None:
            raise AnalysisError(f"the output folder of job {self.id} is not known (a "
                                "manifest entry without outputs); use output_path(name)")
        path = base / relative if relative else base
        if not path.exists():
            raise OutputMissingError(f"job {self.id} has no {relative or 'output folder'} "
                                     f"({path} does not exist)")
        return path

    def _file(self, name_or_file: str) -> Path:
        if name_or_file in self._data.outputs:
            return self.output_path(name_or_file)
        return self.path(name_or_file)

    def load_json(self, name_or_file: str) -> Any:
        """The parsed JSON of a declared output (by name) or of a file under ``$out``."""
        with open(self._file(name_or_file), encoding="utf-8") as handle:
            return json.load(handle)

    def load_text(self, name_or_file: str) -> str:
        return self._file(name_or_file).read_text(encoding="utf-8")

    def load_csv(self, name_or_file: str, **read_csv_kwargs: Any) -> pd.DataFrame:
        """``pandas.read_csv`` of a declared output (by name) or of a file under ``$out``."""
        path = self._file(name_or_file)
        return _pandas().read_csv(path, **read_csv_kwargs)

    def _resolve(self, name: str, template: Any) -> Path:
        if not isinstance(template, str):
            raise AnalysisError(f"output '{name}' of job {self.id} is not a file path "
                                f"({template!r})")
        if os.path.isabs(template):  # a manifest's path (a lab's templates are under $out)
            return Path(template)
        if self._data.out_dir is None:
            raise AnalysisError(
                f"output '{name}' of job {self.id} is {template!r}, relative to the job's "
                "output folder, which is not known here: pass store_base= (the "
                "store__base input) to Experiment.from_manifest"
                if self._exp._manifest else
                f"output '{name}' of job {self.id}: this Experiment reads no store "
                "(store=False), so it has no output paths; pass store=")
        return Path(resolve_output(template, str(self._data.out_dir), job=self.id, name=name))

    def _require_success(self, what: str) -> None:
        status = self.status
        if status in (SUCCEEDED, UNKNOWN):
            return
        where = f"job {self.id} (run {self.run}, stage {self.pname}"
        where += f", {_brief(self._data.params)})" if self._data.params else ")"
        build = f"`repx build {self.run}` (or `repx build {self.id[:12]}`)"
        if status == NOT_RUN:
            store = self._exp.store_path
            raise JobNotRunError(
                f"{where} has not run: the store at {store} has no record of it, so it has no "
                f"{what}; run {build} first"
            )
        if status in ("running", "queued"):
            raise JobNotRunError(f"{where} is still {status}: its {what} is not there yet; "
                                 "wait for the build (`repx status`) and ask again")
        reason = ""
        record = self.record
        if record is not None and record.reason:
            reason = f" ({record.reason})"
        logs = f"; its stderr log: {self.stderr_log}" if self.stderr_log else ""
        raise JobNotRunError(
            f"{where} has not run successfully: it is {status}{reason}, so it has no {what}"
            f"{logs}; fix it and run {build} again"
        )

    def __repr__(self) -> str:
        return f"JobView({self.id!r}, status={self.status!r}, params={self.params!r})"


# ------------------------------------------------------------------------------ selections


def _matches(value: Any, wanted: Any) -> bool:
    if callable(wanted):
        return bool(wanted(value))
    if isinstance(wanted, (list, tuple, set, frozenset)):
        return value in wanted
    return bool(value == wanted)


class JobCollection(Sequence[JobView]):
    """Jobs selected by :meth:`Experiment.jobs`: a sequence of :class:`JobView`, in the
    lab's expansion order, that filters further and turns into DataFrames."""

    def __init__(self, experiment: Experiment, jobs: list[_JobData]) -> None:
        self._exp = experiment
        self._jobs = jobs

    def __len__(self) -> int:
        return len(self._jobs)

    @overload
    def __getitem__(self, index: int) -> JobView: ...

    @overload
    def __getitem__(self, index: slice) -> JobCollection: ...

    def __getitem__(self, index: int | slice) -> JobView | JobCollection:
        if isinstance(index, slice):
            return JobCollection(self._exp, self._jobs[index])
        return JobView(self._exp, self._jobs[index])

    def __iter__(self) -> Iterator[JobView]:
        return (JobView(self._exp, d) for d in self._jobs)

    def __repr__(self) -> str:
        stages = sorted({d.pname for d in self._jobs})
        return f"<JobCollection: {len(self)} jobs ({', '.join(stages) or 'none'})>"

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self._jobs]

    def filter(
        self,
        predicate: Callable[[JobView], bool] | None = None,
        *,
        run: str | Iterable[str] | None = None,
        stage: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None,
        **params: Any,
    ) -> JobCollection:
        """The jobs that pass every test (see :meth:`Experiment.jobs` for their meaning)."""
        return JobCollection(self._exp, self._exp._select(
            self._jobs, predicate, run=run, stage=stage, status=status, params=params))

    def statuses(self) -> dict[str, str]:
        """Job id -> status, read from the store in one snapshot."""
        return self._exp._statuses(self._jobs)

    def to_dataframe(self, *, params: str = "effective") -> pd.DataFrame:
        """One row per job: ``id, run, stage, pname, status, started, finished, duration``,
        the resource report of its last attempt, and one column per param
        (``params="own"``: only the params each stage declares).

        ``started``/``finished`` are UTC timestamps, ``duration`` seconds; a param a job does
        not have is missing (NaN). A param named like one of the fixed columns becomes
        ``params.<name>``. The resource report: ``failure`` (the kind of failure that ended
        it, such as ``OUT_OF_MEMORY``; empty for a success), ``attempts`` (how many it
        took), ``node`` it ran on, requested ``req_mem`` (bytes) and ``req_time``
        (seconds), and measured ``max_rss`` (bytes), ``elapsed`` and ``cpu_time``
        (seconds); missing where the record does not say (SLURM without accounting, a
        record of an older repx).
        """
        if params not in ("effective", "own"):
            raise AnalysisError(f"params={params!r}: use 'effective' or 'own'")
        pd = _pandas()
        records = self._exp._records(self._jobs)
        rows: list[dict[str, Any]] = []
        param_columns: dict[str, None] = {}
        for data in self._jobs:
            values = self._exp._effective(data) if params == "effective" else data.params
            record = records.get(data.id)
            if data.manifest_status is not None:
                status = data.manifest_status
            else:
                status = record.status.value if record is not None else NOT_RUN
            started = record.started if record is not None else None
            finished = record.finished if record is not None else None
            row: dict[str, Any] = {
                "id": data.id, "run": data.run, "stage": data.stage, "pname": data.pname,
                "status": status, "started": started, "finished": finished,
                "duration": (finished - started
                             if started is not None and finished is not None else None),
                "failure": record.failure if record is not None else "",
                "attempts": len(record.attempts) if record is not None else 0,
            }
            last = record.attempts[-1] if record is not None and record.attempts else {}
            for column, key in _ATTEMPT_COLUMNS.items():
                row[column] = last.get(key)
            for key, value in values.items():
                column = f"params.{key}" if key in JOB_COLUMNS else key
                param_columns[column] = None
                row[column] = value
            rows.append(row)
        frame = pd.DataFrame(rows, columns=[*JOB_COLUMNS, *param_columns])
        for column in ("started", "finished"):
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
        frame["duration"] = frame["duration"].astype(float)
        for column in ("req_mem", "req_time", "max_rss", "elapsed", "cpu_time"):
            frame[column] = frame[column].astype(float)
        frame["attempts"] = frame["attempts"].astype(int)
        return frame

    def collect(
        self,
        output: str,
        loader: Callable[[Path], Any] | None = None,
        *,
        missing: str = "raise",
        params: str = "effective",
    ) -> pd.DataFrame:
        """One DataFrame of output ``output`` of every job here that declares it, each row
        with its job's ``id`` and params as columns (see :meth:`Experiment.collect`)."""
        return self._exp._collect(self._jobs, output, loader, missing=missing, params=params)


# ------------------------------------------------------------------------------ experiment


class Experiment:
    """A built lab and its job store, for analysis.

    ``lab``: a built lab directory (``./result``, what ``repx lab build`` links), or a lab
    file / a folder with ``lab.nix`` (built first, without touching ``./result``).
    ``store``: the job store (default: ``$REPX_STORE``, else ``./.repx``, else the
    ``.repx`` beside ``lab``). The store is opened read-only; close it with :meth:`close`
    or a ``with`` block (it is also closed when the object goes away). ``store=False``
    reads no store: the jobs and their params only, every status ``unknown`` and no output
    paths (what :mod:`repx_py` uses when its resolver says where the outputs are).
    """

    def __init__(self, lab: str | os.PathLike[str] = "result",
                 store: str | os.PathLike[str] | None | Literal[False] = None) -> None:
        from repx.lab.blueprint import load_lab
        from repx.lab.expand import expand_lab
        from repx.lab.open import is_lab_dir

        lab_path = Path(lab)
        if is_lab_dir(lab_path):
            lab_dir = lab_path.resolve()
        else:
            lab_dir = self._build(lab_path)
        self.graph: JobGraph = expand_lab(load_lab(lab_dir))
        self.lab_path = lab_dir
        self._manifest = False
        self._store: Store | None = None
        self._reads_store = store is not False
        jobs: list[_JobData] = []
        if store is False:
            self.store_path = None  # type: ignore[assignment]
            for job in self.graph.jobs.values():
                jobs.append(_JobData(
                    id=job.id, run=job.run, runs=list(job.runs), stage=job.stage,
                    pname=job.pname, version=job.version, kind=job.kind,
                    params=dict(job.params), depends_on=list(job.depends_on),
                    outputs=dict(job.outputs), out_dir=None, meta_dir=None,
                    manifest_status=UNKNOWN))
        else:
            from repx.store import Store

            self.store_path = self._find_store(store, lab_path)
            self._store = Store(self.store_path, readonly=True)
            outputs_root = self.store_path / layout.OUTPUTS
            for job in self.graph.jobs.values():
                job_dir = outputs_root / job.id
                jobs.append(_JobData(
                    id=job.id, run=job.run, runs=list(job.runs), stage=job.stage,
                    pname=job.pname, version=job.version, kind=job.kind,
                    params=dict(job.params), depends_on=list(job.depends_on),
                    outputs=dict(job.outputs), out_dir=job_dir / layout.OUT,
                    meta_dir=job_dir / layout.META))
        self._init_jobs(jobs, {name: list(r.job_ids) for name, r in self.graph.runs.items()},
                        dict(self.graph.groups))

    @staticmethod
    def _build(path: Path) -> Path:
        from repx.errors import LabError
        from repx.lab import LabOptions
        from repx.lab.open import locate_lab

        if path.is_dir():
            candidates = [path / "lab.nix", path / "nix" / "lab.nix"]
            lab_file = next((c for c in candidates if c.is_file()), None)
            if lab_file is None:
                raise LabError(f"{path} is neither a built lab (no lab.json/runs/) nor a folder "
                               "with lab.nix; pass ./result after `repx lab build`")
        elif path.is_file():
            lab_file = path
        else:
            raise LabError(f"{path} does not exist; pass a built lab (./result after "
                           "`repx build` or `repx lab build`) or a lab.nix")
        return locate_lab(LabOptions(lab_file=str(lab_file), out_link=None))

    @staticmethod
    def _find_store(store: str | os.PathLike[str] | None, lab: Path) -> Path:
        from repx.store import StoreError

        if store is not None:
            path = Path(os.path.abspath(store))
            if not (path / "db" / "data.mdb").is_file():
                raise StoreError(f"no repx store at {path}; run `repx build` first or pass "
                                 "store= the folder given to --store")
            return path
        env = os.environ.get("REPX_STORE")
        candidates = [Path(env)] if env else [Path(".repx"), lab.absolute().parent / ".repx"]
        for candidate in candidates:
            if (candidate / "db" / "data.mdb").is_file():
                return Path(os.path.abspath(candidate))
        tried = " or ".join(str(Path(os.path.abspath(c))) for c in dict.fromkeys(candidates))
        raise StoreError(f"no repx store at {tried}; run `repx build` first or pass store=")

    @classmethod
    def from_manifest(cls, *manifests: str | os.PathLike[str],
                      store_base: str | os.PathLike[str] | None = None) -> Experiment:
        """The experiment an analysis stage sees: the jobs of the ``metadata__<run>``
        manifest(s) it received (``"${inputs.metadata__simulation}"``).

        Needs no lab and no store database: params, statuses and output paths come from the
        manifest. Both shapes a manifest has had are read:

        * the run metadata in the original RepX's shape, which repx writes (a JSON object:
          ``type: "run"``, ``name``, ``gitHash``, ``dependencies``, ``jobs`` by id; see
          :mod:`repx.engine.manifest`). The original's own ``revision/metadata-<run>.json``
          has the same shape without statuses and absolute output paths: its jobs' status
          is ``unknown`` and their outputs resolve under ``store_base``
          (``<store_base>/outputs/<id>/out/``);
        * the JSON list of job entries (id, run, stage, pname, params, status, outputs)
          that earlier repx versions wrote.

        A job's upstream jobs (for effective params) come from its input mappings; in a
        list-shaped manifest, which has none, from the ``inputs.json`` the job ran with,
        beside its outputs (or under ``store_base``, the ``store__base`` input); a job whose
        ``inputs.json`` cannot be read has its own params only.
        """
        self = cls.__new__(cls)
        self.graph = None  # type: ignore[assignment]
        self.lab_path = None  # type: ignore[assignment]
        self._store = None
        self._manifest = True
        self._reads_store = False
        base = Path(os.path.abspath(store_base)) if store_base is not None else None
        self.store_path = base  # type: ignore[assignment]
        jobs: dict[str, _JobData] = {}
        runs: dict[str, list[str]] = {}
        documents: dict[str, dict[str, Any]] = {}
        for manifest in manifests:
            try:
                with open(manifest, encoding="utf-8") as handle:
                    document = json.load(handle)
            except (OSError, ValueError) as exc:
                raise AnalysisError(f"cannot read the run manifest {manifest}: {exc}") from None
            if isinstance(document, list):
                found = [_job_of_list_entry(manifest, entry, base) for entry in document]
            elif isinstance(document, dict) and isinstance(document.get("jobs"), dict):
                run, found = _jobs_of_run_metadata(manifest, document, base)
                documents[run] = document
            else:
                raise AnalysisError(
                    f"{manifest} is not a run manifest: expected a JSON object with 'type': "
                    "'run', 'name' and 'jobs' (what repx and the original RepX write), or a "
                    "JSON list of jobs (earlier repx versions)")
            for data in found:
                known = jobs.get(data.id)
                if known is None:
                    jobs[data.id] = data
                elif data.run not in known.runs:
                    known.runs.append(data.run)
                runs.setdefault(data.run, []).append(data.id)
        for data in jobs.values():
            mapped = _upstream_from_mappings(data.metadata)
            if mapped is None:
                data.depends_on = _upstream_from_inputs(data, jobs)
            else:
                data.depends_on = [u for u in mapped if u in jobs and u != data.id]
        self._init_jobs(list(jobs.values()), runs, {}, documents)
        return self

    def _init_jobs(self, jobs: list[_JobData], runs: dict[str, list[str]],
                   groups: dict[str, list[str]],
                   documents: dict[str, dict[str, Any]] | None = None) -> None:
        self._jobs = jobs
        self._by_id = {d.id: d for d in jobs}
        self._runs = runs
        self._groups = groups
        #: run -> its run metadata as read (manifest mode) or made (on first use).
        self._run_documents = documents or {}

    # ---- lifetime

    def close(self) -> None:
        """Release the store (the object can still list jobs, not read statuses)."""
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # the store handle is a process-wide LMDB environment
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    def __repr__(self) -> str:
        source = f"lab {self.lab_path}" if not self._manifest else "manifest"
        return (f"<Experiment {source}, store {self.store_path}: {len(self._jobs)} jobs in "
                f"runs {', '.join(self._runs)}>")

    # ---- what is there

    @property
    def runs(self) -> list[str]:
        """Run names, in the lab's order."""
        return list(self._runs)

    @property
    def groups(self) -> dict[str, list[str]]:
        return {g: list(m) for g, m in self._groups.items()}

    def run_metadata(self, run: str) -> dict[str, Any]:
        """The metadata of ``run`` in the original RepX's shape (``type``, ``name``,
        ``gitHash``, ``dependencies``, ``jobs`` by id: ``name``, ``stage_type``, ``params``,
        ``executables``, ``resource_hints``), as :mod:`repx.engine.manifest` describes it.

        From a manifest: the document as read. From a lab: made from the lab (no statuses;
        output templates, not paths), once per run.
        """
        if run not in self._runs:
            raise AnalysisError(f"no run '{run}' in this experiment; runs: "
                                f"{', '.join(self._runs) or '(none)'}")
        document = self._run_documents.get(run)
        if document is None:
            document = self._make_run_metadata(run)
            self._run_documents[run] = document
        return document

    def _make_run_metadata(self, run: str) -> dict[str, Any]:
        jobs: dict[str, Any] = {}
        if self.graph is not None:
            from repx.engine.manifest import job_metadata, run_header

            header = run_header(self.graph, run)
            for job_id in self._runs[run]:
                # A template resolves against any folder; "$out" spells it back as written.
                jobs[job_id] = job_metadata(self.graph.jobs[job_id], "$out")
            return {**header, "jobs": jobs}
        # A list-shaped manifest: what its entries say, in the original's keys.
        for job_id in self._runs[run]:
            data = self._by_id[job_id]
            jobs[job_id] = {"name": f"{data.pname}-{data.version}" if data.version
                            else data.pname, "stage_type": data.kind, "params": data.params,
                            "executables": {"main": {"outputs": dict(data.outputs)}}}
        return {"type": "run", "name": run, "gitHash": "unknown", "dependencies": {},
                "jobs": jobs}

    def stages(self, run: str | None = None) -> list[str]:
        """The stage pnames (of ``run``, or of every run), in expansion order."""
        jobs = self._select(self._jobs, None, run=run, stage=None, status=None, params={})
        return list(dict.fromkeys(d.pname for d in jobs))

    def job(self, job_id: str) -> JobView:
        """The job whose id is ``job_id`` or uniquely starts with it."""
        data = self._by_id.get(job_id)
        if data is None:
            found = [d for d in self._jobs if d.id.startswith(job_id)] if job_id else []
            if len(found) != 1:
                what = "no job" if not found else f"{len(found)} jobs"
                raise AnalysisError(f"{what} of this experiment ha{'s' if not found else 've'} "
                                    f"an id starting with '{job_id}'"
                                    + ("; give more characters" if found else ""))
            data = found[0]
        return JobView(self, data)

    def jobs(
        self,
        predicate: Callable[[JobView], bool] | None = None,
        *,
        run: str | Iterable[str] | None = None,
        stage: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None,
        **params: Any,
    ) -> JobCollection:
        """The jobs that pass every test given.

        ``run``: a run name or ``@group`` (or several); ``stage``: a pname or pipeline key
        (or several); ``status``: ``succeeded``, ``failed``, ``not run``… (or several);
        ``param=value``: the job's effective param equals ``value`` (a list, tuple or set:
        is one of them; a callable: returns true for it); ``predicate(job)``: any test.
        A param no selected job has is an error, not an empty selection.
        """
        return JobCollection(self, self._select(self._jobs, predicate, run=run, stage=stage,
                                                status=status, params=params))

    def to_dataframe(self, **filters: Any) -> pd.DataFrame:
        """``exp.jobs(**filters).to_dataframe()``."""
        return self.jobs(**filters).to_dataframe()

    def collect(
        self,
        output: str,
        loader: Callable[[Path], Any] | None = None,
        *,
        missing: str = "raise",
        params: str = "effective",
        run: str | Iterable[str] | None = None,
        stage: str | Iterable[str] | None = None,
        **param_filters: Any,
    ) -> pd.DataFrame:
        """Output ``output`` of every selected job that declares it, concatenated into one
        DataFrame with the job's ``id`` and (effective) params as columns.

        ``loader(path)`` reads one file and returns a DataFrame, a dict (one row), a list of
        dicts (rows) or a scalar (one value column named ``output``); by default files are
        read by extension (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``). Jobs that
        have not succeeded raise :class:`JobNotRunError` (``missing="skip"``: skipped with a
        warning). Only one stage may declare ``output`` among the selected jobs (pass
        ``stage=``). A param the data also holds in a column of the same name is not
        repeated when the values agree, and kept as ``params.<name>`` when they do not; the
        job id column is ``job_id`` when the data has an ``id`` column.
        """
        jobs = self._select(self._jobs, None, run=run, stage=stage, status=None,
                            params=param_filters)
        return self._collect(jobs, output, loader, missing=missing, params=params)

    # ---- internals

    def _record(self, job_id: str) -> JobRecord | None:
        if not self._reads_store:
            return None
        store = self._require_store()
        return store.get(job_id)

    def _records(self, jobs: list[_JobData]) -> dict[str, JobRecord]:
        if not self._reads_store:
            return {}
        return self._require_store().get_many([d.id for d in jobs])

    def _statuses(self, jobs: list[_JobData]) -> dict[str, str]:
        if not self._reads_store:
            return {d.id: d.manifest_status or NOT_RUN for d in jobs}
        statuses = self._require_store().statuses([d.id for d in jobs])
        return {d.id: statuses[d.id].value if d.id in statuses else NOT_RUN for d in jobs}

    def _require_store(self) -> Store:
        if self._store is None:
            raise AnalysisError(f"the store at {self.store_path} was closed; open a new "
                                "Experiment to read statuses and outputs")
        return self._store

    def _effective(self, data: _JobData) -> dict[str, Any]:
        """Effective params, computed once per job (iteratively: chains may be long)."""
        if data.effective is not None:
            return data.effective
        by_id = self._by_id
        stack = [data]
        on_stack = {data.id}
        while stack:
            top = stack[-1]
            pending = [by_id[u] for u in top.depends_on
                       if u in by_id and by_id[u].effective is None and u not in on_stack]
            if pending:
                stack.extend(pending)
                on_stack.update(p.id for p in pending)
                continue
            stack.pop()
            if top.effective is not None:
                continue
            merged: dict[str, Any] = {}
            for up in top.depends_on:
                if up in by_id and by_id[up] is not top:
                    merged.update(by_id[up].effective or {})
            merged.update(top.params)
            top.effective = merged
        return data.effective or {}

    def _select(
        self,
        jobs: list[_JobData],
        predicate: Callable[[JobView], bool] | None,
        *,
        run: str | Iterable[str] | None,
        stage: str | Iterable[str] | None,
        status: str | Iterable[str] | None,
        params: Mapping[str, Any],
    ) -> list[_JobData]:
        selected = jobs
        if run is not None:
            names = [run] if isinstance(run, str) else list(run)
            wanted: set[str] = set()
            for name in names:
                if name.startswith("@") and name[1:] in self._groups:
                    wanted.update(self._groups[name[1:]])
                elif name in self._runs:
                    wanted.add(name)
                else:
                    groups = ", ".join(f"@{g}" for g in self._groups)
                    raise AnalysisError(f"no run '{name}' in this experiment; runs: "
                                        f"{', '.join(self._runs) or '(none)'}"
                                        + (f"; groups: {groups}" if groups else ""))
            ids = {i for r in wanted for i in self._runs[r]}
            selected = [d for d in selected if d.id in ids]
        if stage is not None:
            names = [stage] if isinstance(stage, str) else list(stage)
            known = {d.pname for d in selected} | {d.stage for d in selected}
            unknown = [n for n in names if n not in known]
            if unknown:
                pnames = sorted({d.pname for d in selected})
                raise AnalysisError(f"no stage '{unknown[0]}' among the selected jobs; their "
                                    f"stages (pnames): {', '.join(pnames) or '(none)'}")
            selected = [d for d in selected if d.pname in names or d.stage in names]
        if status is not None:
            wanted_status = {status} if isinstance(status, str) else set(status)
            current = self._statuses(selected)
            selected = [d for d in selected if current[d.id] in wanted_status]
        if params:
            available: dict[str, None] = {}
            for d in selected:
                available.update(dict.fromkeys(self._effective(d)))
            for key in params:
                if selected and key not in available:
                    raise AnalysisError(
                        f"no selected job has a param '{key}'; their params: "
                        f"{', '.join(available) or '(none)'}")
            selected = [d for d in selected
                        if all(k in self._effective(d) and _matches(self._effective(d)[k], v)
                               for k, v in params.items())]
        if predicate is not None:
            selected = [d for d in selected if predicate(JobView(self, d))]
        return selected

    def _collect(self, jobs: list[_JobData], output: str, loader: Callable[[Path], Any] | None,
                 *, missing: str, params: str) -> pd.DataFrame:
        if missing not in ("raise", "skip"):
            raise AnalysisError(f"missing={missing!r}: use 'raise' or 'skip'")
        if params not in ("effective", "own"):
            raise AnalysisError(f"params={params!r}: use 'effective' or 'own'")
        pd = _pandas()
        declaring = [d for d in jobs if output in d.outputs]
        if not declaring:
            per_stage: dict[str, set[str]] = {}
            for d in jobs:
                per_stage.setdefault(d.pname, set()).update(d.outputs)
            listing = "; ".join(f"{p}: {', '.join(sorted(o)) or '-'}"
                                for p, o in per_stage.items())
            raise AnalysisError(f"no selected job declares an output '{output}'; outputs by "
                                f"stage: {listing or '(no jobs selected)'}")
        stage_keys = list(dict.fromkeys(d.stage for d in declaring))
        if len(stage_keys) > 1:
            raise AnalysisError(f"output '{output}' is declared by several stages "
                                f"({', '.join(stage_keys)}); choose one with stage=")
        statuses = self._statuses(declaring)
        # A job of unknown status (a manifest that does not say) counts when its file exists.
        not_done = [d for d in declaring if statuses[d.id] not in (SUCCEEDED, UNKNOWN)]
        if not_done:
            if missing == "raise":
                view = JobView(self, not_done[0])
                try:
                    view._require_success(f"output '{output}'")
                except JobNotRunError as exc:
                    counts: dict[str, int] = {}
                    for d in not_done:
                        counts[statuses[d.id]] = counts.get(statuses[d.id], 0) + 1
                    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
                    raise JobNotRunError(
                        f"{len(not_done)} of {len(declaring)} jobs with output '{output}' have "
                        f"not run successfully ({summary}); pass missing='skip' to leave them "
                        f"out. The first: {exc.message}") from None
            warnings.warn(f"collect('{output}'): left out {len(not_done)} of {len(declaring)} "
                          "jobs that have not run successfully", stacklevel=3)
        frames = []
        for data in declaring:
            if statuses[data.id] not in (SUCCEEDED, UNKNOWN):
                continue
            view = JobView(self, data)
            path = view.output_path(output)
            frame = _as_frame(pd, loader(path) if loader else _default_load(pd, path), output)
            values = self._effective(data) if params == "effective" else data.params
            columns: dict[str, Any] = {}
            id_column = "job_id" if "id" in frame.columns else "id"
            columns[id_column] = data.id
            for key, value in values.items():
                name = f"params.{key}" if key in frame.columns or key == id_column else key
                columns[name] = value
            for position, (name, value) in enumerate(columns.items()):
                frame.insert(position, name, [value] * len(frame))
            frames.append(frame)
        if not frames:
            return pd.DataFrame()
        result = pd.concat(frames, ignore_index=True, sort=False)
        # A param the data already holds under its own name (evaluation.json repeating the
        # learning rate) is not repeated; one whose values differ stays as params.<name>.
        for column in [c for c in result.columns if c.startswith("params.")]:
            plain = column[len("params."):]
            if plain in result.columns and _same(result[column], result[plain]):
                result = result.drop(columns=column)
        return result


# ------------------------------------------------------------------------------ helpers


def _job_dirs(job_id: str, outputs: Mapping[str, Any],
              base: Path | None) -> tuple[Path | None, Path | None]:
    """A manifest job's ``out`` and ``repx`` folders: under ``store_base`` when given, else
    found in its output paths (``<store>/outputs/<id>/out/…``)."""
    if base is not None:
        job_dir = base / layout.OUTPUTS / job_id
        return job_dir / layout.OUT, job_dir / layout.META
    marker = f"/{layout.OUTPUTS}/{job_id}/{layout.OUT}"
    for path in outputs.values():
        if isinstance(path, str) and marker in path:
            job_dir = Path(path[: path.index(marker) + len(marker) - len(layout.OUT) - 1])
            return job_dir / layout.OUT, job_dir / layout.META
    return None, None


def _upstream_from_inputs(data: _JobData, known: Mapping[str, _JobData]) -> list[str]:
    """The producers of a manifest job, read from the inputs.json it ran with (an input
    path ``…/outputs/<producer>/out/…`` names its producer)."""
    if data.meta_dir is None:
        return []
    try:
        with open(data.meta_dir / layout.INPUTS_JSON, encoding="utf-8") as handle:
            inputs = json.load(handle)
    except (OSError, ValueError):
        return []
    upstream: dict[str, None] = {}
    for value in inputs.values() if isinstance(inputs, dict) else ():
        if isinstance(value, str):
            match = _OUTPUT_DIR_RE.search(value)
            if match and match.group(1) in known and match.group(1) != data.id:
                upstream[match.group(1)] = None
    return list(upstream)


def _manifest_error(manifest: str | os.PathLike[str], what: str, entry: Any) -> AnalysisError:
    return AnalysisError(f"{manifest}: {what} (entry: {json.dumps(entry, default=str)[:200]})")


def _job_of_list_entry(manifest: str | os.PathLike[str], entry: Any,
                       base: Path | None) -> _JobData:
    """One job of a list-shaped manifest (what earlier repx versions wrote)."""
    try:
        job_id, run = str(entry["id"]), str(entry["run"])
        outputs = dict(entry.get("outputs") or {})
        data = _JobData(
            id=job_id, run=run, runs=[run], stage=str(entry["stage"]),
            pname=str(entry.get("pname", entry["stage"])),
            version=job_id.rsplit("-", 1)[-1] if "-" in job_id else "",
            kind="simple", params=dict(entry.get("params") or {}), depends_on=[],
            outputs=outputs, out_dir=None, meta_dir=None,
            manifest_status=str(entry.get("status", NOT_RUN)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _manifest_error(manifest, f"a job entry lacks {exc}", entry) from None
    data.out_dir, data.meta_dir = _job_dirs(job_id, outputs, base)
    return data


def _metadata_outputs(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The output templates of an entry of the original's shape: ``main``'s, or ``gather``'s
    for a scatter-gather job (where the original's readers look)."""
    executables = metadata.get("executables") or {}
    exe = executables.get("gather" if metadata.get("stage_type") == "scatter-gather"
                          else "main") or {}
    return dict(exe.get("outputs") or {})


def _jobs_of_run_metadata(manifest: str | os.PathLike[str], document: dict[str, Any],
                          base: Path | None) -> tuple[str, list[_JobData]]:
    """The run name and jobs of a manifest of the original's shape (see from_manifest)."""
    if document.get("type", "run") != "run":
        raise AnalysisError(f"{manifest} is not the metadata of a run: its 'type' is "
                            f"{document.get('type')!r}, expected 'run'")
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise AnalysisError(f"{manifest}: the run metadata has no 'name' (the run's name)")
    found: list[_JobData] = []
    for job_id, entry in document["jobs"].items():
        if not isinstance(entry, dict):
            raise _manifest_error(manifest, f"job {job_id} is not an object", entry)
        try:
            full_name = str(entry.get("name") or job_id)
            pname = str(entry.get("pname") or full_name.rsplit("-", 1)[0])
            version = full_name[len(pname) + 1:] if full_name.startswith(pname + "-") else ""
            # repx's absolute paths when the manifest has them, else the templates.
            outputs = dict(entry.get("outputs") or _metadata_outputs(entry))
            data = _JobData(
                id=job_id, run=str(entry.get("run") or name), runs=[], stage=str(
                    entry.get("stage") or pname), pname=pname, version=version,
                kind=str(entry.get("stage_type") or "simple"),
                params=dict(entry.get("params") or {}), depends_on=[], outputs=outputs,
                out_dir=None, meta_dir=None, manifest_status=str(entry.get("status", UNKNOWN)),
                metadata=entry)
        except (TypeError, ValueError, AttributeError) as exc:
            raise _manifest_error(manifest, f"job {job_id} is malformed ({exc})",
                                  entry) from None
        data.runs = [data.run]
        data.out_dir, data.meta_dir = _job_dirs(job_id, outputs, base)
        found.append(data)
    return name, found


def _upstream_from_mappings(metadata: Mapping[str, Any] | None) -> list[str] | None:
    """The producer ids named by the input mappings of an entry of the original's shape
    (``main``'s, or ``scatter``'s), in order; None when the entry has no mappings."""
    if metadata is None:
        return None
    executables = metadata.get("executables") or {}
    exe = executables.get("scatter" if metadata.get("stage_type") == "scatter-gather"
                          else "main")
    if not isinstance(exe, dict) or not isinstance(exe.get("inputs"), list):
        return None
    upstream: dict[str, None] = {}
    for mapping in exe["inputs"]:
        job_id = mapping.get("job_id") if isinstance(mapping, dict) else None
        if isinstance(job_id, str) and job_id != "self":
            upstream[job_id] = None
    return list(upstream)


def _same(a: Any, b: Any) -> bool:
    """Two columns hold the same values (missing where both are missing)."""
    return bool(((a == b) | (a.isna() & b.isna())).all())


def _default_load(pd: Any, path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix == ".tsv":
        return pd.read_csv(path, sep="\t")
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(path, lines=True)
    if suffix == ".json":
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise AnalysisError(f"no default loader for '{suffix or path.name}' files ({path}); pass "
                        "loader=, e.g. loader=lambda p: pd.read_csv(p, sep=';')")


def _as_frame(pd: Any, data: Any, output: str) -> pd.DataFrame:
    """What a loader returned, as a DataFrame (a dict is one row, nested keys dotted)."""
    if isinstance(data, pd.DataFrame):
        return data.reset_index(drop=True).copy()
    if isinstance(data, pd.Series):
        return data.to_frame().T.reset_index(drop=True)
    if isinstance(data, Mapping):
        return pd.json_normalize(dict(data))
    if isinstance(data, list):
        if all(isinstance(x, Mapping) for x in data):
            return pd.json_normalize(data)
        return pd.DataFrame({output: data})
    return pd.DataFrame({output: [data]})
