"""Paired tests across methods over shared training seeds (D9), corrected for multiplicity.

Per (dataset, IR, metric) column, every other method is compared with the column's best method
on the seeds both have (seeds drive the same random streams across methods, so pairs are matched
by seed): the mean difference with a bootstrap confidence interval (seeds resampled in pairs),
the paired t-test (`scipy.stats.ttest_1samp` on the differences = `ttest_rel`) and the Wilcoxon
signed-rank test (`scipy.stats.wilcoxon`). A deterministic method's one run serves every seed,
so its value is paired with each seed of the other method.

build choice: one family per report (every comparison its tables mark), Holm's step-down
correction of both p-values (a few lines here; statsmodels is not a dependency); † marks a
Holm-adjusted t-test p below `alpha`. With n shared seeds the smallest two-sided exact Wilcoxon
p is 2 / 2**n (0.25 at three seeds): where no Wilcoxon p could pass Holm's first threshold,
`too_few_seeds` says so in plain words and nothing is marked.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from harness.report.cells import metric_info

STATS_COLUMNS = ["dataset", "ir", "metric", "method", "best_method", "n_shared", "mean_diff",
                 "ci_low", "ci_high", "t_pvalue", "t_holm", "wilcoxon_pvalue", "wilcoxon_holm",
                 "significant"]
DEFAULT_ALPHA = 0.05
CONFIDENCE = 0.95
N_RESAMPLES = 9999


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN and does not
    count towards the family size."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def bootstrap_ci(diff: np.ndarray, level: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean difference (fixed seed: same input, same
    interval); NaN with fewer than two pairs, the value itself when every pair agrees."""
    from scipy import stats as sps

    if diff.size < 2:
        return math.nan, math.nan
    if np.allclose(diff, diff[0]):
        return float(diff[0]), float(diff[0])
    res = sps.bootstrap((diff,), np.mean, confidence_level=level, n_resamples=N_RESAMPLES,
                        method="percentile", random_state=np.random.default_rng(0))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _pvalues(diff: np.ndarray) -> tuple[float, float]:
    from scipy import stats as sps  # imported on use: keeps `harness status` start-up light

    if diff.size < 2 or np.allclose(diff, 0.0):
        return math.nan, math.nan
    with warnings.catch_warnings():
        # Identical differences on every seed give t = ±inf / p = nan: reported as n/a.
        warnings.simplefilter("ignore", RuntimeWarning)
        t_p = float(sps.ttest_1samp(diff, 0.0).pvalue)
        try:
            w_p = float(sps.wilcoxon(diff).pvalue)
        except ValueError:  # too few non-zero differences
            w_p = math.nan
    return t_p, w_p


def _paired(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Differences a - b over the seeds both have; a deterministic side serves every seed."""
    va, vb = dict(a["values"]), dict(b["values"])
    if a["deterministic"] and not b["deterministic"] and va:
        va = dict.fromkeys(vb, next(iter(va.values())))
    if b["deterministic"] and not a["deterministic"] and vb:
        vb = dict.fromkeys(va, next(iter(vb.values())))
    seeds = sorted(set(va) & set(vb))
    return np.array([va[s] - vb[s] for s in seeds], dtype=float)


def paired_tests(cells: pd.DataFrame, alpha: float = DEFAULT_ALPHA) -> pd.DataFrame:
    """One row per (column, non-best method with values) against the column's best method,
    with Holm-adjusted p-values over all rows (`STATS_COLUMNS`).

    `cells` is the long table of `harness.report.cells.summarise_cells` (its `values` map
    seed -> value). The best method has the highest (lowest, for lower-is-better) mean; metrics
    without a direction are skipped.
    """
    rows = []
    for (dataset, ir, metric), g in cells.groupby(["dataset", "ir", "metric"], sort=False):
        info = metric_info(metric)
        g = g[g["n_values"] > 0]
        if info.higher_better is None or len(g) < 2:
            continue
        best = g.loc[g["mean"].idxmax() if info.higher_better else g["mean"].idxmin()]
        for _, r in g.iterrows():
            if r["method"] == best["method"]:
                continue
            diff = _paired(r, best)
            t_p, w_p = _pvalues(diff)
            low, high = bootstrap_ci(diff)
            rows.append({"dataset": dataset, "ir": ir, "metric": metric, "method": r["method"],
                         "best_method": best["method"], "n_shared": int(diff.size),
                         "mean_diff": float(diff.mean()) if diff.size else math.nan,
                         "ci_low": low, "ci_high": high, "t_pvalue": t_p,
                         "wilcoxon_pvalue": w_p})
    out = pd.DataFrame(rows, columns=STATS_COLUMNS)
    out["t_holm"] = holm(out["t_pvalue"].to_numpy())
    out["wilcoxon_holm"] = holm(out["wilcoxon_pvalue"].to_numpy())
    out["significant"] = (out["t_holm"] < alpha).fillna(False).astype(bool)
    if too_few_seeds(out, alpha):  # no mark where the seeds cannot support one
        out["significant"] = False
    return out


def too_few_seeds(tests: pd.DataFrame, alpha: float = DEFAULT_ALPHA) -> str | None:
    """A plain statement when the shared seeds are too few for these tests to conclude: no
    exact Wilcoxon p can pass Holm's first threshold alpha / m. None when they can."""
    m = int(tests["t_pvalue"].notna().sum()) or len(tests)
    if tests.empty or m == 0:
        return None
    n = int(tests["n_shared"].max())
    threshold = alpha / m
    if n >= 1 and 2.0 / 2 ** n <= threshold:
        return None
    needed = math.ceil(math.log2(2.0 / threshold))
    return (f"Too few seeds to conclude anything: with {n} shared seed{'s' if n != 1 else ''} "
            f"the smallest possible Wilcoxon p is {2.0 / 2 ** n:.3g}, while Holm's correction "
            f"over {m} tests asks the first one for p < {threshold:.2g}; a t-test on so few "
            f"pairs rests on normality it cannot check, so no difference is marked (†). Read "
            f"the table as descriptive; {needed} seeds per cell would let a Wilcoxon test "
            f"pass.")
