"""Datasets as in-memory tensors, plus batched on-device augmentation.

Image datasets are read from the raw files torchvision's layout uses (idx files for
(Fashion-)MNIST, pickle batches for CIFAR-10), verified against known checksums, parsed with
numpy and cached per process: sweeps load the same data many times. Fashion-MNIST works
offline from the Debian package ``dataset-fashion-mnist``; torchvision downloads are the
fallback. The checksum tables are module-level so tests can pin them to tiny files written in
the real format and still exercise the real verification and parsing code.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import replacing

DATASETS = ("fashion_mnist", "mnist", "cifar10", "synthetic", "toy1d")

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

# sha256 of the *uncompressed* idx files. Fashion-MNIST: computed from the Debian package's
# files; several independent projects list the same values for the upstream files (whose .gz
# match torchvision's md5s). MNIST: as listed by many independent projects for the official
# files (torchvision itself only checks md5s of the .gz files, at download time).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# md5 of the extracted CIFAR-10 python batches (torchvision's list). Checked before unpickling,
# because unpickling runs code: only known bytes are ever unpickled.
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

MEAN_STD = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
NUM_CLASSES = 10  # all three image datasets

# Student-teacher regression (Advani et al. 2020 style): x ~ N(0, I_d),
# y = teacher(x) + SYNTH_NOISE_STD·N(0, 1), teacher a random bias-free 2-layer ReLU net.
SYNTH_DIM, SYNTH_HIDDEN, SYNTH_NOISE_STD, SYNTH_N_TRAIN = 20, 10, 0.1, 500

# The 12 points of Maennel et al. (2018), as used by Andriushchenko & Flammarion (2022),
# tml-epfl/understanding-sam, one_layer_relu_nets/1d_nn.ipynb.
TOY1D_X = [(k - 5.5) / 4 + 0.07 for k in range(12)]
TOY1D_Y = [0.345 + v for v in (-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1)]
TOY1D_PROBE_POINTS, TOY1D_PROBE_MARGIN, TOY1D_TEST_POINTS = 401, 0.1, 101


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
        return _synthetic(n_train, n_val, subset_seed)
    if name == "toy1d":
        return _toy1d(n_train, n_val)
    x_tr, y_tr, x_te, y_te = _image_arrays(name, Path(root), download)
    n = len(y_tr)
    if n_train is None and n_val >= n:
        raise ValueError(f"n_val ({n_val}) must be smaller than the {n} training examples "
                         f"of {name}")
    if n_train is not None and n_train + n_val > n:
        raise ValueError(f"n_train + n_val ({n_train} + {n_val}) exceeds the {n} training "
                         f"examples of {name}")
    train_idx, val_idx = _split(y_tr, n_train, n_val, subset_seed)
    y_clean = y_tr[train_idx]
    y_noisy, noisy_idx = _flip_labels(y_clean, label_noise, noise_seed)
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
    ``n_train`` (default SYNTH_N_TRAIN); toy1d has its 12 points and a test grid."""
    if name == "synthetic":
        return None, max((SYNTH_N_TRAIN if n_train is None else n_train) // 4, 1)
    if name == "toy1d":
        return len(TOY1D_X), TOY1D_TEST_POINTS
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


# ---------------------------------------------------------------- files

def _sums(name: str) -> dict:
    # Looked up at call time so a patched table is honoured.
    return {"fashion_mnist": FASHION_MNIST_SHA256, "mnist": MNIST_SHA256,
            "cifar10": CIFAR10_MD5}[name]


def _raw_dir(name: str, root: Path) -> Path:
    return root / {"fashion_mnist": "FashionMNIST/raw", "mnist": "MNIST/raw",
                   "cifar10": "cifar-10-batches-py"}[name]


def _missing(name: str, raw: Path) -> list[str]:
    return [f for f in _sums(name) if not (raw / f).is_file()]


def _ensure_files(name: str, root: Path, download: bool) -> Path:
    """Make sure the raw files exist: Debian package, then torchvision download."""
    raw = _raw_dir(name, root)
    if name == "fashion_mnist" and _missing(name, raw) and DEBIAN_FASHION_DIR.is_dir():
        for f in _missing(name, raw):
            src = DEBIAN_FASHION_DIR / f"{f}.gz"
            try:
                _gunzip(src, raw / f)
            except (OSError, EOFError) as e:  # unreadable or truncated .gz
                raise RuntimeError(f"{name}: cannot decompress {src} ({e}). Reinstall it with "
                                   "`apt-get install --reinstall dataset-fashion-mnist`.") from e
    if _missing(name, raw) and download:
        try:
            _torchvision_download(name, root)
        except Exception as e:  # torchvision raises many types (URLError, RuntimeError, ...)
            raise RuntimeError(f"{name}: download failed ({e}). "
                               + _where_to_put(name, raw, download)) from e
    if _missing(name, raw):
        raise FileNotFoundError(f"{name}: missing {', '.join(_missing(name, raw))}. "
                                + _where_to_put(name, raw, download))
    return raw


def _where_to_put(name: str, raw: Path, download: bool) -> str:
    hint = (f"Put the uncompressed files {', '.join(_sums(name))} in {raw}"
            if name != "cifar10" else
            f"Extract cifar-10-python.tar.gz so that {raw} holds {', '.join(CIFAR10_FILES)}")
    if name == "fashion_mnist":
        hint += " (or `apt-get install dataset-fashion-mnist`)"
    # the CLI and the pipeline always allow the download: only API users can turn it off
    return hint + (", or rerun with network access so torchvision can download it." if download
                   else ", or call with download=True on a machine with network access.")


def _gunzip(src: Path, dst: Path) -> None:
    """Decompress to a temporary file, then rename: a kill never leaves a truncated ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(src, "rb") as fin, replacing(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def _torchvision_download(name: str, root: Path) -> None:
    from torchvision import datasets
    cls = {"fashion_mnist": datasets.FashionMNIST, "mnist": datasets.MNIST,
           "cifar10": datasets.CIFAR10}[name]
    cls(str(root), train=True, download=True)  # fetches (and md5-checks) all splits


def _read_verified(path: Path, expected: str, name: str) -> bytearray:
    """The file's bytes, after checking their sha256 (idx) or md5 (CIFAR-10) digest."""
    data = bytearray(path.read_bytes())  # writable: numpy/torch views need no copy
    algo = "md5" if name == "cifar10" else "sha256"
    got = hashlib.new(algo, data, usedforsecurity=False).hexdigest()
    if got != expected:
        fix = ("it is restored from /usr/share/datasets/fashion-mnist if the Debian package is "
               "installed (`apt-get install dataset-fashion-mnist`), or else downloaded by "
               "torchvision (needs network access)" if name == "fashion_mnist"
               else "torchvision downloads it again (needs network access)")
        raise RuntimeError(f"{name}: corrupt file {path} ({algo} {got}, expected {expected}). "
                           f"Delete it and rerun: {fix}.")
    return data


# ---------------------------------------------------------------- parsing (cached)

def _image_arrays(name: str, root: Path, download: bool):
    """uint8 images N×C×H×W and int64 labels, (train x, train y, test x, test y)."""
    raw = _ensure_files(name, root, download)
    sums = tuple(sorted(_sums(name).items()))
    # File identity in the key: a file replaced or edited on disk is read (and verified) again.
    stamp = tuple((s.st_size, s.st_mtime_ns, s.st_ino)
                  for s in (os.stat(raw / f) for f, _ in sums))
    return _parse_cached(name, str(raw.resolve()), sums, stamp)


@functools.lru_cache(maxsize=4)
def _parse_cached(name: str, raw: str, sums: tuple, stamp: tuple):
    sums, raw = dict(sums), Path(raw)

    def read(f):
        return _read_verified(raw / f, sums[f], name)

    if name == "cifar10":
        train = [_parse_cifar(read(f), raw / f) for f in CIFAR10_FILES[:5]]
        x_te, y_te = _parse_cifar(read("test_batch"), raw / "test_batch")
        x_tr = torch.cat([x for x, _ in train])
        y_tr = torch.cat([y for _, y in train])
        return x_tr, y_tr, x_te, y_te
    arrays = [_parse_idx(read(f), raw / f) for f in IDX_FILES]
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(a) for a in arrays)
    for x, y, f in ((x_tr, y_tr, IDX_FILES[0]), (x_te, y_te, IDX_FILES[2])):
        if x.dim() != 3 or x.shape[1:] != (28, 28) or y.dim() != 1 or len(x) != len(y):
            raise RuntimeError(f"{name}: {raw / f} holds images of shape {tuple(x.shape)} "
                               f"for {len(y)} labels; expected N×28×28 with N labels")
    return x_tr.unsqueeze(1), y_tr.long(), x_te.unsqueeze(1), y_te.long()


def _parse_idx(data: bytearray, path: Path) -> np.ndarray:
    """An idx file of unsigned bytes: magic 0x00 0x00 0x08 ndim, ndim big-endian sizes, data."""
    ndim = data[3] if len(data) >= 4 else 0
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or ndim == 0:
        raise RuntimeError(f"{path} is not an idx file of unsigned bytes")
    dims = [int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4)]
    offset = 4 + 4 * ndim
    if len(data) != offset + int(np.prod(dims)):
        raise RuntimeError(f"{path}: size {len(data)} does not match its header {dims}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def _parse_cifar(data: bytearray, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    batch = pickle.loads(data, encoding="bytes")  # safe: digest was verified first
    x = np.asarray(batch[b"data"], dtype=np.uint8)
    y = np.asarray(batch[b"labels"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3072 or y.shape != (len(x),):
        raise RuntimeError(f"{path}: data {x.shape} / labels {y.shape}; expected N×3072 / N")
    # Each row is the red, then green, then blue 32×32 plane, row-major: already CHW.
    return torch.from_numpy(x.reshape(-1, 3, 32, 32)), torch.from_numpy(y)


def _normalise(x: torch.Tensor, name: str) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in MEAN_STD[name])
    return x.float().div_(255).sub_(mean).div_(std)  # in place: one allocation, not three


# ---------------------------------------------------------------- subsets and label noise

def _generator(purpose: str, seed: int) -> torch.Generator:
    """A CPU generator per purpose: callers may pass one seed as both noise_seed and
    subset_seed, and equal seeds must not draw the same random stream for both."""
    digest = hashlib.sha256(f"{purpose}:{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _balanced_counts(n: int, available: list[int]) -> list[int]:
    """Split n over classes as evenly as availability allows; remainders go to the lowest
    class indices; a class that runs out passes its share to the others."""
    counts = [0] * len(available)
    while n > 0:
        open_ = [c for c, a in enumerate(available) if counts[c] < a]
        share, extra = divmod(n, len(open_))
        for i, c in enumerate(open_):
            take = min(share + (i < extra), available[c] - counts[c])
            counts[c] += take
            n -= take
    return counts


def _split(labels: torch.Tensor, n_train: int | None, n_val: int, seed: int):
    """Sorted (train, val) indices; class-balanced, disjoint, drawn with ``seed``."""
    if n_train is None and n_val == 0:
        return torch.arange(len(labels)), torch.arange(0)
    g = _generator("subset", seed)
    pools = []
    for c in range(NUM_CLASSES):
        idx = (labels == c).nonzero().flatten()
        pools.append(idx[torch.randperm(len(idx), generator=g)])
    sizes = [len(p) for p in pools]
    if n_train is None:  # val first, everything else trains
        v = _balanced_counts(n_val, sizes)
        val = torch.cat([p[:k] for p, k in zip(pools, v)])
        train = torch.cat([p[k:] for p, k in zip(pools, v)])
    else:
        t = _balanced_counts(n_train, sizes)
        v = _balanced_counts(n_val, [s - k for s, k in zip(sizes, t)])
        train = torch.cat([p[:k] for p, k in zip(pools, t)])
        val = torch.cat([p[k:k + m] for p, k, m in zip(pools, t, v)])
    # Sorted: keeps the dataset's own order instead of grouping the examples by class.
    return train.sort().values, val.sort().values


def _flip_labels(y: torch.Tensor, p: float, seed: int):
    """Exactly round(p·n) labels moved to a uniformly drawn *other* class."""
    g = _generator("noise", seed)
    n_noisy = round(p * len(y))
    idx = torch.randperm(len(y), generator=g)[:n_noisy].sort().values
    shift = torch.randint(1, NUM_CLASSES, (n_noisy,), generator=g)  # never 0: always a flip
    y_noisy = y.clone()
    y_noisy[idx] = (y[idx] + shift) % NUM_CLASSES
    return y_noisy, idx


# ---------------------------------------------------------------- regression data

def _regression(name, x_tr, y_tr, x_val, y_val, x_te, y_te, x_probe=None) -> Data:
    return Data(name, "regression", x_tr, y_tr, y_tr.clone(), torch.zeros(0, dtype=torch.long),
                x_val, y_val, x_te, y_te, y_tr.shape[1], x_probe)


def _synthetic(n_train: int | None, n_val: int, seed: int) -> Data:
    """Student-teacher regression; the test set (n_train // 4 points, at least 1) is drawn
    from the same noisy distribution as the training set."""
    n_train = SYNTH_N_TRAIN if n_train is None else n_train
    n_test = max(n_train // 4, 1)
    g = _generator("synthetic", seed)
    # Variance-preserving init (N(0, 1/fan_in)) keeps the teacher's output O(1).
    w1 = torch.randn(SYNTH_HIDDEN, SYNTH_DIM, generator=g) / SYNTH_DIM ** 0.5
    w2 = torch.randn(1, SYNTH_HIDDEN, generator=g) / SYNTH_HIDDEN ** 0.5

    def sample(n):
        x = torch.randn(n, SYNTH_DIM, generator=g)
        y = torch.relu(x @ w1.T) @ w2.T + SYNTH_NOISE_STD * torch.randn(n, 1, generator=g)
        return x, y

    x, y = sample(n_train + n_val)
    x_te, y_te = sample(n_test)
    return _regression("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                       x_te, y_te)


def _toy1d(n_train: int | None, n_val: int) -> Data:
    """The fixed 12-point 1-D data; the test set samples their piecewise-linear interpolant
    on a grid (a reference curve: the points come from no underlying function)."""
    if n_train not in (None, len(TOY1D_X)) or n_val:
        raise ValueError(f"toy1d has exactly {len(TOY1D_X)} fixed points: use n_train=None "
                         f"and n_val=0, got n_train={n_train!r}, n_val={n_val!r}")
    x = torch.tensor(TOY1D_X).view(-1, 1)
    y = torch.tensor(TOY1D_Y).view(-1, 1)
    lo, hi = min(TOY1D_X), max(TOY1D_X)
    x_te = torch.linspace(lo, hi, TOY1D_TEST_POINTS)
    y_te = torch.from_numpy(np.interp(x_te.numpy(), TOY1D_X, TOY1D_Y)).float()
    probe = torch.linspace(lo - TOY1D_PROBE_MARGIN, hi + TOY1D_PROBE_MARGIN, TOY1D_PROBE_POINTS)
    empty = torch.zeros(0, 1)
    return _regression("toy1d", x, y, empty, empty.clone(), x_te.view(-1, 1), y_te.view(-1, 1),
                       probe.view(-1, 1))
