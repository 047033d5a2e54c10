"""Paired statistics of the report: Holm's correction, bootstrap intervals, deterministic
methods paired with every seed, and a plain statement when the seeds are too few."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakeruns import expected_cells, variant, write_fake_run

from harness.report import build_report
from harness.report.stats import bootstrap_ci, holm, paired_tests, too_few_seeds

FIXED = {"date": "2024-01-01", "git_sha": "feedc0ffee00"}


def _m(acc: float, nmi: float, ari: float) -> dict[str, float]:
    return {"acc": acc, "nmi": nmi, "ari": ari}


def test_holm_matches_the_step_down_by_hand() -> None:
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.20])
    # sorted 0.01, 0.03, 0.04, 0.20 with m = 4: 0.04, 0.09, max(0.09, 0.08), 0.20
    assert holm(p)[[0, 2, 1, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert math.isnan(holm(p)[3])
    assert holm(np.array([0.5, 0.6])).tolist() == [1.0, 1.0]  # capped at 1


def test_bootstrap_interval_is_reproducible_and_holds_the_mean() -> None:
    diff = np.array([1.0, 2.0, 4.0, 3.0])
    low, high = bootstrap_ci(diff)
    assert low < diff.mean() < high and (low, high) == bootstrap_ci(diff)
    assert bootstrap_ci(np.array([2.0, 2.0])) == (2.0, 2.0)
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([1.0])))


def test_stats_mark_differences_that_survive_holm(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in range(12):
        write_fake_run(runs, "st", "conmix", "cifar10", 10, seed, _m(.70 + .01 * seed, .501, .4))
        write_fake_run(runs, "st", "simclr", "cifar10", 10, seed,
                       _m(.60 + .011 * seed, .5 + (.01 if seed % 2 else -.01), .4))
    expected = expected_cells(["conmix", "simclr"], [("cifar10", 10)], list(range(12)))
    result = build_report("st", expected, runs, tmp_path / "out", stats=True, formats=("csv",),
                          figures=False, **FIXED)
    tests = pd.read_csv(tmp_path / "out" / "st_stats.csv")
    acc = tests[tests.metric == "acc"].iloc[0]
    assert acc.best_method == "conmix" and acc.n_shared == 12 and acc.significant
    assert acc.t_holm == pytest.approx(2 * acc.t_pvalue)  # two tests with a p-value (ARI: none)
    assert acc.ci_low < acc.mean_diff < acc.ci_high < 0
    assert not tests[tests.metric == "nmi"].iloc[0].significant
    assert math.isnan(tests[tests.metric == "ari"].iloc[0].t_pvalue)  # identical values
    simclr = next(line for line in result.markdown.splitlines() if line.startswith("| SimCLR"))
    assert simclr.split("|")[2].strip().endswith("†") and "†" not in simclr.split("|")[3]
    assert "Too few seeds" not in result.markdown
    assert "Holm's correction over the 2 tests" in result.markdown


def test_three_seeds_are_said_to_be_too_few(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in range(3):
        write_fake_run(runs, "few", "conmix", "cifar10", 10, seed, _m(.7 + .01 * seed, .6, .5))
        write_fake_run(runs, "few", "simclr", "cifar10", 10, seed, _m(.5 + .02 * seed, .4, .45))
    expected = expected_cells(["conmix", "simclr"], [("cifar10", 10)], [0, 1, 2])
    result = build_report("few", expected, runs, tmp_path / "out", stats=True, formats=("md",),
                          figures=False, **FIXED)
    assert "Too few seeds to conclude anything: with 3 shared seeds the smallest possible " \
           "Wilcoxon p is 0.25" in result.markdown
    tests = paired_tests(result.cells)
    assert tests.loc[tests.metric == "acc", "t_holm"].item() < 0.05  # a steady gap, yet
    assert not tests["significant"].any() and "†" not in result.markdown.split("###")[0]
    assert too_few_seeds(tests.iloc[0:0]) is None


def test_a_deterministic_run_pairs_with_every_seed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_fake_run(runs, "det", "kmeans", "cifar10", 10, 0,
                   variants={"pixels/kmeans/lt_train": variant(_m(.3, .2, .1), "pixels")})
    for seed in range(4):
        write_fake_run(runs, "det", "simclr", "cifar10", 10, seed, _m(.6 + .01 * seed, .5, .4))
    expected = [*expected_cells(["kmeans"], [("cifar10", 10)], [0]),
                *expected_cells(["simclr"], [("cifar10", 10)], [0, 1, 2, 3])]
    result = build_report("det", expected, runs, tmp_path / "out", stats=True,
                          formats=("md",), figures=False, **FIXED)
    acc = paired_tests(result.cells).set_index("metric").loc["acc"]
    assert acc.method == "kmeans" and acc.n_shared == 4
    assert acc.mean_diff == pytest.approx(30.0 - 61.5)
