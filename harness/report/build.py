"""Building a report: the tables, files and figures of `harness report`.

`build_report` writes under `out_dir` (default `results/<grid>/`, chosen by the CLI) and never
touches run folders. Files (each report writes them fresh: what the previous report listed in
`<grid>_files.txt` is removed first, and the new list replaces it):
- `<grid>.md`: tables, footer, reference comparison and paired tests as asked;
- `<grid>_main.tex` (+ `<grid>_lt.tex` with `--lt`) and `results_macros.tex`; with
  `standalone`, `<grid>_standalone.tex` and its PDF where pdflatex exists;
- `<grid>_table.csv`: the table cells; `<grid>_references.csv`, `<grid>_stats.csv` on request;
- `<grid>.csv` (+ `<grid>.parquet` when pyarrow is importable): the tidy results of
  `harness.load_results`, `<grid>_per_class.csv`: one row per class; all on the tables' scale;
- `figures/`: PNG and PDF figures.

build choice: runs of one cell with different protocol cards (or backbones), or one column with
different evaluation splits / K / matching or LT manifests, are refused with a HarnessError that
names the runs, rather than shown as extra rows or columns.
"""

from __future__ import annotations

import importlib.util
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from harness.errors import HarnessError
from harness.report.cells import LT_METRICS, metric_info, resolve_metrics, summarise_cells
from harness.report.data import (check_protocols, check_readable, collect_runs, grid_order,
                                 normalise_expected, resolve_expected, select_variant)
from harness.report.footer import (FooterContext, default_git_sha, evaluation_sentence,
                                   footer_lines, seeds_text, today)
from harness.report.format import (column_title, macros_tex, markdown_table, method_name, number,
                                   plain_text_cells)
from harness.report.latex import compile_pdf, standalone_tex, table_tex
from harness.report.references import DEFAULT_TOLERANCE, compare_with_references, load_references
from harness.report.results import per_class_results, tidy_results
from harness.report.settings import is_deterministic
from harness.report.stats import DEFAULT_ALPHA, paired_tests, too_few_seeds
from harness.store import atomic_write_bytes, atomic_write_text

_FORMATS = {"md": "md", "markdown": "md", "latex": "latex", "tex": "latex", "csv": "csv"}


@dataclass
class ReportResult:
    """What `build_report` made: the Markdown the CLI prints, the files written, the cells, and
    notes for the user (e.g. a PDF that could not be made)."""

    markdown: str
    files: list[Path] = field(default_factory=list)
    cells: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)


def _formats(formats: Sequence[str]) -> list[str]:
    unknown = [f for f in formats if f.lower() not in _FORMATS]
    if unknown:
        raise HarnessError(f"unknown report format(s) {', '.join(unknown)}; use md, latex, csv")
    return list(dict.fromkeys(_FORMATS[f.lower()] for f in formats))


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def _ours(mean: float, std: float, metric: str) -> str:
    if pd.isna(mean):
        return "no run yet"
    return number(mean, metric) + ("" if pd.isna(std) else f" ± {number(std, metric)}")


def _published(value: float, std: float) -> str:
    return f"{value:g}" + ("" if pd.isna(std) else f" ± {std:g}")


def references_markdown(comp: pd.DataFrame, tolerance: float) -> str:
    """Published numbers beside ours: comparable entries first, then context-only ones."""
    if comp.empty:
        return "No published number is registered for the methods and datasets of this grid."
    rows = []
    for r in comp.itertuples(index=False):
        source = r.source + ("" if r.status == "confirmed" else f" ({r.status})")
        if r.label != method_name(r.method):
            source += f"; as '{r.label}'"
        rows.append([method_name(r.method), column_title(r.dataset, r.ir),
                     metric_info(r.metric).label, _ours(r.ours, r.ours_std, r.metric),
                     _published(r.reference, r.reference_std),
                     "" if pd.isna(r.delta) else f"{r.delta:+.1f}",
                     r.mark if r.comparable else r.context, source,
                     r.notes if isinstance(r.notes, str) else ""])
    legend = (f"✓ ours within one std (ours or published) or δ = {tolerance:g} points; ▲ ours "
              "above; ▼ ours below. Context rows (other IR, split or features, e.g. balanced "
              "train+test tables) are not compared. Non-confirmed sources are marked with their "
              "status.")
    table = tabulate(rows, headers=["Method", "Cell", "Metric", "Ours", "Published", "Δ", "",
                                    "Source", "Notes"], tablefmt="github", disable_numparse=True)
    return legend + "\n\n" + table


def _ci(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) else f"[{low:+.2f}, {high:+.2f}]"


def stats_markdown(tests: pd.DataFrame, alpha: float) -> str:
    """Paired tests against each column's best method, Holm-adjusted, with a plain statement
    when the seeds are too few to conclude anything."""
    if tests.empty:
        return "No column has two methods with results."
    rows = [[column_title(r.dataset, r.ir), metric_info(r.metric).label, method_name(r.method),
             method_name(r.best_method), r.n_shared,
             "n/a" if math.isnan(r.mean_diff) else f"{r.mean_diff:+.2f}", _ci(r.ci_low, r.ci_high),
             _p(r.t_pvalue), _p(r.t_holm), _p(r.wilcoxon_pvalue), _p(r.wilcoxon_holm),
             "†" if r.significant else ""]
            for r in tests.itertuples(index=False)]
    table = tabulate(rows, headers=["Cell", "Metric", "Method", "Best", "Shared seeds",
                                    "Mean diff", "95% CI (bootstrap)", "t-test p", "Holm",
                                    "Wilcoxon p", "Holm", "Sig."], tablefmt="github",
                     disable_numparse=True)
    m = int(tests["t_pvalue"].notna().sum())
    legend = (f"Differences are method minus best, in table units. Holm's correction runs over "
              f"the {m} tests of this report that have a p-value; † = Holm-adjusted t-test "
              f"p < {alpha:g}.")
    warning = too_few_seeds(tests, alpha)
    return "\n\n".join([legend, table] + ([f"**{warning}**"] if warning else []))


def _clear_previous(out_dir: Path, grid_name: str) -> None:
    """Remove the files the previous report of this grid listed (only those)."""
    listing = out_dir / f"{grid_name}_files.txt"
    if not listing.is_file():
        return
    for name in listing.read_text().splitlines():
        path = out_dir / name
        if name and not Path(name).is_absolute() and ".." not in Path(name).parts:
            path.unlink(missing_ok=True)
    listing.unlink(missing_ok=True)  # it lists itself too


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


def _latex_files(cells: pd.DataFrame, methods: Sequence[str], columns: Sequence[tuple[str, str]],
                 kinds: dict[str, list[str]], footer: Sequence[str], out_dir: Path, grid: str,
                 layout: str, seeds: str, evaluation: str, alpha: float | None) -> list[Path]:
    """`<grid>_<kind>.tex` per table kind and `results_macros.tex`."""
    files = []
    for kind, metrics in kinds.items():
        path = out_dir / f"{grid}_{kind}.tex"
        atomic_write_text(path, table_tex(cells, methods, columns, metrics, grid=grid,
                                          kind=kind, layout=layout, seeds=seeds,
                                          evaluation=evaluation, alpha=alpha, comments=footer))
        files.append(path)
    macros = out_dir / "results_macros.tex"
    atomic_write_text(macros, macros_tex(
        cells, [f"Generated by harness report for grid {grid}", *footer[-1:]]))
    return files + [macros]


def build_report(grid_name: str, expected: list[dict], runs_dir: Path, out_dir: Path,
                 formats: Sequence[str] = ("md",), metrics: Sequence[str] = ("acc", "nmi", "ari"),
                 variant: str | None = None, references: bool = False, stats: bool = False,
                 lt_columns: bool = False, figures: bool = True,
                 known_methods: set[str] | None = None, *,
                 known_datasets: set[str] | None = None, references_dir: Path | None = None,
                 tolerance: float = DEFAULT_TOLERANCE, alpha: float = DEFAULT_ALPHA,
                 latex_layout: str = "per-dataset", standalone: bool = False,
                 date: str | None = None, git_sha: str | None = None) -> ReportResult:
    """Build the grid's tables (method rows x (dataset, IR, metric) columns) from run folders.

    `expected` lists the grid's cells ({method, dataset, ir, seed}, optionally `uid` to pin the
    folder and `budget`). `lt_columns` adds the long-tail table (CAA, head/medium/tail ACC) as
    its own table. `date` and `git_sha` default to today and this repository's HEAD (inject them
    for reproducible output). Raises HarnessError on mixed protocols or manifests.
    """
    fmts = _formats(formats)
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    if out_dir.resolve().is_relative_to((runs_dir / grid_name).resolve()):
        raise HarnessError(f"report folder {out_dir} is inside the run store; reports are "
                           "read-only there: choose another --out (default results/<grid>/)")
    exp = normalise_expected(expected)
    if exp.empty:
        raise HarnessError(f"grid '{grid_name}' has no cells to report; check its YAML")
    raw = collect_runs(runs_dir, grid_name)
    resolved = resolve_expected(exp, select_variant(raw, variant))
    check_readable(resolved, variant)
    check_protocols(resolved)
    available = {c.split(".", 1)[1] for c in resolved.columns if str(c).startswith("metric.")}
    kinds = {"main": resolve_metrics(metrics, available)}
    if lt_columns:
        kinds["lt"] = list(LT_METRICS)
    methods, columns = grid_order(exp)
    det = [m for m in methods if is_deterministic(m)]
    cells = summarise_cells(resolved, list(dict.fromkeys(sum(kinds.values(), []))), det)

    tests = paired_tests(cells, alpha) if stats else None
    sig = set() if tests is None else {
        (r.method, r.dataset, r.ir, r.metric) for r in tests.itertuples() if r.significant}
    cells["significant"] = [k in sig for k in zip(cells.method, cells.dataset, cells.ir,
                                                    cells.metric)]
    comparison = None
    if references:
        ours = cells[["method", "dataset", "ir", "metric", "mean", "std", "split", "features"]]
        comparison = compare_with_references(ours, load_references(references_dir), tolerance)

    not_registered = ([f"method {m}" for m in methods if known_methods is not None
                       and m not in known_methods]
                      + [f"dataset {d}" for d in dict.fromkeys(exp["dataset"])
                         if known_datasets is not None and d not in known_datasets])
    ctx = FooterContext(grid_name=grid_name, runs_dir=runs_dir, variant=variant,
                        date=date or today(), git_sha=git_sha or default_git_sha(),
                        stats=stats, alpha=alpha, not_registered=not_registered,
                        ignored_runs=len(raw) - int(resolved["run_dir"].notna().sum()),
                        csv_name=f"{grid_name}_table.csv" if "csv" in fmts else None,
                        n_tests=0 if tests is None else int(tests["t_pvalue"].notna().sum()))
    footer = footer_lines(ctx, resolved, cells, det)
    parts = []
    for kind, metric_list in kinds.items():
        labels = " / ".join(metric_info(m).label for m in metric_list)
        title = f"Grid `{grid_name}`: {labels}" if kind == "main" else "Long-tail view: " + labels
        parts += [f"## {title}", markdown_table(cells, methods, columns, metric_list)]
    parts.append("\n".join(f"- {line}" for line in footer))
    if comparison is not None:
        parts += ["### Comparison with published numbers",
                  references_markdown(comparison, tolerance)]
    if tests is not None:
        parts += ["### Paired tests against the best method per column",
                  stats_markdown(tests, alpha)]
    markdown = "\n\n".join(parts) + "\n"

    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous(out_dir, grid_name)
    files: list[Path] = []
    notes: list[str] = []

    def write(name: str, text: str) -> None:
        atomic_write_text(out_dir / name, text)
        files.append(out_dir / name)

    if "md" in fmts:
        write(f"{grid_name}.md", markdown)
    if "latex" in fmts or standalone:
        tex = _latex_files(cells, methods, columns, kinds, footer, out_dir, grid_name,
                           latex_layout, seeds_text(resolved, det),
                           evaluation_sentence(resolved[resolved["done"]]),
                           alpha if stats else None)
        files += tex
        if standalone:
            tables = [p for p in tex if p.name != "results_macros.tex"]
            write(f"{grid_name}_standalone.tex", standalone_tex([p.stem for p in tables]))
            pdf = compile_pdf(files[-1], tables)
            if pdf is None:
                notes.append("pdflatex not found: the standalone PDF was not made (the .tex "
                             "compiles where TeX is installed)")
            else:
                files.append(pdf)
    if "csv" in fmts:
        write(f"{grid_name}_table.csv", plain_text_cells(cells).to_csv(index=False))
    if comparison is not None:
        write(f"{grid_name}_references.csv", comparison.to_csv(index=False))
    if tests is not None:
        write(f"{grid_name}_stats.csv", tests.to_csv(index=False))
    tidy = tidy_results(resolved, det)
    write(f"{grid_name}.csv", tidy.to_csv(index=False))
    if importlib.util.find_spec("pyarrow") is not None:
        _write_parquet(tidy, out_dir / f"{grid_name}.parquet")
        files.append(out_dir / f"{grid_name}.parquet")
    write(f"{grid_name}_per_class.csv", per_class_results(resolved).to_csv(index=False))
    if figures:
        from harness.report.figures import make_figures  # matplotlib only when figures are wanted

        files += make_figures(resolved, methods, columns, out_dir, grid_name, det)
    write(f"{grid_name}_files.txt", "".join(
        f"{p.relative_to(out_dir)}\n" for p in files) + f"{grid_name}_files.txt\n")
    return ReportResult(markdown=markdown, files=files, cells=cells, notes=notes)
