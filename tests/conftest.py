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
    from samkit.train import loop as train
    real_epoch = train.train_epoch

    def dying_epoch(cfg, model, opt, loss_fn, data, epoch, *args, **kwargs):
        if epoch == at_epoch:
            raise KeyboardInterrupt("killed")
        return real_epoch(cfg, model, opt, loss_fn, data, epoch, *args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, checkpoint=ckpt)
    monkeypatch.setattr(train, "train_epoch", real_epoch)
    return torch.load(ckpt, weights_only=False)


# The simplicity study at toy scale (1-D data: no dataset download), for CLI and fault tests.
TOY_SIMPLICITY_PARAMS = """profile: quick
simplicity:
  quick:
    base: {dataset: toy1d, model: one_hidden_relu, lr: 0.005, momentum: 0.9,
           weight_decay: 0.0, schedule: constant, batch_size: 12, epochs: 50,
           eval_every: 25, rho: 0.1, early_stopping: false}
    grid: {width: [5], optimizer: [sgd, sam], seed: [0]}
"""


def chromium_screenshot(url: str, out, width: int = 1280, height: int = 2400,
                        timeout: int = 150, attempts: int = 2):
    """A headless Chromium screenshot of ``url`` (the path of the PNG written), a fresh
    profile per attempt (one retry absorbs a slow cold start). Chromium may linger after
    writing the file (no D-Bus in a container): wait for the file to stop growing, then stop
    it. The flags keep it off this machine's closed network (refused connections can stall
    the first start). Skips without chromium; fails with its stderr if no attempt wrote one."""
    import signal
    import subprocess
    import time
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs chromium (apt-get install chromium)")
    for attempt in range(attempts):
        png = out.with_name(f"{out.stem}-{attempt}.png")
        log = png.with_suffix(".log")
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={png.with_name(png.stem + '-profile')}",
                 "--hide-scrollbars", f"--window-size={width},{height}", f"--screenshot={png}",
                 url], stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            deadline, last = time.time() + timeout, -1
            while time.time() < deadline and proc.poll() is None:
                size = png.stat().st_size if png.exists() else -1
                if size > 0 and size == last:
                    break
                last = size
                time.sleep(1)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if png.exists() and png.stat().st_size > 0:
            return png
    pytest.fail(f"chromium wrote no screenshot of {url} in {attempts} attempts; last stderr:\n"
                + log.read_text()[-2000:])
