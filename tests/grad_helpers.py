"""A stand-in optimiser that records the gradients a training step would apply."""

from __future__ import annotations

from torch import nn


class GradRecorder:
    """Stands in for the optimiser: records the gradients the step would apply."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.grads = model, {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.grads = {n: None if p.grad is None else p.grad.clone()
                      for n, p in self.model.named_parameters()}
