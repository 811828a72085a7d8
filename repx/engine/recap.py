"""The failure recap: what failed in a build, with the params that tell the jobs apart.

A sweep's failures are told apart by their params, not by their ids, so the recap the
build ends with (and ``repx build --json``'s ``failures``) carries each failed job's run,
stage and params beside the reason and the log. :func:`failed_jobs` gathers the rows from
the scheduler's failures and the graph; :func:`recap_lines` is the plain-text table (the
live display may draw the same rows its own way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from repx.engine.scheduler import Failure
from repx.identity import canonical_json
from repx.lab.graph import JobGraph


@dataclass
class FailedJob:
    """One failed unit with the job it belongs to, ready for a table or JSON."""

    job: str
    unit: str
    run: str
    stage: str
    pname: str
    params: dict[str, Any]
    label: str
    reason: str
    stderr_log: str
    stdout_log: str

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "job": self.job, "label": self.label, "run": self.run,
                "stage": self.stage, "pname": self.pname, "params": self.params,
                "reason": self.reason, "stderr_log": self.stderr_log,
                "stdout_log": self.stdout_log}


def failed_jobs(graph: JobGraph, failures: list[Failure]) -> list[FailedJob]:
    """The recap rows of ``failures`` (units of jobs of ``graph``), in failure order."""
    # Effective params (upstream jobs', then its own), as `repx list jobs` shows them: a
    # failed stage without params is told apart by its upstream's.
    from repx.report.lab_views import effective_params

    effective = effective_params(graph, [f.job for f in failures if f.job in graph.jobs])
    rows: list[FailedJob] = []
    for f in failures:
        job = graph.jobs.get(f.job)
        rows.append(FailedJob(
            job=f.job, unit=f.unit, run=job.run if job else "", stage=job.stage if job else "",
            pname=job.pname if job else f.label, params=effective.get(f.job, {}),
            label=f.label, reason=f.reason, stderr_log=f.stderr_log,
            stdout_log=f.stdout_log))
    return rows


def params_text(params: dict[str, Any]) -> str:
    """``a=1 b="x"``: params as a short line (JSON values, so strings stay quoted)."""
    return " ".join(f"{k}={canonical_json(v)}" for k, v in params.items())


def recap_lines(rows: list[FailedJob], *, limit: int = 50) -> list[str]:
    """The recap table: one line per failed job (stage, params, reason, log), at most
    ``limit`` lines plus a count of the rest."""
    if not rows:
        return []
    header = ("STAGE", "PARAMS", "REASON", "LOG")
    table = [(r.label or r.pname, params_text(r.params) or "-", r.reason, r.stderr_log)
             for r in rows[:limit]]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(3)]
    lines = [f"{len(rows)} failed job{'s' if len(rows) != 1 else ''}:"]
    for row in [header, *table]:
        lines.append(f"  {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  "
                     f"{row[2]:<{widths[2]}}  {row[3]}".rstrip())
    if len(rows) > limit:
        lines.append(f"  … and {len(rows) - limit} more (repx build --json lists them all)")
    return lines
