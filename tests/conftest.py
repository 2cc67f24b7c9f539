import os
import shutil

import pytest
import torch

DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A data folder for the session; Fashion-MNIST comes from the Debian package (offline)."""
    root = tmp_path_factory.mktemp("data")
    os.environ["SAMKIT_DATA"] = str(root)
    return str(root)


@pytest.fixture(scope="session")
def fmnist_root(data_root):
    if not os.path.isdir(DEBIAN_FMNIST):
        pytest.skip("needs the Debian package dataset-fashion-mnist (apt-get install it)")
    return data_root


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    """Run in a fresh folder (results/ and caches land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def copy_repo_files(dst, *names):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for n in names:
        src = os.path.join(here, n)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(dst, n))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds contention (10x slower on a busy box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def interrupt_run(cfg, ckpt, monkeypatch, at_epoch: int = 2) -> dict:
    """Train ``cfg`` with checkpoints at ``ckpt`` and kill it (KeyboardInterrupt) as epoch
    ``at_epoch`` starts; returns the checkpoint it left."""
    from samkit import train
    real_epoch = train.train_epoch

    def dying_epoch(cfg, model, opt, loss_fn, data, epoch, *args, **kwargs):
        if epoch == at_epoch:
            raise KeyboardInterrupt("killed")
        return real_epoch(cfg, model, opt, loss_fn, data, epoch, *args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, checkpoint=ckpt)
    monkeypatch.setattr(train, "train_epoch", real_epoch)
    return torch.load(ckpt, weights_only=False)
