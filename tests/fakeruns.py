"""Fake run folders for report tests, in the run-store layout the worker writes.

`write_fake_run(runs_dir, grid, method, dataset, ir, seed, metrics, state=...)` writes
`config.yaml`, `status.json`, `log.txt`, `train_log.jsonl` (step rows and epoch-end rows, as
the training loop writes them) and, for completed runs, `metrics.json` with a primary projector
variant and a backbone variant, and `predictions.npz`; pending and running runs get a
`cell.lock` naming this process, so they are not stale. Everything is
deterministic (fixed dates and SHAs), so report output can be compared with golden files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.cell_lock import LOCK_NAME, this_process
from harness.config import CellConfig, write_config
from harness.store import atomic_write_bytes, atomic_write_json, atomic_write_text

PRIMARY = "projector/kmeans/lt_train"
BACKBONE = "backbone/kmeans/lt_train"
CLASS_COUNTS = [500, 300, 180, 100, 50]


def protocol_card(features: str = "projector", split: str = "lt_train", K: int = 5,
                  **overrides: Any) -> dict[str, Any]:
    """A protocol card as `metrics.json` stores it."""
    card = {"split": split, "features": features, "assign": "kmeans", "K": K,
            "matching": "hungarian", "eval_seeds": "conmix10", "n_eval_seeds": 10,
            "kmeans": {"metric": "cosine", "n_init": 10, "max_iter": 300}}
    card.update(overrides)
    return card


def variant(metrics: dict[str, float], features: str = "projector",
            **protocol: Any) -> dict[str, Any]:
    """One entry of `metrics.json["variants"]` with fixed per-class arrays."""
    return {"protocol": protocol_card(features, **protocol), "metrics": dict(metrics),
            "metrics_std": {k: 0.01 for k in metrics},
            "per_class_acc": [0.9, 0.7, 0.5, 0.3, 0.1],
            "cluster_sizes": [420, 300, 200, 130, 80]}


def write_fake_run(runs_dir: Path, grid: str, method: str, dataset: str, ir: Any, seed: int,
                   metrics: dict[str, float] | None = None, state: str = "completed", *,
                   variants: dict[str, dict[str, Any]] | None = None,
                   manifest_sha256: str = "a" * 64, params: dict[str, Any] | None = None,
                   data: dict[str, Any] | None = None, class_counts: list[int] | None = None,
                   run_card: dict[str, Any] | None = None,
                   reference_card: dict[str, Any] | None = None,
                   error: str = "", git_sha: str = "0123456789abcdef", dirty: bool = False,
                   losses: tuple[float, ...] = (5.0, 4.5, 4.2),
                   cpu_threads: int | None = None) -> Path:
    """Write one run folder and return it. `variants` overrides the default two variants
    (primary = `metrics`, backbone = `metrics` minus 0.05)."""
    cfg = CellConfig(method=method, dataset=dataset, ir=ir, seed=seed, params=params or {},
                     data=data or {}, protocol={"split": "lt_train", "assign": "kmeans"},
                     grid=grid)
    run_dir = Path(runs_dir) / grid / cfg.relative_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg.with_location(run_dir=str(run_dir)), run_dir / "config.yaml")
    atomic_write_json(run_dir / "status.json", {
        "state": state, "attempts": 1, "job_ids": [], "started": "2024-01-01T00:00:00+00:00",
        "ended": "" if state in ("running", "pending") else "2024-01-01T01:00:00+00:00",
        "error": error,
        "error_tail": f"Traceback (most recent call last):\n{error}" if error else "",
        "log_path": str(run_dir / "log.txt")})
    if state in ("pending", "running"):  # owned by a live process: this one
        atomic_write_json(run_dir / LOCK_NAME, dataclasses.asdict(this_process("worker")))
    atomic_write_text(run_dir / "log.txt", f"fake log of {method} {dataset} {ir} {seed}\n")
    atomic_write_text(run_dir / "train_log.jsonl", "".join(
        json.dumps({"epoch": e, "step": e * 10 - 5, "loss": loss + 1.0, "lr": 0.1, "time": 1.0})
        + "\n" + json.dumps({"epoch": e, "step": e * 10, "loss": loss, "lr": 0.1, "time": 1.0,
                             "epoch_end": True, "images_per_s": 100.0}) + "\n"
        for e, loss in enumerate(losses, start=1)))
    if state == "completed":
        buf = io.BytesIO()
        np.savez(buf, labels__lt_train=np.repeat(np.arange(len(CLASS_COUNTS)), CLASS_COUNTS))
        atomic_write_bytes(run_dir / "predictions.npz", buf.getvalue())
        metrics = metrics or {"acc": 0.5, "nmi": 0.4, "ari": 0.3}
        if variants is None:
            variants = {PRIMARY: variant(metrics),
                        BACKBONE: variant({k: v - 0.05 for k, v in metrics.items()}, "backbone")}
        atomic_write_json(run_dir / "metrics.json", {
            "method": method, "dataset": dataset, "ir": ir, "seed": seed, "uid": cfg.uid,
            "manifest_sha256": manifest_sha256, "class_counts": class_counts or CLASS_COUNTS,
            "class_names": [f"c{i}" for i in range(len(class_counts or CLASS_COUNTS))],
            "primary": PRIMARY if PRIMARY in variants else next(iter(variants)),
            "variants": variants, "reference_card": reference_card or {},
            "run_card": run_card or {},
            "train": {"epochs": len(losses), "seconds": 12.5, "final_loss": losses[-1]},
            "predictions_sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
            "env": {"git_sha": git_sha, "dirty": dirty, "device": "cpu",
                    **({"cpu_threads": cpu_threads} if cpu_threads is not None else {})}})
    return run_dir


def expected_cells(methods: list[str], columns: list[tuple[str, Any]],
                   seeds: list[int]) -> list[dict[str, Any]]:
    """The grid expansion the CLI passes to the report: every method x column x seed."""
    return [{"method": m, "dataset": d, "ir": ir, "seed": s}
            for m in methods for d, ir in columns for s in seeds]
