"""Report figures (PNG and PDF): per-class accuracy against class size, predicted cluster sizes
against true class sizes, training-loss curves and a grid-coverage heat map.

Every series is a mean over training seeds with its spread: error bars (one std) per class, a
band (mean ± one std) for cluster sizes and losses; a deterministic method's one run has none.
Per-class plots are drawn only where classes differ in size (at IR 1 every point would sit on
one vertical line). Log axes carry 1-2-5 ticks with plain numbers.

build choice: figures are drawn on `matplotlib.figure.Figure` objects (no pyplot state); PNG
goes through the Agg canvas and PDF through matplotlib's PDF backend with TrueType (Type 42)
fonts, which venues accept where they reject Type 3, so no display is ever needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from harness.report.data import read_train_log
from harness.report.format import Column, column_title, method_name

FORMATS = ("png", "pdf")
FONTS = {"pdf.fonttype": 42, "ps.fonttype": 42}  # TrueType, not Type 3


def _save(fig: Figure, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(FONTS):
        for fmt in FORMATS:
            path = folder / f"{stem}.{fmt}"
            # No creation date in the PDF, so the same results give the same bytes.
            fig.savefig(path, dpi=150, bbox_inches="tight",
                        metadata={"CreationDate": None} if fmt == "pdf" else None)
            paths.append(path)
    return paths


def _log_ticks(axis: Axis) -> None:
    """Ticks at 1, 2 and 5 times powers of ten, labelled as plain numbers."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _rows(arrays: Sequence[object]) -> np.ndarray | None:
    """Runs x values for the runs whose arrays have the most common length (None if none)."""
    lists = [np.asarray(a, dtype=float) for a in arrays if isinstance(a, list) and len(a)]
    if not lists:
        return None
    sizes = [a.size for a in lists]
    common = max(set(sizes), key=sizes.count)
    return np.stack([a for a in lists if a.size == common])


def _spread(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean over runs and the sample std (None with one run)."""
    mean = np.nanmean(rows, axis=0)
    return mean, (np.nanstd(rows, axis=0, ddof=1) if len(rows) > 1 else None)


def _label(method: str, n_runs: int, deterministic: bool) -> str:
    return f"{method_name(method)} ({'det.' if deterministic else f'{n_runs} seeds'})"


def per_class_accuracy(done: pd.DataFrame, methods: Sequence[str], title: str,
                       deterministic: Sequence[str] = ()) -> Figure | None:
    """Per-class accuracy (mean ± std over seeds) against the class's training count, one
    series per method; None where every class has the same count or nothing is finished."""
    counts = _rows(list(done["class_counts"]))
    if counts is None or len(set(counts[0])) < 2:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    x = counts[0]
    order = np.argsort(-x, kind="stable")
    drawn = 0
    for i, method in enumerate(methods):
        acc = _rows(list(done.loc[done["method"] == method, "per_class_acc"]))
        if acc is None or acc.shape[1] != x.size:
            continue
        mean, std = _spread(100 * acc)
        shift = 1 + 0.025 * (i - (len(methods) - 1) / 2)  # keeps the error bars apart
        yerr = None if std is None else np.stack([  # one std, clipped to 0-100 %
            mean - np.maximum(mean - std, 0), np.minimum(mean + std, 100) - mean])[:, order]
        ax.errorbar(x[order] * shift, mean[order], yerr=yerr,
                    marker="o", ms=3, capsize=2, lw=1,
                    label=_label(method, len(acc), method in deterministic))
        drawn += 1
    if not drawn:
        return None
    ax.set(xscale="log", xlabel="training images in the class", ylabel="per-class ACC (%)",
           title=title)
    _log_ticks(ax.xaxis)
    ax.legend(fontsize="small")
    return fig


def cluster_sizes(done: pd.DataFrame, methods: Sequence[str], title: str,
                  deterministic: Sequence[str] = ()) -> Figure | None:
    """Sorted predicted cluster sizes per method (mean, band of one std over seeds) beside the
    sorted true class sizes."""
    true = _rows(list(done["class_counts"]))
    if true is None:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    rank = np.arange(1, true.shape[1] + 1)
    ax.plot(rank, np.sort(true[0])[::-1], "k--", label="true class sizes")
    for method in methods:
        sizes = _rows(list(done.loc[done["method"] == method, "cluster_sizes"]))
        if sizes is None:
            continue
        mean, std = _spread(-np.sort(-sizes, axis=1))
        r = np.arange(1, mean.size + 1)
        (line,) = ax.plot(r, mean, marker=".", label=_label(method, len(sizes),
                                                             method in deterministic))
        if std is not None:
            ax.fill_between(r, np.maximum(mean - std, 0.5), mean + std, color=line.get_color(),
                            alpha=0.2, lw=0)
    ax.set(yscale="log", xlabel="cluster rank (largest first)", ylabel="images", title=title)
    _log_ticks(ax.yaxis)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    return fig


def epoch_losses(run_dir: Path) -> pd.Series | None:
    """Training loss per epoch: the epoch-end rows (the mean over all of an epoch's steps);
    logs written before those rows existed fall back to the mean of the epoch's step rows."""
    log = read_train_log(run_dir)
    if log.empty or "loss" not in log or "epoch" not in log:
        return None
    ends = log[log["epoch_end"].fillna(False).astype(bool)] if "epoch_end" in log else log.iloc[:0]
    rows = ends if len(ends) else log
    return rows.groupby("epoch")["loss"].mean()  # a resumed epoch may appear twice


def loss_curves(runs: pd.DataFrame, methods: Sequence[str], title: str) -> Figure | None:
    """Training loss per epoch, mean over seeds with a band of one std, one colour per method
    (its finished runs where it has any, else the runs so far, over the epochs all reached)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    drawn = False
    for method in methods:
        g = runs[runs["method"] == method]
        if (g["state"] == "completed").any():  # finished runs only, where there are any
            g = g[g["state"] == "completed"]
        curves = [c for d in g["run_dir"].dropna()
                  for c in [epoch_losses(Path(d))] if c is not None and len(c)]
        if not curves:
            continue
        table = pd.concat(curves, axis=1).dropna()  # epochs every run has reached
        if table.empty:
            continue
        mean = table.mean(axis=1)
        (line,) = ax.plot(mean.index, mean.values, label=f"{method_name(method)} "
                                                         f"({table.shape[1]} seeds)")
        if table.shape[1] > 1:
            std = table.std(axis=1, ddof=1)
            ax.fill_between(mean.index, mean - std, mean + std, color=line.get_color(),
                            alpha=0.2, lw=0)
        drawn = True
    if not drawn:
        return None
    ax.set(xlabel="epoch", ylabel="training loss (epoch mean)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    return fig


def coverage_heatmap(resolved: pd.DataFrame, methods: Sequence[str],
                     columns: Sequence[Column], title: str,
                     deterministic: Sequence[str] = ()) -> Figure:
    """Fraction of seeds done per method x (dataset, IR), annotated `k/n` (+ `F` if any failed,
    `det.` for a deterministic method's one run)."""
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
            ax.text(j, i, f"{done}/{len(g)}" + (f" {failed}F" if failed else "")
                    + (" det." if method in deterministic else ""),
                    ha="center", va="center", fontsize="small",
                    color="white" if frac[i, j] > 0.6 else "black")
    ax.imshow(frac, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), [column_title(d, r) for d, r in columns], rotation=30,
                  ha="right")
    ax.set_yticks(range(len(methods)), [method_name(m) for m in methods])
    ax.set_title(title)
    return fig


def make_figures(resolved: pd.DataFrame, methods: Sequence[str], columns: Sequence[Column],
                 out_dir: Path, grid_name: str, deterministic: Sequence[str] = ()) -> list[Path]:
    """Draw every figure for the grid into `out_dir/figures/`; returns the written files."""
    folder = Path(out_dir) / "figures"
    paths = _save(coverage_heatmap(resolved, methods, columns, f"{grid_name}: seeds done",
                                   deterministic), folder, "coverage")
    for dataset, ir in columns:
        col = resolved[(resolved["dataset"] == dataset) & (resolved["ir"] == ir)]
        done = col[col["done"]]
        title = column_title(dataset, ir)
        stem = f"{dataset}_ir{ir}"
        for name, fig in (
                ("per_class_acc", per_class_accuracy(
                    done, methods, f"Per-class accuracy vs class size, {title}", deterministic)),
                ("cluster_sizes", cluster_sizes(
                    done, methods, f"Predicted cluster vs true class sizes, {title}",
                    deterministic)),
                ("loss", loss_curves(col, methods, f"Training loss, {title}"))):
            if fig is not None:
                paths += _save(fig, folder, f"{name}_{stem}")
    return paths
