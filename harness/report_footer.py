"""The report footer: how values were made, the evaluation protocol, coverage, failures and
provenance (git SHA, date). Lines are plain text; Markdown and LaTeX wrap them."""

from __future__ import annotations

import datetime as _dt
import math
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import CARD_FIELDS
from harness.report_data import state_bucket
from harness.report_format import column_title, dataset_name, method_name

_PROTOCOL_FIELDS = (("split", "split"), ("features", "features"), ("assign", "assignment"),
                    ("K", "K"), ("matching", "matching"), ("eval_seeds", "eval seeds"),
                    ("kmeans", "k-means"), ("backbone", "backbone"))


@dataclass(frozen=True)
class FooterContext:
    """Everything the footer describes besides the cells themselves."""

    grid_name: str
    runs_dir: Path
    variant: str | None
    date: str
    git_sha: str
    stats: bool
    alpha: float
    not_registered: Sequence[str]
    ignored_runs: int
    csv_name: str | None = None


def default_git_sha() -> str:
    """Short SHA of the repository holding this package, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def today() -> str:
    """Today's date (UTC), ISO format."""
    return _dt.datetime.now(_dt.timezone.utc).date().isoformat()


def _describe(field: str, card: dict[str, Any], backbone: Any, n_classes: int | None) -> str:
    if field == "backbone":
        return str(backbone)
    value = card.get(field)
    if field == "K" and n_classes is not None and value == n_classes:
        return "C (number of classes)"
    if field == "eval_seeds" and card.get("n_eval_seeds"):
        return f"{value} ({card['n_eval_seeds']} per run)"
    if field == "kmeans" and isinstance(value, dict):
        extra = {k: v for k, v in value.items() if k not in ("metric", "n_init", "max_iter")}
        text = (f"{value.get('metric', '?')} distance, {value.get('n_init', '?')} restarts, "
                f"{value.get('max_iter', '?')} iterations")
        return text + "".join(f", {k} {v}" for k, v in sorted(extra.items()))
    return str(value)


def protocol_line(done: pd.DataFrame) -> str:
    """'Protocol: split lt_train; features projector; ...', per method where methods differ."""
    parts = []
    for field, label in _PROTOCOL_FIELDS:
        groups: dict[str, list[str]] = {}
        for r in done.itertuples(index=False):
            value = r.backbone if field == "backbone" else r.protocol.get(field)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            n_classes = len(r.class_counts) if isinstance(r.class_counts, list) else None
            text = _describe(field, r.protocol, r.backbone, n_classes)
            names = groups.setdefault(text, [])
            if method_name(r.method) not in names:
                names.append(method_name(r.method))
        if len(groups) == 1:
            parts.append(f"{label}: {next(iter(groups))}")
        elif groups:
            parts.append(f"{label}: " + ", ".join(f"{t} ({', '.join(ms)})"
                                                 for t, ms in groups.items()))
    return "Protocol: " + ("; ".join(parts) if parts else "no finished run yet") + "."


def _relative(path: str, runs_dir: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(runs_dir).resolve()))
    except ValueError:
        return path


def _counts_text(g: pd.DataFrame) -> str:
    buckets = g["state"].map(state_bucket).value_counts()
    others = [f"{buckets[b]} {b}" for b in ("running", "pending", "failed", "missing")
              if buckets.get(b, 0)]
    done = f"{int(g['done'].sum())}/{len(g)} seeds done"
    return done + (f": {', '.join(others)}" if others else "")


def invariance_lines(done: pd.DataFrame) -> list[str]:
    """Invariance guard (design D10): per method, the datasets whose runs differ from the paper
    setting and how; bf16 autocast named wherever it was used (every upstream trained in fp32);
    devices emulated on one GPU (per-device BatchNorm groups) named as such."""
    diffs: dict[str, dict[str, list[str]]] = {}
    bf16: dict[str, list[str]] = {}
    emulated: dict[str, list[str]] = {}

    def add(to: dict[str, list[str]], key: str, value: str) -> None:
        if value not in to.setdefault(key, []):
            to[key].append(value)

    for r in done.itertuples(index=False):
        run, paper = getattr(r, "run_card", None), getattr(r, "reference_card", None)
        if not isinstance(run, dict) or not run:
            continue
        method, dataset = method_name(r.method), dataset_name(r.dataset)
        paper = paper if isinstance(paper, dict) else {}
        if run.get("amp") and paper.get("amp") is not True:
            add(bf16, method, dataset)
        if run.get("emulated_devices"):
            add(emulated, method, f"{dataset}: {run['world_size']} x {run['batch_per_device']}")
        text = ", ".join(f"{f.replace('_', ' ')} {run[f]} (paper {paper[f]})" for f in CARD_FIELDS
                         if f != "amp" and f in run and f in paper and run[f] != paper[f])
        if text:
            add(diffs.setdefault(method, {}), text, dataset)
    lines = [f"Setting differs from the paper for {method} ({', '.join(datasets)}): {text}."
             for method, texts in diffs.items() for text, datasets in texts.items()]
    if bf16:
        lines.append("bf16 autocast, a deviation from the paper setting (every upstream trained "
                     "in fp32): " + "; ".join(f"{m} ({', '.join(d)})" for m, d in bf16.items())
                     + ".")
    if emulated:
        lines.append("Devices emulated on one GPU (BatchNorm statistics per device group, "
                     "devices x batch per device): "
                     + "; ".join(f"{m} ({', '.join(d)})" for m, d in emulated.items()) + ".")
    return lines


def footer_lines(ctx: FooterContext, resolved: pd.DataFrame) -> list[str]:
    """The footer as plain-text lines (Markdown shows them as a list, LaTeX as `%` comments)."""
    done = resolved[resolved["done"]]
    lines = ["Values: mean ± std over training seeds (sample std, ddof 1), fractions ×100 with one "
             "decimal; best in bold, second underlined per column; `k/n seeds`: only k of n "
             "seeds finished."]
    if ctx.stats:
        lines.append(f"†: below the column's best method, paired t-test over shared seeds, "
                     f"p < {ctx.alpha} (Wilcoxon p in the paired-tests table).")
    seed_sets = {tuple(sorted(g["seed"])) for _, g in resolved.groupby(
        ["method", "dataset", "ir"], sort=False)}
    if len(seed_sets) == 1:
        only = next(iter(seed_sets))
        seeds = f"{len(only)} (seed{'s' if len(only) > 1 else ''} {', '.join(map(str, only))})"
    else:
        seeds = f"{min(map(len, seed_sets))} to {max(map(len, seed_sets))} (varies by cell)"
    lines.append(f"Seeds per cell: {seeds}."
                 + (f" Within-run k-means std (over eval seeds): column eval_std of {ctx.csv_name}."
                    if ctx.csv_name else ""))
    keys = sorted(set(done["variant"].dropna()))
    lines.append(("Variant: " + (f"'{ctx.variant}' → " if ctx.variant else "primary → ")
                  + (", ".join(keys) if keys else "none found") + "."))
    lines.append(protocol_line(done))
    lines += invariance_lines(done)
    incomplete, missing = [], []
    for (method, dataset, ir), g in resolved.groupby(["method", "dataset", "ir"], sort=False):
        text = f"{method_name(method)} {column_title(dataset, ir)} ({_counts_text(g)})"
        if not g["done"].any():
            missing.append(text)
        elif not g["done"].all():
            incomplete.append(text)
    if missing:
        lines.append("Missing cells (no finished seed): " + "; ".join(missing) + ".")
    if incomplete:
        lines.append("Incomplete cells: " + "; ".join(incomplete) + ".")
    no_variant = resolved[(resolved["state"] == "completed") & ~resolved["done"]]
    if len(no_variant):
        lines.append(f"n/a: {len(no_variant)} completed run(s) have no such variant.")
    for r in resolved[resolved["state"].map(state_bucket) == "failed"].itertuples(index=False):
        log = r.log_path or (str(Path(r.run_dir) / "log.txt") if r.run_dir else "")
        error = (r.error or "no error recorded")[:200]
        lines.append(f"FAILED: {method_name(r.method)} {column_title(r.dataset, r.ir)} seed "
                     f"{r.seed} ({r.state}): {error} (log: {_relative(log, ctx.runs_dir)}).")
    if ctx.not_registered:
        lines.append("Not registered (shown as missing): " + ", ".join(ctx.not_registered) + ".")
    if ctx.ignored_runs:
        lines.append(f"{ctx.ignored_runs} run folder(s) under the grid were not used (not among "
                     "its cells, or superseded by another folder of the same seed).")
    shas = done["git_sha"].fillna("unknown").astype(str).value_counts()
    runs_sha = ", ".join(f"{sha} ({n} run{'s' if n != 1 else ''})"
                         for sha, n in sorted(shas.items())) or "none"
    lines.append(f"Git SHA: report {ctx.git_sha}; runs {runs_sha}. Date: {ctx.date}. "
                 f"Grid: {ctx.grid_name}.")
    return lines
