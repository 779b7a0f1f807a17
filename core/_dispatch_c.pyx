# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The dispatch loop, compiled: the twin of ``core/_dispatch_py.py``, same results, same errors.

The rules are documented once, in ``core/_dispatch_py.py``. Here the matching runs in C: the
nodes' free, busy and capacity counters and their rank in node_id order are C arrays; every task
type named by a node with a free slot gets a small int code once per call, and a code-by-node
byte matrix says which node may run which code. Per task, the Python work is the queue call, the
type lookup and the type's code; the choice of node is a C loop over the nodes. The queue is used
only through its Python-level methods, so it and this loop stay decoupled.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.number cimport PyNumber_Index
from libc.stdint cimport int64_t
from libc.string cimport memset

from core.dispatch_types import NODE_SLOTS_MAX, DispatchInvariantError

cdef int64_t _SLOTS_MAX = NODE_SLOTS_MAX
cdef Py_ssize_t _SSIZE_MAX = <Py_ssize_t>((<size_t>-1) >> 1)


cdef inline Py_ssize_t _least_loaded(
    const int64_t* free, const int64_t* busy, const int64_t* capacity, const int64_t* rank,
    const unsigned char* runs, Py_ssize_t n,
) noexcept nogil:
    """Index of the least-loaded node with a free slot among those ``runs`` marks, or -1.

    load(i) < load(j) iff busy[i] * capacity[j] < busy[j] * capacity[i]; capacities are > 0 for
    any node with a free slot, and NODE_SLOTS_MAX keeps the products inside 64 bits. Equal loads
    go to fewer busy slots, then to the lower rank (node_id order).
    """
    cdef Py_ssize_t i
    cdef Py_ssize_t best = -1
    cdef int64_t mine, theirs
    for i in range(n):
        if free[i] == 0 or not runs[i]:
            continue
        if best < 0:
            best = i
            continue
        mine = busy[i] * capacity[best]
        theirs = busy[best] * capacity[i]
        if mine < theirs or (
            mine == theirs
            and (busy[i] < busy[best] or (busy[i] == busy[best] and rank[i] < rank[best]))
        ):
            best = i
    return best


cdef Py_ssize_t _as_limit(object value) except? -2:
    """An integer limit as a Py_ssize_t, huge values clamped; TypeError for a non-integer."""
    value = PyNumber_Index(value)
    try:
        return value
    except OverflowError:
        return _SSIZE_MAX if value > 0 else -1


cdef int64_t _as_count(object value) except? -2:
    """A slot count as int64; -1 (out of range, so refused) when it does not fit."""
    value = PyNumber_Index(value)
    try:
        return value
    except OverflowError:
        return -1


cdef void _put_back(object queue, list entries) except *:
    cdef object entry
    for entry in entries:
        queue.push(entry[0], entry[1], entry[2])


def dispatch(queue, nodes, type_of, *, batch_max, scan_max):
    """Assign queued tasks to nodes' free slots; return (task_id, node_id) in decision order."""
    cdef Py_ssize_t batch = _as_limit(batch_max)
    cdef Py_ssize_t scan = _as_limit(scan_max)
    if batch < 1:
        raise ValueError(f"batch_max must be >= 1, got {batch_max}")
    if scan < 0:
        raise ValueError(f"scan_max must be >= 0, got {scan_max}")

    cdef list given = nodes if type(nodes) is list else list(nodes)
    cdef Py_ssize_t n = len(given)
    # Per node: free and busy (updated as tasks are assigned), capacity, the free count given
    # (for the final recount) and rank in node_id order. One allocation; freed in ``finally``.
    cdef int64_t* free = <int64_t*>PyMem_Malloc(5 * n * sizeof(int64_t) + 1)
    if free == NULL:
        raise MemoryError()
    cdef int64_t* busy = free + n
    cdef int64_t* capacity = free + 2 * n
    cdef int64_t* free_given = free + 3 * n
    cdef int64_t* rank = free + 4 * n
    # Allocated once the number of type codes and the most assignments possible are known:
    cdef void* block = NULL
    cdef Py_ssize_t* trail = NULL  # node index of each assignment, in order
    cdef Py_ssize_t* taken = NULL  # per node: assignments recounted from the trail
    cdef unsigned char* runs = NULL  # runs[code * n + i]: node i may run tasks of that code
    cdef unsigned char* blocked = NULL  # blocked[code]: no node with a free slot runs it

    cdef Py_ssize_t i, j, code, codes, other, best, trail_max, queued
    cdef Py_ssize_t assigned = 0, skipped_n = 0
    cdef int64_t free_left = 0
    cdef bint every_type = True, in_order = True, broken
    cdef object node, types, task_type, task_id, entry, other_code
    cdef list node_ids = []
    cdef list node_types = []
    cdef list order, ids, popped, skipped
    cdef list result = []
    cdef dict code_of = None
    try:
        for i in range(n):
            node = given[i]
            free[i] = _as_count(node.free)
            busy[i] = _as_count(node.busy)
            if not (0 <= free[i] <= _SLOTS_MAX and 0 <= busy[i] <= _SLOTS_MAX):
                raise ValueError(
                    f"node {node.node_id!r}: free and busy must be in [0, {NODE_SLOTS_MAX}], "
                    f"got free={node.free} busy={node.busy}"
                )
            capacity[i] = free[i] + busy[i]
            free_given[i] = free[i]
            rank[i] = i
            node_ids.append(node.node_id)
            node_types.append(node.types)
        # The scheduler passes nodes sorted by id; only otherwise is a sort needed.
        for i in range(1, n):
            if not node_ids[i - 1] < node_ids[i]:
                in_order = False
                break
        if not in_order:
            order = sorted(range(n), key=node_ids.__getitem__)
            for j in range(1, n):
                if node_ids[<Py_ssize_t>order[j - 1]] == node_ids[<Py_ssize_t>order[j]]:
                    raise ValueError(f"duplicate node id {node_ids[<Py_ssize_t>order[j]]!r}")
            for j in range(n):
                rank[<Py_ssize_t>order[j]] = j

        queued = len(queue)
        if queued == 0:
            return []
        for i in range(n):
            types = node_types[i]
            if free[i] == 0:
                continue
            if types is None:
                free_left += free[i]
            elif len(types) > 0:  # an empty type set runs nothing: its slots stay unused
                free_left += free[i]
                every_type = False
                if code_of is None:
                    code_of = {}
                for task_type in types:
                    if task_type not in code_of:
                        code_of[task_type] = len(code_of)
        if free_left == 0:
            return []

        trail_max = batch
        if free_left < trail_max:
            trail_max = <Py_ssize_t>free_left
        if queued < trail_max:
            trail_max = queued
        # Codes 0..codes-1 are the types named by a node with a free slot; code ``other`` is
        # every other type, which only nodes that run all types can take.
        codes = 0 if code_of is None else len(code_of)
        other = codes
        block = PyMem_Malloc(
            (trail_max + n) * sizeof(Py_ssize_t) + (codes + 1) * (n + 1) * sizeof(unsigned char)
        )
        if block == NULL:
            raise MemoryError()
        trail = <Py_ssize_t*>block
        taken = trail + trail_max
        runs = <unsigned char*>(taken + n)
        blocked = runs + (codes + 1) * n
        memset(runs, 0, (codes + 1) * (n + 1))
        for i in range(n):
            if free[i] == 0:
                continue
            types = node_types[i]
            if types is None:
                for code in range(codes + 1):
                    runs[code * n + i] = 1
            else:
                for task_type in types:
                    runs[<Py_ssize_t>code_of[task_type] * n + i] = 1

        popped = []
        skipped = []
        if every_type:
            popped_ids = queue.pop_many(trail_max)
            ids = popped_ids if type(popped_ids) is list else list(popped_ids)
            if len(ids) > trail_max:
                raise DispatchInvariantError(f"pop_many({trail_max}) returned {len(ids)} task ids")
            for j in range(len(ids)):
                best = _least_loaded(free, busy, capacity, rank, runs + other * n, n)
                free[best] -= 1
                busy[best] += 1
                trail[assigned] = best
                assigned += 1
                result.append((ids[j], node_ids[best]))
        else:
            pop_entry = queue.pop_entry
            other_code = other  # boxed once, not per task
            try:
                while assigned < batch and free_left > 0 and queued > 0:
                    entry = pop_entry()
                    queued -= 1
                    popped.append(entry)
                    task_id = entry[0]
                    task_type = type_of[task_id]
                    code = code_of.get(task_type, other_code)
                    if blocked[code]:
                        best = -1
                    else:
                        best = _least_loaded(free, busy, capacity, rank, runs + code * n, n)
                    if best < 0:
                        # Free slots only shrink during a call: this code stays unrunnable.
                        blocked[code] = 1
                        skipped.append(entry)
                        skipped_n += 1
                        if skipped_n > scan:
                            break
                        continue
                    free[best] -= 1
                    busy[best] += 1
                    free_left -= 1
                    trail[assigned] = best
                    assigned += 1
                    result.append((task_id, node_ids[best]))
            except BaseException:
                _put_back(queue, popped)
                raise

        # The invariant, recounted from the decision trail against the free counts given.
        memset(taken, 0, n * sizeof(Py_ssize_t))
        broken = assigned > batch or assigned != len(result)
        for j in range(assigned):
            best = trail[j]
            taken[best] += 1
            if taken[best] > free_given[best]:
                broken = True
        if broken:
            _put_back(queue, popped)
            raise DispatchInvariantError(
                f"dispatch made {len(result)} assignments (batch_max {batch_max}) exceeding some "
                f"node's free slots: {result!r}"
            )
        _put_back(queue, skipped)
        return result
    finally:
        PyMem_Free(free)
        PyMem_Free(block)
