"""Cell uids of the paper grids: only cells whose recipe changed move.

`golden/paper_uids_before_issue14.json` holds the uid of every paper-grid cell (paper_table2,
paper_lt_extra) as main computed it before issue 14 (commit 513b67d), keyed
grid/method/dataset/ir/seed. Issue 14 changed the recipe of
ProPos and BYOL on CIFAR-10 and CIFAR-20 and of HaDis on STL-10 (upstream batch, emulated
devices, v2): those cells move, with their method version bumped on that dataset; no other may.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.grids import load_grid, resolve
from harness.registry import method_class

PINNED: dict[str, str] = json.loads((Path(__file__).parent / "golden" /
                                     "paper_uids_before_issue14.json").read_text())
PAPER_GRIDS = ("paper_table2", "paper_lt_extra")
CHANGED = {("byol", "cifar10"), ("byol", "cifar20"), ("propos", "cifar10"), ("propos", "cifar20"),
           ("hadis", "stl10")}


def current() -> dict[str, tuple[str, int]]:
    """(uid, method_version) of every paper-grid cell, keyed like PINNED."""
    out = {}
    for name in PAPER_GRIDS:
        grid = load_grid(name)
        for c in grid.cells():
            cfg = resolve(c, grid.spec.get("budget", "paper"), grid.name, Path("."), Path("."),
                          None)
            out[f"{name}/{c['method']}/{c['dataset']}/{c['ir']}/{c['seed']}"] = (
                cfg.uid, cfg.method_version)
    return out


def test_unchanged_cells_keep_their_uids_and_changed_ones_move() -> None:
    now = current()
    missing = sorted(set(PINNED) - set(now))
    assert not missing, f"pinned cells no longer in their grid: {missing[:5]}"
    kept = {k: uid for k, uid in PINNED.items() if tuple(k.split("/")[1:3]) not in CHANGED}
    moved = {k: now[k][0] for k, uid in kept.items() if now[k][0] != uid}
    assert not moved, f"uids moved: {sorted(moved)[:10]}"
    changed = {k: uid for k, uid in PINNED.items() if k not in kept}
    assert len(changed) == 36  # 5 (method, dataset) pairs x paper_table2 + paper_lt_extra cells
    for key, uid in changed.items():
        assert now[key][0] != uid, f"{key}: recipe changed but the uid did not"
        assert now[key][1] == 2, f"{key}: method version not bumped"
    assert all(now[k][1] == 1 for k in kept)


@pytest.mark.parametrize("method,dataset", sorted(CHANGED))
def test_version_bumps_only_on_the_changed_datasets(method: str, dataset: str) -> None:
    cls = method_class(method)
    assert cls.cell_version(dataset) == cls.version + 1
    assert cls.cell_version("tinyimagenet") == cls.version
