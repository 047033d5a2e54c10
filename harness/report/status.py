"""`harness status`: grid coverage in the report's layout, read from the run store."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from harness.estimate import training_progress
from harness.report.data import (collect_runs, grid_order, normalise_expected, resolve_expected,
                                 state_bucket)
from harness.report.format import column_title, method_name


def status_table(grid_name: str, expected: list[dict], runs_dir: Path,
                 show_failed: bool = False) -> str:
    """Grid coverage in the report's layout: method rows x (dataset, IR) columns, each cell
    `done/n` plus running / pending / failed / missing counts over seeds."""
    exp = normalise_expected(expected)
    runs = collect_runs(Path(runs_dir), grid_name)
    resolved = resolve_expected(exp, runs, strict=False)
    resolved["bucket"] = resolved["state"].map(state_bucket)
    methods, columns = grid_order(exp)
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
