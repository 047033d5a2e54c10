"""Building a report: the tables, files and figures of `harness report`, and `harness status`.

`build_report` writes under `out_dir` (default `results/<grid>/`, chosen by the CLI) and never
touches run folders: `<grid>.md`, `<grid>_table.tex` + `results_macros.tex`, `<grid>_table.csv`
(by `formats`), `<grid>_references.csv` / `<grid>_stats.csv` (on request), the consolidated
`<grid>.csv` (+ `<grid>.parquet` when pyarrow is importable) and `figures/`.

build choice: runs of one cell with different protocol cards (or backbones), or one column with
different evaluation splits / K / matching or LT manifests, are refused with a HarnessError that
names the runs, rather than shown as extra rows or columns.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from harness.config import canonical_json
from harness.errors import HarnessError
from harness.estimate import training_progress
from harness.report.references import DEFAULT_TOLERANCE, compare_with_references, load_references
from harness.report.cells import metric_info, resolve_metrics, summarise_cells
from harness.report.data import (check_protocols, collect_runs, normalise_expected,
                                 resolve_expected, select_variant, state_bucket)
from harness.report.footer import (FooterContext, default_git_sha, footer_lines, protocol_line,
                                   today)
from harness.report.format import (column_title, latex_escape, latex_table, macros_tex,
                                   markdown_table, method_name, number, plain_text_cells)
from harness.report.stats import DEFAULT_ALPHA, paired_tests
from harness.store import atomic_write_bytes, atomic_write_text

_FORMATS = {"md": "md", "markdown": "md", "latex": "latex", "tex": "latex", "csv": "csv"}


@dataclass
class ReportResult:
    """What `build_report` made: the Markdown the CLI prints, the files written, the cells."""

    markdown: str
    files: list[Path] = field(default_factory=list)
    cells: pd.DataFrame | None = None


def _formats(formats: Sequence[str]) -> list[str]:
    unknown = [f for f in formats if f.lower() not in _FORMATS]
    if unknown:
        raise HarnessError(f"unknown report format(s) {', '.join(unknown)}; use md, latex, csv")
    return list(dict.fromkeys(_FORMATS[f.lower()] for f in formats))


def _order(exp: pd.DataFrame) -> tuple[list[str], list[tuple[str, str]]]:
    return (list(dict.fromkeys(exp["method"])),
            list(dict.fromkeys(zip(exp["dataset"], exp["ir"]))))


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def _ours(mean: float, std: float, metric: str) -> str:
    return number(mean, metric) + ("" if pd.isna(std) else f" ± {number(std, metric)}")


def _published(value: float, std: float) -> str:
    return f"{value:g}" + ("" if pd.isna(std) else f" ± {std:g}")


def references_markdown(comp: pd.DataFrame, tolerance: float) -> str:
    """Published numbers beside ours: comparable entries first, then context-only ones."""
    if comp.empty:
        return "No published number matches the methods and datasets of this grid."
    rows = []
    for r in comp.itertuples(index=False):
        source = r.source + ("" if r.status == "confirmed" else f" ({r.status})")
        if r.label != method_name(r.method):
            source += f"; as '{r.label}'"
        rows.append([method_name(r.method), column_title(r.dataset, r.ir),
                     metric_info(r.metric).label, _ours(r.ours, r.ours_std, r.metric),
                     _published(r.reference, r.reference_std),
                     f"{r.delta:+.1f}" if r.comparable else "",
                     r.mark if r.comparable else r.context, source,
                     r.notes if isinstance(r.notes, str) else ""])
    legend = (f"✓ ours within one std (ours or published) or δ = {tolerance:g} points; ▲ ours "
              "above; ▼ ours below. Context rows (other IR, split or features, e.g. balanced "
              "train+test tables) are not compared. Non-confirmed sources are marked with their "
              "status.")
    table = tabulate(rows, headers=["Method", "Cell", "Metric", "Ours", "Published", "Δ", "",
                                    "Source", "Notes"], tablefmt="github", disable_numparse=True)
    return legend + "\n\n" + table


def stats_markdown(tests: pd.DataFrame) -> str:
    """Paired tests against each column's best method."""
    if tests.empty:
        return "No column has two methods with results."
    rows = [[column_title(r.dataset, r.ir), metric_info(r.metric).label, method_name(r.method),
             method_name(r.best_method), r.n_shared,
             "n/a" if math.isnan(r.mean_diff) else f"{r.mean_diff:+.2f}", _p(r.t_pvalue),
             _p(r.wilcoxon_pvalue), "†" if r.significant else ""]
            for r in tests.itertuples(index=False)]
    return tabulate(rows, headers=["Cell", "Metric", "Method", "Best", "Shared seeds", "Mean diff",
                                   "t-test p", "Wilcoxon p", "Sig."], tablefmt="github",
                    disable_numparse=True)


def consolidated_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """All runs, one row per (run folder, variant); runs without metrics keep one row.
    Lists and dicts are stored as JSON text so CSV and parquet hold the same values."""
    rows = []
    for record in runs.to_dict("records"):
        variants = record.pop("variants") or {}
        base = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in record.items()}
        if not variants:
            rows.append({**base, "variant": None})
        for key, v in variants.items():
            row: dict[str, Any] = {**base, "variant": key, "is_primary": key == record["primary"],
                                   "protocol": canonical_json(v.get("protocol") or {})}
            row.update(v.get("metrics") or {})
            row.update({f"{m}_eval_std": s for m, s in (v.get("metrics_std") or {}).items()})
            row.update(per_class_acc=json.dumps(v.get("per_class_acc")),
                       cluster_sizes=json.dumps(v.get("cluster_sizes")))
            rows.append(row)
    return pd.DataFrame(rows)


def _write_table(df: pd.DataFrame, path: Path, files: list[Path]) -> None:
    atomic_write_text(path, df.to_csv(index=False))
    files.append(path)


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Parquet copy of the consolidated table; object columns whose values mix types (e.g. a
    metric stored as text by one run) are written as text rather than failing the report."""
    import pyarrow as pa

    buffer = io.BytesIO()
    try:
        df.to_parquet(buffer, index=False)
    except (pa.ArrowException, TypeError, ValueError):
        buffer = io.BytesIO()
        mixed = [c for c in df.columns if df[c].dtype == object]
        df.astype({c: str for c in mixed}).to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


def _write_latex(cells: pd.DataFrame, resolved: pd.DataFrame, methods: Sequence[str],
                 columns: Sequence[tuple[str, str]], metrics: Sequence[str],
                 footer: Sequence[str], out_dir: Path, grid_name: str,
                 alpha: float | None) -> list[Path]:
    """`<grid>_table.tex` (booktabs, footer as comments) and `results_macros.tex`."""
    note = (r"Mean $\pm$ std over training seeds, fractions $\times$100; best \textbf{bold}, "
            r"second \underline{underlined}; superscript $k/n$: seeds done; --: no finished "
            r"seed; FAILED: every run failed"
            + (rf"; $^\dagger$: below the best, paired $t$-test $p<{alpha:g}$" if alpha else "")
            + ". " + latex_escape(protocol_line(resolved[resolved["done"]])))
    labels = " / ".join(metric_info(m).label for m in metrics)
    caption = latex_escape(f"{grid_name}: {labels}") + r" (mean $\pm$ std over seeds, \%)"
    table, macros = out_dir / f"{grid_name}_table.tex", out_dir / "results_macros.tex"
    atomic_write_text(table, latex_table(cells, methods, columns, metrics, caption,
                                         f"tab:{grid_name}", note, footer))
    atomic_write_text(macros, macros_tex(
        cells, [f"Generated by harness report for grid {grid_name}", *footer[-1:]]))
    return [table, macros]


def build_report(grid_name: str, expected: list[dict], runs_dir: Path, out_dir: Path,
                 formats: Sequence[str] = ("md",), metrics: Sequence[str] = ("acc", "nmi", "ari"),
                 variant: str | None = None, references: bool = False, stats: bool = False,
                 lt_columns: bool = False, figures: bool = True,
                 known_methods: set[str] | None = None, *,
                 known_datasets: set[str] | None = None, references_dir: Path | None = None,
                 tolerance: float = DEFAULT_TOLERANCE, alpha: float = DEFAULT_ALPHA,
                 date: str | None = None, git_sha: str | None = None) -> ReportResult:
    """Build the grid's tables (method rows x (dataset, IR, metric) columns) from run folders.

    `expected` lists the grid's cells ({method, dataset, ir, seed}, optionally `uid` to pin the
    folder). `date` and `git_sha` default to today and this repository's HEAD (inject them for
    reproducible output). Raises HarnessError on mixed protocols or manifests in a cell/column.
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
    runs = select_variant(raw, variant)
    resolved = resolve_expected(exp, runs)
    check_protocols(resolved)
    available = {c.split(".", 1)[1] for c in runs.columns if c.startswith("metric.")}
    metric_list = resolve_metrics(metrics, lt_columns, available)
    cells = summarise_cells(resolved, metric_list)
    methods, columns = _order(exp)

    tests = paired_tests(cells, alpha) if stats else None
    sig = set() if tests is None else {
        (r.method, r.dataset, r.ir, r.metric) for r in tests.itertuples() if r.significant}
    cells["significant"] = [k in sig for k in zip(cells.method, cells.dataset, cells.ir,
                                                    cells.metric)]
    comparison = None
    if references:
        ours = cells[cells["n_values"] > 0][["method", "dataset", "ir", "metric", "mean", "std",
                                              "split", "features"]]
        comparison = compare_with_references(ours, load_references(references_dir), tolerance)

    not_registered = ([f"method {m}" for m in methods if known_methods is not None
                       and m not in known_methods]
                      + [f"dataset {d}" for d in dict.fromkeys(exp["dataset"])
                         if known_datasets is not None and d not in known_datasets])
    ctx = FooterContext(grid_name=grid_name, runs_dir=runs_dir, variant=variant,
                        date=date or today(), git_sha=git_sha or default_git_sha(),
                        stats=stats, alpha=alpha, not_registered=not_registered,
                        ignored_runs=len(raw) - int(resolved["run_dir"].notna().sum()),
                        csv_name=f"{grid_name}_table.csv" if "csv" in fmts else None)
    footer = footer_lines(ctx, resolved)
    labels = " / ".join(metric_info(m).label for m in metric_list)
    parts = [f"## Grid `{grid_name}`: {labels}", markdown_table(cells, methods, columns,
                                                                 metric_list),
             "\n".join(f"- {line}" for line in footer)]
    if comparison is not None:
        parts += ["### Comparison with published numbers",
                  references_markdown(comparison, tolerance)]
    if tests is not None:
        parts += ["### Paired tests against the best method per column", stats_markdown(tests)]
    markdown = "\n\n".join(parts) + "\n"

    files: list[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    if "md" in fmts:
        atomic_write_text(out_dir / f"{grid_name}.md", markdown)
        files.append(out_dir / f"{grid_name}.md")
    if "latex" in fmts:
        files += _write_latex(cells, resolved, methods, columns, metric_list, footer, out_dir,
                              grid_name, alpha if stats else None)
    if "csv" in fmts:
        _write_table(plain_text_cells(cells), out_dir / f"{grid_name}_table.csv", files)
    if comparison is not None:
        _write_table(comparison, out_dir / f"{grid_name}_references.csv", files)
    if tests is not None:
        _write_table(tests, out_dir / f"{grid_name}_stats.csv", files)
    consolidated = consolidated_runs(raw)
    _write_table(consolidated, out_dir / f"{grid_name}.csv", files)
    if importlib.util.find_spec("pyarrow") is not None:
        _write_parquet(consolidated, out_dir / f"{grid_name}.parquet")
        files.append(out_dir / f"{grid_name}.parquet")
    if figures:
        from harness.report.figures import make_figures  # matplotlib only when figures are wanted

        files += make_figures(resolved, methods, columns, out_dir, grid_name)
    return ReportResult(markdown=markdown, files=files, cells=cells)


def status_table(grid_name: str, expected: list[dict], runs_dir: Path,
                 show_failed: bool = False) -> str:
    """Grid coverage in the report's layout: method rows x (dataset, IR) columns, each cell
    `done/n` plus running / pending / failed / missing counts over seeds."""
    exp = normalise_expected(expected)
    runs = collect_runs(Path(runs_dir), grid_name)
    resolved = resolve_expected(exp, runs, strict=False)
    resolved["bucket"] = resolved["state"].map(state_bucket)
    methods, columns = _order(exp)
    index = {k: g for k, g in resolved.groupby(["method", "dataset", "ir"], sort=False)}
    rows = []
    for method in methods:
        line = [method_name(method)]
        for dataset, ir in columns:
            g = index.get((method, dataset, ir))
            if g is None:
                line.append("")
                continue
            n = g["bucket"].value_counts()
            rest = [f"{n[b]} {b}" for b in ("running", "pending", "failed", "missing")
                    if n.get(b, 0)]
            line.append(f"{n.get('done', 0)}/{len(g)}" + (f" ({', '.join(rest)})" if rest else ""))
        rows.append(line)
    total = resolved["bucket"].value_counts()
    head = (f"Grid {grid_name}: {total.get('done', 0)}/{len(resolved)} runs done, "
            + ", ".join(f"{total.get(b, 0)} {b}" for b in ("running", "pending", "failed",
                                                            "missing")))
    table = tabulate(rows, headers=["Method"] + [column_title(d, r) for d, r in columns],
                     tablefmt="github", disable_numparse=True)
    out = [head, "", table]
    running = resolved[resolved["bucket"] == "running"]
    if len(running):
        out += ["", f"Running ({len(running)}):"]
        for r in running.itertuples(index=False):
            progress = training_progress(Path(r.run_dir))
            out.append(f"- {method_name(r.method)} {column_title(r.dataset, r.ir)} seed {r.seed}: "
                       + (progress.line() if progress else "no progress recorded yet"))
    if show_failed:
        failed = resolved[resolved["bucket"] == "failed"]
        out += ["", f"Failed runs ({len(failed)}):" if len(failed) else "No failed runs."]
        for r in failed.itertuples(index=False):
            out.append(f"- {method_name(r.method)} {column_title(r.dataset, r.ir)} seed {r.seed} "
                       f"({r.state}): {r.error or 'no error recorded'}")
            out.append(f"  log: {r.log_path or Path(r.run_dir) / 'log.txt'}")
            out += [f"    {line}" for line in str(r.error_tail or "").splitlines()[-5:]]
    return "\n".join(out) + "\n"
