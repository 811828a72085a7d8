"""The rules every live display of repx follows (the build's, the lab's), in one place.

- A line that is redrawn never wraps: it is cut to the terminal's width *before* it is
  drawn, so a redraw can always erase exactly what it drew (a wrapped line would leave a
  stale copy behind at every redraw).
- Colour only on a terminal, and never with ``NO_COLOR`` set (https://no-color.org): a log
  file or a pipe gets plain text, no escape codes at all.
- ASCII glyphs when the stream's encoding is not UTF-8 (``LC_ALL=C``,
  ``PYTHONIOENCODING=ascii``): ``|``, ``>`` and ``...`` instead of ``·``, ``▸`` and ``…``,
  which such a terminal would show as ``?`` or escape sequences.

Drawing (cursor moves, erasing, colours) is :mod:`rich`'s: repx writes no escape sequence
of its own.
"""

from __future__ import annotations

import codecs
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    # Imported where a console is made: a command that draws nothing (a no-op build
    # answered from its index) does not load rich.
    from rich.console import Console


@dataclass(frozen=True)
class Glyphs:
    """The few non-letters a display uses, in the stream's character set."""

    #: Between two parts of a status line.
    separator: str
    #: Before a running job.
    running: str
    #: Where text was cut.
    ellipsis: str
    #: Whether ``rich`` may use its own ``…`` when it cuts text.
    unicode: bool


UNICODE = Glyphs(separator=" · ", running="▸", ellipsis="…", unicode=True)
ASCII = Glyphs(separator=" | ", running=">", ellipsis="...", unicode=False)


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal that can redraw: False for a closed or unusual
    stream, and for ``TERM=dumb`` (an editor's shell buffer, which gets the plain lines)."""
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def is_utf8(stream: TextIO) -> bool:
    """Whether ``stream`` encodes UTF-8; a stream without an encoding (``StringIO``) holds
    any character."""
    encoding = getattr(stream, "encoding", None)
    if not encoding:
        return True
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


def glyphs_for(stream: TextIO) -> Glyphs:
    """:data:`UNICODE` for a UTF-8 stream, else :data:`ASCII`."""
    return UNICODE if is_utf8(stream) else ASCII


def colour_allowed() -> bool:
    """False when ``NO_COLOR`` is set to anything but the empty string (its standard)."""
    return not os.environ.get("NO_COLOR")


def make_console(stream: TextIO, *, terminal: bool) -> Console:
    """A :class:`rich.console.Console` on ``stream`` that follows the module's rules.

    ``terminal`` is whether to draw live (cursor moves); colour comes with it unless
    ``NO_COLOR`` is set. Markup and highlighting are off: job labels and log lines are
    shown as they are, never read as ``[red]`` markup or coloured as numbers.
    """
    colour = terminal and colour_allowed()
    from rich.console import Console

    return Console(file=stream, force_terminal=terminal, no_color=not colour,
                   color_system="auto" if colour else None, markup=False, emoji=False,
                   highlight=False, safe_box=True, legacy_windows=False)


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 job``, ``2 jobs`` (``many`` for a noun whose plural is not noun + s:
    ``plural(n, "branch", "branches")``). Every count repx prints goes through it, so no
    output says "1 jobs"."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"
