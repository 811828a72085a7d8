"""The analysis API's public import path: ``from repx.analysis import Experiment``.

The implementation is :mod:`repx.report.analysis`; this name is what notebooks and the
documentation use, so it stays stable whatever the package layout.
"""

from repx.report import analysis as _implementation
from repx.report.analysis import *  # noqa: F403

__all__ = _implementation.__all__
