"""Rendering report tables: display names, cell text, Markdown tables and TeX macros.

Layout: one row per method, one column per (dataset, IR, metric); values are the display-scale
means of `harness.report.cells.summarise_cells` with `rank` (1 best, 2 second) and `significant`
flags. LaTeX tables are `harness.report.latex`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import pandas as pd
from tabulate import tabulate

from harness.errors import HarnessError
from harness.report.cells import metric_info, rounded

METHOD_NAMES = {"simclr": "SimCLR", "sdclr": "SDCLR", "conmix": "ConMix", "propos": "ProPos",
                "byol": "BYOL", "hadis": "HaDis", "dcl": "DCL",
                "debiased_clustering": "Debiased-Clust.", "kmeans": "K-means"}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar20": "CIFAR-20", "stl10": "STL-10",
                 "tinyimagenet": "Tiny-ImageNet", "tiny_imagenet": "Tiny-ImageNet",
                 "imagenet_lt": "ImageNet-LT", "digits": "Digits", "synthetic": "Synthetic",
                 "mnist5k": "MNIST-5k", "mnist": "MNIST"}
Column = tuple[str, str]  # (dataset, ir)

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                  "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "\\": r"\textbackslash{}"}


def method_name(method: str) -> str:
    """Display name of a method (the registry name when no mapping exists)."""
    return METHOD_NAMES.get(method, method)


def dataset_name(dataset: str) -> str:
    """Display name of a dataset (the registry name when no mapping exists)."""
    return DATASET_NAMES.get(dataset, dataset)


def column_title(dataset: str, ir: str) -> str:
    """'CIFAR-10 IR10', or 'ImageNet-LT (native)'."""
    return f"{dataset_name(dataset)} " + ("(native)" if ir == "native" else f"IR{ir}")


def int_words(n: int) -> str:
    """An integer in lower-case English words without spaces (10 -> 'ten', 100 -> 'onehundred')."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (_ONES[n % 10] if n % 10 else "")
    if n >= 10**9:
        return "".join(_ONES[int(d)] for d in str(n))  # beyond a billion: digit by digit
    size, word = next(sw for sw in ((10**6, "million"), (1000, "thousand"), (100, "hundred"))
                      if n >= sw[0])
    rest = n % size
    return int_words(n // size) + word + (int_words(rest) if rest else "")


def spell_digits(text: str) -> str:
    """Replace numbers by words ('CIFAR-10' -> 'CIFAR-ten', '2.5' -> 'twopointfive')."""
    def words(match: re.Match[str]) -> str:
        whole, _, frac = match.group(0).partition(".")
        out = int_words(int(whole))
        return out + ("point" + "".join(_ONES[int(d)] for d in frac) if frac else "")

    return re.sub(r"\d+(?:\.\d+)?", words, text)


def macro_name(method: str, dataset: str, ir: str, metric: str) -> str:
    r"""TeX macro name of a cell, letters only: `\ConMixCIFARtenIRtenACC`."""
    raw = (method_name(method) + dataset_name(dataset) + "IR" + ir
           + metric_info(metric).label.replace(" ", ""))
    return "\\" + re.sub(r"[^A-Za-z]", "", spell_digits(raw))


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters in plain text."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def number(value: float, metric: str) -> str:
    """A display-scale value at the metric's decimals."""
    digits = metric_info(metric).digits
    return f"{rounded(value, digits):.{digits}f}"


def latex_number(value: float, metric: str) -> str:
    """`number` with a true minus sign that works in text and math mode."""
    text = number(value, metric)
    return r"\ensuremath{-}" + text[1:] if text.startswith("-") else text


_EMPTY_TEXT = {"failed": "FAILED", "running": "running", "pending": "pending", "missing": "missing",
               "n/a": "n/a"}


def cell_text(cell: pd.Series, style: str) -> str:
    """One table cell in `style` 'md', 'latex' or 'plain' (CSV); a deterministic method's value
    carries 'det.' instead of a std (one run serves every seed)."""
    if cell["n_values"] == 0:
        text = _EMPTY_TEXT[cell["status"]]
        return text if style != "latex" or text in ("FAILED", "n/a") else "--"
    fmt = latex_number if style == "latex" else number
    mean = fmt(cell["mean"], cell["metric"])
    std = "" if math.isnan(cell["std"]) else number(cell["std"], cell["metric"])
    partial = cell["status"] == "partial"
    coverage = f"{cell['n_values']}/{cell['n_expected']}"
    det = bool(cell.get("deterministic"))
    if style == "latex":
        mean = {1: rf"\textbf{{{mean}}}", 2: rf"\underline{{{mean}}}"}.get(cell["rank"], mean)
        out = mean + (r"{\scriptsize\,det.}" if det else
                      rf"{{\scriptsize$\pm${std}}}" if std else "")
        out += r"$^\dagger$" if cell.get("significant") else ""
        return out + (rf"\textsuperscript{{{coverage}}}" if partial else "")
    if style == "md":
        mean = {1: f"**{mean}**", 2: f"<u>{mean}</u>"}.get(cell["rank"], mean)
    out = mean + (" (det.)" if det else f" ± {std}" if std else "")
    out += " †" if cell.get("significant") else ""
    return out + (f" ({coverage} seeds)" if partial else "")


def table_rows(cells: pd.DataFrame, rows: Sequence[str], columns: Sequence[Column],
               metrics: Sequence[str], style: str) -> list[list[str]]:
    """Method name then one cell text per (column, metric), for each method in `rows`."""
    index = {(c.method, c.dataset, c.ir, c.metric): c for _, c in cells.iterrows()}
    out = []
    for method in rows:
        name = method_name(method)
        line = [latex_escape(name) if style == "latex" else name]
        for dataset, ir in columns:
            for metric in metrics:
                cell = index.get((method, dataset, ir, metric))
                line.append(cell_text(cell, style) if cell is not None else
                            ("--" if style == "latex" else "missing"))
        out.append(line)
    return out


def markdown_table(cells: pd.DataFrame, rows: Sequence[str], columns: Sequence[Column],
                   metrics: Sequence[str]) -> str:
    """GitHub Markdown table: bold best, <u>second</u>, coverage and states spelled out."""
    headers = ["Method"] + [f"{column_title(d, r)} {metric_info(m).label}"
                            for d, r in columns for m in metrics]
    return tabulate(table_rows(cells, rows, columns, metrics, "md"), headers=headers,
                    tablefmt="github", disable_numparse=True)


def macros_tex(cells: pd.DataFrame, header: Sequence[str]) -> str:
    r"""One `\newcommand` per cell holding the displayed mean, plus `<name>Std` for the std;
    cells without a value expand to `--`."""
    lines = [f"% {h}" for h in header]
    seen: dict[str, tuple[str, ...]] = {}
    for c in cells.itertuples(index=False):
        name = macro_name(c.method, c.dataset, c.ir, c.metric)
        key = (c.method, c.dataset, c.ir, c.metric)
        if name in seen and seen[name] != key:
            raise HarnessError(f"TeX macro {name} would name both {seen[name]} and {key}; rename "
                               "one of the methods or datasets in the display-name mapping")
        seen[name] = key
        if c.n_values:
            std = "--" if math.isnan(c.std) else number(c.std, c.metric)
            seeds = ("deterministic: one run serves every seed" if c.deterministic
                     else f"{c.n_values}/{c.n_expected} seeds")
            lines.append(rf"\newcommand{{{name}}}{{{latex_number(c.mean, c.metric)}}}"
                         f"  % {seeds}")
            lines.append(rf"\newcommand{{{name}Std}}{{{std}}}")
        else:
            lines.append(rf"\newcommand{{{name}}}{{--}}  % {c.status}")
            lines.append(rf"\newcommand{{{name}Std}}{{--}}")
    return "\n".join(lines) + "\n"


def plain_text_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The long cell table for CSV: display names, flags and the plain cell text."""
    out = cells.drop(columns=["values"]).copy()
    out.insert(1, "method_name", out["method"].map(method_name))
    out.insert(3, "dataset_name", out["dataset"].map(dataset_name))
    out["best"] = out["rank"] == 1
    out["second"] = out["rank"] == 2
    out["text"] = [cell_text(c, "plain") for _, c in cells.iterrows()]
    return out.drop(columns=["rank"])
