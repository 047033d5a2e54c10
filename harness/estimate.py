"""Cost estimate for `harness plan` (design D6): what the cells to run will take, from past runs.

A past run counts for a planned cell when it is the same cell with any seed (same method,
dataset, IR, parameters, protocol and method version; under any grid of the run store) and it
completed. Its cost is its training time over all attempts plus its evaluation time.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from harness.config import CellConfig, canonical_json, read_config
from harness.store import read_json


@dataclass(frozen=True)
class PastCost:
    """Wall-clock seconds of one completed run and the device it ran on."""

    seconds: float
    device: str


def cost_key(cfg: CellConfig) -> str:
    """What a cell computes, seed left out: runs with equal keys cost the same."""
    identity = cfg.identity()
    identity.pop("seed")
    return canonical_json(identity)


def past_costs(cfg: CellConfig, runs_dir: Path) -> list[PastCost]:
    """Completed runs of `cfg`'s cell with any seed, under any grid (each folder counted once)."""
    key, seen, costs = cost_key(cfg), set(), []
    for metrics_path in sorted(Path(runs_dir).glob(f"*/{cfg.relative_dir().parent}/seed*-*/metrics.json")):
        folder = metrics_path.parent.resolve()  # a cell reused by another grid is a link
        if folder in seen:
            continue
        seen.add(folder)
        metrics = read_json(metrics_path)
        if not metrics or "train" not in metrics:
            continue
        try:
            same = cost_key(read_config(folder / "config.yaml")) == key
        except Exception:  # an unreadable or foreign config.yaml is simply not evidence
            continue
        if same:
            seconds = metrics["train"].get("seconds", 0.0) + metrics.get("eval_seconds", 0.0)
            costs.append(PastCost(seconds, str(metrics.get("env", {}).get("device", "unknown"))))
    return costs


def format_duration(seconds: float) -> str:
    """Seconds as s, min or h, whichever reads best."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def estimate_lines(cells: list[CellConfig], runs_dir: Path) -> list[str]:
    """Plan lines: per (method, dataset, IR, settings), cells x median past cost, and a total."""
    if not cells:
        return []
    groups: dict[str, list[CellConfig]] = defaultdict(list)
    for cfg in cells:
        groups[cost_key(cfg)].append(cfg)
    lines = ["estimate from past runs of the same cells (any seed, any grid):"]
    total, covered, devices = 0.0, 0, set()
    for group in groups.values():
        first = group[0]
        label = f"  {first.method} {first.dataset} ir{first.ir}: {len(group)} cell(s)"
        costs = past_costs(first, runs_dir)
        if not costs:
            lines.append(f"{label}, no past run")
            continue
        median = statistics.median(c.seconds for c in costs)
        on = sorted({c.device for c in costs})
        devices.update(on)
        total += median * len(group)
        covered += len(group)
        lines.append(f"{label} x {format_duration(median)} (median of {len(costs)} run(s) on "
                     f"{', '.join(on)}) = {format_duration(median * len(group))}")
    summary = f"  total: {format_duration(total)} for {covered} of {len(cells)} cell(s)"
    if devices:
        summary += f" (on {', '.join(sorted(devices))})"
    if covered < len(cells):
        summary += (f"; {len(cells) - covered} without a past run: run one seed first "
                    "(`--seeds 0`), or see `harness bench` for a training-speed projection")
    return lines + [summary]
