"""Reference registry: published numbers in `results/references/<source>.yaml` (references.md §9).

`load_references` validates every file and returns one row per entry; `compare_with_references`
puts our cell means beside matching published numbers with the difference and a mark:
✓ within one std (ours or the reference's) or the tolerance δ, ▲ ours above, ▼ ours below.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from harness.errors import HarnessError

DEFAULT_REFERENCES_DIR = Path(__file__).resolve().parents[2] / "results" / "references"
STATUSES = ("confirmed", "secondary", "unconfirmed")
SPLITS = ("lt_train", "test", "train+test")
METRICS = ("acc", "nmi", "ari", "caa", "kappa", "head_acc", "medium_acc", "tail_acc", "time_s")
_SOURCE_REQUIRED = ("id", "status", "protocol")
_ENTRY_REQUIRED = ("method", "dataset", "ir", "metric", "value")
_ENTRY_OPTIONAL = ("std", "label", "notes", "unit", "status")
_METHOD_RE = re.compile(r"^([a-z][a-z0-9_]*|baseline:\S.*)$")
_DATASET_RE = re.compile(r"^[a-z][a-z0-9_]*$")
COLUMNS = ["source", "method", "label", "dataset", "ir", "metric", "value", "std", "unit", "status",
           "split", "features", "balanced", "backbone", "epochs", "notes", "source_notes", "file"]
# build choice: a difference within 1 point (on the x100 scale) counts as agreeing when neither
# side gives a larger std.
DEFAULT_TOLERANCE = 1.0


def _fail(path: Path, where: str, what: str) -> HarnessError:
    return HarnessError(f"reference file {path}: {where}: {what}; fix the YAML (schema in "
                        "references.md §9)")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_ir(path: Path, where: str, ir: Any) -> str:
    if ir == "native" or (_number(ir) and ir >= 1):
        return str(int(ir)) if _number(ir) and float(ir).is_integer() else str(ir)
    raise _fail(path, where, f"key 'ir' must be a number >= 1 or 'native', got {ir!r}")


def _check_entry(path: Path, index: int, entry: Any, source_status: str) -> dict[str, Any]:
    where = f"entries[{index}]"
    if not isinstance(entry, dict):
        raise _fail(path, where, "each entry must be a mapping")
    for key in _ENTRY_REQUIRED:
        if key not in entry:
            raise _fail(path, where, f"missing key '{key}'")
    unknown = set(entry) - set(_ENTRY_REQUIRED) - set(_ENTRY_OPTIONAL)
    if unknown:
        raise _fail(path, where, f"unknown key(s) {sorted(unknown)}")
    if not isinstance(entry["method"], str) or not _METHOD_RE.match(entry["method"]):
        raise _fail(path, where, f"key 'method' must be a registry name or 'baseline:<Name>', "
                                 f"got {entry['method']!r}")
    if not isinstance(entry["dataset"], str) or not _DATASET_RE.match(entry["dataset"]):
        raise _fail(path, where,
                    f"key 'dataset' must be a lower-case name, got {entry['dataset']!r}")
    if entry["metric"] not in METRICS:
        raise _fail(path, where, f"key 'metric' must be one of {', '.join(METRICS)}, "
                                 f"got {entry['metric']!r}")
    if not _number(entry["value"]):
        raise _fail(path, where, f"key 'value' must be a number, got {entry['value']!r}")
    if entry.get("std") is not None and not (_number(entry["std"]) and entry["std"] >= 0):
        raise _fail(path, where, f"key 'std' must be a number >= 0 or null, got {entry['std']!r}")
    status = entry.get("status", source_status)
    if status not in STATUSES:
        raise _fail(path, where, f"key 'status' must be one of {', '.join(STATUSES)}")
    return {"method": entry["method"], "label": entry.get("label", entry["method"]),
            "dataset": entry["dataset"], "ir": _check_ir(path, where, entry["ir"]),
            "metric": entry["metric"], "value": float(entry["value"]),
            "std": float(entry["std"]) if entry.get("std") is not None else math.nan,
            "unit": entry.get("unit", "%"), "status": status, "notes": entry.get("notes", "")}


def validate_reference_file(path: Path) -> list[dict[str, Any]]:
    """Validate one registry YAML and return its entries as flat dicts (see `COLUMNS`)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise HarnessError(
            f"reference file {path} is not valid YAML ({exc}); fix its syntax") from None
    if not isinstance(doc, dict) or set(doc) != {"source", "entries"}:
        raise _fail(path, "top level", "must hold exactly the keys 'source' and 'entries'")
    source, entries = doc["source"], doc["entries"]
    if not isinstance(source, dict):
        raise _fail(path, "source", "must be a mapping")
    for key in _SOURCE_REQUIRED:
        if key not in source:
            raise _fail(path, "source", f"missing key '{key}'")
    if source["id"] != path.stem:
        raise _fail(path, "source.id",
                    f"must equal the file name '{path.stem}', got {source['id']!r}")
    if source["status"] not in STATUSES:
        raise _fail(path, "source.status", f"must be one of {', '.join(STATUSES)}")
    protocol = source["protocol"]
    if not isinstance(protocol, dict) or protocol.get("split") not in SPLITS:
        raise _fail(path, "source.protocol.split", f"must be one of {', '.join(SPLITS)}")
    if not isinstance(entries, list) or not entries:
        raise _fail(path, "entries", "must be a non-empty list")
    rows = []
    seen: set[tuple[str, str, str, str, str]] = set()
    for i, entry in enumerate(entries):
        row = _check_entry(path, i, entry, source["status"])
        key = (row["method"], row["label"], row["dataset"], row["ir"], row["metric"])
        if key in seen:
            raise _fail(path, f"entries[{i}]", f"duplicate entry {key}")
        seen.add(key)
        rows.append({**row, "source": source["id"], "split": protocol["split"],
                     "features": protocol.get("features"),
                     "balanced": bool(protocol.get("balanced", False)),
                     "backbone": source.get("backbone"), "epochs": source.get("epochs"),
                     "source_notes": source.get("notes", ""),
                     "file": str(path)})
    return rows


def load_references(folder: Path | None = None) -> pd.DataFrame:
    """All entries of every `*.yaml` in `folder` (default: `results/references/`), validated."""
    folder = Path(folder) if folder is not None else DEFAULT_REFERENCES_DIR
    if not folder.is_dir():
        raise HarnessError(f"reference folder {folder} does not exist; pass the folder holding "
                           "the registry YAMLs (results/references/)")
    rows = [row for path in sorted(folder.glob("*.yaml")) for row in validate_reference_file(path)]
    return pd.DataFrame(rows, columns=COLUMNS)


def _mark(delta: float, spread: float) -> str:
    if abs(delta) <= spread:
        return "✓"
    return "▲" if delta > 0 else "▼"


def compare_with_references(ours: pd.DataFrame, refs: pd.DataFrame,
                            tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """Published numbers beside ours for every (method, dataset, metric) both have.

    `ours` needs columns method, dataset, ir, metric, mean, std (x100 scale), split and
    features; a cell without a finished run (mean NaN) still lists its published numbers. An
    entry is *comparable* when its IR equals the cell's and its evaluation split and features
    (where both sides state them) match too; otherwise (e.g. balanced train+test tables beside an
    LT cell) it is shown for context only. Only comparable entries with a value of ours get a
    mark and a difference.
    """
    out_cols = ["method", "dataset", "ir", "metric", "ours", "ours_std", "source", "label",
                "reference", "reference_std", "status", "delta", "mark", "comparable", "context",
                "notes"]
    merged = ours.merge(refs, on=["method", "dataset", "metric"], suffixes=("", "_ref"))
    rows = []
    for r in merged.itertuples(index=False):
        same_features = pd.isna(r.features_ref) or pd.isna(r.features) or \
            r.features_ref == r.features
        same_split = pd.isna(r.split) or r.split_ref == r.split
        comparable = str(r.ir_ref) == str(r.ir) and same_split and same_features
        context = "" if comparable else (
            f"context only: reference IR {r.ir_ref}, split {r.split_ref}"
            + ("" if same_features else f", features {r.features_ref}")
            + (", balanced" if r.balanced else ""))
        has_value = not pd.isna(r.mean)
        delta = float(r.mean) - float(r.value) if has_value else math.nan
        spread = max([tolerance, *(s for s in (r.std, r.std_ref) if not pd.isna(s))])
        rows.append({"method": r.method, "dataset": r.dataset, "ir": r.ir, "metric": r.metric,
                     "ours": float(r.mean), "ours_std": r.std, "source": r.source,
                     "label": r.label, "reference": r.value, "reference_std": r.std_ref,
                     "status": r.status, "delta": delta,
                     "mark": _mark(delta, spread) if comparable and has_value else "",
                     "comparable": comparable, "context": context, "notes": r.notes})
    df = pd.DataFrame(rows, columns=out_cols)
    return df.sort_values(["comparable", "method", "dataset", "ir", "metric", "source"],
                          ascending=[False, True, True, True, True, True], kind="stable",
                          ignore_index=True)
