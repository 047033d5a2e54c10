"""One line per finished cell, shared by the in-process and local executors."""

from __future__ import annotations

from pathlib import Path

from harness.cell_lock import live_owner
from harness.config import CellConfig
from harness.store import inspect_cell


def count_cells(n: int) -> str:
    """`1 cell`, `3 cells`."""
    return f"{n} cell{'' if n == 1 else 's'}"


def cell_label(cfg: CellConfig) -> str:
    return f"{cfg.method} {cfg.dataset} ir={cfg.ir} seed={cfg.seed}"


def finished_line(i: int, n: int, cfg: CellConfig, seconds: float, busy: bool = False) -> str:
    """`[i/n] state  label  (12.3s)  acc=... nmi=...`, the error and log path, or, for a cell
    another process took (`busy`), who owns it."""
    run_dir = Path(cfg.run_dir)
    if busy:
        owner = live_owner(run_dir)
        return (f"[{i}/{n}] skipped   {cell_label(cfg)}: "
                + (owner.describe() if owner else "taken by another process"))
    view = inspect_cell(run_dir)
    line = f"[{i}/{n}] {view.state:<9} {cell_label(cfg)} ({seconds:.1f}s)"
    if view.metrics is not None:
        m = view.metrics["variants"][view.metrics["primary"]]["metrics"]
        line += "  " + " ".join(f"{k}={100 * m[k]:.1f}" for k in ("acc", "nmi", "ari")
                               if m.get(k) is not None)
    else:
        error = view.status.get("error") or view.problem or ""
        line += f"  {error}  (log: {run_dir / 'log.txt'})"
    return line
