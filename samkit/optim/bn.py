"""Keep normalisation running statistics out of SAM's second (perturbed) forward pass.

The second pass runs at w + ε; letting it update running mean/var would mix statistics of
weights the model never has. Every module with running statistics is covered:

* BatchNorm (1d/2d/3d, SyncBatchNorm, momentum=None, initialised lazy variants):
  ``track_running_stats`` is turned off for the pass, so the layer normalises with batch
  statistics and updates nothing, not even ``num_batches_tracked``; unlike momentum=0 this is
  safe when the perturbed pass produces NaN (0·NaN would still poison the buffers).
* InstanceNorm with ``track_running_stats=True``: F.instance_norm updates whatever buffers it
  is handed, whatever the flag says, so their values are saved on entry and copied back on exit
  (in place: the buffers keep their addresses).
* A lazy layer whose first forward runs inside (still uninitialised on entry): its flag is left
  alone so that it initialises fully, and on exit its statistics are reset to their initial
  values, as if the perturbed pass had not been seen.
"""
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.lazy import LazyModuleMixin

_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _uninitialised(m):
    return isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()


@contextmanager
def bn_frozen(model: nn.Module):
    """Context manager: no normalisation layer of ``model`` updates its running stats inside.

    Puts everything back on exit, also when the body raises; nesting is harmless.
    """
    norms = [m for m in model.modules() if isinstance(m, _NormBase)]
    lazy = [m for m in norms if _uninitialised(m)]
    flagged = [m for m in norms if isinstance(m, _BatchNorm) and m not in lazy]
    previous = [m.track_running_stats for m in flagged]
    with torch.no_grad():
        saved = [(m, [(getattr(m, k), getattr(m, k).clone()) for k in _STATS
                      if getattr(m, k, None) is not None])
                 for m in norms if not isinstance(m, _BatchNorm) and m not in lazy]
    try:
        for m in flagged:
            # A layer built without running stats (buffers None) must keep using batch stats.
            m.track_running_stats = False
        yield model
    finally:
        for m, flag in zip(flagged, previous):
            m.track_running_stats = flag
        with torch.no_grad():
            for _, buffers in saved:
                for buf, value in buffers:
                    buf.copy_(value)
            for m in lazy:
                if not _uninitialised(m):
                    m.reset_running_stats()  # no-op without tracked stats


@contextmanager
def bn_momentum_zero(model: nn.Module):
    """The fix some SAM implementations use instead (davda54/sam's ``disable_running_stats``):
    BatchNorm momentum 0 for the pass, so ``running = 1·running + 0·batch``. The buffers keep
    their values unless the batch statistics are NaN or inf (0·NaN is NaN), and
    ``num_batches_tracked`` still counts the pass (it matters only with momentum=None)."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    previous = [m.momentum for m in layers]
    try:
        for m in layers:
            m.momentum = 0.0
        yield model
    finally:
        for m, momentum in zip(layers, previous):
            m.momentum = momentum


# What BatchNorm's running statistics do in SAM's perturbed (second) pass: TrainConfig's
# `bn_perturbed`. "updated" is the gotcha (no fix): the statistics of w + ε enter the averages.
PERTURBED_PASS = {"frozen": bn_frozen, "momentum0": bn_momentum_zero,
                  "updated": lambda model: nullcontext(model)}


@torch.no_grad()
def running_stats_drift(model: nn.Module, x: torch.Tensor, batch_size: int) -> dict:
    """How far the running statistics of ``model``'s BatchNorm layers are from those its current
    weights give: the reference re-estimates them on ``x`` (the training set), in train mode,
    batch by batch at ``batch_size`` with a cumulative average (momentum None), on a copy.

    ``x`` is used as given: with augmentation in training, even exact running statistics differ
    from the reference (compare arms, not absolute values). The trainer measures the reported
    model (the early-stopped one when early stopping is on).

    Returns the relative L2 distances ``||running - reference|| / ||reference||`` of the means
    and of the variances, each averaged over the layers, and the number of layers; {} when the
    model has no BatchNorm layer with running statistics."""
    import copy
    ref = copy.deepcopy(model)
    pairs = [(m, r) for m, r in zip(model.modules(), ref.modules())
             if isinstance(m, _BatchNorm) and m.running_mean is not None]
    if not pairs:
        return {}
    for _, r in pairs:
        r.reset_running_stats()
        r.momentum = None
    ref.train()
    for s in range(0, len(x), batch_size):
        ref(x[s:s + batch_size])

    def rel(a, b):
        return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))

    return {"mean": sum(rel(m.running_mean, r.running_mean) for m, r in pairs) / len(pairs),
            "var": sum(rel(m.running_var, r.running_var) for m, r in pairs) / len(pairs),
            "layers": len(pairs)}
