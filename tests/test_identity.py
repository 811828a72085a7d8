"""Job identities: canonical JSON, the identity object's halves, ids and unit ids."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
from blake3 import blake3

from repx.identity import (
    HASH_CHARS,
    NIX32_ALPHABET,
    canonical_json,
    code_part,
    hash_part,
    identity_head,
    identity_tail,
    job_id,
    nix32_of_digest,
    scatter_id,
    step_id,
)

ID_RE = re.compile(r"^([0123456789abcdfghijklmnpqrsvwxyz]{32})-(.+)$")

# ------------------------------------------------------------------------ canonical JSON


def test_canonical_json_sorts_keys_at_every_level() -> None:
    """Object keys are sorted, nested objects included."""
    assert canonical_json({"b": 1, "a": {"d": 2, "c": 3}}) == '{"a":{"c":3,"d":2},"b":1}'


def test_canonical_json_has_no_whitespace() -> None:
    """No spaces after separators."""
    assert canonical_json([1, {"k": [2, 3]}, "x y"]) == '[1,{"k":[2,3]},"x y"]'


def test_canonical_json_raw_utf8() -> None:
    """Non-ASCII characters are written raw, not escaped."""
    text = canonical_json({"é": "日本 ∑"})
    assert text == '{"é":"日本 ∑"}'
    assert "\\u" not in text


def test_canonical_json_numbers_and_literals() -> None:
    """Ints in decimal, floats by their shortest repr, JSON literals for None/bools."""
    assert canonical_json([10, 0.1, 1e100, -0.0, None, True, False]) == \
        "[10,0.1,1e+100,-0.0,null,true,false]"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_canonical_json_rejects_non_finite(value: float) -> None:
    """NaN and infinities are not JSON and are rejected."""
    with pytest.raises(ValueError):
        canonical_json({"x": [value]})


def test_canonical_json_is_independent_of_insertion_order() -> None:
    """Two equal dicts built in different orders have the same text."""
    one = {"x": 1, "y": 2, "z": 3}
    two = {"z": 3, "x": 1, "y": 2}
    assert canonical_json(one) == canonical_json(two)


# ------------------------------------------------------------------------ hash rendering


def test_hash_part_is_big_endian_nix32_of_blake3() -> None:
    """The hash part is the 160-bit BLAKE3 prefix in Nix's alphabet, top bits first."""
    text = '{"a":1}'
    n = int.from_bytes(blake3(text.encode()).digest(20), "big")
    expected = "".join(NIX32_ALPHABET[(n >> (5 * (31 - i))) & 31] for i in range(32))
    assert hash_part(text) == expected
    assert hash_part(text.encode()) == expected


def test_nix32_of_digest_known_values() -> None:
    """All-zero bytes render as zeros, all-one bits as the last letter; length 32."""
    assert nix32_of_digest(bytes(20)) == "0" * 32
    assert nix32_of_digest(b"\xff" * 20) == "z" * 32
    assert nix32_of_digest(b"\x08" + bytes(19)) == "1" + "0" * 31
    assert len(nix32_of_digest(bytes(range(40)))) == HASH_CHARS


def test_alphabet_omits_e_o_t_u() -> None:
    """Nix's base-32 alphabet has 32 distinct characters and no e, o, t or u."""
    assert len(set(NIX32_ALPHABET)) == 32
    assert not set("eotu") & set(NIX32_ALPHABET)


# ------------------------------------------------------------------------ job_id


def test_job_id_format() -> None:
    """An id is ``<32 base-32 chars>-<pname>-<version>``."""
    jid = job_id({"a": [1, 2]}, "my-stage", "1.2")
    match = ID_RE.match(jid)
    assert match is not None
    assert match.group(2) == "my-stage-1.2"
    assert match.group(1) == hash_part(canonical_json({"a": [1, 2]}))


def test_job_id_depends_on_parts_not_key_order() -> None:
    """Equal parts give the same hash; different parts a different one."""
    assert job_id({"a": 1, "b": 2}, "p", "1") == job_id({"b": 2, "a": 1}, "p", "1")
    assert job_id({"a": 1}, "p", "1") != job_id({"a": 2}, "p", "1")


def test_job_id_suffix_does_not_change_hash() -> None:
    """pname and version are only the readable suffix: the hash part is the same."""
    one, two = job_id([1], "p", "1"), job_id([1], "q", "2")
    assert one != two
    assert one[:HASH_CHARS] == two[:HASH_CHARS]


# ------------------------------------------------------------------------ code_part


def test_code_part_pure() -> None:
    """Pure mode hashes the scripts in executable order and the outputs."""
    exes = {"main": SimpleNamespace(script="/nix/store/aaa-main.sh"),
            "scatter": SimpleNamespace(script="/nix/store/bbb-scatter.sh")}
    outputs = {"data": "$out/data.csv"}
    assert code_part("pure", exes, outputs, "stage", "1") == [
        "pure", ["/nix/store/aaa-main.sh", "/nix/store/bbb-scatter.sh"], outputs
    ]


def test_code_part_params_only() -> None:
    """Params-only mode hashes pname, version and executable names, not scripts."""
    exes = {"main": SimpleNamespace(script="/nix/store/aaa-main.sh"),
            "gather": SimpleNamespace(script="/nix/store/ccc-gather.sh")}
    code = code_part("params-only", exes, {"o": "$out"}, "stage", "2.0")
    assert code == ["params-only", "stage", "2.0", ["main", "gather"]]
    changed = {"main": SimpleNamespace(script="/nix/store/zzz-main.sh"),
               "gather": SimpleNamespace(script="/nix/store/yyy-gather.sh")}
    assert code_part("params-only", changed, {}, "stage", "2.0") == code


def test_code_part_pure_changes_with_script() -> None:
    """In pure mode a new script path changes the code part."""
    one = code_part("pure", {"main": SimpleNamespace(script="/a")}, {}, "s", "1")
    two = code_part("pure", {"main": SimpleNamespace(script="/b")}, {}, "s", "1")
    assert one != two


# ------------------------------------------------------------------------ head + tail

CASES: list[dict[str, Any]] = [
    {"code": ["pure", ["/nix/store/x-s.sh"], {"o": "$out/o"}], "files": {}, "inter_run": [],
     "params": {}, "upstream": []},
    {"code": ["params-only", "st", "1", ["main"]], "files": {"cfg": "/nix/store/c-cfg"},
     "inter_run": [["other", "hard", ["id1", "id2"]]],
     "params": {"b": 2, "a": {"nested": [1, {"z": None, "y": 0.5}]}, "c": "x"},
     "upstream": [["up-1", [["out", "in"], ["log", "log_in"]]]]},
    {"code": ["pure", ["/nix/store/é-s.sh", "/nix/store/日-t.sh"], {"résumé": "${out}/ü"}],
     "files": {"données": "/nix/store/ß"}, "inter_run": [["run-ñ", "soft", []]],
     "params": {"名前": "値", "emoji": "🙂", "list": ["ä", 1, True]},
     "upstream": [["p-ø", [["s", "t"]]], ["q", []]]},
]


@pytest.mark.parametrize("parts", CASES)
def test_head_plus_tail_is_canonical_json(parts: dict[str, Any]) -> None:
    """identity_head + identity_tail spells the canonical JSON of the whole identity object."""
    text = (identity_head(parts["code"], parts["files"], canonical_json(parts["inter_run"]))
            + identity_tail(canonical_json(parts["params"]), canonical_json(parts["upstream"])))
    assert text == canonical_json(parts)


@pytest.mark.parametrize("parts", CASES)
def test_head_plus_tail_hashes_like_job_id(parts: dict[str, Any]) -> None:
    """Hashing head + tail gives the hash part of ``job_id`` of the identity object."""
    text = (identity_head(parts["code"], parts["files"], canonical_json(parts["inter_run"]))
            + identity_tail(canonical_json(parts["params"]), canonical_json(parts["upstream"])))
    jid = job_id(parts, "st", "1")
    assert jid == f"{hash_part(text)}-st-1"
    assert hash_part(text.encode("utf-8")) == jid[:HASH_CHARS]


def test_head_is_shared_tail_varies() -> None:
    """One head with different params gives different ids."""
    head = identity_head(["pure", [], {}], {}, "[]")
    one = hash_part(head + identity_tail(canonical_json({"n": 1}), "[]"))
    two = hash_part(head + identity_tail(canonical_json({"n": 2}), "[]"))
    assert one != two


# ------------------------------------------------------------------------ scatter / step ids


def _job(jid: str = "0123456789abcdfghijklmnpqrsvwxyz-sweep-1") -> Any:
    """A stand-in for a Job: the unit ids read only id, pname and version."""
    return SimpleNamespace(id=jid, pname="sweep", version="1")


def test_scatter_id_definition() -> None:
    """The scatter's id is job_id(["scatter", job id], "<pname>-scatter", version)."""
    job = _job()
    assert scatter_id(job) == job_id(["scatter", job.id], "sweep-scatter", "1")
    assert scatter_id(job).endswith("-sweep-scatter-1")
    assert ID_RE.match(scatter_id(job))


def test_scatter_id_is_deterministic_and_per_job() -> None:
    """The same job gives the same scatter id; another job id another one."""
    assert scatter_id(_job()) == scatter_id(_job())
    other = _job("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-sweep-1")
    assert scatter_id(_job()) != scatter_id(other)


def test_step_id_definition() -> None:
    """A step's id is job_id(["step", job id, step, item], "<pname>-<step>", version)."""
    job = _job()
    item = {"seed": 3, "name": "ä"}
    expected = job_id(["step", job.id, "train", item], "sweep-train", "1")
    assert step_id(job, "train", item) == expected
    assert step_id(job, "train", item).endswith("-sweep-train-1")


def test_step_id_deterministic_by_item_content() -> None:
    """Equal items (whatever their key order) give the same step id."""
    job = _job()
    one = step_id(job, "train", {"a": 1, "b": 2})
    two = step_id(job, "train", {"b": 2, "a": 1})
    assert one == two


def test_step_id_differs_per_item_and_step() -> None:
    """Another item or another step gives another id."""
    job = _job()
    ids = {
        step_id(job, "train", {"seed": 1}),
        step_id(job, "train", {"seed": 2}),
        step_id(job, "eval", {"seed": 1}),
        step_id(job, "train", [1]),
        step_id(job, "train", "1"),
        step_id(job, "train", 1),
    }
    assert len(ids) == 6
    hashes = {i[:HASH_CHARS] for i in ids}
    assert len(hashes) == 6


def test_step_id_differs_from_scatter_id() -> None:
    """A step's id never equals the scatter's id of the same job."""
    job = _job()
    assert step_id(job, "scatter", None)[:HASH_CHARS] != scatter_id(job)[:HASH_CHARS]
