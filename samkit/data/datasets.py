"""Datasets as in-memory tensors (``load_data``), plus batched on-device augmentation.

The pieces live beside this module: ``image_files`` (the raw image files: found, verified,
parsed), ``sampling`` (class-balanced subsets, label noise) and ``toy_data`` (the regression
data made in code). This module checks the arguments, puts the pieces together and normalises
the images.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from samkit.data import sampling, toy as toy_data
from samkit.data.files import image_arrays

DATASETS = ("fashion_mnist", "mnist", "cifar10", "synthetic", "toy1d")

MEAN_STD = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
NUM_CLASSES = 10  # all three image datasets


@dataclass
class Data:
    name: str
    task: str                      # "classification" or "regression"
    x_train: torch.Tensor
    y_train: torch.Tensor          # noisy labels when label_noise > 0
    y_train_clean: torch.Tensor
    noisy_idx: torch.Tensor        # int64 indices into the train set whose label was flipped
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int               # for regression: the output dimension
    x_probe: torch.Tensor | None = None

    def to(self, device) -> "Data":
        """A new Data with every tensor moved to ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                 if torch.is_tensor(getattr(self, f.name))}
        return dataclasses.replace(self, **moved)

    @property
    def in_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])


def default_root() -> str:
    """Where datasets live: $SAMKIT_DATA, else one per-user cache folder
    ($XDG_CACHE_HOME/samkit/data, i.e. ~/.cache/samkit/data), whatever the working directory."""
    if os.environ.get("SAMKIT_DATA"):
        return os.environ["SAMKIT_DATA"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "samkit", "data")


def load_data(name: str, root: str | None = None, n_train: int | None = None, n_val: int = 0,
              label_noise: float = 0.0, noise_seed: int = 0, subset_seed: int = 0,
              download: bool = True) -> Data:
    """Load dataset ``name`` (one of DATASETS) as tensors.

    ``n_train``: class-balanced training subset drawn with ``subset_seed`` (None: all);
    ``n_val``: class-balanced validation split from the examples not in the training subset.
    ``label_noise`` p: exactly round(p·n_train) training labels, chosen with ``noise_seed``,
    are replaced by a label drawn uniformly from the *other* classes. Val/test stay clean.
    For "synthetic", ``subset_seed`` is the data seed and ``n_train`` defaults to 500.
    """
    root = root or default_root()
    _check_args(name, n_train, n_val, label_noise, noise_seed, subset_seed)
    if name == "synthetic":
        return _regression(name, *toy_data.synthetic(n_train, n_val, subset_seed))
    if name == "toy1d":
        return _regression(name, *toy_data.toy1d(n_train, n_val))
    return _image_data(name, Path(root), download, n_train, n_val, label_noise, noise_seed,
                       subset_seed)


def _image_data(name, root, download, n_train, n_val, label_noise, noise_seed,
                subset_seed) -> Data:
    """A classification dataset from its files: subsets drawn, labels flipped, normalised."""
    x_tr, y_tr, x_te, y_te = image_arrays(name, root, download)
    n = len(y_tr)
    if n_train is None and n_val >= n:
        raise ValueError(f"n_val ({n_val}) must be smaller than the {n} training examples "
                         f"of {name}")
    if n_train is not None and n_train + n_val > n:
        raise ValueError(f"n_train + n_val ({n_train} + {n_val}) exceeds the {n} training "
                         f"examples of {name}")
    train_idx, val_idx = sampling.split(y_tr, n_train, n_val, subset_seed, NUM_CLASSES)
    y_clean = y_tr[train_idx]
    y_noisy, noisy_idx = sampling.flip_labels(y_clean, label_noise, noise_seed, NUM_CLASSES)
    # Indexing copies; the full set (train_idx = all, in order) needs no copy before normalising.
    x_train = x_tr if len(train_idx) == n else x_tr[train_idx]
    return Data(name, "classification", _normalise(x_train, name), y_noisy, y_clean,
                noisy_idx, _normalise(x_tr[val_idx], name), y_tr[val_idx],
                _normalise(x_te, name), y_te.clone(), NUM_CLASSES)


# Examples in each image dataset's (training set, test set): fixed, as the files are pinned by
# their checksums. Known without loading anything, so configs are checked before any work.
SPLIT_SIZES = {"fashion_mnist": (60000, 10000), "mnist": (60000, 10000),
               "cifar10": (50000, 10000)}


def split_sizes(name: str, n_train: int | None = None) -> tuple[int | None, int]:
    """(training examples available, test examples) of dataset ``name``, without loading it.
    synthetic draws as many training examples as asked (None) and a test set of a quarter of
    ``n_train`` (default toy_data.SYNTH_N_TRAIN); toy1d has its 12 points and a test grid."""
    if name == "synthetic":
        return None, max((toy_data.SYNTH_N_TRAIN if n_train is None else n_train) // 4, 1)
    if name == "toy1d":
        return len(toy_data.TOY1D_X), toy_data.TOY1D_TEST_POINTS
    return SPLIT_SIZES[name]


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4,
            flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` plus random horizontal flip, drawn
    independently per sample, on x's device, with no per-image loop.

    x is N×C×H×W; ``generator`` must live on x's device. Since inputs are normalised, the zero
    padding is the dataset-mean colour. With pad=0 and flip=False, x itself is returned.
    """
    if x.dim() != 4:
        raise ValueError(f"augment: x must be a batch N×C×H×W, got shape {tuple(x.shape)}")
    if not _is_int(pad) or pad < 0:
        raise ValueError(f"augment: pad must be a non-negative integer, got {pad!r}")
    if generator.device.type != x.device.type:
        raise ValueError(f"augment: generator is on {generator.device}, x on {x.device}; "
                         "they must be on the same device")
    if pad == 0 and not flip:
        return x
    n, c, h, w = x.shape
    dev = x.device
    # Output pixel (i, r, q) reads padded[i, rows[i, r], cols[i, q]]: one gather for all.
    rows = torch.arange(h, device=dev).expand(n, h)
    cols = torch.arange(w, device=dev).expand(n, w)
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
        rows = rows + torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=dev)
        cols = cols + torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=dev)
    if flip:
        flipped = torch.rand(n, 1, generator=generator, device=dev) < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    n_idx = torch.arange(n, device=dev).view(n, 1, 1, 1)
    c_idx = torch.arange(c, device=dev).view(1, c, 1, 1)
    return x[n_idx, c_idx, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


# ---------------------------------------------------------------- argument checks

def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_args(name, n_train, n_val, label_noise, noise_seed, subset_seed):
    if name not in DATASETS:
        raise ValueError(f"name must be one of {', '.join(DATASETS)}; got {name!r}")
    if n_train is not None and (not _is_int(n_train) or n_train < 1):
        raise ValueError(f"n_train must be a positive integer or None, got {n_train!r}")
    if not _is_int(n_val) or n_val < 0:
        raise ValueError(f"n_val must be a non-negative integer, got {n_val!r}")
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)) \
            or not 0 <= label_noise < 1:
        raise ValueError(f"label_noise must be a number in [0, 1), got {label_noise!r}")
    if label_noise > 0 and name in ("synthetic", "toy1d"):
        raise ValueError(f"label_noise applies to classification only; {name} is regression")
    for key, seed in (("noise_seed", noise_seed), ("subset_seed", subset_seed)):
        if not _is_int(seed):
            raise ValueError(f"{key} must be an integer, got {seed!r}")


# ---------------------------------------------------------------- tensors

def _normalise(x: torch.Tensor, name: str) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in MEAN_STD[name])
    return x.float().div_(255).sub_(mean).div_(std)  # in place: one allocation, not three


def _regression(name, x_tr, y_tr, x_val, y_val, x_te, y_te, x_probe=None) -> Data:
    return Data(name, "regression", x_tr, y_tr, y_tr.clone(), torch.zeros(0, dtype=torch.long),
                x_val, y_val, x_te, y_te, y_tr.shape[1], x_probe)
