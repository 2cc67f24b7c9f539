"""samkit.optim.variants (LookSAM, MomentumSAM) and SAM's ``interval``: the cheaper SAM variants
checked against float64 re-derivations of their published rules.

- SAM(interval=k): MosaicML Composer's SAM runs the ascent on steps where (step + 1) % k == 0
  (step counted from 0); the other steps are plain base-optimizer steps.
- LookSAM (Liu et al., CVPR 2022, Algorithm 1): on t % k == 0, g_s = ∇L(w + ρg/‖g‖) and
  g_v = g_s − ‖g_s‖·cosθ·g/‖g‖; otherwise g_s = g + α·(‖g‖/‖g_v‖)·g_v; w ← base(g_s).
- Momentum-SAM (Becker et al., 2023; the authors' code): w̃ = w − ρ·v/‖v‖ with v the SGD
  momentum buffer (v ← μv + d, w ← w − lr·v); g = ∇L(w̃); the SGD step is taken at w.

Every reference below is written from those equations with autograd gradients in float64
(torch.func.functional_call), never from samkit's output; tolerances are float64's.
"""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from samkit.optim.bn import bn_frozen
from samkit.optim.sam import SAM
from samkit.optim.variants import LookSAM, MomentumSAM

DT = torch.float64
TOL = dict(rtol=0, atol=1e-12)
SGD_HP = dict(momentum=0.9, weight_decay=5e-4, nesterov=True)

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- references

def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(),
                         nn.Linear(6, 3)).to(DT)


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 5, generator=g, dtype=DT), torch.randint(0, 3, (8,), generator=g))
            for _ in range(n)]


def _weights(model):
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def _grad(model, w, x, y):
    w = {k: v.detach().clone().requires_grad_(True) for k, v in w.items()}
    loss = F.cross_entropy(torch.func.functional_call(model, w, (x,)), y)
    return dict(zip(w, torch.autograd.grad(loss, list(w.values()))))


def _norm(v):
    return torch.sqrt(sum((t * t).sum() for t in v.values()))


def _dot(a, b):
    return sum((a[k] * b[k]).sum() for k in a)


def _sam_grad(model, w, x, y, rho, adaptive=False, eta=0.01):
    """(g, g_s): the plain gradient and the (A)SAM gradient at w + ε, ε = ρ·T²g/‖Tg‖."""
    g = _grad(model, w, x, y)
    t = {k: (w[k].abs() + eta) if adaptive else torch.ones_like(w[k]) for k in w}
    n = _norm({k: t[k] * g[k] for k in w})
    gs = _grad(model, {k: w[k] + rho[k] * t[k] ** 2 * g[k] / n for k in w}, x, y)
    return g, gs


class _SGDRef:
    """torch.optim.SGD's rule (dampening 0) written out: d = g + wd·w; b ← μb + d (b = d at
    first); d = d + μb (nesterov) or b; w ← w − lr·d. ``hp`` maps name -> dict."""

    def __init__(self, hp):
        self.hp, self.buf = hp, {}

    def step(self, w, g):
        out = {}
        for k in w:
            h = self.hp[k]
            d = g[k] + h["weight_decay"] * w[k]
            if h["momentum"]:
                self.buf[k] = d.clone() if k not in self.buf else h["momentum"] * self.buf[k] + d
                d = d + h["momentum"] * self.buf[k] if h["nesterov"] else self.buf[k]
            out[k] = w[k] - h["lr"] * d
        return out


def _hp(model, **kw):
    return {k: dict(kw) for k, _ in model.named_parameters()}


def _ref_interval(model, batches, k, hp):
    """Composer's rule: SAM on (step + 1) % k == 0, plain steps otherwise."""
    w, sgd = _weights(model), _SGDRef(hp)
    rho = {n: hp[n]["rho"] for n in w}
    for step, (x, y) in enumerate(batches):
        g = _sam_grad(model, w, x, y, rho)[1] if (step + 1) % k == 0 else _grad(model, w, x, y)
        w = sgd.step(w, g)
    return w


def _ref_looksam(model, batches, k, hp, adaptive=False, eta=0.01):
    """Liu et al. 2022, Algorithm 1 (with the base optimizer's update for "w ← w − ηg_s")."""
    w, sgd, g_v = _weights(model), _SGDRef(hp), None
    rho = {n: hp[n]["rho"] for n in w}
    for step, (x, y) in enumerate(batches):
        if step % k == 0:
            g, g_s = _sam_grad(model, w, x, y, rho, adaptive, eta)
            cos = _dot(g, g_s) / (_norm(g) * _norm(g_s))
            g_v = {n: g_s[n] - _norm(g_s) * cos * g[n] / _norm(g) for n in w}
        else:
            g = _grad(model, w, x, y)
            scale = _norm(g) / _norm(g_v)
            g_s = {n: g[n] + hp[n]["alpha"] * scale * g_v[n] for n in w}
        w = sgd.step(w, g_s)
    return w


def _ref_msam(model, batches, hp):
    """Momentum-SAM: w̃ = w − ρ·v/(‖v‖ + 1e-12) (no perturbation before the first step, as the
    authors' zero-initialised buffers give); g = ∇L(w̃); SGD-momentum step at w (weight decay
    taken at w: samkit's documented choice; the tests below that pin the authors' exact rule
    use weight_decay=0, where the two agree)."""
    w, sgd = _weights(model), _SGDRef(hp)
    for x, y in batches:
        if sgd.buf:
            inv = 1.0 / (_norm(sgd.buf) + 1e-12)
            w_tilde = {n: w[n] - hp[n]["rho"] * inv * sgd.buf[n] for n in w}
        else:
            w_tilde = w
        w = sgd.step(w, _grad(model, w_tilde, x, y))
    return w


def _assert_weights(model, w, **tol):
    got = dict(model.named_parameters())
    assert set(got) == set(w)
    for k in w:
        torch.testing.assert_close(got[k].detach(), w[k], **(tol or TOL), msg=k)


# --------------------------------------------------------------------------- training loops

class _Counted:
    """The loss, counting forward/backward passes (what grad_evals must report)."""

    def __init__(self):
        self.passes = 0

    def __call__(self, model, x, y):
        self.passes += 1
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss


def _train(model, opt, batches, style, counter, scaler=None):
    for x, y in batches:
        if style == "closure":
            opt.step(lambda: counter(model, x, y), model=model)
        elif style == "msam":  # Momentum-SAM's form: perturb first, then the only pass
            opt.first_step(zero_grad=True)
            counter(model, x, y)
            opt.second_step(zero_grad=True)
        elif style == "scaler":
            counter.passes += 1
            scaler.scale(F.cross_entropy(model(x), y)).backward()
            if opt.first_step(zero_grad=True, grad_scaler=scaler):
                counter.passes += 1
                with bn_frozen(model):
                    scaler.scale(F.cross_entropy(model(x), y)).backward()
            opt.second_step(zero_grad=True, grad_scaler=scaler)
            scaler.update()
        else:
            counter(model, x, y)
            needed = opt.needs_second_pass
            assert opt.first_step(zero_grad=True) is needed
            if needed or style == "naive":  # "naive": a loop written for plain SAM
                with bn_frozen(model):
                    counter(model, x, y)
            opt.second_step(zero_grad=True)


# --------------------------------------------------------------------------- SAM(interval=k)

@pytest.mark.parametrize("style", ["checked", "naive", "closure", "scaler"])
def test_interval_matches_composer_rule(style):
    model, batches = _mlp(), _batches(7)
    params = dict(model.named_parameters())
    first = [params["0.weight"], params["0.bias"]]
    rest = [p for k, p in params.items() if not k.startswith("0.")]
    opt = SAM([dict(params=first, rho=0.05, lr=0.1), dict(params=rest, rho=0.2, lr=0.03)],
              torch.optim.SGD, interval=3, **SGD_HP)
    hp = {k: dict(SGD_HP, rho=0.05 if k.startswith("0.") else 0.2,
                  lr=0.1 if k.startswith("0.") else 0.03) for k in params}
    ref = _ref_interval(model, batches, 3, hp)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if style == "scaler" else None
    counter = _Counted()
    _train(model, opt, batches, style, counter, scaler)
    _assert_weights(model, ref)
    assert opt.grad_evals == 7 + 2  # SAM on steps 3 and 6 (from 1): one extra pass each
    assert counter.passes == (2 * 7 if style == "naive" else opt.grad_evals)


def test_interval_one_is_sam_every_step_and_counts_two():
    model, batches = _mlp(), _batches(3)
    hp = _hp(model, rho=0.1, lr=0.05, **SGD_HP)
    ref = _ref_interval(model, batches, 1, hp)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.05, **SGD_HP)
    counter = _Counted()
    _train(model, opt, batches, "checked", counter)
    _assert_weights(model, ref)
    assert opt.grad_evals == counter.passes == 6


# --------------------------------------------------------------------------- LookSAM

@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("style", ["checked", "naive", "closure"])
def test_looksam_matches_published_rule(style, adaptive):
    model, batches = _mlp(), _batches(7)
    hp = _hp(model, rho=0.1, lr=0.05, alpha=0.7, **SGD_HP)
    ref = _ref_looksam(model, batches, 3, hp, adaptive=adaptive, eta=0.02)
    opt = LookSAM(model.parameters(), torch.optim.SGD, rho=0.1, k=3, alpha=0.7, lr=0.05,
                  adaptive=adaptive, eta=0.02, **SGD_HP)
    counter = _Counted()
    _train(model, opt, batches, style, counter)
    _assert_weights(model, ref)
    assert opt.grad_evals == 7 + 3  # SAM steps 0, 3, 6
    assert counter.passes == (2 * 7 if style == "naive" else opt.grad_evals)


def test_looksam_reuse_term_is_what_moves_the_weights():
    """Sensitivity: alpha = 0 makes the in-between steps plain SGD (a different trajectory),
    and LookSAM with k = 1 is SAM on every step."""
    model, batches = _mlp(), _batches(5)
    hp = _hp(model, rho=0.1, lr=0.05, alpha=0.7, **SGD_HP)
    looksam = _ref_looksam(model, batches, 3, hp)
    plain = _ref_looksam(model, batches, 3, _hp(model, rho=0.1, lr=0.05, alpha=0.0, **SGD_HP))
    assert not torch.allclose(looksam["0.weight"], plain["0.weight"], atol=1e-6)
    opt = LookSAM(model.parameters(), torch.optim.SGD, rho=0.1, k=1, lr=0.05, **SGD_HP)
    _train(model, opt, batches, "checked", _Counted())
    _assert_weights(model, _ref_interval(_mlp(), batches, 1, hp))


# --------------------------------------------------------------------------- Momentum-SAM

@pytest.mark.parametrize("style", ["msam", "closure"])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-4])
def test_momentum_sam_matches_published_rule(style, weight_decay):
    model, batches = _mlp(), _batches(5)
    hp = _hp(model, rho=0.3, lr=0.05, momentum=0.9, weight_decay=weight_decay, nesterov=False)
    ref = _ref_msam(model, batches, hp)
    opt = MomentumSAM(model.parameters(), rho=0.3, lr=0.05, momentum=0.9,
                      weight_decay=weight_decay)
    counter = _Counted()
    _train(model, opt, batches, style, counter)
    _assert_weights(model, ref)
    assert opt.grad_evals == counter.passes == 5


def test_momentum_sam_perturbs_against_the_momentum_before_the_pass():
    """L(w) = ½‖w‖²: ∇L(w̃) = w̃, so the step after one with momentum v is closed-form."""
    w0 = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
    w = nn.Parameter(w0.clone())
    rho, lr, mu = 0.3, 0.1, 0.9
    opt = MomentumSAM([w], rho=rho, lr=lr, momentum=mu)
    opt.step(lambda: (0.5 * (w * w).sum()).backward())  # v1 = w0 (no perturbation yet)
    w1 = w0 - lr * w0
    torch.testing.assert_close(w.detach(), w1, **TOL)
    seen = []

    def closure():
        seen.append(w.detach().clone())
        (0.5 * (w * w).sum()).backward()
    opt.step(closure)
    w_tilde = w1 - rho * w0 / w0.norm()  # ε = −ρ·v/‖v‖
    torch.testing.assert_close(seen[0], w_tilde, **TOL)
    torch.testing.assert_close(w.detach(), w1 - lr * (mu * w0 + w_tilde), **TOL)


# --------------------------------------------------------------------------- state, copies

def _variants():
    return {
        "interval": (lambda m: SAM(m.parameters(), torch.optim.SGD, rho=0.1, lr=0.05,
                                   interval=3, **SGD_HP),
                     lambda m, b: _ref_interval(m, b, 3, _hp(m, rho=0.1, lr=0.05, **SGD_HP)),
                     "checked"),
        "looksam": (lambda m: LookSAM(m.parameters(), torch.optim.SGD, rho=0.1, k=3, alpha=0.7,
                                      lr=0.05, **SGD_HP),
                    lambda m, b: _ref_looksam(m, b, 3, _hp(m, rho=0.1, lr=0.05, alpha=0.7,
                                                           **SGD_HP)),
                    "checked"),
        "msam": (lambda m: MomentumSAM(m.parameters(), rho=0.3, lr=0.05, momentum=0.9),
                 lambda m, b: _ref_msam(m, b, _hp(m, rho=0.3, lr=0.05, momentum=0.9,
                                                  weight_decay=0.0, nesterov=False)),
                 "msam"),
    }


@pytest.mark.parametrize("how", ["state_dict", "deepcopy"])
@pytest.mark.parametrize("variant", ["interval", "looksam", "msam"])
def test_resume_mid_cycle_follows_the_reference(variant, how):
    """Stop after 4 steps (between two SAM steps: LookSAM's g_v, the schedule's phase and the
    momentum are all live), resume in fresh objects, finish 7 steps on the reference."""
    make, reference, style = _variants()[variant]
    model, batches = _mlp(), _batches(7)
    ref = reference(model, batches)
    opt = make(model)
    _train(model, opt, batches[:4], style, _Counted())
    evals = opt.grad_evals
    if how == "deepcopy":
        model, opt = copy.deepcopy((model, opt))
    else:
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
        buf.seek(0)
        ckpt = torch.load(buf, weights_only=True)
        model = _mlp(seed=123)  # different init: everything must come from the checkpoint
        opt = make(model)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        again = opt.state_dict()  # the loaded state saves back to the same dict
        assert again["sam"]["steps"] == ckpt["opt"]["sam"]["steps"] == 4
        assert again["sam"]["grad_evals"] == ckpt["opt"]["sam"]["grad_evals"] == evals
        assert again["sam"]["state"].keys() == ckpt["opt"]["sam"]["state"].keys()
        for i, kept in ckpt["opt"]["sam"]["state"].items():
            for key, v in kept.items():
                assert torch.equal(again["sam"]["state"][i][key], v)
    assert opt.grad_evals == evals
    _train(model, opt, batches[4:], style, _Counted())
    _assert_weights(model, ref)
    if variant == "looksam":
        assert len(opt.state_dict()["sam"]["state"]) == 6  # a g_v for each parameter


def test_loads_a_state_dict_saved_before_the_variants():
    """Checkpoints written by the old SAM.state_dict() ({"base_optimizer": ...}) still load."""
    model, batches = _mlp(), _batches(2)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.05, **SGD_HP)
    _train(model, opt, batches[:1], "checked", _Counted())
    old = {"base_optimizer": opt.base_optimizer.state_dict()}
    opt2 = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.05, **SGD_HP)
    opt2.load_state_dict(old)
    assert opt2.grad_evals == 0 and opt2.needs_second_pass
    assert opt2.base_optimizer.state_dict()["state"].keys() == old["base_optimizer"]["state"].keys()


# --------------------------------------------------------------------------- no host sync

@pytest.mark.parametrize("variant", ["interval", "looksam", "msam"])
def test_variant_steps_do_not_sync_with_the_host(variant, monkeypatch):
    make, _, style = _variants()[variant]
    model, batches = _mlp(), _batches(4)
    opt = make(model)

    def boom(*a, **k):
        raise AssertionError("host sync in a SAM step")

    def no_sync(fn, **kw):
        with monkeypatch.context() as mp:
            for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__",
                         "numpy", "cpu"):
                mp.setattr(torch.Tensor, name, boom)
            return fn(**kw)

    for x, y in batches:  # SAM steps and cheap steps alike
        if style == "msam":
            no_sync(opt.first_step, zero_grad=True)
            F.cross_entropy(model(x), y).backward()
        else:
            F.cross_entropy(model(x), y).backward()
            if no_sync(opt.first_step, zero_grad=True):
                F.cross_entropy(model(x), y).backward()
        no_sync(opt.second_step, zero_grad=True)


# --------------------------------------------------------------------------- validation

def test_variant_arguments_are_validated():
    m = _mlp()
    with pytest.raises(ValueError, match="interval must be an int >= 1"):
        SAM(m.parameters(), torch.optim.SGD, lr=0.1, interval=0)
    with pytest.raises(ValueError, match="interval must be an int >= 1"):
        SAM(m.parameters(), torch.optim.SGD, lr=0.1, interval=2.0)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        LookSAM(m.parameters(), torch.optim.SGD, lr=0.1, k=0)
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        LookSAM(m.parameters(), torch.optim.SGD, lr=0.1, alpha=-1.0)
    with pytest.raises(TypeError, match="pass k, not interval"):
        LookSAM(m.parameters(), torch.optim.SGD, lr=0.1, interval=2)
    with pytest.raises(TypeError, match="must be torch.optim.SGD"):
        MomentumSAM(m.parameters(), torch.optim.Adam, lr=0.1)
    with pytest.raises(ValueError, match="momentum > 0"):
        MomentumSAM(m.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="no 'adaptive' option"):
        MomentumSAM(m.parameters(), lr=0.1, momentum=0.9, adaptive=True)
    opt = LookSAM(m.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="grad_scaler is not supported"):
        opt.first_step(grad_scaler=object())
    with pytest.raises(RuntimeError, match="MomentumSAM.step needs a closure"):
        MomentumSAM(m.parameters(), lr=0.1, momentum=0.9).step()
