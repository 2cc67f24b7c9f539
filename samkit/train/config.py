"""The run config: every field of one training run, its type, allowed values and help text,
in one place. ``TrainConfig(...)`` validates itself when built; ``check_field`` checks one
value (params.yaml and the CLI use it, so all three speak with the same one-line messages);
``key_dict`` is the run's identity in the run cache.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

from samkit.data import datasets as data_mod
from samkit.optim import graph_step as graphs
from samkit.models import MODELS

# sgd; sam and asam (SAM / adaptive SAM, the ascent every `sam_interval` steps); looksam
# (LookSAM: SAM every `sam_interval` steps, the reused component in between); msam
# (Momentum-SAM: ε from the momentum buffer, one pass per step). See samkit.optim.sam.
OPTIMIZERS = ("sgd", "adam", "sam", "asam", "looksam", "msam")
# What sam and asam wrap: SGD (with momentum) or Adam (torch.optim.Adam, weight decay as L2).
BASE_OPTIMIZERS = ("sgd", "adam")
# frozen: samkit.bn_frozen (the fix); updated: no fix, the perturbed pass's batch statistics
# enter the running averages; momentum0: BatchNorm momentum 0 for the pass (davda54/sam's fix).
BN_PERTURBED = ("frozen", "updated", "momentum0")
SCHEDULES = ("step", "step3", "cosine", "constant")
LOSSES = ("auto", "ce", "mse")
PRUNE = ("none", "random", "snip")
REGRESSION_DATASETS = ("synthetic", "toy1d")
COMPILE = ("eager", "graph")  # graph: the whole step in one CUDA graph (samkit.optim.graph_step)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one run. Its fields are params.yaml's and the CLI's keys."""
    # data
    dataset: str = "fashion_mnist"
    n_train: int = 0             # class-balanced subset size; 0 = the whole training set
    n_val: int = 0               # validation split (for early stopping); 0 = none
    n_test: int = 0              # fixed random test subset (same for every run); 0 = all
    label_noise: float = 0.0     # symmetric noise rate in [0, 1)
    augment: bool = False        # random crop (pad 4) + horizontal flip, on device
    data_seed: int = 0           # seeds the subset, the split and the noise; -1: the run's seed
                                 # (so seeds also resample the data, paired across optimizers)
    # model
    model: str = "preact_resnet18"
    width: int = 16
    depth: int = 1               # MLP hidden layers
    prune: str = "none"
    sparsity: float = 0.0        # fraction of prunable weights removed at init
    prune_to_width: int = 0      # >0: choose sparsity so nonzero params = dense model at this width
    # optimisation
    optimizer: str = "sgd"
    rho: float = 0.05
    eta: float = 0.01            # ASAM's T = |w| + eta
    sam_interval: int = 1        # sam/asam/looksam: the ascent (2nd pass) on 1 step in k
    looksam_alpha: float = 0.7   # looksam: weight of the reused component between SAM steps
    bn_perturbed: str = "frozen"  # BatchNorm running stats in SAM's 2nd pass (samkit.optim.bn)
    base_optimizer: str = "sgd"  # sam/asam: the optimizer SAM wraps (adam: SAM(Adam))
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    batch_size: int = 128
    epochs: int = 10
    eval_every: int = 1          # evaluate + checkpoint every k epochs (and at the last one)
    schedule: str = "step"       # step: ×0.1 at 50% and 75% of the epochs; step3: at 25/50/75%
    loss: str = "auto"           # auto: cross-entropy for classes, MSE for regression
    early_stopping: bool = True  # report the epoch of best validation accuracy (needs n_val)
    seed: int = 0
    # measurement
    hessian_samples: int = 0     # >0: λmax, trace, non-uniformity on this many training points
    bn_drift: bool = False       # running stats vs those the final weights give (samkit.optim.bn)
    # execution (not part of a run's identity)
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = False
    compile: str = "eager"       # graph: each step replayed from ONE CUDA graph (CUDA only)
    tag: str = ""

    def __post_init__(self):
        validate_config(self)

    def key_dict(self) -> dict:
        """The fields that change a run's numbers (cache identity)."""
        d = dataclasses.asdict(self)
        # compile: the same kernels in the same order as eager (samkit.optim.graph_step), so a graph run
        # is the eager run on that device and shares its key (as device itself does).
        for k in ("device", "tag", "compile"):
            d.pop(k)
        if self.optimizer in ("sgd", "adam"):   # no SAM: rho/eta unused, one cache entry
            d["rho"] = d["eta"] = 0.0
        d["data_seed"] = self.effective_data_seed  # -1 and the seed it stands for: one run
        # Options an optimizer ignores take their default (one cache entry for all values);
        # eta only for the new optimizers: sam's keys have always held it.
        if self.optimizer in ("looksam", "msam"):
            d["eta"] = _DEFAULT_ETA
        if self.optimizer not in ("sam", "asam", "looksam"):
            d["sam_interval"] = KEY_OMITTED_AT_DEFAULT["sam_interval"]
        if self.optimizer != "looksam":
            d["looksam_alpha"] = KEY_OMITTED_AT_DEFAULT["looksam_alpha"]
        if self.optimizer == "adam" or self.base_optimizer == "adam":
            d["momentum"] = _DEFAULT_MOMENTUM   # Adam's betas are its own: momentum is unused
        if self.optimizer not in ("sam", "asam", "looksam"):  # no perturbed pass
            d["bn_perturbed"] = KEY_OMITTED_AT_DEFAULT["bn_perturbed"]
        for k, default in KEY_OMITTED_AT_DEFAULT.items():
            if d[k] == default:
                d.pop(k)
        return d

    @property
    def effective_data_seed(self) -> int:
        return self.seed if self.data_seed == -1 else self.data_seed


# Fields added after the run cache (results/runs, hours of training) was started. The key of a
# run hashes key_dict(), so a new field would change the key of every existing config and orphan
# its cached result: these fields are left out of key_dict() while they hold their default, and
# a config that existed before them keeps its key (tests/test_engine.py checks the
# committed cache entries). Their defaults are therefore fixed for good: a changed default would
# give an old key to a run with other numbers. Add every field added from now on here.
KEY_OMITTED_AT_DEFAULT = {"sam_interval": 1, "looksam_alpha": 0.7, "bn_perturbed": "frozen",
                          "bn_drift": False, "base_optimizer": "sgd"}
_DEFAULT_ETA = 0.01  # TrainConfig.eta's default
_DEFAULT_MOMENTUM = 0.9  # TrainConfig.momentum's default


_CHOICES = {"dataset": data_mod.DATASETS, "model": MODELS, "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES, "loss": LOSSES, "prune": PRUNE, "compile": COMPILE,
            "bn_perturbed": BN_PERTURBED, "base_optimizer": BASE_OPTIMIZERS}
_POSITIVE = ("width", "depth", "lr", "batch_size", "epochs", "eval_every")
_NON_NEGATIVE = ("n_train", "n_val", "n_test", "rho", "eta", "weight_decay", "seed",
                 "hessian_samples", "prune_to_width")
_UNIT = ("label_noise", "sparsity", "momentum")  # in [0, 1) (momentum 1 never forgets)
FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def check_field(name: str, v) -> None:
    """Raise ValueError "<name>: got <v>; allowed: <...>" if ``v`` is not valid for ``name``."""
    if name not in FIELD_TYPES:
        raise ValueError(f"{name}: unknown key; allowed: {', '.join(FIELD_TYPES)}")
    kind = FIELD_TYPES[name]
    want = {"int": int, "float": (int, float), "bool": bool, "str": str}[kind]
    if (isinstance(v, bool) and kind != "bool") or not isinstance(v, want):
        raise ValueError(f"{name}: got {v!r} ({type(v).__name__}); allowed: {_a(kind)}")
    if kind == "float" and not math.isfinite(v):  # inf passes "> 0"; every run would diverge
        raise ValueError(f"{name}: got {v!r}; allowed: a finite number")
    if name in _CHOICES and v not in _CHOICES[name]:
        raise ValueError(f"{name}: got {v!r}; allowed: {', '.join(_CHOICES[name])}")
    if name in _POSITIVE and not v > 0:
        raise ValueError(f"{name}: got {v!r}; allowed: {_a(kind)} > 0")
    if name in _NON_NEGATIVE and not v >= 0:
        raise ValueError(f"{name}: got {v!r}; allowed: {_a(kind)} >= 0")
    if name == "data_seed" and not v >= -1:
        raise ValueError(f"data_seed: got {v!r}; allowed: an int >= 0, or -1 for the run's seed")
    if name in _UNIT and not 0 <= v < 1:
        raise ValueError(f"{name}: got {v!r}; allowed: a number in [0, 1)")
    if name == "device" and v not in ("auto", "cpu") and not v.startswith("cuda"):
        raise ValueError(f"device: got {v!r}; allowed: auto, cpu, cuda, cuda:N")
    if name == "sam_interval" and not v >= 1:
        raise ValueError(f"sam_interval: got {v!r}; allowed: an int >= 1 (the SAM ascent on one "
                         "step in k; 1: every step)")
    if name == "looksam_alpha" and not v >= 0:
        raise ValueError(f"looksam_alpha: got {v!r}; allowed: a number >= 0 (0: plain steps "
                         "between LookSAM's SAM steps)")


def _a(kind: str) -> str:
    return {"int": "an int", "float": "a number", "bool": "true or false", "str": "a string"}[kind]


def validate_config(cfg) -> None:
    """Every field on its own, then the combinations; the first problem raises ValueError."""
    for name in FIELD_TYPES:
        check_field(name, getattr(cfg, name))
    if cfg.compile == "graph" and cfg.device == "cpu":  # "auto": checked where it resolves
        graphs.require_cuda(cfg.device)
    if cfg.optimizer == "msam" and not cfg.momentum > 0:
        raise ValueError(f"momentum: got {cfg.momentum!r} with optimizer 'msam'; allowed: "
                         "momentum > 0 (Momentum-SAM perturbs along the momentum buffer)")
    if cfg.model != "preact_resnet18" and (cfg.bn_perturbed != "frozen" or cfg.bn_drift):
        name = "bn_perturbed" if cfg.bn_perturbed != "frozen" else "bn_drift"
        raise ValueError(f"{name}: got {getattr(cfg, name)!r} with model {cfg.model!r} (no "
                         "BatchNorm); allowed: " + ("frozen" if name == "bn_perturbed"
                                                    else "false") + ", or model preact_resnet18")
    if cfg.bn_perturbed != "frozen" and cfg.optimizer not in ("sam", "asam", "looksam"):
        raise ValueError(f"bn_perturbed: got {cfg.bn_perturbed!r} with optimizer "
                         f"{cfg.optimizer!r} (no perturbed pass); allowed: frozen, or optimizer "
                         "sam, asam or looksam")
    if cfg.base_optimizer != "sgd" and cfg.optimizer not in ("sam", "asam"):
        raise ValueError(f"base_optimizer: got {cfg.base_optimizer!r} with optimizer "
                         f"{cfg.optimizer!r}; allowed: sgd, or optimizer sam or asam (plain "
                         "Adam is optimizer adam)")
    if cfg.compile == "graph" and "adam" in (cfg.optimizer, cfg.base_optimizer):
        raise ValueError("compile: got 'graph' with Adam; allowed: eager (a CUDA-graph capture "
                         "of torch.optim.Adam needs capturable=True, which the graph step does "
                         "not set)")
    if cfg.nesterov and (cfg.optimizer == "adam" or cfg.base_optimizer == "adam"):
        raise ValueError("nesterov: got True with Adam; allowed: false (Adam has no Nesterov "
                         "option here)")
    if cfg.prune == "none" and (cfg.sparsity or cfg.prune_to_width):
        raise ValueError(f"prune: got 'none' with sparsity={cfg.sparsity}, prune_to_width="
                         f"{cfg.prune_to_width}; allowed: random, snip (or drop the sparsity)")
    if cfg.prune != "none" and not (cfg.sparsity or cfg.prune_to_width):
        raise ValueError(f"sparsity: got 0 with prune={cfg.prune!r}; allowed: sparsity in "
                         "(0, 1) or prune_to_width > 0")
    if cfg.dataset in REGRESSION_DATASETS:
        for name, bad in (("augment", cfg.augment), ("label_noise", cfg.label_noise),
                          ("model", cfg.model == "preact_resnet18")):
            if bad:
                raise ValueError(f"{name}: got {getattr(cfg, name)!r} with dataset "
                                 f"{cfg.dataset!r} (1-D/vector regression); allowed: "
                                 + {"augment": "false", "label_noise": "0",
                                    "model": "mlp, one_hidden_relu"}[name])
    if cfg.dataset == "toy1d" and (cfg.n_train or cfg.n_val):
        raise ValueError("n_train: toy1d has a fixed set of 12 points; allowed: n_train 0 "
                         "and n_val 0")
    if cfg.prune_to_width and cfg.prune_to_width >= cfg.width:
        raise ValueError(f"prune_to_width: got {cfg.prune_to_width} for width {cfg.width}; "
                         "allowed: a width smaller than the model's")
    # Subsets the dataset can give: caught here, before any data is loaded, rather than inside
    # a notebook's kernel (n_train) or silently ignored (an n_test above the test set's size
    # would quietly become the whole test set).
    available, n_test_max = data_mod.split_sizes(cfg.dataset, cfg.n_train or None)
    where = f"the {cfg.dataset} training set"
    if cfg.dataset in data_mod.SPLIT_SIZES and 0 < cfg.n_train < data_mod.NUM_CLASSES:
        raise ValueError(f"n_train: got {cfg.n_train}; allowed: at least "
                         f"{data_mod.NUM_CLASSES} (the subset is class-balanced: one example of "
                         f"each of the {data_mod.NUM_CLASSES} {cfg.dataset} classes at least), "
                         "or 0 for the whole training set")
    if available is not None and cfg.dataset != "toy1d":  # toy1d: checked above
        if cfg.n_train and cfg.n_train + cfg.n_val > available:
            if cfg.n_val:
                raise ValueError(f"n_train: got {cfg.n_train} with n_val {cfg.n_val}; allowed: "
                                 f"n_train + n_val <= {available} ({where})")
            raise ValueError(f"n_train: got {cfg.n_train}; allowed: at most {available} "
                             f"({where}), or 0 for all of it")
        if not cfg.n_train and cfg.n_val >= available:
            raise ValueError(f"n_val: got {cfg.n_val} with n_train 0 (all the rest); allowed: "
                             f"n_val < {available} ({where})")
    if cfg.n_test > n_test_max:
        raise ValueError(f"n_test: got {cfg.n_test}; allowed: at most {n_test_max} (the "
                         f"{cfg.dataset} test set), or 0 for all of it")


# The help text of every field (`samkit train --help`); a test checks none is missing.
HELP = {
    "dataset": "fashion_mnist | mnist | cifar10 | synthetic | toy1d",
    "n_train": "class-balanced training subset size (0 = all)",
    "n_val": "validation examples carved from the training set (for early stopping)",
    "n_test": "evaluate on a fixed random test subset of this size (0 = all)",
    "label_noise": "symmetric label-noise rate in [0, 1)",
    "augment": "random crop (pad 4) + horizontal flip, on device",
    "data_seed": "seed of the subset, the validation split and the label noise (-1: --seed)",
    "model": "preact_resnet18 | mlp | one_hidden_relu",
    "width": "first-stage channels (ResNet) or hidden units (MLP)",
    "depth": "number of MLP hidden layers",
    "prune": "none | random | snip (sparsity at initialisation)",
    "sparsity": "fraction of prunable weights removed at init, in [0, 1)",
    "prune_to_width": "prune to the parameter count of the dense model of this width",
    "optimizer": " | ".join(OPTIMIZERS),
    "rho": "SAM/ASAM perturbation radius",
    "sam_interval": "sam/asam/looksam: the SAM ascent (2nd pass) on 1 step in k",
    "looksam_alpha": "looksam: weight of the reused component between SAM steps",
    "eta": "ASAM's T = |w| + eta",
    "base_optimizer": "sam/asam: the optimizer SAM wraps, sgd | adam",
    "bn_perturbed": "BatchNorm running stats in SAM's 2nd pass: frozen (the fix) | updated "
                    "(no fix) | momentum0",
    "bn_drift": "measure the BatchNorm running stats' distance from those of the final weights",
    "lr": "learning rate", "momentum": "SGD momentum", "nesterov": "Nesterov momentum",
    "weight_decay": "L2 weight decay", "batch_size": "batch size", "epochs": "epochs",
    "eval_every": "evaluate and checkpoint every N epochs (and after the last)",
    "schedule": "step (x0.1 at 50%% and 75%%) | step3 (at 25, 50, 75%%) | cosine | constant",
    "loss": "auto | ce | mse (auto: ce for classes, mse for regression)",
    "early_stopping": "report the epoch of best validation accuracy (needs --n-val; default: "
                      "on with --n-val, off without)",
    "seed": "model-init and batch-order seed",
    "hessian_samples": "measure lambda_max, trace, non-uniformity on this many train points",
    "device": "auto | cpu | cuda | cuda:N", "bf16": "bf16 autocast",
    "channels_last": "channels_last memory format (ResNet)",
    "compile": "eager | graph (each training step replayed from one CUDA graph; CUDA only)",
    "tag": "free-form label",
}
