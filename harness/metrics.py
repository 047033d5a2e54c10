"""Clustering metrics (specs: harness_design.md §8, datasets.md §5, propos_hadis.md §8,
conmix.md §6).

Hungarian matching runs on a zero-padded square contingency matrix, so K != C works and an empty
cluster never turns ACC into 0 (unlike torch_clustering). NMI, ARI, kappa and recall come from
scikit-learn. All values are fractions in [0, 1], not percentages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    cohen_kappa_score,
    normalized_mutual_info_score,
    recall_score,
)

from harness.errors import HarnessError

GroupScheme = Literal["terciles", "shots"]
GROUP_NAMES = ("head", "medium", "tail")
# ImageNet-LT convention (datasets.md §5): many-shot > 100, medium-shot 20..100, few-shot < 20.
MANY_SHOT_MIN, FEW_SHOT_MAX = 101, 19


def _as_labels(y: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise HarnessError(f"{name} must be a 1-D label array; got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer) and np.any(np.mod(arr, 1) != 0):
        raise HarnessError(f"{name} must hold integer labels; got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise HarnessError(
            f"y_true has {t.size} labels but y_pred has {p.size}; they must match one to one"
        )
    return t, p


def _match(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hungarian matching on the zero-padded contingency matrix.

    Returns (cluster ids, matched class per cluster id or -1, index of each sample's cluster).
    """
    classes, t_idx = np.unique(t, return_inverse=True)
    clusters, p_idx = np.unique(p, return_inverse=True)
    size = max(len(classes), len(clusters))
    # rows: clusters, columns: classes, zero-padded to a square
    contingency = np.bincount(p_idx * size + t_idx, minlength=size * size).reshape(size, size)
    rows, cols = linear_sum_assignment(contingency, maximize=True)
    matched = np.full(len(clusters), -1, dtype=np.int64)
    real = (rows < len(clusters)) & (cols < len(classes))
    matched[rows[real]] = classes[cols[real]]
    return clusters, matched, p_idx


def hungarian_mapping(y_true: np.ndarray, y_pred: np.ndarray) -> dict[int, int]:
    """Map cluster id -> class id maximising the matched count; unmatched clusters are left out."""
    clusters, matched, _ = _match(*_pair(y_true, y_pred))
    return {int(c): int(m) for c, m in zip(clusters, matched, strict=True) if m != -1}


def map_clusters(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Predictions relabelled to their matched class; clusters matched to no class become -1."""
    _, matched, p_idx = _match(*_pair(y_true, y_pred))
    return matched[p_idx]


def cluster_acc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Hungarian clustering accuracy (fraction)."""
    t, p = _pair(y_true, y_pred)
    if t.size == 0:
        raise HarnessError("cluster_acc got no labels; evaluate on a non-empty split")
    return float(np.mean(map_clusters(t, p) == t))


def per_class_accuracy(y_true: np.ndarray, y_mapped: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class 0..num_classes-1 (NaN for a class with no samples)."""
    t, m = _pair(y_true, y_mapped)
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise HarnessError(
            f"y_true labels must lie in 0..{num_classes - 1}; got {t.min()}..{t.max()}"
            " (drop -1 first)"
        )
    return np.asarray(
        recall_score(t, m, labels=np.arange(num_classes), average=None, zero_division=np.nan),
        dtype=np.float64,
    )


def class_groups(counts: Sequence[int], scheme: GroupScheme = "terciles") -> dict[str, list[int]]:
    """Split classes into head/medium/tail by training count.

    terciles (build choice, datasets.md §5): classes ranked by count, descending, ties by class id,
    cut into three groups as equal as possible; the extra classes go to head, then medium.
    shots: many (> 100) / medium (20..100) / few (< 20), the ImageNet-LT convention.
    """
    counts = [int(c) for c in counts]
    if scheme == "terciles":
        order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
        base, extra = divmod(len(order), 3)
        sizes = [base + (i < extra) for i in range(3)]
        bounds = np.cumsum([0, *sizes])
        return {name: order[bounds[i] : bounds[i + 1]] for i, name in enumerate(GROUP_NAMES)}
    if scheme == "shots":
        return {
            "head": [c for c, n in enumerate(counts) if n >= MANY_SHOT_MIN],
            "medium": [c for c, n in enumerate(counts) if FEW_SHOT_MAX < n < MANY_SHOT_MIN],
            "tail": [c for c, n in enumerate(counts) if n <= FEW_SHOT_MAX],
        }
    raise HarnessError(f"unknown class-group scheme {scheme!r}: use 'terciles' or 'shots'")


def _group_mean(per_class: np.ndarray, classes: list[int]) -> float:
    values = per_class[classes] if classes else np.array([])
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _size_entropy(y_pred: np.ndarray, num_classes: int) -> float:
    """Entropy of the predicted cluster sizes, normalised to [0, 1].

    Build choice: divided by log(num_classes) (= log K in this harness, where K = C); when more
    than C clusters are predicted the divisor is log(#clusters) so the value stays <= 1.
    """
    _, sizes = np.unique(y_pred, return_counts=True)
    p = sizes / sizes.sum()
    denom = math.log(max(num_classes, len(sizes)))
    return float(-(p * np.log(p)).sum() / denom) if denom > 0 else 0.0


def evaluate_clustering(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int,
    class_counts: Sequence[int] | None = None,
    group_scheme: GroupScheme = "terciles",
) -> dict[str, float]:
    """All clustering metrics of harness_design.md §8 as fractions; y_true == -1 rows are dropped.

    class_counts (training count per class) define head/medium/tail; default: counts of y_true.
    """
    t, p = _pair(y_true, y_pred)
    keep = t != -1
    t, p = t[keep], p[keep]
    if t.size == 0:
        raise HarnessError(
            "no labelled samples to evaluate (all labels are -1 or the split is empty)"
        )
    mapped = map_clusters(t, p)
    per_class = per_class_accuracy(t, mapped, num_classes)
    if class_counts is None:
        class_counts = np.bincount(t, minlength=num_classes).tolist()
    elif len(class_counts) != num_classes:
        raise HarnessError(
            f"class_counts has {len(class_counts)} entries for {num_classes} classes"
        )
    groups = class_groups(class_counts, group_scheme)
    return {
        "acc": float(np.mean(mapped == t)),
        "nmi": float(normalized_mutual_info_score(t, p, average_method="arithmetic")),
        "ari": float(adjusted_rand_score(t, p)),
        "caa": float(np.nanmean(per_class)),  # balanced accuracy over the classes present
        "kappa": float(cohen_kappa_score(t, mapped)),
        **{f"{name}_acc": _group_mean(per_class, groups[name]) for name in GROUP_NAMES},
        "size_entropy": _size_entropy(p, num_classes),
        "n_clusters": float(len(np.unique(p))),
    }
