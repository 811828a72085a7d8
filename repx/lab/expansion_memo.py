"""Job ids of an earlier expansion, reused when only a run's sweep values changed.

A job's id is a function of three things only (:mod:`repx.identity`): its run's
blueprint less the sweep values (stages, wiring, defaults, hash mode), the identity head
of its stage variant (scripts, input files, the inter-run ids it reads) and the values of
its combination. So when a run's blueprint and heads are those of the run expanded last,
and only its values differ — the edit researchers make most — every combination whose
values were all there before makes exactly the jobs it made then. Expansion then reads
their ids instead of hashing them again: the params JSON, the upstream JSON, the BLAKE3
hash and its base-32 text are skipped, which is about half of a job's expansion; the
params, sources, resources and wiring of every job are still made the usual way, so the
graph is whole and nothing after expansion knows the difference.

What is reused lives in the no-op index of the last build of all runs
(:mod:`repx.engine.noop_index`): per run, the :func:`memo_key` it was expanded under, its
dimensions' values and, per combination and stage plan, the position of the job in the
index's id list. Reuse is checked as well as keyed: a few of the reused combinations are
also hashed the usual way, and any difference discards the memo (the run is expanded in
full). A run keeps no memo when a stage varies by value (its heads are per combination) or
when it reaches a job another run or pipeline made (that job has no position of its own).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from blake3 import blake3

if TYPE_CHECKING:
    # Types only: the no-op check reads memos from its index and never loads a blueprint.
    from repx.lab.blueprint import Run

#: Part of every key: bump when what a key covers, or the layout below, changes.
MEMO_FORMAT = 1

#: Joins the JSON texts of a zip row's values into one key (canonical JSON escapes every
#: control character, so the separator never occurs inside a text).
_ROW_SEPARATOR = "\x1f"


class RunMemo(NamedTuple):
    """How one run was expanded: enough to find the job of any earlier combination."""

    #: :func:`memo_key` of the run as it was expanded.
    key: str
    #: Each dimension's values in order, as :func:`value_key` texts.
    dims: list[list[str]]
    #: Jobs a combination makes: the stage plans of all the run's pipelines.
    stages: int
    #: Per combination (row-major, the first dimension most significant) and stage plan,
    #: the position of the job in the expansion's id list.
    cells: array[int]


class ExpansionMemo(NamedTuple):
    """An earlier expansion: its job ids in graph order and how each run was expanded."""

    ids: Sequence[str]
    runs: dict[str, RunMemo]


def value_key(texts: tuple[str, ...]) -> str:
    """One dimension value (an axis value, or a zip row) as one text."""
    return texts[0] if len(texts) == 1 else _ROW_SEPARATOR.join(texts)


def memo_key(run: Run, heads: list[tuple[bytes, str]]) -> str:
    """What a run's ids depend on besides its values: the parsed blueprint with the values
    left out, and each stage plan's identity head digest and id suffix, in order.

    The blueprint's own path is left out too: it is the lab directory's, new with every
    built lab, and only error messages name it.
    """
    blank = replace(
        run,
        axes=tuple(replace(a, values=()) for a in run.axes),
        zips=tuple(replace(z, rows=()) for z in run.zips),
        path=Path(),
    )
    hasher = blake3(f"repx-expansion-memo/{MEMO_FORMAT}\0{blank!r}".encode())
    for digest, suffix in heads:
        hasher.update(digest)
        hasher.update(f"\0{suffix}\0".encode())
    return hasher.hexdigest()
