"""Cheaper SAMs built on samkit.optim.sam.SAM (each counts its gradient evaluations in ``grad_evals``):

  LookSAM      SAM every k steps, in between the plain gradient plus a reused component of the
               last SAM gradient (Liu et al., CVPR 2022): (k+1)/k evaluations per step.
  MomentumSAM  ε from the SGD momentum buffer, before the only pass (Becker et al., 2023):
               1 evaluation per step.
"""
from __future__ import annotations

import torch

from samkit.optim.sam import SAM, eager_under_compile
from samkit.optim.ops import global_norm


class LookSAM(SAM):
    """LookSAM: Liu, Mai, Chen, Hsieh, You, "Towards Efficient and Scalable Sharpness-Aware
    Minimization", CVPR 2022 (arXiv:2203.02714), Algorithm 1.

    Steps 0, k, 2k, ... are full SAM steps (two forward/backward passes). Each keeps the part
    of the SAM gradient g_s = ∇L(w + ε) orthogonal to the plain gradient g = ∇L(w)::

        g_v = g_s − ‖g_s‖·cos θ·g/‖g‖,  cos θ = ⟨g, g_s⟩/(‖g‖‖g_s‖)   (= g_s − ⟨g, g_s⟩/‖g‖²·g)

    and steps with g_s. The k − 1 steps in between take ONE forward/backward and step with::

        g + α·(‖g‖/‖g_v‖)·g_v

    (the paper observes that g_v changes much more slowly from step to step than the part of
    g_s parallel to g, so it is reused, rescaled to the current ‖g‖). Norms and ⟨·,·⟩ run over all parameters at once, as SAM's ε;
    ``alpha`` is a per-group key like ``rho``. ``adaptive=True`` builds ε as ASAM does (not in
    the paper; the decomposition is unchanged). The two-pass form and ``step(closure, model)``
    are SAM's: ``first_step`` returns True on the SAM steps. g_v is saved in ``state_dict``.
    Not supported: a GradScaler (an overflowed SAM step would leave a non-finite g_v for the
    next k − 1 steps) and sparse gradients.
    """

    _PERSISTENT = ("g_v",)

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.05, k=5, alpha=0.7,
                 adaptive=False, eta=0.01, **base_kwargs):
        if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            raise ValueError(f"LookSAM: k must be an int >= 1, got {k!r}")
        if not (isinstance(alpha, (int, float)) and alpha >= 0):
            raise ValueError(f"LookSAM: alpha must be a number >= 0, got {alpha!r}")
        if "interval" in base_kwargs:
            raise TypeError("LookSAM: the SAM steps are every k-th; pass k, not interval")
        self._extra_defaults = dict(alpha=alpha)
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, eta=eta,
                         interval=k, **base_kwargs)

    @property
    def k(self):
        return self.interval

    @property
    def needs_second_pass(self):
        # Steps 0, k, 2k, ...: the first step must be a SAM step, the others reuse its g_v.
        return self._sam_steps % self.interval == 0

    def first_step(self, zero_grad=False, grad_scaler=None):
        if grad_scaler is not None:
            raise ValueError("LookSAM: grad_scaler is not supported (an overflowed SAM step "
                             "would leave a non-finite g_v for the next k - 1 steps)")
        return super().first_step(zero_grad=zero_grad)

    def second_step(self, zero_grad=False, grad_scaler=None):
        if grad_scaler is not None:
            raise ValueError("LookSAM: grad_scaler is not supported (an overflowed SAM step "
                             "would leave a non-finite g_v for the next k - 1 steps)")
        super().second_step(zero_grad=zero_grad)

    def _first_pass(self, grads):
        # Keep g = ∇L(w) in the g_v buffer until second_step turns it into g_v; a parameter
        # without a gradient now drops its old g_v (it has no part in this SAM step).
        with_grad = set()
        for _, ps, gs in grads:
            if any(g.is_sparse for g in gs):
                raise ValueError("LookSAM: sparse gradients are not supported")
            torch._foreach_copy_([self._buffer(p, "g_v") for p in ps], gs)
            with_grad.update(ps)
        for p in self._params():
            if p not in with_grad and p in self.state:
                self.state[p].pop("g_v", None)

    def _buffer(self, p, key):
        state = self.state[p]
        b = state.get(key)
        if b is None or b.shape != p.shape or b.dtype != p.dtype or b.device != p.device:
            state[key] = b = torch.zeros_like(p)
        return b

    def _before_base_step(self, sam_step):
        pairs = [(group, p) for group in self._groups() for p in group["params"]
                 if p.grad is not None and "g_v" in self.state.get(p, {})]
        if not pairs:
            return
        gs = [p.grad for _, p in pairs]
        vs = [self.state[p]["g_v"] for _, p in pairs]
        if sam_step:  # p.grad is g_s, vs hold g: g_v = g_s − (⟨g, g_s⟩/‖g‖²)·g, in place
            gg = global_norm([vs]) ** 2
            dot = _global_dot(gs, vs, gg.dtype, gg.device)
            c = torch.where(gg > 0, dot / gg, torch.zeros_like(gg))  # g = 0: g_v = g_s
            for v, g in zip(vs, gs):
                v.mul_(-c.to(v.device)).add_(g)
            return
        # In between: g ← g + α·(‖g‖/‖g_v‖)·g_v (one forward/backward). ‖g‖ over every
        # gradient of this step, ‖g_v‖ over every kept g_v.
        g_norm = global_norm([[p.grad for g in self.param_groups for p in g["params"]
                               if p.grad is not None]])
        v_norm = global_norm([[s["g_v"] for s in self.state.values() if "g_v" in s]])
        ratio = torch.where(v_norm > 0, g_norm / v_norm, torch.zeros_like(v_norm))
        for (group, _), g, v in zip(pairs, gs, vs):
            g.addcmul_(v, (group["alpha"] * ratio).to(g.device))  # fused: no temporary α·g_v


class MomentumSAM(SAM):
    """Momentum-SAM (MSAM): Becker, Altrock, Risse, "Momentum-SAM: Sharpness Aware Minimization
    without Computational Overhead", 2023 (arXiv:2401.12033); the rule of the authors' code.

    The perturbation follows the NEGATIVE SGD momentum buffer v (torch's convention: v ← μv + g,
    w ← w − lr·v) instead of a fresh gradient, so it is known before the forward pass and a
    step costs ONE forward/backward::

        w̃ = w − ρ·v/‖v‖;  g = ∇L(w̃);  w ← w (exact copy back);  SGD-momentum step with g at w

    The first step (no momentum yet) is a plain SGD step. ``base_optimizer`` must be
    ``torch.optim.SGD`` (class or instance) with momentum > 0; ``rho`` (per group, default
    0.3 as in the authors' code) is the radius. Weight decay is applied by the base at w,
    whereas the authors' code adds it at w̃ (a difference of weight_decay·ρ per step).

    Use ``step(closure)`` or::

        opt.first_step(zero_grad=True)        # to w̃, BEFORE the forward pass; returns False
        loss_fn(model(x), y).backward()       # the only pass (BN statistics update here, at w̃)
        opt.second_step(zero_grad=True)       # back to w, SGD step with ∇L(w̃)

    Between steps the model holds the unperturbed w (evaluate and checkpoint as usual).
    """

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.3, **base_kwargs):
        for key in ("adaptive", "eta", "interval"):
            if key in base_kwargs:
                raise TypeError(f"MomentumSAM: no {key!r} option (one pass per step, ε from the "
                                "momentum buffer)")
        base_cls = base_optimizer if isinstance(base_optimizer, type) else type(base_optimizer)
        if not issubclass(base_cls, torch.optim.SGD):
            raise TypeError("MomentumSAM: base_optimizer must be torch.optim.SGD (class or "
                            "instance): the perturbation follows its momentum buffer; got "
                            f"{base_optimizer!r}")
        super().__init__(params, base_optimizer, rho=rho, **base_kwargs)
        for i, group in enumerate(self.param_groups):
            if not group["momentum"] > 0:
                raise ValueError("MomentumSAM: every param group needs momentum > 0 (the "
                                 f"perturbation follows the momentum buffer); group {i} has "
                                 f"momentum={group['momentum']!r}")

    @property
    def needs_second_pass(self):
        return False

    @eager_under_compile  # it moves the weights and remembers w, as SAM's (see samkit.optim.sam)
    @torch.no_grad()
    def first_step(self, zero_grad=False, grad_scaler=None):
        """Move to w̃ = w − ρ·v/‖v‖ (call BEFORE the forward pass), remembering w. Returns
        False: the step needs no second pass. ``grad_scaler`` is accepted for a uniform loop
        and unused here (no gradient is read); pass it to ``second_step``."""
        groups = []
        for group in self._groups():
            ps = [p for p in group["params"]
                  if self.base_optimizer.state.get(p, {}).get("momentum_buffer") is not None]
            if ps:
                vs = [self.base_optimizer.state[p]["momentum_buffer"] for p in ps]
                groups.append((group, ps, vs, None))
        self._ascend(groups, sign=-1.0)
        if zero_grad:
            self.zero_grad()
        return False

    def step(self, closure=None, model=None):
        """One MSAM step: ``first_step``, ``closure()`` (forward + backward at w̃, returning the
        loss), ``second_step``. Returns the loss at w̃. ``model`` is accepted for a uniform
        loop and has no effect: the only pass is the one BatchNorm statistics come from."""
        if closure is None:
            raise RuntimeError("MomentumSAM.step needs a closure (forward + backward, returning "
                               "the loss); or call first_step() before the forward pass and "
                               "second_step() after the backward")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss


def _global_dot(xs, ys, dtype, device):
    """Σ_i ⟨xs_i, ys_i⟩ over all tensor pairs, in ``dtype``, on ``device`` (no host sync)."""
    return torch.stack([torch.sum(x * y, dtype=dtype).to(device) for x, y in zip(xs, ys)]).sum()
