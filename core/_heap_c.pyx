# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The ready queue, compiled: the same behaviour as ``core/_heap_py.py``, in C structures.

Pop order is ``(priority, seq, task_id)`` ascending, a total order because ids are unique.

Layout, per priority (three of each):

- a *run*: a ring buffer of entries sorted by ``(seq, task_id)``. Submissions arrive in
  increasing ``seq``, so they append at its tail; a task the dispatch loop puts back (it popped
  it and could not place it) is smaller than everything left, so it goes back at its head. Both
  are O(1), and popping from a run is O(1) and reads memory in order.
- a *heap*: a 4-ary heap for the entries that fit at neither end of the run (a rebuild from
  Redis in arbitrary order, a retry with an old seq). O(log n) push, pop and removal.

``pop`` takes the smaller of the run's head and the heap's top of the first non-empty priority.

Entries are 16-byte C structs ``(seq, slot, priority)``. The task id lives once, as an owned
``PyObject*``, in a slot table; slots are recycled through a free list threaded through the
table. Each slot also records where its entry is (``loc``: which of the six structures, and the
index in it), so ``remove`` finds and deletes its entry exactly: heaps have no tombstones, and a
run entry removed from its middle is marked dead and squeezed out once the dead outnumber the
live. ``task_id -> slot`` is an open-addressing hash table (linear probing, backward-shift
deletion, so no tombstones) of 8-byte buckets ``hash32 << 32 | slot + 1``.

Memory per queued task, beyond the id string: 16 (entry) + 16 (slot) + 10.7 to 21.3 (buckets at
load 3/4 to 3/8), plus the slack of doubling. Every structure shrinks again as the queue empties.

Atomicity (thread safety). This module relies on the GIL (it does not declare itself
free-threading compatible, so a free-threaded interpreter turns the GIL on to import it). A thread
loses the GIL only while Python code runs, or while a GC-tracked object is allocated (that may
start a collection, and finalizers are Python code). So every operation is split into:

1. argument conversion, which may run a user's ``__index__``, before any state is read;
2. one section that reads and writes the queue's state and runs no Python code: hashing and
   comparing an *exact* str is C (subclasses are refused with TypeError, so no user ``__hash__``
   or ``__eq__`` can run); buffers are C arrays from ``PyMem_*`` (which never collects); ints
   are not GC-tracked, so creating one never collects; the only objects freed are exact strs
   (no finalizer);
3. building the result (tuple, list, dict) after the section from values copied out of it, or
   allocating it before the section where a failed allocation must not lose a popped task.

Each operation's reads and writes of the state thus happen while its thread holds the GIL
throughout: the operation is atomic with respect to every other thread. Each method says how.
"""

cimport cython
from cpython.list cimport PyList_New
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.number cimport PyNumber_Index
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_New
from cpython.unicode cimport PyUnicode_CheckExact
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memset

from core._heap_py import DuplicateTaskError
from core.priority import Priority

cdef extern from "Python.h":
    # Redeclared on raw pointers, without error checks: on exact strs they cannot fail.
    Py_hash_t str_hash "PyObject_Hash"(PyObject* o) noexcept
    int str_compare "PyUnicode_Compare"(PyObject* a, PyObject* b) noexcept
    # These steal the reference to ``item``.
    void list_set_item "PyList_SET_ITEM"(object lst, Py_ssize_t i, PyObject* item) noexcept
    void tuple_set_item "PyTuple_SET_ITEM"(object tup, Py_ssize_t i, PyObject* item) noexcept
    void set_size "Py_SET_SIZE"(object o, Py_ssize_t size) noexcept

cdef extern from "stdlib.h":
    # The comparator compares strs, so it needs the GIL, which we never release.
    void qsort(void* base, size_t count, size_t size, int (*cmp)(const void*, const void*) noexcept)

# ---------------------------------------------------------------------------------- limits
cdef enum:
    LEVELS = 3
    # loc = (structure << LOC_SHIFT) | index; structure = priority for a run, HEAP_BIT | priority
    # for a heap. 29 index bits bound every structure, and so the queue, to 2**29 - 1 tasks.
    LOC_SHIFT = 29
    LOC_INDEX_MASK = 0x1FFFFFFF
    HEAP_BIT = 4
    RING_CAP_MIN = 16
    HEAP_CAP_MIN = 16
    SLOT_CAP_MIN = 64
    BUCKETS_MIN = 64
    # A run is compacted once its dead entries outnumber its live ones by this much.
    DEAD_SLACK = 32
    # pop_many starts loading a task's slot this many entries ahead, and its bucket half as
    # many: a bucket is a random access into a table of megabytes, a cache miss per task
    # unless it is requested early enough to overlap with the work on the tasks before it.
    PREFETCH_AHEAD = 16

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define DSCHED_HEAP_PREFETCH(p) __builtin_prefetch((const void *)(p), 1, 3)
    #else
    #define DSCHED_HEAP_PREFETCH(p) ((void)0)
    #endif
    #define DSCHED_HEAP_STEAL(p) ((PyObject *)(p))
    #define DSCHED_HEAP_NONE 0xFFFFFFFFu
    #define DSCHED_HEAP_INT64_MAX 0x7FFFFFFFFFFFFFFFLL
    """
    # The end of the free-slot list, the slot of a dead run entry, a missing bucket.
    const uint32_t NONE "DSCHED_HEAP_NONE"
    const long long INT64_MAX "DSCHED_HEAP_INT64_MAX"
    # A hint to start loading memory that is about to be used; changes nothing else.
    void prefetch "DSCHED_HEAP_PREFETCH"(const void* p) noexcept
    # An owned reference handed on as is: unlike <object>, it does not touch the object's
    # refcount, which for a task long queued is a cache miss.
    object steal "DSCHED_HEAP_STEAL"(PyObject* owned)

# Mirrors of core._heap_py's limits (a test checks they agree).
SEQ_MAX = 2**63 - 1
QUEUED_TASKS_MAX = 2**29 - 1


ctypedef struct Entry:
    int64_t seq
    uint32_t slot      # index into the slot table; NONE marks a dead run entry
    uint32_t priority  # implied by the structure that holds the entry; kept for entries()


ctypedef struct Slot:
    PyObject* id       # owned reference while queued; NULL while free
    uint32_t hash32    # low 32 bits of hash(id): finds its bucket without touching the str
    uint32_t loc       # where its entry is; the next free slot while free


ctypedef struct Ring:
    Entry* buf
    uint32_t cap       # 0 or a power of two
    uint32_t head      # index of the first entry
    uint32_t size      # entries from head to tail, dead ones included; both ends are live
    uint32_t dead


ctypedef struct Heap:
    Entry* buf
    uint32_t cap
    uint32_t size


ctypedef struct Snapshot:
    int64_t seq
    PyObject* id
    uint32_t priority


cdef int snapshot_cmp(const void* a, const void* b) noexcept:
    cdef const Snapshot* x = <const Snapshot*>a
    cdef const Snapshot* y = <const Snapshot*>b
    if x.priority != y.priority:
        return -1 if x.priority < y.priority else 1
    if x.seq != y.seq:
        return -1 if x.seq < y.seq else 1
    return str_compare(x.id, y.id)


cdef inline uint32_t pow2_at_least(uint64_t n) noexcept:
    cdef uint64_t p = 1
    while p < n:
        p <<= 1
    return <uint32_t>p


cdef inline uint32_t hash32(object task_id) noexcept:
    return <uint32_t>(<uint64_t>str_hash(<PyObject*>task_id))


cdef inline void bucket_put(uint64_t* buckets, uint32_t mask, uint32_t h, uint32_t slot) noexcept:
    cdef uint32_t i = h & mask
    while buckets[i] != 0:
        i = (i + 1) & mask
    buckets[i] = (<uint64_t>h << 32) | (<uint64_t>slot + 1)


cdef inline int check_task_id(object task_id) except -1:
    if not PyUnicode_CheckExact(task_id):
        raise TypeError(f"task_id must be a str (not a subclass), not {type(task_id).__name__}")
    return 0


cdef inline long long as_index(object value, long long low, long long high, int* overflow) except? -1:
    """``operator.index(value)`` as a C integer; ``overflow`` is set (to -1 or 1) when it is
    outside [low, high]. Phase 1 only: it may run a user's ``__index__``."""
    cdef long long result
    if not PyLong_CheckExact(value):
        value = PyNumber_Index(value)  # TypeError for a non-integer
    result = PyLong_AsLongLongAndOverflow(value, overflow)
    if overflow[0] == 0:
        if result < low:
            overflow[0] = -1
        elif result > high:
            overflow[0] = 1
    return result


cdef inline uint32_t check_priority(object priority) except? 0xFFFFFFFF:
    cdef int overflow = 0
    cdef long long value = as_index(priority, 0, LEVELS - 1, &overflow)
    if overflow:
        raise ValueError(
            f"priority must be 0 (high), 1 (medium) or 2 (low), not {PyNumber_Index(priority)!r}"
        )
    return <uint32_t>value


cdef inline int64_t check_seq(object seq) except? -1:
    cdef int overflow = 0
    cdef long long value = as_index(seq, 0, INT64_MAX, &overflow)
    if overflow:
        raise ValueError(f"seq must be between 0 and 2**63 - 1, not {PyNumber_Index(seq)!r}")
    return value


@cython.final
cdef class ReadyQueue:
    """Queued task ids in pop order ``(priority, seq, task_id)``; see the module docstring."""

    cdef Ring runs[LEVELS]
    cdef Heap heaps[LEVELS]
    cdef uint32_t queued[LEVELS]
    cdef uint32_t live
    cdef uint32_t limit
    cdef Slot* slots
    cdef uint32_t slot_cap
    cdef uint32_t free_head
    cdef uint64_t* buckets
    cdef uint32_t bucket_mask
    cdef uint32_t fp  # XOR of the queued ids' hash32: see fingerprint()

    def __cinit__(self, *, capacity_max=None):
        cdef int overflow = 0
        cdef long long value
        if capacity_max is None:
            self.limit = LOC_INDEX_MASK
        else:
            value = as_index(capacity_max, 1, LOC_INDEX_MASK, &overflow)
            if overflow:
                raise ValueError(
                    f"capacity_max must be between 1 and {QUEUED_TASKS_MAX}, "
                    f"not {PyNumber_Index(capacity_max)!r}"
                )
            self.limit = <uint32_t>value
        self.free_head = NONE
        self.buckets = <uint64_t*>PyMem_Malloc(BUCKETS_MIN * sizeof(uint64_t))
        if self.buckets == NULL:
            raise MemoryError()
        memset(self.buckets, 0, BUCKETS_MIN * sizeof(uint64_t))
        self.bucket_mask = BUCKETS_MIN - 1

    def __dealloc__(self):
        self._release_all()
        PyMem_Free(self.buckets)

    cdef void _release_all(self) noexcept:
        """Drop every id and free every buffer but the buckets. Only exact strs are freed."""
        cdef uint32_t i
        cdef int p
        if self.slots != NULL:
            for i in range(self.slot_cap):
                Py_XDECREF(self.slots[i].id)
            PyMem_Free(self.slots)
            self.slots = NULL
        self.slot_cap = 0
        self.free_head = NONE
        for p in range(LEVELS):
            PyMem_Free(self.runs[p].buf)
            memset(&self.runs[p], 0, sizeof(Ring))
            PyMem_Free(self.heaps[p].buf)
            memset(&self.heaps[p], 0, sizeof(Heap))
            self.queued[p] = 0
        self.live = 0
        self.fp = 0

    @property
    def capacity_max(self):
        """How many tasks may be queued at once; ``QUEUED_TASKS_MAX`` when none was given."""
        return self.limit

    # ============================================================== order and location
    cdef inline bint _less(self, const Entry* a, const Entry* b) noexcept:
        if a.seq != b.seq:
            return a.seq < b.seq
        return str_compare(self.slots[a.slot].id, self.slots[b.slot].id) < 0

    cdef inline void _place(self, Entry* buf, uint32_t i, Entry e, uint32_t structure) noexcept:
        buf[i] = e
        self.slots[e.slot].loc = (structure << LOC_SHIFT) | i

    # ============================================================== hash table
    cdef inline uint32_t _bucket_of_id(self, object task_id, uint32_t h) noexcept:
        cdef uint32_t mask = self.bucket_mask
        cdef uint32_t i = h & mask
        cdef uint64_t b
        cdef PyObject* other
        while True:
            b = self.buckets[i]
            if b == 0:
                return NONE
            if <uint32_t>(b >> 32) == h:
                other = self.slots[<uint32_t>b - 1].id
                if other == <PyObject*>task_id or str_compare(other, <PyObject*>task_id) == 0:
                    return i
            i = (i + 1) & mask

    cdef inline uint32_t _bucket_of_slot(self, uint32_t slot) noexcept:
        cdef uint32_t mask = self.bucket_mask
        cdef uint32_t i = self.slots[slot].hash32 & mask
        cdef uint32_t want = slot + 1
        while <uint32_t>self.buckets[i] != want:  # the low half of a bucket is slot + 1
            i = (i + 1) & mask
        return i

    cdef inline void _bucket_delete(self, uint32_t i) noexcept:
        # Backward shift: pull each later entry of the cluster into the hole when the hole lies
        # between its home and where it sits, so lookups never meet a tombstone.
        cdef uint32_t mask = self.bucket_mask
        cdef uint32_t j = i
        cdef uint32_t home
        cdef uint64_t b
        while True:
            j = (j + 1) & mask
            b = self.buckets[j]
            if b == 0:
                break
            home = <uint32_t>(b >> 32) & mask
            if ((j - home) & mask) >= ((j - i) & mask):
                self.buckets[i] = b
                i = j
        self.buckets[i] = 0

    cdef int _buckets_resize(self, uint32_t size) noexcept:
        """Rehash into ``size`` buckets (a power of two). -1, and no change, if out of memory."""
        cdef uint64_t* fresh = <uint64_t*>PyMem_Malloc(<size_t>size * sizeof(uint64_t))
        cdef uint32_t i
        cdef uint64_t b
        if fresh == NULL:
            return -1
        memset(fresh, 0, <size_t>size * sizeof(uint64_t))
        for i in range(self.bucket_mask + 1):
            b = self.buckets[i]
            if b != 0:
                bucket_put(fresh, size - 1, <uint32_t>(b >> 32), <uint32_t>b - 1)
        PyMem_Free(self.buckets)
        self.buckets = fresh
        self.bucket_mask = size - 1
        return 0

    # ============================================================== slots
    cdef int _reserve_slot(self) noexcept:
        """Make sure a free slot exists. -1, and no change, if out of memory."""
        cdef uint32_t cap, i
        cdef Slot* grown
        if self.free_head != NONE:
            return 0
        cap = SLOT_CAP_MIN if self.slot_cap == 0 else self.slot_cap * 2
        grown = <Slot*>PyMem_Realloc(self.slots, <size_t>cap * sizeof(Slot))
        if grown == NULL:
            return -1
        for i in range(self.slot_cap, cap):
            grown[i].id = NULL
            grown[i].hash32 = 0
            grown[i].loc = i + 1
        grown[cap - 1].loc = NONE
        self.free_head = self.slot_cap
        self.slots = grown
        self.slot_cap = cap
        return 0

    cdef inline PyObject* _release(self, uint32_t slot, uint32_t priority) noexcept:
        """Forget a slot whose entry has left its structure; returns its owned id."""
        cdef PyObject* task_id = self.slots[slot].id
        self._bucket_delete(self._bucket_of_slot(slot))
        self.slots[slot].id = NULL
        self.slots[slot].loc = self.free_head
        self.free_head = slot
        self.live -= 1
        self.queued[priority] -= 1
        self.fp ^= self.slots[slot].hash32
        return task_id

    # ============================================================== runs
    cdef int _ring_move(self, uint32_t priority, uint32_t cap) noexcept:
        """Move a run's live entries into a new buffer of ``cap`` (dropping the dead).
        -1, and no change, if out of memory."""
        cdef Ring* ring = &self.runs[priority]
        cdef Entry* fresh = <Entry*>PyMem_Malloc(<size_t>cap * sizeof(Entry))
        cdef uint32_t k, n = 0
        cdef uint32_t mask = ring.cap - 1
        cdef Entry e
        if fresh == NULL:
            return -1
        for k in range(ring.size):
            e = ring.buf[(ring.head + k) & mask]
            if e.slot != NONE:
                self._place(fresh, n, e, priority)
                n += 1
        PyMem_Free(ring.buf)
        ring.buf = fresh
        ring.cap = cap
        ring.head = 0
        ring.size = n
        ring.dead = 0
        return 0

    cdef void _ring_compact(self, uint32_t priority) noexcept:
        """Squeeze the dead entries out of a run, in place."""
        cdef Ring* ring = &self.runs[priority]
        cdef uint32_t mask = ring.cap - 1
        cdef uint32_t k, n = 0
        cdef Entry e
        for k in range(ring.size):
            e = ring.buf[(ring.head + k) & mask]
            if e.slot != NONE:
                self._place(ring.buf, (ring.head + n) & mask, e, priority)
                n += 1
        ring.size = n
        ring.dead = 0

    cdef inline void _ring_trim(self, Ring* ring) noexcept:
        """Drop dead entries from both ends of a run."""
        cdef uint32_t mask = ring.cap - 1
        while ring.size and ring.buf[ring.head].slot == NONE:
            ring.head = (ring.head + 1) & mask
            ring.size -= 1
            ring.dead -= 1
        while ring.size and ring.buf[(ring.head + ring.size - 1) & mask].slot == NONE:
            ring.size -= 1
            ring.dead -= 1
        if ring.size == 0:
            ring.head = 0

    cdef inline Entry _ring_pop_front(self, uint32_t priority) noexcept:
        cdef Ring* ring = &self.runs[priority]
        cdef Entry e = ring.buf[ring.head]
        ring.head = (ring.head + 1) & (ring.cap - 1)
        ring.size -= 1
        if ring.dead:
            self._ring_trim(ring)
        elif ring.size == 0:
            ring.head = 0
        return e

    cdef void _ring_remove(self, uint32_t priority, uint32_t i) noexcept:
        cdef Ring* ring = &self.runs[priority]
        if i == ring.head:
            self._ring_pop_front(priority)
        elif i == ((ring.head + ring.size - 1) & (ring.cap - 1)):
            ring.size -= 1
            self._ring_trim(ring)
        else:
            ring.buf[i].slot = NONE
            ring.dead += 1
            if ring.dead > ring.size - ring.dead + DEAD_SLACK:
                self._ring_compact(priority)

    # ============================================================== heaps (4-ary)
    cdef inline void _sift_up(self, uint32_t priority, uint32_t i, Entry e) noexcept:
        cdef Entry* buf = self.heaps[priority].buf
        cdef uint32_t structure = HEAP_BIT | priority
        cdef uint32_t parent
        while i > 0:
            parent = (i - 1) >> 2
            if not self._less(&e, &buf[parent]):
                break
            self._place(buf, i, buf[parent], structure)
            i = parent
        self._place(buf, i, e, structure)

    cdef inline void _sift_down(self, uint32_t priority, uint32_t i, Entry e) noexcept:
        cdef Entry* buf = self.heaps[priority].buf
        cdef uint32_t n = self.heaps[priority].size
        cdef uint32_t structure = HEAP_BIT | priority
        cdef uint32_t child, best, end
        while True:
            child = 4 * i + 1
            if child >= n:
                break
            best = child
            end = child + 4 if child + 4 <= n else n
            child += 1
            while child < end:
                if self._less(&buf[child], &buf[best]):
                    best = child
                child += 1
            if not self._less(&buf[best], &e):
                break
            self._place(buf, i, buf[best], structure)
            i = best
        self._place(buf, i, e, structure)

    cdef inline Entry _heap_pop(self, uint32_t priority) noexcept:
        cdef Heap* heap = &self.heaps[priority]
        cdef Entry top = heap.buf[0]
        heap.size -= 1
        if heap.size:
            self._sift_down(priority, 0, heap.buf[heap.size])
        return top

    cdef void _heap_remove(self, uint32_t priority, uint32_t i) noexcept:
        cdef Heap* heap = &self.heaps[priority]
        cdef Entry last
        heap.size -= 1
        if i == heap.size:
            return
        last = heap.buf[heap.size]
        if i > 0 and self._less(&last, &heap.buf[(i - 1) >> 2]):
            self._sift_up(priority, i, last)
        else:
            self._sift_down(priority, i, last)

    cdef int _heap_reserve(self, uint32_t priority) noexcept:
        """Room for one more heap entry. -1, and no change, if out of memory."""
        cdef Heap* heap = &self.heaps[priority]
        cdef uint32_t cap
        cdef Entry* grown
        if heap.size < heap.cap:
            return 0
        cap = HEAP_CAP_MIN if heap.cap == 0 else heap.cap * 2
        grown = <Entry*>PyMem_Realloc(heap.buf, <size_t>cap * sizeof(Entry))
        if grown == NULL:
            return -1
        heap.buf = grown
        heap.cap = cap
        return 0

    # ============================================================== the first entry
    cdef inline int _first_priority(self) noexcept:
        """The first non-empty priority, or -1."""
        if self.queued[0]:
            return 0
        if self.queued[1]:
            return 1
        if self.queued[2]:
            return 2
        return -1

    cdef inline const Entry* _head(self, uint32_t priority) noexcept:
        """The first entry of a non-empty priority."""
        cdef Ring* ring = &self.runs[priority]
        cdef Heap* heap = &self.heaps[priority]
        if heap.size == 0 or (ring.size != 0 and self._less(&ring.buf[ring.head], &heap.buf[0])):
            return &ring.buf[ring.head]
        return &heap.buf[0]

    cdef inline Entry _take(self, uint32_t priority) noexcept:
        """Remove the first entry of a non-empty priority from its structure."""
        cdef Ring* ring = &self.runs[priority]
        cdef Heap* heap = &self.heaps[priority]
        if heap.size == 0 or (ring.size != 0 and self._less(&ring.buf[ring.head], &heap.buf[0])):
            return self._ring_pop_front(priority)
        return self._heap_pop(priority)

    cdef inline void _prefetch_next(self) noexcept:
        """Start loading what the next pop will touch (its bucket, and the slot of the one
        after), so the cache misses overlap with the caller's Python code between pops."""
        cdef int p = self._first_priority()
        cdef Ring* ring
        cdef const Slot* head
        if p < 0:
            return
        ring = &self.runs[p]
        if ring.size:
            head = &self.slots[ring.buf[ring.head].slot]
            prefetch(&self.buckets[head.hash32 & self.bucket_mask])
            prefetch(head.id)  # the caller will touch its refcount
            if ring.size > 1 and ring.buf[(ring.head + 1) & (ring.cap - 1)].slot != NONE:
                prefetch(&self.slots[ring.buf[(ring.head + 1) & (ring.cap - 1)].slot])

    # ============================================================== giving memory back
    cdef inline void _shrink(self) noexcept:
        """Give memory back once a structure is at most 1/8 full (to between 1/4 and 1/2, so
        growing and shrinking cannot alternate). Optional: on a failed allocation the queue
        keeps its larger buffers and stays correct."""
        cdef int p
        cdef uint32_t n
        cdef Entry* smaller
        for p in range(LEVELS):
            n = self.runs[p].size - self.runs[p].dead
            if self.runs[p].cap > RING_CAP_MIN and <uint64_t>n * 8 < self.runs[p].cap:
                self._ring_move(p, pow2_at_least(max(<uint64_t>RING_CAP_MIN, <uint64_t>n * 2)))
            n = self.heaps[p].size
            if self.heaps[p].cap > HEAP_CAP_MIN and <uint64_t>n * 8 < self.heaps[p].cap:
                n = pow2_at_least(max(<uint64_t>HEAP_CAP_MIN, <uint64_t>n * 2))
                smaller = <Entry*>PyMem_Realloc(self.heaps[p].buf, <size_t>n * sizeof(Entry))
                if smaller != NULL:
                    self.heaps[p].buf = smaller
                    self.heaps[p].cap = n
        if self.slot_cap > SLOT_CAP_MIN and <uint64_t>self.live * 8 < self.slot_cap:
            self._compact_slots()

    cdef inline void _renumber(self, Slot* fresh, uint64_t* buckets, uint32_t mask, Entry* e,
                               uint32_t n) noexcept:
        fresh[n] = self.slots[e.slot]
        e.slot = n
        bucket_put(buckets, mask, fresh[n].hash32, n)

    cdef void _compact_slots(self) noexcept:
        """Renumber the live slots 0..live-1 into a smaller table and rehash. Optional."""
        cdef uint32_t cap = pow2_at_least(max(<uint64_t>SLOT_CAP_MIN, <uint64_t>self.live * 2))
        cdef uint32_t size = pow2_at_least(max(<uint64_t>BUCKETS_MIN, <uint64_t>self.live * 2))
        cdef Slot* fresh = <Slot*>PyMem_Malloc(<size_t>cap * sizeof(Slot))
        cdef uint64_t* buckets = <uint64_t*>PyMem_Malloc(<size_t>size * sizeof(uint64_t))
        cdef uint32_t n = 0, i, k, mask
        cdef int p
        cdef Entry* e
        if fresh == NULL or buckets == NULL:
            PyMem_Free(fresh)
            PyMem_Free(buckets)
            return
        memset(buckets, 0, <size_t>size * sizeof(uint64_t))
        for p in range(LEVELS):
            mask = self.runs[p].cap - 1
            for k in range(self.runs[p].size):
                e = &self.runs[p].buf[(self.runs[p].head + k) & mask]
                if e.slot != NONE:
                    self._renumber(fresh, buckets, size - 1, e, n)
                    n += 1
            for k in range(self.heaps[p].size):
                self._renumber(fresh, buckets, size - 1, &self.heaps[p].buf[k], n)
                n += 1
        for i in range(n, cap):
            fresh[i].id = NULL
            fresh[i].hash32 = 0
            fresh[i].loc = i + 1
        fresh[cap - 1].loc = NONE
        PyMem_Free(self.slots)
        PyMem_Free(self.buckets)
        self.slots = fresh
        self.slot_cap = cap
        self.free_head = n if n < cap else NONE
        self.buckets = buckets
        self.bucket_mask = size - 1

    # ============================================================== operations
    def push(self, task_id, priority, seq):
        """Queue a task. TypeError or ValueError for a bad argument, DuplicateTaskError if the
        id is already queued, OverflowError when ``capacity_max`` tasks are queued.

        Atomic: (1) converts the arguments; (2) checks, makes room (C buffers only; a
        MemoryError leaves the queue as it was) and inserts, running no Python code."""
        cdef uint32_t p, h, slot
        cdef int64_t s
        cdef Entry e
        cdef Ring* ring
        cdef int room
        cdef int where  # 0: after the run's tail, 1: before its head, 2: into the heap
        check_task_id(task_id)
        # The id's bucket is a likely cache miss: start loading it before converting the rest.
        h = hash32(task_id)
        prefetch(&self.buckets[h & self.bucket_mask])
        p = check_priority(priority)
        s = check_seq(seq)
        # ---- no Python code from here on (the bucket table may have been resized meanwhile:
        # only h is carried over, and it depends on the id alone)
        if self._bucket_of_id(task_id, h) != NONE:
            raise DuplicateTaskError(f"task {task_id!r} is already queued")
        if self.live >= self.limit:
            raise OverflowError(f"ready queue is full: capacity_max={self.limit} tasks queued")
        if self._reserve_slot() < 0:
            raise MemoryError()
        if (<uint64_t>self.live + 1) * 4 > (<uint64_t>self.bucket_mask + 1) * 3:
            if self._buckets_resize((self.bucket_mask + 1) * 2) < 0:
                raise MemoryError()
        slot = self.free_head
        e.seq = s
        e.slot = slot
        e.priority = p
        ring = &self.runs[p]
        # _less finds ids through their slots: lend the free slot the new id while comparing.
        self.slots[slot].id = <PyObject*>task_id
        if ring.size == 0 or self._less(&ring.buf[(ring.head + ring.size - 1) & (ring.cap - 1)], &e):
            where = 0
        elif self._less(&e, &ring.buf[ring.head]):
            where = 1
        else:
            where = 2
        self.slots[slot].id = NULL
        if where == 2:
            room = self._heap_reserve(p)
        elif ring.size == ring.cap:
            room = self._ring_move(p, RING_CAP_MIN if ring.cap == 0 else ring.cap * 2)
        else:
            room = 0
        if room < 0:
            raise MemoryError()
        # ---- nothing can fail from here on
        self.free_head = self.slots[slot].loc
        Py_INCREF(task_id)
        self.slots[slot].id = <PyObject*>task_id
        self.slots[slot].hash32 = h
        bucket_put(self.buckets, self.bucket_mask, h, slot)
        self.live += 1
        self.queued[p] += 1
        self.fp ^= h
        if where == 0:
            self._place(ring.buf, (ring.head + ring.size) & (ring.cap - 1), e, p)
            ring.size += 1
        elif where == 1:
            ring.head = (ring.head - 1) & (ring.cap - 1)
            self._place(ring.buf, ring.head, e, p)
            ring.size += 1
        else:
            self.heaps[p].size += 1
            self._sift_up(p, self.heaps[p].size - 1, e)

    def pop(self):
        """Remove and return the first task id; IndexError when empty.

        Atomic: one section with no Python code; the id's reference passes from the slot table
        to the caller, so nothing is allocated."""
        cdef int p = self._first_priority()
        cdef Entry e
        cdef PyObject* task_id
        if p < 0:
            raise IndexError("the ready queue is empty")
        e = self._take(p)
        task_id = self._release(e.slot, p)
        self._shrink()
        self._prefetch_next()
        return steal(task_id)  # the table's reference becomes the caller's

    def pop_entry(self):
        """Remove and return the first ``(task_id, priority, seq)``; IndexError when empty.

        Atomic: the tuple is allocated first (that may run a collection, and so other threads,
        but nothing has been read yet; and a MemoryError loses no task); then one section with
        no Python code pops and fills it."""
        cdef int p
        cdef Entry e
        cdef object seq, priority
        result = PyTuple_New(3)
        # ---- no Python code from here on (creating the seq int never collects)
        p = self._first_priority()
        if p < 0:
            raise IndexError("the ready queue is empty")
        seq = self._head(p).seq
        e = self._take(p)
        tuple_set_item(result, 0, self._release(e.slot, p))
        priority = p
        Py_INCREF(priority)
        tuple_set_item(result, 1, <PyObject*>priority)
        Py_INCREF(seq)
        tuple_set_item(result, 2, <PyObject*>seq)
        self._shrink()
        return result

    def pop_many(self, k):
        """Remove and return up to ``k`` task ids in pop order; ValueError if ``k < 0``.

        Atomic: (1) converts ``k``; (2) allocates the list, which may run a collection and so
        other threads; (3) reads the length again and pops into the list in one section with
        no Python code."""
        cdef int overflow = 0
        cdef long long want = as_index(k, 0, INT64_MAX, &overflow)
        cdef Py_ssize_t n, i = 0
        cdef int p
        cdef uint32_t left, mask
        cdef Entry e
        cdef Slot ahead
        cdef Ring* ring
        if overflow < 0:
            raise ValueError(f"pop_many needs k >= 0, not {PyNumber_Index(k)!r}")
        if overflow > 0 or want > self.live:
            want = self.live
        result = PyList_New(<Py_ssize_t>want)
        # ---- no Python code from here on
        n = <Py_ssize_t>want if want <= self.live else self.live
        while i < n:
            p = self._first_priority()
            ring = &self.runs[p]
            if self.heaps[p].size == 0 and ring.dead == 0:
                # The priority's entries are one run without holes: pop them in order.
                left = ring.size if <Py_ssize_t>ring.size <= n - i else <uint32_t>(n - i)
                mask = ring.cap - 1
                while left:
                    if left > PREFETCH_AHEAD:
                        prefetch(&self.slots[ring.buf[(ring.head + PREFETCH_AHEAD) & mask].slot])
                        ahead = self.slots[ring.buf[(ring.head + PREFETCH_AHEAD // 2) & mask].slot]
                        prefetch(&self.buckets[ahead.hash32 & self.bucket_mask])
                    e = ring.buf[ring.head]
                    ring.head = (ring.head + 1) & mask
                    ring.size -= 1
                    list_set_item(result, i, self._release(e.slot, p))
                    i += 1
                    left -= 1
                if ring.size == 0:
                    ring.head = 0
            else:
                e = self._take(p)
                list_set_item(result, i, self._release(e.slot, p))
                i += 1
        if n < <Py_ssize_t>want:
            set_size(result, n)  # another thread popped meanwhile; the rest of the list is NULL
        self._shrink()
        return result

    def peek(self):
        """The task id ``pop`` would return, left queued; IndexError when empty.

        Atomic: reads only, and returns an object that exists."""
        cdef int p = self._first_priority()
        if p < 0:
            raise IndexError("the ready queue is empty")
        return <object>self.slots[self._head(p).slot].id

    def peek_entry(self):
        """The entry ``pop_entry`` would return, left queued; IndexError when empty.

        Atomic: the values are read in one section (the seq int never collects), then the
        tuple is built."""
        cdef int p = self._first_priority()
        cdef const Entry* head
        if p < 0:
            raise IndexError("the ready queue is empty")
        head = self._head(p)
        task_id = <object>self.slots[head.slot].id
        seq = head.seq
        return (task_id, p, seq)

    def remove(self, task_id):
        """Cancel a queued task: True if it was queued (and is no longer), else False.

        Atomic: (1) checks that the id is an exact str; (2) one section with no Python code."""
        cdef uint32_t bucket, slot, loc, structure, p
        check_task_id(task_id)
        bucket = self._bucket_of_id(task_id, hash32(task_id))
        if bucket == NONE:
            return False
        slot = <uint32_t>self.buckets[bucket] - 1
        loc = self.slots[slot].loc
        structure = loc >> LOC_SHIFT
        p = structure & ~(<uint32_t>HEAP_BIT)
        if structure & HEAP_BIT:
            self._heap_remove(p, loc & LOC_INDEX_MASK)
        else:
            self._ring_remove(p, loc & LOC_INDEX_MASK)
        Py_XDECREF(self._release(slot, p))  # an exact str: freeing it runs no Python code
        self._shrink()
        return True

    def __contains__(self, task_id):
        """Atomic: checks that the id is an exact str, then one lookup with no Python code."""
        check_task_id(task_id)
        return self._bucket_of_id(task_id, hash32(task_id)) != NONE

    def __len__(self):
        """Atomic: reads one C integer."""
        return self.live

    def fingerprint(self):
        """The XOR of the low 32 bits of ``hash(task_id)`` over the queued ids.

        Atomic: reads one C integer."""
        return self.fp

    def counts(self):
        """Queued tasks per priority; all three priorities are always present.

        Atomic: the three counts are copied out together, then the dict is built."""
        cdef uint32_t high = self.queued[0], medium = self.queued[1], low = self.queued[2]
        return {Priority.HIGH: high, Priority.MEDIUM: medium, Priority.LOW: low}

    def clear(self):
        """Drop every queued task.

        Atomic: the new, empty bucket table is allocated first (a MemoryError leaves the queue
        as it was); then one section frees everything (only exact strs: no finalizer runs)."""
        cdef uint64_t* fresh = <uint64_t*>PyMem_Malloc(BUCKETS_MIN * sizeof(uint64_t))
        if fresh == NULL:
            raise MemoryError()
        memset(fresh, 0, BUCKETS_MIN * sizeof(uint64_t))
        self._release_all()
        PyMem_Free(self.buckets)
        self.buckets = fresh
        self.bucket_mask = BUCKETS_MIN - 1

    def entries(self):
        """A snapshot of every ``(task_id, priority, seq)`` in pop order. O(n log n).

        Atomic: the entries are copied into a private C array, with a reference to each id, in
        one section with no Python code; sorting it and building the list come after."""
        cdef size_t n = self.live, m = 0, i
        cdef Snapshot* snap = <Snapshot*>PyMem_Malloc((n if n else 1) * sizeof(Snapshot))
        cdef int p
        cdef uint32_t k, mask
        cdef const Entry* e
        if snap == NULL:
            raise MemoryError()
        for p in range(LEVELS):
            mask = self.runs[p].cap - 1
            for k in range(self.runs[p].size):
                e = &self.runs[p].buf[(self.runs[p].head + k) & mask]
                if e.slot != NONE:
                    snap[m].seq = e.seq
                    snap[m].id = self.slots[e.slot].id
                    snap[m].priority = p
                    Py_INCREF(<object>snap[m].id)
                    m += 1
            for k in range(self.heaps[p].size):
                e = &self.heaps[p].buf[k]
                snap[m].seq = e.seq
                snap[m].id = self.slots[e.slot].id
                snap[m].priority = p
                Py_INCREF(<object>snap[m].id)
                m += 1
        # ---- the queue is not read again; the references keep the ids alive
        try:
            qsort(snap, m, sizeof(Snapshot), snapshot_cmp)
            return [(<object>snap[i].id, snap[i].priority, snap[i].seq) for i in range(m)]
        finally:
            for i in range(m):
                Py_DECREF(<object>snap[i].id)
            PyMem_Free(snap)
