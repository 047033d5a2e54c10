"""The method interface and the shared training loop.

A method plugin is one file in `methods/` with one class registered by `@register_method(name)`.
The contract (harness_design.md section 3): `train(cfg, run_dir, resume)`, `embed(cfg, run_dir,
split) -> {feature_kind: array}`, optional `predict(cfg, run_dir, split)` for a cluster head.

`TrainableMethod` owns what all self-supervised methods share: data on the training device,
deterministic per-epoch randomness, the LR schedule, mixed precision, checkpoints, resume,
non-finite-loss and out-of-memory reporting. A method only builds its networks, names its
augmentation recipe and writes `training_step`.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from harness.config import CARD_FIELDS, CellConfig
from harness.data.augment import (AugmentRecipe, augment, eval_images, override_recipe,
                                  recipe_overrides)
from harness.data.base import IMAGENET_MEAN, IMAGENET_STD, LTData, load_lt
from harness.data.reference import reference_batches
from harness.distributed import Ranks, convert_sync_batchnorm, init_process_group
from harness.errors import HarnessError, TrainingFailure
from harness.nn.schedules import warmup_cosine
from harness.progress import EpochProgress
from harness.registry import dataset_class
from harness.seeding import derive_seed
from harness.settings import check_params
from harness.store import atomic_write_bytes, dumps_json, read_run_file


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


def params_from_dict(params_cls: type, values: dict[str, Any], where: str) -> Any:
    """Build a Params dataclass, with a clear error for unknown keys and ill-typed values."""
    names = {f.name for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise HarnessError(f"{where}: unknown parameter(s) {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(names))}")
    check_params(params_cls, values, where)
    return params_cls(**values)


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


def load_cell_data(cfg: CellConfig, split: str = "lt_train") -> LTData:
    """The cell's data split, read through its dataset plugin and LT manifest."""
    plugin_cls = dataset_class(cfg.dataset)
    plugin = plugin_cls(root=Path(cfg.data_root) if cfg.data_root else None,
                        image_size=cfg.data.get("image_size"))
    plugin.check()
    return load_lt(plugin, cfg.ir, split)


def compile_networks(model: nn.Module, backend: str = "inductor") -> None:
    """torch.compile each top-level network of `model` in place (state-dict keys unchanged).

    Static shapes: the epoch's last, smaller batch gets a graph of its own.
    """
    for child in model.children():
        child.compile(backend=backend, dynamic=False)


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; a CUDA device this machine lacks is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HarnessError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise HarnessError(f"device {name!r} asked for, but this machine has no usable CUDA "
                               "GPU; use --device cpu (or auto), or run on a GPU node")
        if device.index is not None and device.index >= count:
            raise HarnessError(f"device {name!r} asked for, but this machine has {count} CUDA "
                               f"GPU(s): use cuda:0 to cuda:{count - 1}")
    return device


@dataclass
class Batch:
    """One training step's input: two augmented views of the same images."""

    view1: torch.Tensor
    view2: torch.Tensor
    index: torch.Tensor  # positions in the LT subset (for pseudo-label lookups)
    epoch: int
    step: int  # global optimiser step, 1-based
    generator: torch.Generator  # the epoch's generator, for method randomness (tags, noise)
    # positions of the whole global batch (every rank's rows, rank order); = index on one rank
    global_index: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        """Images in the global batch (all ranks)."""
        return int((self.index if self.global_index is None else self.global_index).shape[0])


class TrainableMethod(Method):
    """Shared training loop; subclasses implement `build`, `augment_recipe`, `training_step`."""

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
        return convert_sync_batchnorm(model)

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

    # -- setup -------------------------------------------------------------------------------
    def setup(self, cfg: CellConfig, run_dir: Path) -> None:
        """Load data, resolve params and device, build the model (idempotent)."""
        if getattr(self, "cfg", None) is cfg:
            return
        self.setup_with_data(cfg, run_dir, load_cell_data(cfg, "lt_train"))

    def setup_with_data(self, cfg: CellConfig, run_dir: Path, data: LTData) -> None:
        """`setup` on given in-memory data (benchmarks use random data of a dataset's shape)."""
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.p = params_from_dict(self.Params, cfg.params, f"method '{self.name}'")
        ranks = self.ranks
        if cfg.world_size != ranks.world_size:
            raise HarnessError(f"the cell has world_size {cfg.world_size} but runs on "
                               f"{ranks.world_size} process(es); launch it with `harness run`")
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and ranks.distributed:
            self.device = torch.device("cuda", ranks.local_rank)  # one visible GPU per rank
            torch.cuda.set_device(self.device)
        init_process_group(ranks, self.device)
        self.data = data
        self.images = self.data.images.to(self.device)
        n, b = len(self.data), self.p.batch_size
        if self.p.drop_last and n < b:
            raise HarnessError(f"batch_size {b} exceeds the {n} images of the LT subset with "
                               f"drop_last; lower params.batch_size")
        if ranks.distributed and (b < ranks.world_size or self.p.data_path != "fast"):
            raise HarnessError(f"world_size {ranks.world_size} needs batch_size >= world_size and "
                               f"data_path 'fast' (got {b}, {self.p.data_path!r})")
        self.steps_per_epoch = n // b if self.p.drop_last else math.ceil(n / b)
        if self.device.type == "cuda":
            # build choice: cuDNN picks the fastest conv algorithms for our fixed shapes (GPU runs
            # are not bitwise reproducible anyway: their backward kernels use atomics)
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        self.model = self.build().to(self.device)
        if ranks.distributed:
            self.model = self.distribute(self.model)
        if self.device.type == "cuda" and self.p.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = self.make_optimizer()
        if ranks.distributed:  # build choice: DDP's gradient mean as a step pre-hook (module doc)
            params = [q for g in self.optimizer.param_groups for q in g["params"]]
            self.optimizer.register_step_pre_hook(
                lambda *_: ranks.average_gradients(params))
        self.epoch_done, self.global_step = 0, 0
        self.train_seconds = 0.0  # training time of the checkpointed epochs, over all attempts
        self.compiled = False  # networks and pixel augmentation under torch.compile
        if self.p.compile:
            self._compile()

    def _compile(self) -> None:
        """torch.compile the networks and the fast path's pixel augmentation (CUDA only).

        A graph that fails to compile runs eagerly instead, with dynamo's warning in the log.
        """
        if self.device.type != "cuda":  # inductor's CPU path crashed the process in our tests
            warnings.warn(f"{self.name}: params.compile is used on CUDA only; running eagerly")
            return
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
        try:
            compile_networks(self.model)
        except Exception as exc:  # compile needs a working toolchain; training must not depend on it
            warnings.warn(f"{self.name}: torch.compile unavailable ({exc}); running eagerly")
            return
        self.compiled = True

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

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        amp = self.p.amp
        use_bf16 = amp == "bf16" or (amp == "auto" and self.device.type == "cuda")
        if amp not in ("auto", "bf16", "none"):
            raise HarnessError(f"params.amp = {amp!r}: use 'auto', 'bf16' or 'none'")
        if not use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and self.p.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "ckpt" / "last.pt"

    def save_checkpoint(self) -> None:
        """Atomically write `ckpt/last.pt` (model, optimiser, method state, progress); rank 0
        alone writes (every rank holds the same state)."""
        import io

        if not self.ranks.main:
            return

        state = {"epoch": self.epoch_done, "global_step": self.global_step,
                 "train_seconds": self.train_seconds,
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "extra": self.extra_state(), "manifest_sha256": self.data.manifest["sha256"],
                 "params": dataclasses.asdict(self.p), "world_size": self.ranks.world_size}
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.ckpt_path, buf.getvalue())

    def load_checkpoint(self) -> bool:
        """Restore `ckpt/last.pt` if present; refuses a checkpoint from another LT subset.

        A damaged checkpoint raises `CorruptRunFile` (the worker then trains from scratch)."""
        state = read_run_file(self.ckpt_path, map_location=self.device)
        if state is None:
            return False
        if state["manifest_sha256"] != self.data.manifest["sha256"]:
            raise HarnessError(f"checkpoint {self.ckpt_path} was trained on another LT subset "
                               "(manifest sha256 differs); rerun the cell with --mode force")
        saved = state.get("world_size", 1)  # absent in checkpoints before data parallelism
        if saved != self.ranks.world_size:
            raise HarnessError(f"checkpoint {self.ckpt_path} was trained on world_size {saved}, "
                               f"not {self.ranks.world_size} (per-device state and random "
                               f"streams differ); resume with world_size {saved} or --mode force")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_extra_state(state["extra"])
        self.epoch_done, self.global_step = state["epoch"], state["global_step"]
        self.train_seconds = state.get("train_seconds", 0.0)  # absent in older checkpoints
        return True

    # -- the loop ----------------------------------------------------------------------------
    def _batches(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        """(view 1, view 2, positions) per step of one epoch (this rank's rows)."""
        for v1, v2, idx, _ in self.rank_batches(epoch, gen):
            yield v1, v2, idx

    def rank_batches(self, epoch: int,
                     gen: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        """(view 1, view 2, this rank's positions, the global batch's positions) per step.

        Every rank draws the global batch's order and augmentations from the same generator and
        keeps its rows, so the ranks together see what one process at the global batch sees."""
        order = self.epoch_indices(epoch, gen)
        b, n_steps = self.p.batch_size, self.steps_per_epoch
        recipe = self.training_recipe()
        if self.p.data_path == "fast":
            for i in range(n_steps):
                rows = order[i * b:(i + 1) * b]
                start, stop = self.ranks.bounds(rows.shape[0])
                idx, share = rows[start:stop], (start, rows.shape[0])
                x = self.images[idx]
                yield (augment(x, recipe, gen, self.compiled, share),
                       augment(x, recipe, gen, self.compiled, share), idx, rows)
        elif self.p.data_path == "reference":
            for v1, v2, idx in reference_batches(
                    self.data.images, order.cpu()[:n_steps * b], recipe, b, self.p.num_workers,
                    derive_seed(self.cfg.seed, "ref", epoch), self.device):
                yield v1, v2, idx, idx
        else:
            raise HarnessError(f"params.data_path = {self.p.data_path!r}: use 'fast' or 'reference'")

    def take_step(self, view1: torch.Tensor, view2: torch.Tensor, index: torch.Tensor, epoch: int,
                  generator: torch.Generator,
                  global_index: torch.Tensor | None = None) -> torch.Tensor:
        """One optimiser step on a batch of two views: scheduled LR, step, per-step update.

        The training loop, `harness bench` and the method contract all step through here.
        On several ranks the views are this rank's rows and `global_index` the whole batch.
        """
        self.global_step += 1
        lr = self.lr_at(self.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        batch = Batch(self._prep(view1), self._prep(view2), index, epoch, self.global_step,
                      generator, global_index)
        loss = self.training_step(batch)
        self.after_optimizer_step(self.global_step)
        return loss

    def _log(self, record: dict[str, Any]) -> None:
        if not self.ranks.main:
            return
        with open(self.run_dir / "train_log.jsonl", "a") as fh:
            fh.write(dumps_json(record, indent=None) + "\n")

    def _check_finite(self, bad_step: torch.Tensor, bad_loss: torch.Tensor, epoch: int) -> None:
        step = int(self.ranks.max(bad_step).item())  # a rank's NaN stops every rank
        if step >= 0:
            raise TrainingFailure(
                f"non-finite loss {bad_loss.item()} at epoch {epoch}, step {step}; the last good "
                f"checkpoint (epoch {self.epoch_done}) is kept", epoch=epoch, step=step,
                loss=float(bad_loss.item()), last_good_epoch=self.epoch_done)

    def train(self, cfg: CellConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
        self.setup(cfg, run_dir)
        if resume:
            self.load_checkpoint()
        p, t0 = self.p, time.time()
        seconds_before = self.train_seconds
        main = self.progress is not None and self.ranks.main
        reporter = self.progress(p.epochs, self.epoch_done) if main else None
        try:
            last_loss = self._train_epochs(cfg, t0, seconds_before, reporter)
        finally:
            if reporter is not None:
                reporter.close()
        return {"epochs": p.epochs, "seconds": seconds_before + time.time() - t0,
                "attempt_seconds": time.time() - t0, "final_loss": last_loss,
                "steps": self.global_step}

    def _train_epochs(self, cfg: CellConfig, t0: float, seconds_before: float,
                      reporter: EpochProgress | None) -> float:
        """The epochs still to train, each logged, checkpointed and reported; returns the
        last epoch's mean loss (NaN when none was left)."""
        p, last_loss = self.p, float("nan")
        for epoch in range(self.epoch_done + 1, p.epochs + 1):
            gen_seed = derive_seed(cfg.seed, "epoch", epoch)
            torch.manual_seed(gen_seed)
            gen = torch.Generator(device=self.device).manual_seed(gen_seed)
            self.model.train()
            self.ranks.broadcast_buffers(self.model)  # rank 0's running statistics (DDP)
            self.on_epoch_start(epoch, gen)
            loss_sum = torch.zeros((), device=self.device)
            bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
            bad_loss = torch.zeros((), device=self.device)
            t_epoch, n_images = time.time(), 0
            try:
                for v1, v2, idx, rows in self.rank_batches(epoch, gen):
                    loss = self.take_step(v1, v2, idx, epoch, gen, rows).detach().float()
                    finite = torch.isfinite(loss)
                    first_bad = (~finite) & (bad_step < 0)
                    bad_step = torch.where(first_bad, self.global_step, bad_step)
                    bad_loss = torch.where(first_bad, loss, bad_loss)
                    loss_sum += torch.where(finite, loss, 0.0)
                    n_images += int(rows.shape[0])
                    if self.global_step % p.log_every == 0:
                        self._check_finite(bad_step, bad_loss, epoch)
                        self._log({"epoch": epoch, "step": self.global_step,
                                   "loss": self.ranks.mean(loss).item(),
                                   "lr": self.lr_at(self.global_step), "time": time.time() - t0})
            except torch.OutOfMemoryError:
                raise TrainingFailure(
                    f"out of memory at batch size {p.batch_size} (epoch {epoch}, step "
                    f"{self.global_step}); lower params.batch_size or use a larger GPU",
                    epoch=epoch, step=self.global_step, batch_size=p.batch_size) from None
            self._check_finite(bad_step, bad_loss, epoch)
            last_loss = self.ranks.mean(loss_sum).item() / max(self.steps_per_epoch, 1)
            rate = n_images / max(time.time() - t_epoch, 1e-9)
            self._log({"epoch": epoch, "step": self.global_step, "loss": last_loss,
                       "lr": self.lr_at(self.global_step), "time": time.time() - t0,
                       "epoch_end": True, "images_per_s": rate})
            self.epoch_done = epoch
            self.train_seconds = seconds_before + time.time() - t0
            if epoch % p.ckpt_every == 0 or epoch == p.epochs:
                self.save_checkpoint()
            if reporter is not None:
                reporter.update(epoch, last_loss, rate)
        return last_loss

    # -- evaluation --------------------------------------------------------------------------
    def eval_recipe(self, size: int) -> AugmentRecipe:
        mean, std = self.norm_stats()
        return AugmentRecipe(size=size, mean=tuple(mean), std=tuple(std))

    @torch.no_grad()
    def embed(self, cfg: CellConfig, run_dir: Path, split: str) -> dict[str, np.ndarray]:
        self.setup(cfg, run_dir)
        if self.epoch_done < self.p.epochs and not self.load_checkpoint():
            warnings.warn(f"{self.name}: no checkpoint in {run_dir}; embedding an untrained model")
        data = self.data if split == "lt_train" else load_cell_data(cfg, split)
        return self.embed_images(data.images)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, chunk: int = 512) -> dict[str, np.ndarray]:
        """Eval-mode features of uint8 images (no augmentation), per feature kind."""
        self.model.eval()
        recipe = self.eval_recipe(self.data.image_size)
        out: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(images), chunk):
            x = self._prep(eval_images(images[i:i + chunk].to(self.device), recipe))
            with self.autocast:
                feats = self.features(x)
            for kind, f in feats.items():
                out.setdefault(kind, []).append(f.float().cpu().numpy())
        return {kind: np.concatenate(parts) for kind, parts in out.items()}
