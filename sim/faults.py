"""Fault plans: what goes wrong, and when. Generated from a seed per scenario, or read from a
scripted scenario file; both are the same list of steps, printable in the same text format.

Text format (one step per line; ``#`` starts a comment; times in simulated seconds)::

    set duration=12 rate=80 fsync=always      # run settings (any SimConfig field)
    at 2.0 crash leader                       # leader | a node number (1-based)
    at 4.5 restart crashed                    # crashed: the node crashed earliest and still down
    at 5 stop 2                               # graceful stop (rolling restart), then down
    at 6 pause leader                         # frozen: no loop, handler or Raft tick moves
    at 9 resume paused
    at 10 partition {1} from {2,3}            # symmetric; `one-way` at the end: only 1 -> 2,3
    at 10 partition {leader} from {others,store}
    at 12 heal                                # the oldest partition; `heal all`
    at 13 store down                          # store restart: down until `store up`
    at 15 store up
    at 16 net drop=0.02 jitter=0.004          # store links get lossy; `net normal`
    at 17 handlers 3 slow=8 fail=0.3          # node 3's handlers: slower, failing; `normal`
    at 18 skew 2 -35                          # node 2's clock, in ms
    at 3 join                                 # a new node starts and is added to Raft
    at 11 leave leader                        # removed from Raft, then stopped for good

Every fault is healed by a later step; the world checks liveness from the last heal on.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sim.config import SimConfig

# In the random scenario, the share of runs with a join, and (drawn apart) with a leave.
MEMBERSHIP_SHARE = 0.25


class ScriptError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Step:
    at_s: float
    verb: str
    args: tuple[str, ...] = ()

    def text(self) -> str:
        return f"at {self.at_s:g} {' '.join((self.verb, *self.args))}"


VERBS = {
    "crash",
    "stop",
    "restart",
    "pause",
    "resume",
    "partition",
    "heal",
    "store",
    "net",
    "handlers",
    "skew",
    "join",
    "leave",
}


def is_heal(step: Step) -> bool:
    if step.verb in ("restart", "resume", "heal", "join", "leave"):
        return True
    if step.verb == "store":
        return step.args[:1] == ("up",)
    if step.verb in ("net", "handlers"):
        return "normal" in step.args
    return False


# ---------------------------------------------------------------------- text
_AT = re.compile(r"^at\s+([0-9]*\.?[0-9]+)\s+(\S+)\s*(.*)$")


def parse_script(text: str) -> tuple[dict[str, str], list[Step]]:
    """Parse a scenario file: (settings, steps in time order)."""
    settings: dict[str, str] = {}
    steps: list[Step] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("set "):
            for item in line[4:].split():
                key, sep, value = item.partition("=")
                if not sep:
                    raise ScriptError(f"line {lineno}: expected key=value, got {item!r}")
                settings[key.replace("-", "_")] = value
            continue
        match = _AT.match(line)
        if match is None:
            raise ScriptError(f"line {lineno}: expected 'at <seconds> <verb> ...': {raw!r}")
        verb = match.group(2)
        if verb not in VERBS:
            raise ScriptError(f"line {lineno}: unknown verb {verb!r}; one of {sorted(VERBS)}")
        args = tuple(_split_args(match.group(3)))
        steps.append(Step(float(match.group(1)), verb, args))
    steps.sort(key=lambda s: s.at_s)  # stable: same-time steps keep their file order
    return settings, steps


def _split_args(rest: str) -> Iterable[str]:
    # "{1} from {2,3} one-way" -> "{1}", "from", "{2,3}", "one-way"
    return re.findall(r"\{[^}]*\}|\S+", rest)


def format_plan(steps: Iterable[Step]) -> str:
    return "\n".join(step.text() for step in steps)


def apply_settings(config: SimConfig, settings: dict[str, str]) -> SimConfig:
    """Apply a script's `set` line to a config (numbers and words, as the fields' types)."""
    changes: dict[str, Any] = {}
    load_changes: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "rate":
            load_changes["rate_per_s"] = float(value)
            continue
        if key == "duration":
            key = "duration_s"
        if key in SimConfig.__dataclass_fields__ and key != "load":
            changes[key] = _typed(getattr(config, key), value)
        elif key in config.load.__dataclass_fields__:  # the load's own (run_median_s, ...)
            load_changes[key] = _typed(getattr(config.load, key), value)
        else:
            raise ScriptError(f"unknown setting {key!r}")
    if load_changes:
        changes["load"] = config.load.__class__(**{**_fields(config.load), **load_changes})
    return config.with_(**changes)


def _typed(current: Any, value: str) -> Any:
    """A setting's text as the type of the field's current value."""
    try:
        if isinstance(current, bool):
            return value.lower() in ("1", "true", "yes")
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
    except ValueError:
        raise ScriptError(f"setting {value!r} is not a {type(current).__name__}") from None
    return value


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


# ---------------------------------------------------------------------- generated plans
def generate(config: SimConfig, rng: random.Random) -> list[Step]:
    """A seeded fault plan for the config's scenario, inside the fault window."""
    start = config.fault_start_s
    end = config.fault_end_s
    if end - start < 1.0:
        return []
    make = _SCENARIOS[config.scenario]
    steps = make(config, rng, start, end)
    steps = [s for s in steps if s.at_s <= end]
    steps.sort(key=lambda s: s.at_s)
    return steps


def _round(t: float) -> float:
    # Millisecond steps: the plan prints and reparses to the same floats.
    return round(t, 3)


def _sequential(
    rng: random.Random, start: float, end: float, count: int, make_one: Any
) -> list[Step]:
    """`count` faults one after another, each healed before the next begins."""
    steps: list[Step] = []
    span = (end - start) / max(1, count)
    for k in range(count):
        lo = start + k * span
        at = _round(lo + rng.uniform(0.0, span * 0.3))
        budget = lo + span - at
        steps += make_one(at, budget)
    return steps


def _leader_crash(cfg: SimConfig, rng: random.Random, start: float, end: float) -> list[Step]:
    lo, hi = cfg.node_down_s

    def one(at: float, budget: float) -> list[Step]:
        down = min(rng.uniform(lo, hi), budget * 0.8)
        return [Step(at, "crash", ("leader",)), Step(_round(at + down), "restart", ("crashed",))]

    return _sequential(rng, start, end, rng.randint(1, 3), one)


def _partition(cfg: SimConfig, rng: random.Random, start: float, end: float) -> list[Step]:
    n = cfg.nodes

    def one(at: float, budget: float) -> list[Step]:
        kind = rng.randrange(5)
        if kind == 0:  # the leader alone, from the other nodes (it still reaches the store)
            args: tuple[str, ...] = ("{leader}", "from", "{others}")
        elif kind == 1:  # the leader from everything
            args = ("{leader}", "from", "{others,store}")
        elif kind == 2:  # the leader can send but not hear (its heartbeats still go out)
            args = ("{others}", "from", "{leader}", "one-way")
        elif kind == 3:  # the leader cannot be heard (followers elect; it keeps writing)
            args = ("{leader}", "from", "{others}", "one-way")
        else:  # a random node from the store
            args = (f"{{{rng.randint(1, n)}}}", "from", "{store}")
        heal = _round(at + min(rng.uniform(0.5, 4.0), budget * 0.8))
        return [Step(at, "partition", args), Step(heal, "heal")]

    return _sequential(rng, start, end, rng.randint(1, 3), one)


def _flaky_network(cfg: SimConfig, rng: random.Random, start: float, end: float) -> list[Step]:
    drop = rng.choice((0.005, 0.02, 0.05))
    jitter = rng.choice((0.002, 0.01, 0.03))
    bad_end = _round(rng.uniform(start + (end - start) * 0.5, end - 0.2))
    steps = [
        Step(_round(start), "net", (f"drop={drop}", f"jitter={jitter}")),
        Step(bad_end, "net", ("normal",)),
    ]
    # Short flaps of single links between nodes while the store links are lossy.
    t = start + rng.uniform(0.2, 1.0)
    while t < bad_end - 0.5:
        a = rng.randint(1, cfg.nodes)
        b = rng.randint(1, cfg.nodes)
        if a != b:
            flap = rng.uniform(0.1, 0.6)
            steps.append(Step(_round(t), "partition", (f"{{{a}}}", "from", f"{{{b}}}")))
            steps.append(Step(_round(t + flap), "heal"))
            t += flap
        t += rng.uniform(0.5, 2.5)
    return steps


def _store_restart(cfg: SimConfig, rng: random.Random, start: float, end: float) -> list[Step]:
    lo, hi = cfg.store_down_s

    def one(at: float, budget: float) -> list[Step]:
        down = min(rng.uniform(lo, hi), budget * 0.8)
        return [Step(at, "store", ("down",)), Step(_round(at + down), "store", ("up",))]

    return _sequential(rng, start, end, rng.randint(1, 2), one)


def _rolling_restart(cfg: SimConfig, rng: random.Random, start: float, end: float) -> list[Step]:
    steps: list[Step] = []
    span = (end - start) / cfg.nodes
    order = list(range(1, cfg.nodes + 1))
    rng.shuffle(order)
    for k, node in enumerate(order):
        at = _round(start + k * span + rng.uniform(0.0, span * 0.2))
        grace = rng.choice(("0.5", "1", "2"))
        steps.append(Step(at, "stop", (str(node), grace)))
        steps.append(
            Step(_round(at + min(span * 0.7, float(grace) + 1.5)), "restart", (str(node),))
        )
    return steps


def _pause(cfg: SimConfig, rng: random.Random, start: float, end: float) -> list[Step]:
    def one(at: float, budget: float) -> list[Step]:
        # Long enough to be deposed (elections take well under a second); sometimes past the
        # lease too, so its tasks run again elsewhere while it sleeps.
        target = "leader" if rng.random() < 0.8 else str(rng.randint(1, cfg.nodes))
        pause = min(rng.uniform(1.0, 2.0 * cfg.lease_ms / 1000), budget * 0.8)
        return [Step(at, "pause", (target,)), Step(_round(at + pause), "resume", ("paused",))]

    return _sequential(rng, start, end, rng.randint(1, 2), one)


def _random(cfg: SimConfig, rng: random.Random, start: float, end: float) -> list[Step]:
    """A mix of everything; up to two faults overlap."""
    steps: list[Step] = []
    t = start
    n = cfg.nodes
    while t < end - 1.0:
        kind = rng.randrange(8)
        length = min(rng.uniform(0.5, 4.0), end - t - 0.1)
        stop = _round(t + length)
        at = _round(t)
        node = str(rng.randint(1, n))
        target = "leader" if rng.random() < 0.5 else node
        if kind == 0:
            steps += [Step(at, "crash", (target,)), Step(stop, "restart", ("crashed",))]
        elif kind == 1:
            steps += [Step(at, "pause", (target,)), Step(stop, "resume", ("paused",))]
        elif kind == 2:
            side = "{leader}" if target == "leader" else f"{{{node}}}"
            far = rng.choice(("{others}", "{others,store}", "{store}"))
            way = ("one-way",) if rng.random() < 0.3 else ()
            steps += [Step(at, "partition", (side, "from", far, *way)), Step(stop, "heal")]
        elif kind == 3:
            steps += [Step(at, "store", ("down",)), Step(stop, "store", ("up",))]
        elif kind == 4:
            drop = rng.choice(("0.01", "0.03"))
            steps += [
                Step(at, "net", (f"drop={drop}", "jitter=0.01")),
                Step(stop, "net", ("normal",)),
            ]
        elif kind == 5:
            slow = rng.choice(("3", "10"))
            fail = rng.choice(("0", "0.3"))
            steps += [
                Step(at, "handlers", (node, f"slow={slow}", f"fail={fail}")),
                Step(stop, "handlers", (node, "normal")),
            ]
        elif kind == 6:
            steps.append(
                Step(at, "skew", (node, str(rng.randint(-cfg.skew_ms_max, cfg.skew_ms_max))))
            )
        else:
            grace = rng.choice(("0.5", "1"))
            steps += [Step(at, "stop", (node, grace)), Step(stop, "restart", (node,))]
        # Overlap sometimes: the next fault may start before this one heals.
        t += length * (0.5 if rng.random() < 0.3 else 1.0) + rng.uniform(0.2, 1.5)
    if cfg.raft == "pysyncobj":
        steps += _random_membership(cfg, start, end)
    return steps


def _random_membership(cfg: SimConfig, start: float, end: float) -> list[Step]:
    """Now and then a join and a leave among the random faults: a stream of its own, so the
    other faults stay as the seed drew them."""
    rng = random.Random(f"{cfg.seed}:membership")
    steps: list[Step] = []
    if rng.random() < MEMBERSHIP_SHARE:
        steps.append(Step(_round(rng.uniform(start, end - 0.5)), "join"))
    if rng.random() < MEMBERSHIP_SHARE:
        target = rng.choice(("leader", "crashed", str(rng.randint(1, cfg.nodes))))
        steps.append(Step(_round(rng.uniform(start, end - 0.5)), "leave", (target,)))
    return steps


def _membership(cfg: SimConfig, rng: random.Random, start: float, end: float) -> list[Step]:
    """A node joins, the cluster takes one fault with the newcomer in it, then a member leaves
    (the leader half the time: it hands over first); or the crashed leader is removed while
    down (a dead node replaced)."""
    span = end - start
    steps = [Step(_round(start + rng.uniform(0.0, 0.1 * span)), "join")]
    at = _round(start + span * (0.35 + rng.uniform(0.0, 0.1)))
    stop = _round(at + min(rng.uniform(*cfg.node_down_s), span * 0.2))
    kind = rng.randrange(4)
    if kind == 0:
        steps += [Step(at, "crash", ("leader",)), Step(stop, "restart", ("crashed",))]
    elif kind == 1:
        steps += [Step(at, "partition", ("{leader}", "from", "{others}")), Step(stop, "heal")]
    elif kind == 2:
        steps += [Step(at, "pause", ("leader",)), Step(stop, "resume", ("paused",))]
    else:
        return [*steps, Step(at, "crash", ("leader",)), Step(stop, "leave", ("crashed",))]
    target = "leader" if rng.random() < 0.5 else str(rng.randint(1, cfg.nodes + 1))
    steps.append(Step(_round(start + span * (0.7 + rng.uniform(0.0, 0.1))), "leave", (target,)))
    return steps


_SCENARIOS = {
    "leader-crash": _leader_crash,
    "partition": _partition,
    "flaky-network": _flaky_network,
    "store-restart": _store_restart,
    "rolling-restart": _rolling_restart,
    "pause": _pause,
    "random": _random,
    "membership": _membership,
}
