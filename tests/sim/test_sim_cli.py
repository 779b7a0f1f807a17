"""`python -m sim`: the summary, the JSON and PNG report, exit codes, and --trace replay."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sim.__main__ import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_campaign_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    status = main(
        [
            "--scenario",
            "leader-crash",
            "--seeds",
            "2",
            "--duration",
            "5",
            "--jobs",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert status == 0, text
    assert "leader-crash" in text and "seeds/min" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == 2
    [row] = summary["scenarios"]
    assert row["scenario"] == "leader-crash" and row["violations"] == 0
    assert row["completed"] > 0 and row["failovers"] >= 1 and row["failover_p50_s"] > 0
    for name in ("timeline-leader-crash.png", "failover.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_violation_exits_nonzero_with_seed_and_events(capsys: pytest.CaptureFixture[str]) -> None:
    # Without fencing, a paused leader's stale writes land within a few seeds (see
    # test_sim_mutations); the report names the seed, the invariant and the replay command.
    args = ["--scenario", "pause", "--duration", "6", "--unsafe-no-fencing"]
    status = main([*args, "--seeds", "8", "--jobs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1
    assert "VIOLATION of invariant 3" in err and "fault plan:" in err
    found = re.search(r"replay: python -m sim --scenario pause --seed (\d+) .*--trace", err)
    assert found, err[-3000:]

    status = main([*args, "--seed", found.group(1), "--trace"])
    captured = capsys.readouterr()
    assert status == 1
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"# pause seed {found.group(1)}: trace ")
    assert any(" lease " in line for line in lines) and len(lines) > 1000
    assert "VIOLATION of invariant 3" in captured.err


def test_trace_needs_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--trace"]) == 2
