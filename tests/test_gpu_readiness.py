"""The training step is fit for a GPU (issue 7), checked on CPU.

No host synchronisation: every method's steps are checked by the method contract
(`harness.contract.check_no_host_sync`, with `harness.hostsync.HostSyncRecorder`); here the
recorder itself is tested, and on CUDA the compiled steps run under CUDA's sync-debug mode.

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

from harness.contract import contract_method
from harness.data.augment import AugmentRecipe, apply_augment, compiled_apply_augment, draw_augment
from harness.hostsync import HostSyncRecorder
from harness.method import TrainableMethod, compile_networks
from harness.registry import list_methods, method_class


def trainable_methods() -> list[str]:
    return [name for name in list_methods() if issubclass(method_class(name), TrainableMethod)]


def test_recorder_sees_a_sync() -> None:
    x = torch.arange(4.0)
    with HostSyncRecorder() as recorder:
        x.sum().item()
        x[x > 1]
        x * torch.as_tensor(0.5)  # made from Python data: a host-to-device copy on CUDA
        torch.where(x > 1, x, 0.5) * 0.5  # Python scalars are kernel arguments: no copy
    assert recorder.syncs == ["aten._local_scalar_dense.default", "aten.index.Tensor",
                              "aten.lift_fresh.default"]


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
    method = contract_method(name, tmp_path, batch_size=16)
    compile_networks(method.model, backend="eager")
    for epoch in sorted({1, method.p.epochs}):
        gen = torch.Generator().manual_seed(epoch)
        method.model.train()
        method.on_epoch_start(epoch, gen)
        batches = method._batches(epoch, gen)
        method.take_step(*next(batches), epoch, gen)
        graphs = dynamo_counters["stats"]["unique_graphs"]
        for _ in range(2):  # later steps of the epoch reuse the graphs: guards hold across steps
            method.take_step(*next(batches), epoch, gen)
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
    method = contract_method(name, tmp_path, device="cuda", batch_size=16, compile=True)
    assert method.compiled
    epoch = method.p.epochs
    gen = torch.Generator(device="cuda").manual_seed(0)
    method.model.train()
    method.on_epoch_start(epoch, gen)
    batches = method._batches(epoch, gen)
    method.take_step(*next(batches), epoch, gen)  # compiles
    torch.cuda.set_sync_debug_mode("error")
    try:
        method.take_step(*next(batches), epoch, gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
