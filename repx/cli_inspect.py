"""``repx status``, ``show``, ``log``, ``cache`` and ``gc``: looking at what the store holds."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add this module's commands to the ``repx`` group."""
    del main
