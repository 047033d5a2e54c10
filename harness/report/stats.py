"""Paired tests across methods over shared training seeds (D9).

Per (dataset, IR, metric) column, every method is tested against the column's best method on
the seeds both have: the paired t-test (`scipy.stats.ttest_rel`) and the Wilcoxon signed-rank
test (`scipy.stats.wilcoxon`). Seeds drive the same random streams across methods, so the pairs
are matched by seed.

build choice: the † mark uses the paired t-test at `alpha`; the Wilcoxon p-value is reported
beside it. With n shared seeds the smallest two-sided exact Wilcoxon p is 2 / 2**n (0.25 at three
seeds), so it cannot reach 0.05 below six seeds.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from harness.report.cells import metric_info

STATS_COLUMNS = ["dataset", "ir", "metric", "method", "best_method", "n_shared", "mean_diff",
                 "t_pvalue", "wilcoxon_pvalue", "significant"]
DEFAULT_ALPHA = 0.05


def _pvalues(diff: np.ndarray) -> tuple[float, float]:
    from scipy import stats as sps  # imported on use: keeps `harness status` start-up light

    if diff.size < 2 or np.allclose(diff, 0.0):
        return math.nan, math.nan
    with warnings.catch_warnings():
        # Identical differences on every seed give t = ±inf / p = nan: reported as n/a.
        warnings.simplefilter("ignore", RuntimeWarning)
        t_p = float(sps.ttest_1samp(diff, 0.0).pvalue)  # = ttest_rel on the paired values
        try:
            w_p = float(sps.wilcoxon(diff).pvalue)
        except ValueError:  # too few non-zero differences
            w_p = math.nan
    return t_p, w_p


def paired_tests(cells: pd.DataFrame, alpha: float = DEFAULT_ALPHA) -> pd.DataFrame:
    """One row per (column, non-best method with values): p-values against the column's best.

    `cells` is the long table of `harness.report.cells.summarise_cells` (its `values` map seed -> value).
    The best method is the one with the highest (lowest, for lower-is-better) mean; metrics
    without a direction are skipped.
    """
    rows = []
    for (dataset, ir, metric), g in cells.groupby(["dataset", "ir", "metric"], sort=False):
        info = metric_info(metric)
        g = g[g["n_values"] > 0]
        if info.higher_better is None or len(g) < 2:
            continue
        best = g.loc[g["mean"].idxmax() if info.higher_better else g["mean"].idxmin()]
        for r in g.itertuples(index=False):
            if r.method == best["method"]:
                continue
            seeds = sorted(set(r.values) & set(best["values"]))
            diff = np.array([r.values[s] - best["values"][s] for s in seeds], dtype=float)
            t_p, w_p = _pvalues(diff)
            rows.append({"dataset": dataset, "ir": ir, "metric": metric, "method": r.method,
                         "best_method": best["method"], "n_shared": len(seeds),
                         "mean_diff": float(diff.mean()) if diff.size else math.nan,
                         "t_pvalue": t_p, "wilcoxon_pvalue": w_p,
                         "significant": bool(not math.isnan(t_p) and t_p < alpha)})
    return pd.DataFrame(rows, columns=STATS_COLUMNS)
