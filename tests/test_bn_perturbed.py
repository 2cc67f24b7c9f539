"""What BatchNorm's running statistics do in SAM's perturbed pass (TrainConfig.bn_perturbed),
checked against a float64 re-derivation of the running averages, and the drift measure against
statistics computed by hand."""
import copy

import pytest
import torch
from torch import nn

from samkit import SAM
from samkit.optim.bn import PERTURBED_PASS, running_stats_drift
from samkit.train.config import TrainConfig
from samkit.optim.graph_step import train_step
import contextlib
import torch.nn.functional as F


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6, momentum=0.1), nn.ReLU(),
                         nn.Linear(6, 3)).double()


def _batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 5, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def _train(mode, record=None):
    model = _net()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    bn = model[1]
    for x, y in _batches():
        if record is not None:  # the batch means each pass feeds BatchNorm, by hand
            w = copy.deepcopy(model)
            record.append(model[0](x).mean(0))
        train_step(model, opt, F.cross_entropy, x, y, contextlib.nullcontext, PERTURBED_PASS[mode])
        if record is not None:  # the second pass ran at w + ε: recompute it from a copy
            g = torch.autograd.grad(F.cross_entropy(w(x), y), list(w.parameters()))
            norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
            with torch.no_grad():
                for p, gi in zip(w.parameters(), g):
                    p.add_(0.1 * gi / norm)
            record.append(w[0](x).mean(0))
    return model, bn


def test_the_weights_do_not_depend_on_the_mode_only_the_running_statistics_do():
    frozen, bn_f = _train("frozen")
    momentum0, bn_m = _train("momentum0")
    updated, bn_u = _train("updated")
    for a, b, c in zip(frozen.parameters(), momentum0.parameters(), updated.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)   # train mode: batch statistics
    assert torch.equal(bn_f.running_mean, bn_m.running_mean)
    assert torch.equal(bn_f.running_var, bn_m.running_var)
    assert not torch.allclose(bn_f.running_mean, bn_u.running_mean)
    assert int(bn_f.num_batches_tracked) == 4 and int(bn_m.num_batches_tracked) == 8


def test_updated_averages_the_batch_means_of_both_passes():
    means = []
    _, bn = _train("updated", record=means)
    expected = torch.zeros(6, dtype=torch.float64)
    for m in means:   # PyTorch's rule: running = (1 - momentum) running + momentum batch
        expected = 0.9 * expected + 0.1 * m
    torch.testing.assert_close(bn.running_mean, expected, rtol=1e-10, atol=1e-12)
    frozen_means = []
    _, bn_f = _train("frozen", record=frozen_means)
    expected = torch.zeros(6, dtype=torch.float64)
    for m in frozen_means[::2]:   # the first (unperturbed) pass of each step only
        expected = 0.9 * expected + 0.1 * m
    torch.testing.assert_close(bn_f.running_mean, expected, rtol=1e-10, atol=1e-12)


def test_drift_is_zero_for_exact_statistics_and_the_relative_distance_otherwise():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3)).double()
    x = torch.randn(64, 3, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0]) + 5
    bn = model[0]
    with torch.no_grad():  # one batch of all of x: the reference is x's mean and unbiased var
        bn.running_mean.copy_(x.mean(0))
        bn.running_var.copy_(x.var(0, unbiased=True))
    d = running_stats_drift(model, x, batch_size=64)
    assert d["layers"] == 1 and d["mean"] == pytest.approx(0, abs=1e-12)
    assert d["var"] == pytest.approx(0, abs=1e-12)
    with torch.no_grad():
        bn.running_mean.mul_(1.1)
    d = running_stats_drift(model, x, batch_size=64)
    assert d["mean"] == pytest.approx(0.1, rel=1e-9)
    assert torch.equal(bn.running_mean, x.mean(0) * 1.1)   # the model is left as it was
    assert running_stats_drift(nn.Sequential(nn.Linear(3, 3)), x, 8) == {}


def test_bn_options_are_validated_and_keep_old_keys():
    with pytest.raises(ValueError, match=r"^bn_perturbed: got 'sometimes'; allowed: frozen, "):
        TrainConfig(bn_perturbed="sometimes")
    with pytest.raises(ValueError, match=r"^bn_perturbed: got 'updated' with model 'mlp'"):
        TrainConfig(model="mlp", optimizer="sam", bn_perturbed="updated")
    with pytest.raises(ValueError, match=r"^bn_drift: got True with model 'mlp'"):
        TrainConfig(model="mlp", bn_drift=True)
    base = TrainConfig(optimizer="sam")
    assert "bn_perturbed" not in base.key_dict() and "bn_drift" not in base.key_dict()
    assert TrainConfig(optimizer="sam", bn_perturbed="updated").key_dict() != base.key_dict()
    with pytest.raises(ValueError, match=r"^bn_perturbed: got 'updated' with optimizer 'sgd' "
                       r"\(no perturbed pass\)"):
        TrainConfig(optimizer="sgd", bn_perturbed="updated")
