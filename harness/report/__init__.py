"""`harness report` and `harness status`: read-only tables, figures and statistics from the run
store.

Modules, in the order data flows through them:
- `data`: reads run folders (config, status, metrics) and resolves the grid's expected cells;
- `cells`: per (method, dataset, IR, metric) mean ± std over training seeds, coverage, ranks;
- `format`: display names, cell text, Markdown tables and TeX macros;
- `footer`: how the values were made, protocol, coverage, failures, provenance;
- `stats`: paired tests across methods; `references`: the published-number registry;
- `settings`: deterministic methods and the settings that differ from the paper's;
- `latex`: the LaTeX tables and the standalone document; `results`: tidy data frames
  (`harness.load_results`);
- `figures`: PNG/PDF figures; `build`: `build_report` (writes the files); `status`:
  `status_table` (`harness status`).
"""

from harness.report.build import ReportResult, build_report
from harness.report.results import load_results
from harness.report.status import status_table

__all__ = ["ReportResult", "build_report", "load_results", "status_table"]
