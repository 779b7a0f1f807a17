"""The checker catches real bugs: with a safety mechanism switched off (simulation-only switches),
a violation is found within a bounded number of seeds.

* --unsafe-no-fencing: the store ignores the epoch, so a deposed leader (partitioned away, or
  paused past its election timeout) keeps draining the inbox and writing leases after a newer
  leader raised the epoch: invariant 3 (or 2).
* --unsafe-ack-before-store: a node answers 201 before the store has the task; a store restart
  then loses acknowledged tasks outright: invariant 1.
* A retry by hand that starts the task's attempts over (a store model patched here, as a Lua
  script could be written): the attempt is a completion's fencing token, so a reused one would
  let a cancelled handler's late completion pass for the new attempt's: invariant 2 (or 5, the
  attempt after a retry by hand is not the next one).
"""

from __future__ import annotations

import pytest

import sim.store
from core.store_model import StoreModel, TaskRecord
from sim.config import LoadConfig, SimConfig
from sim.world import RunResult, run_one

SEEDS_MAX = 12
BASE = SimConfig(duration_s=6.0, liveness_s=10.0)


def first_violation(config: SimConfig, invariants: set[int]) -> RunResult | None:
    for seed in range(SEEDS_MAX):
        result = run_one(config.with_(seed=seed))
        if result.violation is not None and result.violation.invariant in invariants:
            return result
    return None


@pytest.mark.parametrize("scenario", ["partition", "pause"])
def test_no_fencing_is_caught(scenario: str) -> None:
    found = first_violation(BASE.with_(scenario=scenario, unsafe_no_fencing=True), {2, 3})
    assert found is not None, f"{scenario}: no violation in {SEEDS_MAX} seeds without fencing"
    assert found.violation is not None
    assert "applied after epoch" in found.violation.message or found.violation.invariant == 2
    # The same seed with fencing on is clean.
    safe = run_one(BASE.with_(scenario=scenario, seed=found.seed))
    assert safe.violation is None or safe.violation.invariant not in (2, 3)


def test_ack_before_store_is_caught() -> None:
    config = BASE.with_(scenario="store-restart", unsafe_ack_before_store=True)
    found = first_violation(config, {1})
    assert found is not None and found.violation is not None
    assert "absent from the store" in found.violation.message


class RetryStartsAttemptsOver(StoreModel):
    def retry(self, task_id: str, now_ms: int) -> TaskRecord | None:
        record = super().retry(task_id, now_ms)
        if record is not None and not record.status.terminal:
            record.attempt = 0
        return record


def test_retry_that_reuses_attempts_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    config = BASE.with_(scenario="random", load=LoadConfig(cancel_p=0.2))
    monkeypatch.setattr(sim.store, "StoreModel", RetryStartsAttemptsOver)
    found = first_violation(config, {2, 5})
    assert found is not None and found.violation is not None
    message = found.violation.message
    assert "leased as attempt" in message or "retried by hand after attempt" in message
    monkeypatch.undo()
    assert run_one(config.with_(seed=found.seed)).violation is None
