"""Job identities: ``<32 base-32 chars>-<pname>-<version>`` from a BLAKE3 digest.

An identity is the name under which a job's result is stored, so it must be a pure
function of what determines the result (see docs/blueprint.md "Identities" and
:mod:`repx.expand` for what goes in) and must never change between repx runs, machines
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

from blake3 import blake3

#: Nix's base-32 alphabet (omits e, o, t, u).
NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"

#: Number of base-32 characters in the hash part of an id (32 × 5 = 160 bits).
HASH_CHARS = 32

_DIGEST_BYTES = HASH_CHARS * 5 // 8  # 20

# Two base-32 characters per 10 bits: 16 table lookups render the 160-bit prefix in ~1 µs
# (base64.b32encode is pure Python in 3.11 and twice as slow).
_PAIRS = [NIX32_ALPHABET[i >> 5] + NIX32_ALPHABET[i & 31] for i in range(1024)]
_SHIFTS = tuple(range(150, -1, -10))

_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(obj: object) -> str:
    """The canonical JSON text of ``obj`` (what identities hash; see the module doc)."""
    return _ENCODER.encode(obj)


def nix32_of_digest(digest: bytes) -> str:
    """Render the first 20 bytes of ``digest`` as 32 base-32 characters (big-endian)."""
    n = int.from_bytes(digest[:_DIGEST_BYTES], "big")
    return "".join([_PAIRS[(n >> s) & 1023] for s in _SHIFTS])


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


def store_key(job_id: str) -> bytes:
    """The 32-byte BLAKE3 digest of a job id: the fixed-size key of its store record."""
    return blake3(job_id.encode()).digest()
