"""Sharpness-Aware Minimization (Foret et al., 2021), Adaptive SAM (Kwon et al., 2021) and
cheaper variants.

One SAM step is two gradient evaluations:
  1. g = ∇L(w);  ε = ρ·g/‖g‖           (ASAM: ε = ρ·T²g/‖Tg‖, T = |w| + η)
  2. w ← w + ε;  g' = ∇L(w + ε);  w ← w - ε (exact copy, not a subtraction);  base_step(g') at w

‖·‖ is ONE norm over every parameter of every group, as in the paper. Nothing here reads a
tensor back to the host, so a step stays asynchronous on a GPU and capturable in a CUDA graph.

SAM(interval=k) runs the ascent and second pass on one step in k (MosaicML Composer's SAM);
the others are plain base-optimizer steps: (k+1)/k evaluations per step, counted in
``grad_evals``. LookSAM and MomentumSAM live in samkit.optim.variants.
"""
from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

import torch
from torch.optim import Optimizer

from samkit.optim.bn import bn_frozen
from samkit.optim.ops import foreach_scale_add_, global_norm, scaler_step, unscaled
from samkit.optim.state import SAMState

# torch.compile: Dynamo (torch 2.14) silently drops attribute writes on torch.optim.Optimizer
# objects, so a traced step forgot w (``_perturbed``), the step count and ``grad_evals``, and
# updated as if ε were never undone. The methods that move weights or keep step state run
# eagerly instead: a graph break, the model's forward and backward around them still compile.
# With fullgraph=True this is the error the user sees, hence the advice in it.
eager_under_compile = torch.compiler.disable(
    reason="samkit: SAM's first_step/second_step/restore run eagerly (Dynamo drops attribute "
           "writes on optimizer objects, which would silently leave w + eps in place); compile "
           "the model, or your step without fullgraph=True")


class SAM(SAMState, Optimizer):
    """SAM / ASAM wrapper around any ``torch.optim`` optimizer.

    ``base_optimizer`` is an optimizer class, built on SAM's own param_groups with
    ``**base_kwargs`` (so per-group ``rho``/``lr``/``weight_decay`` all work), or an optimizer
    instance already built on the same parameters (the style of the blog seed), whose
    param_groups SAM then shares.

    ASAM (``adaptive=True``) gives T = |w| + η to every parameter of a group; ``adaptive``
    is a per-group key. The official ASAM code (Kwon et al., SamsungLabs/ASAM, asam.py) gives
    T only to parameters whose name contains "weight" (the others are perturbed along g, and
    all share the one norm): pass those in a group of their own with ``"adaptive": False`` to
    get its rule (README, "SAM as a drop-in"). davda54/sam's ASAM has T = |w|: ``eta=0``.

    ``interval=k`` (the ``interval`` of MosaicML Composer's SAM): only steps k, 2k, 3k, ...
    (counting from 1) take the ascent and the second pass; the other steps are plain
    base-optimizer steps with the gradient at w, and need ONE forward/backward. ``interval=1``
    (the default) is SAM on every step.

    Use either ``step(closure, model=model)`` (``model`` freezes BatchNorm statistics in the
    second pass; see ``step``) or the explicit two-pass form::

        loss_fn(model(x), y).backward()
        if opt.first_step(zero_grad=True):  # False: this step needs no second pass
            with bn_frozen(model):
                loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)

    ``opt.needs_second_pass`` tells the same before the first pass. A loop that ignores the
    answer (runs the second pass every step) still trains correctly, just without the saving:
    on a skipped step ``first_step(zero_grad=True)`` sets the gradient aside and
    ``second_step`` puts it back over whatever the extra pass computed.

    ``grad_evals`` counts the forward/backward passes the steps so far required (2 per SAM
    step, 1 per plain step); it is saved in ``state_dict``, with the step count that picks
    the SAM steps (``state_dict`` and pickling: samkit.optim.state).
    """

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.05, adaptive=False,
                 eta=0.01, interval=1, **base_kwargs):
        if not (isinstance(rho, (int, float)) and rho >= 0):
            raise ValueError(f"SAM: rho must be a number >= 0, got {rho!r}")
        if not (isinstance(eta, (int, float)) and eta >= 0):
            raise ValueError(f"SAM: eta must be a number >= 0, got {eta!r}")
        if not (isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1):
            raise ValueError(f"SAM: interval must be an int >= 1, got {interval!r}")
        # Per-group keys with SAM defaults; a subclass adds its own (LookSAM: alpha).
        sam_defaults = dict(rho=rho, adaptive=bool(adaptive), eta=eta,
                            **getattr(self, "_extra_defaults", {}))
        self._sam_keys = tuple(sam_defaults)
        self.interval = interval
        self.grad_evals = 0  # forward/backward passes the completed steps required
        self._sam_steps = 0  # completed steps: picks the steps that take the ascent
        self._stashed = []  # gradients set aside on a skipped step (see the class docstring)
        if isinstance(base_optimizer, Optimizer):
            if base_kwargs:
                raise ValueError("SAM: pass base_kwargs only with an optimizer class, "
                                 f"not with an optimizer instance (got {sorted(base_kwargs)})")
            super().__init__(params, sam_defaults)
            self._check_same_params(base_optimizer)
            self._copy_sam_keys(base_optimizer)
            self.base_optimizer = base_optimizer
        elif isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer):
            super().__init__(params, dict(sam_defaults, **base_kwargs))
            self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        else:
            raise TypeError("SAM: base_optimizer must be a torch.optim.Optimizer subclass or "
                            f"instance, got {base_optimizer!r}")
        # One list of group dicts shared by SAM and its base: an LR scheduler or a user edit on
        # either object is seen by both.
        for group in self.base_optimizer.param_groups:
            for key in self._sam_keys:
                group.setdefault(key, sam_defaults[key])
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.defaults.update(sam_defaults)

    @property
    def needs_second_pass(self):
        """Whether the current step takes the ascent and a second forward/backward at w + ε
        (valid from the start of a step until ``second_step`` ends it)."""
        return self.interval == 1 or (self._sam_steps + 1) % self.interval == 0

    def _check_same_params(self, base):
        mine = {id(p) for g in self.param_groups for p in g["params"]}
        theirs = {id(p) for g in base.param_groups for p in g["params"]}
        if mine != theirs:
            raise ValueError("SAM: the base optimizer instance must hold the same parameters "
                             "as SAM itself")

    def _copy_sam_keys(self, base):
        """Give each group of ``base`` the rho/adaptive/eta of SAM's group holding its params
        (a key the base group already has wins), so per-group values are not dropped."""
        owner = {id(p): g for g in self.param_groups for p in g["params"]}
        for group in base.param_groups:
            for key in self._sam_keys:
                values = {owner[id(p)][key] for p in group["params"]}
                if key in group or not values:
                    continue
                if len(values) > 1:
                    raise ValueError(f"SAM: a param group of the base optimizer mixes {key} values "
                                     f"{sorted(values)}; give both optimizers the same groups")
                group[key] = values.pop()

    def _groups(self):
        """SAM's param groups, each with its rho/adaptive/eta: a group added later through
        ``base_optimizer.add_param_group`` gets SAM's defaults here (``add_param_group`` on SAM
        itself already fills them from ``self.defaults``)."""
        for group in self.param_groups:
            for key in self._sam_keys:
                if key not in group:
                    group[key] = self.defaults[key]
            yield group

    def _grads(self):
        """(group, params, grads) for every group, skipping parameters without a gradient."""
        for group in self._groups():
            ps = [p for p in group["params"] if p.grad is not None]
            if ps:
                # A sparse gradient (nn.Embedding(sparse=True)) repeats an index once per
                # occurrence of a token: coalesce (sum duplicates) before taking its norm.
                yield group, ps, [p.grad.coalesce() if p.grad.is_sparse else p.grad for p in ps]

    @eager_under_compile
    @torch.no_grad()
    def first_step(self, zero_grad=False, grad_scaler=None):
        """Move to the adversarial point w + ε, remembering w. Returns ``needs_second_pass``:
        True when the caller should now run the second forward/backward (at w + ε).

        On a step that skips the ascent (``interval``) nothing moves and False is returned;
        ``zero_grad=True`` then sets the gradient aside for ``second_step`` instead of
        dropping it.

        With an fp16 ``torch.amp.GradScaler``, pass it here and to ``second_step``: the
        gradients are unscaled first (ε does not depend on the loss scale, but the overflow
        check does), and a non-finite gradient gives ε = 0 instead of poisoning the weights.
        This pass is unscaled under a key of SAM's own, so ``grad_scaler.unscale_(opt)`` stays
        free for the second pass: unscale, clip, then ``second_step`` (the usual AMP recipe).
        """
        self._first_pass_key = None
        if not self.needs_second_pass:
            if zero_grad:
                self._stash_grads()
            return False
        if grad_scaler is not None:
            # GradScaler keys its per-optimizer state by id(): this object lives until
            # second_step, which merges this pass's overflow flags into the update's.
            self._first_pass_key = SimpleNamespace(param_groups=self.param_groups)
            grad_scaler.unscale_(self._first_pass_key)
        grads = list(self._grads())
        self._first_pass(grads)
        groups = []
        for group, ps, gs in grads:
            t = None
            if group["adaptive"]:  # ASAM: T = |w| + η, norm taken of T·g
                t = torch._foreach_add(torch._foreach_abs(ps), group["eta"])
                gs = torch._foreach_mul(t, gs)
            groups.append((group, ps, gs, t))
        self._ascend(groups, grad_scaler=grad_scaler)
        if zero_grad:
            self.zero_grad()
        return True

    def _first_pass(self, grads):
        """Hook: sees (group, params, grads) of the first pass of a SAM step (LookSAM keeps g)."""

    def _ascend(self, groups, grad_scaler=None, sign=1.0):
        """w ← w + sign·ρ_group·ε_dir/‖dir‖ for (group, params, dirs, T) in ``groups``, with ONE
        norm over all dirs, remembering w; ε_dir = dir, or T·dir for ASAM (T not None)."""
        self._perturbed = []
        if not groups:
            return
        norm = global_norm([gs for _, _, gs, _ in groups])
        # A zero gradient gives ε = 0 (not NaN); so does an inf/NaN one: inv = 0 here, and with a
        # grad_scaler (where overflow is routine) the non-finite entries are zeroed below, since
        # inf·0 is NaN. Without one, a non-finite gradient spoils the step as in plain SGD.
        inv = torch.where(torch.isfinite(norm), 1.0 / (norm + 1e-12), torch.zeros_like(norm))
        for group, ps, gs, t in groups:
            saved = [self._saved_weights(p) for p in ps]
            eps = gs if t is None else torch._foreach_mul(t, gs)  # ASAM: T·(T·g)
            if grad_scaler is not None:
                eps = [torch.nan_to_num(e, nan=0.0, posinf=0.0, neginf=0.0) for e in eps]
            scale = (sign * group["rho"]) * inv  # sign·rho is exactly rho for SAM (sign=1)
            if _all_on_cpu(ps, scale):
                # Write w + ε into the spare buffer and swap storages: w itself is kept, no
                # copy made (two full weight copies are ~4% of a small model's CPU step).
                for p, buf, e in zip(ps, saved, eps):
                    if e.is_sparse:  # ε is nonzero on the looked-up rows only
                        buf.copy_(p.data).add_(e * scale)
                    else:
                        torch.addcmul(p.data, e, scale, out=buf)
                    p.data, self.state[p]["w"] = buf, p.data
                self._perturbed.append((ps, None))
            else:
                # On an accelerator: copy, so every tensor keeps its address (CUDA graphs).
                torch._foreach_copy_(saved, ps)
                foreach_scale_add_(ps, eps, scale)
                self._perturbed.append((ps, saved))

    def _stash_grads(self):
        # Move, not copy: the tensors themselves are set aside and the .grad slots emptied.
        self._stashed = [(p, p.grad) for g in self.param_groups for p in g["params"]
                         if p.grad is not None]
        for p, _ in self._stashed:
            p.grad = None

    def _saved_weights(self, p):
        # A buffer kept across steps: no allocation per step (and CUDA-graph friendly). Made
        # anew when the parameter changed under it (model.double(), .to(device), channels_last):
        # the swap path would hand the parameter the old dtype/device/layout, the copy path
        # would round w to the old dtype.
        state = self.state[p]
        w = state.get("w")
        if (w is None or w.shape != p.shape or w.dtype != p.dtype or w.device != p.device
                or w.stride() != p.stride()):
            state["w"] = torch.empty_like(p, memory_format=torch.preserve_format)
        return state["w"]

    @eager_under_compile
    @torch.no_grad()
    def restore(self):
        """Put back the weights saved by ``first_step`` (exactly: a copy, not w + ε - ε)."""
        for ps, saved in getattr(self, "_perturbed", ()):
            if saved is None:  # CPU: swap the kept storage back; the other is next step's spare
                for p in ps:
                    p.data, self.state[p]["w"] = self.state[p]["w"], p.data
            else:
                torch._foreach_copy_(ps, saved)
        self._perturbed = []

    @eager_under_compile
    @torch.no_grad()
    def second_step(self, zero_grad=False, grad_scaler=None):
        """Return to w and apply the base optimizer with the gradient taken at w + ε (on a
        step that skipped the ascent: with the gradient at w). Ends the step.

        With ``grad_scaler`` the update goes through ``grad_scaler.step`` and is skipped when
        either pass overflowed; call ``grad_scaler.update()`` afterwards as usual. To clip,
        call ``grad_scaler.unscale_(opt)`` and clip before this, as with any optimizer.
        """
        if self._stashed and grad_scaler is not None and unscaled(grad_scaler, self):
            # The gradient the update uses was set aside: the caller's clipping saw none.
            raise RuntimeError(
                f"{type(self).__name__}: grad_scaler.unscale_(opt) was called on a step without "
                "the ascent (interval), after first_step(zero_grad=True) had set its gradient "
                "aside, so unscale_ and any clipping saw no gradient. To clip on such steps, "
                "call first_step(zero_grad=opt.needs_second_pass, ...): it then leaves the "
                "gradient in place")
        sam_step = self.needs_second_pass
        self.restore()
        for p, g in self._stashed:  # a skipped step's gradient at w (see first_step)
            p.grad = g
        self._stashed = []
        self._before_base_step(sam_step)
        if grad_scaler is None:
            self.base_optimizer.step()
        else:
            scaler_step(grad_scaler, self.base_optimizer, self,
                        getattr(self, "_first_pass_key", None))
        self._first_pass_key = None
        # An LR scheduler watches ``step`` for this flag; second_step is the step of the
        # two-pass form, so mark it too (else every epoch warns "lr_scheduler.step() before
        # optimizer.step()").
        self._opt_called = True
        self._sam_steps += 1
        self.grad_evals += 2 if sam_step else 1
        if zero_grad:
            self.zero_grad()

    def _before_base_step(self, sam_step):
        """Hook: may change the gradients the base optimizer is about to use (LookSAM)."""

    def step(self, closure=None, model=None):
        """One full SAM step. ``closure`` runs forward + backward and returns the loss.

        If no parameter holds a gradient, the closure runs the first pass too: it is called
        twice (once on a step that skips the ascent), and the first pass's loss is returned.
        If gradients are there (not None), they are the first pass: the loop of davda54/sam
        and pytorch_optimizer, ``loss.backward(); opt.step(closure)``, costs its two passes,
        the closure runs only at w + ε, and None is returned, as there. The step ends with
        every ``.grad`` set to None, so the next step cannot take this one's for its first
        pass.

        ``model``: the module the closure runs. When given, the second (perturbed) pass runs
        under ``bn_frozen(model)``, so BatchNorm running statistics are updated once per step,
        at w, exactly as in the two-pass form shown in the class docstring. Without it (the
        default, and the only choice before) BatchNorm layers update their statistics in both
        passes, the second time at w + ε.
        """
        if closure is None:
            raise RuntimeError(f"{type(self).__name__}.step needs a closure (forward + backward, "
                               "returning the loss); or call first_step() and second_step() "
                               "yourself")
        loss = None
        if not any(p.grad is not None for p in self._params()):
            with torch.enable_grad():
                loss = closure()
        if self.first_step(zero_grad=True):
            with torch.enable_grad(), (bn_frozen(model) if model is not None else nullcontext()):
                closure()
        self.second_step(zero_grad=True)
        return loss

    def zero_grad(self, set_to_none: bool = True):
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self):
        return f"{type(self).__name__}({self.base_optimizer!r})"


def _all_on_cpu(params, scale):
    return scale.device.type == "cpu" and all(p.device.type == "cpu" for p in params)
