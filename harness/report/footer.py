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

from harness.report.data import GROUP_METRICS, RAW_FEATURES, state_bucket
from harness.report.format import column_title, method_name
from harness.report.settings import (deterministic_line, device_lines, network,
                                     setting_lines)

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
    n_tests: int = 0  # paired tests run (the Holm family)


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


def _describe(field: str, card: dict[str, Any], backbone: Any, n_classes: int | None,
              params: Any = None) -> str:
    if field == "backbone":
        return (network(params) if isinstance(params, dict) else None) or str(backbone)
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
            text = _describe(field, r.protocol, r.backbone, n_classes, r.params)
            names = groups.setdefault(text, [])
            if method_name(r.method) not in names:
                names.append(method_name(r.method))
        if len(groups) == 1:
            parts.append(f"{label}: {next(iter(groups))}")
        elif groups:
            parts.append(f"{label}: " + ", ".join(f"{t} ({', '.join(ms)})"
                                                 for t, ms in groups.items()))
    return "Protocol: " + ("; ".join(parts) if parts else "no finished run yet") + "."


_SPLITS = {"lt_train": "LT training set", "test": "test set", "train+test": "train and test sets"}


def evaluation_sentence(done: pd.DataFrame) -> str:
    """One plain sentence on how cells were evaluated, for the note under a LaTeX table:
    'Evaluation: k-means (K = number of classes) on projector features (K-means: pixels) of
    the LT training set, Hungarian matching, 10 k-means seeds per run.'"""
    if done.empty:
        return "No finished run yet."
    kinds: dict[str, list[str]] = {}
    for r in done.itertuples(index=False):
        names = kinds.setdefault(str(r.protocol.get("features")), [])
        if method_name(r.method) not in names:
            names.append(method_name(r.method))
    common = max(kinds, key=lambda k: len(kinds[k]))
    others = [f"{', '.join(ms)}: {k}" for k, ms in kinds.items() if k != common]
    features = f"{common} features" + (f" ({'; '.join(others)})" if others else "")
    cards = list(done["protocol"])
    ks = {c.get("K") for c in cards}
    n_classes = {len(c) for c in done["class_counts"] if isinstance(c, list)}
    k_text = "number of classes" if len(ks) == 1 and ks == n_classes else \
        ", ".join(map(str, sorted(ks, key=str)))
    assign = {c.get("assign") for c in cards}
    how = f"k-means (K = {k_text})" if assign == {"kmeans"} else \
        f"{' / '.join(sorted(map(str, assign)))} assignment (K = {k_text})"
    splits = ", ".join(sorted({_SPLITS.get(str(c.get("split")), str(c.get("split")))
                               for c in cards}))
    matching = ", ".join(sorted({str(c.get("matching")).capitalize() for c in cards}))
    seeds = sorted({int(c["n_eval_seeds"]) for c in cards if c.get("n_eval_seeds")})
    seed_text = f", {'/'.join(map(str, seeds))} k-means seeds per run" if seeds else ""
    return f"Evaluation: {how} on {features} of the {splits}, {matching} matching{seed_text}."


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


def seeds_text(resolved: pd.DataFrame, deterministic: Sequence[str]) -> str:
    """'3 training seeds' (or '2 to 3 training seeds'), deterministic methods left out."""
    rows = resolved[~resolved["method"].isin(list(deterministic))]
    sizes = {len(g) for _, g in rows.groupby(["method", "dataset", "ir"], sort=False)} or {1}
    low, high = min(sizes), max(sizes)
    n = str(low) if low == high else f"{low} to {high}"
    return f"{n} training seed{'s' if high > 1 else ''}"


def thread_lines(done: pd.DataFrame) -> list[str]:
    """Cells whose CPU seeds ran with different thread counts: their mean mixes settings that
    change CPU results (older runs did not record theirs: 'unknown')."""
    cpu = done[done["device"] == "cpu"] if "device" in done else done.iloc[0:0]
    mixed = []
    for (method, dataset, ir), g in cpu.groupby(["method", "dataset", "ir"], sort=False):
        threads = g["cpu_threads"].map(lambda t: "unknown" if pd.isna(t) else str(int(t)))
        if threads.nunique() > 1:
            parts = [f"{t} (seed{'s' if len(s) > 1 else ''} {', '.join(map(str, sorted(s)))})"
                     for t, s in g.groupby(threads)["seed"]]
            mixed.append(f"{method_name(method)} {column_title(dataset, ir)}: " + "; ".join(parts))
    if not mixed:
        return []
    return ["Mixed CPU thread counts (CPU results depend on them; rerun the odd seeds with the "
            "grid's cpu_threads): " + " | ".join(mixed) + "."]


def footer_lines(ctx: FooterContext, resolved: pd.DataFrame, cells: pd.DataFrame,
                 deterministic: Sequence[str]) -> list[str]:
    """The footer as plain-text lines (Markdown shows them as a list, LaTeX as `%` comments);
    legends only for what the tables show."""
    done = resolved[resolved["done"]]
    shown = cells[cells["n_values"] > 0]
    values = ("Values: mean ± std over training seeds (sample std, ddof 1), fractions ×100 with "
              "one decimal; best in bold, second underlined per column")
    if (shown["status"] == "partial").any():
        values += "; `k/n seeds`: only k of n seeds finished"
    lines = [values + "."]
    if ctx.stats and cells["significant"].any():
        lines.append(f"†: below the column's best method, paired t-test over shared seeds, "
                     f"p < {ctx.alpha} after Holm's correction over the {ctx.n_tests} tests of "
                     "this report (details in the paired-tests table).")
    trained = resolved[~resolved["method"].isin(list(deterministic))]
    seed_sets = {tuple(sorted(g["seed"])) for _, g in trained.groupby(
        ["method", "dataset", "ir"], sort=False)}
    if len(seed_sets) == 1:
        only = next(iter(seed_sets))
        seeds = f"{len(only)} (seed{'s' if len(only) > 1 else ''} {', '.join(map(str, only))})"
    elif seed_sets:
        seeds = f"{min(map(len, seed_sets))} to {max(map(len, seed_sets))} (varies by cell)"
    else:
        seeds = "1"
    lines.append(f"Seeds per cell: {seeds}."
                 + (f" Within-run k-means std (over eval seeds): column eval_std of {ctx.csv_name}."
                    if ctx.csv_name else ""))
    det = deterministic_line([m for m in dict.fromkeys(resolved["method"]) if m in deterministic],
                             sorted(set(trained["seed"])))
    if det:
        lines.append(det)
    keys = sorted(set(done["variant"].dropna()))
    lines.append(("Variant: " + (f"'{ctx.variant}' → " if ctx.variant else "primary → ")
                  + (", ".join(keys) if keys else "none found") + "."))
    raw = sorted({method_name(r.method) for r in done.itertuples(index=False)
                  if ctx.variant and r.variant.split("/")[0] == RAW_FEATURES
                  and r.variant.split("/")[0] != ctx.variant})
    if raw:
        lines.append(f"{', '.join(raw)}: raw pixels kept under --features {ctx.variant} "
                     "(nothing learned to choose from).")
    lines.append(protocol_line(done))
    lines += setting_lines(done)
    lines += device_lines(done)
    lines += thread_lines(done)
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
    if cells["metric"].isin(GROUP_METRICS).any() and any(
            isinstance(c, list) and len(set(c)) == 1 for c in done["class_counts"]):
        lines.append("Head/medium/tail ACC: n/a where every class has the same training count "
                     "(IR 1): there is no head or tail to split.")
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
