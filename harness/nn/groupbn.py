"""BatchNorm per device on one GPU: statistics over consecutive groups of the batch.

Upstream ProPos trains on 4 GPUs under DistributedDataParallel with plain (not synchronised)
BatchNorm: each GPU normalises its own 128 images with their own statistics. `GroupBatchNorm`
computes exactly that on one device: the batch is cut into `groups` equal consecutive chunks
(chunk d = device d) and each chunk is normalised with its own batch statistics, by torch's own
`F.batch_norm`, so outputs and gradients equal those of one BatchNorm module per device.

Running statistics: DDP's default `broadcast_buffers=True` copies rank 0's buffers to every rank
at the start of each forward of the wrapped model, so after any step the buffers every rank keeps
are rank 0's: its previous buffers updated by its own chunk in each call of the module. Here the
running mean, variance and `num_batches_tracked` follow chunk 0 in the same way (what upstream
actually did). Build choice: the ranks' own last updates before an E-step (each rank embeds its
share of the data with its own buffers, upstream) are not reproduced; every feature uses rank 0's.
Eval mode uses the running statistics, as `nn.BatchNorm`. Parameter and buffer names are those of
`nn.BatchNorm*d`, so checkpoints and the EMA's parameter order do not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over `groups` consecutive equal chunks of the batch, as `groups` devices with
    their own BatchNorm modules under DDP (running statistics: rank 0's, i.e. chunk 0's).

    Works on (N, C) and (N, C, *spatial) inputs; N must be a multiple of `groups` in train mode.
    """

    def __init__(self, num_features: int, groups: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        if groups < 1:
            raise ValueError(f"GroupBatchNorm needs groups >= 1, got {groups}")
        if momentum is None:  # cumulative averaging reads the step counter on the host
            raise ValueError("GroupBatchNorm needs a float momentum (cumulative averaging is "
                             "not supported)")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.groups = groups

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected a (N, C, ...) input, got {x.dim()} dimensions")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.groups == 1:
            return super().forward(x)
        self._check_input_dim(x)
        if x.shape[0] % self.groups:
            raise ValueError(f"GroupBatchNorm: a batch of {x.shape[0]} does not split into "
                             f"{self.groups} equal device groups")
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        chunks = x.chunk(self.groups)
        # chunk 0 = rank 0: the only one whose running-statistics update survives DDP's broadcast
        out = [F.batch_norm(chunks[0], self.running_mean, self.running_var, self.weight,
                            self.bias, True, self.momentum, self.eps)]
        out += [F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps)
                for c in chunks[1:]]
        return torch.cat(out)


def convert_group_batchnorm(module: nn.Module, groups: int) -> nn.Module:
    """Replace every `nn.BatchNorm1d/2d` in `module` by a `GroupBatchNorm` with `groups` groups,
    keeping parameters, buffers and module order (in place; returns the module, or its
    replacement when `module` is itself a BatchNorm)."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        like = module.weight if module.weight is not None else module.running_mean
        kw = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        new = GroupBatchNorm(module.num_features, groups, module.eps, module.momentum,
                             module.affine, module.track_running_stats, **kw)
        new.load_state_dict(module.state_dict())
        return new
    for name, child in module.named_children():
        replacement = convert_group_batchnorm(child, groups)
        if replacement is not child:
            setattr(module, name, replacement)
    return module
