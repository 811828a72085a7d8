"""The unit state machine: states, outcomes and how outcomes pass along a UnitGraph."""

from __future__ import annotations

import heapq

from repx.engine.units import ON_BATCH_SYSTEM, Outcome, Unit, UnitGraph, UnitState
from repx.store import Status


def unit(name: str, *, run_index: int = 0, order: int = 0) -> Unit:
    """A plain job unit (the graph never reads ``job``)."""
    return Unit(id=f"id-{name}", job=None, role="job", label=name,  # type: ignore[arg-type]
                script="", outputs={}, cpus=1, mem=0, run_index=run_index, order=order)


def gate(name: str, *, soft: bool) -> Unit:
    """An inter-run gate: a virtual unit that runs nothing."""
    return Unit(id=f"gate-{name}", job=None, role="gate", label=name,  # type: ignore[arg-type]
                script="", outputs={}, cpus=1, mem=0, run_index=0, order=0,
                gate=True, soft=soft)


def ready_units(graph: UnitGraph) -> list[Unit]:
    """The ready heap drained in order."""
    out = []
    while graph.ready:
        out.append(heapq.heappop(graph.ready)[-1])
    return out


class Recorder:
    """Collects the units ``on_done`` is called with."""

    def __init__(self) -> None:
        self.done: list[Unit] = []

    def __call__(self, u: Unit) -> None:
        self.done.append(u)


# ------------------------------------------------------------------------ states, outcomes


def test_unit_state_values() -> None:
    """States print as their lower-case names (ON_SLURM as ``running-slurm``)."""
    assert UnitState.WAITING == "waiting"
    assert UnitState.ON_SLURM == "running-slurm"
    assert UnitState.DONE == "done"
    assert frozenset({UnitState.SUBMITTED, UnitState.ON_SLURM}) == ON_BATCH_SYSTEM


def test_outcome_ok() -> None:
    """Only SUCCEEDED and UP_TO_DATE let hard dependents run."""
    assert {o for o in Outcome if o.ok} == {Outcome.SUCCEEDED, Outcome.UP_TO_DATE}


def test_outcome_store_status() -> None:
    """Each outcome maps to the store status its record carries, or None if unrecorded."""
    assert Outcome.SUCCEEDED.store_status is Status.SUCCEEDED
    assert Outcome.FAILED.store_status is Status.FAILED
    assert Outcome.CANCELLED.store_status is Status.CANCELLED
    assert Outcome.BLOCKED.store_status is Status.CANCELLED
    assert Outcome.UP_TO_DATE.store_status is None
    assert Outcome.NOT_STARTED.store_status is None


def test_outcome_values_are_printable() -> None:
    """Outcome values are the words summaries print."""
    assert str(Outcome.UP_TO_DATE) == "up to date"
    assert str(Outcome.NOT_STARTED) == "not started"


def test_new_unit_is_waiting() -> None:
    """A unit starts WAITING with no outcome and nothing to wait for."""
    u = unit("a")
    assert u.state is UnitState.WAITING
    assert u.outcome is None
    assert u.deps_left == 0


# ------------------------------------------------------------------------ add, link


def test_add_registers_units_but_not_gates() -> None:
    """``add`` registers a unit under its id and returns it; gates are not registered."""
    graph = UnitGraph()
    a = unit("a")
    g = gate("g", soft=False)
    assert graph.add(a) is a
    assert graph.add(g) is g
    assert graph.units == {"id-a": a}


def test_link_without_deps_makes_ready() -> None:
    """A unit with nothing to wait for is ready at once."""
    graph = UnitGraph()
    a = graph.add(unit("a"))
    graph.link(a, [])
    assert a.state is UnitState.READY
    assert ready_units(graph) == [a]


def test_wait_for_adds_edges_only() -> None:
    """``wait_for`` adds edges, counts each distinct dep once and does not queue anything."""
    graph = UnitGraph()
    a, b = unit("a"), unit("b")
    graph.wait_for(b, [a, a])
    assert b.deps_left == 1
    assert b.deps == [a]
    assert a.dependents == [b]
    assert b.state is UnitState.WAITING
    assert graph.ready == []


def test_link_deduplicates_deps() -> None:
    """The same dependency listed twice is waited for once."""
    graph = UnitGraph()
    a, b = unit("a"), unit("b")
    graph.link(b, [a, a])
    assert b.deps_left == 1
    graph.resolve(a, Outcome.SUCCEEDED, "")
    assert b.state is UnitState.READY


# ------------------------------------------------------------------------ propagation


def test_chain_succeeds_step_by_step() -> None:
    """In a -> b -> c, b is ready once a succeeds, and c once b succeeds."""
    graph = UnitGraph()
    a, b, c = (graph.add(unit(n, order=i)) for i, n in enumerate("abc"))
    graph.link(a, [])
    graph.link(b, [a])
    graph.link(c, [b])
    assert ready_units(graph) == [a]
    assert b.state is UnitState.WAITING and c.state is UnitState.WAITING

    graph.resolve(a, Outcome.SUCCEEDED, "")
    assert a.state is UnitState.DONE and a.outcome is Outcome.SUCCEEDED
    assert b.state is UnitState.READY
    assert c.state is UnitState.WAITING
    assert ready_units(graph) == [b]

    graph.resolve(b, Outcome.UP_TO_DATE, "")
    assert ready_units(graph) == [c]


def test_unit_waits_for_all_deps() -> None:
    """A unit with two deps is ready only when the second one also succeeds."""
    graph = UnitGraph()
    a, b, c = unit("a"), unit("b"), unit("c")
    graph.link(c, [a, b])
    graph.resolve(a, Outcome.SUCCEEDED, "")
    assert c.state is UnitState.WAITING and c.deps_left == 1
    graph.resolve(b, Outcome.SUCCEEDED, "")
    assert c.state is UnitState.READY


def test_failure_blocks_dependents_transitively() -> None:
    """A failed unit blocks its dependents and theirs, each with a reason naming it."""
    done = Recorder()
    graph = UnitGraph(done)
    a, b, c = unit("a"), unit("b"), unit("c")
    graph.link(b, [a])
    graph.link(c, [b])
    graph.resolve(a, Outcome.FAILED, "exit 1")
    assert a.outcome is Outcome.FAILED and a.reason == "exit 1"
    for u in (b, c):
        assert u.state is UnitState.DONE
        assert u.outcome is Outcome.BLOCKED
        assert u.reason == "a id-a failed"
    assert graph.ready == []
    assert sorted(u.label for u in done.done) == ["a", "b", "c"]


def test_cancelled_dep_blocks_with_its_outcome_in_reason() -> None:
    """A cancelled dependency blocks its dependent; the reason gives the outcome."""
    graph = UnitGraph()
    a, b = unit("a"), unit("b")
    graph.link(b, [a])
    graph.resolve(a, Outcome.CANCELLED, "")
    assert b.outcome is Outcome.BLOCKED
    assert b.reason == "a id-a cancelled"


def test_failure_blocks_even_when_other_deps_succeed() -> None:
    """One failed dependency is enough to block, whatever the others do."""
    graph = UnitGraph()
    a, b, c = unit("a"), unit("b"), unit("c")
    graph.link(c, [a, b])
    graph.resolve(a, Outcome.SUCCEEDED, "")
    graph.resolve(b, Outcome.FAILED, "")
    assert c.outcome is Outcome.BLOCKED
    assert "id-b" in c.reason
    assert graph.ready == []


def test_link_to_done_failed_dep_blocks_at_once() -> None:
    """Linking to a dependency that already failed blocks the unit immediately."""
    done = Recorder()
    graph = UnitGraph(done)
    a, b = unit("a"), unit("b")
    graph.resolve(a, Outcome.FAILED, "boom")
    graph.link(b, [a])
    assert b.state is UnitState.DONE
    assert b.outcome is Outcome.BLOCKED
    assert b.reason == "a id-a failed"
    assert graph.ready == []
    assert done.done == [a, b]


def test_link_to_done_succeeded_dep_counts_as_satisfied() -> None:
    """A dependency already done well is not waited for; with nothing left, ready."""
    graph = UnitGraph()
    a, b = unit("a"), unit("b")
    graph.resolve(a, Outcome.SUCCEEDED, "")
    graph.link(b, [a])
    assert b.deps_left == 0
    assert a.dependents == []
    assert b.state is UnitState.READY


def test_link_mixes_done_and_pending_deps() -> None:
    """Done-and-ok deps are skipped; the unit waits only for the pending ones."""
    graph = UnitGraph()
    a, b, c = unit("a"), unit("b"), unit("c")
    graph.resolve(a, Outcome.UP_TO_DATE, "")
    graph.link(c, [a, b])
    assert c.deps_left == 1 and c.deps == [b]
    assert c.state is UnitState.WAITING
    graph.resolve(b, Outcome.SUCCEEDED, "")
    assert c.state is UnitState.READY


# ------------------------------------------------------------------------ gates


def test_hard_gate_opens_when_all_deps_succeed() -> None:
    """A hard gate succeeds once its last dependency succeeds; its dependent is ready."""
    done = Recorder()
    graph = UnitGraph(done)
    a, b, d = unit("a"), unit("b"), unit("d")
    g = graph.add(gate("g", soft=False))
    graph.link(g, [a, b])
    graph.link(d, [g])
    graph.resolve(a, Outcome.SUCCEEDED, "")
    assert g.state is UnitState.WAITING and d.state is UnitState.WAITING
    graph.resolve(b, Outcome.SUCCEEDED, "")
    assert g.state is UnitState.DONE and g.outcome is Outcome.SUCCEEDED
    assert d.state is UnitState.READY
    assert g not in done.done


def test_hard_gate_blocks_on_a_failed_dep() -> None:
    """A hard gate is blocked by a failed dependency and blocks what waits for it."""
    graph = UnitGraph()
    a, b, d = unit("a"), unit("b"), unit("d")
    g = gate("g", soft=False)
    graph.link(g, [a, b])
    graph.link(d, [g])
    graph.resolve(a, Outcome.SUCCEEDED, "")
    graph.resolve(b, Outcome.FAILED, "")
    assert g.outcome is Outcome.BLOCKED
    assert d.outcome is Outcome.BLOCKED
    assert d.reason == "b id-b failed"
    assert graph.ready == []


def test_hard_gate_linked_to_done_deps() -> None:
    """A hard gate linked to deps already done opens if all succeeded, else is blocked."""
    graph = UnitGraph()
    ok, bad = unit("ok"), unit("bad")
    graph.resolve(ok, Outcome.SUCCEEDED, "")
    graph.resolve(bad, Outcome.FAILED, "")
    opened, closed = gate("g1", soft=False), gate("g2", soft=False)
    graph.link(opened, [ok])
    graph.link(closed, [ok, bad])
    assert opened.outcome is Outcome.SUCCEEDED
    assert closed.outcome is Outcome.BLOCKED


def test_soft_gate_opens_whatever_the_outcome() -> None:
    """A soft gate opens when its deps end, failed or not; its dependents become ready."""
    done = Recorder()
    graph = UnitGraph(done)
    a, b, d = unit("a"), unit("b"), unit("d")
    g = gate("g", soft=True)
    graph.link(g, [a, b])
    graph.link(d, [g])
    graph.resolve(a, Outcome.FAILED, "")
    assert g.state is UnitState.WAITING
    graph.resolve(b, Outcome.BLOCKED, "upstream")
    assert g.outcome is Outcome.SUCCEEDED
    assert d.state is UnitState.READY
    assert ready_units(graph) == [d]
    assert g not in done.done


def test_soft_gate_linked_to_failed_done_dep_opens() -> None:
    """A soft gate linked to a dependency that already failed still opens."""
    graph = UnitGraph()
    a, d = unit("a"), unit("d")
    graph.resolve(a, Outcome.FAILED, "")
    g = gate("g", soft=True)
    graph.link(g, [a])
    graph.link(d, [g])
    assert g.outcome is Outcome.SUCCEEDED
    assert d.state is UnitState.READY


# ------------------------------------------------------------------------ batch systems


def test_units_on_batch_system_are_not_queued_again() -> None:
    """A SUBMITTED or ON_SLURM unit stays where it is when its dependencies end."""
    graph = UnitGraph()
    a = unit("a")
    sub, on = unit("sub"), unit("on")
    graph.link(sub, [a])
    graph.link(on, [a])
    sub.state = UnitState.SUBMITTED
    on.state = UnitState.ON_SLURM
    graph.resolve(a, Outcome.SUCCEEDED, "")
    assert sub.state is UnitState.SUBMITTED
    assert on.state is UnitState.ON_SLURM
    assert sub.deps_left == 0 and on.deps_left == 0
    assert graph.ready == []


def test_make_ready_on_batch_system_is_no_op() -> None:
    """``make_ready`` leaves a unit already on a batch system alone."""
    graph = UnitGraph()
    u = unit("u")
    u.state = UnitState.SUBMITTED
    graph.make_ready(u)
    assert u.state is UnitState.SUBMITTED
    assert graph.ready == []


def test_make_ready_opens_a_gate() -> None:
    """``make_ready`` on a gate gives it SUCCEEDED instead of queueing it."""
    graph = UnitGraph()
    g = gate("g", soft=False)
    graph.make_ready(g)
    assert g.outcome is Outcome.SUCCEEDED
    assert graph.ready == []


def test_push_ready_requeues() -> None:
    """``push_ready`` queues a unit again (e.g. when another build's owner died)."""
    graph = UnitGraph()
    u = unit("u")
    u.state = UnitState.FOREIGN
    graph.push_ready(u)
    assert u.state is UnitState.READY
    assert ready_units(graph) == [u]


# ------------------------------------------------------------------------ resolve, on_done


def test_resolve_on_done_unit_is_no_op() -> None:
    """Resolving a unit that already has an outcome changes nothing and reports nothing."""
    done = Recorder()
    graph = UnitGraph(done)
    a, b = unit("a"), unit("b")
    graph.link(b, [a])
    graph.resolve(a, Outcome.SUCCEEDED, "first")
    graph.resolve(a, Outcome.FAILED, "second")
    assert a.outcome is Outcome.SUCCEEDED and a.reason == "first"
    assert b.state is UnitState.READY and b.deps_left == 0
    assert done.done == [a]


def test_on_done_called_once_per_non_gate_unit() -> None:
    """``on_done`` is called exactly once for each job unit and never for a gate."""
    done = Recorder()
    graph = UnitGraph(done)
    a, b, c = unit("a"), unit("b"), unit("c")
    hard, soft = gate("hard", soft=False), gate("soft", soft=True)
    graph.link(hard, [a])
    graph.link(soft, [a])
    graph.link(b, [hard])
    graph.link(c, [soft, b])
    graph.resolve(a, Outcome.FAILED, "")
    graph.resolve(c, Outcome.FAILED, "again")
    assert hard.outcome is Outcome.BLOCKED and soft.outcome is Outcome.SUCCEEDED
    assert b.outcome is Outcome.BLOCKED and c.outcome is Outcome.BLOCKED
    assert sorted(u.label for u in done.done) == ["a", "b", "c"]


# ------------------------------------------------------------------------ ready heap


def test_ready_heap_orders_by_run_then_order() -> None:
    """Ready units come out by (run_index, order), whatever order they were queued in."""
    graph = UnitGraph()
    keys = [(1, 0), (0, 5), (2, 1), (0, 1), (1, 3), (0, 0)]
    units = [unit(f"u{r}-{o}", run_index=r, order=o) for r, o in keys]
    for u in units:
        graph.link(u, [])
    assert [(u.run_index, u.order) for u in ready_units(graph)] == sorted(keys)


def test_ready_heap_ties_keep_insertion_order() -> None:
    """Units with equal (run_index, order) come out in the order they were queued."""
    graph = UnitGraph()
    first, second = unit("first"), unit("second")
    graph.push_ready(first)
    graph.push_ready(second)
    assert ready_units(graph) == [first, second]


def test_ready_heap_order_after_resolve() -> None:
    """Dependents freed by one outcome are queued by (run_index, order) too."""
    graph = UnitGraph()
    root = unit("root")
    late = unit("late", run_index=1, order=0)
    early = unit("early", run_index=0, order=9)
    graph.link(late, [root])
    graph.link(early, [root])
    graph.resolve(root, Outcome.SUCCEEDED, "")
    assert ready_units(graph) == [early, late]
