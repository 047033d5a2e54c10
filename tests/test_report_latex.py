"""LaTeX that goes into a paper as it is: every table of a paper_table2-shaped grid compiles in
a one- and a two-column article without an overfull box over 1 pt, in both layouts; one file
and label per table kind, a real caption, a short note, the packages named; `--standalone`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fakeruns import variant, write_fake_run

from harness.grids import load_grid
from harness.report import build_report

FIXED = {"date": "2024-01-01", "git_sha": "feedc0ffee00"}
needs_tex = pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")


def paper_table2_store(runs: Path) -> list[dict]:
    """Fake runs shaped like paper_table2: 9 methods x 3 datasets x IR 5, 10 x seeds 0-2
    (k-means once per cell: deterministic), with a partial and a failed cell."""
    spec = load_grid("paper_table2").spec["grid"]
    expected = []
    for m, method in enumerate(spec["method"]):
        for d, dataset in enumerate(spec["dataset"]):
            for ir in spec["ir"]:
                seeds = [0] if method == "kmeans" else spec["seed"]
                for seed in seeds:
                    expected.append({"method": method, "dataset": dataset, "ir": ir,
                                     "seed": seed, "budget": "paper"})
                    base = 0.30 + 0.05 * m - 0.08 * d - 0.002 * ir + 0.004 * seed
                    metrics = {"acc": base, "nmi": base - 0.1, "ari": base - 0.35, "caa": base,
                               "head_acc": base + .2, "medium_acc": base, "tail_acc": base - .2}
                    if method == "sdclr" and dataset == "stl10" and seed == 2:
                        write_fake_run(runs, "pt2", method, dataset, ir, seed, state="failed",
                                       error="RuntimeError: CUDA out of memory")
                    elif method == "kmeans":
                        write_fake_run(runs, "pt2", method, dataset, ir, seed, variants={
                            "pixels/kmeans/lt_train": variant(metrics, "pixels")})
                    else:
                        write_fake_run(runs, "pt2", method, dataset, ir, seed, metrics)
    return expected


@pytest.fixture(scope="module")
def pt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    runs = tmp_path_factory.mktemp("pt2") / "runs"
    return runs, paper_table2_store(runs)


def _overfull(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"Overfull \\[hv]box \((\d+(?:\.\d+)?)pt too", log)]


@needs_tex
@pytest.mark.parametrize("layout", ["per-dataset", "wide"])
def test_tables_fit_one_and_two_column_articles(pt2: tuple[Path, list[dict]], tmp_path: Path,
                                                layout: str) -> None:
    runs, expected = pt2
    out = tmp_path / "out"
    build_report("pt2", expected, runs, out, formats=("latex",), figures=False, stats=True,
                 lt_columns=True, latex_layout=layout, **FIXED)
    for option in ("", "twocolumn"):
        (out / "doc.tex").write_text(
            f"\\documentclass[{option}]{{article}}\n\\usepackage{{booktabs}}\n"
            "\\usepackage{graphicx}\n\\begin{document}\n\\input{results_macros}\n"
            "Text citing Table~\\ref{tab:pt2-main" + ("-cifar10" if layout != "wide" else "")
            + "}: ConMix reaches \\ConMixCIFARtenIRtenACC{} $\\pm$ \\ConMixCIFARtenIRtenACCStd.\n"
            "\\input{pt2_main}\n\\input{pt2_lt}\n\\end{document}\n")
        for _ in range(2):  # the second pass resolves the \ref
            proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                                   "doc.tex"], cwd=out, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, proc.stdout[-3000:]
        log = (out / "doc.log").read_text(errors="replace")
        assert not [x for x in _overfull(log) if x > 1.0], (option, layout, log[-3000:])
        assert "multiply defined" not in log and "undefined" not in log.lower()


def test_one_file_and_label_per_table_kind(pt2: tuple[Path, list[dict]], tmp_path: Path) -> None:
    runs, expected = pt2
    out = tmp_path / "out"
    build_report("pt2", expected, runs, out, formats=("latex",), figures=False, lt_columns=True,
                 **FIXED)
    main, lt = (out / "pt2_main.tex").read_text(), (out / "pt2_lt.tex").read_text()
    labels = re.findall(r"\\label\{([^}]*)\}", main + lt)
    assert len(labels) == len(set(labels)) == 6
    assert "tab:pt2-main-cifar20" in labels and "tab:pt2-lt-stl10" in labels
    for text in (main, lt):
        assert r"% Needs in the preamble: \usepackage{booktabs} \usepackage{graphicx}" in text
    captions = re.findall(r"\\caption\{([^}]*(?:\{[^}]*\}[^}]*)*)\}", main)
    assert captions[0].startswith("ACC, NMI and ARI (\\%) on CIFAR-10 at IR 5 and 10")
    assert "over 3 training seeds" in captions[0] and not captions[0].startswith("pt2")
    note = main.split(r"{\footnotesize\raggedright ")[1].split(r"\par}")[0]
    assert len(note) < 500 and "det.: deterministic method" in note
    assert "FAILED" not in note  # no cell of CIFAR-10 failed: no legend for it
    stl = main.split(r"\label{tab:pt2-main-stl10}")[1]
    assert r"Superscript $k/n$" in stl  # SDCLR's failed seed leaves 2/3 there
    assert r"{\scriptsize\,det.}" in main and r"\pm$0.0" not in main
    wide = tmp_path / "wide"
    build_report("pt2", expected, runs, wide, formats=("latex",), figures=False,
                 latex_layout="wide", **FIXED)
    text = (wide / "pt2_main.tex").read_text()
    assert text.count(r"\begin{table*}") == 1 and r"\label{tab:pt2-main}" in text


@needs_tex
def test_standalone_writes_a_compilable_document_and_its_pdf(pt2: tuple[Path, list[dict]],
                                                             tmp_path: Path) -> None:
    runs, expected = pt2
    out = tmp_path / "out"
    result = build_report("pt2", expected, runs, out, formats=("md",), figures=False,
                          standalone=True, **FIXED)
    names = {p.name for p in result.files}
    assert {"pt2_standalone.tex", "pt2_standalone.pdf", "pt2_main.tex"} <= names
    assert (out / "pt2_standalone.pdf").read_bytes().startswith(b"%PDF")
    assert not list(out.glob("*.aux")) and not list(out.glob("*.log"))  # compiled elsewhere
    again = build_report("pt2", expected, runs, tmp_path / "again", formats=("md",),
                         figures=False, standalone=True, **FIXED)
    pdf = next(p for p in again.files if p.suffix == ".pdf")
    assert pdf.read_bytes() == (out / "pt2_standalone.pdf").read_bytes()  # reproducible
