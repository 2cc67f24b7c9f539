"""samkit.data.files: finding, verifying and parsing the raw dataset files (the Debian package's
Fashion-MNIST, MNIST idx files, CIFAR-10 batches), through samkit.data.datasets.load_data. Never
touches the network: every download is replaced by a failure, and fixture files are written in
the real formats by independent writers (here and in conftest.py)."""
import gzip
import hashlib
import itertools
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from conftest import IDX_NAMES, UNEVEN, sha256, write_fake_mnist
from samkit.data import files as image_files
from samkit.data.datasets import load_data

pytestmark = pytest.mark.usefixtures("no_network")  # conftest: every download fails


DEBIAN = image_files.DEBIAN_FASHION_DIR


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(image_files, "DEBIAN_FASHION_DIR", tmp_path / "no-debian-package")


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
