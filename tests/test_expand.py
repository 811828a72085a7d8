"""Expansion, identities and blueprint loading on synthetic lab directories (no Nix).

Each test writes the JSON the Nix side would write (docs/blueprint.md) into a tmp dir, so
these tests pin the Python half of the contract on its own.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from repx.errors import LabError, UsageError
from repx.identity import NIX32_ALPHABET, canonical_json, identity_parts, job_id, nix32_of_digest
from repx.lab.blueprint import load_lab
from repx.lab.expand import load_job_graph
from repx.lab.graph import JobGraph
from repx.lab.resources import parse_mem, parse_time
from repx.lab.script_checks import render_body
from repx.store import job_key

ID_RE = re.compile(r"^[0-9a-df-np-sv-z]{32}-")

# --------------------------------------------------------------------------- builders


def exe(script: str, body: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "script": script,
        "body": body,
        "run_dependencies": [],
        "inputs": {},
        "outputs": {},
        "resources": None,
        **extra,
    }


def dep(stage: str, *maps: tuple[str, str], explicit: bool = False) -> dict[str, Any]:
    return {
        "stage": stage,
        "explicit": explicit,
        "mappings": [{"source": s, "target": t} for s, t in maps],
    }


def stage(
    key: str,
    pname: str | None = None,
    *,
    params: dict[str, Any] | None = None,
    inputs: dict[str, Any] | None = None,
    outputs: dict[str, str] | None = None,
    deps: list[dict[str, Any]] | None = None,
    resources: dict[str, Any] | None = None,
    version: str = "1.0",
    dynamic: dict[str, Any] | None = None,
    inter_run: list[dict[str, Any]] | None = None,
    script: str | None = None,
    body: str = "",
) -> dict[str, Any]:
    pname = pname or key
    return {
        "key": key,
        "pname": pname,
        "version": version,
        "file": f"/src/stages/{key}.nix",
        "kind": "simple",
        "params": params or {},
        "inputs": {
            n: (v if isinstance(v, dict) else {"default": v, "file": None})
            for n, v in (inputs or {}).items()
        },
        "outputs": outputs or {},
        "resources": resources,
        "dynamic": dynamic,
        "deps": deps or [],
        "inter_run": inter_run or [],
        "executables": {
            "main": exe(script or f"/nix/store/{'a' * 32}-{pname}-script-{version}/bin/{pname}",
                        body)
        },
    }


def axis(key: str, values: list[Any]) -> dict[str, Any]:
    st, _, param = key.rpartition(".")
    return {"key": key, "stage": st or None, "param": param, "values": values}


def zip_(label: str, **members: list[Any]) -> dict[str, Any]:
    keys = sorted(members)
    rows = [list(r) for r in zip(*(members[k] for k in keys), strict=True)]
    return {
        "label": label,
        "members": [
            {"key": k, "stage": k.rpartition(".")[0] or None, "param": k.rpartition(".")[2]}
            for k in keys
        ],
        "rows": rows,
    }


def run(
    name: str,
    stages: list[dict[str, Any]] | list[list[dict[str, Any]]],
    *,
    axes: list[dict[str, Any]] | None = None,
    zips: list[dict[str, Any]] | None = None,
    hash_mode: str = "pure",
    dependencies: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    pipes = stages if stages and isinstance(stages[0], list) else [stages]
    return {
        "name": name,
        "key": name,
        "file": f"/src/runs/{name}.nix",
        "hash_mode": hash_mode,
        "dependencies": dependencies or [],
        "axes": axes or [],
        "zips": zips or [],
        "params_dependencies": [],
        "pipelines": [
            {"file": f"/src/pipelines/p{i}.nix", "stages": p} for i, p in enumerate(pipes)
        ],
    }


def write_lab(root: Path, *runs: dict[str, Any], groups: dict[str, list[str]] | None = None,
              name: str = "lab") -> Path:
    lab = root / name
    (lab / "runs").mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": "repx-lab/1",
        "git_hash": "abc123",
        "lab_version": "1.0.0",
        "lab_file": "/src/lab.nix",
        "container_mode": "unified",
        "run_container_mode": "per-run",
        "runs": [r["name"] for r in runs],
        "groups": groups or {},
    }
    (lab / "lab.json").write_text(json.dumps(manifest))
    for r in runs:
        (lab / "runs" / f"{r['name']}.json").write_text(json.dumps(r))
    return lab


def graph_of(tmp_path: Path, *runs: dict[str, Any], **kw: Any) -> JobGraph:
    return load_job_graph(write_lab(tmp_path, *runs, **kw))


def by_stage(g: JobGraph, key: str) -> list[Any]:
    return [j for j in g.jobs.values() if j.stage == key]


def train_stage(**kw: Any) -> dict[str, Any]:
    return stage(
        "train",
        "train-model",
        params={"learning_rate": 0.01, "batch_size": 32, "optimizer": "adam"},
        outputs={"model": "$out/model.bin"},
        **kw,
    )


# --------------------------------------------------------------------------- identity


def test_identity_format_and_alphabet() -> None:
    jid = job_id({"a": 1}, "stage-A", "1.0")
    assert ID_RE.match(jid)
    assert jid.endswith("-stage-A-1.0")
    assert set(NIX32_ALPHABET) == set("0123456789abcdfghijklmnpqrsvwxyz")
    # Big-endian 5-bit groups: same as RFC 4648 base32 with the alphabet swapped.
    digest = bytes(range(20))
    std = base64.b32encode(digest).decode()
    table = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", NIX32_ALPHABET)
    assert nix32_of_digest(digest) == std.translate(table)
    assert nix32_of_digest(b"\xff" * 20) == "z" * 32
    assert nix32_of_digest(b"\x08" + b"\x00" * 19) == "1" + "0" * 31
    assert len(job_key(jid)) == 32


def test_canonical_json_is_order_independent() -> None:
    assert canonical_json({"b": 1, "a": [0.1, "é"]}) == '{"a":[0.1,"é"],"b":1}'
    assert job_id({"b": 1, "a": 2}, "p", "v") == job_id({"a": 2, "b": 1}, "p", "v")
    assert job_id({"a": 1}, "p", "v") != job_id({"a": 1.0}, "p", "v")
    with pytest.raises(ValueError):
        canonical_json(float("nan"))


# --------------------------------------------------------------------------- params


def test_seed_000_dot_notation_sweep(tmp_path: Path) -> None:
    g = graph_of(tmp_path, run("hyperparam-sweep", [train_stage()], axes=[
        axis("train-model.learning_rate", [0.1, 0.01, 0.001]),
        axis("train-model.optimizer", ["adam", "sgd"]),
    ]))
    jobs = list(g.jobs.values())
    assert len(jobs) == 6
    assert all(ID_RE.match(j.id) and j.id.endswith("-train-model-1.0") for j in jobs)
    combos = [(j.params["learning_rate"], j.params["optimizer"]) for j in jobs]
    # Row-major: first axis most significant.
    assert combos == [(0.1, "adam"), (0.1, "sgd"), (0.01, "adam"), (0.01, "sgd"),
                      (0.001, "adam"), (0.001, "sgd")]
    assert all(j.params["batch_size"] == 32 for j in jobs)
    assert list(jobs[0].params) == ["batch_size", "learning_rate", "optimizer"]
    assert jobs[0].param_sources == {
        "batch_size": "default",
        "learning_rate": "sweep:train-model.learning_rate",
        "optimizer": "sweep:train-model.optimizer",
    }
    assert g.runs["hyperparam-sweep"].job_ids == [j.id for j in jobs]


def test_dot_notation_by_pipeline_key_and_single_value_override(tmp_path: Path) -> None:
    g = graph_of(tmp_path, run("r", [train_stage()], axes=[
        axis("train.learning_rate", [0.5]),
    ]))
    (job,) = g.jobs.values()
    assert job.params["learning_rate"] == 0.5
    assert job.param_sources["learning_rate"] == "override:train.learning_rate"


def test_dotted_key_wins_over_plain(tmp_path: Path) -> None:
    a = stage("a", params={"lr": 0.0}, outputs={"o": "$out/o"})
    b = stage("b", params={"lr": 0.0})
    g = graph_of(tmp_path, run("r", [a, b], axes=[axis("a.lr", [9]), axis("lr", [1, 2])]))
    assert [j.params["lr"] for j in by_stage(g, "a")] == [9]
    assert [j.params["lr"] for j in by_stage(g, "b")] == [1, 2]
    assert by_stage(g, "a")[0].param_sources["lr"] == "override:a.lr"
    assert by_stage(g, "b")[0].param_sources["lr"] == "sweep:lr"


def test_zip_times_axis(tmp_path: Path) -> None:
    s = stage("work", params={"workload": "x", "mode": "m", "multiplier": 1})
    g = graph_of(tmp_path, run("r", [s], axes=[axis("workload", ["a", "b", "c"])],
                               zips=[zip_("config", mode=["fast", "slow"], multiplier=[2, 3])]))
    jobs = list(g.jobs.values())
    assert len(jobs) == 6
    pairs = {(j.params["mode"], j.params["multiplier"]) for j in jobs}
    assert pairs == {("fast", 2), ("slow", 3)}
    assert [j.params["workload"] for j in jobs] == ["a", "a", "b", "b", "c", "c"]
    assert jobs[0].param_sources["mode"] == "zip:config.mode"


def test_null_means_default(tmp_path: Path) -> None:
    s = stage("s", params={"x": 1, "y": "d"})
    g = graph_of(tmp_path, run("r", [s], axes=[axis("y", [None, "b"])]))
    jobs = list(g.jobs.values())
    assert [j.params["y"] for j in jobs] == ["d", "b"]
    assert jobs[0].param_sources["y"] == "default"
    # A null and the default value itself are the same job.
    g2 = graph_of(tmp_path / "2", run("r", [s], axes=[axis("y", [None, "d"])]))
    assert len(g2.jobs) == 1
    assert next(iter(g2.jobs)) == jobs[0].id


def test_undeclared_param_multiplies_combinations_but_jobs_dedupe(tmp_path: Path) -> None:
    s = stage("s", params={"x": 1})
    g = graph_of(tmp_path, run("r", [s], axes=[axis("unused", [1, 2, 3]), axis("x", [1, 2])]))
    assert [j.params for j in g.jobs.values()] == [{"x": 1}, {"x": 2}]
    base = graph_of(tmp_path / "2", run("r", [s], axes=[axis("x", [1, 2])]))
    assert list(g.jobs) == list(base.jobs)


def test_non_scalar_value_is_an_error(tmp_path: Path) -> None:
    s = stage("s", params={"x": 1})
    with pytest.raises(LabError, match=r"run 'r' .*\"x\" has the non-scalar value \[1,2\]"):
        graph_of(tmp_path, run("r", [s], axes=[axis("x", [[1, 2], 3])]))
    with pytest.raises(LabError, match="non-scalar"):
        graph_of(tmp_path / "z", run("r", [s], zips=[zip_("z", x=[{"a": 1}, 2])]))


def test_duplicate_values_are_an_error(tmp_path: Path) -> None:
    s = stage("s", params={"lr": 0.1})
    # What Nix 2.8 writes for [0.1234567 0.1234568].
    with pytest.raises(LabError) as err:
        graph_of(tmp_path, run("r", [s], axes=[axis("s.lr", [0.123457, 0.123457])]))
    msg = str(err.value)
    assert '"s.lr"' in msg and "0.123457" in msg and "strings" in msg
    with pytest.raises(LabError, match="same row"):
        graph_of(tmp_path / "z", run("r", [s], zips=[zip_("c", a=[1, 1], lr=[0.5, 0.5])]))
    # A zip member may repeat a value when the rows differ.
    g = graph_of(tmp_path / "ok", run("r", [s], zips=[zip_("c", a=[1, 1], lr=[0.5, 0.25])]))
    assert len(g.jobs) == 2


def test_dot_key_errors(tmp_path: Path) -> None:
    s = train_stage()
    with pytest.raises(LabError) as err:
        graph_of(tmp_path, run("r", [s], axes=[axis("trian.learning_rate", [1, 2])]))
    msg = str(err.value)
    assert "run 'r' (file /src/runs/r.nix)" in msg
    assert 'parameter key "trian.learning_rate" names no stage' in msg
    assert "train-model (key 'train'): batch_size, learning_rate, optimizer" in msg
    with pytest.raises(LabError, match="declares no param 'lr'"):
        graph_of(tmp_path / "2", run("r", [s], axes=[axis("train-model.lr", [1, 2])]))


def test_dot_key_ambiguity_and_dynamic_pname(tmp_path: Path) -> None:
    # 'gen' is the key of one stage and the pname of another: ambiguous.
    a = stage("gen", "generate", params={"n": 1})
    b = stage("other", "gen", params={"n": 1})
    with pytest.raises(LabError, match=r"ambiguous: 'gen' names stages with different pnames"):
        graph_of(tmp_path, run("r", [a, b], axes=[axis("gen.n", [1, 2])]))
    # A dynamic pname is matched by key only (as the Nix side tabulates it).
    table = [{"params": {"n": n}, "pname": f"t-{n}"} for n in (1, 2)]
    dyn = stage("trainer", "t-1", params={"n": 1}, dynamic={"attrs": ["pname"], "table": table})
    with pytest.raises(LabError, match="names no stage"):
        graph_of(tmp_path / "2", run("r", [dyn], axes=[axis("t-1.n", [1, 2])]))
    g = graph_of(tmp_path / "3", run("r", [dyn], axes=[axis("trainer.n", [1, 2])]))
    assert [j.pname for j in g.jobs.values()] == ["t-1", "t-2"]


# --------------------------------------------------------------------------- wiring & identity


def pipeline_ab(a_default: int = 1, *, consumer_first: bool = True, **b_kw: Any) -> list[Any]:
    producer = stage("z_producer", params={"n": a_default}, outputs={"data": "$out/d.csv"})
    consumer = stage("a_consumer", inputs={"data": ""}, outputs={"res": "$out/r"},
                     deps=[dep("z_producer", ("data", "data"))], **b_kw)
    return [consumer, producer] if consumer_first else [producer, consumer]


def test_consumer_before_producer_gets_upstream_id(tmp_path: Path) -> None:
    g1 = graph_of(tmp_path / "1", run("r", pipeline_ab(1)))
    g2 = graph_of(tmp_path / "2", run("r", pipeline_ab(2)))
    (p1,), (c1,) = by_stage(g1, "z_producer"), by_stage(g1, "a_consumer")
    (p2,), (c2,) = by_stage(g2, "z_producer"), by_stage(g2, "a_consumer")
    assert c1.depends_on == [p1.id]
    assert c1.inputs == {"data": {"job": p1.id, "output": "data"}}
    assert p1.id != p2.id
    assert c1.id != c2.id  # the producer's change reaches the consumer
    assert list(g1.jobs) == [p1.id, c1.id]  # producer expanded first


def test_changing_one_sweep_value_changes_only_its_jobs(tmp_path: Path) -> None:
    pipe = pipeline_ab()
    g1 = graph_of(tmp_path / "1", run("r", pipe, axes=[axis("n", [1, 2, 3])]))
    g2 = graph_of(tmp_path / "2", run("r", pipe, axes=[axis("n", [1, 2, 4])]))
    assert len(g1.jobs) == 6
    common = set(g1.jobs) & set(g2.jobs)
    assert len(common) == 4
    changed = [j for j in g1.jobs.values() if j.id not in common]
    assert {j.params.get("n") for j in changed if j.stage == "z_producer"} == {3}
    assert len(changed) == 2


def test_script_change_pure_vs_params_only(tmp_path: Path) -> None:
    def lab(mode: str, a_script: str) -> JobGraph:
        a = stage("a", outputs={"o": "$out/o"}, script=a_script)
        b = stage("b", inputs={"o": ""}, deps=[dep("a", ("o", "o"))])
        c = stage("c")
        return graph_of(tmp_path / f"{mode}{a_script[-1]}", run("r", [a, b, c], hash_mode=mode))

    p1, p2 = lab("pure", "/nix/store/x-a/bin/a1"), lab("pure", "/nix/store/x-a/bin/a2")
    changed = {p1.jobs[i].stage for i in set(p1.jobs) - set(p2.jobs)}
    assert changed == {"a", "b"}
    o1 = lab("params-only", "/nix/store/x-a/bin/a1")
    o2 = lab("params-only", "/nix/store/x-a/bin/a2")
    assert list(o1.jobs) == list(o2.jobs)


def test_version_change_in_params_only(tmp_path: Path) -> None:
    def lab(version: str) -> JobGraph:
        a = stage("a", outputs={"o": "$out/o"}, version=version)
        b = stage("b", inputs={"o": ""}, deps=[dep("a", ("o", "o"))])
        return graph_of(tmp_path / version, run("r", [a, b], hash_mode="params-only"))

    g1, g2 = lab("1.0"), lab("2.0")
    assert {g1.jobs[i].stage for i in set(g1.jobs) - set(g2.jobs)} == {"a", "b"}
    assert by_stage(g2, "a")[0].id.endswith("-a-2.0")


def test_identity_parts_rebuild_every_id(tmp_path: Path) -> None:
    sim = run("sim", pipeline_ab(), axes=[axis("n", [1, 2])])
    first = stage("first", inputs={"metadata__sim": "", "store__base": "", "cfg": {
        "default": "cfg.json", "file": "/nix/store/h-cfg.json"}},
        inter_run=[{"run": "sim", "type": "hard", "target": "metadata__sim"}],
        outputs={"o": "$out/o"})
    second = stage("second", inputs={"o": ""}, deps=[dep("first", ("o", "o"))])
    for mode in ("pure", "params-only"):
        ana = run("ana", [first, second], hash_mode=mode,
                  dependencies=[{"run": "sim", "type": "hard"}])
        g = graph_of(tmp_path / mode, sim, ana)
        for j in g.jobs.values():
            assert job_id(identity_parts(j), j.pname, j.version) == j.id


def test_default_input_files(tmp_path: Path) -> None:
    labs = iter(range(100))

    def lab(path: str | None, default: str = "cfg.json") -> JobGraph:
        s = stage("s", inputs={"cfg": {"default": default, "file": path}})
        return graph_of(tmp_path / str(next(labs)), run("r", [s]))

    (j1,) = lab("/nix/store/h1-cfg.json").jobs.values()
    (j2,) = lab("/nix/store/h2-cfg.json").jobs.values()
    assert j1.inputs == {"cfg": {"file": "/nix/store/h1-cfg.json"}}
    assert j1.id != j2.id  # the default file's content is part of the identity
    (j3,) = lab(None, "/data/abs.csv").jobs.values()
    assert j3.inputs == {"cfg": {"file": "/data/abs.csv"}}
    with pytest.raises(LabError, match=r"default 'cfg.json' not found beside /src/stages/s.nix"):
        lab(None)


def test_required_input_error(tmp_path: Path) -> None:
    a = stage("gen", outputs={"data_csv": "$out/d.csv", "log": "$out/l"})
    b = stage("use", inputs={"data": "", "other": ""},
              deps=[dep("gen", ("data_csv", "data"))])
    with pytest.raises(LabError) as err:
        graph_of(tmp_path, run("r", [a, b]))
    msg = str(err.value)
    assert "stage 'use' (file /src/stages/use.nix) in run 'r'" in msg
    assert "input 'other' is required (empty default) but no dependency provides it" in msg
    assert "gen.data_csv" in msg and "gen.log" in msg
    b2 = stage("use", inputs={"seed_file": "$out/seed.txt"})
    with pytest.raises(LabError, match=r"input 'seed_file' defaults to '\$out/seed.txt'"):
        graph_of(tmp_path / "2", run("r", [b2]))


def test_runtime_inputs(tmp_path: Path) -> None:
    s = stage("s", inputs={"worker__item": "", "store__base": "", "worker__outs": "[]"})
    (j,) = graph_of(tmp_path, run("r", [s])).jobs.values()
    assert j.inputs == {n: {"runtime": n} for n in ("store__base", "worker__item",
                                                   "worker__outs")}


def test_stage_cycle_is_an_error(tmp_path: Path) -> None:
    a = stage("a", inputs={"x": ""}, outputs={"y": "$out/y"}, deps=[dep("b", ("x", "x"))])
    b = stage("b", inputs={"y": ""}, outputs={"x": "$out/x"}, deps=[dep("a", ("y", "y"))])
    with pytest.raises(LabError, match=r"pipeline /src/pipelines/p0.nix: .*cycle.*a, b"):
        graph_of(tmp_path, run("r", [a, b]))


def test_dynamic_attributes_per_combination(tmp_path: Path) -> None:
    table = [
        {"params": {"model": m}, "pname": f"train-{m}",
         "outputs": {"model": f"$out/model-{m}.bin"},
         "resources": {"mem": "64G" if m == "large" else "8G"}}
        for m in ("small", "large")
    ]
    s = stage("train", "train-small", params={"model": "small"},
              outputs={"model": "$out/model-small.bin"}, resources={"mem": "8G"},
              dynamic={"attrs": ["outputs", "pname", "resources"], "table": table})
    g = graph_of(tmp_path, run("r", [s], axes=[axis("model", ["small", "large"])]))
    jobs = list(g.jobs.values())
    assert [j.pname for j in jobs] == ["train-small", "train-large"]
    assert jobs[1].id.endswith("-train-large-1.0")
    assert jobs[1].outputs == {"model": "$out/model-large.bin"}
    assert jobs[1].resources == {"mem": "64G"}
    bad = dict(s, dynamic={"attrs": ["pname"], "table": table[:1]})
    with pytest.raises(LabError, match="no dynamic attributes"):
        graph_of(tmp_path / "2", run("r", [bad], axes=[axis("model", ["small", "large"])]))


def test_scatter_gather_stage(tmp_path: Path) -> None:
    def lab(step_script: str) -> JobGraph:
        s = stage("sg", params={"chunks": 2}, inputs={"data": "/data/in.csv"},
                  outputs={"final": "$out/final.csv"})
        s["kind"] = "scatter-gather"
        s["executables"] = {
            "scatter": exe("/nix/store/s-scatter/bin/x", resources={"mem": "1G"},
                           outputs={"work__items": "$out/work_items.json",
                                    "worker__arg": {"i": 0}}),
            "steps": {
                "work": exe(step_script, deps=[]),
                "prep": exe("/nix/store/s-prep/bin/x", deps=[]),
            },
            "gather": exe("/nix/store/s-gather/bin/x", inputs={"worker__outs": "[]"}),
        }
        s["scatter_gather"] = {"step_order": ["prep", "work"], "sink": "work",
                               "sink_output": "out", "work_items": "$out/work_items.json"}
        return graph_of(tmp_path / step_script[-1], run("r", [s], axes=[axis("chunks", [2, 4])]))

    g1, g2 = lab("/nix/store/s-work/bin/1"), lab("/nix/store/s-work/bin/2")
    jobs = list(g1.jobs.values())
    assert len(jobs) == 2 and all(j.kind == "scatter-gather" for j in jobs)
    assert list(jobs[0].executables) == ["scatter", "step-prep", "step-work", "gather"]
    assert set(g1.jobs).isdisjoint(g2.jobs)
    assert jobs[0].stage_def.steps["work"].script.endswith("/1")
    layout = jobs[0].stage_def.scatter_gather
    assert layout is not None and layout.sink == "work" and layout.step_order == ("prep", "work")
    assert jobs[0].resources == {}  # phase resources are validated, not merged into the stage


# --------------------------------------------------------------------------- resources


def test_resources_merge_and_never_change_ids(tmp_path: Path) -> None:
    def lab(a_res: dict[str, Any], tag: str) -> JobGraph:
        a = stage("a", outputs={"o": "$out/o"}, resources=a_res)
        c = stage("c", outputs={"p": "$out/p"}, resources={"partition": "cpu", "cpus": 16})
        b = stage("b", inputs={"o": "", "p": ""},
                  deps=[dep("a", ("o", "o")), dep("c", ("p", "p"))],
                  resources={"mem": 512, "cpus": 4, "time": "90:00"})
        return graph_of(tmp_path / tag, run("r", [a, b, c]))

    g1 = lab({"mem": "8G", "cpus": 2, "time": "02:00:00", "partition": "gpu",
              "sbatch_opts": ["--gres=gpu:1"]}, "1")
    g2 = lab({"mem": "1G"}, "2")
    assert list(g1.jobs) == list(g2.jobs)
    (b,) = by_stage(g1, "b")
    assert b.own_resources == {"mem": 512, "cpus": 4, "time": "90:00"}
    assert b.resources == {"mem": "8G", "cpus": 16, "time": "02:00:00", "partition": "gpu",
                           "sbatch_opts": ["--gres=gpu:1"]}
    assert b.resources.mem_bytes == 8 * 1024**3 and b.resources.time_seconds == 7200
    (b2,) = by_stage(g2, "b")
    # partition comes from the first dependency only (a has none here).
    assert b2.resources == {"mem": "1G", "cpus": 16, "time": "90:00"}


def test_resource_validation(tmp_path: Path) -> None:
    s = stage("s", resources={"memory": "8G", "gpu": 1})
    with pytest.raises(LabError) as err:
        graph_of(tmp_path, run("r", [s]))
    assert str(err.value) == (
        "stage 's' (file /src/stages/s.nix): unknown resource hint keys: ['gpu', 'memory']; "
        "valid keys are mem, cpus, time, partition, sbatch_opts, retries"
    )
    for key, value in [("mem", "8 GB"), ("time", "1:75:00"), ("cpus", "4"), ("cpus", 0)]:
        s = stage("s", resources={key: value})
        with pytest.raises(LabError, match=rf"stage 's' .*'{key}' has an invalid value"):
            graph_of(tmp_path / f"{key}{value}", run("r", [s]))


def test_parse_mem_and_time() -> None:
    assert parse_mem("8G") == 8 * 1024**3
    assert parse_mem("512m") == 512 * 1024**2
    assert parse_mem(100) == parse_mem("100") == 100 * 1024**2
    assert parse_mem("1T") == 1024**4 and parse_mem("4K") == 4096
    assert parse_time("02:00:00") == 7200
    assert parse_time("1-00:00:01") == 86401
    assert parse_time("90:30") == 5430
    assert parse_time(600) == parse_time("600") == 600
    for bad_mem in ("1.5G", "", "G", True, 0, "8GB"):
        with pytest.raises(ValueError):
            parse_mem(bad_mem)
    for bad_time in ("1-10:00", "1:60:00", "0", 0, "soon", False):
        with pytest.raises(ValueError):
            parse_time(bad_time)


# --------------------------------------------------------------------------- runs


def sim_and_analysis(n_values: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    sim = run("simulation", pipeline_ab(), axes=[axis("n", n_values)])
    first = stage("collect", inputs={"metadata__simulation": "", "store__base": ""},
                  inter_run=[{"run": "simulation", "type": "hard",
                              "target": "metadata__simulation"}],
                  outputs={"o": "$out/o"})
    report = stage("report", inputs={"o": ""}, deps=[dep("collect", ("o", "o"))])
    ana = run("analysis", [first, report], dependencies=[{"run": "simulation", "type": "hard"}])
    return sim, ana


def test_inter_run_manifest_input(tmp_path: Path) -> None:
    # analysis listed first: expansion still follows the dependency.
    sim, ana = sim_and_analysis([1, 2])
    g = graph_of(tmp_path / "1", ana, sim)
    (collect,) = by_stage(g, "collect")
    sim_ids = sorted(g.runs["simulation"].job_ids)
    assert len(sim_ids) == 4
    assert collect.inputs["metadata__simulation"] == {"run_manifest": "simulation",
                                                      "jobs": sim_ids}
    assert collect.inputs["store__base"] == {"runtime": "store__base"}
    assert collect.inter_run == [("simulation", "hard")]
    assert list(g.runs) == ["analysis", "simulation"]
    assert g.runs["analysis"].dependencies == [("simulation", "hard")]
    g2 = graph_of(tmp_path / "2", *sim_and_analysis([1, 3]))
    assert by_stage(g2, "collect")[0].id != collect.id
    # Closure and order.
    (report,) = by_stage(g, "report")
    closure = g.upstream_closure([report.id])
    assert set(closure) == set(sim_ids) | {collect.id, report.id}
    assert closure[-1] == report.id
    pos = {jid: i for i, jid in enumerate(g.topological_order())}
    assert all(pos[s] < pos[collect.id] < pos[report.id] for s in sim_ids)
    for j in g.jobs.values():
        assert all(pos[u] < pos[j.id] for u in j.depends_on)


def test_manifest_of_a_run_not_depended_on(tmp_path: Path) -> None:
    s = stage("s", inputs={"metadata__other": ""})
    with pytest.raises(LabError, match="does not depend on that run"):
        graph_of(tmp_path, run("r", [s]))


def test_identical_jobs_across_runs_collapse(tmp_path: Path) -> None:
    r1 = run("one", pipeline_ab(), axes=[axis("n", [1, 2])])
    r2 = run("two", pipeline_ab(), axes=[axis("n", [2, 3])])
    g = graph_of(tmp_path, r1, r2, groups={"both": ["one", "two"]})
    assert len(g.jobs) == 6
    shared = [j for j in g.jobs.values() if j.runs == ["one", "two"]]
    assert len(shared) == 2 and all(j.run == "one" for j in shared)
    assert len(g.runs["one"].job_ids) == len(g.runs["two"].job_ids) == 4
    assert len(g.select(["@both"])) == 6


def test_resolve_and_select(tmp_path: Path) -> None:
    g = graph_of(tmp_path, run("r", [train_stage()], axes=[
        axis("train-model.learning_rate", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])]),
        groups={"g": ["r"]})
    some = next(iter(g.jobs))
    assert g.resolve_job(some).id == some
    assert g.resolve_job(some[:12]).id == some
    # Real ids rarely share a prefix: give eight of them a common one.
    ids = sorted(g.jobs)
    fake = JobGraph(g.lab)
    for i, jid in enumerate(ids):
        fake.jobs["0000" + str(i) + jid[5:]] = g.jobs[jid]
    with pytest.raises(UsageError) as err:
        fake.resolve_job("0000")
    assert "matches 8 jobs" in str(err.value) and "and 3 more" in str(err.value)
    with pytest.raises(UsageError, match="no job id starts with 'zzzz'"):
        g.resolve_job("zzzz")
    assert [j.id for j in g.select(["r"])] == g.runs["r"].job_ids
    assert g.select(["@g", some[:10]]) == g.select(["r"])
    assert g.select([some]) == [g.jobs[some]]
    with pytest.raises(UsageError, match=r"unknown target 'nope'.*runs: r; groups: @g"):
        g.select(["nope"])
    with pytest.raises(UsageError, match="unknown group '@x'"):
        g.select(["@x"])


# --------------------------------------------------------------------------- loading


def test_not_a_lab_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=f"{tmp_path}: not a repx lab directory"):
        load_lab(tmp_path)
    with pytest.raises(LabError, match="no such lab directory"):
        load_lab(tmp_path / "missing")
    lab = write_lab(tmp_path, run("r", [stage("s")]))
    data = json.loads((lab / "lab.json").read_text())
    data["format"] = "repx-lab/99"
    (lab / "lab.json").write_text(json.dumps(data))
    with pytest.raises(LabError, match=r"lab.json: unknown lab format \"repx-lab/99\""):
        load_lab(lab)
    lab2 = write_lab(tmp_path, run("r", [stage("s")]), name="lab2")
    assert load_lab(lab2 / "lab.json").run_names == ("r",)
    (lab2 / "runs" / "r.json").unlink()
    with pytest.raises(LabError, match="blueprint is missing"):
        load_lab(lab2)


def test_loaded_shapes_and_to_dict(tmp_path: Path) -> None:
    s = stage("s", params={"x": 1}, outputs={"o": "$out/o"})
    s["executables"]["main"]["path"] = "/nix/store/a-jq/bin:/nix/store/b-bash/bin"
    lab = load_lab(write_lab(tmp_path, run("r", [s])))
    (st,) = lab.run("r").pipelines[0].stages
    assert lab.runs[0] is lab.run("r")
    assert [n for n, _ in st.all_executables()] == ["main"]
    assert st.executables["main"].path.endswith("b-bash/bin")
    assert st.scatter_gather is None
    (job,) = load_job_graph(tmp_path / "lab").jobs.values()
    data = json.loads(json.dumps(job.to_dict()))
    assert data["id"] == job.id and data["params"] == {"x": 1}
    assert data["scripts"] == {"main": st.executables["main"].script}


def test_render_body() -> None:
    from repx.lab.blueprint import Executable

    # params.<p> renders to the bash expansion ${params["<p>"]}; render_body puts in the text
    # bash holds at run time (JSON text for numbers and booleans, null empty).
    e = Executable("main", "/s", 'run --lr ${params["lr"]} --lr_x ${params["lr_x"]} '
                   '--f ${params["flag"]} --n ${params["none"]} --g ${params["f"]}',
                   (), {}, {}, None)
    out = render_body(e, {"lr": 0.001, "lr_x": "a b", "flag": True, "none": None, "f": False})
    assert out == "run --lr 0.001 --lr_x a b --f true --n  --g false"
    assert render_body('x=${params["n"]} ${params["m"]}', {"n": 3}) == 'x=3 ${params["m"]}'
    assert render_body('${params["a\\"b"]}', {'a"b': "v"}) == "v"


# --------------------------------------------------------------------------- speed


def test_perf_10000_combinations_two_stages(tmp_path: Path) -> None:
    a = stage("gen", params={"x": 0, "y": 0}, outputs={"d": "$out/d"})
    b = stage("fit", params={"x": 0, "y": 0}, inputs={"d": ""}, outputs={"m": "$out/m"},
              deps=[dep("gen", ("d", "d"))], resources={"mem": "1G"})
    lab = write_lab(tmp_path, run("big", [a, b], axes=[
        axis("x", list(range(100))), axis("y", [i / 7 for i in range(100)])]))
    t0 = time.perf_counter()
    g = load_job_graph(lab)
    elapsed = time.perf_counter() - t0
    assert len(g.jobs) == 20_000
    print(f"\nexpanded 10 000 combinations x 2 stages = {len(g.jobs)} jobs in "
          f"{elapsed * 1000:.0f} ms ({elapsed / len(g.jobs) * 1e6:.1f} us/job)")
