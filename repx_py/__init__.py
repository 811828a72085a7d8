"""``repx_py``: the original RepX's Python API, so analysis code written for it runs on repx.

>>> from repx_py import Experiment                                          # doctest: +SKIP
>>> exp = Experiment(lab_path="./result")                                   # doctest: +SKIP
>>> for job in exp.jobs().filter(name__contains="train", param_lr=0.01):    # doctest: +SKIP
...     print(job.effective_params, job.get_output_path("metrics"))

Inside an analysis stage: ``Experiment.from_run_metadata(meta, store_base)`` with the
``metadata__<run>`` and ``store__base`` inputs. It is a compatibility layer over
:mod:`repx.analysis` (see :mod:`repx_py.models` for where it departs from the original, and
docs/analysis.md); it needs only the standard library, and pandas for DataFrames.
"""

import logging

from repx import __version__
from repx_py.models import (
    ArtifactResolver,
    Experiment,
    JobCollection,
    JobView,
    LocalCacheResolver,
    ManifestResolver,
    MetadataError,
    MetadataNotFoundError,
    NotFoundError,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

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
    "__version__",
]
