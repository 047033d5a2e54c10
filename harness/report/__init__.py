"""`harness report` and `harness status`: read-only tables, figures and statistics from the run
store.

Modules, in the order data flows through them:
- `data`: reads run folders (config, status, metrics) and resolves the grid's expected cells;
- `cells`: per (method, dataset, IR, metric) mean ± std over training seeds, coverage, ranks;
- `format`: display names, cell text, Markdown tables and TeX macros;
- `footer`: how the values were made, protocol, coverage, failures, provenance;
- `stats`: paired tests across methods; `references`: the published-number registry;
- `figures`: PNG/PDF figures; `build`: `build_report` (writes the files) and `status_table`.
"""

from harness.report.build import ReportResult, build_report, status_table

__all__ = ["ReportResult", "build_report", "status_table"]
