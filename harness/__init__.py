"""Long-tailed deep-clustering benchmark harness.

`harness.load_results(grid, runs_dir=None)` returns a grid's results as a tidy pandas DataFrame
(see `harness.report.results`); it is imported on first use, so `import harness` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_results"]


def __getattr__(name: str) -> Any:
    if name == "load_results":
        from harness.report.results import load_results

        return load_results
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
