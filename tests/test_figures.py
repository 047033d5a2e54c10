"""Report figures: means with error bars or bands over seeds, epoch losses from the epoch-end
rows only, per-class plots only where classes differ in size, TrueType fonts in PDFs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from fakeruns import expected_cells, write_fake_run

from harness.report import build_report
from harness.report.data import collect_runs, normalise_expected, resolve_expected, select_variant
from harness.report.figures import (cluster_sizes, epoch_losses, loss_curves,
                                    per_class_accuracy)

FIXED = {"date": "2024-01-01", "git_sha": "feedc0ffee00"}


def _resolved(runs: Path, grid: str, methods: list[str], columns: list, seeds: list[int]
              ) -> pd.DataFrame:
    exp = normalise_expected(expected_cells(methods, columns, seeds))
    return resolve_expected(exp, select_variant(collect_runs(runs, grid), None))


def test_epoch_losses_use_the_epoch_end_rows_only(tmp_path: Path) -> None:
    rows = [{"epoch": 1, "step": 5, "loss": 9.0}, {"epoch": 1, "step": 8, "loss": 5.0,
                                                   "epoch_end": True},
            {"epoch": 2, "step": 10, "loss": 1.0}, {"epoch": 2, "step": 16, "loss": 4.0,
                                                    "epoch_end": True}]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert epoch_losses(tmp_path).to_dict() == {1: 5.0, 2: 4.0}
    old = [r for r in rows if not r.get("epoch_end")]  # a log from before epoch-end rows
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    assert epoch_losses(tmp_path).to_dict() == {1: 9.0, 2: 1.0}


def test_series_are_seed_means_with_their_spread(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in range(3):
        write_fake_run(runs, "f", "simclr", "cifar10", 10, seed, losses=(5.0 + seed, 4.0, 3.0))
    done = _resolved(runs, "f", ["simclr"], [("cifar10", 10)], [0, 1, 2])
    ax = loss_curves(done, ["simclr"], "t").axes[0]
    (line,) = ax.get_lines()
    assert list(line.get_ydata()) == [6.0, 4.0, 3.0] and line.get_label() == "SimCLR (3 seeds)"
    assert len(ax.collections) == 1  # the band of one std
    ax = per_class_accuracy(done, ["simclr"], "t").axes[0]
    assert len(ax.containers) == 1 and ax.containers[0].has_yerr  # error bars per class
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert all("^" not in t for t in ticks)  # plain numbers on the log axis
    ax = cluster_sizes(done, ["simclr"], "t").axes[0]
    assert len(ax.collections) == 1  # the band (of zero width: the fake runs' sizes agree)
    assert list(ax.get_lines()[1].get_ydata()) == [420, 300, 200, 130, 80]


def test_no_per_class_plot_where_classes_are_equal_and_truetype_pdfs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in range(2):
        write_fake_run(runs, "eq", "simclr", "cifar10", 1, seed, class_counts=[100] * 5)
        write_fake_run(runs, "eq", "simclr", "cifar10", 10, seed)
    expected = expected_cells(["simclr"], [("cifar10", 1), ("cifar10", 10)], [0, 1])
    result = build_report("eq", expected, runs, tmp_path / "out", formats=("md",), **FIXED)
    stems = {p.stem for p in result.files if p.parent.name == "figures"}
    assert "per_class_acc_cifar10_ir10" in stems and "per_class_acc_cifar10_ir1" not in stems
    assert {"coverage", "cluster_sizes_cifar10_ir1", "loss_cifar10_ir1"} <= stems
    for pdf in (p for p in result.files if p.suffix == ".pdf"):
        data = pdf.read_bytes()
        # TrueType outlines (matplotlib's Type 42: a CIDFontType2 font), never Type 3
        assert b"/Type3" not in data and b"/CIDFontType2" in data, pdf.name
