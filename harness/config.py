"""Cell configs: plain, JSON-serialisable, with a uid hashed from everything but location."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Fields that say where a cell lives or how it is run: not in the uid.
# build choice: `cpu_threads` is one of them although CPU results depend on it, so that the uids
# of existing cells (the paper grids) do not move; it is recorded in env.json and metrics.json,
# and `harness report` says so when the seeds of one table cell ran with different settings.
# build choice: `world_size` (processes that train the cell data-parallel) is one of them: it
# changes how the global recipe is computed, not what; where it changes the maths (per-device
# BatchNorm) the method's params say so (`Method.distribute_params`), so only those uids move.
# `profile` (the SLURM profile a grid names for the cell, "" for the method's) is one too.
LOCATION_FIELDS = ("grid", "run_dir", "plugin_root", "data_root", "device", "cpu_threads",
                   "world_size", "profile")
# build choice: one thread by default, the same on every machine and executor (the local
# executor runs several cells at once to use more cores); grids raise it with `cpu_threads: N`.
DEFAULT_CPU_THREADS = 1
# The training setting a run card and a method's paper (reference) card describe.
CARD_FIELDS = ("world_size", "batch_per_device", "effective_batch", "gather", "amp")


@dataclass(frozen=True)
class CellConfig:
    """Everything a worker needs to run one (method, dataset, IR, seed) cell.

    Jobs carry this plain data, never plugin objects: the worker re-resolves plugins by name.
    """

    method: str
    dataset: str
    ir: Any
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    eval_seeds: Any = "conmix10"
    method_version: int = 1
    grid: str = ""
    run_dir: str = ""
    plugin_root: str = ""
    data_root: str = ""
    device: str = "auto"
    cpu_threads: int = DEFAULT_CPU_THREADS
    world_size: int = 1  # ranks (one per device) that train this cell data-parallel
    profile: str = ""  # SLURM profile named by the grid ("": the method's `resources`)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (deep copy)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CellConfig":
        """Inverse of `to_dict`; unknown keys are an error."""
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        """The fields that define what the cell computes."""
        d = self.to_dict()
        for key in LOCATION_FIELDS:
            d.pop(key)
        return d

    @property
    def uid(self) -> str:
        """First 8 hex digits of sha256 over the canonical JSON of `identity()`."""
        return hashlib.sha256(canonical_json(self.identity()).encode()).hexdigest()[:8]

    def relative_dir(self) -> Path:
        """`<method>/<dataset>_ir<r>/seed<s>-<uid>` below the grid folder."""
        return Path(self.method) / f"{self.dataset}_ir{self.ir}" / f"seed{self.seed}-{self.uid}"

    def with_location(self, **kw: Any) -> "CellConfig":
        """A copy with location fields replaced."""
        assert set(kw) <= set(LOCATION_FIELDS), kw
        return dataclasses.replace(self, **kw)


def canonical_json(obj: Any) -> str:
    """Key-sorted, compact JSON: stable across processes and hash seeds."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def write_config(cfg: CellConfig, path: Path) -> None:
    """Write `config.yaml` (atomic)."""
    from harness.store import atomic_write_text

    atomic_write_text(path, yaml.safe_dump({**cfg.to_dict(), "uid": cfg.uid}, sort_keys=True))


def read_config(path: Path) -> CellConfig:
    """Read `config.yaml` back into a `CellConfig` (`CorruptRunFile` when damaged)."""
    from harness.errors import HarnessError
    from harness.store import read_run_file

    d = read_run_file(Path(path))
    if d is None:
        raise HarnessError(f"{path} does not exist; stage the cell with `harness run` first")
    d.pop("uid", None)
    return CellConfig.from_dict(d)
