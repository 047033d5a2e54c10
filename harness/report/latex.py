"""LaTeX tables that go into a paper as they are.

Each table kind (`main`: the chosen metrics; `lt`: the long-tail columns) is its own file,
`<grid>_<kind>.tex`, to `\\input` where the table belongs. Layouts (build choice):
- `per-dataset` (default): one `table` per dataset, IRs x metrics as columns;
- `wide`: one `table*` for the whole grid (spans both columns of a two-column paper).
Either way the tabular is scaled down to the line width only where it is wider, so no table
overflows a one- or two-column article. Needs `booktabs` and `graphicx` (named at the top of
each file). `standalone_tex` wraps the tables in a compilable article; `compile_pdf` runs
pdflatex on it where pdflatex exists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError
from harness.report.cells import metric_info
from harness.report.data import GROUP_METRICS
from harness.report.format import Column, dataset_name, latex_escape, table_rows

PACKAGES = ("booktabs", "graphicx")
LAYOUTS = ("per-dataset", "wide")
# Scale the tabular down to the line width only where it is wider (graphicx's \width).
_FIT = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"


def packages_comment() -> str:
    """The preamble line a document needs for these tables."""
    return "% Needs in the preamble: " + " ".join(rf"\usepackage{{{p}}}" for p in PACKAGES)


def table_label(grid: str, kind: str, dataset: str | None = None) -> str:
    """`tab:<grid>-<kind>[-<dataset>]`, letters, digits and dashes only."""
    parts = [grid, kind] + ([dataset] if dataset else [])
    return "tab:" + "-".join(re.sub(r"[^A-Za-z0-9]+", "-", p).strip("-") for p in parts)


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _irs(irs: Sequence[str]) -> str:
    plain = [ir for ir in irs if ir != "native"]
    text = f"IR {_and(plain)}" if plain else ""
    return text + (" and native" if plain and "native" in irs else
                   "native" if "native" in irs else "")


def _where(columns: Sequence[Column]) -> str:
    """'CIFAR-10 and STL-10 at IR 5 and 10', or per dataset where their IRs differ."""
    by: dict[str, list[str]] = {}
    for dataset, ir in columns:
        by.setdefault(dataset, []).append(ir)
    if len({tuple(v) for v in by.values()}) == 1:
        return f"{_and([dataset_name(d) for d in by])} at {_irs(next(iter(by.values())))}"
    return _and([f"{dataset_name(d)} at {_irs(irs)}" for d, irs in by.items()])


def caption(metrics: Sequence[str], columns: Sequence[Column], seeds: str) -> str:
    """'ACC, NMI and ARI (\\%) on MNIST-5k at IR 1 and 10; mean $\\pm$ std over 3 training
    seeds.' (LaTeX)."""
    percent = all(metric_info(m).scale == 100 for m in metrics)
    labels = _and([metric_info(m).label for m in metrics])
    return latex_escape(f"{labels} {'(%) ' if percent else ''}on {_where(columns)}; ") + \
        rf"mean $\pm$ std over {seeds}."


def note(cells: pd.DataFrame, evaluation: str, alpha: float | None) -> str:
    """The short note under a table: legends for what the table shows, then the evaluation."""
    parts = []
    if (cells["rank"] > 0).any():
        parts.append(r"Best \textbf{bold}, second \underline{underlined}.")
    shown = cells["n_values"] > 0
    if (shown & cells["deterministic"]).any():
        parts.append("det.: deterministic method, one run serves every seed.")
    if (shown & (cells["status"] == "partial")).any():
        parts.append(r"Superscript $k/n$: only $k$ of $n$ seeds finished.")
    if alpha is not None and cells["significant"].any():
        parts.append(rf"$^\dagger$: below the column's best, paired $t$-test over shared "
                     rf"seeds, Holm-corrected $p<{alpha:g}$.")
    empty = cells.loc[~shown, "status"]
    if empty.isin(["missing", "running", "pending"]).any():
        parts.append("--: no finished run yet.")
    if (empty == "failed").any():
        parts.append("FAILED: every run of the cell failed.")
    na = cells.loc[~shown & (cells["status"] == "n/a"), "metric"]
    if len(na):
        parts.append("n/a: undefined at IR 1, where all classes are equally big (no head or "
                     "tail)." if na.isin(GROUP_METRICS).all() else
                     "n/a: not recorded for these runs.")
    return " ".join(parts + [latex_escape(evaluation)])


def _tabular(cells: pd.DataFrame, methods: Sequence[str], columns: Sequence[Column],
             metrics: Sequence[str], titles: Sequence[str]) -> list[str]:
    k = len(metrics)
    top = " & ".join([""] + [rf"\multicolumn{{{k}}}{{c}}{{{latex_escape(t)}}}" for t in titles])
    rules = "".join(rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(titles)))
    sub = " & ".join(["Method"] + [latex_escape(metric_info(m).label) for _ in columns
                                   for m in metrics])
    body = [" & ".join(line) + r" \\" for line in
            table_rows(cells, methods, columns, metrics, "latex")]
    return [_FIT, r"\begin{tabular}{@{}l" + "c" * (k * len(columns)) + "@{}}", r"\toprule",
            top + r" \\", rules, sub + r" \\", r"\midrule", *body, r"\bottomrule",
            r"\end{tabular}}"]


def _float(env: str, cap: str, label: str, tabular: list[str], text: str) -> list[str]:
    return [rf"\begin{{{env}}}[t]", r"\centering", rf"\caption{{{cap}}}", rf"\label{{{label}}}",
            r"\small\setlength{\tabcolsep}{4pt}", *tabular, r"\par\smallskip",
            rf"{{\footnotesize\raggedright {text}\par}}", rf"\end{{{env}}}"]


def table_tex(cells: pd.DataFrame, methods: Sequence[str], columns: Sequence[Column],
              metrics: Sequence[str], *, grid: str, kind: str, layout: str, seeds: str,
              evaluation: str, alpha: float | None, comments: Sequence[str]) -> str:
    """The `<grid>_<kind>.tex` file: a comment header (packages, labels, the full footer) and
    the table floats of `layout`."""
    if layout not in LAYOUTS:
        raise HarnessError(f"unknown LaTeX layout {layout!r}; use {' or '.join(LAYOUTS)}")
    cells = cells[cells["metric"].isin(metrics)]
    floats, labels = [], []
    if layout == "wide":
        label = table_label(grid, kind)
        floats += _float("table*", caption(metrics, columns, seeds), label,
                         _tabular(cells, methods, columns, metrics,
                                  [f"{dataset_name(d)} {_irs([ir])}" for d, ir in columns]),
                         note(cells, evaluation, alpha))
        labels.append(label)
    else:
        for dataset in dict.fromkeys(d for d, _ in columns):
            cols = [c for c in columns if c[0] == dataset]
            sub = cells[cells["dataset"] == dataset]
            label = table_label(grid, kind, dataset)
            floats += _float("table", caption(metrics, cols, seeds), label,
                             _tabular(sub, methods, cols, metrics, [_irs([ir]) for _, ir in cols]),
                             note(sub, evaluation, alpha))
            labels.append(label)
    head = [f"% {grid}_{kind}.tex, written by `harness report`; \\input it where the table goes.",
            packages_comment(), f"% Labels: {', '.join(labels)}.", "%",
            *(f"% {c}" for c in comments)]
    return "\n".join(head + floats) + "\n"


def standalone_tex(inputs: Sequence[str]) -> str:
    """A compilable article holding the given table files (`\\input` names, no suffix)."""
    return "\n".join([r"\documentclass{article}",
                      *(rf"\usepackage{{{p}}}" for p in PACKAGES), r"\begin{document}",
                      *(rf"\input{{{name}}}" for name in inputs), r"\end{document}"]) + "\n"


def compile_pdf(tex: Path, inputs: Sequence[Path]) -> Path | None:
    """Compile `tex` (with its `inputs` beside it) in a scratch folder and put the PDF next to
    `tex`; None where pdflatex is not installed. The PDF's dates come from SOURCE_DATE_EPOCH
    (0 unless set), so the same tables give the same bytes."""
    if shutil.which("pdflatex") is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        for path in [tex, *inputs]:
            shutil.copy(path, scratch)
        env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "0"),
               "FORCE_SOURCE_DATE": "1"}
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                               tex.name], cwd=scratch, capture_output=True, text=True,
                              timeout=300, env=env)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-15:])
            raise HarnessError(f"pdflatex could not compile {tex.name}:\n{tail}")
        pdf = tex.with_suffix(".pdf")
        shutil.copy(Path(scratch) / pdf.name, pdf)
    return pdf
