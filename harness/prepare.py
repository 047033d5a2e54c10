"""`harness prepare` and `harness describe`: dataset files, LT manifests, per-class counts.

Data root: `--root`, else `HARNESS_DATA_ROOT`, else `~/.cache/harness/data`
(`harness.data.base.default_data_root`). Manifests live under `<root>/subsets/` (datasets.md
section 4); they are written once and verified, never rewritten, on later runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import lt
from harness.data.base import DatasetPlugin
from harness.errors import HarnessError
from harness.registry import dataset_class


def make_plugin(name: str, root: Path | None) -> DatasetPlugin:
    """An instance of dataset plugin `name` rooted at `root` (None: the default data root)."""
    return dataset_class(name)(root)


def prepare_dataset(name: str, root: Path | None, irs: Sequence[Any], download: bool = True,
                    verify: bool = True) -> list[Path]:
    """Check or download the files of `name`, verify them and write its LT manifests once.

    `irs` empty means the plugin's own `irs`. Returns the manifest paths written or verified
    (none for datasets generated in memory, which have no files and cache no manifest).
    `verify=False` skips published checksums; shapes and class counts are always checked.
    """
    plugin = make_plugin(name, root)
    values = list(dict.fromkeys(plugin.check_ir(ir) for ir in (irs or plugin.irs)))
    if not plugin.needs_files:
        return []
    plugin.prepare(download=download, verify=verify)
    paths = []
    for ir in values:
        path = lt.manifest_path(plugin.root, plugin.name, ir)
        if path.exists():
            fresh = lt.build_manifest(plugin.name, plugin.pool_description, plugin.pool_labels(),
                                      plugin.num_classes, plugin.n_max, ir)
            if lt.read_manifest(path) != fresh:
                raise HarnessError(f"LT manifest {path} differs from the subset that the current "
                                   f"files and count rule give; delete it and run "
                                   f"`harness prepare --dataset {name}` again")
        else:
            plugin.manifest(ir)
        paths.append(path)
    return paths


def describe(name: str, ir: Any, root: Path | None = None) -> str:
    """What `harness describe` prints: '<rank> <class name> <count>' per class, then 'total N'.

    Classes are ordered by count, head first (ties keep label order); rank 0 is the head, so
    for datasets whose head is class 0 the rank equals the label. Counts come from the count rule
    and the plugin's known class sizes, so no files are needed (ImageNet-LT reads its split list).
    """
    plugin = make_plugin(name, root)
    counts = plugin.lt_counts(plugin.check_ir(ir))
    names = plugin.class_names
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    lines = [f"{rank} {names[c]} {counts[c]}" for rank, c in enumerate(order)]
    lines.append(f"total {sum(counts)}")
    return "\n".join(lines)
