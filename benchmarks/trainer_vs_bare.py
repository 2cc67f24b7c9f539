#!/usr/bin/env python
"""Training img/s of samkit's trainer against a bare PyTorch loop on the same work.

For each model and optimizer (SGD, SAM) two contenders train identical copies of one model on
the same data tensors (already on the device), the same batch size and optimizer settings:

  trainer  samkit.train.loop.train_epoch, the epoch function the sweep runs (evaluation, checkpoints
           and the scheduler are outside it and are not timed).
  bare     ``bare_epoch`` below: the loop a user writes (README's "SAM in your training loop").
           Its SAM is samkit.SAM's first_step/second_step, not a hand-written perturbation: the
           question is what the trainer adds around a step, so both run the same optimizer
           (step_time.py compares samkit.SAM with the hand-written SAM of reference_sam.py).

Both draw each epoch's batch order from the trainer's per-(seed, epoch) generator, so they do
exactly the same steps: after the run their weights must be equal (``same_weights``), which
checks that the baseline is the same work and not a cheaper one.

The config is params.yaml's research base (the cpu profile's width study: depth-2 MLP, batch
128, lr 0.1, momentum 0.9, weight decay 1e-4, rho 0.05, 10k training images) at the widths
asked; the data is Fashion-MNIST when samkit.data.datasets finds it ($SAMKIT_DATA or
~/.cache/samkit/data; never downloaded here), else random tensors of its shape.

A timed block is one epoch. After warm-up epochs the contenders alternate, the order rotating
every repetition, so drift hits both alike; reported: the median epoch time, img/s
(training images / median) and ``ratio`` = trainer img/s / bare img/s (goal >= 0.9).
``--clock cpu`` times the thread's CPU time (needs --device cpu --threads 1): on a CPU shared
with other jobs that is what an epoch costs, not how long it waited for a core.

Run ``python benchmarks/trainer_vs_bare.py --help``; results go to
results/bench/trainer_vs_bare_<device>.json (written atomically).
"""
from __future__ import annotations

import argparse
import copy
import functools
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the benchmarks package is in the repository root
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.common import (CLOCKS, CPU_CLOCK_NEEDS, bench_provenance,  # noqa: E402
                               cpu_clock_allowed, device_info, gc_paused, loadavg, sync, timer)
from samkit.atomic import write_json  # noqa: E402
from samkit.data import datasets as data_mod  # noqa: E402
from samkit.models import count_params  # noqa: E402
from samkit.optim.bn import bn_frozen  # noqa: E402
from samkit.optim.sam import SAM  # noqa: E402
from samkit.pipeline import params as params_mod  # noqa: E402
from samkit.train import loop as train  # noqa: E402
from samkit.train.config import TrainConfig  # noqa: E402

SCHEMA = "samkit.bench.trainer_vs_bare/1"
CONTENDERS = ("trainer", "bare")
OPTIMIZERS = ("sgd", "sam")
MODEL_FORMS = "mlp-<width> (depth from --depth) or preact18-<width> (PreActResNet18)"
DEFAULTS = dict(models=["mlp-512", "mlp-128"], reps=30, warmup=1, n_train=None)
# Tiny: checks the script, not the speed (4 steps per epoch, random data).
QUICK = dict(models=["mlp-16"], reps=3, warmup=1, n_train=512)


# --------------------------------------------------------------------------- the two loops

def bare_epoch(model, opt, x, y, batch_size, g):
    """One epoch of the plain loop: shuffle, slice, forward, backward, step."""
    model.train()
    order = torch.randperm(len(x), generator=g, device=x.device)
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        xb, yb = x[idx], y[idx]
        F.cross_entropy(model(xb), yb).backward()
        if isinstance(opt, SAM):
            opt.first_step(zero_grad=True)
            with bn_frozen(model):
                F.cross_entropy(model(xb), yb).backward()
            opt.second_step(zero_grad=True)
        else:
            opt.step()
            opt.zero_grad(set_to_none=True)


def bare_optimizer(cfg, model):
    """Built from the config's numbers by hand, not by the trainer's factory."""
    sgd = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sam":
        return SAM(model.parameters(), torch.optim.SGD, rho=cfg.rho, **sgd)
    return torch.optim.SGD(model.parameters(), **sgd)


# --------------------------------------------------------------------------- configs and data

def parse_model(spec: str):
    """'mlp-512' -> ('mlp', 512), 'preact18-8' -> ('preact_resnet18', 8): step_time's model
    names, as the trainer names them; None when ``spec`` is not a valid model name."""
    parsed = common.parse_model(spec)
    return None if parsed is None else (common.MODEL_NAMES[parsed[0]], parsed[1])


@functools.lru_cache(maxsize=1)
def research_base() -> dict:
    """params.yaml's research base (the cpu profile's width study): what the sweep trains."""
    return params_mod.load(str(REPO / "params.yaml"))["width"]["cpu"]["base"]


def make_config(spec, optimizer, depth, device, n_train=None) -> TrainConfig:
    model, width = parse_model(spec)
    base = dict(research_base())
    if n_train:
        base["n_train"] = n_train
    return TrainConfig(**{**base, "model": model, "width": width, "depth": depth,
                          "optimizer": optimizer, "device": device.type})


def load_data(cfg, synthetic: bool):
    """(Data, source): the config's Fashion-MNIST subset when samkit.data.datasets finds the files,
    else random tensors of its shape (the timing does not depend on the pixel values)."""
    if not synthetic:
        try:
            return data_mod.load_data(cfg.dataset, n_train=cfg.n_train or None,
                                      n_val=cfg.n_val, subset_seed=cfg.effective_data_seed,
                                      download=False), cfg.dataset
        except (FileNotFoundError, RuntimeError) as e:
            print(f"no {cfg.dataset} ({e}); random tensors of its shape instead", flush=True)
    g = torch.Generator().manual_seed(0)
    n = cfg.n_train or data_mod.SPLIT_SIZES[cfg.dataset][0]
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, data_mod.NUM_CLASSES, (n,), generator=g)
    empty = torch.zeros(0, dtype=torch.long)
    return data_mod.Data("synthetic", "classification", x, y, y, empty, x[:0], y[:0], x[:0],
                         y[:0], data_mod.NUM_CLASSES), "random, Fashion-MNIST shaped"


# --------------------------------------------------------------------------- timing

def _summary(seconds, n_images):
    t = common.summary(seconds)
    return dict(median_s=t["median"], min_s=t["min"], q1_s=t["q1"], q3_s=t["q3"], n=t["n"],
                img_per_s=n_images / t["median"], samples_s=t["samples"])


def time_config(cfg, data, reps, warmup, clock="wall"):
    """Epoch times of the trainer and the bare loop on copies of one model, interleaved."""
    clock_now = timer(clock)
    data, model, opt, _, loss_fn = train.build(cfg, data)  # the sweep's model, optimizer, data
    bare_model = copy.deepcopy(model)
    bare_opt = bare_optimizer(cfg, bare_model)
    device = data.x_train.device
    epochs = {c: 0 for c in CONTENDERS}

    def epoch(contender):
        e = epochs[contender]
        epochs[contender] += 1
        sync(device)
        t0 = clock_now()
        if contender == "trainer":
            train.train_epoch(cfg, model, opt, loss_fn, data, e)
        else:  # the trainer's batch order for this epoch: the same steps, hence same weights
            bare_epoch(bare_model, bare_opt, data.x_train, data.y_train, cfg.batch_size,
                       train._epoch_generator(cfg.seed, e, device))
        sync(device)
        return clock_now() - t0

    for _ in range(warmup):  # allocator, caches, lazy init
        for c in CONTENDERS:
            epoch(c)
    samples = {c: [] for c in CONTENDERS}
    with gc_paused():
        for r in range(reps):
            for c in (CONTENDERS if r % 2 == 0 else CONTENDERS[::-1]):  # rotate the order
                samples[c].append(epoch(c))
    n = len(data.x_train)
    out = dict(model=cfg.model, width=cfg.width, depth=cfg.depth if cfg.model == "mlp" else None,
               optimizer=cfg.optimizer, params=count_params(model), batch=cfg.batch_size,
               n_train=n, steps_per_epoch=train.steps_per_epoch(n, cfg.batch_size),
               same_weights=all(torch.equal(a, b) for a, b in
                                zip(model.state_dict().values(),
                                    bare_model.state_dict().values())))
    for c in CONTENDERS:
        out[c] = _summary(samples[c], n)
    out["ratio"] = out["trainer"]["img_per_s"] / out["bare"]["img_per_s"]
    return out


# --------------------------------------------------------------------------- output

def format_table(results):
    head = (f"{'model':<18}{'opt':<5}{'params':>10}{'trainer img/s':>15}{'bare img/s':>12}"
            f"{'trainer/bare':>14}  same weights")
    lines = [head, "-" * len(head)]
    for r in results:
        name = f"{r['model']}-{r['width']}" + (f" depth {r['depth']}" if r["depth"] else "")
        lines.append(f"{name:<18}{r['optimizer']:<5}{r['params']:>10,}"
                     f"{r['trainer']['img_per_s']:>15.0f}{r['bare']['img_per_s']:>12.0f}"
                     f"{r['ratio']:>14.3f}  {r['same_weights']}")
    return "\n".join(lines)


def _document(args, argv, name, slug, extra, load_before, t_start, source, results) -> dict:
    return {
        "schema": SCHEMA,
        "provenance": bench_provenance(argv, name, slug, extra, load_before, t_start),
        "settings": {
            "reps": args.reps, "warmup": args.warmup, "clock": args.clock, "quick": args.quick,
            "data": source, "config": "params.yaml width.cpu.base (research profile)"
            + (f", n_train {args.n_train}" if args.n_train else ""),
            "block": "one epoch (samkit.train.loop.train_epoch vs bare_epoch)",
            "statistic": "median epoch time over repetitions; contenders alternate, order "
                         "rotated every repetition; ratio = trainer img/s / bare img/s",
            "bare_sam": "samkit.SAM first_step/second_step, second pass under bn_frozen",
        },
        "results": list(results),
    }


# --------------------------------------------------------------------------- CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Training img/s: samkit's trainer vs a bare "
                                "PyTorch loop, SGD and SAM, interleaved.")
    p.add_argument("--models", nargs="+", metavar="M",
                   help=f"{MODEL_FORMS} (default: mlp-512 mlp-128)")
    p.add_argument("--depth", type=int, default=None,
                   help="MLP hidden layers (default: the research base's, 2)")
    p.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    p.add_argument("--reps", type=int, help="timed epochs per contender (report: median)")
    p.add_argument("--warmup", type=int, help="untimed epochs per contender first")
    p.add_argument("--n-train", type=int, help="training images (default: the research "
                   "base's 10000)")
    p.add_argument("--synthetic", action="store_true", help="random tensors, not Fashion-MNIST")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, help="torch intra-op threads (--quick: 1)")
    p.add_argument("--clock", choices=CLOCKS, default="wall",
                   help="wall: elapsed time; cpu: this thread's CPU time, for a CPU shared "
                        "with other jobs (needs --device cpu and --threads 1)")
    p.add_argument("--out", type=Path,
                   help="JSON path (default results/bench/trainer_vs_bare_<device-slug>.json)")
    p.add_argument("--quick", action="store_true",
                   help="mlp-16, 512 random images, 3 epochs: checks the script, not the speed")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device: 'cuda' asked for but CUDA is not available; allowed here: auto, cpu")
    args.device = torch.device("cuda" if args.device == "cuda" or
                               (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    d = QUICK if args.quick else DEFAULTS
    args.models = [m for item in args.models or d["models"] for m in item.split(",") if m]
    for m in args.models:
        if parse_model(m) is None:
            p.error(f"--models: bad value {m!r}; allowed: {MODEL_FORMS}, e.g. mlp-512")
    for name in ("reps", "warmup", "n_train"):
        if getattr(args, name) is None:
            setattr(args, name, d[name])
    for name, low in (("reps", 1), ("warmup", 0), ("threads", 1), ("depth", 1), ("n_train", 1)):
        v = getattr(args, name)
        if v is not None and v < low:
            p.error(f"--{name.replace('_', '-')}: bad value {v}; allowed: integers >= {low}")
    args.synthetic = args.synthetic or args.quick
    if args.threads is None and args.quick:
        args.threads = 1  # tiny tensors: a second thread only adds contention on a busy box
    if not cpu_clock_allowed(args.clock, args.device.type, args.threads):
        p.error(CPU_CLOCK_NEEDS)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    name, slug, extra = device_info(args.device)
    out = args.out or REPO / "results" / "bench" / f"trainer_vs_bare_{slug}.json"
    load_before, t_start = loadavg(), time.perf_counter()
    plan = [(m, o) for m in args.models for o in args.optimizers]
    print(f"trainer_vs_bare: {name}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, load {load_before}, clock {args.clock}; {len(plan)} configs, "
          f"{args.warmup} warm-up + {args.reps} timed epochs per contender", flush=True)
    depth = args.depth or research_base().get("depth", 1)
    data, source, results = None, None, []
    for spec, optimizer in plan:
        cfg = make_config(spec, optimizer, depth, args.device, args.n_train)
        if data is None:  # one data set for every config: the same subset (seed) for all
            data, source = load_data(cfg, args.synthetic)
        t0 = time.perf_counter()
        results.append(time_config(cfg, data, args.reps, args.warmup, args.clock))
        print(format_table(results[-1:]).splitlines()[-1]
              + f"   [{time.perf_counter() - t0:.0f} s]", flush=True)
        write_json(Path(out), _document(args, argv, name, slug, extra, load_before, t_start,
                                        source, results))  # what is measured so far
    print()
    print(format_table(results))
    print(f"\nimg/s = training images / median epoch time ({args.clock} clock); trainer/bare: "
          f"ratio of img/s (goal >= 0.9); same weights: both loops ended with equal weights "
          f"(the same steps). Data: {source}. Load average before {load_before}, after "
          f"{loadavg()}.\nwrote {out}")
    return 0 if all(r["same_weights"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
