"""`harness bench --eval`: the evaluation's k-means against scikit-learn's on the same features.

Features of the size of a dataset's LT subset (rows) and of ResNet-18's backbone (512 columns)
are drawn from a fixed-seed mixture of `num_classes` Gaussians (non-negative, as ReLU features
are), so no trained model is needed. Each metric of the protocol is timed: our `kmeans` with the
protocol's restarts and iterations, and `sklearn.cluster.KMeans` (Lloyd, the same restarts and
iteration cap; on unit rows for cosine) with the same number of threads. The JSON records both
times, their ratio and whether it meets the target (at most 1.2x scikit-learn on a CPU).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits

from harness.bench import device_name
from harness.errors import HarnessError
from harness.evaluate import DEFAULT_PROTOCOL
from harness.kmeans import kmeans
from harness.method import resolve_device
from harness.registry import dataset_class

EVAL_TARGET_RATIO_MAX = 1.2  # our k-means time / scikit-learn's, on a CPU


def mixture_features(n: int, dim: int, k: int, spread: float = 6.0, seed: int = 0) -> np.ndarray:
    """float32 (n, dim) non-negative features of k overlapping Gaussian clusters (fixed seed)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim))
    labels = rng.integers(0, k, n)
    return np.maximum(centers[labels] + spread * rng.normal(size=(n, dim)), 0).astype(np.float32)


def _median_seconds(run: Any, repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bench_eval(*, device: str = "cpu", dataset: str = "cifar10", ir: Any = 10, dim: int = 512,
               repeats: int = 3, threads: int | None = None) -> dict[str, Any]:
    """Seconds of one evaluation k-means (per metric), ours and scikit-learn's, and their ratio."""
    for flag, value in (("windows", repeats), ("threads", threads)):
        if value is not None and value < 1:
            raise HarnessError(f"--{flag} {value}: use a number >= 1")
    plugin = dataset_class(dataset)
    n, k = sum(plugin().lt_counts(ir)), plugin.num_classes
    x = mixture_features(n, dim, k)
    n_init, max_iter = DEFAULT_PROTOCOL["n_init"], DEFAULT_PROTOCOL["max_iter"]
    dev = resolve_device(device)
    threads = threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    entries = []
    try:
        for metric in ("cosine", "euclidean"):
            ours, result = _median_seconds(
                lambda: kmeans(x, k, metric=metric, n_init=n_init, max_iter=max_iter, seed=0,
                               device=dev), repeats)
            rows = normalize(x) if metric == "cosine" else x  # zero rows stay zero, as ours
            with threadpool_limits(threads):
                theirs, fitted = _median_seconds(
                    lambda: KMeans(k, n_init=n_init, max_iter=max_iter, random_state=0,
                                   algorithm="lloyd").fit(rows), repeats)
            ratio = ours / theirs
            entries.append({"metric": metric, "harness_seconds": ours, "sklearn_seconds": theirs,
                            "ratio": ratio, "harness_best_iteration": result.n_iter,
                            "sklearn_iterations": int(fitted.n_iter_),
                            "ratio_ok": ratio <= EVAL_TARGET_RATIO_MAX if dev.type == "cpu"
                            else None})
    finally:
        torch.set_num_threads(previous)
    return {"kind": "eval_kmeans", "device": device_name(dev), "dataset": dataset, "ir": ir, "rows": n, "dim": dim, "k": k,
            "features": "fixed-seed Gaussian mixture, ReLU-clipped", "n_init": n_init,
            "max_iter": max_iter, "threads": threads, "cpu_count": os.cpu_count(),
            "device_type": dev.type, "repeats": repeats, "statistic": "median",
            "target_ratio_max": EVAL_TARGET_RATIO_MAX, "entries": entries}


def eval_summary_lines(report: dict[str, Any]) -> list[str]:
    """One human line per metric."""
    lines = [f"evaluation k-means on {report['rows']} x {report['dim']} features, k={report['k']}, "
             f"{report['n_init']} restarts, {report['threads']} thread(s), {report['device_type']}"]
    for e in report["entries"]:
        verdict = {True: "ok", False: "too slow", None: "n/a off CPU"}[e["ratio_ok"]]
        lines.append(f"{e['metric']:<10} harness {e['harness_seconds']:7.2f} s  scikit-learn "
                     f"{e['sklearn_seconds']:7.2f} s  ratio {e['ratio']:.2f} "
                     f"(target <= {report['target_ratio_max']}: {verdict})")
    return lines
