"""Sparsity at initialisation: random pruning and SNIP (Lee et al., 2019).

Used for the paper's sparse-wide vs small-dense comparison (Shin et al., Sec. 5): a wide model
is pruned once, before training, down to the parameter count of a small dense one, and its
pruned weights then stay exactly zero for the whole run.

Masks are bool tensors keyed by parameter name (e.g. ``"layers.0.0.conv1.weight"``); True
means "keep". Only Conv/Linear weights are pruned; biases and norm layers stay dense.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from samkit.models import count_params

PRUNERS = ("random", "snip")
MASK_SUFFIX = "_mask"  # the mask of ``weight`` is the buffer ``weight_mask`` on the same module


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable weights of Conv/Linear layers, by name (not biases, not norm layers)."""
    out = {}
    for mod_name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m.weight.requires_grad:
            out[f"{mod_name}.weight" if mod_name else "weight"] = m.weight
    return out


def random_masks(model: nn.Module, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """Per layer: each prunable tensor keeps round((1 - sparsity)·numel) entries at random."""
    _check_sparsity(sparsity)
    g = torch.Generator().manual_seed(seed)  # CPU generator: same masks on any device
    masks = {}
    for name, w in prunable(model).items():
        keep = round((1 - sparsity) * w.numel())
        flat = torch.zeros(w.numel(), dtype=torch.bool)
        flat[torch.randperm(w.numel(), generator=g)[:keep]] = True
        masks[name] = flat.view(w.shape).to(w.device)
    return masks


def snip_masks(model: nn.Module, loss_fn, x, y, sparsity: float) -> dict[str, torch.Tensor]:
    """SNIP: keep the global top-k of |w ⊙ ∂L/∂w| over all prunable weights, on one batch.

    k = round((1 - sparsity)·total prunable entries). The model's weights, ``.grad`` and
    buffers (BatchNorm running stats) are left exactly as they were.
    """
    _check_sparsity(sparsity)
    weights = prunable(model)
    if not weights:
        raise ValueError("snip_masks: the model has no Conv/Linear weights to prune")
    # Cloned buffers take the BatchNorm running-stat updates of this forward, not the model's.
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    with torch.enable_grad():
        loss = loss_fn(functional_call(model, buffers, (x,)), y)
        grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
    scores = [(w.detach() * g).abs().flatten() if g is not None
              else torch.zeros(w.numel(), device=w.device)
              for w, g in zip(weights.values(), grads)]
    flat = torch.cat([s.to(scores[0].device) for s in scores])
    keep = round((1 - sparsity) * flat.numel())
    kept = torch.zeros_like(flat, dtype=torch.bool)
    kept[torch.topk(flat, keep, sorted=False).indices] = True
    masks = {}
    for (name, w), part in zip(weights.items(), kept.split([w.numel() for w in weights.values()])):
        masks[name] = part.view(w.shape).to(w.device)
    return masks


def sparsity_for_params(model: nn.Module, target_params: int) -> float:
    """Sparsity at which the pruned model uses ≈ ``target_params`` parameters.

    Only prunable weights lose entries; everything else counts in full, also the BatchNorm
    biases that start at exactly 0 (``count_params(nonzero=True)`` reads lower by those until
    the first step). Per-layer rounding (random pruning) can miss the target by up to half an
    entry per layer; SNIP's global top-k by half an entry.
    """
    total = count_params(model)
    n_prunable = sum(w.numel() for w in prunable(model).values())
    dense = total - n_prunable
    if not dense < target_params <= total:
        raise ValueError(f"sparsity_for_params: target_params={target_params} is unreachable; "
                         f"allowed: {dense} < target_params <= {total} (the model has {dense} "
                         f"non-prunable and {n_prunable} prunable parameters)")
    return 1 - (target_params - dense) / n_prunable


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights now and keep them exactly zero through any training.

    Each masked weight gets a gradient hook that zeroes the masked gradient entries, so every
    update built from the gradient leaves a zero weight at zero: SGD momentum and weight decay
    (wd·0 = 0), Adam/AdamW moments, SAM's ε = ρg/‖g‖ and ASAM's T²g. The mask is a buffer
    ``<weight>_mask`` on the layer, so it moves with ``.to(device)`` and is in the state_dict.

    Resuming: rebuild the model, call ``apply_masks`` again (same masks, or
    ``saved_masks(state_dict)``), then ``load_state_dict``; the saved mask is loaded into the
    buffer, and the hook reads the buffer at call time, so it follows. A ``copy.deepcopy`` of
    the model loses the hooks (torch copies none): re-apply the masks on a copy that trains.
    """
    modules = dict(model.named_modules())
    weights = prunable(model)
    for name, mask in masks.items():
        if name not in weights:
            raise ValueError(f"apply_masks: {name!r} is not a prunable weight of the model; "
                             f"allowed: {', '.join(weights) or '(none)'}")
        w = weights[name]
        if tuple(mask.shape) != tuple(w.shape):
            raise ValueError(f"apply_masks: mask {name!r} has shape {tuple(mask.shape)}, "
                             f"the weight has {tuple(w.shape)}")
        mod_name = name.rpartition(".")[0]
        module = modules[mod_name]
        module.register_buffer("weight" + MASK_SUFFIX, mask.to(w.device, torch.bool).clone())
        with torch.no_grad():
            w.mul_(module.weight_mask)
        # The marker lives on the tensor, like the hook: copy.deepcopy drops both (torch copies
        # no tensor hooks), so re-applying on a deep copy arms it, and twice does not stack.
        if not getattr(w, "_has_mask_hook", False):
            w.register_hook(_grad_masker(module))
            w._has_mask_hook = True


def _grad_masker(module: nn.Module):
    def hook(grad):
        # masked_fill, not grad * mask: a NaN/inf gradient entry still becomes exactly 0.
        return grad.masked_fill(~module.weight_mask, 0)
    return hook


def saved_masks(state_dict: dict) -> dict[str, torch.Tensor]:
    """The masks stored in a state_dict of a pruned model (to re-apply them on resume
    without recomputing SNIP)."""
    end = "weight" + MASK_SUFFIX
    return {k[:-len(MASK_SUFFIX)]: v for k, v in state_dict.items() if k.endswith(end)}


def prune(model: nn.Module, method: str, sparsity: float, seed: int, loss_fn=None, x=None,
          y=None) -> dict[str, torch.Tensor]:
    """Compute masks with ``method`` ("random" or "snip"), apply them, and return them.

    SNIP needs ``loss_fn``, ``x``, ``y`` (one batch); ``seed`` is used by random pruning only.
    """
    if method not in PRUNERS:
        raise ValueError(f"prune: unknown method {method!r}; allowed: {', '.join(PRUNERS)}")
    if method == "random":
        masks = random_masks(model, sparsity, seed)
    else:
        if loss_fn is None or x is None or y is None:
            raise ValueError("prune: method 'snip' needs loss_fn, x and y (one batch of data)")
        masks = snip_masks(model, loss_fn, x, y, sparsity)
    apply_masks(model, masks)
    return masks


def _check_sparsity(sparsity):
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) \
            or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
