"""The one evaluation every run gets (harness_design.md section 8).

For each feature kind a method embeds: k-means (torch; GPU when present) once per eval seed, then
Hungarian ACC, NMI, ARI, CAA, kappa and head/medium/tail ACC against the split's labels; the run's
value is the mean over eval seeds, their std is kept apart from the training-seed std. Methods with
a cluster head are also evaluated on its assignments. Predictions go to `predictions.npz`.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from harness.config import CellConfig
from harness.kmeans import kmeans
from harness.method import Method, load_cell_data, resolve_device
from harness.metrics import evaluate_clustering, map_clusters, per_class_accuracy
from harness.registry import dataset_class
from harness.seeding import eval_seed_list
from harness.settings import DEFAULT_PROTOCOL
from harness.store import atomic_write_bytes



def protocol_of(cfg: CellConfig) -> dict[str, Any]:
    """The cell's protocol settings over the defaults."""
    return {**DEFAULT_PROTOCOL, **cfg.protocol}


def _summarise(labels: np.ndarray, preds: list[np.ndarray], num_classes: int,
               class_counts: list[int], group_scheme: str) -> dict[str, Any]:
    per_seed = [evaluate_clustering(labels, pr, num_classes, class_counts, group_scheme)
                for pr in preds]
    keys = per_seed[0].keys()
    per_class = np.nanmean([per_class_accuracy(labels, map_clusters(labels, pr), num_classes)
                            for pr in preds], axis=0)
    sizes = np.sort(np.bincount(preds[0], minlength=num_classes))[::-1]
    return {
        "metrics": {k: float(np.mean([m[k] for m in per_seed])) for k in keys},
        "metrics_std": {k: float(np.std([m[k] for m in per_seed])) for k in keys},
        "per_class_acc": [None if np.isnan(v) else float(v) for v in per_class],
        "cluster_sizes": sizes.tolist(),
    }


def evaluate_cell(method: Method, cfg: CellConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate a trained cell; writes `predictions.npz` and returns the metrics dict."""
    proto = protocol_of(cfg)
    seeds = eval_seed_list(cfg.eval_seeds)
    device = resolve_device(cfg.device)
    train_data = load_cell_data(cfg, "lt_train")
    class_counts = train_data.manifest["counts"]
    k = int(proto.get("K") or train_data.num_classes)
    groups = dataset_class(cfg.dataset).group_scheme
    variants: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for split in [proto["split"], *proto["extra_splits"]]:
        data = train_data if split == "lt_train" else load_cell_data(cfg, split)
        labels = data.labels.numpy()
        arrays[f"labels__{split}"] = labels
        for kind, feats in method.embed(cfg, run_dir, split).items():
            metric = method.kmeans_metric.get(kind, "cosine")
            preds = [kmeans(feats, k, metric=metric, n_init=proto["n_init"],
                            max_iter=proto["max_iter"], seed=s, device=device).labels
                     for s in seeds]
            key = f"{kind}/kmeans/{split}"
            arrays[f"pred__{key.replace('/', '__')}"] = np.stack(preds)
            card = {"split": split, "features": kind, "assign": "kmeans", "K": k,
                    "matching": proto["matching"], "eval_seeds": cfg.eval_seeds,
                    "n_eval_seeds": len(seeds),
                    "kmeans": {"metric": metric, "n_init": proto["n_init"],
                               "max_iter": proto["max_iter"]}}
            variants[key] = {"protocol": card, **_summarise(labels, preds, data.num_classes,
                                                            class_counts, groups)}
        head = method.predict(cfg, run_dir, split)
        if head is not None:
            key = f"head/head/{split}"
            arrays[f"pred__{key.replace('/', '__')}"] = head[None]
            card = {"split": split, "features": "head", "assign": "head", "K": k,
                    "matching": proto["matching"], "eval_seeds": None, "n_eval_seeds": 1}
            variants[key] = {"protocol": card, **_summarise(labels, [head], data.num_classes,
                                                            class_counts, groups)}
    buf = io.BytesIO()
    np.savez_compressed(buf, indices=np.asarray(train_data.manifest["indices"]), **arrays)
    atomic_write_bytes(Path(run_dir) / "predictions.npz", buf.getvalue())
    primary = next(iter(variants))
    return {
        "method": cfg.method, "dataset": cfg.dataset, "ir": cfg.ir, "seed": cfg.seed,
        "uid": cfg.uid, "manifest_sha256": train_data.manifest["sha256"],
        "class_counts": class_counts, "class_names": list(train_data.class_names),
        "primary": primary, "variants": variants,
        "predictions_sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
    }
