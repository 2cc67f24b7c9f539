"""The two regression datasets made in code: a student-teacher problem and the 1-D toy points.

Each returns plain tensors, (x, y) pairs for train, val and test (toy1d adds its probe grid);
``samkit.data.datasets.load_data`` wraps them into a ``Data``.
"""
from __future__ import annotations

import numpy as np
import torch

from samkit.data.sampling import seeded_generator

# Student-teacher regression (Advani et al. 2020 style): x ~ N(0, I_d),
# y = teacher(x) + SYNTH_NOISE_STD·N(0, 1), teacher a random bias-free 2-layer ReLU net.
SYNTH_DIM, SYNTH_HIDDEN, SYNTH_NOISE_STD, SYNTH_N_TRAIN = 20, 10, 0.1, 500

# The 12 points of Maennel et al. (2018), as used by Andriushchenko & Flammarion (2022),
# tml-epfl/understanding-sam, one_layer_relu_nets/1d_nn.ipynb.
TOY1D_X = [(k - 5.5) / 4 + 0.07 for k in range(12)]
TOY1D_Y = [0.345 + v for v in (-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1)]
TOY1D_PROBE_POINTS, TOY1D_PROBE_MARGIN, TOY1D_TEST_POINTS = 401, 0.1, 101


def synthetic(n_train: int | None, n_val: int, seed: int):
    """Student-teacher regression: (x_train, y_train, x_val, y_val, x_test, y_test). The
    test set (n_train // 4 points, at least 1) is drawn from the same noisy distribution as
    the training set."""
    n_train = SYNTH_N_TRAIN if n_train is None else n_train
    n_test = max(n_train // 4, 1)
    g = seeded_generator("synthetic", seed)
    # Variance-preserving init (N(0, 1/fan_in)) keeps the teacher's output O(1).
    w1 = torch.randn(SYNTH_HIDDEN, SYNTH_DIM, generator=g) / SYNTH_DIM ** 0.5
    w2 = torch.randn(1, SYNTH_HIDDEN, generator=g) / SYNTH_HIDDEN ** 0.5

    def sample(n):
        x = torch.randn(n, SYNTH_DIM, generator=g)
        # Noise std looked up at call time, so tests can switch the noise off.
        y = torch.relu(x @ w1.T) @ w2.T + SYNTH_NOISE_STD * torch.randn(n, 1, generator=g)
        return x, y

    x, y = sample(n_train + n_val)
    x_te, y_te = sample(n_test)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], x_te, y_te


def toy1d(n_train: int | None, n_val: int):
    """The fixed 12-point 1-D data: (x_train, y_train, x_val, y_val, x_test, y_test, x_probe).
    The test set samples the points' piecewise-linear interpolant on a grid (a reference
    curve: the points come from no underlying function); the probe grid reaches a little
    beyond the points, where the learned function is read."""
    if n_train not in (None, len(TOY1D_X)) or n_val:
        raise ValueError(f"toy1d has exactly {len(TOY1D_X)} fixed points: use n_train=None "
                         f"and n_val=0, got n_train={n_train!r}, n_val={n_val!r}")
    x = torch.tensor(TOY1D_X).view(-1, 1)
    y = torch.tensor(TOY1D_Y).view(-1, 1)
    lo, hi = min(TOY1D_X), max(TOY1D_X)
    x_te = torch.linspace(lo, hi, TOY1D_TEST_POINTS)
    y_te = torch.from_numpy(np.interp(x_te.numpy(), TOY1D_X, TOY1D_Y)).float()
    probe = torch.linspace(lo - TOY1D_PROBE_MARGIN, hi + TOY1D_PROBE_MARGIN, TOY1D_PROBE_POINTS)
    empty = torch.zeros(0, 1)
    return (x, y, empty, empty.clone(), x_te.view(-1, 1), y_te.view(-1, 1),
            probe.view(-1, 1))
