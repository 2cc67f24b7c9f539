"""samkit.measure.hessian: the Hessian measures against exact Hessians of tiny float64 models
(torch.func.hessian)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

from samkit.measure.hessian import hvp_fn, hessian_trace, nonuniformity, sharpness, top_eigenvalue
from samkit.models import MLP, PreActResNet18

N = 12


def ce_problem():
    torch.manual_seed(0)
    model = MLP(3, [4], 2).double()
    x = torch.randn(N, 3, dtype=torch.float64)
    return model, F.cross_entropy, x, torch.randint(0, 2, (N,))


def mse_problem():
    torch.manual_seed(1)
    model = MLP(3, [4], 2).double()
    x = torch.randn(N, 3, dtype=torch.float64)
    return model, F.mse_loss, x, torch.randn(N, 2, dtype=torch.float64)


PROBLEMS = [ce_problem, mse_problem]


def exact_hessian(model, loss_fn, x, y):
    """Dense Hessian of the mean loss w.r.t. all parameters, flattened in named order."""
    named = list(model.named_parameters())
    w = torch.cat([p.detach().flatten() for _, p in named])

    def loss(flat):
        parts = flat.split([p.numel() for _, p in named])
        params = {n: t.view(p.shape) for (n, p), t in zip(named, parts)}
        return loss_fn(functional_call(model, params, (x,)), y)
    return hessian(loss)(w)


def rel(a, b):
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_hvp_matches_exact_hessian(problem):
    model, loss_fn, x, y = problem()
    H = exact_hessian(model, loss_fn, x, y)
    hvp = hvp_fn(model, loss_fn, x, y)
    chunked = hvp_fn(model, loss_fn, x, y, batch_size=5)  # 5 + 5 + 2, weighted
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(H.shape[0], generator=g, dtype=torch.float64)
        torch.testing.assert_close(hvp(v), H @ v, rtol=0, atol=1e-10)
        torch.testing.assert_close(chunked(v), H @ v, rtol=0, atol=1e-10)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_top_eigenvalue_matches_eigvalsh(problem):
    model, loss_fn, x, y = problem()
    eig = torch.linalg.eigvalsh(exact_hessian(model, loss_fn, x, y))
    assert eig.min() < 0 < eig.max()  # indefinite: λmax is not just the largest |λ| by luck
    lam = top_eigenvalue(model, loss_fn, x, y, iters=1000, tol=1e-12)
    assert rel(lam, eig.max().item()) < 1e-6


def hutchinson_tolerance(H, samples):
    """4 standard errors of the Rademacher Hutchinson mean: Var(vᵀHv) = 2·Σ_{i≠j} H_ij²."""
    off = (H ** 2).sum() - (H.diag() ** 2).sum()
    return 4 * math.sqrt(2 * off.item() / samples)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_hutchinson_trace_is_within_four_standard_errors(problem):
    model, loss_fn, x, y = problem()
    H = exact_hessian(model, loss_fn, x, y)
    samples = 8000  # cheap: vmapped 2000 vectors at a time
    tol, exact = hutchinson_tolerance(H, samples), H.trace().item()
    # A real test: the window is narrow, and e.g. Σ|λ| (an |H|-based estimate) or a trace
    # missing one parameter block would fall outside it.
    assert tol < 0.07 * abs(exact)
    assert abs(torch.linalg.eigvalsh(H).abs().sum().item() - exact) > 2 * tol
    first = H.diag()[:12].sum().item()  # the first layer's 4×3 weights
    assert min(abs(first), abs(exact - first)) > 2 * tol
    est = hessian_trace(model, loss_fn, x, y, samples=samples, seed=0, vectors_per_pass=2000)
    assert abs(est - exact) < tol
    # Seeded, and the same vectors whether vmapped in blocks or not.
    again = hessian_trace(model, loss_fn, x, y, samples=samples, seed=0, vectors_per_pass=3000)
    assert again == pytest.approx(est, rel=1e-12)


def exact_nonuniformity(model, loss_fn, x, y):
    Hi = torch.stack([exact_hessian(model, loss_fn, x[i:i + 1], y[i:i + 1])
                      for i in range(len(x))])
    H = Hi.mean(0)
    torch.testing.assert_close(H, exact_hessian(model, loss_fn, x, y))  # mean loss = mean H_i
    sigma = (Hi @ Hi).mean(0) - H @ H
    return torch.linalg.eigvalsh(sigma).max().sqrt().item()


@pytest.mark.parametrize("problem", PROBLEMS)
def test_nonuniformity_matches_exact_per_example_hessians(problem):
    model, loss_fn, x, y = problem()
    want = exact_nonuniformity(model, loss_fn, x, y)
    got = nonuniformity(model, loss_fn, x, y, iters=1000, tol=1e-12)
    assert rel(got, want) < 1e-6
    if problem is ce_problem:  # chunked vmap (5 + 5 + 2); once is enough (it is slower)
        chunked = nonuniformity(model, loss_fn, x, y, iters=1000, tol=1e-12, batch_size=5)
        assert rel(chunked, want) < 1e-6


class Quadratic(nn.Module):
    """loss = ½ wᵀAw for every example (the output is that loss, per example)."""

    def __init__(self, A):
        super().__init__()
        self.register_buffer("A", A)
        self.w = nn.Parameter(torch.randn(len(A), dtype=A.dtype))

    def forward(self, x):
        return (0.5 * self.w @ self.A @ self.w).expand(len(x))


def mean_output(out, y):
    return out.mean()


@pytest.mark.parametrize("eigs", [[3.0, 1.0, -0.5, 0.2], [2.0, 1.0, -5.0, 0.5]],
                         ids=["dominant-positive", "dominant-negative"])
def test_quadratic_gives_lambda_max_and_trace_of_A(eigs):
    torch.manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    A = Q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ Q.T
    model = Quadratic(A)
    x, y = torch.zeros(6, 1, dtype=torch.float64), torch.zeros(6)
    # |λ| ratios ≥ 1.5: power iteration (and its shifted rerun) converges fast.
    assert rel(top_eigenvalue(model, mean_output, x, y, iters=500, tol=1e-14), max(eigs)) < 1e-8
    samples = 400
    est = hessian_trace(model, mean_output, x, y, samples=samples, vectors_per_pass=samples)
    assert abs(est - sum(eigs)) < hutchinson_tolerance(A, samples)
    # Every example has the same Hessian A: perfectly uniform.
    assert nonuniformity(model, mean_output, x, y) < 1e-6


def test_model_state_is_untouched_by_measuring():
    torch.manual_seed(0)
    model = PreActResNet18(width=2, in_channels=3, num_classes=3)
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2,))
    F.cross_entropy(model(x), y).backward()  # grads and non-default running stats
    model.layers[2].eval()  # mixed train/eval flags must come back as they were
    flags = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    # Few iterations: this checks side effects, not accuracy (a CPU ResNet HVP is slow).
    v = torch.randn(sum(p.numel() for p in model.parameters()))
    assert torch.isfinite(hvp_fn(model, F.cross_entropy, x, y)(v)).all()
    assert math.isfinite(top_eigenvalue(model, F.cross_entropy, x, y, iters=2))
    assert math.isfinite(hessian_trace(model, F.cross_entropy, x, y, samples=2))
    assert nonuniformity(model, F.cross_entropy, x, y, iters=2) >= 0

    assert flags == [m.training for m in model.modules()]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(grads[n], p.grad) for n, p in model.named_parameters())


def test_sharpness_reports_all_measures():
    model, loss_fn, x, y = ce_problem()
    out = sharpness(model, loss_fn, x, y, seed=0)
    assert out["n_samples"] == N
    H = exact_hessian(model, loss_fn, x, y)
    assert rel(out["lambda_max"], torch.linalg.eigvalsh(H).max().item()) < 1e-2
    assert abs(out["trace"] - H.trace().item()) < 0.5 * abs(H.trace().item())  # 64 samples
    assert rel(out["nonuniformity"], exact_nonuniformity(model, loss_fn, x, y)) < 1e-2


def test_measurement_uses_eval_mode():
    # In train mode BatchNorm would use batch statistics: the eval-mode loss is the one
    # differentiated, so the HVP equals the exact Hessian of the eval-mode model.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(N, 3, dtype=torch.float64), torch.randint(0, 2, (N,))
    model(x)  # move the running stats off their defaults
    model.eval()
    H = exact_hessian(model, F.cross_entropy, x, y)
    model.train()
    v = torch.randn(H.shape[0], dtype=torch.float64)
    torch.testing.assert_close(hvp_fn(model, F.cross_entropy, x, y)(v), H @ v, rtol=0,
                               atol=1e-10)
    assert model.training


def test_bad_arguments_are_rejected():
    model, loss_fn, x, y = ce_problem()
    with pytest.raises(ValueError, match="equal length"):
        hvp_fn(model, loss_fn, x, y[:3])
    with pytest.raises(ValueError, match="batch_size"):
        hvp_fn(model, loss_fn, x, y, batch_size=0)
    with pytest.raises(ValueError, match="samples"):
        hessian_trace(model, loss_fn, x, y, samples=0)
    with pytest.raises(ValueError, match="vectors_per_pass"):
        hessian_trace(model, loss_fn, x, y, vectors_per_pass=0)
    with pytest.raises(ValueError, match="iters"):
        top_eigenvalue(model, loss_fn, x, y, iters=0)


def test_hutchinson_is_tight_on_a_nearly_diagonal_hessian():
    # Rademacher vectors get the diagonal exactly every sample, so with small off-diagonal
    # entries the estimate must be within ~1% of tr(A): a wrongly scaled estimator fails.
    torch.manual_seed(0)
    A = torch.diag(torch.linspace(1, 3, 20, dtype=torch.float64))
    A = A + 0.01 * (lambda B: B + B.T)(torch.randn(20, 20, dtype=torch.float64))
    model = Quadratic(A)
    x, y = torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2)
    samples = 200
    tol = hutchinson_tolerance(A, samples)
    assert tol < 0.01 * A.trace().item()
    est = hessian_trace(model, mean_output, x, y, samples=samples, vectors_per_pass=7)
    assert abs(est - A.trace().item()) < tol
