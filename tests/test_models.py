"""samkit.models: sizes checked against counts derived from the architectures by hand."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from samkit.models import MLP, PreActResNet18, build_model, count_params, one_hidden_relu


pytestmark = pytest.mark.usefixtures("one_thread")


def _expected_preact18(w, in_ch, classes):
    """PreAct ResNet-18: 3×3 stem conv (no bias); 4 stages (w, 2w, 4w, 8w; strides 1, 2, 2, 2)
    of 2 basic blocks [BN, 3×3 conv, BN, 3×3 conv], a 1×1 conv shortcut (no bias) where the
    shape changes; final BN; linear with bias."""
    bn = lambda c: 2 * c  # noqa: E731  (γ, β)
    conv = lambda i, o, k: i * o * k * k  # noqa: E731
    total, c_in = conv(in_ch, w, 3), w
    for i, stride in enumerate((1, 2, 2, 2)):
        c = w * 2 ** i
        for b in range(2):
            i_ch = c_in if b == 0 else c
            total += bn(i_ch) + conv(i_ch, c, 3) + bn(c) + conv(c, c, 3)
            if b == 0 and (stride != 1 or i_ch != c):
                total += conv(i_ch, c, 1)
        c_in = c
    return total + bn(8 * w) + 8 * w * classes + classes


def test_preact_resnet18_parameter_count():
    model = PreActResNet18(64, 3, 10)
    n = count_params(model)
    assert n == _expected_preact18(64, 3, 10) == 11_172_170
    assert round(n / 1e6, 1) == 11.2  # the blog's "11.2M"
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules()) == 3
    for w, c, k in [(8, 1, 10), (16, 3, 100), (3, 2, 7)]:
        assert count_params(PreActResNet18(w, c, k)) == _expected_preact18(w, c, k)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_preact_resnet18_forward(shape):
    torch.manual_seed(0)
    model = PreActResNet18(4, shape[0], 10)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    model.eval()
    assert model(torch.randn(1, *shape)).shape == (1, 10)


def test_mlp_widths_and_count():
    m = MLP(784, [100, 50], 10)
    assert count_params(m) == (784 * 100 + 100) + (100 * 50 + 50) + (50 * 10 + 10)
    linears = [l for l in m.modules() if isinstance(l, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(784, 100), (100, 50), (50, 10)]
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)  # flattens images
    r = one_hidden_relu(7)
    assert count_params(r) == 7 + 7 + 7 + 1
    x = torch.linspace(-1, 1, 5).unsqueeze(1)
    l1, l2 = [l for l in r.modules() if isinstance(l, nn.Linear)]
    torch.testing.assert_close(r(x), torch.relu(x @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias)


def test_count_params_nonzero_and_frozen():
    m = MLP(4, [3], 2)  # 15 + 8 = 23
    with torch.no_grad():
        m.net[1].weight[0].zero_()  # 4 zeros
        m.net[1].bias[1] = 0.0      # 1 zero
    assert count_params(m) == 23
    assert count_params(m, nonzero=True) == 23 - 5
    m.net[3].requires_grad_(False)  # 3·2 + 2 = 8 frozen
    assert count_params(m) == 15
    assert count_params(m, nonzero=True) == 15 - 5


def test_build_model():
    assert count_params(build_model("mlp", 10, (1, 28, 28), 10, depth=2)) == \
        count_params(MLP(784, [10, 10], 10))
    assert count_params(build_model("one_hidden_relu", 5, (1,), 1)) == 5 + 5 + 5 + 1
    assert count_params(build_model("preact_resnet18", 8, (1, 28, 28), 10)) == \
        _expected_preact18(8, 1, 10)
    with pytest.raises(ValueError, match="resnet|unknown"):
        build_model("resnet", 8, (3, 32, 32), 10)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("preact_resnet18", 8, (784,), 10)


@pytest.mark.parametrize("make,name", [
    (lambda: PreActResNet18(0), "width"),
    (lambda: PreActResNet18(16.0), "width"),
    (lambda: PreActResNet18(True), "width"),
    (lambda: PreActResNet18(16, in_channels=0), "in_channels"),
    (lambda: PreActResNet18(16, num_classes=-3), "num_classes"),
    (lambda: MLP(0, [10], 10), "in_features"),
    (lambda: MLP(784, [10, 0], 10), r"hidden\[1\]"),
    (lambda: MLP(784, [], 10), "hidden"),
    (lambda: MLP(784, [10], 0), "num_classes"),
    (lambda: one_hidden_relu(-1), r"hidden\[0\]|width"),
    (lambda: build_model("mlp", 0, (1, 28, 28), 10), "width"),
    (lambda: build_model("preact_resnet18", 0, (3, 32, 32), 10), "width"),
    (lambda: build_model("mlp", 10, (1, 28, 28), 10, depth=0), "depth"),
])
def test_invalid_sizes_raise_naming_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()
