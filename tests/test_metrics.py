"""Clustering metrics: hand-computed contingency cases, K != C, empty clusters, class groups."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from harness.errors import HarnessError
from harness.lt import lt_counts
from harness.metrics import (
    class_groups,
    cluster_acc,
    evaluate_clustering,
    hungarian_mapping,
    map_clusters,
    per_class_accuracy,
)

# More clusters than classes. Contingency (cluster x class): c0 [2, 0], c1 [1, 0], c2 [0, 3].
MORE_TRUE = np.array([0, 0, 0, 1, 1, 1])
MORE_PRED = np.array([0, 0, 1, 2, 2, 2])
# Fewer clusters than classes. Contingency: c0 [3, 2, 0], c1 [0, 0, 4]; class 1 is never predicted.
FEWER_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
FEWER_PRED = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])


def brute_force_acc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Best one-to-one cluster->class assignment by enumeration (torch_clustering-style ACC)."""
    classes, clusters = np.unique(y_true), np.unique(y_pred)
    best = 0
    if len(clusters) <= len(classes):
        for targets in itertools.permutations(classes, len(clusters)):
            best = max(
                best,
                sum(
                    np.sum((y_pred == c) & (y_true == t))
                    for c, t in zip(clusters, targets, strict=True)
                ),
            )
    else:
        for sources in itertools.permutations(clusters, len(classes)):
            best = max(
                best,
                sum(
                    np.sum((y_pred == c) & (y_true == t))
                    for c, t in zip(sources, classes, strict=True)
                ),
            )
    return best / len(y_true)


def test_more_clusters_than_classes_leaves_one_cluster_unmatched() -> None:
    assert hungarian_mapping(MORE_TRUE, MORE_PRED) == {0: 0, 2: 1}
    np.testing.assert_array_equal(map_clusters(MORE_TRUE, MORE_PRED), [0, 0, -1, 1, 1, 1])
    assert cluster_acc(MORE_TRUE, MORE_PRED) == pytest.approx(5 / 6)


def test_fewer_clusters_than_classes() -> None:
    assert hungarian_mapping(FEWER_TRUE, FEWER_PRED) == {0: 0, 1: 2}
    assert cluster_acc(FEWER_TRUE, FEWER_PRED) == pytest.approx(7 / 9)


def test_empty_cluster_gives_padded_hungarian_value_not_zero() -> None:
    # K = 3 was asked for but cluster 1 is empty: contingency c0 [2, 0, 0], c2 [0, 2, 2].
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 2, 2, 2, 2])
    assert cluster_acc(y_true, y_pred) == pytest.approx(4 / 6)
    metrics = evaluate_clustering(y_true, y_pred, num_classes=3)
    assert metrics["acc"] == pytest.approx(4 / 6)
    assert metrics["n_clusters"] == 2.0


def test_permuted_cluster_ids_give_perfect_scores() -> None:
    y_true = np.repeat(np.arange(5), [7, 5, 4, 2, 1])
    perm = np.array([3, 0, 4, 1, 2])
    metrics = evaluate_clustering(
        y_true, perm[y_true] + 10, num_classes=5
    )  # ids need not be 0..K-1
    for key in ("acc", "nmi", "ari", "caa", "kappa", "head_acc", "medium_acc", "tail_acc"):
        assert metrics[key] == pytest.approx(1.0), key


@pytest.mark.parametrize("n_clusters", [3, 4, 5])
def test_acc_matches_brute_force_without_empty_clusters(n_clusters: int) -> None:
    rng = np.random.default_rng(n_clusters)
    for _ in range(20):
        y_true = rng.integers(0, 4, size=30)
        y_pred = rng.integers(0, n_clusters, size=30)
        assert cluster_acc(y_true, y_pred) == pytest.approx(brute_force_acc(y_true, y_pred))


def test_hand_computed_nmi_ari_kappa() -> None:
    # Independent labelling: MI = 0 and ARI = (0 - 2/3) / (2 - 2/3) = -0.5.
    m = evaluate_clustering(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), num_classes=2)
    assert m["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert m["ari"] == pytest.approx(-0.5)
    # Kappa on mapped [0, 0, -1, 1, 1, 1]: p_o = 5/6, p_e = (3*2 + 3*3) / 36, kappa = 5/7.
    m = evaluate_clustering(MORE_TRUE, MORE_PRED, num_classes=2)
    assert m["kappa"] == pytest.approx(5 / 7)
    assert m["acc"] == pytest.approx(5 / 6)


def test_caa_per_class_and_groups_hand_computed() -> None:
    # Mapped [0,0,0,0,0,2,2,2,2]: recall class 0 = 3/3, class 1 = 0/2, class 2 = 4/4.
    per_class = per_class_accuracy(FEWER_TRUE, map_clusters(FEWER_TRUE, FEWER_PRED), num_classes=4)
    np.testing.assert_allclose(per_class[:3], [1.0, 0.0, 1.0])
    assert math.isnan(per_class[3])  # class 3 has no samples
    m = evaluate_clustering(FEWER_TRUE, FEWER_PRED, num_classes=3)
    assert m["caa"] == pytest.approx(2 / 3)
    # Default groups from y_true counts [3, 2, 4]: head = class 2, medium = class 0, tail = class 1.
    assert (m["head_acc"], m["medium_acc"], m["tail_acc"]) == (1.0, 1.0, 0.0)
    # Given training counts [10, 5, 1]: head = class 0, medium = class 1, tail = class 2.
    m = evaluate_clustering(FEWER_TRUE, FEWER_PRED, num_classes=3, class_counts=[10, 5, 1])
    assert (m["head_acc"], m["medium_acc"], m["tail_acc"]) == (1.0, 0.0, 1.0)


def test_caa_equals_sklearn_balanced_accuracy_on_mapped_predictions() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 6, size=200)
    y_pred = np.where(rng.random(200) < 0.6, (y_true + 2) % 6, rng.integers(0, 6, size=200))
    mapped = map_clusters(y_true, y_pred)
    assert (mapped != -1).all()
    m = evaluate_clustering(y_true, y_pred, num_classes=6)
    assert m["caa"] == pytest.approx(balanced_accuracy_score(y_true, mapped))
    assert m["caa"] != pytest.approx(m["acc"])  # classes are imbalanced: caa is a different number


def test_size_entropy() -> None:
    m = evaluate_clustering(FEWER_TRUE, FEWER_PRED, num_classes=3)  # sizes 5 and 4
    expected = -(5 / 9 * math.log(5 / 9) + 4 / 9 * math.log(4 / 9)) / math.log(3)
    assert m["size_entropy"] == pytest.approx(expected)
    assert evaluate_clustering(np.arange(4), np.arange(4), num_classes=4)[
        "size_entropy"
    ] == pytest.approx(1.0)
    assert evaluate_clustering(np.arange(4), np.zeros(4), num_classes=4)["size_entropy"] == 0.0


def test_unlabelled_entries_are_dropped() -> None:
    y_true = np.concatenate([MORE_TRUE, [-1, -1, -1]])
    y_pred = np.concatenate([MORE_PRED, [1, 1, 7]])
    assert evaluate_clustering(y_true, y_pred, 2) == evaluate_clustering(MORE_TRUE, MORE_PRED, 2)


def test_terciles_for_ten_and_twenty_classes() -> None:
    groups = class_groups(lt_counts(10, 5000, 10))
    assert groups == {"head": [0, 1, 2, 3], "medium": [4, 5, 6], "tail": [7, 8, 9]}
    groups = class_groups(lt_counts(20, 500, 10))
    assert [len(groups[g]) for g in ("head", "medium", "tail")] == [7, 7, 6]
    assert groups["head"] == list(range(7)) and groups["tail"] == list(range(14, 20))
    assert [len(v) for v in class_groups([1] * 11).values()] == [4, 4, 3]


def test_terciles_rank_by_count_with_ties_by_class_id() -> None:
    groups = class_groups([5, 50, 50, 1, 7, 7])
    assert groups == {"head": [1, 2], "medium": [4, 5], "tail": [0, 3]}


def test_shot_thresholds() -> None:
    groups = class_groups([150, 101, 100, 20, 19, 0], scheme="shots")
    assert groups == {"head": [0, 1], "medium": [2, 3], "tail": [4, 5]}


def test_bad_input_raises_harness_error() -> None:
    with pytest.raises(HarnessError, match="match one to one"):
        cluster_acc(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(HarnessError, match="0..2"):
        per_class_accuracy(np.array([0, 3]), np.array([0, 1]), num_classes=3)
    with pytest.raises(HarnessError, match="terciles"):
        class_groups([1, 2, 3], scheme="quartiles")  # type: ignore[arg-type]
    with pytest.raises(HarnessError, match="no labelled samples"):
        evaluate_clustering(np.array([-1, -1]), np.array([0, 1]), num_classes=2)
