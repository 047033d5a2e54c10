"""Seeded torch k-means (cosine or euclidean) with greedy k-means++ (spec: propos_hadis.md §8).

Native re-implementation of the behaviour of `torch_clustering.PyTorchKMeans` (no vendored code):
plain (not squared) distances, greedy k-means++ with 2 + floor(ln k) candidates per step,
centres = plain means of assigned points (empty cluster -> zero centre, no re-seeding),
per-restart convergence on unchanged labels or total centre shift <= tol * mean feature variance,
and the lowest inertia seen at any iteration of any restart wins.

Runs on whatever device the input lives on (or `device`); all maths in float32. Centre sums use a
chunked one-hot matmul instead of `index_add_`, because `index_add_` on CUDA uses float atomics and
is not bit-reproducible; the matmul is (build choice: determinism over a few extra FLOPs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import HarnessError

Metric = Literal["cosine", "euclidean"]
_METRICS = ("cosine", "euclidean")


@dataclass
class KMeansResult:
    """Best k-means solution over all iterations of all restarts."""

    labels: np.ndarray  # int64 (n,)
    centers: torch.Tensor  # (k, d), on the compute device
    inertia: float  # sum of plain (not squared) distances to the assigned centre
    n_iter: int  # Lloyd iteration (1-based, within its restart) that produced this solution


@dataclass
class SeedingResult:
    """Greedy k-means++ outcome: chosen row indices and the candidates drawn at each step."""

    indices: torch.Tensor  # int64 (k,)
    candidates: torch.Tensor  # int64 (k - 1, n_seeding_trials(k))


def n_seeding_trials(k: int) -> int:
    """Candidates drawn per greedy k-means++ step: 2 + floor(ln k)."""
    return 2 + int(math.log(k))


def _distance_rows(x: torch.Tensor, metric: Metric) -> torch.Tensor:
    """`x` prepared once per call for `_pairwise` (recomputing it per chunk and iteration was most
    of the CPU time): unit rows for cosine; for euclidean the rows [-2x, |x|^2, 1], whose product
    with [c, 1, |c|^2] is |x - c|^2 -- the matrix product `torch.cdist` forms internally for more
    than 25 rows, so the distances are the same to the bit (but a zero distance stays 0, where
    cdist's clamp gives 1e-15), nine times faster on a CPU.
    """
    if metric == "cosine":
        # A zero vector normalises to zero, so its cosine distance to everything is 1.
        return F.normalize(x, dim=1)
    sq = x.pow(2).sum(dim=1, keepdim=True)
    return torch.cat([-2 * x, sq, torch.ones_like(sq)], dim=1)


def _pairwise(a: torch.Tensor, b: torch.Tensor, metric: Metric) -> torch.Tensor:
    """(len(a), len(b)) distances of `_distance_rows` a to plain rows b: 1 - cosine similarity,
    or euclidean (not squared)."""
    if metric == "cosine":
        return (1.0 - a @ F.normalize(b, dim=1).T).clamp_min_(0.0)
    sq = b.pow(2).sum(dim=1, keepdim=True)
    return (a @ torch.cat([b, torch.ones_like(sq), sq], dim=1).T).clamp_min_(0.0).sqrt_()


def _pairwise_chunked(
    x: torch.Tensor, b: torch.Tensor, metric: Metric, chunk_size: int
) -> torch.Tensor:
    return torch.cat([_pairwise(chunk, b, metric) for chunk in x.split(chunk_size)])


def _nearest(
    x: torch.Tensor, centers: torch.Tensor, metric: Metric, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels of the nearest centre and the distance to it, computed in row chunks."""
    labels, dists = [], []
    for chunk in x.split(chunk_size):
        d, lab = _pairwise(chunk, centers, metric).min(dim=1)
        labels.append(lab)
        dists.append(d)
    return torch.cat(labels), torch.cat(dists)


def _cluster_means(x: torch.Tensor, labels: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Plain mean of the points of each cluster; an empty cluster gets a zero centre."""
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    for xc, lc in zip(x.split(chunk_size), labels.split(chunk_size), strict=True):
        sums += F.one_hot(lc, k).to(x.dtype).T @ xc
    counts = torch.bincount(labels, minlength=k).clamp_min(1).to(x.dtype)
    return sums / counts[:, None]


def _paired_shift(old: torch.Tensor, new: torch.Tensor, metric: Metric) -> float:
    """Sum over clusters of d(c_old_k, c_new_k)."""
    if metric == "cosine":
        shift = 1.0 - (F.normalize(old, dim=1) * F.normalize(new, dim=1)).sum(dim=1)
    else:
        shift = (old - new).norm(dim=1)
    return float(shift.sum())


def kmeans_plusplus(
    x: torch.Tensor,
    k: int,
    *,
    metric: Metric,
    generator: torch.Generator,
    power: int = 1,
    chunk_size: int = 4096,
) -> SeedingResult:
    """Greedy k-means++ on float32 `x`: sample candidates with probability ∝ distance**power.

    `generator` is a CPU generator (draws are made on the CPU and moved to x's device, so the
    same seed picks the same rows on any device). Each step keeps the candidate that most reduces
    the potential sum(min distance**power).
    """
    n, trials = x.shape[0], n_seeding_trials(k)
    x_dist = _distance_rows(x, metric)
    first = torch.randint(n, (1,), generator=generator).to(x.device)
    closest = _pairwise_chunked(x_dist, x[first], metric, chunk_size)[:, 0] ** power
    indices, candidates = [first], []
    for _ in range(1, k):
        cumulative = torch.cumsum(closest.double(), dim=0)
        draws = torch.rand(trials, generator=generator, dtype=torch.float64).to(x.device)
        # right=True skips zero-weight rows (a draw rounding past the total is clamped).
        cand = torch.searchsorted(cumulative, draws * cumulative[-1], right=True).clamp_max_(n - 1)
        with_cand = torch.minimum(
            closest[:, None], _pairwise_chunked(x_dist, x[cand], metric, chunk_size) ** power
        )
        best = int(with_cand.sum(dim=0, dtype=torch.float64).argmin())
        closest = with_cand[:, best].contiguous()
        indices.append(cand[best : best + 1])
        candidates.append(cand)
    empty = torch.empty(0, trials, dtype=torch.long, device=x.device)
    return SeedingResult(torch.cat(indices), torch.stack(candidates) if candidates else empty)


def _lloyd(
    x: torch.Tensor,
    x_dist: torch.Tensor,
    centers: torch.Tensor,
    metric: Metric,
    max_iter: int,
    shift_tol: float,
    chunk_size: int,
) -> tuple[float, torch.Tensor, torch.Tensor, int]:
    """One restart: (inertia, labels, centres, iteration) of its lowest-inertia iteration.

    `x_dist` = `_distance_rows(x, metric)`: distances use it, centres are means of `x`.
    """
    k = centers.shape[0]
    labels, _ = _nearest(x_dist, centers, metric, chunk_size)
    best: tuple[float, torch.Tensor, torch.Tensor, int] = (math.inf, labels, centers, 0)
    for it in range(1, max_iter + 1):
        new_centers = _cluster_means(x, labels, k, chunk_size)
        new_labels, dists = _nearest(x_dist, new_centers, metric, chunk_size)
        inertia = float(dists.sum(dtype=torch.float64))
        if inertia < best[0]:
            best = (inertia, new_labels, new_centers, it)
        converged = (
            torch.equal(new_labels, labels)
            or _paired_shift(centers, new_centers, metric) <= shift_tol
        )
        labels, centers = new_labels, new_centers
        if converged:
            break
    return best


def _as_float_matrix(
    x: torch.Tensor | np.ndarray, device: str | torch.device | None
) -> torch.Tensor:
    """float32 2-D tensor on `device` (default: x's own device); rejects non-finite values."""
    t = torch.as_tensor(x)
    if device is not None:
        t = t.to(device)
    if t.ndim != 2 or t.shape[0] == 0:
        raise HarnessError(
            f"k-means needs a non-empty 2-D feature matrix (n, d); got shape {tuple(t.shape)}"
        )
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise HarnessError(
            f"k-means input has {bad} rows with NaN/inf features; the feature extractor diverged"
            " or the checkpoint is corrupt: check the training log and re-run the cell"
        )
    return t.contiguous()


def _check_metric(metric: str) -> None:
    if metric not in _METRICS:
        raise HarnessError(f"unknown k-means metric {metric!r}: use one of {', '.join(_METRICS)}")


def kmeans(
    x: torch.Tensor | np.ndarray,
    k: int,
    *,
    metric: Metric = "cosine",
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    kpp_power: int = 1,
    device: str | torch.device | None = None,
    chunk_size: int = 4096,
) -> KMeansResult:
    """Cluster the rows of `x` into `k` groups; restart r is seeded with `seed + r`.

    kpp_power 1 samples k-means++ candidates ∝ distance (torch_clustering), 2 ∝ distance² (classic).
    """
    _check_metric(metric)
    xt = _as_float_matrix(x, device)
    n = xt.shape[0]
    if not 1 <= k <= n:
        raise HarnessError(f"k-means needs 1 <= k <= number of samples; got k={k} for {n} samples")
    if n_init < 1 or max_iter < 1 or kpp_power < 1 or chunk_size < 1:
        raise HarnessError(
            "k-means needs n_init, max_iter, kpp_power and chunk_size >= 1; got"
            f" {n_init}, {max_iter}, {kpp_power}, {chunk_size}"
        )
    shift_tol = tol * float(xt.var(dim=0, correction=1 if n > 1 else 0).mean())
    best: tuple[float, torch.Tensor, torch.Tensor, int] | None = None
    x_dist = _distance_rows(xt, metric)
    for restart in range(n_init):
        generator = torch.Generator().manual_seed(seed + restart)
        seeds = kmeans_plusplus(
            xt, k, metric=metric, generator=generator, power=kpp_power, chunk_size=chunk_size
        )
        run = _lloyd(xt, x_dist, xt[seeds.indices].clone(), metric, max_iter, shift_tol,
                     chunk_size)
        if best is None or run[0] < best[0]:
            best = run
    assert best is not None
    inertia, labels, centers, n_iter = best
    return KMeansResult(labels.cpu().numpy().astype(np.int64), centers, inertia, n_iter)


def assign(
    x: torch.Tensor | np.ndarray,
    centers: torch.Tensor,
    metric: Metric = "cosine",
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Nearest-centre labels (int64, on the centres' device), computed in row chunks."""
    _check_metric(metric)
    xt = _as_float_matrix(x, centers.device)
    if centers.ndim != 2 or centers.shape[1] != xt.shape[1]:
        raise HarnessError(
            f"centres of shape {tuple(centers.shape)} do not match features of dimension"
            f" {xt.shape[1]}"
        )
    labels, _ = _nearest(_distance_rows(xt, metric), centers.to(torch.float32), metric, chunk_size)
    return labels
