"""samkit.train.loop (the trainer): determinism, exact resume, divergence, early stopping,
metrics; with the cheaper SAM variants (sam_interval, looksam, msam), exact gradient-evaluation
counts and exact resume."""
import itertools
import math
import time
import types

import pytest
import torch

from conftest import SYN, interrupt_run
from samkit.sweep import engine as sweep
from samkit.train import config, loop as train
from samkit.train.build import load_for
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
    data = load_for(cfg)
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


def test_a_huge_finite_loss_counts_as_diverged(monkeypatch):
    """A run whose running loss is finite but 1e6 x beyond its start is garbage: diverged."""
    real_epoch = train.train_epoch
    calls = []

    def exploding(cfg, model, opt, loss_fn, data, epoch, progress=None):
        total = real_epoch(cfg, model, opt, loss_fn, data, epoch, progress)
        calls.append(epoch)
        return total * 1e12 if epoch == 1 else total  # 6.6e33-like, still finite

    monkeypatch.setattr(train, "train_epoch", exploding)
    cfg = TrainConfig(dataset="synthetic", model="mlp", width=4, n_train=32, epochs=4,
                            batch_size=16, device="cpu")
    result = train.train(cfg)
    assert result["status"] == "diverged" and result["diverged_epoch"] == 2
    assert calls == [0, 1] and result["initial_loss"] > 0


# ------------------------------------------------------------------------ the cheaper SAM variants

STEPS = 3 * 4  # epochs x ceil(50 / 16)


def _counted_run(cfg, **kw):
    """train.run with every training forward pass counted (train mode, grad enabled)."""
    calls = []
    real_build = train.build

    def build(cfg, data=None):
        out = real_build(cfg, data)
        out[1].register_forward_hook(
            lambda m, i, o: calls.append(1) if m.training and torch.is_grad_enabled() else None)
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(train, "build", build)
    try:
        return train.train(cfg, **kw), len(calls)
    finally:
        mp.undo()


@pytest.mark.parametrize("kw, evals", [
    (dict(optimizer="sgd"), STEPS),
    (dict(optimizer="sam"), 2 * STEPS),
    (dict(optimizer="asam"), 2 * STEPS),
    (dict(optimizer="sam", sam_interval=5), STEPS + STEPS // 5),     # steps 5, 10
    (dict(optimizer="asam", sam_interval=2), STEPS + STEPS // 2),
    (dict(optimizer="looksam", sam_interval=5), STEPS + 3),          # steps 0, 5, 10
    (dict(optimizer="msam"), STEPS),
])
def test_grad_evals_are_the_passes_run(kw, evals, one_thread):
    cfg = TrainConfig(**SYN, **kw)
    result, passes = _counted_run(cfg)
    assert result["status"] == "ok"
    assert result["grad_evals"] == passes == evals == train.derived_grad_evals(cfg, cfg.epochs)
    # to_row reports the recorded count, and derives the same from an old-style result
    assert sweep.to_row(result)["grad_evals"] == evals
    if cfg.optimizer in ("sgd", "sam", "asam") and cfg.sam_interval == 1:
        old = {k: v for k, v in result.items() if k != "grad_evals"}
        old["config"] = {k: v for k, v in result["config"].items()
                         if k not in config.KEY_OMITTED_AT_DEFAULT}
        assert sweep.to_row(old)["grad_evals"] == evals


def test_sam_interval_one_is_plain_sam(one_thread):
    a = train.train(TrainConfig(**SYN, optimizer="sam"))
    b = train.train(TrainConfig(**SYN, optimizer="sam", sam_interval=1))
    assert a["history"] == b["history"]


def test_variants_differ_from_sam_and_sgd(one_thread):
    losses = {}
    for kw in (dict(optimizer="sgd"), dict(optimizer="sam"), dict(optimizer="msam"),
               dict(optimizer="sam", sam_interval=2), dict(optimizer="looksam", sam_interval=2)):
        r = train.train(TrainConfig(**SYN, **kw))
        assert r["status"] == "ok"
        losses[tuple(kw.items())] = r["history"][-1]["train_loss"]
    assert len(set(losses.values())) == len(losses), losses


def test_train_examples_as_loaded(fmnist_root):
    for kw in (dict(dataset="fashion_mnist", n_train=100, n_val=30),
               dict(dataset="synthetic", model="mlp"),
               dict(dataset="synthetic", model="mlp", n_train=70),
               dict(dataset="toy1d", model="one_hidden_relu")):
        cfg = TrainConfig(**kw)
        assert train.train_examples(cfg) == len(load_for(cfg).x_train), kw
    # the full set less the validation split, without loading it
    assert train.train_examples(TrainConfig(n_val=5000)) == 55000


@pytest.mark.parametrize("kw", [dict(optimizer="looksam", sam_interval=3),
                                dict(optimizer="msam", rho=0.3),
                                dict(optimizer="sam", sam_interval=5)])
def test_resume_is_exact_for_the_variants(kw, tmp_path, monkeypatch, one_thread):
    """Killed after epoch 2 of 4 (mid-way through a k-step cycle) and resumed: the same numbers
    and the same count as an uninterrupted run (the SAM step counter, LookSAM's g_v and the
    count travel in the checkpoint)."""
    cfg = TrainConfig(**{**SYN, "epochs": 4}, **kw)
    strip = lambda r: {k: v for k, v in r.items() if not k.endswith("seconds")}
    reference = train.train(cfg)
    ckpt = str(tmp_path / "run.ckpt")
    state = interrupt_run(cfg, ckpt, monkeypatch)
    assert state["epoch"] == 2
    assert state["grad_evals"] == train.derived_grad_evals(cfg, 2)
    resumed = train.train(cfg, checkpoint=ckpt)
    assert strip(resumed) == strip(reference)


def test_a_checkpoint_older_than_the_count_resumes_with_the_derived_count(tmp_path, monkeypatch,
                                                                          one_thread):
    cfg = TrainConfig(**{**SYN, "epochs": 4}, optimizer="sam")
    reference = train.train(cfg)
    ckpt = str(tmp_path / "run.ckpt")
    state = interrupt_run(cfg, ckpt, monkeypatch)
    del state["grad_evals"]              # as written by the trainer before it counted
    del state["optimizer"]["sam"]        # and by SAM before it kept its own state
    torch.save(state, ckpt)
    resumed = train.train(cfg, checkpoint=ckpt)
    assert resumed["grad_evals"] == reference["grad_evals"] == 2 * 4 * 4
    assert resumed["history"] == reference["history"]
