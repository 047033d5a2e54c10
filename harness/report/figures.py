"""Report figures (PNG and PDF): per-class accuracy against class size, predicted cluster sizes
against true class sizes, training-loss curves, and a grid-coverage heat map.

build choice: figures are drawn on `matplotlib.figure.Figure` objects (no pyplot state); PNG goes
through the Agg canvas and PDF through matplotlib's PDF backend, so no display is ever needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from harness.report.data import read_train_log
from harness.report.format import Column, column_title, method_name

FORMATS = ("png", "pdf")


def _save(fig: Figure, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = folder / f"{stem}.{fmt}"
        # No creation date in the PDF, so the same results give the same bytes.
        fig.savefig(path, dpi=100, bbox_inches="tight",
                    metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(path)
    return paths


def _stack(arrays: Sequence[Sequence[float]]) -> np.ndarray | None:
    """Mean over runs of equal-length arrays; the first one when lengths differ."""
    lists = [np.asarray(a, dtype=float) for a in arrays if a is not None and len(a)]
    if not lists:
        return None
    if len({a.size for a in lists}) > 1:
        return lists[0]
    return np.mean(lists, axis=0)


def per_class_accuracy(done: pd.DataFrame, methods: Sequence[str], title: str) -> Figure | None:
    """Mean per-class accuracy (over seeds) against training class size, one series per method."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    drawn = False
    for method in methods:
        g = done[done["method"] == method]
        acc = _stack(list(g["per_class_acc"]))
        counts = _stack(list(g["class_counts"]))
        if acc is None or counts is None or acc.size != counts.size:
            continue
        order = np.argsort(-counts, kind="stable")
        ax.plot(counts[order], 100 * acc[order], marker="o", ms=3, label=method_name(method))
        drawn = True
    if not drawn:
        return None
    ax.set(xscale="log", xlabel="training images in the class", ylabel="per-class ACC (%)",
           title=title)
    for axis_formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis_formatter(ScalarFormatter())  # plain class sizes, not 10^k labels
    ax.legend(fontsize="small")
    return fig


def cluster_sizes(done: pd.DataFrame, methods: Sequence[str], title: str) -> Figure | None:
    """Sorted predicted cluster sizes per method beside the sorted true class sizes."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    true = _stack(list(done["class_counts"]))
    if true is None:
        return None
    ax.plot(np.arange(1, true.size + 1), np.sort(true)[::-1], "k--", label="true class sizes")
    for method in methods:
        sizes = _stack(list(done.loc[done["method"] == method, "cluster_sizes"]))
        if sizes is not None:
            ax.plot(np.arange(1, sizes.size + 1), np.sort(sizes)[::-1], marker=".",
                    label=method_name(method))
    ax.set(yscale="log", xlabel="rank", ylabel="images", title=title)
    for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis_formatter(ScalarFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    return fig


def loss_curves(runs: pd.DataFrame, methods: Sequence[str], title: str) -> Figure | None:
    """Training loss per epoch (mean over its steps), one line per run, coloured by method."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    drawn = False
    for i, method in enumerate(methods):
        labelled = False
        for run_dir in runs.loc[runs["method"] == method, "run_dir"].dropna():
            log = read_train_log(Path(run_dir))
            if log.empty or "loss" not in log:
                continue
            x = "epoch" if "epoch" in log else "step"
            curve = log.groupby(x)["loss"].mean()
            ax.plot(curve.index, curve.values, color=f"C{i}", alpha=0.8,
                    label=None if labelled else method_name(method))
            labelled = drawn = True
    if not drawn:
        return None
    ax.set(xlabel="epoch", ylabel="training loss", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    return fig


def coverage_heatmap(resolved: pd.DataFrame, methods: Sequence[str],
                     columns: Sequence[Column], title: str) -> Figure:
    """Fraction of seeds done per method x (dataset, IR), annotated `k/n` (+ `F` if any failed)."""
    frac = np.full((len(methods), len(columns)), np.nan)
    fig = Figure(figsize=(1.3 * len(columns) + 2, 0.5 * len(methods) + 1.5))
    ax = fig.add_subplot()
    for i, method in enumerate(methods):
        for j, (dataset, ir) in enumerate(columns):
            g = resolved[(resolved["method"] == method) & (resolved["dataset"] == dataset)
                         & (resolved["ir"] == ir)]
            if g.empty:
                continue
            done = int((g["state"] == "completed").sum())
            failed = int(g["state"].isin(["failed", "killed", "interrupted"]).sum())
            frac[i, j] = done / len(g)
            ax.text(j, i, f"{done}/{len(g)}" + (f" {failed}F" if failed else ""),
                    ha="center", va="center", fontsize="small",
                    color="white" if frac[i, j] > 0.6 else "black")
    ax.imshow(frac, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), [column_title(d, r) for d, r in columns], rotation=30,
                  ha="right")
    ax.set_yticks(range(len(methods)), [method_name(m) for m in methods])
    ax.set_title(title)
    return fig


def make_figures(resolved: pd.DataFrame, methods: Sequence[str], columns: Sequence[Column],
                 out_dir: Path, grid_name: str) -> list[Path]:
    """Draw every figure for the grid into `out_dir/figures/`; returns the written files."""
    folder = Path(out_dir) / "figures"
    paths = _save(coverage_heatmap(resolved, methods, columns, f"{grid_name}: seeds done"),
                  folder, "coverage")
    for dataset, ir in columns:
        col = resolved[(resolved["dataset"] == dataset) & (resolved["ir"] == ir)]
        done = col[col["done"]]
        title = column_title(dataset, ir)
        stem = f"{dataset}_ir{ir}"
        for name, fig in (
                ("per_class_acc",
                 per_class_accuracy(done, methods, f"Per-class accuracy vs class size, {title}")),
                ("cluster_sizes",
                 cluster_sizes(done, methods, f"Predicted cluster vs true class sizes, {title}")),
                ("loss", loss_curves(col, methods, f"Training loss, {title}"))):
            if fig is not None:
                paths += _save(fig, folder, f"{name}_{stem}")
    return paths
