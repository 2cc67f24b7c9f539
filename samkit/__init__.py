"""samkit: Sharpness-Aware Minimization done right, and the tools to study when it helps.

``import samkit`` imports nothing heavy: ``samkit.SAM`` and the other public names (and any
submodule, e.g. ``samkit.sweep.engine``) are imported on first use, so ``samkit --help`` answers
without importing torch, and a torch + numpy install (``pip install samkit``) never touches
the study machinery (``pip install 'samkit[study]'``).
"""
from __future__ import annotations

import importlib
import importlib.util

# public name -> the submodule that defines it
_EXPORTS = {
    "SAM": "optim.sam",
    "LookSAM": "optim.variants",
    "MomentumSAM": "optim.variants",
    "bn_frozen": "optim.bn",
    "PreActResNet18": "models",
    "MLP": "models",
    "one_hidden_relu": "models",
    "count_params": "models",
}

__all__ = ["SAM", "LookSAM", "MomentumSAM", "bn_frozen", "PreActResNet18", "MLP", "one_hidden_relu", "count_params"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # sets the attribute itself
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_EXPORTS})
