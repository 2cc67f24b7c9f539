"""samkit.optim.graph_step.train_step (the trainer's one step) under torch.compile: the SAM family
gives the weights of its published rules (and so does SAM's own ``opt.step(closure)``). The CUDA
graphs of graph_step.GraphStep: tests/test_gpu.py.

Dynamo (torch 2.14) drops attribute writes on optimizer objects: a traced SAM step used to
forget w and update from w + ε (max |Δw| 2e-1 against eager after 3 steps of an MLP, with
backend="eager", i.e. in the tracing). The steps now run eagerly inside the compiled function.
Each case compiles samkit's one training step (samkit.optim.graph_step.train_step, what the trainer runs)
or ``opt.step(closure)`` and checks 10 steps against the float64 re-derivations of
tests/test_sam.py and tests/test_variants.py.

Tolerances: backend="eager" runs the very kernels of eager mode, so the float64 tolerance of
the eager tests holds (1e-12). Inductor generates its own fused kernels for the forward and
backward, whose float64 rounding differs from ATen's by a few ulps per step; 1e-9 leaves room
for 10 steps of that and is still 4 orders below what the bug does.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from samkit.optim.graph_step import train_step
from samkit.optim.sam import SAM
from samkit.optim.variants import LookSAM, MomentumSAM
from test_sam import _ref_sgd
from test_variants import (SGD_HP, _assert_weights, _batches, _hp, _mlp, _ref_interval,
                           _ref_looksam, _ref_msam)

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 10
TOL = {"eager": dict(rtol=0, atol=1e-12), "inductor": dict(rtol=0, atol=1e-9)}


def _case(name, model, batches):
    """(optimizer, float64 reference weights after ``batches``) for one SAM-family member."""
    hp = _hp(model, rho=0.1, lr=0.05, alpha=0.7, **SGD_HP)
    kw = dict(rho=0.1, lr=0.05, **SGD_HP)
    ps = model.parameters()
    if name == "sam":
        return SAM(ps, torch.optim.SGD, **kw), _ref_interval(model, batches, 1, hp)
    if name == "asam":
        return (SAM(ps, torch.optim.SGD, adaptive=True, eta=0.02, **kw),
                _ref_sgd(model, hp, batches, adaptive=True, eta=0.02))
    if name == "interval":
        return SAM(ps, torch.optim.SGD, interval=3, **kw), _ref_interval(model, batches, 3, hp)
    if name == "looksam":
        return (LookSAM(ps, torch.optim.SGD, k=3, alpha=0.7, **kw),
                _ref_looksam(model, batches, 3, hp))
    assert name == "msam"
    return MomentumSAM(ps, torch.optim.SGD, **kw), _ref_msam(model, batches, hp)


def _compiled_run(name, backend, form):
    torch._dynamo.reset()  # no graphs from an earlier case, and a fresh recompile budget
    model, batches = _mlp(), _batches(STEPS)
    opt, ref = _case(name, model, batches)

    if form == "train_step":
        def step(x, y):
            return train_step(model, opt, F.cross_entropy, x, y, contextlib.nullcontext)
    else:
        def step(x, y):
            def closure():
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss
            return opt.step(closure)

    step = torch.compile(step, backend=backend)
    for x, y in batches:
        step(x, y)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    return model, ref


VARIANTS = ["sam", "asam", "interval", "looksam", "msam"]


@pytest.mark.parametrize("name", VARIANTS)
def test_compiled_step_follows_the_rule_eager_backend(name):
    model, ref = _compiled_run(name, "eager", "train_step")
    _assert_weights(model, ref, **TOL["eager"])


@pytest.mark.parametrize("name", ["sam", "looksam"])
def test_compiled_closure_step_follows_the_rule(name):
    model, ref = _compiled_run(name, "eager", "closure")
    _assert_weights(model, ref, **TOL["eager"])


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_compiled_step_follows_the_rule_inductor(name):
    model, ref = _compiled_run(name, "inductor", "train_step")
    _assert_weights(model, ref, **TOL["inductor"])


def test_fullgraph_refuses_with_advice():
    """fullgraph=True cannot hold an eager step: one error, saying what to compile instead."""
    torch._dynamo.reset()
    model, batches = _mlp(), _batches(1)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.05)
    F.cross_entropy(model(batches[0][0]), batches[0][1]).backward()
    w = {k: p.detach().clone() for k, p in model.named_parameters()}
    first = torch.compile(lambda: opt.first_step(zero_grad=True), backend="eager",
                          fullgraph=True)
    with pytest.raises(Exception, match="compile the model"):
        first()
    _assert_weights(model, w, rtol=0, atol=0)  # refused before anything moved
