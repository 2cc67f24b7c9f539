"""What a run is made of: device, data, model, loss, optimizer and schedule from a TrainConfig,
deterministic in its seeds (``build``). The loop that trains them is ``samkit.train.loop``."""
from __future__ import annotations

import dataclasses
import threading

import torch
import torch.nn.functional as F

from samkit.data import datasets as data_mod
from samkit.optim import graph_step as graphs
from samkit.train.config import TrainConfig
from samkit.models import build_model, count_params
from samkit.optim.sam import SAM
from samkit.optim.variants import LookSAM, MomentumSAM


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
    adam = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)   # torch's defaults: betas, eps
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), **sgd)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), **adam)
    if cfg.optimizer == "looksam":
        return LookSAM(model.parameters(), torch.optim.SGD, rho=cfg.rho, k=cfg.sam_interval,
                       alpha=cfg.looksam_alpha, **sgd)
    if cfg.optimizer == "msam":
        return MomentumSAM(model.parameters(), torch.optim.SGD, rho=cfg.rho, **sgd)
    base, kwargs = ((torch.optim.Adam, adam) if cfg.base_optimizer == "adam"
                    else (torch.optim.SGD, sgd))
    return SAM(model.parameters(), base, rho=cfg.rho, eta=cfg.eta,
               adaptive=cfg.optimizer == "asam", interval=cfg.sam_interval, **kwargs)


def _make_scheduler(cfg, opt):
    if cfg.schedule in ("step", "step3"):
        fractions = (0.5, 0.75) if cfg.schedule == "step" else (0.25, 0.5, 0.75)
        milestones = sorted({max(1, round(cfg.epochs * f)) for f in fractions})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _apply_pruning(cfg, model, data, loss_fn):
    from samkit.measure import sparsity
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
