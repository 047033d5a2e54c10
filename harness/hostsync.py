"""Find host synchronisations in GPU code while running it on CPU.

On CUDA a host sync stalls the CPU until the GPU has finished every queued kernel, so the next
training step cannot be queued while this one runs. The ops that force one (reading a value on
the host: `.item()`, `bool()`; data-dependent output shapes: `nonzero`, boolean-mask indexing,
`unique`, `masked_select`) are the same on every device, so a dispatch mode that records them on
CPU finds every sync the code would make on a GPU. So does a tensor made from Python data
(`aten.lift_fresh`), which on CUDA is copied from host memory; a copy of an existing CPU tensor
to the device (`.to(device)`) is the one kind it cannot tell from a device-to-device copy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING_OPS = frozenset({
    "aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique",
    "aten._unique", "aten._unique2", "aten.unique_dim", "aten.unique_consecutive",
    "aten.repeat_interleave", "aten.equal", "aten.is_nonzero", "aten.allclose",
    # a tensor made from Python data (torch.tensor, torch.as_tensor of a number or list): on CUDA
    # it is built on the host and copied from pageable memory, a copy that waits for the GPU
    "aten.lift_fresh"})


class HostSyncRecorder(TorchDispatchMode):
    """Records every op that needs a value or a data-dependent shape on the host.

    `host_tensors`: ids of tensors that stay on the host on CUDA too (reading them is no sync).
    """

    def __init__(self, host_tensors: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.host_tensors = host_tensors
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        name = str(func.overloadpacket)  # e.g. "aten.nonzero"
        bool_index = name == "aten.index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
        on_host = bool(args) and id(args[0]) in self.host_tensors
        if (name in SYNCING_OPS or bool_index) and not on_host:
            self.syncs.append(str(func))
        return func(*args, **(kwargs or {}))
