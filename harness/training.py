"""The shared training loop of every trainable method (`TrainableMethod`'s engine).

`TrainingLoop` owns what all self-supervised methods share: data on the training device,
deterministic per-epoch randomness, the LR schedule, mixed precision, data-parallel ranks,
checkpoints, resume, non-finite-loss and out-of-memory reporting. It calls the hooks that
`harness.method.TrainableMethod` declares (`build`, `training_step`, `features`, ...); a method
plugin subclasses `TrainableMethod`, never this class directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.config import CellConfig
from harness.data.augment import AugmentRecipe, augment, eval_images
from harness.data.base import LTData, load_lt
from harness.data.reference import reference_batches
from harness.distributed import join
from harness.errors import HarnessError, TrainingFailure
from harness.progress import EpochProgress
from harness.registry import dataset_class
from harness.seeding import derive_seed
from harness.settings import params_from_dict
from harness.store import atomic_write_bytes, dumps_json, read_run_file


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



class TrainingLoop:
    """The loop `TrainableMethod` runs (a mixin: it calls the method's hooks)."""

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
        self.device = join(ranks, resolve_device(cfg.device))
        # each rank holds its block of the images on its device (`Ranks.fetch` serves the
        # batches); rank 0 keeps the whole host copy for the evaluation, which it runs alone,
        # and every rank for the reference path (its loader reads any row on the host)
        block = ranks.shard(data.images)
        whole = ranks.main or self.p.data_path != "fast"
        self.data = data if whole else dataclasses.replace(data, images=block.clone())
        self.images = (block if ranks.main else self.data.images).to(self.device)
        n, b = len(self.data), self.p.batch_size
        if self.p.drop_last and n < b:
            raise HarnessError(f"batch_size {b} exceeds the {n} images of the LT subset with "
                               f"drop_last; lower params.batch_size")
        if ranks.distributed and b < ranks.world_size:
            raise HarnessError(f"world_size {ranks.world_size} needs batch_size >= world_size "
                               f"(got {b})")
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
                x = self.ranks.fetch(self.images, rows, len(self.data))
                yield (augment(x, recipe, gen, self.compiled, share),
                       augment(x, recipe, gen, self.compiled, share), idx, rows)
        elif self.p.data_path == "reference":
            for i, (v1, v2, idx) in enumerate(reference_batches(
                    self.data.images, order.cpu()[:n_steps * b], recipe, b, self.p.num_workers,
                    derive_seed(self.cfg.seed, "ref", epoch), self.device, self.ranks)):
                yield v1, v2, idx, order[i * b:(i + 1) * b]
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
