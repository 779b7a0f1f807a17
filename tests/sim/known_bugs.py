"""Core bugs the simulation found that are not fixed yet, recognised by how their runs fail.

A test whose run fails with a known bug's signature xfails, naming the bug; any other failure
fails. A scripted scenario marked ``# known-bug: core-X`` is that bug's reproduction: it must keep
showing it, so the fix is noticed (the test then fails, asking for the marker's removal).
"""

from __future__ import annotations

import pytest

from sim.world import RunResult

CORE_A = (
    "core-A: a store answer the leader lost (timeout, connection reset, store restart) is never "
    "reconciled: drained inbox notifications are gone, and a Lease/Promote/Expire (or the "
    "RaiseEpoch/Rebuild of an election) in flight stays pending in the scheduler's cache while "
    "the task waits in the store forever"
)
CORE_B = (
    "core-B: WorkerPool.start raises RuntimeError on a newer attempt of a task whose older attempt "
    "still runs on the node (it lost its lease); node/runtime.py's take loop dies with it"
)
BUGS = {"core-A": CORE_A, "core-B": CORE_B}


def signature(result: RunResult) -> str | None:
    """The known bug a failed run shows, if any."""
    v = result.violation
    if v is None:
        return None
    if v.invariant == 1 and "DIAGNOSIS: the leader's cache is out of sync" in v.message:
        return CORE_A
    if v.invariant == 0 and "already runs here" in v.message:
        return CORE_B
    return None


def xfail_known(result: RunResult, expected: str | None = None, what: str = "") -> None:
    """Xfail if the run fails with a known bug; fail if `expected` no longer shows."""
    bug = signature(result)
    if expected is not None and bug != expected:
        if result.violation is None:
            pytest.fail(f"{what} no longer shows {expected.split(':')[0]}: remove its marker")
        return  # failed some other way: the caller's assertion reports it
    if bug is not None:
        pytest.xfail(bug)
