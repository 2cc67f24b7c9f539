"""samkit.data.toy: the synthetic regression task and the 1-D toy points, through
samkit.data.datasets.load_data."""
import numpy as np
import pytest
import torch

from samkit.data import toy as toy_data
from samkit.data.datasets import load_data

pytestmark = pytest.mark.usefixtures("no_network")  # conftest: every download fails


def test_synthetic_shapes_and_determinism():
    d = load_data("synthetic", subset_seed=0)
    assert d.task == "regression" and d.num_classes == 1 and d.in_shape == (20,)
    assert d.x_train.shape == (500, 20) and d.y_train.shape == (500, 1)
    assert d.x_test.shape == (125, 20) and d.y_test.shape == (125, 1)
    assert d.x_val.shape == (0, 20) and d.noisy_idx.numel() == 0
    assert d.x_train.dtype == d.y_train.dtype == torch.float32
    assert torch.equal(d.y_train_clean, d.y_train)
    assert abs(d.x_train.mean().item()) < 0.05 and abs(d.x_train.std().item() - 1) < 0.05
    assert d.y_train.std() > 0.1
    again, other = load_data("synthetic", subset_seed=0), load_data("synthetic", subset_seed=1)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)
    assert not torch.equal(other.x_train, d.x_train)
    small = load_data("synthetic", n_train=40, n_val=8)
    assert small.x_train.shape == (40, 20) and small.x_val.shape == (8, 20)
    assert small.x_test.shape == (10, 20)


def test_synthetic_targets_are_a_nonlinear_teacher_plus_gaussian_noise(monkeypatch):
    noisy = load_data("synthetic", n_train=2000)
    monkeypatch.setattr(toy_data, "SYNTH_NOISE_STD", 0.0)
    clean = load_data("synthetic", n_train=2000)
    assert torch.equal(noisy.x_train, clean.x_train)  # same draws, noise aside
    noise = (noisy.y_train - clean.y_train).double()
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 0.1) < 0.01
    x1 = torch.cat([clean.x_train, torch.ones(2000, 1)], 1).double()
    fit = torch.linalg.lstsq(x1, clean.y_train.double()).solution
    assert (clean.y_train.double() - x1 @ fit).std() > 0.1  # ReLU teacher: not linear in x


def test_toy1d_points_test_curve_and_probe():
    d = load_data("toy1d")
    x = np.arange(-5.5, 6) / 4 + 0.07  # Maennel et al. points, via Andriushchenko & Flammarion
    y = 0.345 + np.array([-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1])
    assert d.task == "regression" and d.in_shape == (1,) and d.num_classes == 1
    np.testing.assert_allclose(d.x_train[:, 0].numpy(), x, atol=1e-6)
    np.testing.assert_allclose(d.y_train[:, 0].numpy(), y, atol=1e-6)
    xt = d.x_test[:, 0].numpy()
    assert xt.min() == pytest.approx(x.min()) and xt.max() == pytest.approx(x.max())
    np.testing.assert_allclose(d.y_test[:, 0].numpy(), np.interp(xt, x, y), atol=1e-5)
    p = d.x_probe[:, 0]
    assert d.x_probe.shape == (401, 1) and (p.diff() > 0).all()
    assert p[0] < x.min() - 0.05 and p[-1] > x.max() + 0.05
    assert d.x_val.shape == (0, 1)
