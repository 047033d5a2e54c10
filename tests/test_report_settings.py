"""The report footer names, per method, every resolved setting that differs from the paper's
(budget, epochs, batch, network, image size, augmentation overrides, run card), and marks
deterministic methods instead of showing one seed as if it were a mean."""

from __future__ import annotations

from pathlib import Path

from fakeruns import expected_cells, variant, write_fake_run

from harness.registry import method_class
from harness.report import build_report

FIXED = {"date": "2024-01-01", "git_sha": "feedc0ffee00"}
PAPER_CARD = {"world_size": 1, "batch_per_device": 512, "effective_batch": 512, "gather": False,
              "amp": False}
CPU_CARD = {"world_size": 1, "batch_per_device": 128, "effective_batch": 128, "gather": False,
            "amp": False}


def _store(runs: Path) -> list[dict]:
    params = method_class("simclr").resolve_params(
        "mnist5k", {"augment": {"flip_p": 0.0, "scale": [0.3, 1.0]}}, "cpu")
    for ir in (1, 10):
        counts = [100] * 5 if ir == 1 else None
        write_fake_run(runs, "cpu", "kmeans", "mnist5k", ir, 0, data={"image_size": 16},
                       class_counts=counts, variants={
                           "pixels/kmeans/lt_train": variant({"acc": .805, "nmi": .7, "ari": .6},
                                                             "pixels")})
        for seed in range(3):
            write_fake_run(runs, "cpu", "simclr", "mnist5k", ir, seed,
                           {"acc": .6 + .01 * seed, "nmi": .5, "ari": .4}, params=params,
                           data={"image_size": 16}, run_card=CPU_CARD,
                           reference_card=PAPER_CARD, class_counts=counts)
    cells = [*expected_cells(["simclr"], [("mnist5k", 1), ("mnist5k", 10)], [0, 1, 2]),
             *expected_cells(["kmeans"], [("mnist5k", 1), ("mnist5k", 10)], [0])]
    return [{**c, "budget": "cpu"} for c in cells]


def test_footer_names_every_setting_that_differs_from_the_paper(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    md = build_report("cpu", _store(runs), runs, tmp_path / "out", figures=False,
                      **FIXED).markdown
    (line,) = [x for x in md.splitlines() if "differs from the paper for SimCLR" in x]
    for part in ("budget cpu", "epochs 30 (paper 1000)", "batch 128 (paper 512)",
                 "network basic-block ResNet 1-1-1-1, width 16 (paper resnet18, width 64)",
                 "image size 16 (paper 28)", "proj_dim 64 (paper 128)",
                 "augmentation override flip_p 0, scale [0.3, 1] (build choice)"):
        assert part in line, part
    assert "batch per device" not in line  # the params' batch already says it
    assert "log_every" not in line and "MNIST" not in line  # one setting for every column
    (kmeans,) = [x for x in md.splitlines() if "differs from the paper for K-means" in x]
    assert kmeans.endswith("K-means: image size 16 (paper 28).")  # no budget to name
    protocol = next(x for x in md.splitlines() if x.startswith("- Protocol"))
    assert protocol.endswith("backbone: basic-block ResNet 1-1-1-1, width 16.")  # not "resnet18"


def test_deterministic_method_is_marked_not_shown_as_a_seed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = build_report("cpu", _store(runs), runs, tmp_path / "out", formats=("md", "csv"),
                          figures=False, **FIXED)
    row = next(x for x in result.markdown.splitlines() if x.startswith("| K-means"))
    assert row.count("(det.)") == 6 and "±" not in row and "1/1" not in row
    assert ("det.: K-means has no training randomness: one run (seed 0) serves all 3 training "
            "seeds (0, 1, 2) of each cell, so no std is shown.") in result.markdown
    assert "Seeds per cell: 3 (seeds 0, 1, 2)." in result.markdown
    import pandas as pd

    tidy = pd.read_csv(tmp_path / "out" / "cpu.csv")
    assert set(tidy.loc[tidy["method"] == "kmeans", "deterministic"]) == {True}
    assert set(tidy.loc[tidy["method"] == "kmeans", "seed"]) == {0}
    assert not tidy.loc[tidy["method"] == "simclr", "deterministic"].any()


def test_features_backbone_keeps_raw_pixels_for_kmeans(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    md = build_report("cpu", _store(runs), runs, tmp_path / "out", variant="backbone",
                      figures=False, **FIXED).markdown
    row = next(x for x in md.splitlines() if x.startswith("| K-means"))
    assert "80.5" in row and "n/a" not in row
    assert "K-means: raw pixels kept under --features backbone" in md
    simclr = next(x for x in md.splitlines() if x.startswith("| SimCLR"))
    assert "56.0" in simclr  # the backbone variant: primary minus 0.05 in the fake runs
