"""Results as data frames: `harness.load_results(grid)`, and the report's CSV and parquet files.

One tidy row per cell x variant x metric, on the tables' scale (fractions x100, unit "%"; the
size entropy and cluster counts as they are, unit ""), so the mean of a cell's primary rows is
the number its table shows. Per-class accuracies come one row per class
(`per_class_results`), never as JSON text in a column.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report.cells import metric_info
from harness.report.data import (GROUP_METRICS, collect_runs, normalise_expected,
                                 resolve_expected, select_variant)

RESULT_COLUMNS = ["method", "dataset", "ir", "seed", "variant", "primary", "metric", "value",
                  "unit", "eval_std", "deterministic", "uid", "split", "features", "assign", "K",
                  "matching", "eval_seeds", "n_eval_seeds", "kmeans_metric", "manifest_sha256",
                  "git_sha", "run_dir"]
PER_CLASS_COLUMNS = ["method", "dataset", "ir", "seed", "variant", "primary", "class_index",
                     "class_name", "train_count", "acc", "uid"]


def _completed(resolved: pd.DataFrame) -> list[Any]:
    done = resolved[resolved["state"] == "completed"]
    return [r for r in done.itertuples(index=False) if isinstance(r.variants, dict)]


def _protocol(card: dict[str, Any]) -> dict[str, Any]:
    kmeans = card.get("kmeans") if isinstance(card.get("kmeans"), dict) else {}
    return {"split": card.get("split"), "features": card.get("features"),
            "assign": card.get("assign"), "K": card.get("K"), "matching": card.get("matching"),
            "eval_seeds": card.get("eval_seeds"), "n_eval_seeds": card.get("n_eval_seeds"),
            "kmeans_metric": kmeans.get("metric")}


def tidy_results(resolved: pd.DataFrame, deterministic: Collection[str] = ()) -> pd.DataFrame:
    """One row per completed cell x variant x metric (`RESULT_COLUMNS`) of resolved cells.

    Head/medium/tail ACC are left out where every class has the same training count."""
    rows = []
    for r in _completed(resolved):
        equal = isinstance(r.class_counts, list) and len(set(r.class_counts)) == 1
        for key, v in r.variants.items():
            base = {"method": r.method, "dataset": r.dataset, "ir": r.ir, "seed": r.seed,
                    "variant": key, "primary": key == r.primary,
                    "deterministic": r.method in deterministic, "uid": r.uid,
                    **_protocol(v.get("protocol") or {}), "manifest_sha256": r.manifest_sha256,
                    "git_sha": r.git_sha, "run_dir": r.run_dir}
            stds = v.get("metrics_std") or {}
            for metric, value in (v.get("metrics") or {}).items():
                if value is None or (equal and metric in GROUP_METRICS):
                    continue
                info = metric_info(metric)
                std = stds.get(metric)
                rows.append({**base, "metric": metric, "value": float(value) * info.scale,
                             "unit": "%" if info.scale == 100 else "",
                             "eval_std": None if std is None else float(std) * info.scale})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def per_class_results(resolved: pd.DataFrame) -> pd.DataFrame:
    """One row per completed cell x variant x class: training count and accuracy (%)."""
    rows = []
    for r in _completed(resolved):
        counts = r.class_counts if isinstance(r.class_counts, list) else []
        names = r.class_names if isinstance(r.class_names, list) else []
        for key, v in r.variants.items():
            for i, acc in enumerate(v.get("per_class_acc") or []):
                rows.append({"method": r.method, "dataset": r.dataset, "ir": r.ir,
                             "seed": r.seed, "variant": key, "primary": key == r.primary,
                             "class_index": i, "class_name": names[i] if i < len(names) else None,
                             "train_count": counts[i] if i < len(counts) else None,
                             "acc": None if acc is None else 100 * float(acc), "uid": r.uid})
    return pd.DataFrame(rows, columns=PER_CLASS_COLUMNS)


def load_results(grid: str, runs_dir: str | Path | None = None) -> pd.DataFrame:
    """The grid's results as a tidy DataFrame, one row per cell x variant x metric.

    `grid` is a grid name or YAML path; `runs_dir` defaults to `./runs` (or
    `$HARNESS_RUNS_DIR`). Columns: `RESULT_COLUMNS` (method, dataset, ir as text, seed,
    variant, primary, metric, value in the tables' unit, unit, eval_std, deterministic, uid and
    the protocol fields). Only completed runs of the grid's cells appear; a deterministic method
    has one row set (seed 0, `deterministic` True) that serves every seed.
    """
    from harness.grids import load_grid
    from harness.report.settings import is_deterministic
    from harness.runner import expected_cells
    from harness.store import default_runs_dir

    name = load_grid(grid).name
    expected = normalise_expected(expected_cells(grid))
    runs = select_variant(collect_runs(Path(runs_dir or default_runs_dir()), name), None)
    resolved = resolve_expected(expected, runs)
    det = {m for m in expected["method"].unique() if is_deterministic(m)}
    return tidy_results(resolved, det)
