"""GroupBatchNorm: one BatchNorm per emulated device, as DDP with plain BatchNorm runs it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from harness.nn.groupbn import GroupBatchNorm, convert_group_batchnorm


def devices_and_group_bn(bn: nn.Module, groups: int) -> tuple[list[nn.Module], GroupBatchNorm]:
    """`groups` per-device copies of `bn` and its GroupBatchNorm twin (same state)."""
    return [copy.deepcopy(bn) for _ in range(groups)], convert_group_batchnorm(copy.deepcopy(bn), groups)


def random_state(bn: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g, dtype=torch.float64) + 0.5)


@pytest.mark.parametrize("shape", [(512, 3, 4, 4), (512, 6)], ids=["2d", "1d"])
def test_groups_of_128_equal_four_separate_batchnorm_passes(shape: tuple[int, ...]) -> None:
    """Batch 512 in groups of 128: outputs, gradients and running statistics equal four devices'
    BatchNorm modules to 1e-6 (float64), with DDP's buffer broadcast from rank 0 before each step."""
    g = torch.Generator().manual_seed(0)
    bn = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(shape[1]).double()
    random_state(bn, g)
    devices, group_bn = devices_and_group_bn(bn, 4)
    for step in range(3):
        for rank in devices[1:]:  # DDP broadcast_buffers: every rank starts from rank 0's buffers
            rank.load_state_dict(devices[0].state_dict())
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1).requires_grad_(True)
        w = torch.randn(shape, generator=g, dtype=torch.float64)
        out = group_bn(x)
        (out * w).sum().backward()
        x_ref = x.detach().clone().requires_grad_(True)
        ref = torch.cat([rank(c) for rank, c in zip(devices, x_ref.chunk(4))])
        (ref * w).sum().backward()
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-6)
        for name in ("weight", "bias"):  # the shared parameter's gradient sums the devices'
            total = sum(getattr(rank, name).grad for rank in devices)
            torch.testing.assert_close(getattr(group_bn, name).grad, total, rtol=0, atol=1e-6)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(group_bn, name), getattr(devices[0], name),
                                       rtol=0, atol=1e-6)
        assert not torch.allclose(group_bn.running_mean, devices[1].running_mean)
        for module in (group_bn, *devices):
            module.zero_grad()
    assert int(group_bn.num_batches_tracked) == 3
    whole = copy.deepcopy(bn)(x.detach())
    assert (whole - group_bn(x.detach())).abs().max() > 1e-3  # not whole-batch statistics


def test_eval_mode_uses_running_statistics_like_batchnorm() -> None:
    g = torch.Generator().manual_seed(1)
    bn = nn.BatchNorm2d(4).double()
    random_state(bn, g)
    _, group_bn = devices_and_group_bn(bn, 4)
    bn.eval(), group_bn.eval()
    x = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)  # any size in eval mode
    torch.testing.assert_close(group_bn(x), bn(x))
    assert int(group_bn.num_batches_tracked) == 0


def test_one_group_is_plain_batchnorm() -> None:
    g = torch.Generator().manual_seed(2)
    bn = nn.BatchNorm1d(5).double()
    random_state(bn, g)
    _, group_bn = devices_and_group_bn(bn, 1)
    x = torch.randn(10, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(group_bn(x), bn(x))
    torch.testing.assert_close(group_bn.running_var, bn.running_var)


def test_conversion_keeps_names_values_and_order() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6)))
    random_state(net[1], torch.Generator().manual_seed(3))
    before = net.state_dict()
    names = [n for n, _ in net.named_parameters()]
    converted = convert_group_batchnorm(copy.deepcopy(net), 2)
    assert [n for n, _ in converted.named_parameters()] == names
    assert list(converted.state_dict()) == list(before)
    for key, value in converted.state_dict().items():
        assert torch.equal(value, before[key]) and value.dtype == before[key].dtype, key
    assert [type(m) for m in converted.modules() if "Norm" in type(m).__name__] == [GroupBatchNorm] * 2
    assert all(m.groups == 2 for m in converted.modules() if isinstance(m, GroupBatchNorm))


def test_a_batch_that_does_not_split_evenly_is_an_error() -> None:
    group_bn = GroupBatchNorm(3, groups=4)
    with pytest.raises(ValueError, match="does not split into 4"):
        group_bn(torch.randn(10, 3))
