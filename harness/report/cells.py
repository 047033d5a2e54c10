"""Grid cells for reports: per (method, dataset, IR, metric) mean ± std over training seeds,
coverage counts, and best / second-best marks per column."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd

from harness.errors import HarnessError


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is shown: header label, display scale, decimals, direction (None: no best)."""

    label: str
    scale: float = 100.0
    digits: int = 1
    higher_better: bool | None = True


METRIC_INFO: dict[str, MetricInfo] = {
    "acc": MetricInfo("ACC"), "nmi": MetricInfo("NMI"), "ari": MetricInfo("ARI"),
    "caa": MetricInfo("CAA"), "kappa": MetricInfo("Kappa"),
    "head_acc": MetricInfo("Head ACC"), "medium_acc": MetricInfo("Medium ACC"),
    "tail_acc": MetricInfo("Tail ACC"),
    "size_entropy": MetricInfo("Size entropy", scale=1.0, digits=2, higher_better=None),
    "n_clusters": MetricInfo("#Clusters", scale=1.0, digits=1, higher_better=None),
}
LT_METRICS = ("caa", "head_acc", "medium_acc", "tail_acc")
CELL_COLUMNS = ["method", "dataset", "ir", "metric", "mean", "std", "eval_std", "n_values",
                "n_expected", "n_done", "n_running", "n_pending", "n_failed", "n_missing",
                "n_no_variant", "status", "values", "split", "features", "deterministic", "rank"]


def metric_info(name: str) -> MetricInfo:
    """Display info of a metric; unknown metrics show raw with two decimals and no best mark."""
    return METRIC_INFO.get(name, MetricInfo(name.upper(), scale=1.0, digits=2, higher_better=None))


def rounded(value: float, digits: int) -> float:
    """Round half up at `digits` decimals after dropping float noise (61.25000000000001 -> 61.3).

    build choice: half-up (what readers expect in tables) rather than Python's round-half-even.
    """
    exact = Decimal(repr(round(float(value), 9)))
    return float(exact.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def resolve_metrics(metrics: Sequence[str], available: set[str]) -> list[str]:
    """The metric columns to show, validated against the known and the stored metrics."""
    chosen = list(dict.fromkeys(metrics))
    unknown = [m for m in chosen if m not in METRIC_INFO and m not in available]
    if unknown:
        known = sorted(set(METRIC_INFO) | available)
        raise HarnessError(f"unknown metric(s) {', '.join(unknown)}; choose from "
                           f"{', '.join(known)}")
    return chosen


def _status(n_values: int, n_done: int, n_expected: int, counts: dict[str, int]) -> str:
    if n_values:
        return "ok" if n_done == n_expected and n_values == n_done else "partial"
    for state in ("failed", "running", "pending"):
        if counts[state]:
            return state
    return "n/a" if n_done or counts["no_variant"] else "missing"


def summarise_cells(resolved: pd.DataFrame, metrics: Sequence[str],
                    deterministic: Collection[str] = ()) -> pd.DataFrame:
    """Long table, one row per (method, dataset, IR, metric) in grid order (`CELL_COLUMNS`).

    `mean`/`std`/`eval_std` are on the display scale (x100 for fractions); std is the sample std
    (ddof=1) over training seeds, NaN with fewer than two seeds (build choice). Methods in
    `deterministic` have one run per cell serving every seed: `deterministic` is True there.
    """
    rows = []
    for (method, dataset, ir), g in resolved.groupby(["method", "dataset", "ir"], sort=False):
        done = g[g["done"]]
        counts = {
            "running": int((g["state"] == "running").sum()),
            "pending": int((g["state"] == "pending").sum()),
            "failed": int(g["state"].isin(["failed", "killed", "interrupted"]).sum()),
            "missing": int((g["state"] == "missing").sum()),
            "no_variant": int(((g["state"] == "completed") & ~g["done"]).sum()),
        }
        card = done["protocol"].iloc[0] if len(done) else {}
        for metric in metrics:
            info = metric_info(metric)
            col, std_col = f"metric.{metric}", f"evalstd.{metric}"
            values = {} if col not in done else {
                int(s): float(v) * info.scale for s, v in zip(done["seed"], done[col])
                if v is not None and not pd.isna(v)}
            arr = np.array(list(values.values()), dtype=float)
            eval_stds = (done[std_col].dropna().astype(float) * info.scale
                         if std_col in done else pd.Series(dtype=float))
            rows.append({
                "method": method, "dataset": dataset, "ir": ir, "metric": metric,
                "mean": float(arr.mean()) if arr.size else math.nan,
                "std": float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
                "eval_std": float(eval_stds.mean()) if len(eval_stds) else math.nan,
                "n_values": int(arr.size), "n_expected": len(g), "n_done": len(done),
                "n_running": counts["running"], "n_pending": counts["pending"],
                "n_failed": counts["failed"], "n_missing": counts["missing"],
                "n_no_variant": counts["no_variant"],
                "status": _status(int(arr.size), len(done), len(g), counts),
                "values": values, "split": card.get("split"),
                "features": card.get("features"), "deterministic": method in deterministic,
                "rank": 0})
    cells = pd.DataFrame(rows, columns=CELL_COLUMNS)
    return rank_cells(cells)


def rank_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """Set `rank` 1 (best) / 2 (second) per (dataset, IR, metric) on the *displayed* means, so
    equal printed values share a mark; 0 elsewhere or for metrics without a direction."""
    cells = cells.copy()
    cells["rank"] = 0
    for (_, _, metric), g in cells.groupby(["dataset", "ir", "metric"], sort=False):
        info = metric_info(metric)
        g = g[g["n_values"] > 0]
        if info.higher_better is None or g.empty:
            continue
        shown = g["mean"].map(lambda v: rounded(v, info.digits))
        levels = sorted(set(shown), reverse=info.higher_better)
        for rank, level in enumerate(levels[:2], start=1):
            cells.loc[shown.index[shown == level], "rank"] = rank
    return cells
