"""The ready queue: both implementations, against each other and against a reference model."""

from __future__ import annotations

import contextlib
import functools
import gc
import operator
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import core.heap
from core import _heap_py
from core.heap import (
    QUEUED_TASKS_MAX,
    SEQ_MAX,
    DuplicateTaskError,
    Priority,
    PyReadyQueue,
    ReadyQueue,
)

NO_EXTENSIONS = bool(os.environ.get("DSCHED_NO_EXTENSIONS"))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _compiled_class() -> type[Any]:
    # Imported directly (not through core.heap) so that an unbuilt extension fails loudly here.
    from core import _heap_c

    return _heap_c.ReadyQueue


def _implementations() -> list[Any]:
    skip = pytest.mark.skipif(NO_EXTENSIONS, reason="DSCHED_NO_EXTENSIONS is set")
    return [
        pytest.param("cython", id="cython", marks=skip),
        pytest.param("python", id="python"),
    ]


def _class_of(name: str) -> type[Any]:
    return _compiled_class() if name == "cython" else PyReadyQueue


@pytest.fixture(params=_implementations())
def queue_class(request: pytest.FixtureRequest) -> type[Any]:
    return _class_of(request.param)


@pytest.fixture
def q(queue_class: type[Any]) -> Any:
    return queue_class()


def all_implementations() -> list[type[Any]]:
    return [PyReadyQueue] if NO_EXTENSIONS else [_compiled_class(), PyReadyQueue]


# ====================================================================== selection
def test_the_compiled_module_is_selected_unless_switched_off() -> None:
    if NO_EXTENSIONS:
        assert core.heap.IMPLEMENTATION == "python"
        assert ReadyQueue is PyReadyQueue
        assert core.heap.CyReadyQueue is None
    else:
        assert core.heap.IMPLEMENTATION == "cython"
        assert ReadyQueue is _compiled_class()
        assert core.heap.CyReadyQueue is _compiled_class()
        assert ReadyQueue.__module__ == "core._heap_c"
    assert PyReadyQueue is _heap_py.ReadyQueue
    assert Priority is core.heap.Priority


def _run_selection(code: str, env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DSCHED_NO_EXTENSIONS"}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    return out.stdout.strip()


def test_switch_selects_the_twin_without_a_warning() -> None:
    code = (
        "import warnings\n"
        "warnings.simplefilter('error')\n"
        "import core.heap as h\n"
        "print(h.IMPLEMENTATION, h.ReadyQueue is h.PyReadyQueue, h.CyReadyQueue)\n"
    )
    assert _run_selection(code, {"DSCHED_NO_EXTENSIONS": "1"}) == "python True None"


def test_a_missing_extension_falls_back_with_one_runtime_warning() -> None:
    code = (
        "import sys, warnings\n"
        "sys.modules['core._heap_c'] = None  # makes `import core._heap_c` raise ImportError\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import core.heap as h\n"
        "kinds = [w.category.__name__ for w in caught]\n"
        "print(h.IMPLEMENTATION, h.ReadyQueue is h.PyReadyQueue, h.CyReadyQueue, kinds)\n"
    )
    assert _run_selection(code, {}) == "python True None ['RuntimeWarning']"


@pytest.mark.skipif(NO_EXTENSIONS, reason="DSCHED_NO_EXTENSIONS is set")
def test_limits_agree_between_the_implementations() -> None:
    from core import _heap_c

    assert _heap_c.SEQ_MAX == _heap_py.SEQ_MAX == SEQ_MAX == 2**63 - 1
    assert _heap_c.QUEUED_TASKS_MAX == _heap_py.QUEUED_TASKS_MAX == QUEUED_TASKS_MAX


# ====================================================================== order
def test_pops_by_priority_then_seq(q: Any) -> None:
    q.push("low-1", Priority.LOW, 1)
    q.push("high-9", Priority.HIGH, 9)
    q.push("medium-2", Priority.MEDIUM, 2)
    q.push("high-3", Priority.HIGH, 3)
    q.push("low-0", Priority.LOW, 0)
    assert [q.pop() for _ in range(5)] == ["high-3", "high-9", "medium-2", "low-0", "low-1"]


def test_equal_seqs_are_ordered_by_id(q: Any) -> None:
    for task_id in ["b", "é", "a", "Z", "aa"]:
        q.push(task_id, 1, 7)
    assert q.pop_many(10) == sorted(["b", "é", "a", "Z", "aa"])


def test_out_of_order_seqs_still_pop_in_order(q: Any) -> None:
    seqs = list(range(200))
    random.Random(3).shuffle(seqs)
    for s in seqs:
        q.push(f"t{s}", 2, s)
    assert q.pop_many(500) == [f"t{s}" for s in range(200)]


def test_a_put_back_entry_comes_first_again(q: Any) -> None:
    for s in range(10):
        q.push(f"t{s}", 0, s)
    entry = q.pop_entry()
    assert entry == ("t0", 0, 0)
    q.push(*entry)
    assert q.peek_entry() == ("t0", 0, 0)
    assert q.pop_many(3) == ["t0", "t1", "t2"]


# ====================================================================== push
def test_push_accepts_priority_members_and_int_like(q: Any) -> None:
    q.push("a", Priority.MEDIUM, 5)
    q.push("b", True, 6)  # bool is an int: priority 1
    entry = q.pop_entry()
    assert entry == ("a", 1, 5)
    assert type(entry[1]) is int and type(entry[2]) is int


@pytest.mark.parametrize("task_id", [1, None, b"bytes", type("Sub", (str,), {})("sub")])
def test_push_refuses_ids_that_are_not_exact_str(q: Any, task_id: object) -> None:
    with pytest.raises(TypeError):
        q.push(task_id, 0, 0)
    assert len(q) == 0


@pytest.mark.parametrize(
    ("priority", "seq", "error"),
    [
        (-1, 0, ValueError),
        (3, 0, ValueError),
        (10**30, 0, ValueError),
        (-(10**30), 0, ValueError),
        (1.0, 0, TypeError),
        ("1", 0, TypeError),
        (None, 0, TypeError),
        (0, -1, ValueError),
        (0, SEQ_MAX + 1, ValueError),
        (0, -(10**30), ValueError),
        (0, 1.5, TypeError),
        (0, "1", TypeError),
    ],
)
def test_push_refuses_bad_priorities_and_seqs(
    q: Any, priority: object, seq: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        q.push("t", priority, seq)
    assert len(q) == 0 and "t" not in q


def test_push_takes_the_extreme_seqs(q: Any) -> None:
    q.push("last", 0, SEQ_MAX)
    q.push("first", 0, 0)
    assert q.entries() == [("first", 0, 0), ("last", 0, SEQ_MAX)]


def test_a_duplicate_id_is_refused_and_changes_nothing(q: Any) -> None:
    q.push("t", 2, 5)
    with pytest.raises(DuplicateTaskError):
        q.push("t", 0, 1)
    with pytest.raises(ValueError, match="already queued"):
        q.push("".join(["t"]), 2, 5)  # an equal but distinct str object
    assert q.entries() == [("t", 2, 5)]
    assert q.pop() == "t"
    q.push("t", 0, 1)  # once popped, the id may be queued again
    assert q.entries() == [("t", 0, 1)]


# ====================================================================== capacity
def test_capacity_max_refuses_one_more(queue_class: type[Any]) -> None:
    q = queue_class(capacity_max=3)
    assert q.capacity_max == 3
    for s in range(3):
        q.push(f"t{s}", 1, s)
    with pytest.raises(OverflowError, match="capacity_max=3"):
        q.push("t3", 0, 0)
    assert len(q) == 3 and "t3" not in q
    with pytest.raises(DuplicateTaskError):  # a duplicate is reported as such, even when full
        q.push("t0", 1, 0)
    q.pop()
    q.push("t3", 0, 0)
    assert q.peek() == "t3"


def test_capacity_max_defaults_to_the_hard_limit(queue_class: type[Any]) -> None:
    assert queue_class().capacity_max == QUEUED_TASKS_MAX
    assert queue_class(capacity_max=None).capacity_max == QUEUED_TASKS_MAX
    assert queue_class(capacity_max=QUEUED_TASKS_MAX).capacity_max == QUEUED_TASKS_MAX


@pytest.mark.parametrize(
    ("capacity_max", "error"),
    [(0, ValueError), (-5, ValueError), (QUEUED_TASKS_MAX + 1, ValueError), ("9", TypeError)],
)
def test_capacity_max_must_be_a_sane_int(
    queue_class: type[Any], capacity_max: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        queue_class(capacity_max=capacity_max)


def test_capacity_max_is_keyword_only(queue_class: type[Any]) -> None:
    with pytest.raises(TypeError):
        queue_class(10)


# ====================================================================== pop, peek
@pytest.mark.parametrize("method", ["pop", "pop_entry", "peek", "peek_entry"])
def test_an_empty_queue_raises_index_error(q: Any, method: str) -> None:
    with pytest.raises(IndexError):
        getattr(q, method)()
    q.push("t", 0, 0)
    q.pop()
    with pytest.raises(IndexError):
        getattr(q, method)()


def test_peek_leaves_the_task_queued(q: Any) -> None:
    q.push("b", 1, 2)
    q.push("a", 0, 9)
    assert q.peek() == "a"
    assert q.peek_entry() == ("a", 0, 9)
    assert len(q) == 2
    assert q.pop_entry() == ("a", 0, 9)
    assert q.peek_entry() == ("b", 1, 2)


def test_pop_many(q: Any) -> None:
    for s in range(10):
        q.push(f"t{s}", s % 3, s)
    expected = [e[0] for e in q.entries()]
    assert q.pop_many(0) == []
    assert q.pop_many(4) == expected[:4]
    assert q.pop_many(10**30) == expected[4:]  # more than queued: all that is left
    assert q.pop_many(3) == []
    assert len(q) == 0


@pytest.mark.parametrize(
    ("k", "error"), [(-1, ValueError), (-(10**30), ValueError), (2.0, TypeError)]
)
def test_pop_many_refuses_bad_counts(q: Any, k: object, error: type[Exception]) -> None:
    q.push("t", 0, 0)
    with pytest.raises(error):
        q.pop_many(k)
    assert len(q) == 1


# ====================================================================== remove, contains
def test_remove_cancels_exactly_one_task(q: Any) -> None:
    for s in range(6):
        q.push(f"t{s}", 1, s)
    assert q.remove("t3") is True
    assert q.remove("t3") is False
    assert q.remove("never") is False
    assert "t3" not in q and "t2" in q
    assert q.pop_many(10) == ["t0", "t1", "t2", "t4", "t5"]


def test_remove_from_every_position(q: Any) -> None:
    # A run's head, tail and middle, and heap entries (seqs that fit at neither end).
    for s in [10, 20, 30, 40, 50]:
        q.push(f"r{s}", 0, s)
    for s in [15, 25, 35]:
        q.push(f"h{s}", 0, s)
    for task_id in ["r10", "r50", "r30", "h25", "h15"]:
        assert q.remove(task_id)
    assert q.pop_many(10) == ["r20", "h35", "r40"]


@pytest.mark.parametrize("task_id", [3, None, type("Sub", (str,), {})("t")])
def test_remove_and_contains_refuse_ids_that_are_not_exact_str(q: Any, task_id: object) -> None:
    q.push("t", 0, 0)
    with pytest.raises(TypeError):
        q.remove(task_id)
    with pytest.raises(TypeError):
        assert task_id in q
    assert len(q) == 1


# ====================================================================== len, counts, clear, entries
def test_len_and_counts(q: Any) -> None:
    assert len(q) == 0
    assert q.counts() == {Priority.HIGH: 0, Priority.MEDIUM: 0, Priority.LOW: 0}
    q.push("a", 0, 1)
    q.push("b", 2, 2)
    q.push("c", 2, 3)
    counts = q.counts()
    assert counts == {Priority.HIGH: 1, Priority.MEDIUM: 0, Priority.LOW: 2}
    assert all(type(key) is Priority for key in counts)
    assert len(q) == 3


def test_clear_empties_and_the_queue_stays_usable(q: Any) -> None:
    for s in range(100):
        q.push(f"t{s}", s % 3, s)
    q.clear()
    assert len(q) == 0 and "t1" not in q and q.entries() == []
    with pytest.raises(IndexError):
        q.pop()
    q.push("t1", 2, 1)
    assert q.pop_entry() == ("t1", 2, 1)


def test_entries_is_a_snapshot_in_pop_order(q: Any) -> None:
    rng = random.Random(11)
    for i in range(300):
        q.push(f"t{i}", rng.randrange(3), rng.randrange(50))
    q.remove("t7")
    snapshot = q.entries()
    assert len(snapshot) == len(q) == 299
    assert snapshot == sorted(snapshot, key=lambda e: (e[1], e[2], e[0]))
    assert [q.pop_entry() for _ in range(299)] == snapshot


# ====================================================================== at scale
class Model:
    """The reference: a dict of entries, sorted on demand. Obviously right, O(n log n) per pop."""

    def __init__(self, capacity_max: int | None = None) -> None:
        self.capacity_max = QUEUED_TASKS_MAX if capacity_max is None else capacity_max
        self.live: dict[str, tuple[int, int]] = {}

    def _order(self) -> list[tuple[str, int, int]]:
        return sorted(((t, p, s) for t, (p, s) in self.live.items()), key=lambda e: (e[1:], e[0]))

    def push(self, task_id: str, priority: int, seq: int) -> None:
        if type(task_id) is not str:
            raise TypeError(task_id)
        if not 0 <= priority <= 2:
            raise ValueError(priority)
        if not 0 <= seq <= SEQ_MAX:
            raise ValueError(seq)
        if task_id in self.live:
            raise DuplicateTaskError(task_id)
        if len(self.live) >= self.capacity_max:
            raise OverflowError("full")
        self.live[task_id] = (priority, seq)

    def pop_entry(self) -> tuple[str, int, int]:
        if not self.live:
            raise IndexError("empty")
        first = self._order()[0]
        del self.live[first[0]]
        return first

    def pop(self) -> str:
        return self.pop_entry()[0]

    def pop_many(self, k: int) -> list[str]:
        if k < 0:
            raise ValueError(k)
        return [self.pop() for _ in range(min(k, len(self.live)))]

    def peek_entry(self) -> tuple[str, int, int]:
        if not self.live:
            raise IndexError("empty")
        return self._order()[0]

    def peek(self) -> str:
        return self.peek_entry()[0]

    def remove(self, task_id: str) -> bool:
        return self.live.pop(task_id, None) is not None

    def __contains__(self, task_id: str) -> bool:
        return task_id in self.live

    def __len__(self) -> int:
        return len(self.live)

    def counts(self) -> dict[Priority, int]:
        counts = dict.fromkeys(Priority, 0)
        for p, _ in self.live.values():
            counts[Priority(p)] += 1
        return counts

    def clear(self) -> None:
        self.live.clear()

    def entries(self) -> list[tuple[str, int, int]]:
        return self._order()

    def fingerprint(self) -> int:
        return fingerprint_of(self.live)


def fingerprint_of(task_ids: Iterable[str]) -> int:
    """What ReadyQueue.fingerprint() must answer for these ids, computed from scratch."""
    return functools.reduce(operator.xor, (hash(t) & 0xFFFF_FFFF for t in task_ids), 0)


def _outcome(call: Callable[[], object]) -> tuple[str, object]:
    try:
        return "ok", call()
    except Exception as exc:
        return "raised", type(exc)


def test_large_random_workload_agrees_with_a_sorted_model() -> None:
    """Thousands of tasks: grows and shrinks every structure, compacts runs, renumbers slots."""
    rng = random.Random(20260101)
    queues = [cls() for cls in all_implementations()]
    live: dict[str, tuple[int, int]] = {}
    next_seq = 0
    next_id = 0
    for phase in range(6):
        for _ in range(6000 if phase % 2 == 0 else 1500):
            roll = rng.random()
            if roll < 0.6 or not live:
                if rng.random() < 0.8:
                    seq = next_seq
                    next_seq += 1
                else:
                    seq = rng.randrange(next_seq + 1)
                task_id = f"task-{next_id}"
                next_id += 1
                priority = rng.randrange(3)
                for queue in queues:
                    queue.push(task_id, priority, seq)
                live[task_id] = (priority, seq)
            elif roll < 0.85:
                victim = rng.choice(list(live))
                for queue in queues:
                    assert queue.remove(victim) is True
                del live[victim]
            else:
                first = min(live.items(), key=lambda kv: (kv[1], kv[0]))
                for queue in queues:
                    assert queue.pop_entry() == (first[0], *first[1])
                del live[first[0]]
        expected = sorted(((t, p, s) for t, (p, s) in live.items()), key=lambda e: (e[1:], e[0]))
        for queue in queues:
            assert queue.entries() == expected
            assert len(queue) == len(live)
            assert queue.fingerprint() == fingerprint_of(live)
        if phase % 2 == 1:  # drain most of it: the structures shrink
            keep = len(live) // 10
            drained = [e[0] for e in expected[: len(expected) - keep]]
            for queue in queues:
                assert queue.pop_many(len(drained)) == drained
            for task_id in drained:
                del live[task_id]


# ====================================================================== differential (hypothesis)
IDS = st.sampled_from([f"t{i}" for i in range(12)] + ["", "é", "t1 "])


class Differential(RuleBasedStateMachine):
    """Random operation sequences on every implementation and the model: identical outcomes."""

    def __init__(self) -> None:
        super().__init__()
        self.queues: list[Any] = []
        self.next_seq = 0

    @initialize(capacity_max=st.one_of(st.none(), st.integers(1, 10)))
    def start(self, capacity_max: int | None) -> None:
        self.queues = [Model(capacity_max)] + [
            cls(capacity_max=capacity_max) for cls in all_implementations()
        ]

    def same(self, call: Callable[[Any], object]) -> object:
        outcomes = [_outcome(functools.partial(call, queue)) for queue in self.queues]
        for outcome in outcomes[1:]:
            assert outcome == outcomes[0], outcomes
        return outcomes[0][1]

    @rule(task_id=IDS, priority=st.integers(0, 2))
    def push_next(self, task_id: str, priority: int) -> None:
        # Submissions: increasing seqs, the common case.
        self.next_seq += 1
        self.same(lambda queue: queue.push(task_id, priority, self.next_seq))

    @rule(task_id=IDS, priority=st.integers(0, 2), seq=st.integers(0, 8))
    def push_any(self, task_id: str, priority: int, seq: int) -> None:
        # Rebuilds and retries: any seq, often equal ones (then the id decides).
        self.same(lambda queue: queue.push(task_id, priority, seq))

    @rule(
        task_id=IDS,
        priority=st.one_of(st.integers(-2, 4), st.just(2**64)),
        seq=st.one_of(st.integers(-2, 3), st.just(SEQ_MAX), st.just(SEQ_MAX + 1)),
    )
    def push_edge(self, task_id: str, priority: int, seq: int) -> None:
        self.same(lambda queue: queue.push(task_id, priority, seq))

    @rule()
    def put_back(self) -> None:
        entry = self.same(lambda queue: queue.pop_entry())
        if isinstance(entry, tuple):
            self.same(lambda queue: queue.push(*entry))

    @rule()
    def pop(self) -> None:
        self.same(lambda queue: queue.pop())

    @rule()
    def pop_entry(self) -> None:
        self.same(lambda queue: queue.pop_entry())

    @rule(k=st.integers(-1, 6))
    def pop_many(self, k: int) -> None:
        self.same(lambda queue: queue.pop_many(k))

    @rule()
    def peek(self) -> None:
        self.same(lambda queue: queue.peek())

    @rule()
    def peek_entry(self) -> None:
        self.same(lambda queue: queue.peek_entry())

    @rule(task_id=IDS)
    def remove(self, task_id: str) -> None:
        self.same(lambda queue: queue.remove(task_id))

    @rule(task_id=IDS)
    def contains(self, task_id: str) -> None:
        self.same(lambda queue: task_id in queue)

    @precondition(lambda self: self.next_seq % 7 == 0)
    @rule()
    def clear(self) -> None:
        self.same(lambda queue: queue.clear())

    @invariant()
    def agree(self) -> None:
        if self.queues:
            self.same(lambda queue: queue.entries())
            self.same(lambda queue: len(queue))
            self.same(lambda queue: queue.counts())
            self.same(lambda queue: queue.fingerprint())


TestDifferential = Differential.TestCase
TestDifferential.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


# ====================================================================== re-entrancy
def _collect_on_next_list() -> list[list[int]]:
    """Make the next list that anyone creates start a collection (threshold 1 must be set).

    CPython reuses freed lists without counting them, so the lists held here empty that free
    list; then the count of new objects is brought to exactly 1: the next new list makes it 2,
    over the threshold."""
    held: list[list[int]] = [[] for _ in range(100)]
    while gc.get_count()[0] != 1:
        held.append([])
    return held


def test_a_nested_call_from_the_garbage_collector_sees_a_consistent_queue(q: Any) -> None:
    """Allocating a list or tuple may run a collection, and its callbacks are Python code on the
    same thread, in the middle of an operation. With the threshold at 1 allocations collect, and
    a callback pops (once per operation): nothing may deadlock, be lost or be returned twice."""
    total = 60
    for s in range(total):
        q.push(f"t{s}", s % 3, s)
    stolen: list[str] = []
    budget = [0]

    def steal(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and budget[0] and len(q):
            budget[0] -= 1
            stolen.append(q.pop())

    def armed(operation: Callable[[], object]) -> object:
        budget[0] = 1
        try:
            return operation()
        finally:
            budget[0] = 0

    got: list[str] = []
    threshold = gc.get_threshold()
    gc.callbacks.append(steal)
    gc.set_threshold(1)
    try:
        while len(q):
            # At the end, more than is queued: pop_many must count again after its allocation.
            pop_many = functools.partial(q.pop_many, 4 if len(q) > 12 else 100)
            held = _collect_on_next_list()  # and create nothing else before pop_many's list
            chunk = armed(pop_many)
            del held
            assert isinstance(chunk, list)
            got.extend(chunk)
            if len(q):
                entry = armed(q.pop_entry)
                assert isinstance(entry, tuple)
                armed(functools.partial(q.push, *entry))  # put back: never duplicated
            armed(q.entries)
            armed(q.counts)
            if len(q):
                armed(q.peek_entry)
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(steal)
    popped = got + stolen
    assert len(popped) == len(set(popped)) == total
    assert len(q) == 0 and q.entries() == []


# ====================================================================== threads
@pytest.fixture
def fast_switching() -> Iterator[None]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def test_threads_lose_and_duplicate_nothing(q: Any, fast_switching: None) -> None:
    producers, per_producer = 4, 3000
    popped: list[list[str]] = [[] for _ in range(3)]
    removed: list[str] = []
    producing = threading.Event()
    producing.set()
    errors: list[BaseException] = []

    def guard(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:
                errors.append(exc)

        return run

    def produce(n: int) -> None:
        for i in range(per_producer):
            q.push(f"p{n}-{i}", i % 3, n * per_producer + i)

    def consume(n: int) -> None:
        mine = popped[n]
        while producing.is_set() or len(q):
            if n == 0:
                mine.extend(q.pop_many(7))
            else:
                with contextlib.suppress(IndexError):
                    mine.append(q.pop() if n == 1 else q.pop_entry()[0])

    def cancel() -> None:
        rng = random.Random(5)
        while producing.is_set():
            task_id = f"p{rng.randrange(producers)}-{rng.randrange(per_producer)}"
            if q.remove(task_id):
                removed.append(task_id)

    workers = [
        threading.Thread(target=guard(functools.partial(produce, n))) for n in range(producers)
    ]
    others = [threading.Thread(target=guard(functools.partial(consume, n))) for n in range(3)]
    others.append(threading.Thread(target=guard(cancel)))
    for thread in workers + others:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    producing.clear()
    for thread in others:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in workers + others), "a thread hung"
    assert not errors, errors
    seen = [task_id for chunk in popped for task_id in chunk] + removed + q.pop_many(10**9)
    assert len(seen) == len(set(seen)) == producers * per_producer
    assert len(q) == 0
    for chunk in popped:  # each consumer saw one priority's tasks in submission order
        for priority in range(3):
            mine = [t for t in chunk if int(t.rsplit("-", 1)[1]) % 3 == priority]
            by_producer: dict[str, list[int]] = {}
            for t in mine:
                producer, index = t.split("-")
                by_producer.setdefault(producer, []).append(int(index))
            for indexes in by_producer.values():
                assert indexes == sorted(indexes)
