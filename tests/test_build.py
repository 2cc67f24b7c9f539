"""samkit.train.build: the learning-rate schedules and the optimizers it builds from a
TrainConfig (SAM on Adam against a hand-written float64 step)."""
import pytest
import torch

from samkit.train import build
from samkit.train.config import TrainConfig


def test_step3_schedule_is_the_papers():
    """lr x0.1 at 25%, 50% and 75% of the epochs (Shin et al.'s repository)."""
    cfg = TrainConfig(dataset="synthetic", model="mlp", width=4, epochs=8, lr=0.1,
                            schedule="step3")
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    sched = build._make_scheduler(cfg, opt)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4])


def test_adam_and_sam_on_adam_match_a_hand_written_float64_step():
    """sam with base_optimizer adam: three steps of Adam (betas 0.9/0.999, bias correction, L2
    weight decay added to the gradient) at the gradient of w + rho g/||g||, re-derived by hand
    in float64; the base optimizer is torch.optim.Adam, and plain adam is too."""
    import torch.nn.functional as F
    from samkit.train.build import _make_optimizer

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    w = [p.detach().clone() for p in model.parameters()]
    lr, rho, wd, (b1, b2), eps = 0.01, 1.0, 1e-2, (0.9, 0.999), 1e-8
    cfg = TrainConfig(model="mlp", optimizer="sam", base_optimizer="adam", rho=rho, lr=lr,
                      weight_decay=wd)
    opt = _make_optimizer(cfg, model)
    assert isinstance(opt.base_optimizer, torch.optim.Adam)

    def loss_at(ws):
        return F.cross_entropy(x @ ws[0].T + ws[1], y)

    m = [torch.zeros_like(wi) for wi in w]
    v = [torch.zeros_like(wi) for wi in w]
    for t in range(1, 4):
        F.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
        ws = [wi.clone().requires_grad_(True) for wi in w]
        g = torch.autograd.grad(loss_at(ws), ws)
        norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
        wp = [(wi + rho * gi / norm).requires_grad_(True) for wi, gi in zip(w, g)]
        g2 = torch.autograd.grad(loss_at(wp), wp)
        for i, (wi, gi) in enumerate(zip(w, g2)):
            gi = gi + wd * wi                       # torch.optim.Adam's L2: on w, not w + e
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi ** 2
            step = lr * (m[i] / (1 - b1 ** t)) / ((v[i] / (1 - b2 ** t)).sqrt() + eps)
            w[i] = wi - step
    for p, e in zip(model.parameters(), w):
        torch.testing.assert_close(p.detach(), e, rtol=1e-9, atol=1e-11)
    plain = _make_optimizer(TrainConfig(model="mlp", optimizer="adam"), model)
    assert type(plain) is torch.optim.Adam


def test_adam_ignores_momentum_so_its_key_may_drop_it():
    """Two SAM(Adam) optimizers that differ only in `momentum` take identical steps."""
    import torch.nn.functional as F
    from samkit.train.build import _make_optimizer
    weights = []
    for momentum in (0.5, 0.9):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        opt = _make_optimizer(TrainConfig(model="mlp", optimizer="sam", base_optimizer="adam",
                                          momentum=momentum), model)
        assert "momentum" not in opt.base_optimizer.param_groups[0]
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        for _ in range(2):
            F.cross_entropy(model(x), y).backward()
            opt.first_step(zero_grad=True)
            F.cross_entropy(model(x), y).backward()
            opt.second_step(zero_grad=True)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))
