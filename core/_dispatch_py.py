"""The dispatch loop in pure Python, twin of ``core/_dispatch_c.pyx``: same results, same errors.

It matches the ready queue's tasks, in pop order, to free worker slots:

1. A node never gets more tasks than its ``free`` count (workers pull; nothing is prefetched).
2. Tasks are taken in pop order (priority, then sequence). A task that no node with a free slot
   can run is skipped; one that some free slot can run is assigned before any later task. Free
   slots only shrink during a call, so a skipped task stays unrunnable for the rest of it.
3. Each task goes to the least-loaded node that can run it, load = busy / (busy + free) as it
   stands after this call's earlier assignments, compared exactly by integer cross-multiplication;
   ties go to the node with fewer busy slots, then to the smaller ``node_id``.
4. Skipped tasks go back into the queue with their original (priority, seq). A call ends after
   ``batch_max`` assignments, when no free slot is left, when the queue is empty, or when it meets
   an unrunnable task after already skipping ``scan_max`` (that one goes back too), so a queue full
   of tasks nobody can run costs a call at most ``scan_max + 1`` pops.
5. When every node with a free slot runs every type, tasks come off with one ``pop_many``
   and ``type_of`` is never read.
6. Otherwise ``type_of[task_id]`` is read for every task examined; a missing id is a KeyError
   (a caller bug), and the queue is left as it was before the call.
7. Invalid input (negative or oversized counts, duplicate node ids, ``batch_max < 1``,
   ``scan_max < 0``) is a ValueError raised before the queue is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from operator import index

from core.dispatch_types import NODE_SLOTS_MAX, DispatchInvariantError, DispatchQueue, NodeSlots

_Entry = tuple[str, int, int]


def _check_limits(batch_max: int, scan_max: int) -> None:
    index(batch_max)
    index(scan_max)
    if batch_max < 1:
        raise ValueError(f"batch_max must be >= 1, got {batch_max}")
    if scan_max < 0:
        raise ValueError(f"scan_max must be >= 0, got {scan_max}")


def dispatch(
    queue: DispatchQueue,
    nodes: Sequence[NodeSlots],
    type_of: Mapping[str, str],
    *,
    batch_max: int,
    scan_max: int,
) -> list[tuple[str, str]]:
    """Assign queued tasks to nodes' free slots; return (task_id, node_id) in decision order."""
    _check_limits(batch_max, scan_max)
    for node in nodes:
        # index(): a count must be an integer (TypeError otherwise), as the compiled twin's C
        # conversion demands.
        node_free, node_busy = index(node.free), index(node.busy)
        if not 0 <= node_free <= NODE_SLOTS_MAX or not 0 <= node_busy <= NODE_SLOTS_MAX:
            raise ValueError(
                f"node {node.node_id!r}: free and busy must be in [0, {NODE_SLOTS_MAX}], "
                f"got free={node.free} busy={node.busy}"
            )
    # Index order is node_id order, so "the first best index" breaks the last tie by node_id.
    ordered = sorted(nodes, key=_node_id)
    for before, after in pairwise(ordered):
        if before.node_id == after.node_id:
            raise ValueError(f"duplicate node id {after.node_id!r}")

    free = [node.free for node in ordered]
    busy = [node.busy for node in ordered]
    capacity = [node.free + node.busy for node in ordered]
    # A node with an empty type set runs nothing: its free slots cannot be filled.
    useful = [node.free > 0 and (node.types is None or len(node.types) > 0) for node in ordered]
    free_left = sum(f for f, u in zip(free, useful, strict=True) if u)
    queued = len(queue)
    if free_left == 0 or queued == 0:
        return []

    def least_loaded(candidates: Sequence[int]) -> int:
        """Index of the least-loaded candidate with a free slot, or -1 if none has one."""
        best = -1
        for i in candidates:
            if free[i] == 0:
                continue
            if best < 0:
                best = i
                continue
            mine = busy[i] * capacity[best]
            theirs = busy[best] * capacity[i]
            if mine < theirs or (mine == theirs and busy[i] < busy[best]):
                best = i
        return best

    result: list[tuple[str, str]] = []
    every_type = all(node.types is None for node, u in zip(ordered, useful, strict=True) if u)
    if every_type:
        runs_all = [i for i, node in enumerate(ordered) if node.types is None]
        wanted = min(free_left, batch_max, queued)
        ids = queue.pop_many(wanted)
        if len(ids) > wanted:
            raise DispatchInvariantError(f"pop_many({wanted}) returned {len(ids)} task ids")
        for task_id in ids:
            best = least_loaded(runs_all)
            free[best] -= 1
            busy[best] += 1
            result.append((task_id, ordered[best].node_id))
        _check_result(result, ordered, batch_max, queue, [])
        return result

    # Nodes that can run each type seen so far, in index order; an empty list once no free slot
    # can run that type (free slots only shrink, so it stays that way for the rest of the call).
    runners_of: dict[str, list[int]] = {}
    popped: list[_Entry] = []  # everything taken off the queue, to put back if this call fails
    skipped: list[_Entry] = []
    try:
        while len(result) < batch_max and free_left > 0 and queued > 0:
            entry = queue.pop_entry()
            queued -= 1
            popped.append(entry)
            task_type = type_of[entry[0]]
            runners = runners_of.get(task_type)
            if runners is None:
                runners = [
                    i
                    for i, node in enumerate(ordered)
                    if node.types is None or task_type in node.types
                ]
                runners_of[task_type] = runners
            best = least_loaded(runners)
            if best < 0:
                runners.clear()
                skipped.append(entry)
                if len(skipped) > scan_max:
                    break
                continue
            free[best] -= 1
            busy[best] += 1
            free_left -= 1
            result.append((entry[0], ordered[best].node_id))
    except BaseException:
        _put_back(queue, popped)
        raise
    _check_result(result, ordered, batch_max, queue, popped)
    _put_back(queue, skipped)
    return result


def _node_id(node: NodeSlots) -> str:
    return node.node_id


def _put_back(queue: DispatchQueue, entries: Sequence[_Entry]) -> None:
    for task_id, priority, seq in entries:
        queue.push(task_id, priority, seq)


def _check_result(
    result: list[tuple[str, str]],
    nodes: Sequence[NodeSlots],
    batch_max: int,
    queue: DispatchQueue,
    popped: Sequence[_Entry],
) -> None:
    """Recount the result against the input: no node over its free count, batch within bounds."""
    free_left = {node.node_id: node.free for node in nodes}
    broken = len(result) > batch_max
    for _, node_id in result:
        left = free_left.get(node_id, 0) - 1
        free_left[node_id] = left
        broken = broken or left < 0
    if broken:
        _put_back(queue, popped)
        raise DispatchInvariantError(
            f"dispatch made {len(result)} assignments (batch_max {batch_max}) exceeding some "
            f"node's free slots: {result!r}"
        )
