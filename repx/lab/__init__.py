"""The lab layer: from ``lab.nix`` to the job graph.

:mod:`.nix` builds the lab with Nix, :mod:`.blueprint` loads the lab directory it writes,
:mod:`.expand` expands the sweeps into a :class:`~repx.lab.graph.JobGraph` (identities from
:mod:`repx.identity`), :mod:`.resources` checks and merges resource hints,
:mod:`.script_checks` validates every stage script, :mod:`.open` ties these together as
:func:`open_lab` (:mod:`.head_start` starts a build's Nix run before the command line
loads), and :mod:`.scaffold` is ``repx init``. Nothing here touches the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repx.lab.open import LabOptions, open_lab

__all__ = ["LabOptions", "open_lab"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the analysis API (repx.analysis, repx_py) imports
    # stdlib-only modules of this package (outputs) inside analysis stages that run a plain
    # python3, which lacks the lab layer's dependencies (blake3, tree-sitter).
    if name in __all__:
        from repx.lab import open as _open

        return getattr(_open, name)
    raise AttributeError(f"module 'repx.lab' has no attribute {name!r}")
