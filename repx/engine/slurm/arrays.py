"""SLURM job-id arithmetic: array ranges, compressed task lists, dependency collapsing.

A build submits a stage as one ``sbatch --array`` whatever its width, so everything repx
says to SLURM about tasks has to be written per array, not per task: the ``--array`` list
(``0-4,7``), a ``scancel`` argument (``123_[0-9999]``), a dependency on several tasks of one
array (the whole array), and the ``aftercorr`` case where task *i* of a stage waits for task
*i* of one upstream array only. These are pure functions of strings, tested without SLURM.

A *packed* task runs several jobs one after another; each of them is known by its task's
id and its place in the task, ``123_4#2`` (:func:`packed_id`), so that each keeps its own
record and outcome while SLURM is only ever asked about ``123_4`` (:func:`task_of`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def array_ranges(indices: list[int]) -> str:
    """``0-4,7,9-10`` for an sbatch --array list."""
    indices = sorted(set(indices))
    parts = []
    start = prev = indices[0]
    for i in indices[1:]:
        if i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = i
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)


#: Between a packed task's id and a job's place in it (``123_4#2``).
PACK_SEPARATOR = "#"


def packed_id(task: str, slot: int) -> str:
    """The id of the job in place ``slot`` of packed SLURM task ``task``."""
    return f"{task}{PACK_SEPARATOR}{slot}"


def task_of(job_id: str) -> str:
    """The SLURM task a (possibly packed) job id names: ``123_4#2`` -> ``123_4``."""
    return job_id.partition(PACK_SEPARATOR)[0]


def compress_task_ids(ids: Iterable[str]) -> list[str]:
    """Job ids with the tasks of each array written as one ``array_[ranges]`` id (the jobs
    of a packed task name the task once)."""
    plain: set[str] = set()
    tasks: dict[str, list[int]] = {}
    for job_id in ids:
        task = task_of(job_id)
        array, _, index = task.partition("_")
        if index.isdigit():
            tasks.setdefault(array, []).append(int(index))
        elif task:
            plain.add(task)
    return sorted(plain) + [f"{array}_[{array_ranges(indices)}]"
                            for array, indices in sorted(tasks.items())]


def collapse_to_arrays(ids: Iterable[str]) -> list[str]:
    """Dependency ids, with several tasks of one array collapsed into the whole array (and
    the jobs of a packed task into the task)."""
    by_array: dict[str, set[str]] = {}
    for job_id in ids:
        task = task_of(job_id)
        by_array.setdefault(task.split("_")[0], set()).add(task)
    out = []
    for array, tasks in by_array.items():
        out.extend([array] if len(tasks) > 1 else tasks)
    return sorted(out)


def corresponding_array(
    members: list[tuple[T, list[str], list[str]]],
) -> tuple[str, dict[int, T]] | None:
    """When each member waits for exactly one task of one upstream array, all distinct:
    (that array's id, {task index: member})."""
    array = None
    indexed: dict[int, T] = {}
    if len(members) < 2:
        return None
    for unit, afterok, afterany in members:
        if afterany or len(afterok) != 1 or "_" not in afterok[0]:
            return None
        job, _, index = afterok[0].partition("_")
        if array is None:
            array = job
        if job != array or not index.isdigit() or int(index) in indexed:
            return None
        indexed[int(index)] = unit
    assert array is not None
    return array, indexed


def corresponding_arrays(
    members: list[tuple[T, list[str], list[str]]],
) -> dict[str, dict[tuple[int, int | None], T]] | None:
    """When each member waits for exactly one task (or packed job) of an upstream array,
    all distinct: ``{array id: {(task index, place in the task or None): member}}``.

    One upstream stage split into several arrays (MaxArraySize) gives one entry per array,
    so that each chunk of the downstream stage is submitted with ``aftercorr`` on the chunk
    it waits for, with the same indices (and the same packing).
    """
    found: dict[str, dict[tuple[int, int | None], T]] = {}
    if len(members) < 2:
        return None
    for unit, afterok, afterany in members:
        if afterany or len(afterok) != 1:
            return None
        task, _, slot = afterok[0].partition(PACK_SEPARATOR)
        array, _, index = task.partition("_")
        if not index.isdigit() or (slot and not slot.isdigit()):
            return None
        key = (int(index), int(slot) if slot else None)
        indexed = found.setdefault(array, {})
        if key in indexed:
            return None
        indexed[key] = unit
    return found
