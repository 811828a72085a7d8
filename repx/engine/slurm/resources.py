"""What a unit asks SLURM for: the lab's resource hints, a cluster's resources.toml, and the
sbatch options they become.
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repx.errors import UsageError
from repx.lab.resources import RESOURCE_KEYS, parse_mem, parse_time


@dataclass
class ResourceRules:
    """Per-cluster overrides of the lab's resource hints (``resources.toml``).

    ``[defaults]`` fill in what a job does not set; each ``[[rules]]`` entry whose ``match``
    glob matches the job's pname, stage key or id then overrides, later rules last.
    """

    defaults: dict[str, Any] = field(default_factory=dict)
    rules: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    source: str = ""

    @classmethod
    def load(cls, path: Path | None) -> ResourceRules:
        if path is None:
            return cls()
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path}: not valid TOML: {exc}") from None
        unknown = set(data) - {"defaults", "rules"}
        if unknown:
            raise UsageError(f"{path}: unknown sections {sorted(unknown)} (use [defaults] "
                             "and [[rules]])")
        defaults = cls._check(path, "defaults", data.get("defaults", {}))
        rules = []
        for i, rule in enumerate(data.get("rules", [])):
            if not isinstance(rule, dict) or not isinstance(rule.get("match"), str):
                raise UsageError(f"{path}: rules[{i}] needs a string `match` glob")
            body = {k: v for k, v in rule.items() if k != "match"}
            rules.append((rule["match"], cls._check(path, f"rules[{i}]", body)))
        return cls(defaults, rules, str(path))

    @staticmethod
    def _check(path: Path, where: str, values: Any) -> dict[str, Any]:
        if not isinstance(values, dict):
            raise UsageError(f"{path}: {where} must be a table")
        for key, value in values.items():
            if key not in RESOURCE_KEYS:
                raise UsageError(f"{path}: {where}: unknown key '{key}' (known: "
                                 f"{', '.join(RESOURCE_KEYS)})")
            try:
                if key == "mem":
                    parse_mem(value)
                elif key == "time":
                    parse_time(value)
                elif key == "cpus" and (not isinstance(value, int) or value < 1):
                    raise ValueError(value)
                elif key == "partition" and not isinstance(value, str):
                    raise ValueError(value)
                elif key == "retries" and (isinstance(value, bool) or not isinstance(value, int)
                                           or value < 0):
                    raise ValueError(value)
                elif key == "sbatch_opts" and not (
                        isinstance(value, list) and all(isinstance(o, str) for o in value)):
                    raise ValueError(value)
            except ValueError:
                raise UsageError(f"{path}: {where}: invalid {key} {value!r}") from None
        return dict(values)

    def apply(self, hints: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
        merged = {**self.defaults, **{k: v for k, v in hints.items() if v is not None}}
        names = list(names)
        for pattern, values in self.rules:
            if any(fnmatch.fnmatchcase(n, pattern) for n in names):
                merged.update(values)
        return merged


def sbatch_directives(resources: dict[str, Any]) -> list[str]:
    """``--mem``/``--cpus-per-task``/``--time``/``--partition``, ``--exclude`` (the nodes
    a retry avoids: :mod:`repx.engine.failures`) and the extra options."""
    args = []
    if resources.get("mem") is not None:
        args.append(f"--mem={max(1, math.ceil(parse_mem(resources['mem']) / 2**20))}M")
    if resources.get("cpus") is not None:
        args.append(f"--cpus-per-task={int(resources['cpus'])}")
    if resources.get("time") is not None:
        seconds = parse_time(resources["time"])
        minutes = max(1, math.ceil(seconds / 60))
        args.append(f"--time={minutes // 1440}-{minutes % 1440 // 60:02d}:{minutes % 60:02d}:00")
    if resources.get("partition"):
        args.append(f"--partition={resources['partition']}")
    if resources.get("exclude"):
        args.append(f"--exclude={','.join(sorted(resources['exclude']))}")
    args.extend(resources.get("sbatch_opts") or [])
    return args


def packed_resources(resources: dict[str, Any], pack: int) -> dict[str, Any]:
    """What one array task running ``pack`` jobs one after another asks for: the same
    memory and cpus, ``pack`` times the time limit."""
    if pack <= 1 or resources.get("time") is None:
        return resources
    return {**resources, "time": parse_time(resources["time"]) * pack}
