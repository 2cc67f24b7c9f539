"""The tensor operations of a SAM step that are not SAM's own logic: the global gradient norm,
the scaled in-place add of ε, and the GradScaler step over SAM's two passes.

None reads a tensor back to the host, so a step stays asynchronous on a GPU and capturable in a
CUDA graph.
"""
from __future__ import annotations

import torch
from torch.amp.grad_scaler import OptState


def global_norm(tensor_lists):
    """ONE 2-norm over every tensor of every list in ``tensor_lists`` (SAM's ‖g‖ over all
    parameters of all groups), on the first tensor's device. Computed in at least float32 (an
    fp16 norm overflows at 65504), float64 kept as float64; each list's per-tensor norms come
    from one foreach kernel."""
    dtype = torch.float32
    for tensors in tensor_lists:
        for t in tensors:
            dtype = torch.promote_types(dtype, t.dtype)
    norms = [n for tensors in tensor_lists for n in _norms(tensors, dtype)]
    device = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))


def _norms(tensors, dtype):
    """The 2-norm of each tensor, computed in ``dtype``; a sparse one's from its values (it must
    be coalesced), since the sparse norm kernel takes no ``dtype``."""
    if not any(t.is_sparse for t in tensors):
        return torch._foreach_norm(tensors, 2, dtype=dtype)
    return [torch.linalg.vector_norm(t._values() if t.is_sparse else t, dtype=dtype)
            for t in tensors]


def foreach_scale_add_(params, directions, scale):
    """params += scale * directions, with ``scale`` a 0-d device tensor (no host sync)."""
    devices = {p.device for p in params}
    if any(d.is_sparse for d in directions):  # dense += sparse: no fused or foreach kernel
        for p, d in zip(params, directions):
            p.add_(d * scale.to(p.device))
    elif devices == {scale.device} == {torch.device("cpu")}:
        # CPU foreach ops are per-tensor loops anyway; a fused multiply-add per tensor skips
        # the temporary copy of every gradient (measurable on small models).
        for p, d in zip(params, directions):
            p.addcmul_(d, scale)
    elif devices == {scale.device}:
        torch._foreach_add_(params, torch._foreach_mul(directions, scale))
    else:  # a model split over several devices
        for p, d in zip(params, directions):
            p.add_(d * scale.to(p.device))


def unscaled(scaler, opt):
    """Whether ``scaler.unscale_(opt)`` was called since the last ``scaler.update()``."""
    state = scaler._per_optimizer_states.get(id(opt)) if scaler.is_enabled() else None
    return state is not None and state["stage"] is OptState.UNSCALED


def scaler_step(scaler, base, sam, first_pass=None):
    """``scaler.step(base)`` for SAM's update: skipped when either pass overflowed.

    GradScaler keeps found-inf flags per optimizer object. SAM's first pass was unscaled under
    ``first_pass`` (a key of SAM's own; None when the step had no first-pass unscale); the
    second is unscaled under ``sam``: by the caller (``scaler.unscale_(opt)`` to clip, the
    usual recipe) or here. ``base`` then steps with the flags of both passes.
    """
    if not scaler.is_enabled():
        base.step()
        return
    states = scaler._per_optimizer_states
    if not unscaled(scaler, sam):
        scaler.unscale_(sam)
    flags = dict(states[id(sam)]["found_inf_per_device"])
    if first_pass is not None:
        for device, flag in states[id(first_pass)]["found_inf_per_device"].items():
            flags[device] = flags[device] + flag.to(device) if device in flags else flag
    # The base's gradients are SAM's, already unscaled: mark them so, or scaler.step would
    # unscale them a second time.
    states[id(base)].update(stage=OptState.UNSCALED, found_inf_per_device=flags)
    scaler.step(base)
