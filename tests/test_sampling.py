"""samkit.data.sampling: label noise and class-balanced, seeded subsets and validation splits,
through samkit.data.datasets.load_data on tiny MNIST files written in the real format
(conftest.write_fake_mnist). Never touches the network."""
import numpy as np
import pytest
import torch

from conftest import UNEVEN, write_fake_mnist
from samkit.data.datasets import load_data

pytestmark = pytest.mark.usefixtures("no_network")  # conftest: every download fails


def decode_index(x: torch.Tensor, mean: float, std: float) -> np.ndarray:
    px = ((x[:, 0, 0, :2] * std + mean) * 255).round().long().numpy()
    return px[:, 0] + 256 * px[:, 1]


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
