"""Grid specs: named YAML files expanded into cell configs (harness_design.md section 5).

```yaml
name: demo
description: one line for `harness list grids`
budget: paper            # or cpu (`cpu_params`: small real data on a laptop), or test (tiny)
fixed: {eval_seeds: conmix10, protocol: {split: lt_train}, cpu_threads: 1}   # every cell
                         # (also `world_size: N`: N processes train each cell data-parallel,
                         # and `profile: NAME`: the cell's SLURM profile, `slurm/NAME.yaml`)
grid: {method: [simclr, kmeans], dataset: [digits], ir: [1, 10], seed: [0, 1, 2]}
methods: {simclr: {params: {epochs: 20}}}                     # per method
datasets: {digits: {data: {image_size: 32}}}                  # per dataset
subgrids: {tiny: {dataset: [tinyimagenet], ir: [10], params: {epochs: 500}}}
include: [{method: kmeans, dataset: cifar10, ir: 100, seed: 0}]
exclude: [{method: sdclr, dataset: imagenet_lt}]
```
Settings merge from general to specific: method defaults, the method's per-dataset paper
settings, budget, `fixed`, `datasets.<d>`, `methods.<m>`, then the subgrid's own settings. Keys
may use dot-notation (`params.epochs: 5`). Identical resolved cells are de-duplicated. Values are
checked by type when the grid loads (axes, protocol, data, eval seeds, CPU threads) and when its
cells resolve (method parameters, each IR against its dataset's n_max), before anything runs.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.config import DEFAULT_CPU_THREADS, CellConfig
from harness.errors import HarnessError, UnknownNameError
from harness.lt import parse_ir
from harness.method import BUDGETS
from harness.registry import dataset_class, list_datasets, list_methods, method_class
from harness.settings import check_settings

GRID_DIR = Path(__file__).parent / "grids"
AXES = ("method", "dataset", "ir", "seed")
SETTINGS = ("params", "data", "protocol", "eval_seeds", "cpu_threads", "world_size", "profile")
TOP_KEYS = {"name", "description", "budget", "fixed", "grid", "methods", "datasets", "subgrids",
            "include", "exclude"}


@dataclass
class Grid:
    """A parsed grid spec."""

    name: str
    description: str
    path: Path
    spec: dict[str, Any] = field(repr=False)

    def cells(self) -> list[dict[str, Any]]:
        """Expanded axis combinations with the settings that apply, before resolution."""
        return expand(self)


def list_grids() -> dict[str, str]:
    """Shipped grid names and their one-line descriptions."""
    return {p.stem: (yaml.safe_load(p.read_text()) or {}).get("description", "")
            for p in sorted(GRID_DIR.glob("*.yaml"))}


def _nest(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """Expand dot-notation keys (`params.epochs: 5` -> {params: {epochs: 5}})."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        head, _, rest = str(key).partition(".")
        if head not in SETTINGS:
            raise HarnessError(f"{where}: unknown setting '{key}'; use one of {', '.join(SETTINGS)} "
                               "(dot-notation allowed, e.g. params.epochs)")
        if rest:
            out.setdefault(head, {})
            node = out[head]
            parts = rest.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        elif isinstance(value, dict) and isinstance(out.get(head), dict):
            out[head] = _merge(out[head], value)
        else:
            out[head] = copy.deepcopy(value)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_grid(name_or_path: str) -> Grid:
    """Load a shipped grid by name, or a YAML file by path; malformed files name file and key."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = GRID_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise UnknownNameError("grid", str(name_or_path), list_grids())
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise HarnessError(f"{path}: not valid YAML ({exc.__class__.__name__}: "
                           f"{str(exc).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise HarnessError(f"{path}: a grid file must be a YAML mapping")
    unknown = sorted(set(spec) - TOP_KEYS)
    if unknown:
        raise HarnessError(f"{path}: unknown key '{unknown[0]}'; allowed keys: "
                           f"{', '.join(sorted(TOP_KEYS))}")
    grid = spec.get("grid")
    if not isinstance(grid, dict) or set(grid) != set(AXES):
        raise HarnessError(f"{path}: key 'grid' must map each of {', '.join(AXES)} to a list")
    subgrids = spec.get("subgrids") or {}
    if not isinstance(subgrids, dict) or not all(isinstance(b, dict) for b in subgrids.values()):
        raise HarnessError(f"{path}: key 'subgrids' must map names to blocks of axes and settings")
    for block_name, block in [("grid", grid), *[(f"subgrids.{k}", v) for k, v in
                                               subgrids.items()]]:
        for axis in AXES:
            if axis in block and not isinstance(block[axis], list):
                raise HarnessError(f"{path}: key '{block_name}.{axis}' must be a list")
            _check_axis(path, f"{block_name}.{axis}", axis, block.get(axis, []))
    if spec.get("budget", "paper") not in BUDGETS:
        raise HarnessError(f"{path}: key 'budget' must be one of {', '.join(BUDGETS)}")
    for i, rule in enumerate([*(spec.get("include") or []), *(spec.get("exclude") or [])]):
        if not isinstance(rule, dict) or not set(rule) <= set(AXES):
            raise HarnessError(f"{path}: include/exclude rule {i} must map axes "
                               f"({', '.join(AXES)}) to values")
    for i, rule in enumerate(spec.get("include") or []):
        for axis, value in rule.items():
            _check_axis(path, f"include[{i}].{axis}", axis, [value])
    blocks = [("fixed", spec.get("fixed") or {}),
              *[(f"methods.{k}", v or {}) for k, v in (spec.get("methods") or {}).items()],
              *[(f"datasets.{k}", v or {}) for k, v in (spec.get("datasets") or {}).items()],
              *[(f"subgrids.{k}", {a: v for a, v in b.items() if a not in AXES})
                for k, b in subgrids.items()]]
    for where, block in blocks:
        if not isinstance(block, dict):
            raise HarnessError(f"{path}: key '{where}' must map settings to values")
        check_settings(_nest(block, f"{path}: key '{where}'"), f"{path}: key '{where}'")
    name = str(spec.get("name", path.stem))
    return Grid(name, str(spec.get("description", "")), path, spec)


def _check_axis(path: Path, key: str, axis: str, values: list[Any]) -> None:
    """Refuse axis values of the wrong type: names are text, seeds whole numbers >= 0."""
    for value in values:
        if axis in ("method", "dataset") and not isinstance(value, str):
            raise HarnessError(f"{path}: key '{key}': {value!r} is not a {axis} name; write "
                               f"names as text (see `harness list {axis}s`)")
        if axis == "seed" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise HarnessError(f"{path}: key '{key}': {value!r} is not a seed; seeds are whole "
                               "numbers >= 0, e.g. seed: [0, 1, 2]")
        if axis == "ir":
            try:
                parse_ir(value)
            except HarnessError as exc:
                raise HarnessError(f"{path}: key '{key}': {exc}") from None


def _matches(cell: dict[str, Any], rule: dict[str, Any]) -> bool:
    return all(str(cell[k]) == str(v) or (isinstance(v, list) and str(cell[k]) in map(str, v))
               for k, v in rule.items())


def expand(grid: Grid) -> list[dict[str, Any]]:
    """Axis combinations (+ include, - exclude) with their merged settings, de-duplicated."""
    spec = grid.spec
    blocks = [(spec["grid"], {})]
    for sub_name, sub in (spec.get("subgrids") or {}).items():
        axes = {a: sub.get(a, spec["grid"][a]) for a in AXES}
        blocks.append((axes, _nest({k: v for k, v in sub.items() if k not in AXES},
                                   f"{grid.path}: subgrids.{sub_name}")))
    raw = []
    for axes, settings in blocks:
        for combo in itertools.product(*(axes[a] for a in AXES)):
            raw.append((dict(zip(AXES, combo)), settings))
    raw += [(dict(rule), {}) for rule in spec.get("include") or []]
    out, seen = [], set()
    for cell, settings in raw:
        if any(_matches(cell, rule) for rule in spec.get("exclude") or []):
            continue
        key = tuple(str(cell[a]) for a in AXES)
        if key in seen:
            continue
        seen.add(key)
        merged = _nest(spec.get("fixed") or {}, f"{grid.path}: fixed")
        merged = _merge(merged, _nest((spec.get("datasets") or {}).get(cell["dataset"]) or {},
                                      f"{grid.path}: datasets.{cell['dataset']}"))
        merged = _merge(merged, _nest((spec.get("methods") or {}).get(cell["method"]) or {},
                                      f"{grid.path}: methods.{cell['method']}"))
        out.append({**cell, "settings": _merge(merged, settings)})
    return out


def parse_only(only: str | None) -> dict[str, list[str]]:
    """`--only method=simclr|kmeans,ir=10` -> {method: [simclr, kmeans], ir: ['10']}."""
    rules: dict[str, list[str]] = {}
    for part in filter(None, (only or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in AXES:
            raise HarnessError(f"--only {only!r}: use k=v pairs with k in {', '.join(AXES)} "
                               "(e.g. --only method=simclr,ir=10)")
        rules[key] = value.split("|")
    return rules


def parse_seeds(seeds: str | None) -> list[int] | None:
    """`--seeds 0-4` or `--seeds 0,2,5`."""
    if not seeds:
        return None
    out: list[int] = []
    try:
        for part in seeds.split(","):
            lo, dash, hi = part.partition("-")
            if (dash and not hi) or (hi and int(hi) < int(lo)):
                raise ValueError
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise HarnessError(f"--seeds {seeds!r}: use a range like 0-4 (low-high) or a list like "
                           "0,2,5 of seeds >= 0") from None
    return out


def select(cells: list[dict[str, Any]], only: str | None = None,
           seeds: str | None = None) -> list[dict[str, Any]]:
    """Filter expanded cells by `--only` and `--seeds`; unknown names in `--only` raise."""
    rules = parse_only(only)
    if "method" in rules:
        for m in rules["method"]:
            method_class(m)
    if "dataset" in rules:
        for d in rules["dataset"]:
            dataset_class(d)
    seed_list = parse_seeds(seeds)
    matched = [c for c in cells if all(str(c[k]) in v for k, v in rules.items())]
    if rules and cells and not matched:
        values = "; ".join(f"{k}: {', '.join(sorted({str(c[k]) for c in cells}))}" for k in rules)
        raise HarnessError(f"--only {only!r} matches no cell of the grid; its values are {values}")
    if seed_list is None:
        return collapse_deterministic(matched)
    out = [c for c in matched if int(c["seed"]) in seed_list]

    def key(c: dict[str, Any]) -> tuple[str, str, str]:
        return c["method"], c["dataset"], str(c["ir"])

    templates = {key(c): c for c in matched}  # seeds beyond the grid's list copy a grid cell
    for k, template in templates.items():
        for seed in seed_list:
            if not any(x["seed"] == seed and key(x) == k for x in out):
                out.append({**template, "seed": seed})
    return collapse_deterministic(out)


def collapse_deterministic(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One seed-0 cell per (method, dataset, IR) of a deterministic method, whatever the seeds.

    A method without training randomness (`Method.deterministic`) gives the same result for every
    training seed, so its seed-0 run serves them all. Unregistered methods are left as they are.
    """
    registered = set(list_methods())
    out, seen = [], set()
    for cell in cells:
        if cell["method"] in registered and method_class(cell["method"]).deterministic:
            key = (cell["method"], str(cell["dataset"]), str(cell["ir"]))
            if key in seen:
                continue
            seen.add(key)
            cell = {**cell, "seed": 0}
        out.append(cell)
    return out


def check_names(cells: list[dict[str, Any]]) -> None:
    """Raise with the nearest names if a cell names an unregistered method or dataset."""
    methods, datasets = set(list_methods()), set(list_datasets())
    for cell in cells:
        if cell["method"] not in methods:
            raise UnknownNameError("method", cell["method"], methods)
        if cell["dataset"] not in datasets:
            raise UnknownNameError("dataset", cell["dataset"], datasets)


def resolve(cell: dict[str, Any], budget: str, grid_name: str, runs_dir: Path,
            plugin_root: Path, data_root: Path | None, device: str = "auto") -> CellConfig:
    """A fully resolved `CellConfig` for one expanded cell, with its run folder."""
    method_cls = method_class(cell["method"])
    settings = cell["settings"]
    world_size = int(settings.get("world_size", 1))
    params = method_cls.distribute_params(
        method_cls.resolve_params(cell["dataset"], settings.get("params"), budget), world_size)
    data = dict(settings.get("data") or {})
    ds_cls = dataset_class(cell["dataset"])
    if data.get("image_size") == ds_cls.image_size:
        data.pop("image_size")
    cfg = CellConfig(method=cell["method"], dataset=cell["dataset"], ir=ds_cls.check_ir(cell["ir"]),
                     seed=int(cell["seed"]), params=params, data=data,
                     protocol=dict(settings.get("protocol") or {}),
                     eval_seeds=settings.get("eval_seeds", "conmix10"),
                     method_version=method_cls.cell_version(cell["dataset"]))
    run_dir = runs_dir / grid_name / cfg.relative_dir()
    return cfg.with_location(grid=grid_name, run_dir=str(run_dir), plugin_root=str(plugin_root),
                             data_root=str(data_root) if data_root else "", device=device,
                             cpu_threads=int(settings.get("cpu_threads", DEFAULT_CPU_THREADS)),
                             world_size=world_size, profile=str(settings.get("profile", "")))


def resolve_cells(grid: Grid, cells: list[dict[str, Any]], runs_dir: Path, plugin_root: Path,
                  data_root: Path | None, device: str = "auto") -> list[CellConfig]:
    """`resolve` for each cell of `grid`; an error names the grid file."""
    budget = grid.spec.get("budget", "paper")
    try:
        return [resolve(c, budget, grid.name, runs_dir, plugin_root, data_root, device)
                for c in cells]
    except HarnessError as exc:
        raise HarnessError(f"{grid.path}: {exc}") from None
