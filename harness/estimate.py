"""Cost estimates: what the cells to run will take (`harness plan`, design D6), from past runs,
and how far running cells are (`harness status`).

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
from harness.errors import HarnessError
from harness.store import read_run_file


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
        try:
            metrics = read_run_file(metrics_path)
            same = cost_key(read_config(folder / "config.yaml")) == key
        except HarnessError:  # a damaged result or config is no evidence
            continue
        if not metrics or "train" not in metrics:
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


@dataclass(frozen=True)
class Progress:
    """Where a training run stands: epochs done of all, and its recent pace."""

    epoch: int
    epochs: int
    seconds_per_epoch: float | None  # None before the first epoch ends

    def line(self) -> str:
        """`epoch 120/1000, 6.2 s/epoch, about 1.51 h left`."""
        text = f"epoch {self.epoch}/{self.epochs}"
        if self.seconds_per_epoch is not None:
            left = self.seconds_per_epoch * (self.epochs - self.epoch)
            text += (f", {format_duration(self.seconds_per_epoch)}/epoch, about "
                     f"{format_duration(left)} of training left")
        return text


def training_progress(run_dir: Path) -> Progress | None:
    """Progress of the run in `run_dir` from `train_log.jsonl` (None without a training log).

    The pace is the median time between the epoch ends of the current attempt (the log's `time`
    restarts with each attempt); with a single epoch end, that epoch's time including set-up.
    """
    try:
        epochs = int(read_config(run_dir / "config.yaml").params["epochs"])
    except (HarnessError, KeyError, ValueError, TypeError):
        return None
    records = read_run_file(run_dir / "train_log.jsonl")
    if records is None:
        return None
    ends = [(int(r["epoch"]), float(r["time"])) for r in records if r.get("epoch_end")]
    if not ends:
        return Progress(0, epochs, None)
    attempt = [ends[-1]]
    for epoch, t in reversed(ends[:-1]):
        if t >= attempt[0][1]:  # an earlier attempt
            break
        attempt.insert(0, (epoch, t))
    if len(attempt) == 1:
        pace = attempt[0][1]
    else:
        pace = statistics.median((t1 - t0) / (e1 - e0) for (e0, t0), (e1, t1)
                                 in zip(attempt, attempt[1:]))
    return Progress(ends[-1][0], epochs, pace)
