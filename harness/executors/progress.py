"""One line per finished cell, shared by the in-process and local executors."""

from __future__ import annotations

from pathlib import Path

from harness.config import CellConfig
from harness.store import read_json, read_status


def cell_label(cfg: CellConfig) -> str:
    return f"{cfg.method} {cfg.dataset} ir={cfg.ir} seed={cfg.seed}"


def finished_line(i: int, n: int, cfg: CellConfig, seconds: float) -> str:
    """`[i/n] state  label  (12.3s)  acc=... nmi=...` or the error and log path."""
    run_dir = Path(cfg.run_dir)
    status = read_status(run_dir)
    state = status.get("state", "missing")
    line = f"[{i}/{n}] {state:<9} {cell_label(cfg)} ({seconds:.1f}s)"
    metrics = read_json(run_dir / "metrics.json")
    if state == "completed" and metrics:
        m = metrics["variants"][metrics["primary"]]["metrics"]
        line += "  " + " ".join(f"{k}={100 * m[k]:.1f}" for k in ("acc", "nmi", "ari"))
    elif state != "completed":
        line += f"  {status.get('error') or ''}  (log: {run_dir / 'log.txt'})"
    return line
