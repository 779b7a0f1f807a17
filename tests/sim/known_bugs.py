"""Core bugs the simulation found and that are not fixed yet, with the runs that show them.

A test that hits one of these xfails, naming the bug, only if the run fails the way the bug makes
it fail; once the core is fixed the run passes and the test fails, asking for the entry's removal.
"""

from __future__ import annotations

import pytest

from sim.world import RunResult

CORE_A = (
    "core-A: a store answer the leader lost (timeout, connection reset, store restart) is never "
    "reconciled: drained inbox notifications are gone, and a Lease/Promote/Expire in flight stays "
    "pending in the scheduler's cache while the task waits in the store forever"
)
CORE_B = (
    "core-B: WorkerPool.start raises RuntimeError on a newer attempt of a task whose older attempt "
    "still runs on the node (it lost its lease); node/runtime.py's take loop dies with it"
)
# bug -> the invariant its runs violate
INVARIANT_OF = {CORE_A: 1, CORE_B: 0}


def xfail_if_known(result: RunResult, bug: str | None, what: str) -> None:
    """Xfail when `bug` shows as expected; fail if it no longer shows (remove the entry)."""
    if bug is None:
        return
    v = result.violation
    if v is None:
        pytest.fail(f"{what} no longer shows {bug.split(':')[0]}: remove it from known_bugs")
    if v.invariant == INVARIANT_OF[bug] and (bug is not CORE_B or "already runs here" in v.message):
        pytest.xfail(bug)
