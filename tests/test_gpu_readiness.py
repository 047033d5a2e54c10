"""The training step is fit for a GPU (issue 7), checked on CPU.

No host synchronisation: on CUDA a host sync stalls the CPU until the GPU has finished every
queued kernel, so the next step cannot be queued while this one runs. The ops that force one
(reading a value on the host: `.item()`, `bool()`; data-dependent output shapes: `nonzero`,
boolean-mask indexing, `unique`, `masked_select`) are the same on every device, so a dispatch mode
that records them on CPU finds every sync the step would make on a GPU. (Host-to-device copies of
Python data are the one kind it cannot see; the CUDA augmentation test guards those.)

Compilable: with `params.compile` the networks and the pixel augmentation run under torch.compile.
Dynamo's tracing is device-independent, so tracing them here (eager backend: no code generation)
shows that they compile to whole graphs, without graph breaks, and that steps do not recompile.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from harness.config import CellConfig
from harness.data.augment import AugmentRecipe, apply_augment, compiled_apply_augment, draw_augment
from harness.method import Batch, TrainableMethod, compile_networks
from harness.registry import list_methods, method_class

SYNCING_OPS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique",
               "aten._unique", "aten._unique2", "aten.unique_dim", "aten.unique_consecutive",
               "aten.repeat_interleave", "aten.equal", "aten.is_nonzero", "aten.allclose"}


class HostSyncRecorder(TorchDispatchMode):
    """Records every op that needs a value or a data-dependent shape on the host."""

    def __init__(self, host_tensors: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.host_tensors = host_tensors  # ids of tensors that stay on the host on CUDA too
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket._qualified_op_name.replace("::", ".")
        bool_index = name == "aten.index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
        on_host = bool(args) and id(args[0]) in self.host_tensors
        if (name in SYNCING_OPS or bool_index) and not on_host:
            self.syncs.append(str(func))
        return func(*args, **(kwargs or {}))


def trainable_methods() -> list[str]:
    return [name for name in list_methods() if issubclass(method_class(name), TrainableMethod)]


def _setup(name: str, tmp_path: Path) -> TrainableMethod:
    cls = method_class(name)
    params = cls.resolve_params("synthetic", {"batch_size": 16}, budget="test")
    cfg = CellConfig(method=name, dataset="synthetic", ir=10, seed=0, params=params, device="cpu",
                     run_dir=str(tmp_path))
    method = cls()
    method.setup(cfg, tmp_path)
    return method


def _step(method: TrainableMethod, batches: Iterator, epoch: int, gen: torch.Generator) -> None:
    v1, v2, idx = next(batches)
    method.global_step += 1
    method.training_step(Batch(method._prep(v1), method._prep(v2), idx, epoch, method.global_step, gen))
    method.after_optimizer_step(method.global_step)


def _optimizer_step_counters(method: TrainableMethod) -> frozenset[int]:
    """Adam's step counters: read by CPU Adam, kept on the device by the fused CUDA Adam we use."""
    return frozenset(id(s["step"]) for s in method.optimizer.state.values() if "step" in s)


@pytest.mark.parametrize("name", trainable_methods())
def test_training_steps_make_no_host_sync(name: str, tmp_path: Path) -> None:
    method = _setup(name, tmp_path)
    last_epoch = method.p.epochs  # ConMix: a ConMix-loss epoch; the warm-up is epoch 1
    for epoch in sorted({1, last_epoch}):
        gen = torch.Generator().manual_seed(epoch)
        method.model.train()
        method.on_epoch_start(epoch, gen)  # once per epoch (k-means E-step, masks): may sync
        batches = method._batches(epoch, gen)
        _step(method, batches, epoch, gen)  # creates the optimiser state
        with HostSyncRecorder(_optimizer_step_counters(method)) as recorder:
            for _ in range(2):
                _step(method, batches, epoch, gen)
        assert recorder.syncs == [], f"{name} epoch {epoch}: host syncs {sorted(set(recorder.syncs))}"


def test_recorder_sees_a_sync() -> None:
    x = torch.arange(4.0)
    with HostSyncRecorder() as recorder:
        x.sum().item()
        x[x > 1]
    assert recorder.syncs == ["aten._local_scalar_dense.default", "aten.index.Tensor"]


@pytest.fixture
def dynamo_counters() -> Iterator[Any]:
    """Dynamo's counters, from a clean compile cache."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


@pytest.mark.parametrize("name", trainable_methods())
def test_networks_compile_to_whole_graphs_without_recompiling(name: str, tmp_path: Path,
                                                              dynamo_counters: Any) -> None:
    method = _setup(name, tmp_path)
    compile_networks(method.model, backend="eager")
    for epoch in sorted({1, method.p.epochs}):
        gen = torch.Generator().manual_seed(epoch)
        method.model.train()
        method.on_epoch_start(epoch, gen)
        batches = method._batches(epoch, gen)
        _step(method, batches, epoch, gen)
        graphs = dynamo_counters["stats"]["unique_graphs"]
        for _ in range(2):  # later steps of the epoch reuse the graphs: guards hold across steps
            _step(method, batches, epoch, gen)
        assert dynamo_counters["stats"]["unique_graphs"] == graphs, f"{name} recompiles every step"
    assert graphs > 0
    assert dict(dynamo_counters["graph_break"]) == {}, f"{name}: graph breaks"


RECIPES = {
    "conmix": AugmentRecipe(size=32, scale=(0.1, 1.0), interpolation="bicubic"),
    "blur_solarize": AugmentRecipe(size=24, blur_p=0.5, blur_kernel=3, solarize_p=0.3),
    "partial_jitter": AugmentRecipe(size=32, jitter=(0.4, 0.0, 0.4, 0.0), normalize=False),
}


@pytest.mark.parametrize("recipe", RECIPES.values(), ids=RECIPES.keys())
def test_pixel_augmentation_compiles_to_one_graph_with_the_eager_result(recipe: AugmentRecipe) -> None:
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    draws = draw_augment(8, recipe, torch.Generator().manual_seed(0))
    explained = torch._dynamo.explain(apply_augment)(images, draws, recipe)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    compiled = compiled_apply_augment("aot_eager")(images, draws, recipe)  # traced, functionalised
    assert torch.allclose(compiled, apply_augment(images, draws, recipe), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["simclr", "conmix", "propos", "debiased_clustering"])
def test_compiled_cuda_steps_make_no_host_sync(name: str, tmp_path: Path) -> None:
    cls = method_class(name)
    params = cls.resolve_params("synthetic", {"batch_size": 16, "compile": True}, budget="test")
    cfg = CellConfig(method=name, dataset="synthetic", ir=10, seed=0, params=params, device="cuda",
                     run_dir=str(tmp_path))
    method = cls()
    method.setup(cfg, tmp_path)
    assert method.compiled_augment
    epoch = method.p.epochs
    gen = torch.Generator(device="cuda").manual_seed(0)
    method.model.train()
    method.on_epoch_start(epoch, gen)
    batches = method._batches(epoch, gen)
    _step(method, batches, epoch, gen)  # compiles
    torch.cuda.set_sync_debug_mode("error")
    try:
        _step(method, batches, epoch, gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
