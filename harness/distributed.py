"""Data parallelism for one cell: `world_size` processes (ranks), one per device.

Every rank draws the same random numbers (one generator seed per epoch), so all ranks know the
global batch; rank r trains rows `bounds(n)` of it. Rank r holds block `shard` of the cell's
uint8 images on its device (1/world_size of them) and fetches the rows it trains from their
holders. What the ranks exchange goes through torch.distributed (gloo on CPU, NCCL on GPU):
- the images of each global batch, from the rank that holds them to the rank that trains them
  (`fetch`, one all_to_all per step);
- gradients, averaged over the ranks before each optimiser step (`average_gradients`);
- BatchNorm statistics where upstream synchronised them (`SyncBatchNorm`);
- embeddings for losses over the global batch (`gather`, with gradient);
- rank 0's buffers (per-device BatchNorm running statistics), as DDP's `broadcast_buffers`.

Build choice: gradients are averaged by an optimiser step pre-hook rather than by wrapping the
model in `DistributedDataParallel`: the methods' steps call sub-networks directly (online and
target, the pruned twin, the predictor), which DDP's wrapper does not see; the averaged gradient
is the same.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError

# Seconds a collective waits for a dead or stuck rank before the cell fails (env override).
TIMEOUT_ENV, DEFAULT_TIMEOUT_S = "HARNESS_DIST_TIMEOUT", 600


class _AllGather(torch.autograd.Function):
    """all_gather whose backward gives each rank the sum over the ranks of the gradients of its
    rows (upstream's GatherLayer). Hand-written on purpose: torch's
    `torch.distributed.nn.functional.all_gather` is deprecated, its replacement private."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> torch.Tensor:
        total = torch.stack(grads).contiguous()
        dist.all_reduce(total)
        return total[dist.get_rank()]


def all_gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's `x` (equal shapes), rank order, differentiable (see `_AllGather`)."""
    return _AllGather.apply(x)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the cell's process group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and results."""
        return self.rank == 0

    def counts(self, rows: int) -> list[int]:
        """Rows of a global batch of `rows` per rank (`torch.tensor_split`'s sizes)."""
        q, r = divmod(rows, self.world_size)
        return [q + (i < r) for i in range(self.world_size)]

    def bounds(self, rows: int) -> tuple[int, int]:
        """[start, stop) of this rank's share of a global batch of `rows` rows."""
        counts = self.counts(rows)
        start = sum(counts[:self.rank])
        return start, start + counts[self.rank]

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor every rank holds whole."""
        start, stop = self.bounds(x.shape[0])
        return x[start:stop]

    def fetch(self, block: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
        """This rank's share (`bounds`) of the global batch `rows` (positions in a data set of
        `n` rows, the same on every rank), where each rank holds its `shard` of the data set as
        `block`: one all_to_all sends every row from its holder to the rank that trains it.

        Build choice: every message has the width of the largest share (gloo's all_to_all needs
        equal sizes), so the index arithmetic stays on the device without a host sync; a rank
        sends about one global batch of uint8 rows per step, most of them padding."""
        if not self.distributed:
            return block[rows]
        w, shares = self.world_size, self.counts(len(rows))
        width, sent = max(shares), []
        stops = torch.tensor(self.counts(n), device=rows.device).cumsum(0)
        holder = torch.bucketize(rows, stops[:-1], right=True)
        # this rank's rows as indices into its block; others' rows: any valid index (unused)
        local = (rows - self.bounds(n)[0]).clamp(0, block.shape[0] - 1)
        for r in range(w):
            lo = sum(shares[:r])
            mine = holder[lo:lo + shares[r]] == self.rank
            # the k-th of my rows in r's share goes to slot k; the others to a spare slot
            slot = torch.where(mine, mine.long().cumsum(0) - 1, width)
            message = block.new_zeros((width + 1, *block.shape[1:]))
            message.index_copy_(0, slot, block[local[lo:lo + shares[r]]])
            sent.append(message[:width])
        received = [torch.empty_like(m) for m in sent]
        dist.all_to_all(received, sent)
        lo, hi = self.bounds(len(rows))
        own = holder[lo:hi]
        # row p of my share is the j-th of its holder's rows here: received[holder][j]
        nth = F.one_hot(own, w).cumsum(0).gather(1, own[:, None]).squeeze(1) - 1
        return torch.stack(received)[own, nth]

    def gather(self, x: torch.Tensor, rows: int, grad: bool = True) -> torch.Tensor:
        """The global batch of `rows` rows from every rank's share `x` (rank order). With `grad`
        the gradient of every rank's loss flows back to the rows' owners (all_gather autograd)."""
        if not self.distributed:
            return x
        counts = self.counts(rows)
        pad = F.pad(x, (0, 0) * (x.dim() - 1) + (0, max(counts) - x.shape[0]))
        if grad:
            parts = list(all_gather_with_grad(pad))
        else:
            parts = [torch.empty_like(pad) for _ in counts]
            dist.all_gather(parts, pad.contiguous())
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of `x` over the ranks (no gradient)."""
        if not self.distributed:
            return x
        out = x.detach().clone()
        dist.all_reduce(out)
        return out / self.world_size

    def max(self, x: torch.Tensor) -> torch.Tensor:
        """Max of `x` over the ranks (no gradient)."""
        if not self.distributed:
            return x
        out = x.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's `x` on every rank (in place)."""
        if self.distributed:
            dist.broadcast(x, 0)
        return x

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers to every rank (DDP's `broadcast_buffers`). Boolean buffers
        (SDCLR's masks, derived from the weights every rank shares) stay: gloo has no bool."""
        for buf in module.buffers():
            if buf.dtype != torch.bool:
                self.broadcast(buf)

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Replace every gradient by its mean over the ranks (one all_reduce per dtype)."""
        grads = [p.grad for p in params if p.grad is not None]
        for dtype in {g.dtype for g in grads}:
            group = [g for g in grads if g.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in group])
            dist.all_reduce(flat)
            flat /= self.world_size
            for g, part in zip(group, flat.split([g.numel() for g in group])):
                g.copy_(part.view_as(g))


def export_slurm_ranks() -> None:
    """In a submitit SLURM job of several tasks (one per rank): export the env:// rendezvous
    (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) that submitit derives from SLURM's
    variables. Every task keeps all the node's GPUs visible and trains on `cuda:LOCAL_RANK`.
    A no-op outside such a job and under torchrun (which set RANK itself)."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or "RANK" in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    dist_env = TorchDistributedEnvironment()
    if dist_env.world_size > 1:
        dist_env.export(set_cuda_visible_devices=False, overwrite=True)


def free_port() -> int:
    """A TCP port free on this host now, for a single-node rendezvous (MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ranks_from_env() -> Ranks:
    """The rank layout torchrun or `TorchDistributedEnvironment.export()` put in the environment."""
    env = os.environ
    return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                 int(env.get("LOCAL_RANK", 0)))


def init_process_group(ranks: Ranks, device: torch.device) -> None:
    """Join the cell's process group (env:// rendezvous) with the harness timeout."""
    if not ranks.distributed or dist.is_initialized():
        return
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    address = os.environ.get("MASTER_ADDR")
    try:  # an unknown name would only fail at the timeout, after the rendezvous retried it
        if address:
            socket.getaddrinfo(address, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise HarnessError(f"rank {ranks.rank} of {ranks.world_size} cannot resolve MASTER_ADDR "
                           f"{address!r} ({exc}): rank 0's host (on SLURM the job's first node) "
                           "must resolve by name on every node; fix DNS or /etc/hosts") from None
    try:
        dist.init_process_group(backend, timeout=timeout, rank=ranks.rank,
                                world_size=ranks.world_size)
    except (RuntimeError, ValueError) as exc:
        raise HarnessError(f"rank {ranks.rank} of {ranks.world_size} could not join the process "
                           f"group ({exc}); check MASTER_ADDR/MASTER_PORT") from None


def join(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the cell's process group; returns this rank's device (`cuda:LOCAL_RANK` for GPU
    ranks, one visible GPU each; `device` otherwise). Idempotent."""
    if device.type == "cuda" and ranks.distributed:
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    init_process_group(ranks, device)
    return device


def rank0_decides(ranks: Ranks, device: torch.device, decision: list[int]) -> list[int]:
    """Rank 0's `decision` (small ints) on every rank; the other ranks pass placeholders of the
    same length. The start handshake of a cell: whether the ranks train, and from a checkpoint."""
    if not ranks.distributed:
        return decision
    return ranks.broadcast(torch.tensor(decision, dtype=torch.long, device=device)).tolist()


def close_process_group() -> None:
    """Leave the process group (no-op when none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with batch statistics over every rank's rows (upstream's SyncBN).

    Build choice: the mean and variance come from a differentiable all_gather of per-rank
    counts, means and squared deviations, so the forward and gradient equal BatchNorm over the
    global batch on one device; torch's
    `nn.SyncBatchNorm` runs on GPUs only, so this class serves CPU (gloo) ranks and GPU ranks
    get torch's (`convert_sync_batchnorm`). Parameter and buffer names are those of
    `nn.BatchNorm*d` (checkpoints are interchangeable).
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected a (N, C, ...) input, got {x.dim()} dimensions")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        dims, c = [0, *range(2, x.dim())], x.shape[1]
        xf = x.float()
        # per-rank count, mean and sum of squared deviations, merged over the ranks (Chan et
        # al.'s pairwise update, as torch's batch_norm_gather_stats_with_counts): no E[x^2] -
        # E[x]^2 cancellation
        count = torch.full((1,), x.numel() / c, dtype=torch.float32, device=x.device)
        local_mean = xf.mean(dims)
        local_m2 = ((xf - local_mean.view((1, c) + (1,) * (x.dim() - 2))) ** 2).sum(dims)
        parts = torch.stack(all_gather_with_grad(torch.cat([count, local_mean, local_m2])))
        counts, means, m2s = parts[:, :1], parts[:, 1:1 + c], parts[:, 1 + c:]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (m2s + counts * (means - mean) ** 2).sum(0) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
        shape = (1, c) + (1,) * (x.dim() - 2)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every `nn.BatchNorm1d/2d` in `module` by a synchronised BatchNorm with the same
    parameters and buffers (in place; returns the module, or its replacement): torch's
    `nn.SyncBatchNorm` on GPUs, this module's `SyncBatchNorm` on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.momentum is None:
            raise HarnessError("SyncBatchNorm needs a float BatchNorm momentum")
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        new.load_state_dict(module.state_dict())
        return new.to(next(iter(module.state_dict().values())).device)
    for name, child in module.named_children():
        replacement = convert_sync_batchnorm(child, device)
        if replacement is not child:
            setattr(module, name, replacement)
    return module
