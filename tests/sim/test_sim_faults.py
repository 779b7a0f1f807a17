"""Fault plans: the script format parses and prints back, and generated plans heal every fault."""

from __future__ import annotations

import random

import pytest

from sim.config import SCENARIOS, SimConfig
from sim.faults import ScriptError, Step, apply_settings, format_plan, generate, parse_script
from sim.scripted import script_config, script_paths

SCRIPT = """
# a comment
set duration=12 rate=80 fsync=everysec seed=3
at 2 crash leader        # trailing comment
at 4.5 restart crashed
at 5 partition {1} from {2,3} one-way
at 6 heal
at 7 net drop=0.02 jitter=0.004
at 8 net normal
"""


def test_script_parses_and_prints_back() -> None:
    settings, steps = parse_script(SCRIPT)
    assert settings == {"duration": "12", "rate": "80", "fsync": "everysec", "seed": "3"}
    assert steps[0] == Step(2.0, "crash", ("leader",))
    assert steps[2] == Step(5.0, "partition", ("{1}", "from", "{2,3}", "one-way"))
    assert parse_script(format_plan(steps))[1] == steps


def test_settings_apply_to_the_config() -> None:
    settings, _ = parse_script(SCRIPT)
    config = apply_settings(SimConfig(), settings)
    assert (config.duration_s, config.load.rate_per_s, config.fsync, config.seed) == (
        12.0,
        80.0,
        "everysec",
        3,
    )


@pytest.mark.parametrize("bad", ["at x crash 1", "at 1 explode 2", "set duration"])
def test_bad_lines_are_refused(bad: str) -> None:
    with pytest.raises(ScriptError):
        parse_script(bad)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_generated_plans_are_seeded_and_heal_every_fault(scenario: str) -> None:
    config = SimConfig(scenario=scenario, duration_s=20.0)
    plans = [format_plan(generate(config, random.Random(f"{seed}:faults"))) for seed in (1, 1, 2)]
    assert plans[0] == plans[1]
    steps = generate(config, random.Random("5:faults"))
    assert steps, f"{scenario}: no faults"
    assert all(config.fault_start_s <= s.at_s <= config.fault_end_s for s in steps)
    opened = sum(1 for s in steps if s.verb in ("crash", "stop", "pause", "partition"))
    opened += sum(1 for s in steps if s.verb == "store" and s.args[0] == "down")
    healed = sum(1 for s in steps if s.verb in ("restart", "resume", "heal"))
    if scenario == "membership":  # the crashed leader is removed while down: no restart
        healed += sum(1 for s in steps if s.verb == "leave" and s.args == ("crashed",))
    healed += sum(1 for s in steps if s.verb == "store" and s.args[0] == "up")
    assert opened == healed
    assert parse_script(format_plan(steps))[1] == steps


def test_every_scenario_script_loads() -> None:
    paths = script_paths()
    assert len(paths) >= 8
    for path in paths:
        assert script_config(path).script == path
