"""The raw image files of Fashion-MNIST, MNIST and CIFAR-10: found, verified, parsed.

The files are those of torchvision's layout (idx files for (Fashion-)MNIST, pickle batches for
CIFAR-10), verified against known checksums, parsed with numpy and cached per process: sweeps
load the same data many times. Fashion-MNIST works offline from the Debian package
``dataset-fashion-mnist``; torchvision downloads are the fallback. The checksum tables are
module-level so tests can pin them to tiny files written in the real format and still exercise
the real verification and parsing code.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch

from samkit.atomic import replacing

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
        except ModuleNotFoundError as e:  # the core install has no torchvision
            raise RuntimeError(f"{name}: download failed ({e}): `pip install torchvision` (in "
                               "samkit[study]) to download it. " + _where_to_put(name, raw, False)
                               ) from e
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

def image_arrays(name: str, root: Path, download: bool):
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
