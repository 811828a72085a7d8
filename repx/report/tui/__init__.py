"""``repx tui``: a terminal dashboard over a lab and its store.

Two halves, so that what the dashboard shows and does can be reasoned about (and tested)
without a terminal: :mod:`.model` reads the store (read-only) into runs → stages → jobs with
their counts, applies the filters, and carries out the actions (cancel, rerun the failed
jobs); :mod:`.app` is the Textual application that draws the model and maps keys to it.
Only :mod:`.app` imports Textual, an optional dependency (``pip install 'repx-lab[tui]'``).
"""

from __future__ import annotations

from repx.report.tui.model import Dashboard, JobFilter, parse_filter

__all__ = ["Dashboard", "JobFilter", "parse_filter"]
