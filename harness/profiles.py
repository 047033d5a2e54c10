"""SLURM cluster profiles: `slurm/<name>.yaml` files of sbatch settings (harness_design.md s7).

```yaml
description: one GPU per cell
partition: gpu            # null: the cluster's default partition
account: null
qos: null
constraint: null          # e.g. "a100|h100"
gpus_per_node: 1          # a cell on several GPUs runs one SLURM task (rank) per GPU
nodes: 1                  # world_size = gpus_per_node x nodes (CPU profiles: the cell's)
cpus_per_task: 8          # per rank; also the torch/OpenMP thread count of the job
mem_gb: 32                # per node
timeout_min: 720          # the time limit of one attempt; a timed-out cell is requeued
array_parallelism: 16     # at most this many cells of one array run at once
max_num_timeout: 3        # requeues after a time-out before the cell is given up
signal_delay_s: 120       # USR2 this long before the limit: checkpoint + requeue
sbatch_extra: ["--exclusive", "--mail-type=FAIL"]   # more #SBATCH lines
setup: ["module load cuda/12.4"]                     # shell lines run before the job
overrides:                # first to last, each matching cell gets the settings it names
  - {dataset: tinyimagenet, timeout_min: 1440}
  - {resources: cpu, gpus_per_node: 0}
```

Which profile a cell uses: `--profile NAME|PATH` for every cell; without it, the grid's `profile:`
setting for the cell (e.g. `fixed: {world_size: 4, profile: gpu4}`), else the profile named by
the method's `resources` (`gpu1` -> `default`, `cpu` -> `cpu`). A method whose `resources` is a
dict (`gpus`, `cpus`, `mem_gb`, `timeout_min`) gets those over the profile, before its overrides.
Overrides match on `method`, `dataset`, `ir` and `resources` (a value or a list of values).

A cell on `world_size` > 1 ranks is one job of its own (not an array task), with `nodes` nodes and
one task per rank (`tasks_per_node`): `gpus_per_node` tasks per node on a GPU profile, whose
`gpus_per_node` x `nodes` must equal the cell's world size, or world_size / nodes on a CPU one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError

PROFILE_DIR = Path(__file__).resolve().parent.parent / "slurm"
MATCH_KEYS = ("method", "dataset", "ir", "resources")
# Method `resources` dict keys -> profile keys.
RESOURCE_DICT_KEYS = {"gpus": "gpus_per_node", "cpus": "cpus_per_task", "mem_gb": "mem_gb",
                      "timeout_min": "timeout_min"}


@dataclass(frozen=True)
class Resources:
    """The resolved sbatch settings of one cell; equal settings share one job array."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int = 0
    nodes: int = 1
    cpus_per_task: int = 1
    mem_gb: float = 4
    timeout_min: int = 60
    array_parallelism: int = 16
    max_num_timeout: int = 3
    signal_delay_s: int = 120
    sbatch_extra: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line: GPUs per node, CPUs, memory, time limit, partition."""
        where = f" partition={self.partition}" if self.partition else ""
        return (f"gpus/node={self.gpus_per_node} cpus={self.cpus_per_task} mem={self.mem_gb:g}GB "
                f"time={self.timeout_min}min requeues<={self.max_num_timeout}{where}")


SETTING_KEYS = tuple(f.name for f in fields(Resources))
_OPTIONAL_STR = ("partition", "account", "qos", "constraint")
_MIN_VALUE = {"gpus_per_node": 0, "nodes": 1, "cpus_per_task": 1, "timeout_min": 1,
              "array_parallelism": 1, "max_num_timeout": 0, "signal_delay_s": 0}
_LINES = ("sbatch_extra", "setup")


@dataclass(frozen=True)
class Profile:
    """A parsed profile file: base settings and per-cell overrides."""

    name: str
    path: Path
    description: str
    base: Resources
    overrides: tuple[tuple[dict[str, list[str]], dict[str, Any]], ...]

    def resolve(self, method: str, dataset: str, ir: Any, resources: Any = "gpu1") -> Resources:
        """The settings of one cell: base, the method's resource dict, then matching overrides."""
        res = self.base
        if isinstance(resources, dict):
            unknown = sorted(set(resources) - set(RESOURCE_DICT_KEYS))
            if unknown:
                raise HarnessError(f"method '{method}': unknown resources key '{unknown[0]}'; use "
                                   f"{', '.join(RESOURCE_DICT_KEYS)} or a profile name")
            res = replace(res, **{RESOURCE_DICT_KEYS[k]: v for k, v in resources.items()})
        cell = {"method": method, "dataset": dataset, "ir": ir,
                "resources": resources if isinstance(resources, str) else "custom"}
        for match, settings in self.overrides:
            if all(str(cell[k]) in values for k, values in match.items()):
                res = replace(res, **settings)
        return res


def _check_value(key: str, value: Any, where: str) -> Any:
    """Validate one setting (`where` = "FILE: key 'NAME'"); returns it normalised."""
    if key in _OPTIONAL_STR:
        if value is not None and not isinstance(value, str):
            raise HarnessError(f"{where} must be a string or null (got {value!r})")
        return value
    if key in _LINES:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise HarnessError(f"{where} must be a list of strings (got {value!r})")
        return tuple(value)
    if key == "mem_gb":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise HarnessError(f"{where} must be a number > 0 (got {value!r})")
        return value
    low = _MIN_VALUE[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise HarnessError(f"{where} must be an integer >= {low} (got {value!r})")
    return value


def _settings(block: dict[str, Any], path: Path, prefix: str,
              allowed: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(block) - set(allowed))
    if unknown:
        raise HarnessError(f"{path}: unknown key '{prefix}{unknown[0]}'; allowed keys: "
                           f"{', '.join(allowed)}")
    return {k: _check_value(k, v, f"{path}: key '{prefix}{k}'")
            for k, v in block.items() if k in SETTING_KEYS}


def find_profile(name_or_path: str) -> Path:
    """`slurm/<name>.yaml` of the project, or a YAML file given by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.resolve()
    candidate = PROFILE_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
    raise HarnessError(f"unknown SLURM profile '{name_or_path}': use one of "
                       f"{', '.join(known) or '(none)'} (files in {PROFILE_DIR}) or a path to "
                       "a profile YAML file")


def load_profile(name_or_path: str) -> Profile:
    """Load and validate a profile; errors name the file and the key."""
    path = find_profile(name_or_path)
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise HarnessError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise HarnessError(f"{path}: a profile must be a YAML mapping of sbatch settings")
    base = _settings({k: v for k, v in spec.items() if k not in ("description", "overrides")},
                     path, "", SETTING_KEYS)
    overrides = []
    raw = spec.get("overrides") or []
    if not isinstance(raw, list):
        raise HarnessError(f"{path}: key 'overrides' must be a list of mappings")
    for i, rule in enumerate(raw):
        where = f"{path}: key 'overrides[{i}]'"
        if not isinstance(rule, dict):
            raise HarnessError(f"{where} must be a mapping like {{dataset: tinyimagenet, "
                               "timeout_min: 1440}")
        settings = _settings(rule, path, f"overrides[{i}].", MATCH_KEYS + SETTING_KEYS)
        match = {k: [str(x) for x in (v if isinstance(v, list) else [v])]
                 for k, v in rule.items() if k in MATCH_KEYS}
        if not match or not settings:
            raise HarnessError(f"{where} needs at least one of {', '.join(MATCH_KEYS)} and at "
                               "least one setting")
        overrides.append((match, settings))
    for rule_settings in [base, *(s for _, s in overrides)]:
        for line in rule_settings.get("sbatch_extra", ()):
            sbatch_flag(line, f"{path}: key 'sbatch_extra'")
    return Profile(name=path.stem, path=path, description=str(spec.get("description", "")),
                   base=replace(Resources(), **base), overrides=tuple(overrides))


def tasks_per_node(res: Resources, world_size: int) -> int:
    """SLURM tasks per node (one per rank) for a cell of `world_size` ranks on `res`; a mismatch
    between the profile and the cell is refused with what to change."""
    if res.gpus_per_node:
        ranks = res.gpus_per_node * res.nodes
        if ranks != world_size:
            raise HarnessError(f"the profile gives {res.gpus_per_node} GPU(s) x {res.nodes} "
                               f"node(s) = {ranks} ranks but the cell has world_size "
                               f"{world_size}; set world_size: {ranks} in the grid or use a "
                               f"profile with {world_size} GPU(s) in all")
        return res.gpus_per_node
    if world_size % res.nodes:
        raise HarnessError(f"world_size {world_size} does not split over the profile's "
                           f"{res.nodes} CPU nodes; set nodes to a divisor of {world_size}")
    return world_size // res.nodes


def profile_name_for(resources: Any) -> str:
    """Profile used by a method's `resources` when `--profile` is not given."""
    if isinstance(resources, str) and resources not in ("gpu1", "default"):
        return resources
    return "default"


def sbatch_flag(line: str, where: str = "key 'sbatch_extra'") -> tuple[str, Any]:
    """`--mail-type=END` / `#SBATCH --exclusive` -> ("mail-type", "END") / ("exclusive", True)."""
    text = line.strip()
    if text.startswith("#SBATCH"):
        text = text[len("#SBATCH"):].strip()
    if not text.startswith("--") or len(text) < 3:
        raise HarnessError(f"{where}: line {line!r} must be a long option like "
                           "'--mail-type=END' or '--exclusive'")
    key, sep, value = text[2:].partition("=")
    if not sep and " " in key:
        key, value = key.split(None, 1)
        sep = " "
    return key.strip(), (value.strip() if sep else True)
