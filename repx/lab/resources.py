"""Resource hints: what a stage asks of the machine (mem, cpus, time, partition, sbatch_opts),
and how often a failed job of it is tried again (retries).

Hints are checked and parsed once per stage (or dynamic variant) when the lab is expanded,
and merged along the pipeline: mem, cpus and time take the maximum over the stage and its
upstream jobs; partition and sbatch_opts are the stage's own, else its first dependency's;
retries is the stage's own only (how robust a job must be is no property of its inputs).
They never enter a job's identity: the same work on a bigger node is the same result.
The local scheduler admits jobs by ``cpus``/``mem``; the SLURM scheduler turns them into
sbatch options (:mod:`repx.engine.slurm.resources`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from repx.errors import LabError
from repx.identity import canonical_json

#: Valid resource hint keys, in the order merged resources list them.
RESOURCE_KEYS = ("mem", "cpus", "time", "partition", "sbatch_opts", "retries")


_MEM_RE = re.compile(r"^\s*(\d+)\s*([KMGTkmgt]?)\s*$")
_MEM_UNITS = {"": 1024**2, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_TIME_RE = re.compile(r"^\s*(?:(\d+)-)?(\d+):(\d+)(?::(\d+))?\s*$")


def parse_mem(value: object) -> int:
    """Bytes for a ``mem`` hint: ``"512M"``, ``"8G"``… (powers of 1024), or a plain number.

    A plain number (int or digit string) means MiB, as in ``sbatch --mem``.
    Raises ValueError for anything else (zero included).
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        n = value * _MEM_UNITS[""]
    elif isinstance(value, str) and (m := _MEM_RE.match(value)):
        n = int(m.group(1)) * _MEM_UNITS[m.group(2).upper()]
    else:
        raise ValueError(value)
    if n <= 0:
        raise ValueError(value)
    return n


def parse_time(value: object) -> int:
    """Seconds for a ``time`` hint: ``"D-HH:MM:SS"``, ``"HH:MM:SS"``, ``"MM:SS"`` or seconds.

    Raw seconds follow the seed (SLURM reads a bare number as minutes; the SLURM executor
    converts). Raises ValueError for anything else (zero included).
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and value.strip().isdigit():
        seconds = int(value)
    elif isinstance(value, str) and (m := _TIME_RE.match(value)):
        days, a, b, c = m.groups()
        if c is None:  # MM:SS (a day prefix needs the full HH:MM:SS)
            if days is not None:
                raise ValueError(value)
            hours, minutes, secs = 0, int(a), int(b)
        else:
            hours, minutes, secs = int(a), int(b), int(c)
            if minutes >= 60:
                raise ValueError(value)
        if secs >= 60:
            raise ValueError(value)
        seconds = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + secs
    else:
        raise ValueError(value)
    if seconds <= 0:
        raise ValueError(value)
    return seconds


class Resources(dict[str, Any]):
    """Resource hints (keys from :data:`RESOURCE_KEYS`, original values) plus parsed numbers.

    Instances are shared between jobs with the same hints: treat them as read-only.
    ``mem_bytes``/``cpu_count``/``time_seconds`` are None when the hint is unset.
    """

    __slots__ = ("mem_bytes", "cpu_count", "time_seconds")

    def __init__(
        self,
        values: dict[str, Any] | None = None,
        mem_bytes: int | None = None,
        cpu_count: int | None = None,
        time_seconds: int | None = None,
    ) -> None:
        super().__init__(values or {})
        self.mem_bytes = mem_bytes
        self.cpu_count = cpu_count
        self.time_seconds = time_seconds


#: The hints of a stage that sets none (shared: read-only).
NO_RESOURCES = Resources()


def validate_resources(raw: dict[str, Any] | None, where: str) -> Resources:
    """Check a stage's (or executable's) resource hints and parse them.

    ``where`` names the stage and file (``stage 'x' (file f)``) for the error message.
    Keys with a ``null`` value count as unset (a dynamic ``resources`` function may
    compute ``null`` for some combinations).
    """
    if not raw:
        return NO_RESOURCES
    unknown = sorted(k for k in raw if k not in RESOURCE_KEYS)
    if unknown:
        raise LabError(
            f"{where}: unknown resource hint keys: {unknown}; "
            f"valid keys are {', '.join(RESOURCE_KEYS)}"
        )
    values: dict[str, Any] = {}
    mem_bytes = cpu_count = time_seconds = None

    def bad(key: str, value: object, expected: str) -> LabError:
        return LabError(
            f"{where}: resource hint '{key}' has an invalid value {canonical_json(value)}; "
            f"expected {expected}"
        )

    for key in RESOURCE_KEYS:
        value = raw.get(key)
        if value is None:
            continue
        if key == "mem":
            try:
                mem_bytes = parse_mem(value)
            except ValueError:
                raise bad(key, value, 'a positive number of MiB or a number with a K, M, G '
                          'or T suffix (e.g. "8G")') from None
        elif key == "cpus":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise bad(key, value, "a positive integer")
            cpu_count = value
        elif key == "time":
            try:
                time_seconds = parse_time(value)
            except ValueError:
                raise bad(key, value, 'a positive duration: "HH:MM:SS", "MM:SS", '
                          '"D-HH:MM:SS" or a number of seconds') from None
        elif key == "partition":
            if not isinstance(value, str) or not value:
                raise bad(key, value, "a partition name (string)")
        elif key == "retries":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(key, value, "a number of retries (an integer, 0 or more)")
        elif not isinstance(value, list) or not all(isinstance(o, str) for o in value):
            raise bad(key, value, 'a list of strings (e.g. ["--gres=gpu:1"])')
        elif not value:
            continue
        values[key] = value
    return Resources(values, mem_bytes, cpu_count, time_seconds)


def merge_resources(own: Resources, upstream: Sequence[Resources]) -> Resources:
    """Max mem/cpus/time over ``own`` and ``upstream``; partition, sbatch_opts own
    else the first upstream's. Ties keep the earlier value (own first, then deps order)."""
    if not upstream:
        return own
    mem, mem_b = own.get("mem"), own.mem_bytes
    cpus = own.cpu_count
    time, time_s = own.get("time"), own.time_seconds
    for r in upstream:
        if r.mem_bytes is not None and (mem_b is None or r.mem_bytes > mem_b):
            mem, mem_b = r["mem"], r.mem_bytes
        if r.cpu_count is not None and (cpus is None or r.cpu_count > cpus):
            cpus = r.cpu_count
        if r.time_seconds is not None and (time_s is None or r.time_seconds > time_s):
            time, time_s = r["time"], r.time_seconds
    first = upstream[0]
    merged = {
        "mem": mem,
        "cpus": cpus,
        "time": time,
        "partition": own.get("partition", first.get("partition")),
        "sbatch_opts": own.get("sbatch_opts", first.get("sbatch_opts")),
        "retries": own.get("retries"),
    }
    return Resources({k: v for k, v in merged.items() if v is not None}, mem_b, cpus, time_s)
