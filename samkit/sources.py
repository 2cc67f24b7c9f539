"""The sources' own effect sizes, as reference data beside our estimates.

Read by eye off the published figures (good to about ±0.02 pp), never produced here: Shin et
al., "Critical influence of overparameterization on sharpness-aware minimization", Figure 1(a),
MNIST 3-layer MLP panel (SAM − SGD validation accuracy, mean over seeds, by parameters).
"""
from __future__ import annotations

import numpy as np

SHIN_MLP_PANEL = {60_000: 0.0007, 130_000: 0.0006, 270_000: 0.0018, 1_430_000: 0.0019,
                  5_370_000: 0.0019}
SHIN_MLP_WHERE = "Shin et al., Fig. 1(a), MNIST 3-layer MLP, 0.06M-5.4M parameters"


def shin_mlp_slope() -> float:
    """The panel's gain per doubling of the parameters, by our trend rule (least squares on
    log2 parameters)."""
    x = np.log2(np.array(list(SHIN_MLP_PANEL), dtype=float))
    return float(np.polyfit(x, np.array(list(SHIN_MLP_PANEL.values())), 1)[0])


def shin_mlp_widest() -> float:
    """The panel's gain at its largest model."""
    return SHIN_MLP_PANEL[max(SHIN_MLP_PANEL)]
