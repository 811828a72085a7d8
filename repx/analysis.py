"""The analysis API's public import path: ``from repx.analysis import Experiment``.

The implementation is :mod:`repx.report.analysis`; this name is what notebooks and the
documentation use, so it stays stable whatever the package layout.
"""

from repx.report.analysis import (
    AnalysisError,
    Experiment,
    JobCollection,
    JobNotRunError,
    JobView,
    OutputMissingError,
)

__all__ = [
    "AnalysisError",
    "Experiment",
    "JobCollection",
    "JobNotRunError",
    "JobView",
    "OutputMissingError",
]
