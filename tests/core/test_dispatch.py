"""The dispatch loop: both implementations, every rule, and a differential check against a model."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import core.dispatch
from core._dispatch_py import dispatch as py_dispatch
from core.dispatch import NODE_SLOTS_MAX, DispatchInvariantError, NodeSlots
from core.heap import PyReadyQueue, ReadyQueue
from core.priority import Priority

NO_EXTENSIONS = bool(os.environ.get("DSCHED_NO_EXTENSIONS"))

Dispatch = Callable[..., list[tuple[str, str]]]
Entry = tuple[str, int, int]  # (task_id, priority, seq)

H, M, L = Priority.HIGH, Priority.MEDIUM, Priority.LOW


# ----------------------------------------------------------------------------- queue and model
# The real ready queue: the selected one (compiled unless switched off) and the Python twin.
QUEUE_CLASSES: list[Any] = list(dict.fromkeys([ReadyQueue, PyReadyQueue]))


def make_queue(entries: Sequence[Entry], cls: Any = None) -> Any:
    queue = (cls or QUEUE_CLASSES[0])()
    for task_id, priority, seq in entries:
        queue.push(task_id, priority, seq)
    return queue


def drain(queue: Any) -> list[Entry]:
    """Every entry left in the queue, in pop order, as plain ints."""
    out = []
    while len(queue):
        task_id, priority, seq = queue.pop_entry()
        out.append((task_id, int(priority), int(seq)))
    return out


def in_pop_order(entries: Sequence[Entry]) -> list[Entry]:
    """Pop order: priority, then seq, then (only between equal seqs) task id."""
    return sorted(((t, int(p), s) for t, p, s in entries), key=lambda e: (e[1], e[2], e[0]))


def reference_dispatch(
    entries: Sequence[Entry],
    nodes: Sequence[NodeSlots],
    type_of: Mapping[str, str],
    batch_max: int,
    scan_max: int,
) -> tuple[list[tuple[str, str]], list[Entry]]:
    """The rules read literally: slow, and right by inspection. Returns (assignments, left)."""
    free = {n.node_id: n.free for n in nodes}
    busy = {n.node_id: n.busy for n in nodes}
    assigned: list[tuple[str, str]] = []
    skipped = 0
    for task_id, _, _ in in_pop_order(entries):
        if len(assigned) == batch_max:
            break
        runners = [
            n
            for n in nodes
            if free[n.node_id] > 0 and (n.types is None or type_of[task_id] in n.types)
        ]
        if not runners:
            skipped += 1
            if skipped > scan_max:
                break
            continue
        best = min(
            runners,
            key=lambda n: (
                Fraction(busy[n.node_id], busy[n.node_id] + free[n.node_id]),
                busy[n.node_id],
                n.node_id,
            ),
        )
        free[best.node_id] -= 1
        busy[best.node_id] += 1
        assigned.append((task_id, best.node_id))
    taken = {task_id for task_id, _ in assigned}
    return assigned, [e for e in in_pop_order(entries) if e[0] not in taken]


# ----------------------------------------------------------------------------- implementations
IMPLEMENTATIONS = [
    pytest.param("python", id="python"),
    pytest.param(
        "cython",
        id="cython",
        marks=pytest.mark.skipif(NO_EXTENSIONS, reason="DSCHED_NO_EXTENSIONS is set"),
    ),
]


def load(name: str) -> Dispatch:
    if name == "python":
        return py_dispatch
    # No fallback here: with extensions expected, a missing build must fail, not skip.
    module = importlib.import_module("core._dispatch_c")
    fn: Dispatch = module.dispatch
    return fn


@pytest.fixture(params=IMPLEMENTATIONS)
def dispatch(request: pytest.FixtureRequest) -> Dispatch:
    return load(request.param)


def test_the_compiled_loop_is_the_one_loaded_unless_switched_off() -> None:
    if NO_EXTENSIONS:
        assert core.dispatch.IMPLEMENTATION == "python"
        assert core.dispatch.dispatch is py_dispatch
    else:
        compiled = importlib.import_module("core._dispatch_c")
        assert core.dispatch.IMPLEMENTATION == "cython"
        assert core.dispatch.dispatch is compiled.dispatch
        assert compiled.__file__ is not None
        assert compiled.__file__.endswith((".so", ".pyd"))
        assert type(compiled.dispatch).__name__ == "cython_function_or_method"
    assert core.dispatch.py_dispatch is py_dispatch


def _import_in_subprocess(code: str, env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DSCHED_NO_EXTENSIONS"}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    return out.stdout + out.stderr


def test_a_missing_extension_falls_back_to_the_twin_with_one_warning() -> None:
    code = (
        "import sys; sys.modules['core._dispatch_c'] = None\n"
        "import core.dispatch as d\n"
        "print('IMPL', d.IMPLEMENTATION, d.dispatch is d.py_dispatch)\n"
    )
    out = _import_in_subprocess(code, {})
    assert "IMPL python True" in out
    assert out.count("RuntimeWarning") == 1


def test_the_switch_selects_the_twin_without_a_warning() -> None:
    code = "import core.dispatch as d\nprint('IMPL', d.IMPLEMENTATION, d.dispatch is d.py_dispatch)"
    out = _import_in_subprocess(code, {"DSCHED_NO_EXTENSIONS": "1"})
    assert "IMPL python True" in out
    assert "Warning" not in out


# ----------------------------------------------------------------------------- rules, by example
def run(
    dispatch: Dispatch,
    entries: Sequence[Entry],
    nodes: Sequence[NodeSlots],
    type_of: Mapping[str, str] | None = None,
    batch_max: int = 100,
    scan_max: int = 100,
) -> tuple[list[tuple[str, str]], list[Entry]]:
    queue = make_queue(entries)
    result = dispatch(queue, nodes, type_of or {}, batch_max=batch_max, scan_max=scan_max)
    return result, drain(queue)


class NoLookups(Mapping[str, str]):
    """A type_of that fails the test if dispatch reads it."""

    def __getitem__(self, key: str) -> str:
        raise AssertionError(f"type_of[{key!r}] read on the all-types path")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_a_high_task_nobody_free_can_run_does_not_block_medium_ones(dispatch: Dispatch) -> None:
    entries = [("g1", H, 1), ("c1", M, 2), ("c2", M, 3), ("c3", L, 4)]
    nodes = [NodeSlots("cpu", 2, 0, frozenset({"cpu"})), NodeSlots("gpu", 0, 4, frozenset({"gpu"}))]
    types = {"g1": "gpu", "c1": "cpu", "c2": "cpu", "c3": "cpu"}
    result, left = run(dispatch, entries, nodes, types)
    assert result == [("c1", "cpu"), ("c2", "cpu")]
    # The skipped HIGH task is back with its own priority and sequence, still first in line.
    assert left == [("g1", H, 1), ("c3", L, 4)]


def test_a_free_slot_that_can_run_the_high_task_takes_it_first(dispatch: Dispatch) -> None:
    entries = [("c1", M, 1), ("g1", H, 2)]
    nodes = [
        NodeSlots("big", 1, 0, frozenset({"gpu", "cpu"})),
        NodeSlots("small", 1, 0, frozenset({"cpu"})),
    ]
    result, left = run(dispatch, entries, nodes, {"g1": "gpu", "c1": "cpu"})
    assert result == [("g1", "big"), ("c1", "small")]
    assert left == []
    # One slot that runs both: the HIGH task wins it and the MEDIUM one waits.
    result, left = run(dispatch, entries, [NodeSlots("any", 1, 0)], {"g1": "gpu", "c1": "cpu"})
    assert result == [("g1", "any")]
    assert left == [("c1", M, 1)]


def test_pop_order_is_priority_then_sequence(dispatch: Dispatch) -> None:
    entries = [("l1", L, 1), ("m2", M, 2), ("h3", H, 3), ("m0", M, 0), ("h9", H, 9)]
    result, left = run(dispatch, entries, [NodeSlots("n", 4, 0)])
    assert [t for t, _ in result] == ["h3", "h9", "m0", "m2"]
    assert left == [("l1", L, 1)]


def test_load_spreads_round_robin_over_three_equal_nodes(dispatch: Dispatch) -> None:
    entries = [(f"t{i:02}", M, i) for i in range(20)]
    nodes = [NodeSlots(n, 5, 0) for n in ("c", "a", "b")]  # given out of order on purpose
    result, left = run(dispatch, entries, nodes)
    assert [n for _, n in result] == ["a", "b", "c"] * 5
    assert [t for t, _ in result] == [f"t{i:02}" for i in range(15)]
    assert [t for t, _, _ in left] == [f"t{i:02}" for i in range(15, 20)]


def test_load_counts_slots_already_busy(dispatch: Dispatch) -> None:
    nodes = [NodeSlots("a", 3, 1), NodeSlots("b", 1, 0), NodeSlots("c", 2, 2)]
    result, _ = run(dispatch, [(f"t{i}", M, i) for i in range(6)], nodes)
    # b 0/1 first (then full); a 1/4 < c 2/4: a; a 2/4 ties c 2/4 with equal busy, so by id: a;
    # c 2/4 < a 3/4: c; a 3/4 ties c 3/4 with equal busy: a (now full); then c.
    assert result == [("t0", "b"), ("t1", "a"), ("t2", "a"), ("t3", "c"), ("t4", "a"), ("t5", "c")]


def test_heterogeneous_capacity_fills_in_proportion(dispatch: Dispatch) -> None:
    nodes = [NodeSlots("a", 10, 0), NodeSlots("b", 2, 0)]
    result, _ = run(dispatch, [(f"t{i:02}", M, i) for i in range(12)], nodes)
    # a 0/10 ties b 0/2 (busy 0 both): a. Then b; then a until 5/10 ties b 1/2, where b has
    # fewer busy slots and wins its last one.
    assert "".join(n for _, n in result) == "abaaaab" + "a" * 5


def test_equal_loads_go_to_fewer_busy_then_smaller_node_id(dispatch: Dispatch) -> None:
    # 1/2 == 2/4: fewer busy wins.
    result, _ = run(dispatch, [("t", M, 1)], [NodeSlots("z", 2, 2), NodeSlots("y", 1, 1)])
    assert result == [("t", "y")]
    # Equal load and busy: string order, so "n10" < "n9".
    result, _ = run(dispatch, [("t", M, 1)], [NodeSlots("n9", 3, 1), NodeSlots("n10", 3, 1)])
    assert result == [("t", "n10")]


def test_loads_compare_exactly_where_floats_would_tie(dispatch: Dispatch) -> None:
    a = NodeSlots("a", free=1_073_741_824, busy=1_073_741_823)
    b = NodeSlots("b", free=2_147_483_647, busy=2_147_483_645)
    assert a.busy / (a.busy + a.free) == b.busy / (b.busy + b.free)  # floats cannot tell
    assert Fraction(b.busy, b.busy + b.free) < Fraction(a.busy, a.busy + a.free)
    result, _ = run(dispatch, [("t", M, 1)], [a, b])
    assert result == [("t", "b")]  # a float compare would fall to "fewer busy" and pick a


def test_no_node_gets_more_than_its_free_slots(dispatch: Dispatch) -> None:
    nodes = [NodeSlots("a", 2, 0), NodeSlots("b", 0, 5), NodeSlots("c", 1, 9)]
    result, left = run(dispatch, [(f"t{i}", M, i) for i in range(10)], nodes)
    assert sorted(n for _, n in result) == ["a", "a", "c"]
    assert len(left) == 7


def test_batch_max_bounds_a_call(dispatch: Dispatch) -> None:
    entries = [(f"t{i}", M, i) for i in range(10)]
    result, left = run(dispatch, entries, [NodeSlots("a", 15, 0)], batch_max=4)
    assert [t for t, _ in result] == ["t0", "t1", "t2", "t3"]
    assert len(left) == 6
    typed = [NodeSlots("a", 15, 0, frozenset({"x"}))]
    result, left = run(dispatch, entries, typed, dict.fromkeys([e[0] for e in entries], "x"), 4)
    assert [t for t, _ in result] == ["t0", "t1", "t2", "t3"]
    assert len(left) == 6


def test_scan_max_bounds_the_tasks_skipped(dispatch: Dispatch) -> None:
    entries = [(f"g{i}", H, i) for i in range(5)] + [("c", M, 9)]
    types = {**{f"g{i}": "gpu" for i in range(5)}, "c": "cpu"}
    nodes = [NodeSlots("cpu", 1, 0, frozenset({"cpu"}))]
    result, left = run(dispatch, entries, nodes, types, scan_max=5)
    assert result == [("c", "cpu")]
    assert left == in_pop_order(entries[:5])
    # Meeting a sixth unrunnable task after skipping scan_max ends the call; all go back.
    for scan_max in (0, 1, 4):
        result, left = run(dispatch, entries, nodes, types, scan_max=scan_max)
        assert result == []
        assert left == in_pop_order(entries)


def test_the_all_types_path_never_reads_type_of(dispatch: Dispatch) -> None:
    entries = [(f"t{i}", M, i) for i in range(5)]
    # A node that restricts types but has no free slot does not force lookups, nor does a node
    # with an empty type set (it runs nothing).
    nodes = [
        NodeSlots("a", 3, 0),
        NodeSlots("busy", 0, 4, frozenset({"x"})),
        NodeSlots("none", 2, 0, frozenset()),
    ]
    result, left = run(dispatch, entries, nodes, NoLookups())
    assert result == [("t0", "a"), ("t1", "a"), ("t2", "a")]
    assert [t for t, _, _ in left] == ["t3", "t4"]


def test_a_node_with_an_empty_type_set_runs_nothing(dispatch: Dispatch) -> None:
    nodes = [NodeSlots("none", 5, 0, frozenset()), NodeSlots("x", 1, 0, frozenset({"x"}))]
    result, left = run(dispatch, [("a", M, 1), ("b", M, 2)], nodes, {"a": "x", "b": "x"})
    assert result == [("a", "x")]
    assert left == [("b", M, 2)]


def test_a_task_missing_from_type_of_is_a_key_error_and_the_queue_is_kept(
    dispatch: Dispatch,
) -> None:
    entries = [("g", H, 1), ("a", M, 2), ("missing", M, 3), ("b", M, 4)]
    queue = make_queue(entries)
    nodes = [NodeSlots("n", 5, 0, frozenset({"x"}))]
    with pytest.raises(KeyError, match="missing"):
        dispatch(queue, nodes, {"g": "gpu", "a": "x", "b": "x"}, batch_max=10, scan_max=10)
    assert drain(queue) == in_pop_order(entries)


@pytest.mark.parametrize(
    ("nodes", "batch_max", "scan_max", "match"),
    [
        ([NodeSlots("a", -1, 0)], 1, 0, "free and busy"),
        ([NodeSlots("a", 1, -1)], 1, 0, "free and busy"),
        ([NodeSlots("a", NODE_SLOTS_MAX + 1, 0)], 1, 0, "free and busy"),
        ([NodeSlots("a", 1, 2**70)], 1, 0, "free and busy"),
        ([NodeSlots("a", 1, 0), NodeSlots("b", 1, 0), NodeSlots("a", 2, 0)], 1, 0, "duplicate"),
        ([NodeSlots("a", 1, 0)], 0, 0, "batch_max"),
        ([NodeSlots("a", 1, 0)], 1, -1, "scan_max"),
    ],
)
def test_invalid_input_is_a_value_error_before_the_queue_is_touched(
    dispatch: Dispatch, nodes: list[NodeSlots], batch_max: int, scan_max: int, match: str
) -> None:
    entries = [("t", M, 1)]
    queue = make_queue(entries)
    with pytest.raises(ValueError, match=match) as caught:
        dispatch(queue, nodes, {"t": "x"}, batch_max=batch_max, scan_max=scan_max)
    assert drain(queue) == entries
    with pytest.raises(ValueError) as twin:
        py_dispatch(make_queue(entries), nodes, {}, batch_max=batch_max, scan_max=scan_max)
    assert str(caught.value) == str(twin.value)


def test_counts_must_be_integers(dispatch: Dispatch) -> None:
    with pytest.raises(TypeError):
        dispatch(make_queue([]), [NodeSlots("a", 1.5, 0)], {}, batch_max=1, scan_max=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        dispatch(make_queue([]), [NodeSlots("a", 1, 0)], {}, batch_max=1.0, scan_max=0)


def test_nothing_to_do_returns_nothing(dispatch: Dispatch) -> None:
    assert run(dispatch, [], [NodeSlots("a", 3, 0, frozenset({"x"}))], NoLookups()) == ([], [])
    entries = [("t", M, 1)]
    assert run(dispatch, entries, [], NoLookups()) == ([], entries)
    full = [NodeSlots("a", 0, 3, frozenset({"x"})), NodeSlots("b", 0, 1)]
    assert run(dispatch, entries, full, NoLookups()) == ([], entries)


class OverfullQueue:
    """A broken queue whose pop_many hands back more than asked for."""

    def __len__(self) -> int:
        return 1

    def pop_many(self, k: int) -> list[str]:
        return [f"extra{i}" for i in range(k + 1)]


def test_a_result_beyond_the_free_slots_raises_the_invariant_error(dispatch: Dispatch) -> None:
    with pytest.raises(DispatchInvariantError):
        dispatch(OverfullQueue(), [NodeSlots("a", 1, 0)], {}, batch_max=5, scan_max=0)


# ----------------------------------------------------------------------------- hypothesis
NODE_IDS = ["a", "b", "c", "n1", "n10", "n2"]
TYPES = ["x", "y", "z"]

node_sets = st.lists(
    st.builds(
        NodeSlots,
        node_id=st.sampled_from(NODE_IDS),
        free=st.integers(0, 4),
        busy=st.integers(0, 6),
        types=st.none() | st.frozensets(st.sampled_from(TYPES), max_size=3),
    ),
    max_size=5,
    unique_by=lambda n: n.node_id,
)
task_lists = st.lists(
    # Small seqs so that equal ones occur: the queue then orders by task id, and so must the rest.
    st.tuples(st.sampled_from([H, M, L]), st.sampled_from([*TYPES, "w"]), st.integers(0, 60)),
    max_size=40,
)
CASE_SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def typed_entries(tasks: list[tuple[Priority, str, int]]) -> tuple[list[Entry], dict[str, str]]:
    entries = [(f"t{i}", int(p), seq) for i, (p, _, seq) in enumerate(tasks)]
    return entries, {f"t{i}": t for i, (_, t, _) in enumerate(tasks)}


@CASE_SETTINGS
@given(
    nodes=node_sets,
    tasks=task_lists,
    batch_max=st.integers(1, 25),
    scan_max=st.integers(0, 12),
    queue_class=st.sampled_from(QUEUE_CLASSES),
)
def test_both_implementations_agree_with_the_reference(
    nodes: list[NodeSlots],
    tasks: list[tuple[Priority, str, int]],
    batch_max: int,
    scan_max: int,
    queue_class: Any,
) -> None:
    entries, type_of = typed_entries(tasks)
    expected = reference_dispatch(entries, nodes, type_of, batch_max, scan_max)
    for param in IMPLEMENTATIONS:
        if param.marks and NO_EXTENSIONS:
            continue
        impl = load(str(param.values[0]))
        queue = make_queue(entries, queue_class)
        result = impl(queue, nodes, type_of, batch_max=batch_max, scan_max=scan_max)
        assert (result, drain(queue)) == expected, param.values[0]


@CASE_SETTINGS
@given(nodes=node_sets, tasks=task_lists, batch_max=st.integers(1, 25), scan_max=st.integers(0, 12))
def test_the_invariants_hold(
    dispatch: Dispatch,
    nodes: list[NodeSlots],
    tasks: list[tuple[Priority, str, int]],
    batch_max: int,
    scan_max: int,
) -> None:
    entries, type_of = typed_entries(tasks)
    queue = make_queue(entries)
    result = dispatch(queue, nodes, type_of, batch_max=batch_max, scan_max=scan_max)
    left = drain(queue)
    by_id = {n.node_id: n for n in nodes}

    # Nothing lost, nothing doubled; skipped tasks keep their priority and sequence.
    assigned_ids = [t for t, _ in result]
    assert len(set(assigned_ids)) == len(assigned_ids) <= batch_max
    assert sorted(assigned_ids + [t for t, _, _ in left]) == sorted(e[0] for e in entries)
    assert set(left) <= set(in_pop_order(entries))

    # Rule 1: no node over its free count, and only nodes that run the task's type.
    for node in nodes:
        assert sum(1 for _, n in result if n == node.node_id) <= node.free
    for task_id, node_id in result:
        types = by_id[node_id].types
        assert types is None or type_of[task_id] in types

    # Rule 2: decisions follow pop order, and a task still queued ahead of an assigned one had
    # no free slot that could run it when its turn came.
    order = [e[0] for e in in_pop_order(entries)]
    position = {task_id: i for i, task_id in enumerate(order)}
    assert [position[t] for t in assigned_ids] == sorted(position[t] for t in assigned_ids)
    last = max((position[t] for t in assigned_ids), default=-1)
    free = {n.node_id: n.free for n in nodes}
    decided = dict(result)
    for task_id in order[: last + 1]:
        if task_id in decided:
            free[decided[task_id]] -= 1
            continue
        for node in nodes:
            runs = node.types is None or type_of[task_id] in node.types
            assert not (free[node.node_id] > 0 and runs), (task_id, node.node_id)


@pytest.mark.skipif(NO_EXTENSIONS, reason="DSCHED_NO_EXTENSIONS is set")
@settings(max_examples=200, deadline=None)
@given(
    nodes=st.lists(
        st.builds(
            NodeSlots,
            node_id=st.sampled_from(NODE_IDS),
            free=st.integers(-2, 3) | st.sampled_from([NODE_SLOTS_MAX, NODE_SLOTS_MAX + 1]),
            busy=st.integers(-2, 3) | st.sampled_from([NODE_SLOTS_MAX, 2**64]),
            types=st.none() | st.frozensets(st.sampled_from(TYPES), max_size=2),
        ),
        max_size=4,
    ),
    batch_max=st.integers(-1, 3),
    scan_max=st.integers(-2, 3),
)
def test_both_implementations_refuse_the_same_input_the_same_way(
    nodes: list[NodeSlots], batch_max: int, scan_max: int
) -> None:
    outcomes = []
    for impl in (py_dispatch, load("cython")):
        queue = make_queue([("t", M, 1)])
        try:
            outcome: object = impl(queue, nodes, {"t": "x"}, batch_max=batch_max, scan_max=scan_max)
        except (ValueError, TypeError) as exc:
            outcome = (type(exc), str(exc))
        outcomes.append((outcome, drain(queue)))
    assert outcomes[0] == outcomes[1]
