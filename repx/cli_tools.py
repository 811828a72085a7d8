"""``repx viz``, ``repx makefile`` and ``repx init``: the tools around a build."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add this module's commands to the ``repx`` group."""
    del main
