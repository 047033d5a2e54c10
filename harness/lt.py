"""Long-tailed subsets: the per-class count rule and the manifest (specs: datasets.md).

Counts follow the ConMix reference: n_i = floor(n_max * mu**i) for i < C-1 with
mu = IR**(-1/(C-1)), and the last class computed on its own as floor(n_max / IR), so float
rounding never drops it by one. Selection keeps the first n_i samples of each class in pool order.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.store import atomic_write_text

FORMULA_VERSION = 1


def parse_ir(value: object) -> float | str:
    """Validate an imbalance ratio: a number >= 1, or 'native' (fixed by a split file)."""
    if isinstance(value, str):
        if value == "native":
            return value
        try:
            value = float(value)
        except ValueError:
            raise HarnessError(f"imbalance ratio {value!r} is not a number or 'native'") from None
    ir = float(value)  # type: ignore[arg-type]
    if not math.isfinite(ir) or ir < 1:
        raise HarnessError(
            f"imbalance ratio {value} is invalid: IR = n_max / n_min must be >= 1 (IR 1 = balanced)"
        )
    return int(ir) if ir.is_integer() else ir


def check_fits(n_max: int, ir: float) -> None:
    """Refuse an IR that leaves the tail class empty: floor(n_max / IR) must be >= 1."""
    if int(n_max / ir) < 1:
        raise HarnessError(f"imbalance ratio {ir:g} leaves the tail class without images "
                           f"(n_max = {n_max}, floor({n_max} / {ir:g}) = 0): the largest IR that "
                           f"keeps one image per class is {n_max}")


def lt_counts(num_classes: int, n_max: int, ir: float, profile: str = "exp") -> list[int]:
    """Per-class counts of the LT subset, head = class 0 (an IR above n_max leaves the tail
    empty: the edges refuse it, `DatasetPlugin.check_ir`)."""
    ir = float(parse_ir(ir))
    if num_classes < 1 or n_max < 1:
        raise HarnessError(f"need num_classes >= 1 and n_max >= 1, got {num_classes}, {n_max}")
    if num_classes == 1:
        return [n_max]
    if profile == "exp":
        mu = ir ** (-1.0 / (num_classes - 1))
        counts = [int(n_max * mu**i) for i in range(num_classes - 1)]
    elif profile == "step":  # build choice: the first floor(C/2) classes form the head half
        counts = [n_max if i < num_classes // 2 else int(n_max / ir) for i in range(num_classes - 1)]
    else:
        raise HarnessError(f"unknown LT profile {profile!r}: use 'exp' or 'step'")
    counts.append(int(n_max / ir))
    return counts


def select_first_n(labels: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Pool indices: the first counts[c] samples of each class c in pool order, grouped by class."""
    picked = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n:
            raise HarnessError(f"class {c} has {len(idx)} pool samples but the LT rule needs {n}")
        picked.append(idx[:n])
    return np.concatenate(picked).astype(np.int64) if picked else np.zeros(0, np.int64)


def _sha256_of(indices: Sequence[int], labels: Sequence[int]) -> str:
    payload = json.dumps({"indices": list(map(int, indices)), "labels": list(map(int, labels))},
                         separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def build_manifest(dataset: str, pool: str, pool_labels: np.ndarray, num_classes: int,
                   n_max: int, ir: float | str, profile: str = "exp") -> dict[str, Any]:
    """Build the manifest dict of one LT subset (first-n selection)."""
    if ir == "native":  # the split file fixes the imbalance: keep the whole pool, grouped by class
        counts = [int((pool_labels == c).sum()) for c in range(num_classes)]
    else:
        counts = lt_counts(num_classes, n_max, float(ir), profile)
    indices = select_first_n(pool_labels, counts)
    labels = pool_labels[indices].astype(np.int64)
    return {
        "dataset": dataset, "pool": pool, "C": num_classes, "n_max": n_max, "ir": ir,
        "profile": profile, "selection": "first_n", "reverse": False, "subset_seed": None,
        "counts": counts, "indices": indices.tolist(), "labels": labels.tolist(),
        "sha256": _sha256_of(indices, labels), "formula_version": FORMULA_VERSION,
    }


def manifest_path(cache: Path, dataset: str, ir: float | str, profile: str = "exp") -> Path:
    """Where a manifest lives: `<cache>/subsets/<dataset>_ir<IR>_<profile>_first_n.json`."""
    return cache / "subsets" / f"{dataset}_ir{ir}_{profile}_first_n.json"


def write_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Write a manifest atomically as canonical JSON (byte-identical for identical subsets)."""
    atomic_write_text(path, json.dumps(manifest, sort_keys=True, separators=(",", ":")) + "\n")


def read_manifest(path: Path) -> dict[str, Any]:
    """Read and verify a manifest; a changed index or label list fails its sha256 check."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"cannot read LT manifest {path}: {exc}; delete it and run "
                           f"`harness prepare` again") from None
    if _sha256_of(manifest["indices"], manifest["labels"]) != manifest["sha256"]:
        raise HarnessError(f"LT manifest {path} fails its sha256 check; delete it and run "
                           f"`harness prepare` again")
    return manifest
