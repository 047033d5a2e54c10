"""The method interface.

A method plugin is one file in `methods/` with one class registered by `@register_method(name)`.
The contract (harness_design.md section 3): `train(cfg, run_dir, resume)`, `embed(cfg, run_dir,
split) -> {feature_kind: array}`, optional `predict(cfg, run_dir, split)` for a cluster head.

`TrainableMethod` is the interface of the self-supervised methods: a method builds its networks,
names its augmentation recipe and writes `training_step`; the hooks below are what it may
override. The shared training loop behind it (data on the device, per-epoch randomness, ranks,
checkpoints, resume, failure reporting) lives in `harness.training`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from harness.config import CARD_FIELDS, CellConfig
from harness.data.augment import AugmentRecipe, override_recipe, recipe_overrides
from harness.data.base import IMAGENET_MEAN, IMAGENET_STD
from harness.distributed import Ranks, convert_sync_batchnorm
from harness.errors import HarnessError
from harness.nn.schedules import warmup_cosine
from harness.progress import EpochProgress
from harness.settings import params_from_dict
from harness.training import (Batch, TrainingLoop, compile_networks, load_cell_data,
                              resolve_device)

# The plugin interface; the loop's helpers are re-exported here for method plugins.
__all__ = ["Batch", "Method", "TrainParams", "TrainableMethod", "compile_networks",
           "load_cell_data", "params_from_dict", "resolve_device"]


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters every trainable method has (defaults: the ConMix/SimCLR recipe)."""

    epochs: int = 1000
    batch_size: int = 512
    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 10
    final_lr: float = 1e-6
    drop_last: bool = False
    ckpt_every: int = 1  # epochs between checkpoints (and always at the end)
    log_every: int = 50  # optimiser steps between loss logs (the only host syncs in the loop)
    data_path: str = "fast"  # fast: uint8 data + augmentation on the device; reference: CPU DataLoader
    num_workers: int = 4  # reference path only
    amp: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; bf16; none
    compile: bool = False  # torch.compile the model (falls back to eager with a warning)
    channels_last: bool = True  # CUDA only
    # Overrides of the method's augmentation recipe (AugmentRecipe fields, e.g. flip_p, scale,
    # jitter), set per dataset in `dataset_params` (the digit recipes) or in a grid. None = the
    # method's own recipe; a None value is left out of the cell config, so cells that use no
    # override kept the uid they had before this setting existed.
    augment: dict[str, Any] | None = None


BUDGETS = ("paper", "cpu", "test")
# left out of a resolved config while None (uids stay stable); a method's own such parameters
# are its `optional_params`
OPTIONAL_PARAMS = ("augment",)


class Method(abc.ABC):
    """Base of all methods. Class attributes are the plugin's metadata."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[int] = 1  # bump by hand when results would change (part of the cell uid)
    # Per-dataset bumps added to `version` for that dataset's cells only: a recipe that changes
    # on some datasets moves their uids and no other (build choice).
    version_bumps: ClassVar[dict[str, int]] = {}
    Params: ClassVar[type] = TrainParams
    # Params added after cells were run, with the value that means "not used": left out of a
    # resolved cell config while they hold it, so cells that do not use them keep their uid.
    optional_params: ClassVar[dict[str, Any]] = {}
    test_params: ClassVar[dict[str, Any]] = {}  # tiny overrides for CPU tests and smoke grids
    # A laptop budget for small real datasets (mnist5k, digits): network, epochs, batch.
    cpu_params: ClassVar[dict[str, Any]] = {}
    dataset_params: ClassVar[dict[str, dict[str, Any]]] = {}  # paper settings per dataset
    kmeans_metric: ClassVar[dict[str, str]] = {}  # feature kind -> metric (default cosine)
    resources: ClassVar[str] = "gpu1"  # resource profile name (slurm/ profiles)
    reference_card: ClassVar[dict[str, Any]] = {}  # world size, batch, AMP of the paper setting
    # No training randomness: the training seed cannot change the result, so one run (seed 0)
    # serves every seed of a grid and the report says "deterministic" instead of "+- 0.0".
    deterministic: ClassVar[bool] = False
    # Set by the worker: makes the per-epoch progress reporter from (epochs, epochs done).
    progress: Callable[[int, int], EpochProgress] | None = None
    # The upstream recipe per dataset where the spec gives one: `source` (repository and file)
    # and the `recipe()` keys it fixes (values in the same form); `harness describe-method`
    # shows them beside ours, and its card fields override `reference_card` on that dataset.
    upstream: ClassVar[dict[str, dict[str, Any]]] = {}
    # Whether cells of this method can train on several ranks (`world_size` > 1).
    data_parallel: ClassVar[bool] = False
    # This process's rank in the cell's process group; set by the worker (one rank by default).
    ranks: Ranks = Ranks()

    @classmethod
    def distribute_params(cls, params: dict[str, Any], world_size: int) -> dict[str, Any]:
        """Resolved params for a cell on `world_size` ranks (refused where the method cannot);
        a method whose maths depends on the devices (per-device BatchNorm) records it here."""
        if world_size > 1 and not cls.data_parallel:
            raise HarnessError(f"method '{cls.name}' trains on one process; remove world_size "
                               f"{world_size} from its cells")
        return params

    @classmethod
    def resolve_params(cls, dataset: str, overrides: dict[str, Any] | None = None,
                       budget: str = "paper") -> dict[str, Any]:
        """Defaults <- per-dataset settings <- budget (`cpu`/`test`, if asked) <- overrides."""
        if budget not in BUDGETS:
            raise HarnessError(f"unknown budget {budget!r}: use one of {', '.join(BUDGETS)}")
        values = dataclasses.asdict(cls.Params())
        values.update(cls.dataset_params.get(dataset, {}))
        values.update({"cpu": cls.cpu_params, "test": cls.test_params}.get(budget, {}))
        values.update(overrides or {})
        resolved = dataclasses.asdict(params_from_dict(cls.Params, values, f"method '{cls.name}'"))
        if "augment" in resolved:
            recipe_overrides(resolved["augment"], f"method '{cls.name}' on {dataset}")
        unused = {**dict.fromkeys(OPTIONAL_PARAMS), **cls.optional_params}
        return {k: v for k, v in resolved.items() if not (k in unused and v == unused[k])}

    @classmethod
    def cell_version(cls, dataset: str) -> int:
        """The `method_version` of this method's cells on `dataset` (part of their uid)."""
        return cls.version + cls.version_bumps.get(dataset, 0)

    @classmethod
    def reference_card_for(cls, dataset: str) -> dict[str, Any]:
        """The paper setting on `dataset`: `reference_card`, with the upstream recipe's card
        fields (world size, batch per device, effective batch, gather, AMP) where it has them."""
        up = cls.upstream.get(dataset, {})
        return {**cls.reference_card, **{k: up[k] for k in CARD_FIELDS if k in up}}

    @abc.abstractmethod
    def train(self, cfg: CellConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
        """Train on the cell's LT subset; returns a summary (epochs, seconds, final_loss)."""
        ...

    @abc.abstractmethod
    def embed(self, cfg: CellConfig, run_dir: Path, split: str) -> dict[str, np.ndarray]:
        """Evaluation features per feature kind; the first key is the primary one."""
        ...

    def predict(self, cfg: CellConfig, run_dir: Path, split: str) -> np.ndarray | None:
        """Cluster-head assignments, for methods that have a head."""
        return None

    def run_card(self) -> dict[str, Any]:
        """This run's training setting (world size, batches, AMP); empty without training."""
        return {}

    def recipe(self) -> dict[str, Any]:
        """What training does, keyed like `upstream` (`harness describe-method`); needs only the
        resolved params `p` and the data's shape `data`."""
        return {"training": "none"}



class TrainableMethod(TrainingLoop, Method):
    """A self-supervised method: subclasses implement `build`, `augment_recipe`, `training_step`
    and `features`; the loop is `TrainingLoop`'s (harness.training)."""

    data_parallel = True

    # -- hooks for subclasses ---------------------------------------------------------------
    @abc.abstractmethod
    def build(self) -> nn.Module:
        """Create and return the module holding every network (moved to the device after)."""
        ...

    @abc.abstractmethod
    def augment_recipe(self) -> AugmentRecipe:
        """The training augmentation of this method at the data's image size."""
        ...

    def training_recipe(self) -> AugmentRecipe:
        """`augment_recipe()` with the cell's `params.augment` overrides applied."""
        return override_recipe(self.augment_recipe(), self.p.augment, f"method '{self.name}'")

    def norm_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Normalisation mean/std (ConMix recipe: ImageNet statistics for every dataset)."""
        return IMAGENET_MEAN, IMAGENET_STD

    @abc.abstractmethod
    def training_step(self, batch: Batch) -> torch.Tensor:
        """Return the scalar loss of one step (backward and optimiser step are done here)."""
        ...

    @abc.abstractmethod
    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval-mode features of normalised images, per feature kind (primary first)."""
        ...

    def distribute(self, model: nn.Module) -> nn.Module:
        """The model on several ranks (default: SyncBatchNorm, as upstream SimCLR/SDCLR/ConMix)."""
        return convert_sync_batchnorm(model, self.device)

    def gather(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Rows of the global batch from every rank's share `x`, with gradient (negatives)."""
        return self.ranks.gather(x, batch.rows)

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        """Per-epoch work before the first step (pruning masks, k-means E-step, ...)."""

    def after_optimizer_step(self, step: int) -> None:
        """Per-step work after the update (EMA targets, ...)."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups; a group's `lr_scale` multiplies the scheduled LR."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def make_optimizer(self) -> torch.optim.Optimizer:
        """SGD with momentum and weight decay on all parameters (fused on CUDA)."""
        p = self.p
        kw: dict[str, Any] = {"fused": True} if self.device.type == "cuda" else {}
        return torch.optim.SGD(self.parameter_groups(), lr=p.lr, momentum=p.momentum,
                               weight_decay=p.weight_decay, **kw)

    @property
    def peak_lr(self) -> float:
        """The LR the schedule reaches after warm-up (the effective LR)."""
        return self.p.lr

    def lr_at(self, step: int) -> float:
        """LR at 1-based optimiser step `step` (linear warm-up then cosine, per iteration)."""
        p = self.p
        return warmup_cosine(step, int(round(p.warmup_epochs * self.steps_per_epoch)),
                             p.epochs * self.steps_per_epoch, self.peak_lr, p.final_lr)

    def epoch_indices(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        """Order of LT-subset positions for one epoch (a shuffled permutation)."""
        return torch.randperm(len(self.data), generator=generator, device=self.device)

    def extra_state(self) -> dict[str, Any]:
        """Method state to checkpoint beyond model and optimiser (pseudo-labels, masks...)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore `extra_state()`."""

    def optimizer_recipe(self) -> dict[str, Any]:
        """The optimiser `make_optimizer` builds, as recipe data."""
        return {"name": "SGD", "momentum": self.p.momentum, "weight_decay": self.p.weight_decay}

    def recipe(self) -> dict[str, Any]:
        p = self.p
        w = self.ranks.world_size
        return {"epochs": p.epochs, "effective_batch": p.batch_size, "world_size": w,
                "batch_per_device": p.batch_size // w, "drop_last": p.drop_last,
                "optimizer": self.optimizer_recipe(), "effective_lr": self.peak_lr,
                "lr_schedule": {"warmup_epochs": p.warmup_epochs, "final_lr": p.final_lr},
                "amp": p.amp in ("auto", "bf16"), "augmentation": self.training_recipe()}

    def run_card(self) -> dict[str, Any]:
        """This run's training setting, comparable with `reference_card` (invariance guard)."""
        amp = self.p.amp == "bf16" or (self.p.amp == "auto" and self.device.type == "cuda")
        w = self.ranks.world_size
        return {"world_size": w, "ranks": w, "batch_per_device": self.p.batch_size // w,
                "effective_batch": self.p.batch_size, "gather": w > 1, "amp": amp,
                "data_path": self.p.data_path, "compiled": self.compiled,
                "cudnn_benchmark": self.device.type == "cuda",
                "augment": dict(self.p.augment or {})}  # per-dataset recipe overrides (digits)
