"""Debiased contrastive clustering (debiased.md) and its DCL baseline (Chuang et al., NeurIPS 2020).

`debiased_clustering`: a ResNet with the DCL projection head, trained with Chuang et al.'s debiased
contrastive loss whose class prior tau+ becomes per anchor (the frequency of the anchor's cluster,
so minority anchors are not over-corrected), plus DEC's divergence clustering loss KL(P || Q) on a
Student-t head with K centroids in z-space. `dcl`: the same code path with one fixed tau+ = 0.1 and
no clustering branch. NOT Decoupled Contrastive Learning (lightly's DCLLoss), another method.

The paper's equations and hyper-parameters could not be read, so most of the design is this
project's; every such choice is a config key tagged [A#] as in debiased.md section 4.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import CellConfig
from harness.data.augment import AugmentRecipe, eval_images
from harness.data.digit_recipe import digit_settings
from harness.errors import HarnessError
from harness.kmeans import kmeans
from harness.method import Batch, TrainableMethod, TrainParams, load_cell_data, params_from_dict
from harness.nn.heads import mlp
from harness.nn.resnet import ResNet
from harness.registry import register_method
from harness.seeding import derive_seed


# -- losses (pure functions) -------------------------------------------------------------------
def debiased_terms(z1: Tensor, z2: Tensor, tau_plus: float | Tensor, temperature: float,
                   weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-anchor positive logit s_{i p(i)} and clamped negative term Ng_i, over 2B anchors.

    Anchors are ordered [view 1; view 2]; N = 2B - 2 negatives (self and partner removed).
    Ng_i = max{(sum_j e^{s_ij} - tau_i N pos_i) / (1 - tau_i), N e^{-1/t}} (debiased.md 4.2 b),
    with pos_i = e^{s_ip} (M = 1) or, given `weights` (2B, 2B) w_ij >= 0, the [A8] weighted mean
    (e^{s_ip} + sum_j w_ij e^{s_ij}) / (1 + sum_j w_ij) over non-positives j.
    Plain exponentials as upstream (finite in float32 for temperatures above ~0.012).
    """
    with torch.autocast(z1.device.type, enabled=False):  # float32 even inside an autocast region
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        n2 = z.shape[0]
        idx = torch.arange(n2, device=z.device)
        partner = (idx + n2 // 2) % n2
        logits = z @ z.t() / temperature
        s_pos = logits[idx, partner]
        excluded = (idx[:, None] == idx[None, :]) | (partner[:, None] == idx[None, :])
        exp_neg = logits.exp().masked_fill(excluded, 0.0)
        n_neg = n2 - 2
        pos = s_pos.exp()
        if weights is not None:
            w = weights.float().masked_fill(excluded, 0.0)
            pos = (pos + (w * exp_neg).sum(1)) / (1.0 + w.sum(1))
        # a Python number stays one: a tensor made from it would be a host-to-device copy per step
        tau = tau_plus.to(z.dtype) if isinstance(tau_plus, Tensor) else float(tau_plus)
        ng = (exp_neg.sum(1) - tau * n_neg * pos) / (1.0 - tau)
        return s_pos, ng.clamp_min(n_neg * math.exp(-1.0 / temperature))


def debiased_loss(z1: Tensor, z2: Tensor, tau_plus: float | Tensor, temperature: float) -> Tensor:
    """Chuang et al.'s debiased loss (M = 1, with the clamp), mean over the 2B anchors.

    z1, z2: (B, D) projections (normalised here); tau_plus: scalar or (2B,) per-anchor prior
    ordered [view 1; view 2]. tau_plus = 0 is NT-Xent.
    """
    s_pos, ng = debiased_terms(z1, z2, tau_plus, temperature)
    return (torch.logaddexp(s_pos, ng.log()) - s_pos).mean()


def debiased_loss_cluster_pos(z1: Tensor, z2: Tensor, tau_plus: float | Tensor, temperature: float,
                              weights: Tensor) -> Tensor:
    """[A8] `pos_mode: cluster`: cluster-mates as soft extra positives (M > 1) in the estimator.

    weights: (2B, 2B) w_ij = qbar_i . qbar_j; entries for j = i and j = p(i) are ignored.
    """
    s_pos, ng = debiased_terms(z1, z2, tau_plus, temperature, weights)
    return (torch.logaddexp(s_pos, ng.log()) - s_pos).mean()


def student_t_assign(x: Tensor, centroids: Tensor, alpha: float = 1.0) -> Tensor:
    """DEC soft assignment q_ik proportional to (1 + |x_i - mu_k|^2 / alpha)^(-(alpha + 1) / 2)."""
    with torch.autocast(x.device.type, enabled=False):
        x, mu = x.float(), centroids.float()
        d2 = (x.pow(2).sum(1, keepdim=True) + mu.pow(2).sum(1) - 2.0 * x @ mu.t()).clamp_min(0.0)
        return torch.softmax(-(alpha + 1.0) / 2.0 * torch.log1p(d2 / alpha), dim=1)


def dec_target(q: Tensor, beta: float = 1.0) -> Tensor:
    """DEC target p_ik proportional to q_ik^2 / f_k^beta with f_k = sum_i q_ik (rows sum to 1)."""
    freq = q.sum(0).clamp_min(torch.finfo(q.dtype).tiny)
    p = q.pow(2) / freq.pow(beta)
    return p / p.sum(1, keepdim=True)


def kl_to_target(p: Tensor, q: Tensor) -> Tensor:
    """KL(P || Q) summed over clusters, averaged over rows; P is treated as a constant."""
    return F.kl_div(q.float().clamp_min(1e-30).log(), p.detach().float(), reduction="batchmean")


def dec_loss(q: Tensor, beta: float = 1.0) -> Tensor:
    """DEC divergence clustering loss: KL(P || Q), P from q without gradient, batch mean."""
    return kl_to_target(dec_target(q.detach().float(), beta), q)


def consistency_loss(q1: Tensor, q2: Tensor, entropy_weight: float) -> Tensor:
    """[A2'] SCAN/CC-style head loss: -log <q1_i, q2_i> minus weighted entropy of the mean q."""
    agree = -(q1 * q2).sum(1).clamp_min(1e-30).log().mean()
    mean_q = torch.cat([q1, q2]).mean(0)
    return agree + entropy_weight * (mean_q * mean_q.clamp_min(1e-30).log()).sum()


def per_anchor_tau(q: Tensor, prior: Tensor, tau_min: float, tau_max: float,
                   assign: str = "soft") -> Tensor:
    """[A6] tau+_i = clip(sum_k q_ik pi_k, tau_min, tau_max); `hard`: pi at argmax q_i."""
    q = q.detach().float()
    tau = q @ prior.float() if assign == "soft" else prior.float()[q.argmax(1)]
    return tau.clamp(tau_min, tau_max)


# -- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DebiasedParams(TrainParams):
    """debiased.md section 4 defaults; every build choice keeps its [A#] tag."""

    # [A12] DCL's optimisation: Adam lr 1e-3, wd 1e-6, constant LR, batch 256, drop_last, 500
    # epochs (DCL; set epochs 1000 for parity with ConMix). optimizer "sgd_cosine" switches to the
    # harness's shared SGD + warm-up cosine recipe (then also set lr, momentum, warmup_epochs).
    epochs: int = 500
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    drop_last: bool = True
    optimizer: str = "adam"
    temperature: float = 0.5
    # [A1] CIFAR ResNet-18 (3x3 conv1, no max-pool) for parity; arch "resnet50" is DCL's choice.
    arch: str = "resnet18"
    stem: str = "cifar"
    width: int = 64
    layers: tuple[int, ...] | None = None
    hidden_dim: int = 512  # DCL head Linear(d, 512, no bias) BN ReLU Linear(512, proj_dim)
    proj_dim: int = 128
    crop_scale_min: float = 0.08  # DCL/SimCLR augmentation; [A12] blur optional at 32 px
    blur_p: float = 0.5
    # Clustering branch (False = no head, no warm-up: the `dcl` baseline).
    cluster_head: bool = True
    num_clusters: int | None = None  # [A3] K; None = number of classes of the dataset
    head: str = "student_t"  # [A2] DEC Student-t centroids; "mlp" = [A2'] softmax MLP head on h
    cluster_space: str = "z"  # [A2] centroids on normalised z; "h" = on normalised backbone h
    alpha: float = 1.0  # [A2] Student-t degrees of freedom (DEC)
    head_loss: str = "dec"  # "dec" = KL(P || Q); "consistency" = [A2'] two-view KL + entropy
    entropy_weight: float = 5.0  # [A2'] consistency variant only (build choice: SCAN's weight)
    beta: float = 1.0  # [A4] cluster-frequency power in P (DEC: 1; 0.5 is our LT ablation)
    target_refresh: str = "batch"  # [A5] P per mini-batch; "epoch" = full pass every epoch
    cluster_weight: float = 0.1  # [A10] lambda (0 during warm-up)
    # Debiased estimator: [A6]/[A9] tau_mode none (= SimCLR) | fixed (tau_plus) | uniform (1/K)
    # | cluster (per-anchor prior from the head).
    tau_mode: str = "cluster"
    tau_plus: float = 0.1
    tau_assign: str = "soft"  # [A6] soft: sum_k q_ik pi_k; hard: pi at argmax q_i
    tau_min: float = 1e-4  # [A6] clip (this project's safeguard)
    tau_max: float = 0.5
    prior_estimate: str = "hist"  # [A7a] hard-assignment histogram after a full pass each epoch;
    prior_momentum: float = 0.99  # "ema" = [A7b] EMA of batch means of qbar with this momentum
    pos_mode: str = "none"  # [A8] "cluster": cluster-mates as soft extra positives
    cluster_warmup_frac: float = 0.2  # [A11] warm-up epochs = round(frac * epochs): L_dcl only,
    warmup_tau_mode: str = "uniform"  # [A11] with this tau_mode; then k-means init of mu and pi
    kmeans_n_init: int = 10  # k-means restarts at the switch (as DEC)


CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adam", "sgd_cosine"), "head": ("student_t", "mlp"), "cluster_space": ("z", "h"),
    "head_loss": ("dec", "consistency"), "target_refresh": ("batch", "epoch"),
    "tau_mode": ("none", "fixed", "uniform", "cluster"), "tau_assign": ("soft", "hard"),
    "prior_estimate": ("hist", "ema"), "pos_mode": ("none", "cluster"),
    "warmup_tau_mode": ("none", "fixed", "uniform"),
}


def check_params(p: DebiasedParams) -> None:
    """Raise a HarnessError for invalid choices or combinations."""
    for key, allowed in CHOICES.items():
        if getattr(p, key) not in allowed:
            raise HarnessError(f"params.{key} = {getattr(p, key)!r}: use one of "
                               f"{', '.join(allowed)}")
    if not p.cluster_head and (p.tau_mode == "cluster" or p.pos_mode == "cluster"
                               or p.cluster_weight > 0):
        raise HarnessError("tau_mode/pos_mode 'cluster' and cluster_weight > 0 need the clustering "
                           "branch: set params.cluster_head true, or use tau_mode fixed, pos_mode "
                           "none and cluster_weight 0")
    if not (0 <= p.tau_min <= p.tau_max < 1 and 0 <= p.tau_plus < 1):
        raise HarnessError(f"need 0 <= tau_min <= tau_max < 1 and 0 <= tau_plus < 1; got tau_min "
                           f"{p.tau_min}, tau_max {p.tau_max}, tau_plus {p.tau_plus}")
    if not 0 <= p.cluster_warmup_frac <= 1:
        raise HarnessError(f"params.cluster_warmup_frac = {p.cluster_warmup_frac}: use a value "
                           "in [0, 1]")


def blur_kernel(size: int) -> int:
    """DCL's blur kernel: floor(10 % of the image size), made odd (32 px -> 3, 224 px -> 23)."""
    k = max(int(0.1 * size), 1)
    return k if k % 2 else k + 1


class DebiasedNet(nn.Module):
    """Backbone, DCL projection head and (optionally) the cluster head: centroids, MLP, prior pi."""

    def __init__(self, p: DebiasedParams, num_clusters: int) -> None:
        super().__init__()
        self.backbone = ResNet(p.arch, p.stem, p.width, p.layers)
        d = self.backbone.out_dim
        self.projector = mlp([d, p.hidden_dim, p.proj_dim], bias=[False, True])
        if p.cluster_head:
            if p.head == "student_t":  # [A2] K learnable centroids, set by k-means at the switch
                space_dim = p.proj_dim if p.cluster_space == "z" else d
                self.centroids = nn.Parameter(torch.zeros(num_clusters, space_dim))
            else:  # [A2'] Linear(d, hidden) ReLU Linear(hidden, K), softmax (hidden 512 by default)
                self.cluster_mlp = mlp([d, p.hidden_dim, num_clusters], hidden_bn=False)
            self.register_buffer("prior", torch.full((num_clusters,), 1.0 / num_clusters))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.backbone(x)
        return h, self.projector(h)


# Tiny budget for CPU tests and the smoke grid: warm-up 1 of 3 epochs, so the k-means switch
# (epoch 2) and a prior refresh (epoch 3) run.
TINY: dict = {"epochs": 3, "cluster_warmup_frac": 0.34, "batch_size": 64, "width": 8,
              "layers": (1, 1, 1, 1), "hidden_dim": 32, "proj_dim": 16, "log_every": 2}
CPU: dict = {"epochs": 30, "batch_size": 128, "width": 16, "layers": (1, 1, 1, 1),
             "hidden_dim": 128, "proj_dim": 64, "log_every": 10, "ckpt_every": 5}


@register_method("debiased_clustering")
class DebiasedClustering(TrainableMethod):
    description = "debiased contrastive clustering: per-cluster tau+ debiased loss + DEC head"
    Params = DebiasedParams
    # Build choice: the ImageNet stem at STL-10's 96 px, as the other methods' shared ResNet.
    dataset_params = {"stl10": {"stem": "imagenet"}, **digit_settings()}
    test_params = TINY
    cpu_params = CPU
    # DCL ran one process (nn.DataParallel) with a total batch of 256 in fp32.
    reference_card = {"world_size": 1, "batch_per_device": 256, "effective_batch": 256,
                      "gather": False, "amp": False}

    # -- setup -----------------------------------------------------------------------------------
    def build(self) -> nn.Module:
        p = self.p
        check_params(p)
        self.num_clusters = p.num_clusters or self.data.num_classes
        self.warmup_epochs = round(p.cluster_warmup_frac * p.epochs) if p.cluster_head else 0
        if p.cluster_head and self.warmup_epochs >= p.epochs:
            raise HarnessError(f"cluster_warmup_frac {p.cluster_warmup_frac} leaves no epoch of "
                               f"{p.epochs} for the clustering branch; lower it or raise epochs")
        self.epoch_target: Tensor | None = None  # [A5] P over the LT subset, target_refresh epoch
        return DebiasedNet(p, self.num_clusters)

    def norm_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.data.mean, self.data.std  # DCL normalises with the dataset's statistics

    def augment_recipe(self) -> AugmentRecipe:
        """DCL/SimCLR: RRC, flip, jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5."""
        p, size = self.p, self.data.image_size
        mean, std = self.norm_stats()
        return AugmentRecipe(size=size, scale=(p.crop_scale_min, 1.0), jitter=(0.4, 0.4, 0.4, 0.1),
                             jitter_p=0.8, grayscale_p=0.2, blur_p=p.blur_p,
                             blur_kernel=blur_kernel(size), blur_sigma=(0.1, 2.0),
                             mean=tuple(mean), std=tuple(std))

    def make_optimizer(self) -> torch.optim.Optimizer:
        if self.p.optimizer == "sgd_cosine":
            return super().make_optimizer()
        # fused on CUDA: the step counter stays on the device (no host read per step)
        kw = {"fused": True} if self.device.type == "cuda" else {}
        return torch.optim.Adam(self.parameter_groups(), lr=self.p.lr,
                                weight_decay=self.p.weight_decay, **kw)

    def lr_at(self, step: int) -> float:
        return super().lr_at(step) if self.p.optimizer == "sgd_cosine" else self.p.lr

    def optimizer_recipe(self) -> dict[str, Any]:
        if self.p.optimizer == "sgd_cosine":
            return super().optimizer_recipe()
        return {"name": "Adam", "weight_decay": self.p.weight_decay}

    def recipe(self) -> dict[str, Any]:
        recipe = super().recipe()
        if self.p.optimizer != "sgd_cosine":
            recipe["lr_schedule"] = "constant"
        return recipe

    # -- schedule and cluster head ---------------------------------------------------------------
    def joint(self, epoch: int) -> bool:
        """True after the [A11] warm-up: clustering loss and the configured tau_mode are on."""
        return self.p.cluster_head and epoch > self.warmup_epochs

    def fixed_tau(self, mode: str) -> float:
        """tau+ of the non-cluster modes [A9]: none 0 (NT-Xent), fixed tau_plus, uniform 1/K."""
        return {"none": 0.0, "fixed": self.p.tau_plus, "uniform": 1.0 / self.num_clusters}[mode]

    def assign(self, h: Tensor, z: Tensor) -> Tensor:
        """Soft cluster assignments q (float32) of backbone features h / projections z."""
        if self.p.head == "mlp":
            with self.autocast:
                logits = self.model.cluster_mlp(h)
            return torch.softmax(logits.float(), dim=1)
        x = F.normalize((z if self.p.cluster_space == "z" else h).float(), dim=1)
        return student_t_assign(x, self.model.centroids, self.p.alpha)

    @torch.no_grad()
    def full_pass(self, images: Tensor, chunk: int = 512) -> tuple[Tensor, Tensor]:
        """Eval-mode (h, z) of uint8 images (no augmentation), float32 on the device."""
        was_training = self.model.training
        self.model.eval()
        recipe = self.eval_recipe(self.data.image_size)
        hs, zs = [], []
        for i in range(0, len(images), chunk):
            x = self._prep(eval_images(images[i:i + chunk].to(self.device), recipe))
            with self.autocast:
                h, z = self.model(x)
            hs.append(h.float())
            zs.append(z.float())
        self.model.train(was_training)
        return torch.cat(hs), torch.cat(zs)

    @torch.no_grad()
    def assign_all(self, h: Tensor, z: Tensor, chunk: int = 4096) -> Tensor:
        """Soft assignments of full-pass features, in row chunks."""
        return torch.cat([self.assign(h[i:i + chunk], z[i:i + chunk])
                          for i in range(0, len(h), chunk)])

    @torch.no_grad()
    def init_clusters(self, h: Tensor, z: Tensor) -> None:
        """[A11] k-means on the full LT subset at the switch: mu <- centres, pi <- fractions.

        Build choice: euclidean k-means on the L2-normalised cluster space, as the Student-t kernel
        is euclidean; the MLP head [A2'] takes only pi from it.
        """
        x = F.normalize(z if self.p.cluster_space == "z" else h, dim=1)
        res = kmeans(x, self.num_clusters, metric="euclidean", n_init=self.p.kmeans_n_init,
                     seed=derive_seed(self.cfg.seed, "debiased", "kmeans_init"), device=self.device)
        if self.p.head == "student_t":
            self.model.centroids.copy_(res.centers.to(self.model.centroids))
        labels = torch.as_tensor(res.labels, device=self.device)
        counts = torch.bincount(labels, minlength=self.num_clusters)
        self.model.prior.copy_(counts.float() / len(labels))

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        """k-means init at the switch; then [A7a] pi and [A5] P from a full pass every epoch."""
        p = self.p
        switch = epoch == self.warmup_epochs + 1
        if not self.joint(epoch) or not (switch or p.prior_estimate == "hist"
                                         or p.target_refresh == "epoch"):
            return
        with torch.no_grad():
            # each rank passes the block of images it holds; all get every row
            h, z = (self.ranks.gather(t, len(self.data), grad=False)
                    for t in self.full_pass(self.images))
            if switch:
                self.init_clusters(h, z)
            q = self.assign_all(h, z)
            if p.prior_estimate == "hist" and not switch:
                counts = torch.bincount(q.argmax(1), minlength=self.num_clusters)
                self.model.prior.copy_(counts.float() / len(q))
            if p.target_refresh == "epoch":
                self.epoch_target = dec_target(q, p.beta)

    # -- training --------------------------------------------------------------------------------
    def joint_loss(self, h: Tensor, z1: Tensor, z2: Tensor, index: Tensor) -> Tensor:
        """L_dcl with the configured tau+ (per anchor from q of this step) + lambda * L_clu."""
        p = self.p
        q = self.assign(h, torch.cat([z1, z2]))
        qbar = q.detach()  # [A6] the prior of this step's anchors, no host sync
        prior = self.model.prior
        tau = (per_anchor_tau(qbar, prior, p.tau_min, p.tau_max, p.tau_assign)
               if p.tau_mode == "cluster" else self.fixed_tau(p.tau_mode))
        if p.prior_estimate == "ema":  # [A7b]
            prior.mul_(p.prior_momentum).add_(qbar.mean(0), alpha=1.0 - p.prior_momentum)
        if p.pos_mode == "cluster":  # [A8]
            contrastive = debiased_loss_cluster_pos(z1, z2, tau, p.temperature, qbar @ qbar.t())
        else:
            contrastive = debiased_loss(z1, z2, tau, p.temperature)
        b = z1.shape[0]
        if p.head_loss == "consistency":
            clu = consistency_loss(q[:b], q[b:], p.entropy_weight)
        elif p.target_refresh == "epoch":
            clu = kl_to_target(self.epoch_target[index].repeat(2, 1), q)
        else:  # build choice: one DEC target over both views of the batch (f_k over 2B rows)
            clu = dec_loss(q, p.beta)
        return contrastive + p.cluster_weight * clu

    def training_step(self, batch: Batch) -> torch.Tensor:
        with self.autocast:
            h1, z1 = self.model(batch.view1)
            h2, z2 = self.model(batch.view2)
        # On several ranks every rank computes the loss of the global batch (gathered with
        # gradient): negatives, the DEC target and the prior update see every rank's rows.
        # Build choice: SyncBatchNorm (the default `distribute`), so N ranks compute the
        # one-device recipe; DCL's nn.DataParallel had BatchNorm per replica.
        h1, h2, z1, z2 = (self.gather(x, batch) for x in (h1, h2, z1, z2))
        index = batch.index if batch.global_index is None else batch.global_index
        # Losses in float32 outside autocast (the loss functions cast their inputs).
        if self.joint(batch.epoch):
            loss = self.joint_loss(torch.cat([h1, h2]), z1, z2, index)
        else:  # [A11] warm-up (or the `dcl` baseline): L_dcl only, lambda = 0
            mode = self.p.warmup_tau_mode if self.p.cluster_head else self.p.tau_mode
            loss = debiased_loss(z1, z2, self.fixed_tau(mode), self.p.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    # -- evaluation ------------------------------------------------------------------------------
    def features(self, x: Tensor) -> dict[str, Tensor]:
        """[A13] k-means on the normalised backbone h is primary; z is the secondary kind."""
        h, z = self.model(x)
        return {"backbone": F.normalize(h.float(), dim=1),
                "projector": F.normalize(z.float(), dim=1)}

    @torch.no_grad()
    def predict(self, cfg: CellConfig, run_dir: Path, split: str) -> np.ndarray | None:
        """[A13] (i) argmax q of the cluster head; None without a head (`dcl`)."""
        if not params_from_dict(self.Params, cfg.params, f"method '{self.name}'").cluster_head:
            return None
        self.setup(cfg, run_dir)
        if self.epoch_done < self.p.epochs and not self.load_checkpoint():
            warnings.warn(f"{self.name}: no checkpoint in {run_dir}; predicting with an untrained "
                          "model")
        data = self.data if split == "lt_train" else load_cell_data(cfg, split)
        h, z = self.full_pass(data.images)
        return self.assign_all(h, z).argmax(1).cpu().numpy()


@dataclass(frozen=True)
class DCLParams(DebiasedParams):
    """Chuang et al.'s defaults [A9]: one fixed tau+ = 0.1, no clustering branch."""

    cluster_head: bool = False
    tau_mode: str = "fixed"
    cluster_weight: float = 0.0


def dcl_upstream() -> dict[str, Any]:
    """Chuang et al.'s recipe (debiased.md 2.3) in `recipe()` form: batch 256, drop_last, 500
    epochs, Adam 1e-3 wd 1e-6, fp32; 32 px crops and CIFAR-10 statistics on every dataset (STL-10
    trained at 32 px). Its devices (nn.DataParallel, BatchNorm per replica) are not recorded."""
    return {"source": "chingyaoc/DCL @ c2a3b96 main.py", "epochs": 500, "effective_batch": 256,
            "drop_last": True, "optimizer": {"name": "Adam", "weight_decay": 1e-6},
            "effective_lr": 1e-3, "lr_schedule": "constant", "amp": False,
            "augmentation": AugmentRecipe(size=32, scale=(0.08, 1.0), flip_p=0.5,
                                          jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8,
                                          grayscale_p=0.2, blur_p=0.5, blur_kernel=3,
                                          blur_sigma=(0.1, 2.0), mean=(0.4914, 0.4822, 0.4465),
                                          std=(0.2023, 0.1994, 0.2010))}


@register_method("dcl")
class DCL(DebiasedClustering):
    description = "DCL: Debiased Contrastive Learning (Chuang et al. 2020), fixed tau+ 0.1"
    Params = DCLParams
    upstream = {"cifar10": dcl_upstream(), "stl10": dcl_upstream()}
