"""Models with a width knob: PreAct ResNet-18 and MLPs (incl. one-hidden-layer ReLU nets)."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al., 2016, "Identity Mappings"): BN-ReLU-conv ×2."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct ResNet-18; ``width`` = channels of the first stage (stages: w, 2w, 4w, 8w).

    Width 64 with 10 classes has 11.17M parameters, the blog's "11.2M". Global average pooling
    makes it work for any input size (28×28 Fashion-MNIST, 32×32 CIFAR-10).
    """

    def __init__(self, width: int = 64, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        _check_positive_int(width=width, in_channels=in_channels, num_classes=num_classes)
        self.width = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        stages, in_planes = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2 ** i
            stages.append(nn.Sequential(PreActBlock(in_planes, planes, stride),
                                        PreActBlock(planes, planes, 1)))
            in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)  # final pre-activation before pooling
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.layers(self.conv1(x))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


class MLP(nn.Module):
    """Fully connected ReLU net: flatten → [Linear → ReLU] per hidden width → Linear."""

    def __init__(self, in_features: int, hidden: list[int] | tuple[int, ...], num_classes: int):
        super().__init__()
        _check_positive_int(in_features=in_features, num_classes=num_classes)
        hidden = list(hidden)
        if not hidden:
            raise ValueError("MLP: hidden must list at least one width, e.g. [512]")
        _check_positive_int(**{f"hidden[{i}]": h for i, h in enumerate(hidden)})
        layers, prev = [nn.Flatten()], in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)
        self.hidden = hidden

    def forward(self, x):
        return self.net(x)


def one_hidden_relu(width: int, in_features: int = 1, out_features: int = 1) -> MLP:
    """One-hidden-layer ReLU net f(x) = Σ_j a_j·relu(w_j·x + b_j) + c, for 1-D regression
    (the setting of Andriushchenko & Flammarion 2022 used in the paper's Figure 2)."""
    return MLP(in_features, [width], out_features)


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of trainable parameters (``nonzero=True``: only entries that are not exactly 0,
    i.e. what a sparse model really uses)."""
    ps = [p for p in model.parameters() if p.requires_grad]
    if nonzero:
        return int(sum(int(torch.count_nonzero(p)) for p in ps))
    return sum(p.numel() for p in ps)


MODELS = ("preact_resnet18", "mlp", "one_hidden_relu")


def build_model(name: str, width: int, in_shape: tuple[int, ...], num_classes: int,
                depth: int = 1) -> nn.Module:
    """Model by name; ``width`` is the ResNet's first-stage channels or each MLP hidden size,
    ``depth`` the number of MLP hidden layers. ``in_shape`` is one example's shape (C, H, W)."""
    _check_positive_int(width=width)
    if name == "mlp":
        _check_positive_int(depth=depth)
    if name == "preact_resnet18":
        if len(in_shape) != 3:
            raise ValueError(f"model: preact_resnet18 needs image inputs (C, H, W), got {in_shape}")
        return PreActResNet18(width, in_channels=in_shape[0], num_classes=num_classes)
    in_features = int(torch.Size(in_shape).numel())
    if name == "mlp":
        return MLP(in_features, [width] * depth, num_classes)
    if name == "one_hidden_relu":
        return one_hidden_relu(width, in_features, num_classes)
    raise ValueError(f"model: unknown model {name!r}; allowed: {', '.join(MODELS)}")


def _check_positive_int(**values):
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{key} must be a positive integer, got {v!r}")
