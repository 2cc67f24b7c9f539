"""The one training loop: SGD, SAM and ASAM, resumable, deterministic per seed on CPU.

``run(TrainConfig(...))`` returns a plain-JSON result dict: final and best (early-stopping)
metrics, the per-epoch history, and provenance. Data lives as tensors on the device and
batches are index slices, so there is no per-image Python on the hot path.
"""
from __future__ import annotations

import dataclasses
import errno
import io
import math
import os
import threading
import time

import torch
import torch.nn.functional as F

from . import data as data_mod
from . import graphs
from .bn import bn_frozen
from .config import TrainConfig  # noqa: F401  (the public name: train.run(TrainConfig(...)))
from .models import build_model, count_params
from .sam import SAM
from .sam_variants import LookSAM, MomentumSAM

# A finite running loss above DIVERGENCE_FACTOR × max(initial loss, 1) counts as diverged:
# such a run's weights are garbage (a loss of 6.6e33 once entered the gains as "ok").
DIVERGENCE_FACTOR = 1e6


# ----------------------------------------------------------------------------- building blocks

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _loss_fn(cfg, task):
    kind = cfg.loss if cfg.loss != "auto" else ("ce" if task == "classification" else "mse")
    if kind == "ce":
        return F.cross_entropy
    if task == "classification":  # MSE on one-hot targets (the paper's Hessian setting)
        return _mse_one_hot
    return F.mse_loss


def _mse_one_hot(out, y):
    # One-hot by comparison, not F.one_hot: that fails under vmap and forward-mode AD, which
    # the Hessian measures use ("ZeroTensors are immutable", pytorch#123996).
    target = (y[:, None] == torch.arange(out.shape[1], device=y.device)).to(out.dtype)
    return ((out - target) ** 2).mean()


def _make_optimizer(cfg, model):
    sgd = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), **sgd)
    if cfg.optimizer == "looksam":
        return LookSAM(model.parameters(), torch.optim.SGD, rho=cfg.rho, k=cfg.sam_interval,
                       alpha=cfg.looksam_alpha, **sgd)
    if cfg.optimizer == "msam":
        return MomentumSAM(model.parameters(), torch.optim.SGD, rho=cfg.rho, **sgd)
    return SAM(model.parameters(), torch.optim.SGD, rho=cfg.rho, eta=cfg.eta,
               adaptive=cfg.optimizer == "asam", interval=cfg.sam_interval, **sgd)


def _make_scheduler(cfg, opt):
    if cfg.schedule in ("step", "step3"):
        fractions = (0.5, 0.75) if cfg.schedule == "step" else (0.25, 0.5, 0.75)
        milestones = sorted({max(1, round(cfg.epochs * f)) for f in fractions})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _epoch_generator(seed: int, epoch: int, device) -> torch.Generator:
    # Shuffling/augmentation randomness is a pure function of (seed, epoch): a resumed run
    # needs no saved RNG state to replay exactly the same batches.
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + epoch)
    return g


def _apply_pruning(cfg, model, data, loss_fn):
    from . import sparsity
    if cfg.prune == "none":
        return
    s = cfg.sparsity
    if cfg.prune_to_width:
        small = build_model(cfg.model, cfg.prune_to_width, data.in_shape, data.num_classes,
                            cfg.depth)
        s = sparsity.sparsity_for_params(model, count_params(small))
    n = min(len(data.x_train), max(cfg.batch_size, 10 * data.num_classes))
    sparsity.prune(model, cfg.prune, s, seed=cfg.seed, loss_fn=loss_fn,
                   x=data.x_train[:n], y=data.y_train[:n])


_BUILD_LOCK = threading.Lock()


def build(cfg: TrainConfig, data=None):
    """(data, model, optimizer, scheduler, loss_fn) for a config, deterministic in its seeds."""
    device = pick_device(cfg.device)
    if cfg.compile == "graph":
        graphs.require_cuda(device)
    if data is None:
        data = load_for(cfg)
    data = data.to(device)
    with _BUILD_LOCK:  # runs trained in threads of one process: the global RNG seeds each init
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, cfg.width, data.in_shape, data.num_classes, cfg.depth)
        model = model.to(device)
        if cfg.channels_last and cfg.model == "preact_resnet18":
            model = model.to(memory_format=torch.channels_last)
        loss_fn = _loss_fn(cfg, data.task)
        _apply_pruning(cfg, model, data, loss_fn)
    opt = _make_optimizer(cfg, model)
    return data, model, opt, _make_scheduler(cfg, opt), loss_fn


def load_for(cfg: TrainConfig, root: str | None = None):
    data = data_mod.load_data(cfg.dataset, root=root or data_mod.default_root(),
                              n_train=cfg.n_train or None, n_val=cfg.n_val,
                              label_noise=cfg.label_noise, noise_seed=cfg.effective_data_seed,
                              subset_seed=cfg.effective_data_seed)
    if cfg.n_test and cfg.n_test < len(data.x_test):
        # The same subset for every run (its own fixed seed), so runs stay comparable.
        keep = torch.randperm(len(data.x_test), generator=torch.Generator().manual_seed(2024))
        keep = keep[:cfg.n_test].sort().values
        data = dataclasses.replace(data, x_test=data.x_test[keep], y_test=data.y_test[keep])
    return data


# ----------------------------------------------------------------------------- counting passes

def train_examples(config) -> int:
    """The training examples of a run (``config``: a TrainConfig or its stored dict), exactly
    as ``load_for`` gives them: n_train (a class-balanced subset of exactly that size), else
    the whole training set less the validation split (synthetic: its default size, toy1d:
    its 12 points)."""
    c = config if isinstance(config, dict) else dataclasses.asdict(config)
    if c["dataset"] == "toy1d":
        return len(data_mod.TOY1D_X)
    if c["dataset"] == "synthetic":
        return c["n_train"] or data_mod.SYNTH_N_TRAIN
    return c["n_train"] or data_mod.SPLIT_SIZES[c["dataset"]][0] - c["n_val"]


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)  # the last batch may be short


def derived_grad_evals(config, epochs: int) -> int:
    """Forward+backward passes of ``epochs`` epochs of a run, from its config alone (what the
    trainer counts; also for results stored before it did). sgd and msam: one per step; sam
    and asam: two on the steps k, 2k, ... (``sam_interval`` k; missing in a stored config
    older than the field: 1), one on the others; looksam: two on the steps 0, k, 2k, ..."""
    c = config if isinstance(config, dict) else dataclasses.asdict(config)
    steps = epochs * steps_per_epoch(train_examples(c), c["batch_size"])
    k = c.get("sam_interval", 1)
    extra = {"sgd": 0, "msam": 0, "sam": steps // k, "asam": steps // k,
             "looksam": -(-steps // k)}[c["optimizer"]]
    return steps + extra


# ----------------------------------------------------------------------------- one epoch

def train_epoch(cfg, model, opt, loss_fn, data, epoch: int, progress=None, stepper=None):
    """One pass over the training set; returns the summed loss as a device tensor.
    ``stepper``: compile="graph"'s samkit.graphs.GraphStep, kept across epochs (made here if
    not given)."""
    model.train()
    if cfg.compile == "graph" and stepper is None:
        stepper = graphs.GraphStep(model, opt, loss_fn, cfg.batch_size, cfg.bf16)
    device = data.x_train.device
    g = _epoch_generator(cfg.seed, epoch, device)
    n = len(data.x_train)
    order = torch.randperm(n, generator=g, device=device)
    total = torch.zeros((), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    for start in range(0, n, cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        x, y = data.x_train[idx], data.y_train[idx]
        if cfg.augment:
            x = data_mod.augment(x, g)
        if cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if stepper is not None:  # the same step, replayed from a CUDA graph
            total += stepper(x, y) * len(idx)
            if progress is not None:
                progress.update(len(idx))
            continue
        if isinstance(opt, MomentumSAM):  # ε is known before the pass: to w̃ first
            opt.first_step(zero_grad=True)
        with autocast:
            loss = loss_fn(model(x), y)  # Momentum-SAM: the loss at w̃, not at w
        loss.backward()
        if isinstance(opt, MomentumSAM):
            opt.second_step(zero_grad=True)
        elif isinstance(opt, SAM):
            # The second pass only when the step takes the ascent (always for sam with
            # sam_interval 1; LookSAM and sam_interval k: one step in k).
            if opt.first_step(zero_grad=True):
                with bn_frozen(model), autocast:
                    loss_fn(model(x), y).backward()
            opt.second_step(zero_grad=True)
        else:
            opt.step()
            opt.zero_grad(set_to_none=True)
        total += loss.detach().float() * len(idx)
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


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: str, state: dict) -> None:
    """Write-then-rename: a kill at any moment leaves the old checkpoint or the new one.

    A failed write (disk full, quota, read-only folder) raises OSError with its errno and the
    path ("no space left on device: ..."), never torch's bare "[enforce fail at
    inline_container.cc]", and leaves no partial temp file; the old checkpoint stays."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        failed = False
        try:
            torch.save(state, tmp)
        except RuntimeError:  # not kept: its traceback holds torch's writer (and its file) open
            failed = True
        if failed:
            # torch's zip writer reports a failed write without its cause (errno). Write the
            # same bytes with Python's file API, which raises OSError with the real errno
            # (or succeeds, if the failure was transient).
            buf = io.BytesIO()
            torch.save(state, buf)
            with open(tmp, "wb") as f:
                f.write(buf.getbuffer())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"no space left on device: cannot write the checkpoint "
                          f"{path}; free some space and rerun (the run resumes from its "
                          "previous checkpoint)") from None
        raise OSError(e.errno, f"cannot write the checkpoint {path}: {e.strerror or e}") from e


def _load_checkpoint(path, cfg, model, opt, sched):
    if not path or not os.path.exists(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("config") != cfg.key_dict():
        return None  # a checkpoint of another run: start afresh rather than mix them
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return state


# ----------------------------------------------------------------------------- the loop

def run(cfg: TrainConfig, checkpoint: str | None = None, quiet: bool = True,
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
    resumed = _load_checkpoint(checkpoint, cfg, model, opt, sched)
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
        from .hessian import sharpness
        n = min(cfg.hessian_samples, len(data.x_train))
        result["hessian"] = sharpness(model, loss_fn, data.x_train[:n], data.y_train[:n],
                                      seed=cfg.seed)
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
