"""Shared benchmark helpers: a summary of ratios, printed once at the end of the session.

Benchmarks compare against a baseline measured in the same run (README: figures are ratios), so
absolute times from a shared machine matter less than the lines collected here. A benchmark adds
lines with the ``bench_summary`` fixture; they are printed under one heading after all tests.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

_SUMMARY: list[str] = []


@pytest.fixture
def bench_summary() -> Callable[[str], None]:
    """Add one line to the end-of-session benchmark summary."""
    return _SUMMARY.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SUMMARY:
        terminalreporter.section("benchmark summary (ratios measured in this run)")
        for line in _SUMMARY:
            terminalreporter.write_line(line)
