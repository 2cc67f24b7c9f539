"""The trainer: determinism, exact resume, divergence, early stopping, metrics."""
import itertools
import math
import time
import types

import pytest
import torch

from conftest import interrupt_run
from samkit.train import build, loop as train
from samkit.train.config import TrainConfig

TINY = dict(dataset="fashion_mnist", n_train=200, n_val=100, n_test=200, model="mlp", width=16,
            epochs=3, batch_size=32, device="cpu")


def strip_time(result):
    return {k: v for k, v in result.items() if not k.endswith("seconds")}


def test_deterministic_per_seed(fmnist_root):
    a = train.train(TrainConfig(**TINY, optimizer="sam"))
    b = train.train(TrainConfig(**TINY, optimizer="sam"))
    c = train.train(TrainConfig(**TINY, optimizer="sam", seed=1))
    assert strip_time(a) == strip_time(b)
    assert a["history"] != c["history"]


@pytest.mark.parametrize("optimizer", ["sgd", "sam", "asam"])
def test_resume_after_interruption_is_exact(fmnist_root, tmp_path, monkeypatch, optimizer):
    cfg = TrainConfig(**{**TINY, "model": "preact_resnet18", "width": 2, "epochs": 4,
                         "n_train": 100, "augment": True}, optimizer=optimizer)
    ticks = itertools.count()  # a fake clock: every reading is one "second" after the last
    monkeypatch.setattr(train, "time", types.SimpleNamespace(time=time.time,
                                                             perf_counter=lambda: next(ticks)))
    reference = train.train(cfg)
    ckpt = str(tmp_path / "run.ckpt")
    state = interrupt_run(cfg, ckpt, monkeypatch)
    assert state["epoch"] == 2
    resumed = train.train(cfg, checkpoint=ckpt)
    assert strip_time(resumed) == strip_time(reference)
    # training time carries over the kill: both attempts' epochs, as in one uninterrupted run
    assert state["train_seconds"] == 2 and resumed["train_seconds"] == reference["train_seconds"]
    assert resumed["seconds"] >= state["seconds"] > 0


def test_train_seconds_excludes_evaluation(fmnist_root, monkeypatch):
    real_metrics = train._epoch_metrics

    def slow_metrics(*args):
        time.sleep(0.5)  # stands in for an expensive evaluation
        return real_metrics(*args)

    monkeypatch.setattr(train, "_epoch_metrics", slow_metrics)
    r = train.train(TrainConfig(**TINY))
    assert 0 < r["train_seconds"] and r["seconds"] - r["train_seconds"] >= 3 * 0.5


def test_divergence_is_recorded(fmnist_root):
    r = train.train(TrainConfig(**TINY, lr=1e8, momentum=0.0, weight_decay=0.0, schedule="constant"))
    assert r["status"] == "diverged"
    # the run stops at the first epoch whose loss is not finite, and says which
    assert r["diverged_epoch"] == len(r["history"]) == r["history"][-1]["epoch"]
    assert all(math.isfinite(h["train_loss_running"]) for h in r["history"][:-1])
    assert r["final"] == {} and r["best"] == {}
    assert not math.isfinite(r["history"][-1]["train_loss_running"])


def test_early_stopping_reports_best_validation_epoch(fmnist_root):
    r = train.train(TrainConfig(**{**TINY, "epochs": 5}, lr=0.5, schedule="constant"))
    accs = [h["val_acc"] for h in r["history"]]
    assert r["best"]["val_acc"] == max(accs)
    assert r["best"]["epoch"] == 1 + accs.index(max(accs))
    assert r["final"]["epoch"] == 5
    off = train.train(TrainConfig(**{**TINY, "epochs": 5}, lr=0.5, schedule="constant",
                                early_stopping=False))
    assert off["best"]["epoch"] == 5


def test_metrics_against_recomputation(fmnist_root):
    """Reported test accuracy equals an independent evaluation of the returned model."""
    cfg = TrainConfig(**TINY, optimizer="sam", early_stopping=False)
    result, model = train.train(cfg, return_model=True)
    data = train.load_for(cfg)
    with torch.no_grad():
        model.eval()
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert result["final"]["test_acc"] == pytest.approx(acc, abs=1e-6)
    assert result["final"]["gap"] == pytest.approx(result["final"]["train_acc"] - acc, abs=1e-6)
    assert result["params"] == sum(p.numel() for p in model.parameters())


def test_label_noise_accuracy_on_noisy_and_clean_labels(fmnist_root):
    r = train.train(TrainConfig(**TINY, label_noise=0.4, early_stopping=False))
    assert r["n_flipped"] == pytest.approx(0.4 * 200, abs=2)
    f = r["final"]
    assert f["train_acc"] != f["train_acc_clean"]


def test_step_schedule_and_lr_in_history(fmnist_root):
    r = train.train(TrainConfig(**{**TINY, "epochs": 4}, lr=0.1, schedule="step"))
    assert [round(h["lr"], 6) for h in r["history"]] == [0.1, 0.01, 0.001, 0.001]


def test_sparse_run_keeps_pruned_weights_zero(fmnist_root):
    cfg = TrainConfig(**{**TINY, "width": 64}, optimizer="sam", prune="snip",
                      prune_to_width=16)
    r, model = train.train(cfg, return_model=True)
    dense16 = TrainConfig(**TINY)
    r16 = train.train(dense16)
    # nonzero parameters of the sparse wide model match the small dense one (± rounding)
    assert abs(r["nonzero_params"] - r16["params"]) <= 3
    assert r["params"] > 3 * r16["params"]


def test_regression_and_probe():
    r = train.train(TrainConfig(dataset="toy1d", model="one_hidden_relu", width=20, epochs=5,
                              batch_size=8, lr=0.05, momentum=0.0, weight_decay=0.0,
                              optimizer="sam", schedule="constant", device="cpu"))
    assert r["status"] == "ok" and "test_acc" not in r["final"]
    assert len(r["probe"]["x"]) == len(r["probe"]["y"]) > 50


@pytest.mark.parametrize("bad, message", [
    (dict(optimizer="adamw"), "optimizer: got 'adamw'; allowed: sgd, adam, sam, asam"),
    (dict(width=0), "width: got 0; allowed: an int > 0"),
    (dict(label_noise=1.0), "label_noise: got 1.0; allowed: a number in [0, 1)"),
    (dict(epochs="10"), "epochs: got '10' (str); allowed: an int"),
    (dict(prune="snip"), "sparsity: got 0 with prune='snip'"),
    (dict(sparsity=0.5), "prune: got 'none' with sparsity=0.5"),
    # a class-balanced subset needs an example of each class
    (dict(n_train=5), "n_train: got 5; allowed: at least 10 (the subset is class-balanced"),
])
def test_config_validation(bad, message):
    with pytest.raises(ValueError, match=None) as e:
        TrainConfig(**bad)
    assert message in str(e.value)


def test_data_seed_minus_one_follows_the_seed(fmnist_root):
    """-1: the seed draws the subset and the label noise; the key is that of the explicit
    seed, so both spellings share one cached run; SGD and SAM of one seed see the same data."""
    from samkit.sweep import engine as sweep
    base = dict(dataset="fashion_mnist", n_train=100, n_val=20, label_noise=0.2, data_seed=-1)
    a = train.TrainConfig(**base, seed=1)
    assert sweep.run_key(a) == sweep.run_key(train.TrainConfig(**{**base, "data_seed": 1},
                                                               seed=1))
    d0 = train.load_for(train.TrainConfig(**base, seed=0))
    d1, d1_sam = train.load_for(a), train.load_for(train.TrainConfig(**base, seed=1,
                                                                     optimizer="sam"))
    assert not torch.equal(d0.x_train, d1.x_train)
    assert not torch.equal(d0.noisy_idx, d1.noisy_idx)
    assert torch.equal(d1.x_train, d1_sam.x_train) and torch.equal(d1.y_train, d1_sam.y_train)


def test_step3_schedule_is_the_papers():
    """lr x0.1 at 25%, 50% and 75% of the epochs (Shin et al.'s repository)."""
    cfg = train.TrainConfig(dataset="synthetic", model="mlp", width=4, epochs=8, lr=0.1,
                            schedule="step3")
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    sched = build._make_scheduler(cfg, opt)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4])


def test_a_huge_finite_loss_counts_as_diverged(monkeypatch):
    """A run whose running loss is finite but 1e6 x beyond its start is garbage: diverged."""
    real_epoch = train.train_epoch
    calls = []

    def exploding(cfg, model, opt, loss_fn, data, epoch, progress=None):
        total = real_epoch(cfg, model, opt, loss_fn, data, epoch, progress)
        calls.append(epoch)
        return total * 1e12 if epoch == 1 else total  # 6.6e33-like, still finite

    monkeypatch.setattr(train, "train_epoch", exploding)
    cfg = train.TrainConfig(dataset="synthetic", model="mlp", width=4, n_train=32, epochs=4,
                            batch_size=16, device="cpu")
    result = train.train(cfg)
    assert result["status"] == "diverged" and result["diverged_epoch"] == 2
    assert calls == [0, 1] and result["initial_loss"] > 0


# ----------------------------------------------------------------------------- checkpoints

TOY = dict(dataset="toy1d", model="one_hidden_relu", width=5, batch_size=12, epochs=2,
           early_stopping=False, device="cpu")

EVIL = '''
import os, sys, torch

class Payload:  # unpickling it calls os.system (what a crafted checkpoint can do)
    def __reduce__(self):
        return (os.system, (f"touch {sys.argv[2]}",))

torch.save({"config": {}, "model": Payload()}, sys.argv[1])
'''


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    import subprocess
    import sys
    from samkit.train.checkpoint import CheckpointError
    ckpt, marker = tmp_path / "evil.ckpt", tmp_path / "code-ran"
    subprocess.run([sys.executable, "-c", EVIL, str(ckpt), str(marker)], check=True)
    with pytest.raises(CheckpointError) as e:
        train.train(TrainConfig(**TOY), checkpoint=str(ckpt))
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert str(ckpt) in str(e.value) and "rm " in str(e.value) and "\n" not in str(e.value)


def test_a_checkpoint_of_another_config_is_refused_naming_the_difference(tmp_path):
    """--epochs 4 on a 2-epoch run's checkpoint used to restart from zero without a word and
    overwrite it; the lr schedule depends on the epochs, so it is refused, and kept."""
    from samkit.train.checkpoint import CheckpointError
    ckpt = tmp_path / "run.ckpt"
    train.train(TrainConfig(**TOY), checkpoint=str(ckpt))
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError) as e:
        train.train(TrainConfig(**{**TOY, "epochs": 4, "lr": 0.01}), checkpoint=str(ckpt))
    assert str(e.value) == (
        f"checkpoint {ckpt}: saved by another config (epochs 2 there, 4 here; lr 0.05 there, "
        "0.01 here); allowed: a checkpoint of this config: rerun with the config it was saved "
        f"with, or delete it to start this run afresh (rm {ckpt})")
    assert ckpt.read_bytes() == before
    assert train.train(TrainConfig(**TOY), checkpoint=str(ckpt))["history"][-1]["epoch"] == 2


def test_a_corrupt_checkpoint_is_one_line_with_the_fix(tmp_path):
    import subprocess
    import sys
    good = tmp_path / "good.ckpt"
    train.train(TrainConfig(**TOY), checkpoint=str(good))
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(good.read_bytes()[:1000])
    args = ["train", "--dataset", "toy1d", "--model", "one_hidden_relu", "--width", "5",
            "--batch-size", "12", "--epochs", "2", "--no-early-stopping", "--device", "cpu",
            "--quiet", "--checkpoint", str(bad)]
    r = subprocess.run([sys.executable, "-m", "samkit", *args], capture_output=True, text=True,
                       timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint {bad}: cannot be read "
                                                   "(truncated or damaged"), lines
    assert lines[0].endswith(f"delete it to start this run afresh (rm {bad})")
