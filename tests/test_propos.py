"""BYOL and ProPos (methods/propos_hadis.md): PSA, PSL, EMA target, schedules, gating, E-step,
pseudo-label resampling, configs, and training/resume on synthetic and digits."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from byol_helpers import check_train_and_resume, check_trains_on_digits, make_batch, ready

from harness.kmeans import kmeans
from harness.nn.byol import ema_momentum
from harness.registry import method_class

ProPos, BYOL = method_class("propos"), method_class("byol")
plugin = sys.modules[ProPos.__module__]
psa_loss, psl_loss, propos_lr = plugin.psa_loss, plugin.psl_loss, plugin.propos_lr


def reference_psl(online: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, k: int,
                  tau: float, present_labels: torch.Tensor | None = None) -> float:
    """Spec 2.2 written out: absent rows removed, e^-10 per absent column, mean over present.
    Prototypes come from all rows; `present_labels` (a device's own) decide what is present."""
    q, t = F.normalize(online.detach().double(), dim=1), F.normalize(target.double(), dim=1)
    local = labels if present_labels is None else present_labels
    present = [c for c in range(k) if (local == c).any()]
    mu = {c: F.normalize(q[labels == c].mean(0), dim=0) for c in present}
    mu_t = {c: F.normalize(t[labels == c].mean(0), dim=0) for c in present}
    total = 0.0
    for c in present:
        pos = math.exp(float(mu[c] @ mu_t[c]) / tau)
        neg = sum(math.exp(float(mu[c] @ mu[j]) / tau) for j in present if j != c)
        neg += (k - len(present)) * math.exp(-10.0)
        total -= math.log(pos / (pos + neg))
    return total / len(present)


# -- losses ------------------------------------------------------------------------------------
def test_psa_is_two_minus_two_cos_on_normalised_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    expected = (2 - 2 * F.cosine_similarity(p, t)).mean()
    torch.testing.assert_close(psa_loss(p, t), expected)
    torch.testing.assert_close(psa_loss(5 * p, 0.1 * t), expected)  # scale-free
    assert psa_loss(t, 3 * t).abs().item() < 1e-6


def test_psl_closed_form_orthogonal_prototypes() -> None:
    k, tau = 6, 0.5
    basis = torch.eye(8)[:k]
    labels = torch.arange(k).repeat(3)
    z = basis[labels] * torch.rand(len(labels), 1).add(0.5)  # scaled copies of e_k
    expected = math.log(1 + (k - 1) * math.exp(-1 / tau))
    assert abs(psl_loss(z, z.clone(), labels, k, tau).item() - expected) < 1e-6


def test_psl_matches_equations_with_absent_clusters() -> None:
    g = torch.Generator().manual_seed(1)
    q, t = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    labels = torch.tensor([0, 2, 2, 5, 0, 5, 5, 2, 0, 7] * 2)  # clusters 1, 3, 4, 6, 8, 9 absent
    ours = psl_loss(q, t, labels, 10, 0.5)
    assert abs(ours.item() - reference_psl(q, t, labels, 10, 0.5)) < 1e-5
    q.requires_grad_(True)
    psl_loss(q, t, labels, 10, 0.5).backward()
    assert torch.isfinite(q.grad).all()
    full = torch.arange(20) % 10
    assert abs(psl_loss(q, t, full, 10, 0.5).item() - reference_psl(q, t, full, 10, 0.5)) < 1e-5


def test_psl_every_sample_its_own_prototype() -> None:
    """B = K, labels = arange: prototypes are the normalised samples, so PSL is a cross-entropy
    with positive cos(q_i, t_i) and online-online negatives cos(q_i, q_j)."""
    g = torch.Generator().manual_seed(2)
    q, t, tau = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g), 0.5
    qn, tn = F.normalize(q, dim=1), F.normalize(t, dim=1)
    logits = qn @ qn.T / tau
    logits.diagonal().copy_((qn * tn).sum(1) / tau)
    expected = F.cross_entropy(logits, torch.arange(12))
    torch.testing.assert_close(psl_loss(q, t, torch.arange(12), 12, tau), expected)


# -- schedules ---------------------------------------------------------------------------------
def test_ema_cosine_schedule_endpoints() -> None:
    total = 1000 * 97
    assert ema_momentum(0, total, 0.996, True) == pytest.approx(0.996, abs=1e-12)
    assert ema_momentum(total, total, 0.996, True) == pytest.approx(1.0, abs=1e-12)
    ramp = [ema_momentum(s, total, 0.996, True) for s in range(0, total + 1, 997)]
    assert all(a <= b for a, b in zip(ramp, ramp[1:]))
    assert ema_momentum(total // 2, total, 0.996, False) == 0.996


def test_lr_schedule_warmup_and_cosine_with_denominator_e() -> None:
    eta = 0.05
    assert propos_lr(0, eta, 50, 1000) == 0.0
    assert propos_lr(25, eta, 50, 1000) == pytest.approx(eta / 2)
    assert propos_lr(50, eta, 50, 1000) == pytest.approx(eta)
    assert propos_lr(1000, eta, 50, 1000) / eta == pytest.approx(0.00616, abs=1e-5)


def test_lr_at_scales_with_batch_and_predictor_is_10x(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, batch_size=64, epochs=100, warmup_epochs=10)
    spe = m.steps_per_epoch
    assert m.lr_at(10 * spe) == pytest.approx(0.05 * 64 / 256)
    groups = m.optimizer.param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in m.model.predictor.parameters()}
    assert all(g["weight_decay"] == 5e-4 and g["momentum"] == 0.9 for g in groups)


# -- networks, EMA, noise ---------------------------------------------------------------------
def test_predictor_init_and_target_starts_as_copy(tmp_path: Path) -> None:
    m = ready("propos", tmp_path)
    for lin in [mod for mod in m.model.predictor if isinstance(mod, torch.nn.Linear)]:
        assert lin.weight.std().item() == pytest.approx(0.01, rel=0.2) and not lin.bias.any()
    for a, b in zip(m.model.online_parameters(), m.model.target_parameters()):
        assert torch.equal(a, b) and not b.requires_grad


def test_sigma_zero_lambda_zero_is_symmetric_byol(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, latent_std=0.0, cluster_loss_weight=0.0)
    batch = make_batch(m, epoch=3)
    net = m.model

    def one_way(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        p = net.predictor(net.online_projector(net.online_backbone(a)))
        with torch.no_grad():
            t = net.target_projector(net.target_backbone(b))
        return (2 - 2 * F.cosine_similarity(p, t)).mean()

    expected = 0.5 * (one_way(batch.view1, batch.view2) + one_way(batch.view2, batch.view1))
    terms = m.loss_terms(batch)
    assert list(terms) == ["psa"]
    torch.testing.assert_close(terms["psa"], expected, rtol=1e-5, atol=1e-6)


def test_target_ignores_sigma_and_gets_no_gradient_and_ema_update(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, latent_std=0.5)
    net = m.model
    quiet = make_batch(m, epoch=1)  # warm-up: sigma off
    noisy = make_batch(m, epoch=3)
    d_quiet, d_noisy = m.directions(quiet), m.directions(noisy)
    for a, b in zip(d_quiet, d_noisy):
        torch.testing.assert_close(a.target, b.target)
        torch.testing.assert_close(a.online, b.online)
        assert not torch.allclose(a.prediction, b.prediction)
        assert not a.target.requires_grad
    bn = next(mod for mod in net.online_backbone.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    bn.running_mean.fill_(100.0)  # a buffer the EMA must not carry over
    old_target = [p.detach().clone() for p in net.target_parameters()]
    m.global_step = 1
    m.training_step(noisy)
    m.after_optimizer_step(1)
    mom = ema_momentum(1, m.p.epochs * m.steps_per_epoch, m.p.momentum_base, m.p.momentum_increase)
    for old, theta, xi in zip(old_target, net.online_parameters(), net.target_parameters()):
        assert xi.grad is None
        torch.testing.assert_close(xi, mom * old + (1 - mom) * theta, rtol=1e-6, atol=1e-7)
    for target_bn in net.target_backbone.modules():
        if isinstance(target_bn, torch.nn.BatchNorm2d):
            assert target_bn.running_mean.abs().max() < 10  # its own statistics


def test_latent_noise_has_sigma_std_and_only_after_warmup(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, latent_std=0.1)
    seen: list[torch.Tensor] = []
    m.model.predictor.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    z = torch.zeros(4096, m.p.feat_dim)
    m.predict_noisy(z, m.latent_sigma(2), torch.Generator().manual_seed(0))
    noise = seen[-1]
    assert noise.std().item() == pytest.approx(0.1, rel=0.02) and abs(noise.mean().item()) < 3e-3
    m.predict_noisy(z, m.latent_sigma(2), torch.Generator().manual_seed(1))
    assert not torch.equal(seen[-1], noise)  # fresh draws from the step's generator
    m.predict_noisy(z, m.latent_sigma(1), torch.Generator().manual_seed(0))
    assert torch.equal(seen[-1], z)  # warm-up epoch: sigma = 0


def test_gating_of_psl_and_noise() -> None:
    m = ProPos()
    m.p = ProPos.Params()
    assert (m.psl_weight(50), m.latent_sigma(50)) == (0.0, 0.0)
    assert (m.psl_weight(51), m.latent_sigma(51)) == (0.1, 0.001)
    assert m.psl_weight(1) == 0.0 and m.latent_sigma(1) == 0.0


def test_psl_term_present_only_after_warmup(tmp_path: Path) -> None:
    m = ready("propos", tmp_path)  # warm-up 1 epoch in the test budget
    m.on_epoch_start(1, torch.Generator())
    assert list(m.loss_terms(make_batch(m, epoch=1))) == ["psa"]
    terms = m.loss_terms(make_batch(m, epoch=2))
    assert list(terms) == ["psa", "psl"] and terms["psl"].item() > 0


def test_shuffling_bn_is_a_no_op_on_one_gpu(tmp_path: Path) -> None:
    m = ready("propos", tmp_path)
    batch = make_batch(m, epoch=1)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m.target(batch.view1)[perm], m.target(batch.view1[perm]))


# -- E-step and resampling ------------------------------------------------------------------
def test_e_step_is_seeded_cosine_kmeans_on_target_projections(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, reassign=2)
    feats = m.target_projections()
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(len(feats)))
    assert m.model.training  # train mode restored
    embedded = m.embed_images(m.data.images)["projector"]
    torch.testing.assert_close(feats, torch.from_numpy(embedded))
    expected = kmeans(feats, 10, metric="cosine", n_init=2, seed=0).labels
    assert m.e_step().tolist() == expected.tolist()
    calls = []
    m.e_step = lambda: calls.append(1) or m.pseudo_labels
    for epoch in (1, 2, 3, 4, 5):
        m.on_epoch_start(epoch, torch.Generator())
    assert len(calls) == 3  # before epochs 1, 3, 5 (= after epochs 2 and 4)


def test_byol_never_clusters(tmp_path: Path) -> None:
    m = ready("byol", tmp_path)
    assert not hasattr(m, "pseudo_labels") and m.p.latent_std == 0.0
    assert m.p.momentum_increase and list(m.loss_terms(make_batch(m, epoch=3))) == ["psa"]


def test_data_resample_weights_draws_and_reproducibility(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, data_resample=True)
    n = len(m.data)
    m.pseudo_labels = torch.cat([torch.zeros(n - 30, dtype=torch.long), torch.arange(30) % 3 + 1])
    w = m.resample_weights()
    assert w[0].item() == pytest.approx(n / (n - 30)) and w[-1].item() == pytest.approx(n / 10)
    draws = m.epoch_indices(1, torch.Generator().manual_seed(5))
    assert draws.shape == (m.steps_per_epoch * m.p.batch_size,)
    assert torch.equal(draws, m.epoch_indices(1, torch.Generator().manual_seed(5)))
    m.steps_per_epoch = 500  # many draws: every pseudo-cluster gets about 1/4 of them
    shares = torch.bincount(m.pseudo_labels[m.epoch_indices(1, torch.Generator().manual_seed(5))])
    assert ((shares / shares.sum() - 0.25).abs() < 0.02).all()


def test_configs() -> None:
    p = ProPos.resolve_params("cifar10")
    expected = {"batch_size": 512, "lr": 0.05, "weight_decay": 5e-4, "momentum": 0.9,
                "epochs": 1000, "warmup_epochs": 50, "final_lr": 0.0, "feat_dim": 256, "hidden_size": 4096,
                "temperature": 0.5, "cluster_loss_weight": 0.1, "latent_std": 0.001,
                "momentum_base": 0.996, "momentum_increase": False, "reassign": 1,
                "predictor_lr_scale": 10.0, "drop_last": True, "symmetric": True, "stem": "cifar",
                "arch": "resnet18", "data_resample": False, "gaussian_blur": False,
                "bn_group_size": 128, "kmeans_n_init": 40, "shuffling_bn": True}
    assert {key: p[key] for key in expected} == expected and "v2" not in p  # v2 off: left out
    c20 = ProPos.resolve_params("cifar20")
    assert c20["momentum_increase"] and c20["data_resample"] and c20["v2"]
    assert (c20["batch_size"], c20["bn_group_size"], c20["kmeans_n_init"]) == (256, 64, 40)
    assert "v2_split" not in c20  # upstream's split, the default: left out of the config
    stl = ProPos.resolve_params("stl10")
    assert stl["stem"] == "cifar" and stl["batch_size"] == 256 and "bn_group_size" not in stl
    b = BYOL.resolve_params("cifar20")
    assert b["momentum_increase"] and "cluster_loss_weight" not in b and not b["latent_std"]


# -- upstream recipes per method and dataset ---------------------------------------------------
# method, dataset: batch of all devices, effective LR, images per BatchNorm group (= per device),
# v2, k-means restarts (None: no k-means), upstream source (None: the spec has no upstream config;
# harness setting). Sources: methods/propos_hadis.md 4.1 and 7.3.
RESOLVED = [
    ("byol", "cifar10", 512, 0.1, 128, False, None, "Hzzone/ProPos config/cifar10_r18_byol.yml"),
    ("byol", "cifar20", 256, 0.05, 64, False, None, "Hzzone/ProPos config/cifar20_r18_byol.yml"),
    ("byol", "stl10", 256, 0.05, 256, False, None, None),
    ("propos", "cifar10", 512, 0.1, 128, False, 40, "Hzzone/ProPos config/cifar10_r18_propos.yml"),
    ("propos", "cifar20", 256, 0.05, 64, True, 40, "Hzzone/ProPos config/cifar20_r18_propos.yml"),
    ("propos", "stl10", 256, 0.05, 256, False, 10, None),
    ("hadis", "cifar10", 256, 0.05, 256, False, 10, "Regan-Zhang/HaDis config/cifar10_r18_propos.yml"),
    ("hadis", "cifar20", 256, 0.05, 256, False, 10, "Regan-Zhang/HaDis config/cifar20_r18_propos.yml"),
    ("hadis", "stl10", 128, 0.025, 128, False, 10, "Regan-Zhang/HaDis config/STL-10_r18_propos.yml"),
]


@pytest.mark.parametrize("method,dataset,batch,lr,group,v2,restarts,source", RESOLVED,
                         ids=[f"{r[0]}-{r[1]}" for r in RESOLVED])
def test_resolved_batch_and_lr_equal_upstream(method: str, dataset: str, batch: int, lr: float,
                                              group: int, v2: bool, restarts: int | None,
                                              source: str | None) -> None:
    from harness.recipe import configured_method

    m = configured_method(method, dataset)
    recipe = m.recipe()
    assert (recipe["effective_batch"], recipe["batch_per_device"], recipe["v2"]) == (batch, group, v2)
    assert recipe["world_size"] == batch // group and recipe["effective_lr"] == pytest.approx(lr)
    assert recipe.get("kmeans_restarts") == restarts
    m.steps_per_epoch = 7
    assert m.lr_at(50 * 7) == pytest.approx(lr)  # the schedule peaks at the effective LR
    upstream = type(m).upstream.get(dataset)
    if source is None:
        assert upstream is None
        return
    repo, path = source.split(" ")
    assert upstream["source"].startswith(repo) and upstream["source"].endswith(path)
    for key in ("effective_batch", "batch_per_device", "world_size", "v2"):
        assert upstream[key] == recipe[key], key
    assert upstream["effective_lr"] == pytest.approx(lr)
    assert upstream.get("kmeans_restarts") == restarts
    assert type(m).reference_card_for(dataset)["effective_batch"] == batch


def test_describe_method_table_names_upstream_and_deviations(capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    assert main(["describe-method", "propos", "--dataset", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "Hzzone/ProPos @ cc35d8c config/cifar10_r18_propos.yml" in out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
            for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["batch (all devices)"] == ["512", "512", ""]
    assert rows["effective LR (peak)"] == ["0.1", "0.1", ""]
    assert rows["batch per device (BatchNorm statistics over)"] == ["128", "128", ""]
    assert rows["devices"] == ["4", "4", ""]
    assert "4 devices emulated on one GPU" in out
    assert rows["optimiser"][0] == "SGD, momentum 0.9, weight decay 0.0005"
    assert rows["epochs"] == ["1000", "1000", ""]
    assert rows["augmentation: random resized crop"][0].startswith("32 px, scale (0.08, 1)")
    assert rows["bf16 autocast on CUDA"] == ["yes", "no", "DIFFERS"]  # the one deviation
    assert "1 setting(s) differ from upstream" in out
    assert main(["describe-method", "propos", "--dataset", "stl10"]) == 0
    assert "no upstream recipe for this dataset" in capsys.readouterr().out


def test_reference_cards_per_dataset() -> None:
    hadis = method_class("hadis")
    assert ProPos.reference_card_for("cifar20") == {"world_size": 4, "batch_per_device": 64,
                                                    "effective_batch": 256, "gather": True,
                                                    "amp": False}
    assert ProPos.reference_card_for("stl10") == ProPos.reference_card  # no upstream config
    assert hadis.reference_card_for("stl10")["effective_batch"] == 128
    assert BYOL.reference_card_for("cifar20")["batch_per_device"] == 64


# -- emulated devices: BatchNorm groups, shuffled target, per-device PSL ---------------------------
def byol_net(bn_group_size: int | None, batch: int) -> torch.nn.Module:
    """The tiny BYOL network in float64 (same initial weights whatever the grouping)."""
    m = BYOL()
    m.p = BYOL.Params(**{**plugin.TINY, "batch_size": batch, "bn_group_size": bn_group_size})
    torch.manual_seed(0)
    return m.build().double().train()


def test_bn_group_size_128_on_a_batch_of_512_is_four_devices() -> None:
    """Every BatchNorm of online, predictor and target: outputs and running statistics equal to
    four devices' plain-BatchNorm copies of the network on 128 images each (float64, 1e-6)."""
    from harness.nn.groupbn import GroupBatchNorm

    net = byol_net(128, 512)
    norms = [mod for mod in net.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(mod, GroupBatchNorm) and mod.groups == 4 for mod in norms)
    devices = [byol_net(None, 512) for _ in range(4)]
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        for rank in devices[1:]:  # DDP broadcasts rank 0's buffers before every forward
            rank.load_state_dict(devices[0].state_dict())
        x = torch.randn(512, 3, 8, 8, generator=g, dtype=torch.float64)

        def run(n: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
            z = n.online_projector(n.online_backbone(images))
            return [z, n.predictor(z), n.target_projector(n.target_backbone(images))]

        ours = run(net, x)
        theirs = [run(rank, chunk) for rank, chunk in zip(devices, x.chunk(4))]
        for i, out in enumerate(ours):
            torch.testing.assert_close(out, torch.cat([t[i] for t in theirs]), rtol=0, atol=1e-6)
    for (name, a), b in zip(net.state_dict().items(), devices[0].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert not torch.allclose(net.online_backbone.bn1.running_mean,
                              devices[1].online_backbone.bn1.running_mean)


def test_target_batch_is_shuffled_across_device_groups(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, bn_group_size=8)
    x = make_batch(m, epoch=1).view1
    t = m.target(x, torch.Generator().manual_seed(5))
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(5))
    net = m.model
    with torch.no_grad():
        expected = F.normalize(net.target_projector(net.target_backbone(x[perm])), dim=1)
    torch.testing.assert_close(t, expected[perm.argsort()])
    with torch.no_grad():  # not the unshuffled groups
        plain = F.normalize(net.target_projector(net.target_backbone(x)), dim=1)
    assert not torch.allclose(t, plain, atol=1e-4)


def test_psl_per_device_as_ddp_with_gather_layer(tmp_path: Path) -> None:
    """Per device: prototypes over all rows, absent clusters from its own labels, gradient into
    its own rows only; the mean over devices. With every cluster on every device that is the
    whole-batch PSL with a gradient divided by the number of devices."""
    m = ready("propos", tmp_path, bn_group_size=8)  # 4 devices of 8 rows
    g = torch.Generator().manual_seed(3)
    q = torch.randn(32, 16, generator=g, dtype=torch.float64, requires_grad=True)
    t = F.normalize(torch.randn(32, 16, generator=g, dtype=torch.float64), dim=1)
    owner = m.row_devices(32, q.device)
    direction = plugin.Direction(q, q, t, owner)
    everywhere = torch.arange(32) % 10 % 4  # clusters 0-3 on every device
    loss = m.device_psl(direction, everywhere)
    (grad,) = torch.autograd.grad(loss, q)
    whole = psl_loss(q, t, everywhere, 10, 0.5)
    torch.testing.assert_close(loss, whole)
    torch.testing.assert_close(grad, torch.autograd.grad(whole, q)[0] / 4)

    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1] + [3] * 8 + [4, 5] * 4 + [0, 6] * 4)
    loss = m.device_psl(direction, labels)
    per_device = [reference_psl(q, t, labels, 10, 0.5, labels[8 * i:8 * i + 8]) for i in range(4)]
    assert loss.item() == pytest.approx(sum(per_device) / 4, abs=1e-6)  # psl_loss: float32
    (grad,) = torch.autograd.grad(loss, q)
    for i in range(4):  # device i's rows get d(L_i)/dq_i / 4
        live = torch.cat([q[8 * j:8 * j + 8] if j == i else q[8 * j:8 * j + 8].detach()
                          for j in range(4)])
        l_i = psl_loss(live, t, labels, 10, 0.5, present_labels=labels[8 * i:8 * i + 8])
        (g_i,) = torch.autograd.grad(l_i, q)
        torch.testing.assert_close(grad[8 * i:8 * i + 8], g_i[8 * i:8 * i + 8] / 4)


# -- v2 ---------------------------------------------------------------------------------------
def test_v2_forward_and_ema_order_as_upstream(tmp_path: Path) -> None:
    """forward_v2: the EMA update first (with the online weights before the step), then one
    online forward of [view 1; view 2] and one target forward of [view 2; view 1]; no EMA
    update after the optimiser step."""
    m = ready("propos", tmp_path, v2=True)
    net, batch = m.model, make_batch(m, epoch=1)
    seen: dict[str, list[torch.Tensor]] = {"online": [], "target": [], "xi": []}
    net.online_backbone.register_forward_pre_hook(lambda mod, a: seen["online"].append(a[0]))
    net.target_backbone.register_forward_pre_hook(lambda mod, a: seen["target"].append(a[0]) or
                                                  seen["xi"].append([p.detach().clone() for p in
                                                                     net.target_parameters()]))
    with torch.no_grad():  # a target that differs from the online network
        for p in net.target_parameters():
            p.add_(0.01)
    xi_old = [p.detach().clone() for p in net.target_parameters()]
    theta_old = [p.detach().clone() for p in net.online_parameters()]
    m.global_step = batch.step = 1
    m.training_step(batch)
    assert [x.shape[0] for x in seen["online"]] == [64] and len(seen["target"]) == 1
    torch.testing.assert_close(seen["online"][0], torch.cat([batch.view1, batch.view2]))
    torch.testing.assert_close(seen["target"][0], torch.cat([batch.view2, batch.view1]))
    mom = ema_momentum(1, m.p.epochs * m.steps_per_epoch, m.p.momentum_base, m.p.momentum_increase)
    for xi, old, theta in zip(seen["xi"][0], xi_old, theta_old):
        torch.testing.assert_close(xi, mom * old + (1 - mom) * theta, rtol=1e-6, atol=1e-7)
    assert not all(torch.equal(a, b) for a, b in zip(net.online_parameters(), theta_old))
    after_step = [p.detach().clone() for p in net.target_parameters()]
    m.after_optimizer_step(1)
    assert all(torch.equal(a, b) for a, b in zip(net.target_parameters(), after_step))


def test_v2_losses_equal_upstream_forward_v2_on_one_device(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, v2=True, latent_std=0.0)
    m.on_epoch_start(1, torch.Generator())
    batch, net = make_batch(m, epoch=2), m.model  # after warm-up: PSL on
    terms = m.loss_terms(batch)
    q = net.online_projector(net.online_backbone(torch.cat([batch.view1, batch.view2])))
    with torch.no_grad():
        k = F.normalize(net.target_projector(net.target_backbone(
            torch.cat([batch.view2, batch.view1]))), dim=1)
    psa = (2 - 2 * F.cosine_similarity(net.predictor(q), k)).mean()
    labels = m.pseudo_labels[batch.index]
    psl = sum(reference_psl(a, b, labels, 10, 0.5) for a, b in zip(q.chunk(2), k.chunk(2))) / 2
    torch.testing.assert_close(terms["psa"], psa, rtol=1e-5, atol=1e-6)
    assert terms["psl"].item() == pytest.approx(0.1 * psl, rel=1e-5)


def test_v2_with_devices_groups_both_views_of_each_device(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, v2=True, bn_group_size=16)  # 2 devices of 16 images
    batch = make_batch(m, epoch=1)
    seen: list[torch.Tensor] = []
    m.model.online_backbone.register_forward_pre_hook(lambda mod, a: seen.append(a[0]))
    dirs = m.directions(batch)
    v1, v2 = batch.view1.chunk(2), batch.view2.chunk(2)
    torch.testing.assert_close(seen[0], torch.cat([v1[0], v2[0], v1[1], v2[1]]))
    assert [d.owner.tolist() for d in dirs] == [[0] * 32, [1] * 32]  # upstream's chunk(2)
    rows = torch.arange(64)
    device_split = [h.tolist() for h in m.split_v2(rows)]
    assert device_split == [list(range(32)), list(range(32, 64))]
    m.p = dataclasses.replace(m.p, v2_split="view")
    view_split = [h.tolist() for h in m.split_v2(rows)]
    assert view_split == [[*range(16), *range(32, 48)], [*range(16, 32), *range(48, 64)]]
    m.p = dataclasses.replace(m.p, v2_split="device", bn_group_size=None)  # one device: the same
    assert [h.tolist() for h in m.split_v2(rows)] == [h.tolist() for h in rows.chunk(2)]


@pytest.mark.parametrize("overrides,needle", [
    ({"bn_group_size": 5}, "divide batch_size 32"),
    ({"bn_group_size": 8, "drop_last": False}, "drop_last"),
    ({"v2": True, "symmetric": False}, "symmetric"),
    ({"v2": True, "v2_split": "rows"}, "v2_split"),
])
def test_settings_the_devices_cannot_run_are_refused(tmp_path: Path, overrides: dict,
                                                     needle: str) -> None:
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match=needle):
        ready("propos", tmp_path, **overrides)


def test_run_card_counts_the_emulated_devices(tmp_path: Path) -> None:
    card = ready("propos", tmp_path, bn_group_size=8).run_card()
    assert {k: card[k] for k in ("world_size", "batch_per_device", "effective_batch", "gather",
                                 "emulated_devices")} == {"world_size": 4, "batch_per_device": 8,
                                                          "effective_batch": 32, "gather": True,
                                                          "emulated_devices": True}
    plain = ready("byol", tmp_path / "b").run_card()
    assert (plain["world_size"], plain["gather"], plain["emulated_devices"]) == (1, False, False)


def test_emulated_device_steps_need_no_host_sync_and_trace_whole(tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    from harness.hostsync import HostSyncRecorder
    from harness.method import compile_networks

    m = ready("propos", tmp_path, bn_group_size=8, v2=True)
    gen = torch.Generator().manual_seed(0)
    m.model.train()
    m.on_epoch_start(2, gen)
    batches = m._batches(2, gen)
    m.take_step(*next(batches), 2, gen)
    with HostSyncRecorder() as recorder:
        m.take_step(*next(batches), 2, gen)
    assert not recorder.syncs
    torch._dynamo.reset()
    counters.clear()
    try:
        compile_networks(m.model, backend="eager")
        m.take_step(*next(batches), 2, gen)
        graphs = counters["stats"]["unique_graphs"]
        m.take_step(*next(batches), 2, gen)
        assert counters["stats"]["unique_graphs"] == graphs > 0
        assert dict(counters["graph_break"]) == {}
    finally:
        torch._dynamo.reset()


# -- training and resume ---------------------------------------------------------------------
@pytest.mark.parametrize("method", ["byol", "propos"])
def test_trains_resumes_and_embeds_on_synthetic(method: str, tmp_path: Path) -> None:
    # reassign 2: the resumed epoch 2 trains on pseudo-labels restored from the checkpoint.
    overrides = {"reassign": 2} if method == "propos" else {}
    check_train_and_resume(method, tmp_path, stop_after=1, **overrides)


def test_propos_resumes_with_data_resample(tmp_path: Path) -> None:
    check_train_and_resume("propos", tmp_path, stop_after=2, data_resample=True,
                           momentum_increase=True)


def test_emulated_devices_and_v2_train_and_resume_exactly(tmp_path: Path) -> None:
    check_train_and_resume("propos", tmp_path, stop_after=1, bn_group_size=8, v2=True, reassign=2)


@pytest.mark.parametrize("method", ["byol", "propos"])
def test_trains_on_digits(method: str, tmp_path: Path) -> None:
    check_trains_on_digits(method, tmp_path)
