"""Debiased contrastive clustering and DCL (debiased.md section 6): losses, schedule, runs."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.config import CellConfig
from harness.data.augment import augment
from harness.errors import HarnessError
from harness.kmeans import kmeans
from harness.method import Batch
from harness.nn.losses import nt_xent
from harness.registry import list_methods, method_class
from harness.seeding import derive_seed

T = 0.5


def plugin():
    """The plugin module (loaded by file path), reached through the registry."""
    import sys

    return sys.modules[method_class("debiased_clustering").__module__]


def unit_views(b: int = 12, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(b, d, generator=g), dim=1),
            F.normalize(torch.randn(b, d, generator=g), dim=1))


def reference_dcl(out_1: torch.Tensor, out_2: torch.Tensor, tau_plus: float,
                  t: float) -> torch.Tensor:
    """Chuang et al.'s M = 1 loss, written from the formula of debiased.md 2.2 (independent)."""
    b = out_1.shape[0]
    out = torch.cat([out_1, out_2]).double()
    neg = torch.exp(out @ out.t() / t)
    keep = torch.ones(2 * b, 2 * b, dtype=torch.bool)
    for i in range(b):
        keep[i, i] = keep[i + b, i + b] = keep[i, i + b] = keep[i + b, i] = False
    neg = neg.masked_select(keep).view(2 * b, -1)
    pos = torch.exp((out[:b] * out[b:]).sum(-1) / t)
    pos = torch.cat([pos, pos])
    n = 2 * b - 2
    ng = ((-tau_plus * n * pos + neg.sum(-1)) / (1 - tau_plus)).clamp(min=n * math.e ** (-1 / t))
    return (-torch.log(pos / (pos + ng))).mean()


def loop_loss(z1: torch.Tensor, z2: torch.Tensor, tau: torch.Tensor, t: float,
              w: torch.Tensor | None = None) -> torch.Tensor:
    """Loop over the 2B anchors of the spec's formula (per-anchor tau+, optional w_ij)."""
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    n = n2 - 2
    losses = []
    for i in range(n2):
        p = (i + n2 // 2) % n2
        others = [j for j in range(n2) if j not in (i, p)]
        e = {j: math.exp(float(z[i] @ z[j]) / t) for j in range(n2)}
        pos_like = e[p]
        if w is not None:
            ws = sum(float(w[i, j]) for j in others)
            pos_like = (e[p] + sum(float(w[i, j]) * e[j] for j in others)) / (1 + ws)
        ng = (sum(e[j] for j in others) - float(tau[i]) * n * pos_like) / (1 - float(tau[i]))
        ng = max(ng, n * math.exp(-1 / t))
        losses.append(-math.log(e[p] / (e[p] + ng)))
    return torch.tensor(sum(losses) / n2, dtype=torch.float64)


# -- contrastive loss --------------------------------------------------------------------------
def test_tau_zero_is_nt_xent() -> None:
    z1, z2 = unit_views()
    torch.testing.assert_close(plugin().debiased_loss(z1, z2, 0.0, T), nt_xent(z1, z2, T))
    # unnormalised inputs are normalised inside, like nt_xent
    torch.testing.assert_close(plugin().debiased_loss(3 * z1, z2, 0.0, T), nt_xent(z1, z2, T))


def test_fixed_tau_matches_reference_dcl() -> None:
    for seed in range(3):
        z1, z2 = unit_views(seed=seed)
        got = plugin().debiased_loss(z1, z2, 0.1, T)
        torch.testing.assert_close(got.double(), reference_dcl(z1, z2, 0.1, T), rtol=1e-5,
                                   atol=1e-6)


def test_per_anchor_tau_vector() -> None:
    z1, z2 = unit_views(b=6)
    mod = plugin()
    for c in (0.0, 0.05, 0.3):
        torch.testing.assert_close(mod.debiased_loss(z1, z2, torch.full((12,), c), T),
                                   mod.debiased_loss(z1, z2, c, T))
    tau = torch.linspace(0.0, 0.5, 12)  # distinct per anchor: checks the [view 1; view 2] order
    torch.testing.assert_close(mod.debiased_loss(z1, z2, tau, T).double(),
                               loop_loss(z1, z2, tau, T), rtol=1e-5, atol=1e-6)


def test_clamp_holds_and_loss_finite_up_to_tau_max() -> None:
    mod = plugin()
    z1, z2 = unit_views(b=16, d=4)
    collapsed = torch.ones(16, 4)
    orthogonal = torch.eye(16)  # positives aligned, negatives orthogonal: over-corrected
    for a, b in ((z1, z2), (collapsed, collapsed), (z1, -z1), (orthogonal, orthogonal)):
        for tau in (0.0, 0.1, 0.3, 0.5):
            _, ng = mod.debiased_terms(a, b, tau, T)
            assert bool((ng >= (2 * 16 - 2) * math.exp(-1 / T) * (1 - 1e-6)).all())
            assert torch.isfinite(mod.debiased_loss(a, b, tau, T))
    _, ng = mod.debiased_terms(orthogonal, orthogonal, 0.3, T)  # the clamp is active here
    torch.testing.assert_close(ng, torch.full((32,), 30 * math.exp(-1 / T)))


def test_cluster_positives() -> None:
    mod = plugin()
    z1, z2 = unit_views(b=6)
    tau = torch.linspace(0.0, 0.4, 12)
    torch.testing.assert_close(mod.debiased_loss_cluster_pos(z1, z2, tau, T, torch.zeros(12, 12)),
                               mod.debiased_loss(z1, z2, tau, T))
    q = torch.softmax(torch.randn(12, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    w = q @ q.t()
    torch.testing.assert_close(mod.debiased_loss_cluster_pos(z1, z2, tau, T, w).double(),
                               loop_loss(z1, z2, tau, T, w), rtol=1e-5, atol=1e-6)


# -- DEC ----------------------------------------------------------------------------------------
def soft_assignments(n: int = 20, k: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(n, k, generator=g), dim=1)


def test_student_t_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x, mu = torch.randn(7, 5, generator=g), torch.randn(3, 5, generator=g)
    kernel = torch.tensor([[1.0 / (1.0 + float(((x[i] - mu[k]) ** 2).sum())) for k in range(3)]
                           for i in range(7)])
    torch.testing.assert_close(plugin().student_t_assign(x, mu),
                               kernel / kernel.sum(1, keepdim=True))


def test_dec_target_and_loss_properties() -> None:
    mod = plugin()
    q = soft_assignments()
    for beta in (0.0, 0.5, 1.0):
        p = mod.dec_target(q, beta)
        torch.testing.assert_close(p.sum(1), torch.ones(20))
        assert float(mod.dec_loss(q, beta)) >= 0
    def entropy(r: torch.Tensor) -> torch.Tensor:
        return -(r * r.log()).sum(1)

    assert bool((entropy(mod.dec_target(q, 0.0)) <= entropy(q) + 1e-6).all())
    # P carries no gradient: the gradient equals that of KL(P_const || Q)
    logits = torch.randn(20, 4, requires_grad=True)
    mod.dec_loss(torch.softmax(logits, 1)).backward()
    p_const = mod.dec_target(torch.softmax(logits, 1).detach(), 1.0)
    logits2 = logits.detach().clone().requires_grad_(True)
    q2 = torch.softmax(logits2, 1)
    ((p_const * (p_const.log() - q2.log())).sum(1).mean()).backward()
    torch.testing.assert_close(logits.grad, logits2.grad)


def test_dec_loss_minimal_for_confident_assignments_balanced_by_beta() -> None:
    mod = plugin()
    k = 4
    skewed = torch.tensor([0] * 28 + [1] * 6 + [2] * 4 + [3] * 2)
    for labels in (torch.arange(40) % k, skewed):  # confident (one-hot) q: P = Q, the minimum 0
        onehot = F.one_hot(labels, k).float()
        for beta in (0.0, 0.5, 1.0):
            assert float(mod.dec_loss(onehot, beta)) == pytest.approx(0.0, abs=1e-6)
    assert float(mod.dec_loss(soft_assignments(40, k))) > 1e-3
    # A sample torn between the big cluster 0 and the small cluster 3: beta moves its target
    # towards the small cluster (beta = 1: DEC's balance prior), beta = 0 keeps it even.
    q = F.one_hot(skewed, k).float() * 0.9 + 0.1 / k
    q = torch.cat([q, torch.tensor([[0.5, 0.0, 0.0, 0.5]])])
    share = [float(mod.dec_target(q, beta)[-1, 3]) for beta in (0.0, 0.5, 1.0)]
    assert share[0] == pytest.approx(0.5) and share[0] < share[1] < share[2]


def test_per_anchor_tau_soft_hard_clip() -> None:
    mod = plugin()
    prior = torch.tensor([0.7, 0.25, 0.05])
    q = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.0, 1.0], [0.2, 0.8, 0.0]])
    torch.testing.assert_close(mod.per_anchor_tau(q, prior, 1e-4, 0.5),
                               torch.tensor([0.5, 0.05, 0.34]))
    torch.testing.assert_close(mod.per_anchor_tau(q, prior, 0.1, 0.5, "hard"),
                               torch.tensor([0.5, 0.1, 0.25]))


def test_toy_minority_anchors_at_clamp_only_under_fixed_tau() -> None:
    """Three imbalanced clusters at 120 degrees; tau+ 0.1 over-corrects the minority anchors."""
    mod = plugin()
    g = torch.Generator().manual_seed(0)
    counts = (120, 60, 8)
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    centres = torch.stack([angles.cos(), angles.sin(), torch.zeros(3)], dim=1)
    z1 = F.normalize(centres[labels] + 0.05 * torch.randn(len(labels), 3, generator=g), dim=1)
    z2 = F.normalize(centres[labels] + 0.05 * torch.randn(len(labels), 3, generator=g), dim=1)
    n = 2 * len(labels) - 2
    clamp = n * math.exp(-1 / T)
    minority = torch.cat([labels, labels]) == 2
    _, ng_fixed = mod.debiased_terms(z1, z2, 0.1, T)
    torch.testing.assert_close(ng_fixed[minority], torch.full((int(minority.sum()),), clamp))
    # tau_mode cluster: the head's q, pi = histogram of its hard assignments [A7a]
    q = mod.student_t_assign(torch.cat([z1, z2]), centres)
    prior = torch.bincount(q.argmax(1), minlength=3).float() / len(q)
    confident = F.one_hot(q.argmax(1), 3).float() * 0.95 + 0.05 / 3
    for q_used, assign in ((q, "hard"), (confident, "soft")):
        tau = mod.per_anchor_tau(q_used, prior, 1e-4, 0.5, assign)
        _, ng_cluster = mod.debiased_terms(z1, z2, tau, T)
        assert bool((ng_cluster[minority] > clamp * 1.1).all()), assign
        assert bool((ng_cluster[~minority] > clamp).all())


# -- registry and params ------------------------------------------------------------------------
def test_registry_names() -> None:
    dcl, dc = method_class("dcl"), method_class("debiased_clustering")
    assert dcl is not dc and {"dcl", "debiased_clustering"} <= set(list_methods())
    assert "decoupled" not in dcl.description.lower() and "debiased" in dcl.description.lower()
    assert dcl.Params().tau_mode == "fixed" and dcl.Params().tau_plus == 0.1
    assert not dcl.Params().cluster_head and dcl.Params().cluster_weight == 0
    for name in list_methods():
        if "decoupled" in method_class(name).description.lower():
            assert name != "dcl"


def make_cfg(name: str, dataset: str = "synthetic", ir: int = 10, **overrides) -> CellConfig:
    cls = method_class(name)
    data = {"image_size": 8}  # both datasets are generated in memory: 8 px keeps CPU tests quick
    return CellConfig(method=name, dataset=dataset, ir=ir, seed=0, data=data, eval_seeds=[0],
                      params=cls.resolve_params(dataset, overrides, budget="test"), device="cpu")


@pytest.mark.parametrize("name,overrides", [
    ("debiased_clustering", {"tau_mode": "bogus"}), ("debiased_clustering", {"tau_max": 1.0}),
    ("dcl", {"tau_mode": "cluster"}), ("dcl", {"cluster_weight": 0.1}),
    ("debiased_clustering", {"warmup_tau_mode": "cluster"}),
    ("debiased_clustering", {"cluster_warmup_frac": 1.0})])
def test_bad_params(tmp_path, name: str, overrides: dict) -> None:
    with pytest.raises(HarnessError):
        method_class(name)().setup(make_cfg(name, **overrides), tmp_path)


# -- schedule ------------------------------------------------------------------------------------
def step_batch(m, epoch: int, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(32)
    recipe = m.augment_recipe()
    return Batch(augment(m.images[idx], recipe, gen), augment(m.images[idx], recipe, gen), idx,
                 epoch, 1, gen)


def expected_loss(m, model, batch: Batch) -> torch.Tensor:
    """The step's loss recomputed from the spec's formulas on a copy of the pre-step model."""
    mod, p = plugin(), m.p
    _, z1 = model(batch.view1)
    _, z2 = model(batch.view2)
    if not m.joint(batch.epoch):
        return mod.debiased_loss(z1, z2, 1.0 / m.num_clusters, p.temperature)
    q = mod.student_t_assign(F.normalize(torch.cat([z1, z2]), dim=1), model.centroids)
    tau = mod.per_anchor_tau(q, model.prior, p.tau_min, p.tau_max)
    return mod.debiased_loss(z1, z2, tau, p.temperature) + p.cluster_weight * mod.dec_loss(q)


def test_schedule_warmup_switch_and_prior_refresh(tmp_path) -> None:
    m = method_class("debiased_clustering")()
    cfg = make_cfg("debiased_clustering")
    m.setup(cfg, tmp_path)
    assert m.warmup_epochs == 1 and not m.joint(1) and m.joint(2)
    gen = torch.Generator().manual_seed(0)
    # warm-up: lambda = 0 and tau+ = 1/K; the centroids are untouched
    m.on_epoch_start(1, gen)
    model, batch = copy.deepcopy(m.model), step_batch(m, epoch=1)
    torch.testing.assert_close(m.training_step(batch), expected_loss(m, model, batch).detach())
    assert m.model.centroids.grad is None and not m.model.centroids.any()
    # switch: k-means on the full LT subset initialises mu and pi
    m.on_epoch_start(2, gen)
    assert m.model.training
    _, z = m.full_pass(m.images)
    res = kmeans(F.normalize(z, dim=1), 10, metric="euclidean", n_init=10,
                 seed=derive_seed(0, "debiased", "kmeans_init"))
    torch.testing.assert_close(m.model.centroids.detach(), res.centers)
    torch.testing.assert_close(m.model.prior, torch.bincount(torch.as_tensor(res.labels),
                                                             minlength=10).float() / len(z))
    # joint: per-anchor tau+ from this step's q, plus lambda * KL(P || Q)
    model, batch = copy.deepcopy(m.model), step_batch(m, epoch=2)
    torch.testing.assert_close(m.training_step(batch), expected_loss(m, model, batch).detach())
    assert m.model.centroids.grad is not None
    # every later epoch: pi <- histogram of the head's hard assignments after a full pass
    m.model.prior.fill_(0.5)
    m.on_epoch_start(3, gen)
    assert m.model.training
    q = m.assign_all(*m.full_pass(m.images))
    hist = torch.bincount(q.argmax(1), minlength=10).float() / len(q)
    torch.testing.assert_close(m.model.prior, hist)


def test_ema_prior_and_dcl_step(tmp_path) -> None:
    m = method_class("debiased_clustering")()
    m.setup(make_cfg("debiased_clustering", prior_estimate="ema"), tmp_path / "ema")
    m.on_epoch_start(2, torch.Generator().manual_seed(0))  # switch (k-means init)
    before, model, batch = m.model.prior.clone(), copy.deepcopy(m.model), step_batch(m, 2)
    m.training_step(batch)
    _, z1 = model(batch.view1)
    _, z2 = model(batch.view2)
    q = plugin().student_t_assign(F.normalize(torch.cat([z1, z2]), dim=1), model.centroids)
    torch.testing.assert_close(m.model.prior, 0.99 * before + 0.01 * q.detach().mean(0))
    # dcl: fixed tau+ 0.1 at every epoch, no cluster head in the model
    d = method_class("dcl")()
    d.setup(make_cfg("dcl"), tmp_path / "dcl")
    assert not hasattr(d.model, "centroids") and not d.joint(5)
    model, batch = copy.deepcopy(d.model), step_batch(d, epoch=4)
    _, z1 = model(batch.view1)
    _, z2 = model(batch.view2)
    torch.testing.assert_close(d.training_step(batch),
                               plugin().debiased_loss(z1, z2, 0.1, T).detach())


@pytest.mark.parametrize("overrides", [
    {"head": "mlp", "head_loss": "consistency", "pos_mode": "cluster", "tau_assign": "hard"},
    {"cluster_space": "h", "target_refresh": "epoch", "beta": 0.5, "optimizer": "sgd_cosine",
     "lr": 0.05, "warmup_epochs": 0}])
def test_variant_steps(tmp_path, overrides: dict) -> None:
    """Alternative build choices ([A2'], [A5], [A8], [A2] on h, [A12] SGD) train a joint step."""
    m = method_class("debiased_clustering")()
    m.setup(make_cfg("debiased_clustering", **overrides), tmp_path)
    m.on_epoch_start(2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(m.model.prior.sum(), torch.tensor(1.0))
    if overrides.get("target_refresh") == "epoch":
        assert m.epoch_target.shape == (len(m.data), 10)
        torch.testing.assert_close(m.epoch_target.sum(1), torch.ones(len(m.data)))
        assert m.model.centroids.shape[1] == m.model.backbone.out_dim
    before = [p.detach().clone() for p in m.model.parameters()]
    assert torch.isfinite(m.training_step(step_batch(m, epoch=2)))
    head = m.model.cluster_mlp if overrides.get("head") == "mlp" else m.model.centroids
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in
               (head.parameters() if isinstance(head, torch.nn.Module) else [head]))
    assert any(not torch.equal(a, b) for a, b in zip(before, m.model.parameters()))


# -- training runs --------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def train_with_interruptions(name: str, cfg: CellConfig, run_dir, stops: list[int]):
    """Kill the run at the start of each epoch in `stops`; resume in a fresh instance each time."""
    for stop in stops:
        m = method_class(name)()
        original = m.on_epoch_start

        def on_epoch_start(epoch: int, gen: torch.Generator, stop: int = stop,
                           original=original) -> None:
            if epoch == stop:
                raise Interrupt
            original(epoch, gen)

        m.on_epoch_start = on_epoch_start
        with pytest.raises(Interrupt):
            m.train(cfg, run_dir, resume=True)
    m = method_class(name)()
    m.train(cfg, run_dir, resume=True)
    return m


@pytest.mark.parametrize("name,dataset,ir,stops", [
    ("debiased_clustering", "synthetic", 10, [2, 3]),  # resume at the switch and after it
    ("dcl", "synthetic", 10, [3]),
    ("debiased_clustering", "digits", 100, [2]),
    ("dcl", "digits", 100, [2])])
def test_train_resume_and_evaluate(tmp_path, name: str, dataset: str, ir: int,
                                   stops: list[int]) -> None:
    from harness.evaluate import evaluate_cell

    # digits: 427 images at 8 px, 2 epochs (warm-up 1: the switch runs in epoch 2)
    extra = ({"epochs": 2, "cluster_warmup_frac": 0.5, "batch_size": 128}
             if dataset == "digits" else {})
    cfg = make_cfg(name, dataset, ir, **extra)
    for sub in ("full", "resumed"):
        (tmp_path / sub).mkdir()
    full = method_class(name)()
    summary = full.train(cfg, tmp_path / "full", resume=False)
    assert math.isfinite(summary["final_loss"])
    resumed = train_with_interruptions(name, cfg, tmp_path / "resumed", stops)
    feats_full = full.embed(cfg, tmp_path / "full", "lt_train")
    feats_resumed = resumed.embed(cfg, tmp_path / "resumed", "lt_train")
    assert list(feats_full) == ["backbone", "projector"]
    for kind in feats_full:
        np.testing.assert_array_equal(feats_full[kind], feats_resumed[kind])
    head = resumed.predict(cfg, tmp_path / "resumed", "lt_train")
    metrics = evaluate_cell(resumed, cfg, tmp_path / "resumed")
    kinds = {"backbone/kmeans/lt_train", "projector/kmeans/lt_train"}
    assert metrics["primary"] == "backbone/kmeans/lt_train"
    if name == "dcl":
        assert head is None and set(metrics["variants"]) == kinds
    else:
        np.testing.assert_array_equal(head, full.predict(cfg, tmp_path / "full", "lt_train"))
        assert head.shape == (len(resumed.data),) and head.max() < 10
        assert set(metrics["variants"]) == kinds | {"head/head/lt_train"}
        torch.testing.assert_close(full.model.prior, resumed.model.prior)
    for variant in metrics["variants"].values():
        assert 0.0 <= variant["metrics"]["acc"] <= 1.0
