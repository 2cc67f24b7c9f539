"""samkit.optim.bn. bn_frozen: SAM's perturbed pass leaves every normalisation layer's running
statistics alone. Reference: the statistics after one plain training-mode forward at the
unperturbed weights (what SGD would record), and batch normalisation written out by hand.

PERTURBED_PASS: what BatchNorm's running statistics do in SAM's perturbed pass
(TrainConfig.bn_perturbed), checked against a float64 re-derivation of the running averages;
running_stats_drift against statistics computed by hand.
"""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from samkit.optim.bn import PERTURBED_PASS, bn_frozen, running_stats_drift
from samkit.optim.graph_step import train_step
from samkit.optim.sam import SAM

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")

# name -> (mixing layer, BN layer factory, one example's shape)
LAYERS = {
    "bn1d_2d_input": (lambda: nn.Linear(4, 3), lambda: nn.BatchNorm1d(3), (4,)),
    "bn1d_3d_input": (lambda: nn.Conv1d(2, 3, 3, padding=1), lambda: nn.BatchNorm1d(3), (2, 5)),
    "bn2d": (lambda: nn.Conv2d(2, 3, 3, padding=1), lambda: nn.BatchNorm2d(3), (2, 4, 4)),
    "bn3d": (lambda: nn.Conv3d(2, 3, 3, padding=1), lambda: nn.BatchNorm3d(3), (2, 3, 3, 3)),
    "syncbn": (lambda: nn.Conv2d(2, 3, 3, padding=1), lambda: nn.SyncBatchNorm(3), (2, 4, 4)),
    "momentum_none": (lambda: nn.Conv2d(2, 3, 3, padding=1),
                      lambda: nn.BatchNorm2d(3, momentum=None), (2, 4, 4)),
    "no_running_stats": (lambda: nn.Conv2d(2, 3, 3, padding=1),
                         lambda: nn.BatchNorm2d(3, track_running_stats=False), (2, 4, 4)),
    "affine_false": (lambda: nn.Linear(4, 3), lambda: nn.BatchNorm1d(3, affine=False), (4,)),
}


def _model(kind, seed=0):
    mix, bn, shape = LAYERS[kind]
    torch.manual_seed(seed)
    model = nn.Sequential(mix(), bn(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(2, *shape))  # materialise the lazy layer ...
    model = model.to(DT)
    if model[1].track_running_stats:
        model[1].reset_running_stats()  # ... and forget that forward
    return model, shape


def _batch_norm_by_hand(x, bn, use_batch_stats):
    dims = [d for d in range(x.dim()) if d != 1]
    view = [1, -1] + [1] * (x.dim() - 2)
    if use_batch_stats:
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    y = (x - mean.view(view)) / torch.sqrt(var.view(view) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(view) + bn.bias.view(view)
    return y


def _buffers(m):
    return {k: v.clone() for k, v in m.named_buffers()}


@pytest.mark.parametrize("kind", list(LAYERS))
def test_sam_step_records_stats_of_one_plain_pass(kind):
    model, shape = _model(kind)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    seen = {}
    model[1].register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    for _ in range(3):
        x = torch.randn(6, *shape, generator=g, dtype=DT)
        y = torch.randint(0, 3, (6,), generator=g)
        ref = copy.deepcopy(model)  # unperturbed weights, statistics so far
        ref(x)
        F.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        with bn_frozen(model):
            assert not model[1].track_running_stats
            F.cross_entropy(model(x), y).backward()
            # The perturbed pass normalises with its own batch statistics.
            torch.testing.assert_close(seen["y"], _batch_norm_by_hand(seen["x"], model[1], True),
                                       rtol=1e-10, atol=1e-12)
        opt.second_step(zero_grad=True)
        assert model[1].track_running_stats == LAYERS[kind][1]().track_running_stats
        got, want = _buffers(model), _buffers(ref)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), k
    if model[1].track_running_stats:
        assert int(model[1].num_batches_tracked) == 3
        assert not torch.equal(model[1].running_mean, torch.zeros(3, dtype=DT))
    else:
        assert model[1].running_mean is None


def test_momentum_none_is_the_plain_average_of_first_passes():
    """Cumulative BN (momentum=None): running_mean = mean of the per-step batch means of the
    FIRST passes only."""
    model, shape = _model("momentum_none")
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    means = []
    model[1].register_forward_hook(lambda m, i, o: means.append(i[0].mean((0, 2, 3))))
    g = torch.Generator().manual_seed(2)
    for _ in range(4):
        x = torch.randn(5, *shape, generator=g, dtype=DT)
        y = torch.randint(0, 3, (5,), generator=g)
        F.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        with bn_frozen(model):
            F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
    first_pass = means[0::2]
    torch.testing.assert_close(model[1].running_mean, sum(first_pass) / 4, rtol=0, atol=1e-14)


def test_flags_restored_when_body_raises():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm2d(3, track_running_stats=False),
                          nn.SyncBatchNorm(3), nn.Sequential(nn.BatchNorm3d(3)))
    before = [m.track_running_stats for m in model.modules() if hasattr(m, "track_running_stats")]
    with pytest.raises(KeyError):
        with bn_frozen(model):
            assert not any(m.track_running_stats for m in model.modules()
                           if isinstance(m, nn.modules.batchnorm._BatchNorm))
            with bn_frozen(model):  # nesting is harmless
                pass
            assert not model[0].track_running_stats
            raise KeyError("boom")
    after = [m.track_running_stats for m in model.modules() if hasattr(m, "track_running_stats")]
    assert after == before == [True, False, True, True]


def test_nan_perturbed_pass_leaves_buffers_finite():
    model, shape = _model("bn2d")
    before = _buffers(model)
    with bn_frozen(model):
        model(torch.full((4, *shape), float("nan"), dtype=DT))
    for k, v in _buffers(model).items():
        assert torch.equal(v, before[k]), k


def test_eval_mode_still_uses_running_stats():
    model, shape = _model("bn2d")
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        model(torch.randn(8, *shape, generator=g, dtype=DT) + 2.0)
    model.eval()
    seen = {}
    model[1].register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    before = _buffers(model)
    with bn_frozen(model):
        model(torch.randn(4, *shape, generator=g, dtype=DT))
    torch.testing.assert_close(seen["y"], _batch_norm_by_hand(seen["x"], model[1], False),
                               rtol=1e-10, atol=1e-12)
    for k, v in _buffers(model).items():
        assert torch.equal(v, before[k]), k


def test_lazy_batchnorm_is_covered():
    model = nn.Sequential(nn.LazyBatchNorm1d())
    model(torch.randn(4, 3))  # materialised by SAM's first (normal) pass
    before = _buffers(model)
    with bn_frozen(model):
        model(torch.randn(4, 3))
    for k, v in _buffers(model).items():
        assert torch.equal(v, before[k]), k
    assert int(model[0].num_batches_tracked) == 1 and model[0].track_running_stats


# ----------------------------------------------------------------------------- InstanceNorm, lazy

# InstanceNorm with tracked statistics: F.instance_norm updates the buffers it is handed
# whatever track_running_stats says, so turning the flag off (enough for BatchNorm) is not.
INSTANCE = {
    "in1d": (lambda: nn.Conv1d(2, 3, 3, padding=1), nn.InstanceNorm1d, (2, 5)),
    "in2d": (lambda: nn.Conv2d(2, 3, 3, padding=1), nn.InstanceNorm2d, (2, 4, 4)),
    "in3d": (lambda: nn.Conv3d(2, 3, 3, padding=1), nn.InstanceNorm3d, (2, 3, 3, 3)),
}


def _instance_model(kind, seed=0):
    mix, norm, shape = INSTANCE[kind]
    torch.manual_seed(seed)
    model = nn.Sequential(mix(), norm(3, affine=True, track_running_stats=True), nn.ReLU(),
                          nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(2, *shape))
    model = model.to(DT)
    model[1].reset_running_stats()
    return model, shape


def _instance_norm_by_hand(x, m):
    """Each example's channels normalised over their own positions (biased variance)."""
    dims = list(range(2, x.dim()))
    view = [1, -1] + [1] * (x.dim() - 2)
    y = (x - x.mean(dims, keepdim=True)) / torch.sqrt(x.var(dims, unbiased=False, keepdim=True)
                                                      + m.eps)
    return y * m.weight.view(view) + m.bias.view(view)


@pytest.mark.parametrize("kind", list(INSTANCE))
def test_instance_norm_with_tracked_stats_records_one_plain_pass(kind):
    model, shape = _instance_model(kind)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    seen = {}
    model[1].register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    for _ in range(3):
        x = torch.randn(6, *shape, generator=g, dtype=DT) + 1.0
        y = torch.randint(0, 3, (6,), generator=g)
        ref = copy.deepcopy(model)  # unperturbed weights, statistics so far
        ref(x)
        F.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        with bn_frozen(model):
            F.cross_entropy(model(x), y).backward()
            torch.testing.assert_close(seen["y"], _instance_norm_by_hand(seen["x"], model[1]),
                                       rtol=1e-10, atol=1e-12)
        opt.second_step(zero_grad=True)
        for k, v in _buffers(ref).items():
            assert torch.equal(_buffers(model)[k], v), k
    assert model[1].track_running_stats
    assert not torch.equal(model[1].running_mean, torch.zeros(3, dtype=DT))


def test_instance_norm_eval_mode_and_nan_pass_leave_stats_alone():
    model, shape = _instance_model("in2d")
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        model(torch.randn(8, *shape, generator=g, dtype=DT) + 2.0)
    before = _buffers(model)
    with bn_frozen(model):
        model(torch.full((4, *shape), float("nan"), dtype=DT))
    for k, v in _buffers(model).items():
        assert torch.equal(v, before[k]), k
    model.eval()  # eval: normalise with the running statistics, inside as outside
    seen = {}
    model[1].register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    with bn_frozen(model):
        model(torch.randn(4, *shape, generator=g, dtype=DT))
    m = model[1]
    view = [1, -1, 1, 1]
    want = ((seen["x"] - m.running_mean.view(view)) / torch.sqrt(m.running_var.view(view) + m.eps)
            * m.weight.view(view) + m.bias.view(view))
    torch.testing.assert_close(seen["y"], want, rtol=1e-10, atol=1e-12)


LAZY = {
    "lazy_bn1d": (nn.LazyBatchNorm1d, nn.BatchNorm1d, (3,)),
    "lazy_bn2d": (nn.LazyBatchNorm2d, nn.BatchNorm2d, (3, 4, 4)),
    "lazy_bn3d": (nn.LazyBatchNorm3d, nn.BatchNorm3d, (3, 2, 2, 2)),
    "lazy_in2d": (lambda: nn.LazyInstanceNorm2d(affine=True, track_running_stats=True),
                  lambda c: nn.InstanceNorm2d(c, affine=True, track_running_stats=True),
                  (3, 4, 4)),
}


@pytest.mark.parametrize("kind", list(LAZY))
def test_lazy_layer_first_run_inside_is_initialised_and_records_nothing(kind):
    """A lazy layer whose first forward is the perturbed pass: initialised (the next forward
    works), with the statistics of a fresh layer; the next plain pass records as a fresh eager
    layer would."""
    lazy, eager, shape = LAZY[kind]
    g = torch.Generator().manual_seed(4)
    x1 = torch.randn(5, *shape, generator=g) + 1.0
    x2 = torch.randn(5, *shape, generator=g) - 1.0
    model = nn.Sequential(lazy())
    with bn_frozen(model):
        model(x1)
    ref = eager(shape[0])  # a fresh layer: running mean 0, var 1, no batch tracked
    for k, v in _buffers(ref).items():
        assert torch.equal(_buffers(model[0])[k], v), k
    model(x2)  # raised "has not been fully initialized" when the flag was off inside
    ref(x2)
    for k, v in _buffers(ref).items():
        assert torch.equal(_buffers(model[0])[k], v), k


def test_instance_norm_and_lazy_restored_when_body_raises_and_nested():
    model = nn.Sequential(nn.InstanceNorm1d(3, track_running_stats=True), nn.LazyBatchNorm1d(),
                          nn.InstanceNorm1d(3))  # the last tracks nothing: nothing to keep
    before = _buffers(model[0])
    with pytest.raises(KeyError):
        with bn_frozen(model):
            with bn_frozen(model):  # nesting is harmless
                model(torch.randn(4, 3, 5) + 3.0)
            model(torch.randn(4, 3, 5) + 3.0)
            raise KeyError("boom")
    for k, v in _buffers(model[0]).items():
        assert torch.equal(v, before[k]), k
    assert [m.track_running_stats for m in model] == [True, True, False]
    assert torch.equal(model[1].running_mean, torch.zeros(3))
    assert int(model[1].num_batches_tracked) == 0
    model(torch.randn(4, 3, 5))  # initialised: runs outside the block
    assert int(model[1].num_batches_tracked) == 1


# -------------------------------------------------------------------- PERTURBED_PASS and the drift

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
