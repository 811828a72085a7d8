"""The lab layer: from ``lab.nix`` to the job graph.

:mod:`.nix` builds the lab with Nix, :mod:`.blueprint` loads the lab directory it writes,
:mod:`.expand` expands the sweeps into a :class:`~repx.lab.graph.JobGraph` (identities from
:mod:`repx.identity`), :mod:`.resources` checks and merges resource hints,
:mod:`.script_checks` validates every stage script, :mod:`.open` ties these together as
:func:`open_lab`, and :mod:`.scaffold` is ``repx init``. Nothing here touches the store.
"""

from repx.lab.open import LabOptions, open_lab

__all__ = ["LabOptions", "open_lab"]
