"""node.cluster.unsafe_membership_change: the arithmetic the leader checks a change against
(the real-process test in tests/cluster/test_membership.py drives it end to end)."""

from __future__ import annotations

import pytest

from node.cluster import unsafe_membership_change

A, B, C, NEW = "h:1", "h:2", "h:3", "h:4"


@pytest.mark.parametrize(
    ("action", "addr", "heard", "listening", "refused_as"),
    [
        # All three up: any add keeps 3 of 4 reachable.
        ("add", NEW, [A, B, C], False, None),
        # One down: a newcomer not running leaves 2 of 4; one that is up makes 3 of 4.
        ("add", NEW, [A, B], False, "2 of 4"),
        ("add", NEW, [A, B], True, None),
        # One down: removing it leaves 2 of 2; removing a live one leaves 1 of 2.
        ("remove", C, [A, B], False, None),
        ("remove", B, [A, B], False, "1 of 2"),
        # Not a change Raft would make: Raft's own answer, not this rule's.
        ("add", B, [A], False, None),
        ("remove", NEW, [A], False, None),
    ],
)
def test_a_change_is_refused_when_no_reachable_majority_would_remain(
    action: str, addr: str, heard: list[str], listening: bool, refused_as: str | None
) -> None:
    why = unsafe_membership_change(action, addr, [A, B, C], heard, listening)
    if refused_as is None:
        assert why == ""
    else:
        assert f"would leave {refused_as} members reachable" in why
        assert ("start that node first" in why) == (action == "add")


def test_a_lone_member_may_add_a_running_newcomer_only() -> None:
    assert unsafe_membership_change("add", NEW, [A], [A], True) == ""
    assert "1 of 2" in unsafe_membership_change("add", NEW, [A], [A], False)
