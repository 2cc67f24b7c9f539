"""Tests for samkit.data.datasets (and the image_files, sampling and toy_data modules it puts
together). Never touch the network: every download is replaced by a failure,
and fixture files are written in the real formats by independent writers below."""
import gzip
import hashlib
import itertools
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch

from samkit.data import files as image_files
from samkit.data import toy as toy_data
from samkit.data.datasets import augment, load_data

DEBIAN = image_files.DEBIAN_FASHION_DIR
IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(name, root):
        raise OSError("network disabled in tests")
    monkeypatch.setattr(image_files, "_torchvision_download", refuse)


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(image_files, "DEBIAN_FASHION_DIR", tmp_path / "no-debian-package")


# ------------------------------------------------------------ independent fixture writers

def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def idx_bytes(arr: np.ndarray) -> bytes:
    """idx format: 0, 0, 0x08 (unsigned byte), ndim; big-endian uint32 sizes; the bytes."""
    return (bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
            + arr.astype(np.uint8).tobytes())


def index_images(n: int, rng) -> np.ndarray:
    """Random images whose first two pixels spell the example's index (to trace subsets)."""
    img = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    img[:, 0, 0], img[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return img


def decode_index(x: torch.Tensor, mean: float, std: float) -> np.ndarray:
    px = ((x[:, 0, 0, :2] * std + mean) * 255).round().long().numpy()
    return px[:, 0] + 256 * px[:, 1]


def write_fake_mnist(root, monkeypatch, counts, n_test=20, seed=0):
    """Tiny MNIST in torchvision's raw layout; class c has counts[c] training examples."""
    rng = np.random.default_rng(seed)
    y_tr = rng.permutation(np.repeat(np.arange(10), counts))
    y_te = rng.integers(0, 10, n_test)
    files = dict(zip(IDX_NAMES, (index_images(len(y_tr), rng), y_tr,
                                 index_images(n_test, rng), y_te)))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    sums = {}
    for f, arr in files.items():
        (raw / f).write_bytes(idx_bytes(arr))
        sums[f] = sha256((raw / f).read_bytes())
    monkeypatch.setattr(image_files, "MNIST_SHA256", sums)
    return files


def write_fake_cifar(root, monkeypatch, n_batch=20, n_test=10, pin_md5=True, seed=0):
    """Tiny CIFAR-10 python batches in the real format (dict with bytes keys)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches, md5 = {}, {}
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if f == "test_batch" else n_batch
        batch = {b"batch_label": f.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [b"img%d.png" % i for i in range(n)]}
        (folder / f).write_bytes(pickle.dumps(batch, protocol=2))
        md5[f] = hashlib.md5((folder / f).read_bytes()).hexdigest()
        batches[f] = batch
    if pin_md5:
        monkeypatch.setattr(image_files, "CIFAR10_MD5", md5)
    return batches


UNEVEN = [30 + 7 * c for c in range(10)]  # 615 training examples, classes of 30..93


# ------------------------------------------------------------ real Fashion-MNIST

@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    if not DEBIAN.is_dir():
        pytest.skip(f"{DEBIAN} absent: `apt-get install dataset-fashion-mnist` to run this test")
    return tmp_path_factory.mktemp("fashion")


def test_fashion_mnist_loads_offline_from_debian_files(fashion_root):
    d = load_data("fashion_mnist", root=fashion_root, download=False)
    raw = fashion_root / "FashionMNIST" / "raw"
    assert sorted(os.listdir(raw)) == sorted(IDX_NAMES)  # no temporary files left behind
    for f in IDX_NAMES:  # exactly the Debian content, decompressed
        debian = gzip.decompress((DEBIAN / f"{f}.gz").read_bytes())
        assert sha256((raw / f).read_bytes()) == sha256(debian)
    assert d.task == "classification" and d.num_classes == 10 and d.in_shape == (1, 28, 28)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_val.shape == (0, 1, 28, 28) and d.noisy_idx.numel() == 0
    assert d.y_train.bincount().tolist() == [6000] * 10  # Fashion-MNIST is exactly balanced
    assert d.y_test.bincount().tolist() == [1000] * 10
    labels = (raw / "train-labels-idx1-ubyte").read_bytes()[8:]
    assert d.y_train.tolist() == list(labels) and torch.equal(d.y_train_clean, d.y_train)
    img = np.frombuffer((raw / "train-images-idx3-ubyte").read_bytes(), np.uint8,
                        784, offset=16 + 784 * 123).reshape(28, 28)
    expected = (torch.tensor(img, dtype=torch.float32) / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(d.x_train[123, 0], expected)
    assert abs(d.x_train.mean().item()) < 2e-3 and abs(d.x_train.std().item() - 1) < 2e-3


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_corrupt_file_is_named_with_the_fix(fashion_root, tmp_path, damage):
    load_data("fashion_mnist", root=fashion_root, download=False)  # ensure files exist
    raw = tmp_path / "FashionMNIST" / "raw"
    shutil.copytree(fashion_root / "FashionMNIST" / "raw", raw)
    load_data("fashion_mnist", root=tmp_path, download=False)  # fine, and now cached
    target = raw / "t10k-images-idx3-ubyte"
    b = bytearray(target.read_bytes())
    if damage == "flip_byte":
        b[5000] ^= 1
    else:
        b = b[:len(b) // 2]
    target.write_bytes(b)
    with pytest.raises(RuntimeError) as err:  # the cache must not hide the edit
        load_data("fashion_mnist", root=tmp_path, download=False)
    msg = str(err.value)
    assert str(target) in msg and "Delete it and rerun" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "network access" in msg


def test_truncated_debian_gz_leaves_no_file(tmp_path, monkeypatch):
    fake = tmp_path / "debian"
    fake.mkdir()
    for f in IDX_NAMES:
        (fake / f"{f}.gz").write_bytes(gzip.compress(b"x" * 100000))
    full = (fake / "train-images-idx3-ubyte.gz").read_bytes()
    (fake / "train-images-idx3-ubyte.gz").write_bytes(full[:len(full) // 2])
    monkeypatch.setattr(image_files, "DEBIAN_FASHION_DIR", fake)
    root = tmp_path / "root"
    with pytest.raises(RuntimeError, match="train-images-idx3-ubyte.gz.*--reinstall"):
        load_data("fashion_mnist", root=root, download=False)
    raw = root / "FashionMNIST" / "raw"
    assert "train-images-idx3-ubyte" not in os.listdir(raw)
    assert not [f for f in os.listdir(raw) if ".tmp" in f]


# ------------------------------------------------------------ missing files, downloads

@pytest.mark.parametrize("name, folder, a_file", [
    ("fashion_mnist", "FashionMNIST/raw", "train-images-idx3-ubyte"),
    ("mnist", "MNIST/raw", "t10k-labels-idx1-ubyte"),
    ("cifar10", "cifar-10-batches-py", "data_batch_3")])
def test_missing_data_says_where_to_put_files(tmp_path, no_debian, name, folder, a_file):
    with pytest.raises(FileNotFoundError) as err:
        load_data(name, root=tmp_path, download=False)
    msg = str(err.value)
    assert str(tmp_path / folder) in msg and a_file in msg and "download=True" in msg


def test_failed_download_says_where_to_put_files(tmp_path, no_debian):
    with pytest.raises(RuntimeError) as err:
        load_data("fashion_mnist", root=tmp_path, download=True)
    msg = str(err.value)
    assert "download failed" in msg and "network disabled" in msg
    assert "download=True" not in msg  # it was on: the fix is network access or the files
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and "apt-get install" in msg


def test_download_fallback_is_used_when_files_are_missing(tmp_path, monkeypatch):
    calls = []

    def fake_download(name, root):
        calls.append(name)
        write_fake_mnist(root, monkeypatch, [3] * 10)
    monkeypatch.setattr(image_files, "_torchvision_download", fake_download)
    d = load_data("mnist", root=tmp_path, download=True)
    assert calls == ["mnist"] and d.x_train.shape == (30, 1, 28, 28)


# ------------------------------------------------------------ MNIST and CIFAR-10 parsing

def test_mnist_parsing_and_normalisation(tmp_path, monkeypatch):
    files = write_fake_mnist(tmp_path, monkeypatch, UNEVEN)
    d = load_data("mnist", root=tmp_path, download=False)
    expected = (torch.tensor(files["t10k-images-idx3-ubyte"], dtype=torch.float32) / 255
                - 0.1307) / 0.3081
    torch.testing.assert_close(d.x_test[:, 0], expected)
    assert d.y_train.tolist() == files["train-labels-idx1-ubyte"].tolist()
    assert d.y_test.tolist() == files["t10k-labels-idx1-ubyte"].tolist()
    assert d.in_shape == (1, 28, 28)


def test_cifar10_pixel_layout_and_labels(tmp_path, monkeypatch):
    batches = write_fake_cifar(tmp_path, monkeypatch)
    d = load_data("cifar10", root=tmp_path, download=False)
    assert d.x_train.shape == (100, 3, 32, 32) and d.x_test.shape == (10, 3, 32, 32)
    assert d.in_shape == (3, 32, 32) and d.num_classes == 10
    rows = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert d.y_train.tolist() == labels
    assert d.y_test.tolist() == batches["test_batch"][b"labels"]
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    pixels = ((d.x_train * std + mean) * 255).round().long()
    for i in (0, 37, 99):  # row layout: 1024 red, then green, then blue values, row-major
        for c, r, q in itertools.product(range(3), range(32), range(32)):
            assert pixels[i, c, r, q] == rows[i, c * 1024 + r * 32 + q]


def test_cifar10_checksum_mismatch_names_the_file(tmp_path, monkeypatch):
    write_fake_cifar(tmp_path, monkeypatch, pin_md5=False)  # real md5 table: tiny files fail
    with pytest.raises(RuntimeError) as err:
        load_data("cifar10", root=tmp_path, download=False)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "Delete it and rerun" in msg and "network access" in msg


# ------------------------------------------------------------ label noise

def test_label_noise_exact_rate_real_flips_clean_test(tmp_path, monkeypatch):
    files = write_fake_mnist(tmp_path, monkeypatch, UNEVEN)
    clean = files["train-labels-idx1-ubyte"]
    d = load_data("mnist", root=tmp_path, download=False, label_noise=0.2, noise_seed=1)
    idx = d.noisy_idx
    assert idx.dtype == torch.int64 and len(idx) == round(0.2 * 615)
    assert idx.unique().tolist() == idx.tolist()  # sorted, no repeats
    assert d.y_train_clean.tolist() == clean.tolist()
    flipped = np.zeros(615, bool)
    flipped[idx.numpy()] = True
    y, yc = d.y_train.numpy(), clean
    assert (y[flipped] != yc[flipped]).all() and (y[~flipped] == yc[~flipped]).all()
    assert ((y >= 0) & (y < 10)).all()
    assert d.y_test.tolist() == files["t10k-labels-idx1-ubyte"].tolist()


def test_label_noise_seeds_and_other_class_coverage(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path, monkeypatch, UNEVEN)
    kw = dict(root=tmp_path, download=False, label_noise=0.9)
    a, b = load_data("mnist", noise_seed=5, **kw), load_data("mnist", noise_seed=5, **kw)
    c = load_data("mnist", noise_seed=6, **kw)
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.noisy_idx, b.noisy_idx)
    assert not torch.equal(a.noisy_idx, c.noisy_idx)
    offsets = (a.y_train - a.y_train_clean)[a.noisy_idx] % 10
    assert sorted(offsets.unique().tolist()) == list(range(1, 10))  # every other class


def test_label_noise_on_subset_keeps_val_clean(tmp_path, monkeypatch):
    files = write_fake_mnist(tmp_path, monkeypatch, UNEVEN)
    d = load_data("mnist", root=tmp_path, download=False, n_train=50, n_val=40,
                  label_noise=0.3, noise_seed=2)
    assert len(d.noisy_idx) == 15
    labels = files["train-labels-idx1-ubyte"]
    train_ids = decode_index(d.x_train, 0.1307, 0.3081)
    val_ids = decode_index(d.x_val, 0.1307, 0.3081)
    assert d.y_train_clean.tolist() == labels[train_ids].tolist()
    assert d.y_val.tolist() == labels[val_ids].tolist()


# ------------------------------------------------------------ subsets

def test_subsets_are_class_balanced_disjoint_and_seeded(tmp_path, monkeypatch):
    files = write_fake_mnist(tmp_path, monkeypatch, UNEVEN)
    labels = files["train-labels-idx1-ubyte"]
    kw = dict(root=tmp_path, download=False, n_train=95, n_val=50)
    d = load_data("mnist", subset_seed=3, **kw)
    train_ids = decode_index(d.x_train, 0.1307, 0.3081)
    val_ids = decode_index(d.x_val, 0.1307, 0.3081)
    assert d.y_train.tolist() == labels[train_ids].tolist()  # images and labels stay paired
    assert len(set(train_ids)) == 95 and len(set(val_ids)) == 50
    assert not set(train_ids) & set(val_ids)
    counts = d.y_train.bincount(minlength=10)
    assert counts.sum() == 95 and set(counts.tolist()) == {9, 10}
    assert d.y_val.bincount(minlength=10).tolist() == [5] * 10
    same, other = load_data("mnist", subset_seed=3, **kw), load_data("mnist", subset_seed=4, **kw)
    assert torch.equal(same.x_train, d.x_train) and torch.equal(same.x_val, d.x_val)
    assert set(decode_index(other.x_train, 0.1307, 0.3081)) != set(train_ids)


def test_subset_with_a_small_class_spreads_the_rest(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path, monkeypatch, [3] + [40] * 9)
    d = load_data("mnist", root=tmp_path, download=False, n_train=50)
    counts = d.y_train.bincount(minlength=10).tolist()
    assert counts[0] == 3 and set(counts[1:]) <= {5, 6} and sum(counts) == 50


def test_val_without_n_train_takes_the_rest_for_training(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path, monkeypatch, UNEVEN)
    d = load_data("mnist", root=tmp_path, download=False, n_val=100)
    train_ids = decode_index(d.x_train, 0.1307, 0.3081)
    val_ids = decode_index(d.x_val, 0.1307, 0.3081)
    assert d.y_val.bincount(minlength=10).tolist() == [10] * 10
    assert sorted(np.concatenate([train_ids, val_ids]).tolist()) == list(range(615))


@pytest.mark.parametrize("kw", [dict(n_train=600, n_val=16), dict(n_val=615)])
def test_subset_larger_than_the_data_is_refused(tmp_path, monkeypatch, kw):
    write_fake_mnist(tmp_path, monkeypatch, UNEVEN)
    with pytest.raises(ValueError, match="615 training examples of mnist"):
        load_data("mnist", root=tmp_path, download=False, **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(name="cifar100"), "name must be one of"),
    (dict(label_noise=1.0), "label_noise must be"),
    (dict(label_noise=-0.1), "label_noise must be"),
    (dict(label_noise="0.1"), "label_noise must be"),
    (dict(n_train=0), "n_train must be"),
    (dict(n_train=2.5), "n_train must be"),
    (dict(n_train=True), "n_train must be"),
    (dict(n_val=-1), "n_val must be"),
    (dict(noise_seed=1.5), "noise_seed must be"),
    (dict(name="synthetic", label_noise=0.1), "classification only"),
    (dict(name="toy1d", n_train=5), "toy1d has exactly 12"),
])
def test_bad_arguments_are_refused(tmp_path, kw, match):
    kw = {"name": "mnist", **kw}
    with pytest.raises(ValueError, match=match):
        load_data(root=tmp_path, download=False, **kw)


# ------------------------------------------------------------ regression data

def test_synthetic_shapes_and_determinism():
    d = load_data("synthetic", subset_seed=0)
    assert d.task == "regression" and d.num_classes == 1 and d.in_shape == (20,)
    assert d.x_train.shape == (500, 20) and d.y_train.shape == (500, 1)
    assert d.x_test.shape == (125, 20) and d.y_test.shape == (125, 1)
    assert d.x_val.shape == (0, 20) and d.noisy_idx.numel() == 0
    assert d.x_train.dtype == d.y_train.dtype == torch.float32
    assert torch.equal(d.y_train_clean, d.y_train)
    assert abs(d.x_train.mean().item()) < 0.05 and abs(d.x_train.std().item() - 1) < 0.05
    assert d.y_train.std() > 0.1
    again, other = load_data("synthetic", subset_seed=0), load_data("synthetic", subset_seed=1)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)
    assert not torch.equal(other.x_train, d.x_train)
    small = load_data("synthetic", n_train=40, n_val=8)
    assert small.x_train.shape == (40, 20) and small.x_val.shape == (8, 20)
    assert small.x_test.shape == (10, 20)


def test_synthetic_targets_are_a_nonlinear_teacher_plus_gaussian_noise(monkeypatch):
    noisy = load_data("synthetic", n_train=2000)
    monkeypatch.setattr(toy_data, "SYNTH_NOISE_STD", 0.0)
    clean = load_data("synthetic", n_train=2000)
    assert torch.equal(noisy.x_train, clean.x_train)  # same draws, noise aside
    noise = (noisy.y_train - clean.y_train).double()
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 0.1) < 0.01
    x1 = torch.cat([clean.x_train, torch.ones(2000, 1)], 1).double()
    fit = torch.linalg.lstsq(x1, clean.y_train.double()).solution
    assert (clean.y_train.double() - x1 @ fit).std() > 0.1  # ReLU teacher: not linear in x


def test_toy1d_points_test_curve_and_probe():
    d = load_data("toy1d")
    x = np.arange(-5.5, 6) / 4 + 0.07  # Maennel et al. points, via Andriushchenko & Flammarion
    y = 0.345 + np.array([-2, 1.5, 0, 0, 2, 1, 0, -1, 0, 1, 2, -1])
    assert d.task == "regression" and d.in_shape == (1,) and d.num_classes == 1
    np.testing.assert_allclose(d.x_train[:, 0].numpy(), x, atol=1e-6)
    np.testing.assert_allclose(d.y_train[:, 0].numpy(), y, atol=1e-6)
    xt = d.x_test[:, 0].numpy()
    assert xt.min() == pytest.approx(x.min()) and xt.max() == pytest.approx(x.max())
    np.testing.assert_allclose(d.y_test[:, 0].numpy(), np.interp(xt, x, y), atol=1e-5)
    p = d.x_probe[:, 0]
    assert d.x_probe.shape == (401, 1) and (p.diff() > 0).all()
    assert p[0] < x.min() - 0.05 and p[-1] > x.max() + 0.05
    assert d.x_val.shape == (0, 1)


def test_to_moves_every_tensor_and_returns_new_data():
    d = load_data("toy1d")
    e = d.to("cpu")
    assert e is not d and e.x_probe is not None and torch.equal(e.x_probe, d.x_probe)
    assert torch.equal(e.y_test, d.y_test) and e.name == d.name
    assert load_data("synthetic", n_train=8).to("cpu").x_probe is None


# ------------------------------------------------------------ augmentation

def reference_views(img: torch.Tensor, pad: int):
    """Every (dy, dx, flip) view of one image: zero-pad by hand, crop, maybe flip."""
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=img.dtype)
    padded[:, pad:pad + h, pad:pad + w] = img
    for dy, dx in itertools.product(range(2 * pad + 1), repeat=2):
        crop = padded[:, dy:dy + h, dx:dx + w]
        yield (dy, dx, False), crop
        yield (dy, dx, True), torch.flip(crop, dims=[2])


def test_augment_identity_without_pad_or_flip():
    x = torch.randn(5, 3, 8, 6)
    out = augment(x, torch.Generator().manual_seed(0), pad=0, flip=False)
    assert torch.equal(out, x)


def test_augment_matches_per_sample_reference_and_is_independent():
    x = torch.randn(64, 3, 8, 6)  # non-square catches swapped H/W
    out = augment(x, torch.Generator().manual_seed(0), pad=2, flip=True)
    assert out.shape == x.shape and out.dtype == x.dtype
    picks = []
    for i in range(len(x)):
        matches = [k for k, view in reference_views(x[i], 2) if torch.equal(view, out[i])]
        assert len(matches) == 1, f"sample {i} is not a crop/flip of its padded input"
        picks.append(matches[0])
    assert len(set(picks)) > 20  # per-sample draws, not one shift for the batch
    assert {p[2] for p in picks} == {False, True}
    assert len({p[0] for p in picks}) == 5 and len({p[1] for p in picks}) == 5


def test_augment_flip_only_and_integer_dtype():
    x = torch.randint(0, 255, (32, 1, 5, 7), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(1), pad=0, flip=True)
    assert out.dtype == torch.uint8
    kinds = [torch.equal(o, s) or (torch.equal(o, s.flip(-1)) and 2) for o, s in zip(out, x)]
    assert all(kinds) and {True, 2} <= set(kinds)


def test_augment_is_deterministic_per_generator_and_checks_args():
    x = torch.randn(16, 3, 8, 8)
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    c = augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="pad must be"):
        augment(x, torch.Generator(), pad=-1)
    with pytest.raises(ValueError, match="N×C×H×W"):
        augment(x[0], torch.Generator())


def test_datasets_live_in_one_per_user_folder_whatever_the_working_directory(monkeypatch,
                                                                                tmp_path):
    """Not ./data of wherever a command runs: $SAMKIT_DATA, else $XDG_CACHE_HOME/samkit/data
    (~/.cache/samkit/data)."""
    from samkit.data import datasets as data
    monkeypatch.delenv("SAMKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert data.default_root() == str(tmp_path / "cache" / "samkit" / "data")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_root() == str(tmp_path / "home" / ".cache" / "samkit" / "data")
    monkeypatch.setenv("SAMKIT_DATA", "/somewhere")
    assert data.default_root() == "/somewhere"


def test_a_core_install_without_torchvision_says_what_to_install(tmp_path, monkeypatch):
    from pathlib import Path
    from samkit.data import files as image_files

    def no_torchvision(*a, **k):
        raise ModuleNotFoundError("No module named 'torchvision'")

    monkeypatch.setattr(image_files, "_torchvision_download", no_torchvision)
    monkeypatch.setattr(image_files, "DEBIAN_FASHION_DIR", Path(tmp_path / "no-debian-copy"))
    with pytest.raises(RuntimeError, match=r"^fashion_mnist: download failed \(No module named "
                       r"'torchvision'\): `pip install torchvision` \(in samkit\[study\]\)"):
        image_files._ensure_files("fashion_mnist", tmp_path, True)
