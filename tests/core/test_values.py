"""core.values.value: frozen dataclasses to the type checker, cheaper ones at run time."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from core.priority import Priority
from core.task import Status, TaskState


def test_equal_fields_make_equal_values_with_equal_hashes() -> None:
    a = TaskState("t1", "noop", Priority.HIGH, 7, Status.QUEUED, depends_on=("d",))
    b = TaskState("t1", "noop", Priority.HIGH, 7, Status.QUEUED, depends_on=("d",))
    c = TaskState("t1", "noop", Priority.HIGH, 7, Status.RUNNING, depends_on=("d",))
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2
    assert not hasattr(a, "__dict__")  # slotted: no per-instance dict


def test_the_type_checker_refuses_an_assignment_to_a_field(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "assign.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from core.priority import Priority
            from core.task import Status, TaskState

            s = TaskState("t1", "noop", Priority.HIGH, 7, Status.QUEUED)
            s.status = Status.RUNNING
            """
        )
    )
    root = Path(__file__).resolve().parents[2]
    config = str(root / "pyproject.toml")
    out, _, code = api.run(["--strict", "--no-incremental", "--config-file", config, str(snippet)])
    assert code == 1, out
    assert "read-only" in out and "assign.py:6" in out, out
