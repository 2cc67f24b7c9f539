"""Keep BatchNorm running statistics out of SAM's second (perturbed) forward pass.

The second pass runs at w + ε; letting it update running mean/var would mix statistics of
weights the model never has. Turning ``track_running_stats`` off for the pass makes every
``_BatchNorm`` (1d/2d/3d, SyncBatchNorm, lazy variants, momentum=None) normalise with batch
statistics and update nothing, not even ``num_batches_tracked``; and unlike momentum=0 it is
safe when the perturbed pass produces NaN (0·NaN would still poison the buffers).
"""
from contextlib import contextmanager

from torch import nn


@contextmanager
def bn_frozen(model: nn.Module):
    """Context manager: no BatchNorm layer of ``model`` updates its running stats inside.

    Restores each layer's previous ``track_running_stats`` on exit, also when the body raises.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    previous = [m.track_running_stats for m in layers]
    try:
        for m in layers:
            # A layer built without running stats (buffers None) must keep using batch stats.
            m.track_running_stats = False
        yield model
    finally:
        for m, flag in zip(layers, previous):
            m.track_running_stats = flag
