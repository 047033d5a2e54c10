"""Report side of the harness: tables, golden files, coverage, protocol guards, stats, figures.

Golden files live in tests/golden/; regenerate with `UPDATE_GOLDEN=1 pytest tests/test_report.py`
after checking the diff by eye.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest
from fakeruns import BACKBONE, PRIMARY, expected_cells, variant, write_fake_run

from harness.errors import HarnessError
from harness.report import build_report, status_table
from harness.report.cells import rounded
from harness.report.data import collect_runs
from harness.report.format import macro_name

GOLDEN = Path(__file__).parent / "golden"
GRID = "golden"
METHODS = ["simclr", "conmix", "propos", "ghost"]
COLUMNS = [("cifar10", 10), ("cifar10", 100), ("stl10", 10)]
FIXED = {"date": "2024-01-01", "git_sha": "feedc0ffee00"}


def _m(acc: float, nmi: float, ari: float) -> dict[str, float]:
    return {"acc": acc, "nmi": nmi, "ari": ari}


def make_golden_store(runs: Path) -> list[dict]:
    """A fixed grid with every kind of cell: full, partial, failed, running, missing, ties."""
    def put(method: str, dataset: str, ir: int, rows: list[dict | str | None]) -> None:
        for seed, row in enumerate(rows):
            if isinstance(row, dict):
                write_fake_run(runs, GRID, method, dataset, ir, seed, row)
            elif row is not None:
                write_fake_run(runs, GRID, method, dataset, ir, seed, state=row,
                               error=f"RuntimeError: boom {seed}" if row == "failed" else "")

    put("simclr", "cifar10", 10, [_m(.600, .500, .400), _m(.612, .510, .410), _m(.605, .520, .390)])
    put("conmix", "cifar10", 10, [_m(.640, .550, .450), _m(.652, .560, .440),
                                  _m(.6455, .570, .460)])
    put("propos", "cifar10", 10, [_m(.620, .530, .420), _m(.630, .540, .430), "failed"])
    put("simclr", "cifar10", 100, [_m(.401, .351, -.012), _m(.399, .349, -.010),
                                   _m(.400, .350, -.011)])
    put("conmix", "cifar10", 100, ["failed", "failed", "killed"])
    put("propos", "cifar10", 100, ["running", "pending", None])
    # ACC means are both 0.5125: the shown value must round half up (51.3) and tie for best.
    put("simclr", "stl10", 10, [_m(.5120, .40, .30), _m(.5130, .41, .31), _m(.5125, .42, .32)])
    put("conmix", "stl10", 10, [_m(.5130, .45, .28), _m(.5125, .46, .29), _m(.5120, .47, .30)])
    put("propos", "stl10", 10, [_m(.480, .43, .29), None, None])
    return expected_cells(METHODS, COLUMNS, [0, 1, 2])


def _report(tmp_path: Path, **kw: object):
    runs = tmp_path / "runs"
    expected = make_golden_store(runs)
    args = {"formats": ("md", "latex", "csv"), "figures": False,
            "known_methods": {"simclr", "conmix", "propos"}, **FIXED, **kw}
    return build_report(GRID, expected, runs, tmp_path / "out", **args), tmp_path / "out"


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1)"


def test_golden_markdown_latex_and_macros(tmp_path: Path) -> None:
    result, out = _report(tmp_path)
    _check_golden("report.md", result.markdown)
    _check_golden("report_main.tex", (out / f"{GRID}_main.tex").read_text())
    _check_golden("results_macros.tex", (out / "results_macros.tex").read_text())
    assert (out / f"{GRID}.md").read_text() == result.markdown


def test_table_cells_bold_underline_rounding_and_states(tmp_path: Path) -> None:
    result, out = _report(tmp_path)
    md = result.markdown
    row = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    # Best bold, second underlined; ConMix wins CIFAR-10 IR10 ACC (64.6), ProPos second (62.5).
    assert "**64.6** ± 0.6" in row["ConMix"] and "<u>62.5</u> ± 0.7 (2/3 seeds)" in row["ProPos"]
    # Tie at 51.3 (half-up rounding of 51.25): both bold.
    assert row["SimCLR"].count("**51.3** ± 0.1") == 1 and "**51.3** ± 0.1" in row["ConMix"]
    assert "**-1.1** ± 0.1" in row["SimCLR"]  # negative ARI keeps its sign
    assert "<u>48.0</u> (1/3 seeds)" in row["ProPos"]  # one seed: no std; second after a tie
    assert row["ConMix"].count("FAILED") == 3 and row["ProPos"].count("running") == 3
    assert row["ghost"].count("missing") == 9 and " 0.0" not in row["ghost"]
    assert "method ghost" in md and "RuntimeError: boom 0" in md
    assert "log: golden/conmix/cifar10_ir100/seed0-" in md
    tex = (out / f"{GRID}_main.tex").read_text()
    assert r"\textbf{64.6}{\scriptsize$\pm$0.6}" in tex and r"\underline{62.5}" in tex
    assert r"\textbf{\ensuremath{-}1.1}" in tex
    csv = pd.read_csv(out / f"{GRID}_table.csv")
    ghost = csv[csv["method"] == "ghost"]
    assert ghost["mean"].isna().all() and set(ghost["status"]) == {"missing"}


def test_rounding_and_macro_names() -> None:
    assert rounded(61.25, 1) == 61.3 and rounded(0.6125 * 100, 1) == 61.3
    assert rounded(61.2499, 1) == 61.2 and rounded(-1.25, 1) == -1.3
    assert macro_name("conmix", "cifar10", "10", "acc") == r"\ConMixCIFARtenIRtenACC"
    assert macro_name("simclr", "cifar20", "100", "head_acc") == \
        r"\SimCLRCIFARtwentyIRonehundredHeadACC"
    assert macro_name("dcl", "imagenet_lt", "native", "nmi") == r"\DCLImageNetLTIRnativeNMI"


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}|{stat.st_mtime_ns}|{stat.st_mode}".encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_report_never_changes_run_folders(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    expected = make_golden_store(runs)
    before = _tree_hash(runs)
    result = build_report(GRID, expected, runs, tmp_path / "out", formats=("md", "latex", "csv"),
                          references=True, stats=True, lt_columns=True, figures=True, **FIXED)
    status_table(GRID, expected, runs, show_failed=True)
    assert _tree_hash(runs) == before
    figures = [p for p in result.files if p.parent.name == "figures"]
    stems = {p.stem for p in figures}
    assert {"coverage", "per_class_acc_cifar10_ir10", "cluster_sizes_stl10_ir10",
            "loss_cifar10_ir100"} <= stems
    assert all(p.stat().st_size > 1000 for p in figures)
    assert {p.suffix for p in figures} == {".png", ".pdf"}
    with pytest.raises(HarnessError, match="inside the run store"):
        build_report(GRID, expected, runs, runs / GRID / "report", **FIXED)


def test_tidy_results_files_share_the_tables_units(tmp_path: Path) -> None:
    result, out = _report(tmp_path)
    runs_df = collect_runs(tmp_path / "runs", GRID)
    tidy = pd.read_csv(out / f"{GRID}.csv", dtype={"ir": str})
    completed = int((runs_df["state"] == "completed").sum())
    assert len(runs_df) == 24 and len(tidy) == completed * 2 * 3  # runs x variants x metrics
    assert set(tidy["variant"]) == {PRIMARY, BACKBONE} and set(tidy["unit"]) == {"%"}
    primary = tidy[tidy["primary"]]
    means = primary.groupby(["method", "dataset", "ir", "metric"])["value"].mean()
    cells = pd.read_csv(out / f"{GRID}_table.csv", dtype={"ir": str})  # same scale
    for c in cells[cells["n_values"] > 0].itertuples():
        assert means[(c.method, c.dataset, c.ir, c.metric)] == pytest.approx(c.mean)
    per_class = pd.read_csv(out / f"{GRID}_per_class.csv")
    assert len(per_class) == completed * 2 * 5 and per_class["acc"].max() == pytest.approx(90)
    assert list(per_class["train_count"][:5]) == [500, 300, 180, 100, 50]
    pytest.importorskip("pyarrow")
    pd.testing.assert_frame_equal(pd.read_parquet(out / f"{GRID}.parquet"), tidy,
                                  check_dtype=False)


def test_a_report_writes_its_files_fresh_and_lists_them(tmp_path: Path) -> None:
    result, out = _report(tmp_path, stats=True, references=True, lt_columns=True)
    assert {f"{GRID}_stats.csv", f"{GRID}_references.csv", f"{GRID}_lt.tex"} <= {
        p.name for p in result.files}
    (out / "notes.txt").write_text("mine")  # a file the report did not write stays
    again = build_report(GRID, make_golden_store(tmp_path / "runs"), tmp_path / "runs", out,
                         formats=("md",), figures=False, **FIXED)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([p.name for p in again.files] + ["notes.txt"])
    assert not (out / f"{GRID}_stats.csv").exists() and not (out / f"{GRID}_main.tex").exists()
    listed = (out / f"{GRID}_files.txt").read_text().split()
    assert sorted(listed) == sorted(p.name for p in again.files)


def test_variant_and_lt_columns(tmp_path: Path) -> None:
    result, _ = _report(tmp_path, variant="backbone", lt_columns=False)
    cells = result.cells
    acc = cells[(cells.method == "conmix") & (cells.dataset == "cifar10") & (cells.ir == "10")
                & (cells.metric == "acc")]["mean"].item()
    assert acc == pytest.approx(100 * (0.6458333 - 0.05), abs=1e-3)
    assert f"'backbone' → {BACKBONE}" in result.markdown
    with pytest.raises(HarnessError, match="unknown metric"):
        _report(tmp_path / "again", metrics=("acc", "bogus"))


def test_lt_table_of_its_own_and_missing_metric_shown_as_na(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    metrics = {"acc": .6, "nmi": .5, "ari": .4, "caa": .55, "head_acc": .8, "medium_acc": .6,
               "tail_acc": .3}
    write_fake_run(runs, "lt", "simclr", "cifar10", 10, 0, metrics)
    write_fake_run(runs, "lt", "conmix", "cifar10", 10, 0, _m(.6, .5, .4),  # no LT metrics
                   git_sha="abcdef1234567890", dirty=True)
    write_fake_run(runs, "lt", "simclr", "cifar10", 1, 0, metrics, class_counts=[100] * 5)
    expected = expected_cells(["simclr", "conmix"], [("cifar10", 10), ("cifar10", 1)], [0])
    result = build_report("lt", expected, runs, tmp_path / "out", lt_columns=True, figures=False,
                          formats=("md", "latex"), **FIXED)
    main, lt = result.markdown.split("## Long-tail view")
    assert "Tail ACC" not in main and "CIFAR-10 IR10 Tail ACC" in lt
    rows = {line.split("|")[1].strip(): line for line in lt.splitlines() if line.startswith("| ")}
    assert rows["ConMix"].count("n/a") == 4
    # At IR 1 every class is equally big: CAA is kept, head/medium/tail are n/a.
    ir1 = [c.strip() for c in rows["SimCLR"].split("|")[6:10]]
    assert ir1 == ["**55.0**", "n/a", "n/a", "n/a"]
    assert "there is no head or tail" in result.markdown
    assert "runs 0123456789ab (2 runs), abcdef123456+dirty (1 run)" in result.markdown
    tex = (tmp_path / "out" / "lt_lt.tex").read_text()
    assert r"\label{tab:lt-lt-cifar10}" in tex and "Head ACC" in tex
    assert "Head ACC" not in (tmp_path / "out" / "lt_main.tex").read_text()


def test_mixed_protocols_and_manifests_are_refused(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_fake_run(runs, "mix", "simclr", "cifar10", 10, 0, params={"backbone": "resnet18"})
    write_fake_run(runs, "mix", "simclr", "cifar10", 10, 1, params={"backbone": "resnet34"})
    expected = expected_cells(["simclr"], [("cifar10", 10)], [0, 1])
    with pytest.raises(HarnessError, match="different protocols.*backbone"):
        build_report("mix", expected, runs, tmp_path / "out", figures=False, **FIXED)

    write_fake_run(runs, "man", "simclr", "cifar10", 10, 0, manifest_sha256="1" * 64)
    write_fake_run(runs, "man", "conmix", "cifar10", 10, 0, manifest_sha256="2" * 64)
    expected = expected_cells(["simclr", "conmix"], [("cifar10", 10)], [0])
    with pytest.raises(HarnessError, match="different LT manifests"):
        build_report("man", expected, runs, tmp_path / "out", figures=False, **FIXED)

    write_fake_run(runs, "split", "simclr", "cifar10", 10, 0)
    write_fake_run(runs, "split", "conmix", "cifar10", 10, 0,
                   variants={PRIMARY: variant(_m(.5, .4, .3), split="test")})
    with pytest.raises(HarnessError, match="different evaluation protocols.*split"):
        build_report("split", expected, runs, tmp_path / "out", figures=False, **FIXED)


def test_duplicate_folders_for_one_seed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    old = write_fake_run(runs, "dup", "simclr", "cifar10", 10, 0, _m(.1, .1, .1),
                         params={"epochs": 1})
    new = write_fake_run(runs, "dup", "simclr", "cifar10", 10, 0, _m(.7, .6, .5),
                         params={"epochs": 2})
    expected = expected_cells(["simclr"], [("cifar10", 10)], [0])
    with pytest.raises(HarnessError, match="2 completed run folders"):
        build_report("dup", expected, runs, tmp_path / "out", figures=False, **FIXED)
    uid = new.name.split("-")[1]
    result = build_report("dup", [{**expected[0], "uid": uid}], runs, tmp_path / "out",
                          figures=False, **FIXED)
    assert "**70.0**" in result.markdown and "1 run folder(s)" in result.markdown
    assert old.exists()
    assert "1/1" in status_table("dup", expected, runs)  # status shows the latest, no error


def test_status_table(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    expected = make_golden_store(runs)
    text = status_table(GRID, expected, runs, show_failed=True)
    assert text.startswith("Grid golden: 18/36 runs done, 1 running, 1 pending, 4 failed, "
                           "12 missing")
    lines = {line.split("|")[1].strip(): line for line in text.splitlines()
             if line.startswith("| ")}
    assert "| 2/3 (1 failed)" in lines["ProPos"] and "0/3 (1 running, 1 pending, 1 missing)" in \
        lines["ProPos"]
    assert "0/3 (3 failed)" in lines["ConMix"] and lines["ghost"].count("0/3 (3 missing)") == 3
    assert "Failed runs (4):" in text and "RuntimeError: boom 2" in text and "log.txt" in text


def test_bad_expected_and_format(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="lacks seed"):
        build_report("g", [{"method": "a", "dataset": "b", "ir": 10}], tmp_path, tmp_path / "o")
    with pytest.raises(HarnessError, match="unknown report format"):
        build_report("g", [], tmp_path, tmp_path / "o", formats=("docx",))


def test_empty_store_reports_everything_missing(tmp_path: Path) -> None:
    expected = expected_cells(["simclr", "conmix"], [("cifar10", 10)], [0, 1])
    result = build_report("none", expected, tmp_path / "runs", tmp_path / "out", figures=True,
                          stats=True, references=True, **FIXED)
    table = result.markdown.split("- Values")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 2 and all(line.count("missing") == 3 for line in rows)
    # the published numbers for the grid's cells are listed before any run exists
    assert "| ConMix" in result.markdown.split("Comparison with published numbers")[1]
    assert "Protocol: no finished run yet." in result.markdown
    assert "Grid none: 0/4 runs done" in status_table("none", expected, tmp_path / "runs")


def test_invariance_guard_names_settings_that_differ_from_the_paper(tmp_path: Path) -> None:
    from harness.store import atomic_write_json, read_run_file

    runs = tmp_path / "runs"
    paper_512 = {"world_size": 4, "batch_per_device": 128, "effective_batch": 512, "gather": True,
                 "amp": False}
    cards = {  # (method, dataset): (paper card, run card)
        ("propos", "cifar10"): (paper_512, {"world_size": 1, "batch_per_device": 256,
                                            "effective_batch": 256, "gather": False, "amp": True}),
        ("propos", "cifar20"): ({**paper_512, "batch_per_device": 64, "effective_batch": 256},
                                {"world_size": 4, "batch_per_device": 64, "effective_batch": 256,
                                 "gather": True, "amp": False, "emulated_devices": True}),
        ("hadis", "stl10"): ({"world_size": 1, "batch_per_device": 128, "effective_batch": 128,
                              "gather": False, "amp": False},
                             {"world_size": 1, "batch_per_device": 128, "effective_batch": 128,
                              "gather": False, "amp": True})}
    for (method, dataset), (paper, run) in cards.items():
        for seed in (0, 1):
            run_dir = write_fake_run(runs, "g", method, dataset, 10, seed)
            metrics = read_run_file(run_dir / "metrics.json")
            metrics["reference_card"], metrics["run_card"] = paper, run
            atomic_write_json(run_dir / "metrics.json", metrics)
    write_fake_run(runs, "g", "simclr", "cifar10", 10, 0)  # no cards: no line
    expected = expected_cells(["propos", "hadis", "simclr"],
                              [("cifar10", 10), ("cifar20", 10), ("stl10", 10)], [0, 1])
    md = build_report("g", expected, runs, tmp_path / "out", figures=False).markdown
    (line,) = [x for x in md.splitlines() if "differs from the paper" in x]
    assert "ProPos" in line and "world size 1 (paper 4)" in line
    assert "effective batch 256 (paper 512)" in line and "gather False (paper True)" in line
    assert "amp" not in line and "CIFAR-20" not in line and "SimCLR" not in line
    (bf16,) = [x for x in md.splitlines() if "bf16 autocast" in x]
    assert "deviation from the paper setting" in bf16 and "fp32" in bf16
    assert "ProPos (CIFAR-10)" in bf16 and "HaDis (STL-10)" in bf16 and "CIFAR-20" not in bf16
    (emulated,) = [x for x in md.splitlines() if "emulated on one GPU" in x]
    assert "ProPos (CIFAR-20: 4 x 64)" in emulated and "CIFAR-10" not in emulated


def test_seeds_run_with_different_cpu_thread_counts_are_named(tmp_path: Path) -> None:
    from harness.store import atomic_write_json

    runs = tmp_path / "runs"
    for seed, threads in ((0, 1), (1, 1), (2, 2)):
        write_fake_run(runs, "g", "simclr", "cifar10", 10, seed, cpu_threads=threads)
    for seed in (0, 1, 2):
        write_fake_run(runs, "g", "conmix", "cifar10", 10, seed, cpu_threads=4)
    expected = expected_cells(["simclr", "conmix"], [("cifar10", 10)], [0, 1, 2])
    md = build_report("g", expected, runs, tmp_path / "out", figures=False).markdown
    (line,) = [x for x in md.splitlines() if "Mixed CPU thread counts" in x]
    assert "SimCLR CIFAR-10 IR10: 1 (seeds 0, 1); 2 (seed 2)" in line and "ConMix" not in line
    old = write_fake_run(runs, "g", "conmix", "cifar10", 10, 2)  # metrics.json without it
    md = build_report("g", expected, runs, tmp_path / "out", figures=False).markdown
    assert "ConMix CIFAR-10 IR10: 4 (seeds 0, 1); unknown (seed 2)" in md
    atomic_write_json(old / "env.json", {"device": {"cpu_threads": 2}})  # env.json has it
    md = build_report("g", expected, runs, tmp_path / "out", figures=False).markdown
    assert "ConMix CIFAR-10 IR10: 2 (seed 2); 4 (seeds 0, 1)" in md
