import hashlib
import os
import shutil
import struct

import numpy as np
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


# ----------------------------------------------------------------------------- tiny configs

# A regression task (no data files), a last batch that is short: 50 = 3 x 16 + 2.
SYN = dict(dataset="synthetic", model="mlp", width=8, n_train=50, epochs=3,
           batch_size=16, schedule="constant", device="cpu")

# A sweep's worth of tiny synthetic runs (test_engine, test_cluster).
TINY_SYNTHETIC = dict(dataset="synthetic", n_train=64, model="mlp", width=8, epochs=2,
                      batch_size=16, device="cpu", n_test=0)

# The simplicity study at toy scale with the epochs, seeds and max_core_hours line to fill in
# (test_params: the cost gate; test_engine: the estimate).
TOY_COST_PARAMS = """profile: quick
MAX
simplicity:
  quick:
    base: {dataset: toy1d, model: one_hidden_relu, lr: 0.005, momentum: 0.9,
           weight_decay: 0.0, schedule: constant, batch_size: 12, epochs: EPOCHS,
           eval_every: 10, rho: 0.1, early_stopping: false}
    grid: {width: [5], optimizer: [sgd, sam], seed: SEEDS}
"""

# The simplicity study at toy scale (1-D data: no dataset; 2 seeds so its statistics run).
TOY_SIMPLICITY_TWO_SEEDS = """profile: quick
simplicity:
  quick:
    base: {dataset: toy1d, model: one_hidden_relu, lr: 0.005, momentum: 0.9,
           weight_decay: 0.0, schedule: constant, batch_size: 12, epochs: 3000,
           eval_every: 1000, rho: 0.1, early_stopping: false}
    grid: {width: [5, 50], optimizer: [sgd, sam], seed: [0, 1]}
"""


# ----------------------------------------------------------------------------- saved claims

ROBUST = {"fragile": False, "shown": "robust", "leave_one_out": "holds", "retrain": "holds"}
FRAGILE = {"fragile": True, "leave_one_out": "without seed 1: cannot tell; without seed 4: "
           "cannot tell", "retrain": "retrained avx2: cannot tell", "shown": "fragile: ..."}


def claim(est, low, high, verdict, robustness=ROBUST, text="a claim", source="Shin et al. "
          "Sec. 3", unit="pp", n=5):
    """A claim as a study's metrics.json saves it (test_frontpage, test_fmt)."""
    from samkit.analysis import fmt
    return {"text": text, "source": source, "unit": unit, "estimate": est, "ci_low": low,
            "ci_high": high, "n": n, "delta": 0.003, "delta_shown": "0.30 pp", "direction": 1,
            "verdict": verdict, "p_value": 0.01, "seeds_needed": None,
            "shown": fmt.pp(est, low, high), "explained": verdict, "source_effect": None,
            "source_shown": "", "robustness": robustness}


# ----------------------------------------------------------------------------- dataset files
# Written in the real formats by independent writers (test_files, test_sampling).

IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
UNEVEN = [30 + 7 * c for c in range(10)]  # 615 training examples, classes of 30..93


@pytest.fixture
def no_network(monkeypatch):
    """Every download fails (the data tests use it on every test: pytestmark)."""
    from samkit.data import files as image_files

    def refuse(name, root):
        raise OSError("network disabled in tests")
    monkeypatch.setattr(image_files, "_torchvision_download", refuse)


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


def write_fake_mnist(root, monkeypatch, counts, n_test=20, seed=0):
    """Tiny MNIST in torchvision's raw layout; class c has counts[c] training examples."""
    from samkit.data import files as image_files
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
