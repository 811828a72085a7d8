"""Job identities: ``<32 base-32 chars>-<pname>-<version>`` from a BLAKE3 digest.

An identity is the name under which a job's result is stored, so it must be a pure
function of what determines the result (what goes in is spelled out below, in
:func:`identity_parts`) and must never change between repx runs, machines
or Python versions — otherwise a store full of finished work silently becomes stale.
That is why the hashed text is *canonical JSON*:

* ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``: object keys
  sorted, no whitespace, non-ASCII characters written raw (UTF-8), minimal escapes;
* ints print as decimal; floats print via ``float.__repr__`` (the shortest text that
  round-trips, the same on every CPython ≥ 3.1); ``NaN``/``Infinity`` are rejected (Nix
  cannot produce them, and they are not JSON).

The 160-bit prefix of the digest is rendered in Nix's base-32 *alphabet*
(``0123456789abcdfghijklmnpqrsvwxyz``, no e/o/t/u) so ids look like store paths, but in
plain big-endian bit order (the first character is the top 5 bits of the first byte), not
Nix's reversed ``printHash32`` order: nothing needs to compare with Nix hashes, and the
plain order makes a hex-to-id cross-check trivial.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from blake3 import blake3

if TYPE_CHECKING:
    from repx.lab.graph import Job

#: Nix's base-32 alphabet (omits e, o, t, u).
NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"

#: Number of base-32 characters in the hash part of an id (32 × 5 = 160 bits).
HASH_CHARS = 32

_DIGEST_BYTES = HASH_CHARS * 5 // 8  # 20



def _lane_mask(lane: int, width: int) -> int:
    """The low ``width`` bits of every ``lane``-bit lane of a 256-bit integer."""
    return sum(((1 << width) - 1) << shift for shift in range(0, 256, lane))


# Rendering spreads the 32 five-bit groups of the 160-bit prefix one per byte with five
# shift-and-mask steps on one integer (halves to 128-bit lanes, quarters to 64-bit lanes, ...
# down to 5 bits per 8-bit lane), then maps the 32 bytes to the alphabet with
# bytes.translate: ~1 µs per id against ~3 µs for 16 lookups of 10-bit pairs (and
# base64.b32encode is pure Python in 3.11). Expansion renders one per job.
_LOW_HALF = (1 << 80) - 1
_SPREAD_STEPS = tuple((_lane_mask(lane, lane * 5 // 16), lane * 5 // 16, lane // 2)
                      for lane in (128, 64, 32, 16))
_TO_ALPHABET = bytes.maketrans(bytes(range(32)), NIX32_ALPHABET.encode())

_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(obj: object) -> str:
    """The canonical JSON text of ``obj`` (what identities hash; see the module doc)."""
    return _ENCODER.encode(obj)


def scalar_json(value: object) -> str:
    """:func:`canonical_json` of one value, without the encoder's per-call set-up for the
    common scalars (expansion encodes every sweep value once; a 10 000-value axis then costs
    milliseconds). Anything else goes through the encoder itself."""
    if value.__class__ is str:
        return encode_basestring(value)  # type: ignore[arg-type]
    if value.__class__ is int:
        return int.__repr__(value)  # type: ignore[arg-type]
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return canonical_json(value)


def nix32_of_digest(digest: bytes) -> str:
    """Render the first 20 bytes of ``digest`` as 32 base-32 characters (big-endian)."""
    n = int.from_bytes(digest[:_DIGEST_BYTES], "big")
    n = (n & _LOW_HALF) | ((n >> 80) << 128)
    for mask, width, move in _SPREAD_STEPS:
        n = (n & mask) | (((n >> width) & mask) << move)
    return n.to_bytes(HASH_CHARS, "big").translate(_TO_ALPHABET).decode()


def hash_part(canonical: str | bytes) -> str:
    """The 32-character hash part of an id for an already canonical JSON text."""
    data = canonical.encode() if isinstance(canonical, str) else canonical
    return nix32_of_digest(blake3(data).digest(_DIGEST_BYTES))


def job_id(parts: object, pname: str, version: str) -> str:
    """``<32 chars>-<pname>-<version>`` for the identity ``parts`` (any JSON value).

    ``pname`` and ``version`` are only the readable suffix; anything that must change the
    id has to be inside ``parts``.
    """
    return f"{hash_part(canonical_json(parts))}-{pname}-{version}"


# ------------------------------------------------------------------------ what a job hashes
#
# A job's identity is ``job_id(parts, pname, version)`` where ``parts`` is the object
#
#     {"code":      ["pure", [script store paths in executable order], outputs]
#                   | ["params-only", pname, version, [executable names]],
#      "files":     {input: store path},              inputs resolved from defaults
#      "inter_run": [[run, type, [sorted job ids of that run]], ...],
#      "params":    {declared param: effective value},
#      "upstream":  [[producer job id, [[source, target], ...]], ...]}   in deps order
#
# and nothing else: never resources, undeclared params, git hash, lab version or group
# names. The scripts are the job's own (a ``run`` whose text depends on param values has
# one per combination). In "pure" mode the resolved output templates are hashed too: one
# script usually serves a whole stage, so a dynamic ``outputs`` function is not captured by
# the script's path, and a job that writes elsewhere must not reuse an old record.
# Expansion hashes millions of these, so it feeds the constant head (code, files,
# inter_run) to a hasher once per stage and the per-job tail (params, upstream) per job;
# both halves are spelled only here.


def code_part(hash_mode: str, executables: dict[str, Any], outputs: Any, pname: str,
              version: str) -> list[Any]:
    """The ``code`` member: what stands for the stage's code in its jobs' identities.

    ``executables`` maps executable names to objects with a ``script`` (store path).
    """
    if hash_mode == "pure":
        return ["pure", [e.script for e in executables.values()], outputs]
    return ["params-only", pname, version, list(executables)]


def identity_head(code: list[Any], files: dict[str, str], inter_run_json: str) -> str:
    """The canonical JSON of the identity object up to (not including) the params value."""
    return ('{"code":' + canonical_json(code) + ',"files":' + canonical_json(files)
            + ',"inter_run":' + inter_run_json + ',"params":')


def identity_tail(params_json: str, upstream_json: str) -> str:
    """The rest of the identity object's canonical JSON after :func:`identity_head`."""
    return params_json + ',"upstream":' + upstream_json + "}"


def identity_parts(job: Job) -> dict[str, Any]:
    """The object whose canonical JSON gives ``job.id`` (``repx`` tracing and tests)."""
    st = job.stage_def
    return {
        "code": code_part(job.hash_mode, job.executables, job.outputs, job.pname, job.version),
        "files": {k: v["file"] for k, v in job.inputs.items() if "file" in v},
        "inter_run": [[ir.run, ir.type, job.inputs[ir.target]["jobs"]] for ir in st.inter_run],
        "params": job.params,
        "upstream": [
            [pid, [[m.source, m.target] for m in dep.mappings]]
            for pid, dep in zip(job.upstream, st.deps, strict=True)
        ],
    }


# ------------------------------------------------------------------ scatter-gather units


def scatter_id(job: Job) -> str:
    """The id of a scatter-gather job's scatter unit (a function of the job's id only)."""
    return job_id(["scatter", job.id], f"{job.pname}-scatter", job.version)


def step_id(job: Job, step: str, item: Any) -> str:
    """The id of step ``step`` of the branch whose work item is ``item``.

    The item's content, not its position, is part of the identity: a scatter that writes
    the same items in a new order reuses every branch.
    """
    return job_id(["step", job.id, step, item], f"{job.pname}-{step}", job.version)
