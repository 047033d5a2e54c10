"""torch k-means: agreement with scikit-learn, restart selection, seeding, determinism, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from harness.errors import HarnessError
from harness.kmeans import assign, kmeans, kmeans_plusplus, n_seeding_trials
from harness.metrics import cluster_acc


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread() -> Iterator[None]:
    """Tiny problems run fastest on one thread; OpenMP spin-waits crawl when the CPU is shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def overlapping_mixture(seed: int = 0) -> np.ndarray:
    x, _ = make_blobs(n_samples=1200, centers=8, cluster_std=4.0, n_features=5, random_state=seed)
    return x.astype(np.float32)


def spherical_mixture(
    k: int = 6, per_class: int = 60, dim: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Tight clusters around random unit directions, with very different norms per point."""
    rng = np.random.default_rng(0)
    directions = np.linalg.qr(rng.standard_normal((dim, k)))[0].T  # orthonormal rows
    y = np.repeat(np.arange(k), per_class)
    points = directions[y] + 0.05 * rng.standard_normal((len(y), dim))
    scale = rng.uniform(0.1, 10.0, size=(len(y), 1))
    return (points * scale).astype(np.float32), y


def sklearn_kmeans(x: np.ndarray, k: int) -> KMeans:
    """scikit-learn's best of 10 k-means++ restarts, on one OpenMP thread (busy CPU)."""
    with threadpool_limits(1):
        return KMeans(k, n_init=10, random_state=0).fit(x)


def squared_inertia(x: np.ndarray, labels: np.ndarray, centers: torch.Tensor) -> float:
    return float(((x - centers.numpy()[labels]) ** 2).sum())


def test_matches_sklearn_on_separated_blobs() -> None:
    x, y = make_blobs(n_samples=600, centers=5, cluster_std=0.5, n_features=4, random_state=1)
    ours = kmeans(x, 5, metric="euclidean", kpp_power=2)
    ref = sklearn_kmeans(x, 5)
    assert adjusted_rand_score(ref.labels_, ours.labels) > 0.99
    assert adjusted_rand_score(y, ours.labels) > 0.99


def test_matches_sklearn_inertia_on_overlapping_mixture() -> None:
    x = overlapping_mixture()
    ours = kmeans(x, 8, metric="euclidean", kpp_power=2)
    ref = sklearn_kmeans(x, 8)
    assert adjusted_rand_score(ref.labels_, ours.labels) < 0.999  # a genuinely ambiguous problem
    assert squared_inertia(x, ours.labels, ours.centers) <= 1.01 * ref.inertia_


def test_cosine_kmeans_recovers_spherical_mixture() -> None:
    x, y = spherical_mixture()
    result = kmeans(x, 6, metric="cosine")
    assert cluster_acc(y, result.labels) == 1.0
    assert result.labels.dtype == np.int64 and result.centers.shape == (6, 16)


def test_result_is_self_consistent() -> None:
    x = overlapping_mixture()
    for metric in ("cosine", "euclidean"):
        result = kmeans(x, 8, metric=metric, n_init=3)
        np.testing.assert_array_equal(assign(x, result.centers, metric).numpy(), result.labels)
        xt, c = torch.from_numpy(x), result.centers[torch.from_numpy(result.labels)]
        if metric == "cosine":
            dist = 1 - torch.nn.functional.cosine_similarity(xt, c, dim=1)
        else:
            dist = (xt - c).norm(dim=1)
        assert result.inertia == pytest.approx(float(dist.sum()), rel=1e-5)
        assert 1 <= result.n_iter <= 300


def test_same_seed_gives_identical_results() -> None:
    x = overlapping_mixture(seed=3)
    first = kmeans(x, 8, n_init=4, seed=7)
    second = kmeans(torch.from_numpy(x), 8, n_init=4, seed=7)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert torch.equal(first.centers, second.centers)
    assert first.inertia == second.inertia and first.n_iter == second.n_iter


def test_chosen_solution_has_lowest_inertia_over_restarts() -> None:
    x = overlapping_mixture(seed=2)
    singles = [kmeans(x, 12, n_init=1, seed=5 + r) for r in range(6)]
    inertias = [s.inertia for s in singles]
    assert len(set(inertias)) > 1  # restarts must actually differ for this test to mean anything
    combined = kmeans(x, 12, n_init=6, seed=5)
    best = singles[int(np.argmin(inertias))]
    assert combined.inertia == min(inertias)
    np.testing.assert_array_equal(combined.labels, best.labels)
    assert torch.equal(combined.centers, best.centers)


def reference_cosine_lloyd(
    x: np.ndarray, init: np.ndarray, max_iter: int = 100, tol: float = 1e-4
) -> list[float]:
    """Plain numpy Lloyd (raw-mean centres, cosine distance); inertia after each update."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    shift_tol = tol * x.var(axis=0, ddof=1).mean()

    def cos_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return 1 - (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    def nearest(centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = 1 - unit @ (centers / np.linalg.norm(centers, axis=1, keepdims=True)).T
        return d.argmin(axis=1), d.min(axis=1)

    centers = init
    labels, _ = nearest(centers)
    inertias = []
    for _ in range(max_iter):
        new_centers = np.stack([x[labels == j].mean(axis=0) for j in range(len(init))])
        new_labels, dist = nearest(new_centers)
        inertias.append(float(dist.sum()))
        if np.array_equal(new_labels, labels) or cos_dist(centers, new_centers).sum() <= shift_tol:
            break
        labels, centers = new_labels, new_centers
    return inertias


def test_best_iteration_within_a_restart_is_kept() -> None:
    # Raw-mean centres do not minimise cosine inertia when norms vary, so inertia can go back up.
    x, _ = make_blobs(n_samples=400, centers=6, cluster_std=3.0, n_features=3, random_state=0)
    x = (
        x
        / np.linalg.norm(x, axis=1, keepdims=True)
        * np.random.default_rng(0).uniform(0.1, 2, size=(len(x), 1))
    )
    seeds = kmeans_plusplus(
        torch.from_numpy(x).float(), 6, metric="cosine", generator=torch.Generator().manual_seed(0)
    )
    trajectory = reference_cosine_lloyd(x, x[seeds.indices.numpy()])
    assert min(trajectory) < trajectory[-1] - 1e-3  # the last iteration is not the best one here
    result = kmeans(x, 6, metric="cosine", n_init=1, seed=0)
    assert result.inertia == pytest.approx(min(trajectory), rel=1e-5)
    assert result.n_iter == int(np.argmin(trajectory)) + 1


def test_centre_shift_tolerance_stops_a_restart() -> None:
    x = overlapping_mixture()
    full = kmeans(x, 8, metric="euclidean", n_init=1)
    assert full.n_iter > 1  # without the tolerance this restart runs several iterations
    # Any shift is within a huge tolerance, so the restart stops after its first update.
    stopped = kmeans(x, 8, metric="euclidean", n_init=1, tol=1e9)
    one_step = kmeans(x, 8, metric="euclidean", n_init=1, max_iter=1)
    assert stopped.n_iter == 1 and stopped.inertia == one_step.inertia


@pytest.mark.parametrize("k", [1, 2, 3, 7, 8, 20, 21])
def test_seeding_draws_two_plus_floor_ln_k_candidates(k: int) -> None:
    expected = {1: 2, 2: 2, 3: 3, 7: 3, 8: 4, 20: 4, 21: 5}[k]  # 2 + floor(ln k) by hand
    assert n_seeding_trials(k) == expected
    x = torch.from_numpy(overlapping_mixture())
    seeds = kmeans_plusplus(x, k, metric="cosine", generator=torch.Generator().manual_seed(0))
    assert seeds.indices.shape == (k,)
    assert seeds.candidates.shape == (k - 1, expected)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("power", [1, 2])
def test_seeding_keeps_the_candidate_that_most_reduces_the_potential(
    metric: str, power: int
) -> None:
    x = torch.from_numpy(overlapping_mixture())
    seeds = kmeans_plusplus(
        x, 8, metric=metric, power=power, generator=torch.Generator().manual_seed(1)
    )
    xn = x.double()

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if metric == "cosine":
            return 1 - torch.nn.functional.cosine_similarity(a[:, None], b[None], dim=2)
        return torch.cdist(a, b)

    for step, candidates in enumerate(seeds.candidates, start=1):
        chosen = xn[seeds.indices[:step]]
        potentials = [
            float(dist(xn, torch.cat([chosen, xn[c : c + 1]])).min(dim=1).values.pow(power).sum())
            for c in candidates
        ]
        assert int(seeds.indices[step]) == int(candidates[int(np.argmin(potentials))])
        assert len(set(seeds.indices[: step + 1].tolist())) == step + 1  # never re-picks a centre


def test_empty_cluster_keeps_a_zero_centre() -> None:
    x = np.ones((5, 3), dtype=np.float32)  # identical points: every seed coincides
    result = kmeans(x, 2, metric="euclidean", n_init=1)
    np.testing.assert_array_equal(result.labels, np.zeros(5))
    np.testing.assert_array_equal(result.centers.numpy(), [[1, 1, 1], [0, 0, 0]])
    assert result.inertia == 0.0


def test_half_precision_input_is_cast_to_float32() -> None:
    x, y = spherical_mixture()
    result = kmeans(torch.from_numpy(x).to(torch.bfloat16), 6, metric="cosine", n_init=2)
    assert result.centers.dtype == torch.float32
    assert cluster_acc(y, result.labels) == 1.0


def test_kpp_power_changes_the_seeding() -> None:
    x = torch.from_numpy(overlapping_mixture())
    picks = {
        p: kmeans_plusplus(
            x, 8, metric="euclidean", power=p, generator=torch.Generator().manual_seed(0)
        ).indices
        for p in (1, 2)
    }
    assert not torch.equal(picks[1], picks[2])


@pytest.mark.parametrize(
    ("x", "k", "kwargs", "message"),
    [
        (np.zeros((4, 2)), 0, {}, "1 <= k"),
        (np.zeros((4, 2)), 5, {}, "1 <= k"),
        (np.array([[0.0, math.nan], [1.0, 1.0]]), 1, {}, "NaN"),
        (np.zeros(4), 1, {}, "2-D"),
        (np.zeros((4, 2)), 2, {"metric": "manhattan"}, "metric"),
        (np.zeros((4, 2)), 2, {"n_init": 0}, "n_init"),
    ],
)
def test_invalid_input_raises_harness_error(
    x: np.ndarray, k: int, kwargs: dict, message: str
) -> None:
    with pytest.raises(HarnessError, match=message):
        kmeans(x, k, **kwargs)


def test_eval_bench_times_both_metrics_against_scikit_learn(tmp_path: Path) -> None:
    from harness.bench_eval import EVAL_TARGET_RATIO_MAX, bench_eval
    from harness.cli import main
    from harness.registry import dataset_class

    report = bench_eval(device="cpu", dataset="digits", ir=10, dim=8, repeats=1, threads=1)
    rows = sum(dataset_class("digits")().lt_counts(10))  # the LT subset's size
    assert (report["rows"], report["dim"], report["k"], report["threads"]) == (rows, 8, 10, 1)
    assert [e["metric"] for e in report["entries"]] == ["cosine", "euclidean"]
    for e in report["entries"]:
        assert e["harness_seconds"] > 0 and e["sklearn_seconds"] > 0
        assert e["ratio"] == pytest.approx(e["harness_seconds"] / e["sklearn_seconds"])
        assert e["ratio_ok"] == (e["ratio"] <= EVAL_TARGET_RATIO_MAX)
    assert main(["bench", "--eval", "--device", "cpu", "--dataset", "digits", "--windows", "1",
                 "--out", str(tmp_path)]) == 0
    (out,) = tmp_path.glob("cpu-*cores-eval.json")
    assert json.loads(out.read_text())["entries"][0]["metric"] == "cosine"
    with pytest.raises(SystemExit) as refused:  # argparse: a count below 1
        main(["bench", "--eval", "--windows", "0", "--out", str(tmp_path / "x")])
    assert refused.value.code == 2
