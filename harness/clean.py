"""`harness clean`: remove what the run store no longer needs, never a result.

- `--submitit-logs`: `<runs>/_submitit/<grid>/` once no cell of that grid is pending or running;
- `--code`: frozen code copies in `<runs>/_code/` that no pending or running cell uses;
- `--failed`: the folders of failed, killed, interrupted or stale cells (they hold no result).
Completed cells are never touched, nor corrupt ones (a damaged result that `run --mode retry`
recomputes, often from its checkpoint). `--older-than 7d` keeps what changed more recently (the
newest file inside a folder counts). `--dry-run` lists what would go.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.store import FAILED_STATES, cell_state, read_status

ACTIVE = ("pending", "running")


def _cell_dirs(runs_dir: Path, grid: str | None) -> list[Path]:
    grids = [runs_dir / grid] if grid else [p for p in runs_dir.iterdir()
                                             if p.is_dir() and not p.name.startswith("_")]
    return sorted(p.parent for g in grids for p in g.glob("*/*/*/config.yaml")
                  if not p.parent.is_symlink())


def parse_age(text: str) -> float:
    """`7d`, `12h` or `30m` -> seconds.

    Deliberately not pandas.Timedelta: it deprecates the lowercase `d` that users type.
    """
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([dhm])", text.strip())
    if not match:
        raise HarnessError(f"--older-than {text!r}: use a number and a unit, e.g. 7d, 12h or 30m")
    return float(match[1]) * {"d": 86400, "h": 3600, "m": 60}[match[2]]


def last_change(folder: Path) -> float:
    """The newest modification time of the folder or anything inside it."""
    return max([folder.stat().st_mtime, *(p.lstat().st_mtime for p in folder.rglob("*"))])


def clean_targets(runs_dir: Path, grid: str | None = None, submitit_logs: bool = False,
                  code: bool = False, failed: bool = False,
                  older_than: float | None = None) -> list[Path]:
    """The folders `harness clean` would remove (`older_than`: seconds since their last change)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    cells = _cell_dirs(runs_dir, grid)
    states = {d: cell_state(d) for d in cells}
    targets: list[Path] = []
    if submitit_logs:
        busy_grids = {d.parents[2].name for d, s in states.items() if s in ACTIVE}
        folder = runs_dir / "_submitit"
        names = [grid] if grid else ([p.name for p in folder.iterdir()] if folder.is_dir() else [])
        targets += [folder / n for n in names if (folder / n).is_dir() and n not in busy_grids]
    if code:
        in_use = {Path(read_status(d).get("code_dir") or "").name
                  for d, s in _cell_states_all(runs_dir).items() if s in ACTIVE}
        folder = runs_dir / "_code"
        if folder.is_dir():
            targets += [p for p in sorted(folder.iterdir()) if p.is_dir() and p.name not in in_use]
    if failed:
        targets += [d for d, s in states.items() if s in FAILED_STATES and s != "corrupt"]
    if older_than is not None:
        targets = [t for t in targets if time.time() - last_change(t) > older_than]
    return targets


def _cell_states_all(runs_dir: Path) -> dict[Path, str]:
    return {d: cell_state(d) for d in _cell_dirs(runs_dir, None)}


def remove(paths: list[Path]) -> None:
    """Delete the folders (code copies are read-only: make them writable first)."""
    for path in paths:
        for p in [path, *path.rglob("*")]:
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o700)
        shutil.rmtree(path)
