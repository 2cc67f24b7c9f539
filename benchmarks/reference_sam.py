"""The SAM that users write today, as a baseline to time samkit.SAM against.

The blog seed's SAM (after davda54/sam) with its bug fixed: ONE global gradient norm, not one
per parameter group (Foret et al., 2021, eq. 2 perturbs by rho * g / ||g|| over all weights).
Otherwise it keeps that code's style, which is what makes it slow: a Python loop over the
parameters, the norm from per-parameter ``.norm().item()`` (a host sync per parameter), the
perturbation e_w stored per parameter and undone by ``p.sub_(e_w)``, and BatchNorm momentum set
to 0 for the second pass (``bn_momentum_zero``) instead of freezing the layers.

tests/test_benchmarks.py checks that it is a correct SAM: two steps give samkit.SAM's weights
in float64.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class ReferenceSAM(torch.optim.Optimizer):
    """The blog seed's SAM, bug fixed (one global norm), written the way users write it."""

    def __init__(self, params, base_optimizer, rho=0.05):
        super().__init__(params, dict(rho=rho))
        self.base_optimizer = base_optimizer
        self.param_groups = self.base_optimizer.param_groups
        for group in self.param_groups:
            group.setdefault("rho", rho)

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        # ONE norm over all groups (the blog takes one per group: a different ascent).
        grad_norm = sum(p.grad.norm().item() ** 2 for group in self.param_groups
                        for p in group["params"] if p.grad is not None) ** 0.5
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * scale
                p.add_(e_w)
                self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.sub_(self.state[p]["e_w"])
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()


@contextlib.contextmanager
def bn_momentum_zero(model: nn.Module):
    """The common BN fix for the second pass: momentum 0, so the running statistics keep their
    values (the batch still counts in num_batches_tracked)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    try:
        for m in layers:
            m.momentum = 0
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum
