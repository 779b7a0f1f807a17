"""``python -m sim``: run a fault-injection campaign over the scheduler core and report.

With no flags: a short default campaign over every scenario. A violation prints its seed, the
invariant, the events that led to it and the command that replays it; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sim.campaign import configs_for, default_jobs, run_campaign
from sim.config import SCENARIOS, LoadConfig, SimConfig
from sim.faults import apply_settings, parse_script
from sim.report import format_table, format_violation, write_charts, write_json
from sim.trace import format_line
from sim.world import run_one

# The default campaign: every scenario, this many seeds each, short runs.
DEFAULT_SEEDS = 30
DEFAULT_DURATION_S = 12.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim", description=__doc__)
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    p.add_argument("--script", help="a scripted scenario file (tests/scenarios/*.txt)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--seeds", type=int, help=f"seeds per scenario (default {DEFAULT_SEEDS})")
    group.add_argument("--seed", type=int, help="run this one seed")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from this one up")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--workers", type=int, default=5, help="worker slots per node")
    p.add_argument("--rate", type=float, default=LoadConfig().rate_per_s, help="tasks/s")
    p.add_argument("--duration", type=float, help="seconds of load per run")
    p.add_argument(
        "--liveness",
        type=float,
        default=SimConfig().liveness_s,
        help="seconds the cluster gets to finish after faults heal",
    )
    p.add_argument("--fsync", choices=["always", "everysec"], default="always")
    p.add_argument("--lease-ms", type=int, default=SimConfig().lease_ms)
    p.add_argument(
        "--raft",
        choices=["pysyncobj", "model"],
        default="pysyncobj",
        help="real pysyncobj under simulated time, or the election model",
    )
    p.add_argument(
        "--raft-journal",
        choices=["memory", "disk"],
        default="memory",
        help="Raft state across a restart: memory (as the node ships) or disk (kept)",
    )
    p.add_argument("--jobs", type=int, default=default_jobs(), help="processes")
    p.add_argument("--out", help="write summary.json and charts (PNG) here")
    p.add_argument("--trace", action="store_true", help="print the full event trace (--seed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (CI)")
    p.add_argument(
        "--unsafe-no-fencing",
        action="store_true",
        help="MUTATION: the store skips the epoch check (the checker must catch it)",
    )
    p.add_argument(
        "--unsafe-ack-before-store",
        action="store_true",
        help="MUTATION: nodes acknowledge submissions before the store has them",
    )
    return p


def base_config(args: argparse.Namespace) -> SimConfig:
    config = SimConfig(
        nodes=args.nodes,
        workers=args.workers,
        duration_s=args.duration or DEFAULT_DURATION_S,
        liveness_s=args.liveness,
        fsync=args.fsync,
        lease_ms=args.lease_ms,
        raft=args.raft,
        raft_journal=args.raft_journal,
        load=LoadConfig(rate_per_s=args.rate),
        unsafe_no_fencing=args.unsafe_no_fencing,
        unsafe_ack_before_store=args.unsafe_ack_before_store,
        keep_trace=args.trace,
    )
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            settings, _ = parse_script(f.read())
        config = apply_settings(config.with_(script=args.script), settings)
        if args.duration:
            config = config.with_(duration_s=args.duration)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.trace and args.seed is None:
        print("--trace replays one run: give --seed", file=sys.stderr)
        return 2
    base = base_config(args)
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    if base.raft == "model" and "membership" in scenarios:
        if args.scenario == "membership":
            print("the membership scenario needs --raft pysyncobj", file=sys.stderr)
            return 2
        scenarios.remove("membership")  # the election model has no membership changes
    if args.script:
        scenarios = [base.scenario]
    if args.seed is not None:
        seeds = [args.seed]
    elif args.script and args.seeds is None:
        seeds = [base.seed]  # the script's own seed
    else:
        count = args.seeds if args.seeds is not None else DEFAULT_SEEDS
        seeds = list(range(args.first_seed, args.first_seed + count))

    if args.trace:
        status = 0
        for scenario in scenarios:
            config = base.with_(scenario=scenario, seed=args.seed)
            result = run_one(config)
            print(
                f"# {scenario} seed {args.seed}: trace {result.trace_hash} "
                f"({result.events} events, raft: {result.raft})"
            )
            print("# fault plan:\n" + "\n".join("#   " + ln for ln in result.plan.splitlines()))
            for line in result.trace:
                print(format_line(line))
            if result.violation is not None:
                print(format_violation(result, config), file=sys.stderr)
                status = 1
        return status

    configs = configs_for(base, scenarios, seeds)
    first_seed = seeds[0]
    campaign = run_campaign(
        configs,
        jobs=args.jobs,
        progress=not args.no_progress,
        keep_series_for=lambda c: bool(args.out) and c.seed == first_seed,
    )
    print(format_table(campaign))
    if args.out:
        path = write_json(campaign, args.out, base)
        charts = write_charts(campaign, args.out)
        print(f"\nwrote {path} and {len(charts)} charts in {args.out}")
    bad = campaign.violations
    if bad:
        by_key = {(c.label, c.seed): c for c in configs}
        print(
            f"\n{len(bad)} of {len(campaign.results)} runs violated an invariant:", file=sys.stderr
        )
        for result in bad[:5]:
            config = by_key.get((result.scenario, result.seed), base)
            print(format_violation(result, config), file=sys.stderr)
            print(file=sys.stderr)
        if len(bad) > 5:
            seeds_left = ", ".join(f"{r.scenario}:{r.seed}" for r in bad[5:25])
            print(f"... and {len(bad) - 5} more: {seeds_left}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
