"""Turn a grid into the cells to run under a mode, and hand them to an executor."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import plugins
from harness.cell_lock import CellBusy, CellLock, Owner, acquire
from harness.config import CellConfig, write_config
from harness.data.base import default_data_root
from harness.grids import check_names, load_grid, resolve_cells, select
from harness.registry import dataset_class, list_datasets, list_methods
from harness.store import Mode, State, cell_state, inspect_cell, needs_run, now, update_status


@dataclass
class PlannedCell:
    """A resolved cell and what the mode decided for it."""

    cfg: CellConfig
    state: State
    run: bool
    reuse: Path | None = None  # a completed folder of the same cell under another grid
    owner: Owner | None = None  # the live process that owns the cell (another run, a worker)


@dataclass
class ClaimedCell:
    """A cell this process owns until its worker starts (and hands the lock over)."""

    cfg: CellConfig
    lock: CellLock
    fresh: bool = False  # --mode force: the worker clears the old results when it starts


@dataclass
class BusyCell:
    """A cell another live process owns, or finished while this run was getting to it."""

    cfg: CellConfig
    owner: Owner | None

    def line(self) -> str:
        from harness.executors.progress import cell_label

        why = self.owner.describe() if self.owner else "finished meanwhile by another process"
        return f"  skipped {cell_label(self.cfg)}: {why}"


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
    out = []
    for cfg in resolve_cells(grid, cells, runs_dir, plugins.default_plugin_root(),
                             data_root or default_data_root(), device):
        view = inspect_cell(Path(cfg.run_dir))
        reuse = (find_reusable(cfg, runs_dir)
                 if view.state == "missing" and mode in ("cached", "retry") else None)
        out.append(PlannedCell(cfg, view.state, needs_run(view.state, mode) and reuse is None,
                               reuse, view.owner))
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
            (cfg,) = resolve_cells(grid, [cell], Path("."), Path("."), None)
            entry["uid"] = cfg.uid
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


def stage(cell: PlannedCell, mode: Mode, executor: str = "local") -> None:
    """Write a cell's config and mark it `pending` (a completed cell forced to rerun keeps its
    results and state until its worker starts)."""
    run_dir = Path(cell.cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cell.cfg, run_dir / "config.yaml")
    if not (mode == "force" and cell.state == "completed"):
        update_status(run_dir, state="pending", executor=executor, staged=now())


def claim(cells: list[PlannedCell], mode: Mode,
          executor: str) -> tuple[list[ClaimedCell], list[BusyCell]]:
    """Take the lock of each cell to run, re-check its state under the lock, and stage it.

    A cell that another live process owns, or that finished since it was planned, is skipped.
    """
    claimed, busy = [], []
    for cell in cells:
        run_dir = Path(cell.cfg.run_dir)
        if run_dir.is_symlink():  # a cell reused from another grid: rerun it here, not there
            run_dir.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = acquire(run_dir, "run")
        except CellBusy as exc:
            busy.append(BusyCell(cell.cfg, exc.owner))
            continue
        view = inspect_cell(run_dir)
        # our own lock makes a cell whose owner died look owned again: judge it as stale
        state = "stale" if view.owner == lock.owner and view.state in ("pending", "running") \
            else view.state
        if not needs_run(state, mode):
            lock.release()
            busy.append(BusyCell(cell.cfg, None))
            continue
        stage(PlannedCell(cell.cfg, state, True), mode, executor)
        claimed.append(ClaimedCell(cell.cfg, lock, fresh=mode == "force"))
    return claimed, busy


def release(cells: list[ClaimedCell]) -> None:
    """Release the locks of claimed cells (those a worker has not taken over)."""
    for cell in cells:
        cell.lock.release()
