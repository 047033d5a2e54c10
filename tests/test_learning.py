"""SimCLR on real MNIST digits learns: trained features beat the same network untrained (NMI).

The check runs with the harness's default CPU thread count whatever OMP_NUM_THREADS says: CPU
results depend on the thread count, and a cell always runs with its own setting.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.config import DEFAULT_CPU_THREADS, CellConfig
from harness.grids import load_grid
from harness.kmeans import kmeans
from harness.metrics import evaluate_clustering
from harness.registry import method_class
from harness.threads import cpu_threads


def demo_simclr_cfg(seed: int, epochs: int) -> CellConfig:
    """The demo grid's SimCLR cell on mnist5k IR 10, with a reduced number of epochs."""
    spec = load_grid("demo").spec
    cls = method_class("simclr")
    return CellConfig(method="simclr", dataset="mnist5k", ir=10, seed=seed,
                      params=cls.resolve_params("mnist5k", {"epochs": epochs}, budget="cpu"),
                      data=spec["datasets"]["mnist5k"]["data"], device="cpu")


def nmi(features, labels) -> float:
    pred = kmeans(features, 10, metric="cosine", n_init=3, seed=0).labels
    return evaluate_clustering(labels, pred, 10)["nmi"]


@pytest.fixture(autouse=True)
def _cell_thread_count() -> Iterator[None]:
    with cpu_threads(DEFAULT_CPU_THREADS):
        yield


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trained_simclr_beats_untrained_network(seed: int, tmp_path: Path) -> None:
    cfg = demo_simclr_cfg(seed, epochs=6)
    cls = method_class("simclr")
    untrained = cls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = untrained.embed(cfg, tmp_path / "untrained", "lt_train")["projector"]
    trained = cls()
    trained.train(cfg, tmp_path / "trained", resume=False)
    after = trained.embed(cfg, tmp_path / "trained", "lt_train")["projector"]
    labels = trained.data.labels.numpy()
    nmi_before, nmi_after = nmi(before, labels), nmi(after, labels)
    assert nmi_after > nmi_before + 0.02, (nmi_before, nmi_after)
