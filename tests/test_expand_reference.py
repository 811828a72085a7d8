"""The fast expansion gives exactly what the plain definitions give, on labs edited in many ways.

Expansion takes shortcuts for speed (a params JSON joined from per-value fragments, a
base-32 rendering by bit spreading, one shared dict or list for what many jobs have in
common, no memo for stages every dimension reaches, the expansion order as the closure of
everything). Each test here recomputes the same thing the slow, obvious way — the JSON
encoder, one 5-bit group at a time, a depth-first walk — and demands the very same ids,
params, edges and inputs, before and after an edit of the lab (a sweep value changed,
added or removed, a script changed, a wiring changed, scatter-gather, inter-run, zips).
Synthetic lab directories as in tests/test_expand.py (no Nix).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from repx.identity import (
    NIX32_ALPHABET,
    canonical_json,
    identity_parts,
    job_id,
    nix32_of_digest,
    scalar_json,
)
from repx.lab.graph import JobGraph, selection_closure
from tests.test_expand import axis, by_stage, dep, exe, graph_of, run, stage, zip_


def reference_nix32(digest: bytes) -> str:
    """Nix's alphabet, big-endian, one 5-bit group at a time (repx.identity's rule)."""
    n = int.from_bytes(digest[:20], "big")
    return "".join(NIX32_ALPHABET[(n >> (155 - 5 * i)) & 31] for i in range(32))


def reference_id(job: Any) -> str:
    """The id by the definition: canonical JSON of the identity object, hashed whole."""
    return job_id(identity_parts(job), job.pname, job.version)


def check_graph(g: JobGraph) -> None:
    """Every id, params object and edge of ``g`` as the plain definitions give them."""
    for jid, job in g.jobs.items():
        assert job.id == jid
        assert reference_id(job) == jid, f"{jid}: the fast id differs from the definition"
        assert canonical_json(job.params) == canonical_json(dict(sorted(job.params.items())))
        assert set(job.param_sources) == set(job.params)
        assert job.depends_on == list(dict.fromkeys(job.upstream))
        for name, source in job.inputs.items():
            assert source is not None, f"{jid}: input {name} has no source"
            if "job" in source:
                assert source["job"] in job.upstream
        assert list(job.inputs) == sorted(job.inputs)
    walked = g.upstream_closure(list(g.jobs))
    assert selection_closure(g, []) == walked == list(g.jobs)
    for name in g.runs:
        closure = selection_closure(g, [name])
        position = {j: i for i, j in enumerate(closure)}
        for jid in closure:
            assert all(position[u] < position[jid] for u in g.jobs[jid].depends_on)


def ids_by_params(g: JobGraph, key: str) -> dict[str, str]:
    return {canonical_json(j.params): j.id for j in by_stage(g, key)}


# --------------------------------------------------------------------------- encodings


def test_nix32_rendering_matches_the_group_by_group_definition() -> None:
    digests = [bytes(20), b"\xff" * 20, bytes(range(20)), *(os.urandom(32) for _ in range(3000))]
    for digest in digests:
        assert nix32_of_digest(digest) == reference_nix32(digest)


@pytest.mark.parametrize("value", [
    "", "plain", 'quo"te', "back\\slash", "tab\tnew\nline", "ünïcödé ✓", "\x00\x1f\x7f",
    0, -1, 7, 2**70, -(2**70), 0.1, 1e-7, 1e16, 1.5e300, -0.0, 3.0, True, False, None,
])
def test_scalar_json_is_canonical_json(value: object) -> None:
    assert scalar_json(value) == canonical_json(value)


def test_params_json_joined_from_fragments_is_the_encoders(tmp_path: Path) -> None:
    # Defaults of every JSON kind (a dict and a list too), values needing escapes, null
    # meaning the default, a dotted key, a zip and an axis together.
    s = stage("s", params={"b_text": "d", "a_num": 1.25, "c_obj": {"k": [1, "x"]},
                           "d_list": [True, None], "e_flag": False, "z": 0},
              outputs={"o": "$out/o"})
    t = stage("t", params={"z": 1}, inputs={"o": ""}, deps=[dep("s", ("o", "o"))])
    g = graph_of(tmp_path, run("r", [s, t], axes=[
        axis("b_text", ['q"uote', "ü\n", None]), axis("t.z", [5, None])],
        zips=[zip_("pair", a_num=[0.1, None, 1e-9], e_flag=[True, None, False])]))
    check_graph(g)
    jobs = by_stage(g, "s")
    assert len(jobs) == 9 and len(by_stage(g, "t")) == 18
    texts = {j.params["b_text"] for j in jobs}
    assert texts == {'q"uote', "ü\n", "d"}
    (default_row,) = [j for j in jobs if j.params["b_text"] == "d"
                      and j.params["a_num"] == 1.25]
    assert default_row.param_sources == {"a_num": "default", "b_text": "default",
                                         "c_obj": "default", "d_list": "default",
                                         "e_flag": "default", "z": "default"}
    # A null in one dimension only: that param is the default, the others keep their source.
    (mixed,) = [j for j in jobs if j.params["b_text"] == "d" and j.params["a_num"] == 0.1]
    assert mixed.param_sources == {"a_num": "zip:pair.a_num", "b_text": "default",
                                   "c_obj": "default", "d_list": "default",
                                   "e_flag": "zip:pair.e_flag", "z": "default"}
    (swept,) = [j for j in jobs if j.params["b_text"] == 'q"uote' and j.params["a_num"] == 0.1]
    assert swept.param_sources == {**mixed.param_sources, "b_text": "sweep:b_text"}


# --------------------------------------------------------------------------- edited labs


def chain(values: list[Any], *, script: str = "/nix/store/s-gen/bin/gen",
          mapping: tuple[str, str] = ("d", "d"), seeds: list[Any] | None = None
          ) -> dict[str, Any]:
    """gen(x, seed) -> fit(seed) -> plot(): a sweep of x (and seed) over three stages."""
    gen = stage("gen", params={"x": 0, "seed": 0}, outputs={"d": "$out/d", "e": "$out/e"},
                script=script)
    fit = stage("fit", params={"seed": 0}, inputs={"d": ""},
                outputs={"m": "$out/m"}, deps=[dep("gen", mapping)])
    plot = stage("plot", inputs={"m": ""}, deps=[dep("fit", ("m", "m"))])
    return run("sweep", [gen, fit, plot],
               axes=[axis("x", values), axis("seed", seeds or [1, 2])])


@pytest.mark.parametrize(("before", "after", "kept_gen", "new_gen"), [
    pytest.param(chain([1, 2, 3]), chain([1, 2, 4]), 4, 2, id="sweep-value-changed"),
    pytest.param(chain([1, 2, 3]), chain([1, 2, 3, 5]), 6, 2, id="sweep-value-added"),
    pytest.param(chain([1, 2, 3]), chain([1, 3]), 4, 0, id="sweep-value-removed"),
    pytest.param(chain([1, 2, 3]), chain([1, 2, 3], seeds=[1, 2, 3]), 6, 3,
                 id="second-axis-value-added"),
    pytest.param(chain([1, 2, 3]), chain([1, 2, 3], script="/nix/store/s-gen2/bin/gen"),
                 0, 6, id="stage-script-changed"),
])
def test_edited_sweep_gives_the_definitions_ids(tmp_path: Path, before: dict[str, Any],
                                                after: dict[str, Any], kept_gen: int,
                                                new_gen: int) -> None:
    g1 = graph_of(tmp_path / "before", before)
    g2 = graph_of(tmp_path / "after", after)
    check_graph(g1)
    check_graph(g2)
    gen1, gen2 = ids_by_params(g1, "gen"), ids_by_params(g2, "gen")
    kept = {p for p in gen1.keys() & gen2.keys() if gen1[p] == gen2[p]}
    assert len(kept) == kept_gen
    assert len(set(gen2.values()) - set(gen1.values())) == new_gen
    # Downstream jobs follow their producers: a consumer is new exactly when its
    # producer is new (fit and plot have a job per gen job: fit's seed comes with it).
    for g in (g1, g2):
        assert len(by_stage(g, "fit")) == len(by_stage(g, "plot")) == len(by_stage(g, "gen"))
    old_ids = set(g1.jobs)
    for fit in by_stage(g2, "fit"):
        (producer,) = fit.upstream
        assert (fit.id in old_ids) == (producer in old_ids)


def test_changed_wiring_changes_the_consumers_only(tmp_path: Path) -> None:
    g1 = graph_of(tmp_path / "d", chain([1, 2], mapping=("d", "d")))
    g2 = graph_of(tmp_path / "e", chain([1, 2], mapping=("e", "d")))
    check_graph(g1)
    check_graph(g2)
    assert ids_by_params(g1, "gen") == ids_by_params(g2, "gen")
    assert set(ids_by_params(g1, "fit").values()).isdisjoint(ids_by_params(g2, "fit").values())
    fit = by_stage(g2, "fit")[0]
    assert fit.inputs == {"d": {"job": fit.upstream[0], "output": "e"}}


def test_unmapped_input_defaults_and_a_stage_every_dimension_reaches(tmp_path: Path) -> None:
    # gen depends on both axes (no memo), fit on one (memoised): both give the definition.
    gen = stage("gen", params={"x": 0, "y": 0}, outputs={"d": "$out/d"})
    fit = stage("fit", params={"y": 0}, inputs={"d": "", "cfg": "/nix/store/c-cfg"},
                outputs={"m": "$out/m"}, deps=[dep("gen", ("d", "d"))])
    free = stage("free", params={"y": 0}, outputs={"f": "$out/f"})
    g = graph_of(tmp_path, run("r", [gen, fit, free],
                               axes=[axis("x", [1, 2, 3]), axis("y", ["a", "b"])]))
    check_graph(g)
    assert len(by_stage(g, "gen")) == 6 and len(by_stage(g, "fit")) == 6
    assert len(by_stage(g, "free")) == 2  # one per y value, not one per combination
    for job in by_stage(g, "fit"):
        assert job.inputs == {"cfg": {"file": "/nix/store/c-cfg"},
                              "d": {"job": job.upstream[0], "output": "d"}}
    assert by_stage(g, "free")[0].upstream == [] and by_stage(g, "free")[0].inputs == {}


def scatter_gather(chunks: list[int], step_script: str) -> dict[str, Any]:
    s = stage("sg", params={"chunks": 2}, inputs={"data": "/data/in.csv"},
              outputs={"final": "$out/final.csv"})
    s["kind"] = "scatter-gather"
    s["executables"] = {
        "scatter": exe("/nix/store/s-scatter/bin/x",
                       outputs={"work__items": "$out/work_items.json", "worker__arg": {"i": 0}}),
        "steps": {"work": exe(step_script, deps=[])},
        "gather": exe("/nix/store/s-gather/bin/x", inputs={"worker__outs": "[]"}),
    }
    s["scatter_gather"] = {"step_order": ["work"], "sink": "work", "sink_output": "out",
                           "work_items": "$out/work_items.json"}
    after = stage("after", inputs={"final": ""}, deps=[dep("sg", ("final", "final"))])
    return run("sg", [s, after], axes=[axis("chunks", chunks)])


def test_scatter_gather_edits(tmp_path: Path) -> None:
    g1 = graph_of(tmp_path / "1", scatter_gather([2, 4], "/nix/store/w-1/bin/w"))
    g2 = graph_of(tmp_path / "2", scatter_gather([2, 8], "/nix/store/w-1/bin/w"))
    g3 = graph_of(tmp_path / "3", scatter_gather([2, 4], "/nix/store/w-2/bin/w"))
    for g in (g1, g2, g3):
        check_graph(g)
    sg1, sg2, sg3 = (ids_by_params(g, "sg") for g in (g1, g2, g3))
    assert sg1['{"chunks":2}'] == sg2['{"chunks":2}'] and sg1['{"chunks":4}'] not in sg2.values()
    assert set(sg1.values()).isdisjoint(sg3.values())


def inter_run(values: list[int], extra_pipeline: bool = False) -> tuple[dict[str, Any], ...]:
    a = stage("a", params={"n": 0}, outputs={"o": "$out/o"})
    b = stage("b", params={"n": 0}, inputs={"o": ""}, outputs={"p": "$out/p"},
              deps=[dep("a", ("o", "o"))])
    pipelines = [[a, b], [a]] if extra_pipeline else [[a, b]]
    sim = run("simulation", pipelines, axes=[axis("n", values)])
    collect = stage("collect", inputs={"metadata__simulation": "", "store__base": ""},
                    inter_run=[{"run": "simulation", "type": "hard",
                                "target": "metadata__simulation"}], outputs={"o": "$out/o"})
    report = stage("report", inputs={"o": ""}, deps=[dep("collect", ("o", "o"))])
    ana = run("analysis", [collect, report], dependencies=[{"run": "simulation", "type": "hard"}])
    # Listed first on purpose: expansion follows the dependency, not the listing.
    return ana, sim


def test_inter_run_edits(tmp_path: Path) -> None:
    g1 = graph_of(tmp_path / "1", *inter_run([1, 2]))
    g2 = graph_of(tmp_path / "2", *inter_run([1, 3]))
    # The same jobs reached by a second pipeline collapse (a job reached twice).
    g3 = graph_of(tmp_path / "3", *inter_run([1, 2], extra_pipeline=True))
    for g in (g1, g2, g3):
        check_graph(g)
    assert ids_by_params(g1, "a")['{"n":1}'] == ids_by_params(g2, "a")['{"n":1}']
    assert by_stage(g1, "collect")[0].id != by_stage(g2, "collect")[0].id
    assert set(g3.jobs) == set(g1.jobs)
    (collect,) = by_stage(g1, "collect")
    assert collect.inputs["metadata__simulation"]["jobs"] == sorted(
        g1.runs["simulation"].job_ids)


def test_job_in_two_runs_lists_both_and_leaves_the_others_alone(tmp_path: Path) -> None:
    shared = stage("s", params={"v": 0}, outputs={"o": "$out/o"})
    g = graph_of(tmp_path, run("one", [shared], axes=[axis("v", [1, 2])]),
                 run("two", [shared], axes=[axis("v", [2, 3])]))
    check_graph(g)
    runs = {canonical_json(j.params): j.runs for j in g.jobs.values()}
    assert runs == {'{"v":1}': ["one"], '{"v":2}': ["one", "two"], '{"v":3}': ["two"]}
    assert [g.jobs[j].run for j in g.runs["two"].job_ids] == ["one", "two"]


# --------------------------------------------------------------------------- JSON output


class Sub(str):
    """A str subclass: JSON text like any str, but not what the fast path takes."""


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_indented_json_pieces_are_json_dumps(ensure_ascii: bool) -> None:
    # `repx build --json` and `--dry-run --json` print a million ids piece by piece: the
    # text must be json.dumps(..., indent=2) exactly, across chunk boundaries too.
    from repx.cli.build import _indented_json

    ids = [f'{i:032d}-ü"x-1' for i in range(9000)]
    plain = [f"{i:032d}-stage-1.0" for i in range(5000)]
    cases: list[dict[str, Any]] = [
        {},
        {"would_run": [], "up_to_date": [], "reasons": {}},
        {"would_run": ids, "up_to_date": ids[:4097], "reasons": dict.fromkeys(ids, "why\n")},
        {"exactly_one_chunk": ids[:4096], "mixed": [1, "a", None], "nested": [{"k": [1, {}]}],
         "flag": True, "seconds": 0.125, "numbers": {"a": 1}},
        # Plain ids (quoted by one join per piece), with a piece that needs escapes after
        # one that does not: a DEL (escaped only with ensure_ascii), a control character,
        # a backslash, a letter beyond ASCII.
        {"would_run": plain, "up_to_date": [*plain, "a\x7fb", "c\x1fd", "e\\f", "é"],
         "reasons": dict.fromkeys(plain, "not in the store")},
        # Keys needing escapes in a later piece, several distinct reasons, and a str
        # subclass (given to json as it is).
        {"reasons": {**{k: ("a" if i % 2 else "b\t") for i, k in enumerate(plain)},
                     'q"k': "c", "ü": "d\n"},
         "subclassed": [Sub("x"), "y"], "by_subclass": {Sub("k"): "v"}},
    ]
    for case in cases:
        text = "".join(_indented_json(case, ensure_ascii=ensure_ascii))
        assert text == json.dumps(case, indent=2, ensure_ascii=ensure_ascii)
