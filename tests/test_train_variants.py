"""The trainer's cheaper SAM variants (sam_interval, looksam, msam): validation, run keys that
stay those of the existing run cache, exact gradient-evaluation counts, exact resume."""
import dataclasses
import json
import math
import os
import subprocess

import pytest
import torch
import yaml

from conftest import interrupt_run
from samkit.train import config, loop as train
from samkit.pipeline import params
from samkit.sweep import engine as sweep
from samkit.train.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A regression task (no data files), a last batch that is short: 50 = 3 x 16 + 2.
SYN = dict(dataset="synthetic", model="mlp", width=8, n_train=50, epochs=3,
           batch_size=16, schedule="constant", device="cpu")
STEPS = 3 * 4  # epochs x ceil(50 / 16)
# The research base of params.yaml (cpu profile), and run keys computed by the code before the
# new fields existed (commit a7de158): they must never change.
RESEARCH = dict(dataset="fashion_mnist", model="mlp", depth=2, n_train=10000, n_val=5000,
                n_test=0, data_seed=-1, rho=0.05, lr=0.1, momentum=0.9, weight_decay=0.0001,
                batch_size=128, epochs=60, schedule="step3", eval_every=3, early_stopping=True)
PINNED_KEYS = [
    (dict(optimizer="sgd", width=8, seed=5), "075b56d122a3e658"),
    (dict(optimizer="sam", width=32, seed=0), "1e6d91e0400fa249"),
    (dict(optimizer="asam", width=32, seed=1, rho=0.5), "510bd33263f13c8d"),
    (dict(optimizer="sam", width=512, seed=4, label_noise=0.4), "294af14928a6302c"),
    (dict(optimizer="sgd", width=512, seed=2, epochs=120), "b878c2108cd25be2"),
]


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("bad, message", [
    (dict(sam_interval=0), "sam_interval: got 0; allowed: an int >= 1"),
    (dict(sam_interval=2.5), "sam_interval: got 2.5 (float); allowed: an int"),
    (dict(looksam_alpha=-0.1), "looksam_alpha: got -0.1; allowed: a number >= 0"),
    (dict(looksam_alpha="0.7"), "looksam_alpha: got '0.7' (str); allowed: a number"),
    (dict(optimizer="msam", momentum=0.0),
     "momentum: got 0.0 with optimizer 'msam'; allowed: momentum > 0"),
    (dict(optimizer="lamb"), "optimizer: got 'lamb'; allowed: sgd, adam, sam, asam, looksam, msam"),
])
def test_new_fields_are_validated_in_one_line(bad, message):
    with pytest.raises(ValueError) as e:
        TrainConfig(**bad)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_params_yaml_reports_a_bad_new_field():
    section = {"cpu": {"base": {"dataset": "synthetic", "model": "mlp"},
                       "grid": {"sam_interval": [1, 0]}}}
    with pytest.raises(params.ParamsError) as e:
        params.study_configs("width", section, "cpu")
    assert "width.cpu.grid.sam_interval[1]: got 0; allowed: an int >= 1" in str(e.value)


# ----------------------------------------------------------------------------- run keys

@pytest.mark.parametrize("extra, key", PINNED_KEYS)
def test_keys_of_existing_configs_are_unchanged(extra, key):
    cfg = TrainConfig(**{**RESEARCH, **extra})
    assert sweep.run_key(cfg) == key
    assert not set(config.KEY_OMITTED_AT_DEFAULT) & set(cfg.key_dict())
    # spelling out the defaults is the same run
    same = TrainConfig(**{**RESEARCH, **extra, **config.KEY_OMITTED_AT_DEFAULT})
    assert sweep.run_key(same) == key


def _tracked_runs():
    try:
        out = subprocess.run(["git", "ls-files", "results/runs"], cwd=REPO, capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("git is not available")
    runs = [p for p in out if p.endswith(".json") and os.path.exists(os.path.join(REPO, p))]
    if not runs:
        pytest.skip("no committed run cache in this checkout")
    return runs


def test_every_committed_cache_entry_keeps_its_key():
    """Each committed result, stored before the new fields existed, is found again: its own
    config hashes to its file name, and the width study's cpu configs find the entries."""
    tracked = _tracked_runs()
    for path in tracked:
        with open(os.path.join(REPO, path)) as f:
            stored = json.load(f)["config"]
        key = os.path.basename(path)[:-len(".json")]
        assert sweep.run_key(TrainConfig(**stored)) == key, path
    with open(os.path.join(REPO, "params.yaml")) as f:
        section = yaml.safe_load(f)["width"]
    width_keys = {sweep.run_key(c) for c in params.study_configs("width", section, "cpu")}
    found = {os.path.basename(p)[:-len(".json")] for p in tracked} & width_keys
    assert found, "no committed run of the width study's cpu configs is found by its key"
    for key in found:
        assert os.path.exists(os.path.join(REPO, "results", "runs", f"{key}.json"))


def test_new_options_change_the_key_only_where_they_act():
    def key(**kw):
        return sweep.run_key(TrainConfig(**{**SYN, **kw}))
    sam = key(optimizer="sam")
    assert key(optimizer="sam", sam_interval=5) != sam
    assert key(optimizer="asam", sam_interval=5) != key(optimizer="asam")
    assert key(optimizer="looksam") != sam
    assert key(optimizer="looksam", looksam_alpha=0.5) != key(optimizer="looksam")
    assert key(optimizer="looksam", sam_interval=10) != key(optimizer="looksam")
    assert key(optimizer="msam") not in (sam, key(optimizer="sgd"))
    assert key(optimizer="msam", rho=0.3) != key(optimizer="msam")
    # ignored options: one cache entry whatever their value
    assert key(optimizer="sgd", sam_interval=5, looksam_alpha=0.1) == key(optimizer="sgd")
    assert key(optimizer="sam", looksam_alpha=0.1) == sam
    assert key(optimizer="msam", sam_interval=5, eta=0.5) == key(optimizer="msam")
    assert key(optimizer="looksam", eta=0.5) == key(optimizer="looksam")


# ----------------------------------------------------------------------------- counting passes

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
        assert train.train_examples(cfg) == len(train.load_for(cfg).x_train), kw
    # the full set less the validation split, without loading it
    assert train.train_examples(TrainConfig(n_val=5000)) == 55000


def test_old_results_derive_grad_evals_exactly():
    """A result of the cpu profile's kind stored before the count existed (no grad_evals, no
    new config fields): epochs x ceil(10000 / 128) steps, x2 for SAM; diverged: its epochs."""
    def old(optimizer, status="ok", diverged_epoch=None, **kw):
        stored = dataclasses.asdict(TrainConfig(**{**RESEARCH, "optimizer": optimizer, **kw}))
        for k in config.KEY_OMITTED_AT_DEFAULT:
            stored.pop(k)
        return {"config": stored, "status": status, "diverged_epoch": diverged_epoch,
                "params": 1, "nonzero_params": 1, "seconds": 1.0}
    assert sweep.to_row(old("sgd"))["grad_evals"] == 60 * 79
    assert sweep.to_row(old("sam"))["grad_evals"] == 2 * 60 * 79
    assert sweep.to_row(old("sgd", epochs=120))["grad_evals"] == 120 * 79
    assert sweep.to_row(old("asam", n_train=0))["grad_evals"] == 2 * 60 * math.ceil(55000 / 128)
    assert sweep.to_row(old("sam", "diverged", 9))["grad_evals"] == 2 * 9 * 79
    assert math.isnan(sweep.to_row(old("sam", "diverged", None))["grad_evals"])


# ----------------------------------------------------------------------------- resume

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


def test_adam_and_sam_on_adam_match_a_hand_written_float64_step():
    """sam with base_optimizer adam: three steps of Adam (betas 0.9/0.999, bias correction, L2
    weight decay added to the gradient) at the gradient of w + rho g/||g||, re-derived by hand
    in float64; the base optimizer is torch.optim.Adam, and plain adam is too."""
    import torch.nn.functional as F
    from samkit.train.build import _make_optimizer

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    w = [p.detach().clone() for p in model.parameters()]
    lr, rho, wd, (b1, b2), eps = 0.01, 1.0, 1e-2, (0.9, 0.999), 1e-8
    cfg = TrainConfig(model="mlp", optimizer="sam", base_optimizer="adam", rho=rho, lr=lr,
                      weight_decay=wd)
    opt = _make_optimizer(cfg, model)
    assert isinstance(opt.base_optimizer, torch.optim.Adam)

    def loss_at(ws):
        return F.cross_entropy(x @ ws[0].T + ws[1], y)

    m = [torch.zeros_like(wi) for wi in w]
    v = [torch.zeros_like(wi) for wi in w]
    for t in range(1, 4):
        F.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
        ws = [wi.clone().requires_grad_(True) for wi in w]
        g = torch.autograd.grad(loss_at(ws), ws)
        norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
        wp = [(wi + rho * gi / norm).requires_grad_(True) for wi, gi in zip(w, g)]
        g2 = torch.autograd.grad(loss_at(wp), wp)
        for i, (wi, gi) in enumerate(zip(w, g2)):
            gi = gi + wd * wi                       # torch.optim.Adam's L2: on w, not w + e
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi ** 2
            step = lr * (m[i] / (1 - b1 ** t)) / ((v[i] / (1 - b2 ** t)).sqrt() + eps)
            w[i] = wi - step
    for p, e in zip(model.parameters(), w):
        torch.testing.assert_close(p.detach(), e, rtol=1e-9, atol=1e-11)
    plain = _make_optimizer(TrainConfig(model="mlp", optimizer="adam"), model)
    assert type(plain) is torch.optim.Adam


def test_adam_ignores_momentum_so_its_key_may_drop_it():
    """Two SAM(Adam) optimizers that differ only in `momentum` take identical steps."""
    import torch.nn.functional as F
    from samkit.train.build import _make_optimizer
    weights = []
    for momentum in (0.5, 0.9):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        opt = _make_optimizer(TrainConfig(model="mlp", optimizer="sam", base_optimizer="adam",
                                          momentum=momentum), model)
        assert "momentum" not in opt.base_optimizer.param_groups[0]
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        for _ in range(2):
            F.cross_entropy(model(x), y).backward()
            opt.first_step(zero_grad=True)
            F.cross_entropy(model(x), y).backward()
            opt.second_step(zero_grad=True)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_adam_options_are_validated_and_keep_old_keys():
    with pytest.raises(ValueError, match=r"^base_optimizer: got 'adam' with optimizer 'sgd'"):
        TrainConfig(model="mlp", optimizer="sgd", base_optimizer="adam")
    with pytest.raises(ValueError, match=r"^nesterov: got True with Adam"):
        TrainConfig(model="mlp", optimizer="adam", nesterov=True)
    sam = TrainConfig(model="mlp", optimizer="sam")
    assert "base_optimizer" not in sam.key_dict()
    on_adam = TrainConfig(model="mlp", optimizer="sam", base_optimizer="adam")
    assert on_adam.key_dict()["base_optimizer"] == "adam"
    # Adam ignores momentum: one cache entry whatever it says
    assert (TrainConfig(model="mlp", optimizer="adam", momentum=0.5).key_dict()
            == TrainConfig(model="mlp", optimizer="adam").key_dict())
