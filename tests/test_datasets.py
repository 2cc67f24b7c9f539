"""samkit.data.datasets: load_data's argument checks, Data.to, the per-user data folder, and
augment against a per-sample reference. Never touches the network."""
import itertools

import pytest
import torch

from samkit.data.datasets import augment, load_data

pytestmark = pytest.mark.usefixtures("no_network")  # conftest: every download fails


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


def test_to_moves_every_tensor_and_returns_new_data():
    d = load_data("toy1d")
    e = d.to("cpu")
    assert e is not d and e.x_probe is not None and torch.equal(e.x_probe, d.x_probe)
    assert torch.equal(e.y_test, d.y_test) and e.name == d.name
    assert load_data("synthetic", n_train=8).to("cpu").x_probe is None


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
