"""What a campaign tells people: a summary table, a JSON summary, charts, violation reports."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from typing import Any

from sim.campaign import Campaign, ScenarioSummary, percentile
from sim.checker import INVARIANTS
from sim.config import SimConfig
from sim.trace import format_line
from sim.world import RunResult


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def summary_rows(campaign: Campaign) -> list[dict[str, Any]]:
    rows = []
    for name, s in campaign.summaries.items():
        rows.append(
            {
                "scenario": name,
                "seeds": s.runs,
                "violations": s.violations,
                "violating_seeds": s.violating_seeds[:20],
                "acked": s.acked,
                "completed": s.completed,
                "dead": s.dead,
                "cancelled": s.cancelled,
                "retried_by_hand": s.retried_by_hand,
                "ran_cancelled": s.ran_cancelled,
                "executions": s.executions,
                "duplicates": s.duplicates,
                "overlaps": s.overlaps,
                "lost_acked": s.lost_acked,
                "gave_up": s.gave_up,
                "fenced_writes": s.fenced_writes,
                "failovers": len(s.failovers_s),
                "failover_p50_s": percentile(s.failovers_s, 50),
                "failover_p99_s": percentile(s.failovers_s, 99),
                "drain_p99_s": percentile(s.drains_s, 99),
                "sim_s": round(s.sim_s, 3),
                "cpu_s": round(s.wall_s, 3),
                "lifecycles_per_cpu_s": round(s.lifecycles / s.wall_s, 1) if s.wall_s else None,
            }
        )
    return rows


def format_table(campaign: Campaign) -> str:
    header = (
        f"{'scenario':<16} {'seeds':>5} {'viol':>4} {'acked':>8} {'completed':>9} {'dead':>6} "
        f"{'cxl':>5} "
        f"{'dups':>6} {'ovl':>4} {'lost':>5} {'fo':>4} {'fo p50':>7} {'fo p99':>7} {'lc/cpu-s':>9}"
    )
    lines = [header, "-" * len(header)]
    total = ScenarioSummary("all")
    for row, s in zip(summary_rows(campaign), campaign.summaries.values(), strict=True):
        lines.append(_row(row))
        for r in campaign.results:
            if r.scenario == s.scenario:
                total.add(r)
    if len(campaign.summaries) > 1:
        lines.append("-" * len(header))
        lines.append(_row(summary_rows(Campaign([], {"all": total}, 0, 1))[0]))
    seeds = len(campaign.results)
    lifecycles = sum(s.lifecycles for s in campaign.summaries.values())
    wall = campaign.wall_s
    lines.append("")
    lines.append(
        f"{seeds} seeds in {wall:.1f} s wall ({campaign.jobs} jobs): "
        f"{seeds / wall * 60 if wall else 0:.0f} seeds/min, "
        f"{lifecycles / wall if wall else 0:.0f} task lifecycles/s; "
        "cxl = cancelled by a client (and not retried by hand after); "
        "fo = failovers (leader lost -> first lease by the next leader), in ms; "
        "ovl = a newer attempt started while an older one's handler still ran (lease lapsed)"
    )
    return "\n".join(lines)


def _row(row: dict[str, Any]) -> str:
    lc = row["lifecycles_per_cpu_s"]
    return (
        f"{row['scenario'][:16]:<16} {row['seeds']:>5} {row['violations']:>4} {row['acked']:>8} "
        f"{row['completed']:>9} {row['dead']:>6} {row['cancelled']:>5} "
        f"{row['duplicates']:>6} {row['overlaps']:>4} "
        f"{row['lost_acked']:>5} "
        f"{row['failovers']:>4} {_ms(row['failover_p50_s']):>7} {_ms(row['failover_p99_s']):>7} "
        f"{'-' if lc is None else f'{lc:.0f}':>9}"
    )


def replay_command(config: SimConfig) -> str:
    parts = ["python -m sim"]
    if config.script:
        parts.append(f"--script {config.script}")
    else:
        parts.append(f"--scenario {config.scenario}")
    parts.append(f"--seed {config.seed}")
    default = SimConfig()
    for flag, name in (
        ("--nodes", "nodes"),
        ("--workers", "workers"),
        ("--duration", "duration_s"),
        ("--fsync", "fsync"),
        ("--lease-ms", "lease_ms"),
        ("--raft", "raft"),
        ("--raft-journal", "raft_journal"),
        ("--liveness", "liveness_s"),
    ):
        value = getattr(config, name)
        if value != getattr(default, name):
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    if config.load.rate_per_s != default.load.rate_per_s:
        parts.append(f"--rate {config.load.rate_per_s:g}")
    if config.unsafe_no_fencing:
        parts.append("--unsafe-no-fencing")
    if config.unsafe_ack_before_store:
        parts.append("--unsafe-ack-before-store")
    return " ".join(parts)


def format_violation(result: RunResult, config: SimConfig, events: int = 40) -> str:
    v = result.violation
    assert v is not None
    lines = [
        f"VIOLATION of invariant {v.invariant} ({INVARIANTS.get(v.invariant, '?')})",
        f"  scenario {result.scenario}, seed {result.seed}, at t={v.at_s:.3f} s "
        f"(raft: {result.raft})",
        f"  {v.message}",
        "  fault plan:",
        *("    " + line for line in (result.plan or "(none)").splitlines()),
    ]
    # The events of the tasks the message names (as far back as the kept ring goes), then the
    # last few events of all.
    named = list(dict.fromkeys(re.findall(r"\bt\d{6}\b", v.message)))[:3]
    if named:
        pattern = re.compile(r"\b(" + "|".join(named) + r")\b| fault | role | epoch ")
        related = [line for line in v.events if pattern.search(line)][-events:]
        lines.append(f"  events of {', '.join(named)} (and faults, roles, epochs):")
        lines += ["    " + format_line(line) for line in related]
    lines.append(f"  the last {min(events, len(v.events))} events:")
    lines += ["    " + format_line(line) for line in v.events[-events:]]
    lines.append(f"  replay: {replay_command(config)} --trace")
    return "\n".join(lines)


def write_json(campaign: Campaign, out_dir: str, config: SimConfig) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "summary.json")
    data = {
        "config": config.to_json(),
        "seeds": len(campaign.results),
        "wall_s": round(campaign.wall_s, 3),
        "jobs": campaign.jobs,
        "seeds_per_min": round(len(campaign.results) / campaign.wall_s * 60, 1)
        if campaign.wall_s
        else None,
        "lifecycles_per_s": round(
            sum(s.lifecycles for s in campaign.summaries.values()) / campaign.wall_s, 1
        )
        if campaign.wall_s
        else None,
        "scenarios": summary_rows(campaign),
        "violations": [
            {
                "scenario": r.scenario,
                "seed": r.seed,
                "invariant": r.violation.invariant,
                "message": r.violation.message,
                "at_s": r.violation.at_s,
                "events": r.violation.events,
                "plan": r.plan,
            }
            for r in campaign.violations
            if r.violation is not None
        ],
        "runs": [
            {k: v for k, v in asdict(r).items() if k not in ("series", "trace", "violation")}
            for r in campaign.results
        ],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    return path


# ---------------------------------------------------------------------- charts
def write_charts(campaign: Campaign, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    shown: set[str] = set()
    for r in campaign.results:
        if r.scenario in shown or not r.series.get("t"):
            continue
        shown.add(r.scenario)
        paths.append(_timeline(plt, r, out_dir))
    paths.append(_failovers(plt, campaign, out_dir))
    return paths


FAULT_COLORS = {
    "crash": "#d62728",
    "stop": "#ff7f0e",
    "pause": "#9467bd",
    "partition": "#8c564b",
    "store": "#1f77b4",
    "network": "#7f7f7f",
    "handlers": "#bcbd22",
}


def _shade(ax: Any, windows: list[tuple[float, float, str]]) -> None:
    for start, end, label in windows:
        color = FAULT_COLORS.get(label.split()[0], "#7f7f7f")
        ax.axvspan(start, max(end, start + 0.05), color=color, alpha=0.15, lw=0)


def _timeline(plt: Any, r: RunResult, out_dir: str) -> str:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    s = r.series
    t = s["t"]
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True, constrained_layout=True)
    # Throughput: completions per second between samples.
    done = s["completed"]
    rate = [0.0] + [
        (done[i] - done[i - 1]) / (t[i] - t[i - 1]) if t[i] > t[i - 1] else 0.0
        for i in range(1, len(t))
    ]
    axes[0].plot(t, rate, color="#2ca02c", lw=1.2)
    axes[0].set_ylabel("completed / s")
    axes[0].set_title(
        f"{os.path.basename(r.scenario)}, seed {r.seed}: {r.acked} acknowledged, "
        f"{r.completed} completed, {r.duplicates} duplicates"
        + (f", VIOLATION of invariant {r.violation.invariant}" if r.violation else "")
    )
    for label, color in (("high", "#d62728"), ("medium", "#ff7f0e"), ("low", "#1f77b4")):
        axes[1].plot(t, s[label], label=label, color=color, lw=1.2)
    axes[1].set_ylabel("leader's queue")
    axes[1].legend(loc="upper right", title="priority", fontsize=8)
    axes[2].plot(t, s["running"], color="#9467bd", lw=1.2)
    axes[2].set_ylabel("running tasks")
    axes[2].set_xlabel("simulated time (s)")
    for ax in axes:
        _shade(ax, r.fault_windows)
        ax.axvline(r.duration_s, color="black", ls="--", lw=0.8)
        ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
        ax.grid(alpha=0.3)
    kinds = sorted({w[2].split()[0] for w in r.fault_windows})
    handles: list[Any] = [
        Patch(color=FAULT_COLORS.get(k, "#7f7f7f"), alpha=0.3, label=k) for k in kinds
    ]
    handles.append(Line2D([], [], color="black", ls="--", lw=0.8, label="load stops"))
    axes[2].legend(handles=handles, loc="upper right", fontsize=8, title="faults")
    name = os.path.basename(r.scenario).replace(".txt", "")
    path = os.path.join(out_dir, f"timeline-{name}.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _failovers(plt: Any, campaign: Campaign, out_dir: str) -> str:
    fig, ax = plt.subplots(figsize=(9, 4.5), constrained_layout=True)
    data = [(name, [x * 1000 for x in s.failovers_s]) for name, s in campaign.summaries.items()]
    data = [(name, values) for name, values in data if values]
    if data:
        ax.boxplot([v for _, v in data], showfliers=True)
        ax.set_xticks(range(1, len(data) + 1), [f"{n}\n(n={len(v)})" for n, v in data])
        ax.set_ylabel("failover (ms): leader lost -> first lease by the next leader")
        ax.grid(alpha=0.3, axis="y")
    else:
        ax.text(0.5, 0.5, "no failovers in this campaign", ha="center", va="center")
    ax.set_title("failover time by scenario")
    path = os.path.join(out_dir, "failover.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
