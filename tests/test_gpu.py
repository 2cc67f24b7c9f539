"""CUDA checks: bf16 autocast SAM against fp32, fp16 + GradScaler with an overflow in either
pass, bn_frozen on CUDA BatchNorm (cuDNN, channels_last), and the whole step captured in ONE
CUDA graph (samkit.optim.graph_step.GraphStep, the trainer's compile="graph") against the eager step.

Marked gpu and skipped without CUDA; `python tools/gpu_harvest.py check` runs them first
thing on a GPU machine (and its `start` falls back to eager training if a graph test fails).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from samkit.train import loop as train
from samkit.optim.bn import bn_frozen
from samkit.optim.graph_step import GraphStep
from samkit.optim.sam import SAM
from samkit.optim.variants import LookSAM, MomentumSAM
from samkit.train.config import TrainConfig

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CL = torch.channels_last


def _net(seed=0):
    """Conv -> BN -> ReLU twice, pooled, linear: cuDNN convolutions and batch norm. The convs
    feeding a BN have no bias (its true gradient is 0: only rounding residue would move it)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).cuda()


def _batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 8, 8, generator=g).cuda(),
            torch.randint(0, 10, (n,), generator=g).cuda())


def _flat(model):
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


@contextmanager
def _no_tf32():
    """Full fp32 matmuls and convolutions (TF32 keeps 10 mantissa bits, about bf16's error)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _sam_step(model, opt, x, y, autocast=None):
    ctx = autocast or (lambda: torch.autocast("cuda", enabled=False))
    with ctx():
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.first_step(zero_grad=True)
    with bn_frozen(model), ctx():
        F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)
    return loss.detach().float()


# ----------------------------------------------------------------------------- bf16

def test_bf16_autocast_sam_close_to_fp32():
    """SAM under bf16 autocast (+ channels_last, the fast path) trains like fp32.

    Tolerance: bf16 keeps 8 significant bits (a rounding of 2^-9 ~ 2e-3 relative per value), so a
    gradient through a few bf16 layers is off by ~1e-2 relative, and so is the weights'
    displacement from their start (lr x the momentum sum of the gradients). We allow 10% of
    that displacement (norm over all parameters): ten times what bf16 rounding explains, and
    far below what a plumbing error gives (a weight left at w + eps, eps from a bf16 gradient
    norm that overflowed, a dtype mismatch: those are of the order of the displacement)."""
    with _no_tf32():
        ref, fast = _net(), _net().to(memory_format=CL)
        kw = dict(rho=0.05, lr=0.05, momentum=0.9, weight_decay=5e-4)
        o_ref = SAM(ref.parameters(), torch.optim.SGD, **kw)
        o_fast = SAM(fast.parameters(), torch.optim.SGD, **kw)
        w0 = _flat(ref)
        bf16 = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
        for i in range(4):
            x, y = _batch(seed=i)
            _sam_step(ref, o_ref, x, y)
            _sam_step(fast, o_fast, x.contiguous(memory_format=CL), y, bf16)
        with bf16():
            assert fast(x.contiguous(memory_format=CL)).dtype == torch.bfloat16  # bf16 was used
        assert all(p.dtype == torch.float32 for p in fast.parameters())
        moved = (_flat(ref) - w0).norm()
        err = (_flat(fast) - _flat(ref)).norm()
        assert moved > 1e-3, "the SAM steps did not move the weights"
        assert err <= 0.1 * moved, f"bf16 off by {err:.3g}, {err / moved:.2%} of the displacement"


# ----------------------------------------------------------------------------- fp16 + GradScaler

def _scaled_step(model, opt, scaler, x, y, inf_in=None):
    fp16 = lambda: torch.autocast("cuda", dtype=torch.float16)  # noqa: E731
    with fp16():
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    if inf_in == "first":
        model[0].weight.grad.view(-1)[0] = float("inf")
    opt.first_step(zero_grad=True, grad_scaler=scaler)
    with bn_frozen(model), fp16():
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    if inf_in == "second":
        model[-1].bias.grad[0] = float("nan")
    opt.second_step(zero_grad=True, grad_scaler=scaler)
    scaler.update()


@pytest.mark.parametrize("where", ["first", "second"])
def test_fp16_grad_scaler_overflow_in_either_pass_skips_the_step(where):
    model = _net()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 12)
    x, y = _batch()
    _scaled_step(model, opt, scaler, x, y)  # a normal step: momentum buffers exist
    assert scaler.get_scale() == 2.0 ** 12
    weights = [p.detach().clone() for p in model.parameters()]
    momentum = [opt.base_optimizer.state[p]["momentum_buffer"].clone()
                for p in model.parameters()]
    _scaled_step(model, opt, scaler, x, y, inf_in=where)
    for p, w in zip(model.parameters(), weights):
        assert torch.equal(p.detach(), w)  # the update was skipped, w restored exactly
    for p, m in zip(model.parameters(), momentum):
        assert torch.equal(opt.base_optimizer.state[p]["momentum_buffer"], m)
    assert scaler.get_scale() == 2.0 ** 11  # the overflow was seen: the scale backed off
    _scaled_step(model, opt, scaler, x, y)  # and training goes on
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(p.detach(), w) for p, w in zip(model.parameters(), weights))


# ----------------------------------------------------------------------------- bn_frozen

def _bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("fast", [False, True], ids=["fp32", "bf16-channels_last"])
def test_bn_frozen_on_cuda_batchnorm(fast):
    model = _net()
    x, y = _batch()
    if fast:
        model, x = model.to(memory_format=CL), x.contiguous(memory_format=CL)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if fast else (
        lambda: torch.autocast("cuda", enabled=False))
    before = _bn_buffers(model)
    twin = copy.deepcopy(model)
    with bn_frozen(model), ctx():
        frozen_out = model(x)
    for k, v in _bn_buffers(model).items():
        assert torch.equal(v, before[k]), k  # no running stat moved, not even the count
    with ctx():
        twin_out = twin(x)  # train mode normalises with batch statistics either way
    tol = dict(rtol=2e-2, atol=2e-2) if fast else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(frozen_out.float(), twin_out.float(), **tol)
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.track_running_stats for m in layers)  # restored on exit
    # One SAM step moves the running statistics exactly as one forward pass at w.
    model = _net()
    twin = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.05, momentum=0.9)
    _sam_step(model, opt, *_batch())
    with torch.no_grad():
        twin(_batch()[0])
    for k, v in _bn_buffers(twin).items():
        torch.testing.assert_close(_bn_buffers(model)[k], v, rtol=1e-6, atol=1e-7, msg=k)
    assert int(model[1].num_batches_tracked) == 1


# ----------------------------------------------------------------------------- CUDA graphs

OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "sam": lambda ps: SAM(ps, torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9,
                          weight_decay=5e-4),
    "asam": lambda ps: SAM(ps, torch.optim.SGD, rho=0.5, adaptive=True, lr=0.05, momentum=0.9),
    "sam_k2": lambda ps: SAM(ps, torch.optim.SGD, rho=0.05, interval=2, lr=0.05, momentum=0.9),
    "looksam_k2": lambda ps: LookSAM(ps, torch.optim.SGD, rho=0.05, k=2, lr=0.05,
                                     momentum=0.9),
    "msam": lambda ps: MomentumSAM(ps, torch.optim.SGD, rho=0.3, lr=0.05, momentum=0.9),
}


def _eager_step(model, opt, x, y, autocast):
    """The trainer's eager step (samkit.train.loop.train_epoch), written out."""
    if isinstance(opt, MomentumSAM):
        opt.first_step(zero_grad=True)
    with autocast():
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    if isinstance(opt, MomentumSAM):
        opt.second_step(zero_grad=True)
    elif isinstance(opt, SAM):
        if opt.first_step(zero_grad=True):
            with bn_frozen(model), autocast():
                F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
    else:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss.detach().float()


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-channels_last"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_graph_step_equals_eager_step(name, bf16):
    """10 steps, an LR change after 6 (a new capture), a short batch at step 8 (eager): the
    graph-replayed model equals the eager one. Tolerance: the same kernels run in the same
    order, so only non-deterministic cuDNN reductions (atomics) can differ, by a few float32
    ulps per step (bf16: such an ulp can flip a bf16 rounding, ~4e-3 of one value)."""
    base = _net()
    if bf16:
        base = base.to(memory_format=CL)
    eager, graphed = copy.deepcopy(base), copy.deepcopy(base)
    o_eager, o_graph = OPTIMIZERS[name](eager.parameters()), OPTIMIZERS[name](graphed.parameters())
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    step = GraphStep(graphed, o_graph, F.cross_entropy, batch_size=16, bf16=bf16, warmup=2)
    w0 = _flat(eager)
    for i in range(10):
        x, y = _batch(8 if i == 8 else 16, seed=i)
        if bf16:
            x = x.contiguous(memory_format=CL)
        if i == 6:
            for o in (o_eager, o_graph):
                for g in o.param_groups:
                    g["lr"] *= 0.1
        want = _eager_step(eager, o_eager, x, y, autocast)
        got = step(x, y)
        tol = dict(rtol=2e-2, atol=2e-3) if bf16 else dict(rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got, want, **tol, msg=f"loss of step {i}")
    torch.cuda.synchronize()
    assert step.replays >= 3 and step.captures >= 2, (step.replays, step.captures)
    tol = dict(rtol=2e-2, atol=2e-3) if bf16 else dict(rtol=1e-4, atol=1e-5)
    for (k, a), b in zip(eager.state_dict().items(), graphed.state_dict().values()):
        torch.testing.assert_close(b.float(), a.float(), **tol, msg=k)
    assert (_flat(eager) - w0).norm() > 1e-3  # the steps did move the weights
    for counter in ("grad_evals", "_sam_steps"):
        assert getattr(o_graph, counter, None) == getattr(o_eager, counter, None), counter


@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_graph_training_equals_eager_training(optimizer):
    """The trainer end to end: compile="graph" gives the eager run's history and pass count;
    the step schedule changes the LR twice (new captures), 100 = 6 x 16 + 4 (a short batch
    every epoch); the run key is the eager run's."""
    kw = dict(dataset="synthetic", model="mlp", width=16, n_train=100, epochs=4, batch_size=16,
              schedule="step", optimizer=optimizer, device="cuda")
    eager = train.train(TrainConfig(**kw))
    graphed = train.train(TrainConfig(**kw, compile="graph"))
    assert TrainConfig(**kw).key_dict() == TrainConfig(**kw, compile="graph").key_dict()
    assert graphed["grad_evals"] == eager["grad_evals"] == train.derived_grad_evals(
        TrainConfig(**kw), 4)
    for a, b in zip(eager["history"], graphed["history"]):
        assert a["epoch"] == b["epoch"] and a["lr"] == b["lr"]
        for k in ("train_loss_running", "train_loss", "test_loss"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (k, a["epoch"])


def test_graph_steps_in_threads_equal_eager_steps():
    """The harvest's scheme (tools/gpu_harvest.py train, via samkit.sweep.streams): runs in threads of one process,
    each on its own CUDA stream, capturing (one at a time) and replaying their own graphs while
    the others train, each equal to its eager twin trained alone afterwards."""
    import threading
    names = ["sgd", "sam", "sam_k2"]
    bases = [_net(seed=i) for i in range(len(names))]
    graphed = [copy.deepcopy(b) for b in bases]
    errors, steps = [], {}

    def work(i):
        try:
            with torch.cuda.stream(torch.cuda.Stream()):
                opt = OPTIMIZERS[names[i]](graphed[i].parameters())
                step = steps[i] = GraphStep(graphed[i], opt, F.cross_entropy, batch_size=16,
                                            warmup=2)
                for j in range(12):
                    if j == 7:
                        for g in opt.param_groups:
                            g["lr"] *= 0.1
                    step(*_batch(seed=100 * i + j))
                torch.cuda.current_stream().synchronize()
        except BaseException as e:  # noqa: BLE001 - re-raised by the test's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for i, name in enumerate(names):
        eager = copy.deepcopy(bases[i])
        opt = OPTIMIZERS[name](eager.parameters())
        for j in range(12):
            if j == 7:
                for g in opt.param_groups:
                    g["lr"] *= 0.1
            _eager_step(eager, opt, *_batch(seed=100 * i + j),
                        lambda: torch.autocast("cuda", enabled=False))
        assert steps[i].replays >= 5 and steps[i].captures >= 2
        for (k, a), b in zip(eager.state_dict().items(), graphed[i].state_dict().values()):
            torch.testing.assert_close(b.float(), a.float(), rtol=1e-4, atol=1e-5,
                                       msg=f"{name} {k}")
