"""Turn a grid into the cells to run under a mode, and hand them to an executor."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import plugins
from harness.config import CellConfig, write_config
from harness.data.base import default_data_root
from harness.grids import check_names, load_grid, resolve, select
from harness.registry import dataset_class, list_datasets, list_methods
from harness.store import Mode, State, cell_state, needs_run, update_status


@dataclass
class PlannedCell:
    """A resolved cell and what the mode decided for it."""

    cfg: CellConfig
    state: State
    run: bool
    reuse: Path | None = None  # a completed folder of the same cell under another grid


def find_reusable(cfg: CellConfig, runs_dir: Path) -> Path | None:
    """A completed folder of the same cell (same uid) under another grid of the run store."""
    if not runs_dir.is_dir():
        return None
    for grid_dir in sorted(runs_dir.iterdir()):
        candidate = grid_dir / cfg.relative_dir()
        if (grid_dir.name.startswith("_") or grid_dir.name == cfg.grid
                or candidate.is_symlink() or not candidate.is_dir()):
            continue
        if cell_state(candidate) == "completed":
            return candidate
    return None


def link_reused(cell: PlannedCell) -> None:
    """Link a reused cell's folder into this grid (relative symlink) instead of rerunning it."""
    assert cell.reuse is not None
    run_dir = Path(cell.cfg.run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(cell.reuse, run_dir.parent), run_dir, target_is_directory=True)


def plan_cells(grid_name: str, *, only: str | None = None, seeds: str | None = None,
               mode: Mode = "cached", runs_dir: Path, data_root: Path | None = None,
               device: str = "auto") -> list[PlannedCell]:
    """Resolve every selected cell of a grid and decide which must run."""
    grid = load_grid(grid_name)
    cells = select(grid.cells(), only, seeds)
    check_names(cells)
    budget = grid.spec.get("budget", "paper")
    root = plugins.default_plugin_root()
    out = []
    for cell in cells:
        cfg = resolve(cell, budget, grid.name, runs_dir, root, data_root or default_data_root(),
                      device)
        state = cell_state(Path(cfg.run_dir))
        reuse = (find_reusable(cfg, runs_dir)
                 if state == "missing" and mode in ("cached", "retry") else None)
        out.append(PlannedCell(cfg, state, needs_run(state, mode) and reuse is None, reuse))
    return out


def expected_cells(grid_name: str, only: str | None = None,
                   seeds: str | None = None) -> list[dict[str, Any]]:
    """The grid's cells as {method, dataset, ir, seed, budget[, uid]} dicts.

    Cells naming an unregistered method or dataset are kept (reported as missing), without uid.
    """
    grid = load_grid(grid_name)
    methods, datasets = set(list_methods()), set(list_datasets())
    budget = grid.spec.get("budget", "paper")
    out = []
    for cell in select(grid.cells(), only, seeds):
        entry = {**{k: cell[k] for k in ("method", "dataset", "ir", "seed")}, "budget": budget}
        if cell["method"] in methods and cell["dataset"] in datasets:
            entry["uid"] = resolve(cell, budget, grid.name, Path("."), Path("."), None).uid
        out.append(entry)
    return out


def check_data(cells: list[PlannedCell]) -> None:
    """Fail before anything is submitted when a dataset's files are missing or incomplete."""
    seen = set()
    for cell in cells:
        key = (cell.cfg.dataset, cell.cfg.data_root)
        if key in seen:
            continue
        seen.add(key)
        plugin = dataset_class(cell.cfg.dataset)
        plugin(root=Path(cell.cfg.data_root) if cell.cfg.data_root else None,
               image_size=cell.cfg.data.get("image_size")).check()


def stage(cell: PlannedCell, mode: Mode) -> None:
    """Prepare a cell's folder for (re)running: config, fresh state under `force`."""
    run_dir = Path(cell.cfg.run_dir)
    if run_dir.is_symlink():  # a cell reused from another grid: rerun here, never touch it there
        run_dir.unlink()
    if mode == "force" and run_dir.exists():
        for name in ("ckpt", "metrics.json", "predictions.npz", "train_log.jsonl"):
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cell.cfg, run_dir / "config.yaml")
    update_status(run_dir, state="pending")
