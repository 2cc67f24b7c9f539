"""Hessian sharpness measures from Hessian-vector products (torch.func, forward-over-reverse).

H is the Hessian of the mean loss over a fixed set (x, y) w.r.t. all trainable parameters,
flattened in ``model.named_parameters()`` order. ``loss_fn(output, target)`` must return the
MEAN loss over the batch (as ``F.cross_entropy``/``F.mse_loss`` do by default): means over
chunks and per-example losses then combine exactly.

Measurement runs in eval mode (BatchNorm uses its running stats, so the loss is a fixed
function of the weights and per-example Hessians are well defined) on copies of the buffers;
the model's training flags, parameters, buffers and ``.grad`` are left as they were.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap


@contextmanager
def _eval_mode(model: nn.Module):
    # Per-module flags: model.train(flag) afterwards would lose a mixed train/eval setup.
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class _Flat:
    """The model as a function of one flat vector of its trainable parameters."""

    def __init__(self, model: nn.Module, loss_fn):
        self.model, self.loss_fn = model, loss_fn
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("hessian: the model has no trainable parameters")
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.w = torch.cat([p.detach().reshape(-1) for _, p in named])
        # Frozen parameters and (cloned) buffers are fixed inputs, never written back.
        self.fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        self.fixed.update({n: b.detach().clone() for n, b in model.named_buffers()})

    def loss(self, w, x, y):
        parts = w.split([math.prod(s) for s in self.shapes])
        params = {n: t.reshape(s) for n, t, s in zip(self.names, parts, self.shapes)}
        return self.loss_fn(functional_call(self.model, (params, self.fixed), (x,)), y)

    def hvp(self, v, x, y):
        """H·v for the mean loss over (x, y): forward-mode derivative of the gradient."""
        if y.is_floating_point():
            # pytorch#123996: jvp(grad(F.mse_loss)) fails ("ZeroTensors are immutable") on a
            # target without tangent; an explicit zero tangent avoids it, same result.
            return jvp(lambda w, t: grad(self.loss)(w, x, t), (self.w, y),
                       (v, torch.zeros_like(y)))[1]
        return jvp(lambda w: grad(self.loss)(w, x, y), (self.w,), (v,))[1]

    def example_hvp(self, v, xi, yi):
        """H_i·v for ONE example (xi, yi without batch dim), as a batch of one."""
        return self.hvp(v, xi.unsqueeze(0), yi.unsqueeze(0))


def _chunks(x, y, batch_size):
    n = len(x)
    size = n if batch_size is None else batch_size
    for i in range(0, n, size):
        yield x[i:i + size], y[i:i + size], min(size, n - i) / n


def hvp_fn(model: nn.Module, loss_fn, x, y, batch_size: int | None = None
           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Flat vector v ↦ H·v (flat), H taken at the weights of the moment this is called.

    ``batch_size`` bounds memory: the data go through in chunks whose HVPs are averaged,
    weighted by chunk size (None: all at once)."""
    return _make_hvp(model, loss_fn, x, y, batch_size)[1]


def _make_hvp(model, loss_fn, x, y, batch_size):
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"hessian: x and y must be non-empty and of equal length, got "
                         f"{len(x)} and {len(y)}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"hessian: batch_size must be a positive integer or None, "
                         f"got {batch_size!r}")
    f = _Flat(model, loss_fn)

    def hvp(v):
        with _eval_mode(model):
            return sum(frac * f.hvp(v, xc, yc) for xc, yc, frac in _chunks(x, y, batch_size))
    return f, hvp


def _power_iteration(matvec, v, iters, tol):
    """Rayleigh quotient of the dominant (largest-|λ|) eigenvector of a symmetric operator."""
    if iters < 1:
        raise ValueError(f"hessian: iters must be a positive integer, got {iters!r}")
    v = v / v.norm()
    lam = None
    for _ in range(iters):
        hv = matvec(v)
        new = torch.dot(v, hv).item()
        norm = hv.norm()
        if norm == 0:  # v in the null space: the operator is (numerically) zero here
            return 0.0
        v = hv / norm
        done = lam is not None and abs(new - lam) <= tol * abs(new)
        lam = new
        if done:
            break
    return lam


def _random_vector(like, g, rademacher=False):
    # Drawn on the CPU generator ``g``: the same vectors on any device.
    if rademacher:
        v = torch.randint(0, 2, like.shape, generator=g).to(like.dtype) * 2 - 1
    else:
        v = torch.randn(like.shape, generator=g, dtype=like.dtype)
    return v.to(like.device)


def top_eigenvalue(model, loss_fn, x, y, iters=100, tol=1e-4, seed=0,
                   batch_size: int | None = None) -> float:
    """λmax(H), the largest (most positive) eigenvalue, by power iteration.

    Power iteration finds the largest |λ|. If that one is negative, a second run on the
    positive semi-definite H − μI (μ the negative one) finds λmax − μ. ``tol`` is the relative
    change of the Rayleigh quotient between iterations at which it stops. (If λmin ≈ −λmax the
    first run does not converge; such Hessians are not the minima measured here.)
    """
    f, hvp = _make_hvp(model, loss_fn, x, y, batch_size)
    v0 = _random_vector(f.w, torch.Generator().manual_seed(seed))
    mu = _power_iteration(hvp, v0, iters, tol)
    if mu >= 0:
        return mu
    return _power_iteration(lambda v: hvp(v) - mu * v, v0, iters, tol) + mu


def hessian_trace(model, loss_fn, x, y, samples=64, seed=0, batch_size: int | None = None,
                  vectors_per_pass: int = 1) -> float:
    """tr(H) by Hutchinson's estimator, mean of vᵀHv over Rademacher vectors v (unbiased; its
    variance is 2·Σ_{i≠j} H_ij² per sample).

    ``vectors_per_pass`` > 1 vmaps that many HVPs into one pass: much faster for small models,
    at that many times the activation memory.
    """
    for key, val in (("samples", samples), ("vectors_per_pass", vectors_per_pass)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"hessian_trace: {key} must be a positive integer, got {val!r}")
    f, hvp = _make_hvp(model, loss_fn, x, y, batch_size)
    many = vmap(hvp)
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for start in range(0, samples, vectors_per_pass):
        k = min(vectors_per_pass, samples - start)
        vs = torch.stack([_random_vector(f.w, g, rademacher=True) for _ in range(k)])
        total += (vs * many(vs)).sum().item()
    return total / samples


def nonuniformity(model, loss_fn, x, y, iters=50, seed=0, tol=1e-4,
                  batch_size: int | None = None) -> float:
    """Non-uniformity of the Hessian (Wu et al., 2018): s = sqrt(λmax(Σ)),
    Σ = (1/n)·Σ_i H_i² − H², H_i the per-example Hessians and H their mean.

    Matrix-free: Σv = mean_i H_i(H_i v) − H(H v), the per-example terms vmapped over
    ``batch_size`` examples at a time (None: all at once). Σ = mean_i (H_i − H)² is positive
    semi-definite, so plain power iteration finds its λmax; a tiny negative value from
    cancellation reads as 0.
    """
    f, hvp = _make_hvp(model, loss_fn, x, y, batch_size)
    example_sq = vmap(lambda v, xi, yi: f.example_hvp(f.example_hvp(v, xi, yi), xi, yi),
                      in_dims=(None, 0, 0))

    def sigma(v):
        with _eval_mode(model):
            second = sum(example_sq(v, xc, yc).sum(0) for xc, yc, _ in _chunks(x, y, batch_size))
        return second / len(x) - hvp(hvp(v))

    v0 = _random_vector(f.w, torch.Generator().manual_seed(seed))
    lam = _power_iteration(sigma, v0, iters, tol)
    return math.sqrt(max(lam, 0.0))


def sharpness(model, loss_fn, x, y, seed=0, batch_size: int | None = None) -> dict:
    """λmax, trace and non-uniformity of the Hessian on (x, y), with the defaults above."""
    return {"lambda_max": top_eigenvalue(model, loss_fn, x, y, seed=seed, batch_size=batch_size),
            "trace": hessian_trace(model, loss_fn, x, y, seed=seed, batch_size=batch_size),
            "nonuniformity": nonuniformity(model, loss_fn, x, y, seed=seed,
                                           batch_size=batch_size),
            "n_samples": len(x)}
