"""The one training loop: SGD, SAM and ASAM, resumable, deterministic per seed on CPU.

``train(TrainConfig(...))`` returns a plain-JSON result dict: final and best (early-stopping)
metrics, the per-epoch history, and provenance. Data lives as tensors on the device and
batches are index slices, so there is no per-image Python on the hot path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time

import torch

from samkit.data import datasets as data_mod, toy
from samkit.optim import graph_step as graphs
from samkit.train.build import build
from samkit.train.checkpoint import load_checkpoint, save_checkpoint
from samkit.train.config import TrainConfig
from samkit.models import count_params
from samkit.optim.bn import PERTURBED_PASS, running_stats_drift
from samkit.optim.sam import SAM

# A finite running loss above DIVERGENCE_FACTOR × max(initial loss, 1) counts as diverged:
# such a run's weights are garbage (a loss of 6.6e33 is no result to average into a gain).
DIVERGENCE_FACTOR = 1e6


# ----------------------------------------------------------------------------- one epoch's order

def _epoch_generator(seed: int, epoch: int, device) -> torch.Generator:
    # Shuffling/augmentation randomness is a pure function of (seed, epoch): a resumed run
    # needs no saved RNG state to replay exactly the same batches.
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + epoch)
    return g


# ----------------------------------------------------------------------------- counting passes

def train_examples(config) -> int:
    """The training examples of a run (``config``: a TrainConfig or its stored dict), exactly
    as ``load_for`` gives them: n_train (a class-balanced subset of exactly that size), else
    the whole training set less the validation split (synthetic: its default size, toy1d:
    its 12 points)."""
    c = config if isinstance(config, dict) else dataclasses.asdict(config)
    if c["dataset"] == "toy1d":
        return len(toy.TOY1D_X)
    if c["dataset"] == "synthetic":
        return c["n_train"] or toy.SYNTH_N_TRAIN
    return c["n_train"] or data_mod.SPLIT_SIZES[c["dataset"]][0] - c["n_val"]


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)  # the last batch may be short


def derived_grad_evals(config, epochs: int) -> int:
    """Forward+backward passes of ``epochs`` epochs of a run, from its config alone (what the
    trainer counts; also for results stored before it did). sgd, adam and msam: one per step; sam
    and asam: two on the steps k, 2k, ... (``sam_interval`` k; missing in a stored config
    older than the field: 1), one on the others; looksam: two on the steps 0, k, 2k, ..."""
    c = config if isinstance(config, dict) else dataclasses.asdict(config)
    steps = epochs * steps_per_epoch(train_examples(c), c["batch_size"])
    k = c.get("sam_interval", 1)
    extra = {"sgd": 0, "adam": 0, "msam": 0, "sam": steps // k, "asam": steps // k,
             "looksam": -(-steps // k)}[c["optimizer"]]
    return steps + extra


# ----------------------------------------------------------------------------- one epoch

def train_epoch(cfg, model, opt, loss_fn, data, epoch: int, progress=None, stepper=None):
    """One pass over the training set; returns the summed loss as a device tensor.
    ``stepper``: compile="graph"'s samkit.optim.graph_step.GraphStep, kept across epochs (made here if
    not given)."""
    model.train()
    perturbed_bn = PERTURBED_PASS[cfg.bn_perturbed]
    if cfg.compile == "graph" and stepper is None:
        stepper = graphs.GraphStep(model, opt, loss_fn, cfg.batch_size, cfg.bf16,
                                   perturbed_bn=perturbed_bn)
    device = data.x_train.device
    g = _epoch_generator(cfg.seed, epoch, device)
    n = len(data.x_train)
    order = torch.randperm(n, generator=g, device=device)
    total = torch.zeros((), device=device)
    # A disabled torch.autocast still costs ~10 us per entry (half the trainer's gap to a bare
    # loop at width 128, benchmarks/trainer_vs_bare.py): make one only when bf16 is on.
    autocast = (functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
                if cfg.bf16 else contextlib.nullcontext)
    for start in range(0, n, cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        x, y = data.x_train[idx], data.y_train[idx]
        if cfg.augment:
            x = data_mod.augment(x, g)
        if cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        # The one step definition (graphs.train_step); with compile="graph" the same step,
        # replayed from a CUDA graph.
        loss = (stepper(x, y) if stepper is not None
                else graphs.train_step(model, opt, loss_fn, x, y, autocast, perturbed_bn))
        total += loss * len(idx)
        if progress is not None:
            progress.update(len(idx))
    return total


@torch.no_grad()
def evaluate(cfg, model, loss_fn, x, y, y_clean=None, batch_size=1024) -> dict:
    """Mean loss and accuracy (on ``y`` and, if given, on ``y_clean``) in eval mode."""
    model.eval()
    if len(x) == 0:
        return {}
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    correct_clean = torch.zeros((), device=x.device)
    classify = not y.is_floating_point()
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        if cfg.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            out = model(xb).float()
        loss_sum += loss_fn(out, y[s:s + batch_size]) * len(xb)
        if classify:
            pred = out.argmax(1)
            correct += (pred == y[s:s + batch_size]).sum()
            if y_clean is not None:
                correct_clean += (pred == y_clean[s:s + batch_size]).sum()
    out = {"loss": float(loss_sum) / len(x)}
    if classify:
        out["acc"] = float(correct) / len(x)
        if y_clean is not None:
            out["acc_clean"] = float(correct_clean) / len(x)
    return out


def _epoch_metrics(cfg, model, loss_fn, data) -> dict:
    m = {}
    for split, x, y, yc in (("train", data.x_train, data.y_train, data.y_train_clean),
                            ("val", data.x_val, data.y_val, None),
                            ("test", data.x_test, data.y_test, None)):
        for k, v in evaluate(cfg, model, loss_fn, x, y, yc).items():
            m[f"{split}_{k}"] = v
    if "train_acc" in m and "test_acc" in m:
        m["gap"] = m["train_acc"] - m["test_acc"]
    return m


# ----------------------------------------------------------------------------- the loop

def train(cfg: TrainConfig, checkpoint: str | None = None, quiet: bool = True,
        data=None, return_model: bool = False, on_epoch=None):
    """Train one config; returns a JSON-able result dict (and the model if asked).

    ``checkpoint``: a path written atomically after every epoch; if it exists at start, the
    run resumes from it and ends with the same numbers as an uninterrupted run.
    ``on_epoch(entry)``: called after each evaluation (and its checkpoint) with the new
    history entry (progress reports).
    """
    t0 = time.time()
    data, model, opt, sched, loss_fn = build(cfg, data)
    history, best, best_state, start, status = [], None, None, 0, "ok"
    resumed = load_checkpoint(checkpoint, cfg, model, opt, sched)
    if resumed:
        history, best, best_state = resumed["history"], resumed["best"], resumed["best_state"]
        start, status = resumed["epoch"], resumed["status"]
    # Times are summed across resumes (what a killed attempt spent after its last checkpoint
    # is lost): train_seconds counts training only (no data loading, evaluation, checkpoints).
    seconds_before = resumed.get("seconds", 0.0) if resumed else 0.0
    train_seconds = resumed.get("train_seconds", 0.0) if resumed else 0.0
    # Forward+backward passes of the training steps so far (evaluation excluded). A checkpoint
    # written before this count existed is of sgd, sam or asam with one fixed count per step.
    grad_evals = ((resumed.get("grad_evals") if "grad_evals" in resumed
                   else derived_grad_evals(cfg, start)) if resumed else 0)
    # The reference for the divergence bound: the loss at initialisation on the first batch, in
    # eval mode so that no BatchNorm statistic (hence no number of the run) changes.
    initial_loss = (resumed.get("initial_loss") if resumed else None) or evaluate(
        cfg, model, loss_fn, data.x_train[:cfg.batch_size], data.y_train[:cfg.batch_size])["loss"]
    progress = _progress(cfg, len(data.x_train), quiet, start)
    # compile="graph": one GraphStep for the whole run (its graphs are kept across epochs)
    graph = ({"stepper": graphs.GraphStep(model, opt, loss_fn, cfg.batch_size, cfg.bf16)}
             if cfg.compile == "graph" else {})
    loss_sum = 0.0
    for epoch in range(start if status == "ok" else cfg.epochs, cfg.epochs):
        tick = time.perf_counter()
        evals_before = opt.grad_evals if isinstance(opt, SAM) else 0
        loss_sum = loss_sum + train_epoch(cfg, model, opt, loss_fn, data, epoch, progress,
                                          **graph)
        # The SAM family counts the passes its steps took (2 on a step with the ascent, else
        # 1); plain SGD takes one per batch.
        grad_evals += (opt.grad_evals - evals_before if isinstance(opt, SAM)
                       else steps_per_epoch(len(data.x_train), cfg.batch_size))
        sched.step()
        if (epoch + 1) % cfg.eval_every and epoch + 1 < cfg.epochs:
            train_seconds += time.perf_counter() - tick  # queued GPU work drains in a later tick
            continue  # NaN/inf persists in the running sum, so the next check still sees it
        epochs_summed = epoch + 1 - (history[-1]["epoch"] if history else 0)  # since last eval
        train_loss = float(loss_sum) / (len(data.x_train) * epochs_summed)  # one host sync
        train_seconds += time.perf_counter() - tick
        loss_sum = 0.0
        if not math.isfinite(train_loss) or train_loss > DIVERGENCE_FACTOR * max(initial_loss, 1.0):
            status = "diverged"
            history.append({"epoch": epoch + 1, "train_loss_running": train_loss})
        else:
            m = {"epoch": epoch + 1, "lr": sched.get_last_lr()[0],
                 "train_loss_running": train_loss, **_epoch_metrics(cfg, model, loss_fn, data)}
            history.append(m)
            if _is_better(cfg, m, best):
                best = m
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if progress is not None:
            progress.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.3g}",
                                 test_acc=f"{history[-1].get('test_acc', float('nan')):.3f}")
        if checkpoint:
            save_checkpoint(checkpoint, {
                "config": cfg.key_dict(), "epoch": epoch + 1, "status": status,
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "history": history, "best": best,
                "best_state": best_state, "train_seconds": train_seconds,
                "initial_loss": initial_loss, "grad_evals": grad_evals,
                "seconds": seconds_before + time.time() - t0})
        if on_epoch is not None:
            on_epoch(history[-1])
        if status == "diverged":
            break
    if progress is not None:
        progress.close()
    result = _result(cfg, model, data, history, best, status, loss_fn, best_state)
    result.update(seconds=seconds_before + time.time() - t0, train_seconds=train_seconds,
                  initial_loss=initial_loss, grad_evals=grad_evals)
    return (result, model) if return_model else result


def _is_better(cfg, m, best):
    if not (cfg.early_stopping and cfg.n_val):
        return True  # no early stopping: "best" is simply the last epoch
    key = "val_acc" if "val_acc" in m else "val_loss"
    sign = 1 if key == "val_acc" else -1
    return best is None or sign * m[key] > sign * best[key]


def _result(cfg, model, data, history, best, status, loss_fn, best_state):
    final = history[-1] if history and status == "ok" else {}
    if status == "diverged":
        best = {}
    result = {
        "config": dataclasses.asdict(cfg), "status": status,
        "diverged_epoch": history[-1]["epoch"] if status == "diverged" else None,
        "params": count_params(model), "nonzero_params": count_params(model, nonzero=True),
        "final": final, "best": best or {}, "history": history,
        "n_flipped": int(len(data.noisy_idx)),
    }
    if status == "ok" and best_state is not None:
        model.load_state_dict(best_state)  # the reported (early-stopped) model
    if status == "ok" and cfg.hessian_samples:
        from samkit.measure.hessian import sharpness
        n = min(cfg.hessian_samples, len(data.x_train))
        result["hessian"] = sharpness(model, loss_fn, data.x_train[:n], data.y_train[:n],
                                      seed=cfg.seed)
    if status == "ok" and cfg.bn_drift:
        result["bn_drift"] = running_stats_drift(model, data.x_train, cfg.batch_size)
    if status == "ok" and data.x_probe is not None:
        with torch.no_grad():
            model.eval()
            result["probe"] = {"x": data.x_probe.flatten().tolist(),
                               "y": model(data.x_probe).float().flatten().tolist()}
    return result


def _progress(cfg, n, quiet, start):
    if quiet:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=n * (cfg.epochs - start), unit="img",
                desc=f"{cfg.optimizer} {cfg.model}-{cfg.width} seed {cfg.seed}")
