"""Time one training step of SGD, samkit's SAM, a reference SAM and SAM's cheaper variants,
side by side.

For every (model, batch, mode) the three variants run in the same process on identical copies of
one model and one synthetic batch (Fashion-MNIST shaped, 1x28x28, 10 classes, data already on the
device, so the optimizer step is timed, not a data loader):

  sgd      SGD step (momentum 0.9, weight decay 5e-4): forward, backward, step.
  sam      samkit.SAM over the same SGD: forward, backward, first_step, forward+backward under
           bn_frozen, second_step.
  ref_sam  the baseline users write today: the blog seed's SAM with its bugs fixed (ONE global
           norm, not one per group), but in its style: a Python loop over parameters, the norm
           from per-parameter ``.norm().item()`` (a host sync per parameter), e_w stored per
           parameter, restore by ``p.sub_(e_w)``, and BN momentum set to 0 on the second pass
           (as davda54/sam and most copies of it do).
  sam_k2, sam_k5, sam_k10
           samkit.SAM(interval=k): the ascent and the second pass on one step in k, a plain
           SGD step (one pass) on the others: 1 + 1/k passes per step.
  looksam_k5
           samkit.LookSAM(k=5): a SAM step every 5th step, the others one pass plus the reused
           component: 1.2 passes per step.
  msam     samkit.MomentumSAM: to w - rho*v/|v| before the only pass, back, SGD step: 1 pass.

A variant whose steps differ (sam_k*, looksam_k5) is timed over whole cycles: every timed block
holds the least common multiple of ``--block`` and the cycles (k) of the variants run, for EVERY
variant (10 steps with the default variants), so a cycle variant's block has the same share of
SAM steps each time (a median over single steps would be a plain step's), and every variant runs
as many steps in a row between the others (the same cache warmth: with blocks of one step, SGD
ran each step on caches the other variants had just filled, and came out slower than SAM every
10). The time per step is the block's time over its steps.
In ``graph`` mode the new variants' optimizer calls stay eager (their step counter decides the
pass count in Python); only their model forward+backward is compiled. In ``step-graph`` mode
every samkit variant is captured whole (one graph per step kind: SAM every k replays its SAM
step's graph on one step in k, a plain step's graph on the others).

The variants are interleaved: after a warm-up, each repetition times one block of steps of each
variant, the order rotating every repetition, so drift (thermal, other load) hits all alike. The
reported time is the median over repetitions. Modes:

  fp32     eager float32.
  bf16-cl  eager, bf16 autocast + channels_last (CUDA; also runs on CPU if asked for).
  graph    bf16-cl with the model's forward+backward compiled by
           torch.compile(mode="reduce-overhead") (CUDA graphs) and the optimizer calls
           (SGD.step, SAM.first_step/second_step) compiled with torch.compile; the reference
           SAM's optimizer stays eager (its .item() calls force host syncs). CUDA only.
  step-graph
           bf16-cl with the WHOLE step (both passes, ε, the restore, the BN freeze, the base
           update) captured in ONE CUDA graph by samkit.optim.graph_step.GraphStep, the trainer's
           compile="graph" path (static input buffers; the timed steps are replays);
           ref_sam runs eager bf16-cl (its .item() calls cannot be captured). CUDA only.

Run ``python benchmarks/step_time.py --help``; results go to results/bench/step_time_<device>.json.
``ratios_to_sgd`` in each result holds every variant's median step time over SGD's. The JSON is
rewritten after every config, so a killed run keeps what it measured; ``--resume`` then
measures only the configs the JSON lacks (or holds with an error), and ``--budget-s`` stops
starting configs after that many seconds (the rest are recorded as skipped, for a later
``--resume``): what the GPU harvest (tools/gpu_harvest.py) uses inside one short device call.

The reference SAM is benchmarks/reference_sam.py; the device, clock and provenance helpers are
benchmarks/common.py (shared with the other scripts here).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the benchmarks package is in the repository root
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import (CLOCKS, CPU_CLOCK_NEEDS, MODEL_NAMES,  # noqa: E402
                               bench_provenance, cpu_clock_allowed, device_info, gc_paused, loadavg, parse_model,
                               split_values, summary, sync, timer)
from benchmarks.reference_sam import ReferenceSAM, bn_momentum_zero  # noqa: E402
from samkit import models  # noqa: E402
from samkit.atomic import write_json  # noqa: E402
from samkit.models import count_params  # noqa: E402
from samkit.optim.bn import bn_frozen  # noqa: E402
from samkit.optim.graph_step import GraphStep  # noqa: E402
from samkit.optim.sam import SAM  # noqa: E402
from samkit.optim.variants import LookSAM, MomentumSAM  # noqa: E402

SCHEMA = "samkit.bench.step_time/1"

# Hyperparameters of every timed step (they do not change the work done, only the numbers).
LR, MOMENTUM, WEIGHT_DECAY, RHO = 0.01, 0.9, 5e-4, 0.05
IN_SHAPE, NUM_CLASSES = (1, 28, 28), 10  # Fashion-MNIST
VARIANTS = ("sgd", "sam", "ref_sam", "sam_k2", "sam_k5", "sam_k10", "looksam_k5", "msam")
# Steps per cycle (a timed block holds whole cycles) and forward+backward passes per step.
CYCLE = {"sam_k2": 2, "sam_k5": 5, "sam_k10": 10, "looksam_k5": 5}
PASSES_PER_STEP = {"sgd": 1.0, "sam": 2.0, "ref_sam": 2.0, "sam_k2": 1.5, "sam_k5": 1.2,
                   "sam_k10": 1.1, "looksam_k5": 1.2, "msam": 1.0}
MODES = {
    "fp32": "eager float32",
    "bf16-cl": "eager, bf16 autocast + channels_last",
    "graph": "bf16 autocast + channels_last; model torch.compile(mode='reduce-overhead') "
             "(CUDA graphs), SGD.step / SAM.first_step / SAM.second_step torch.compile'd; "
             "ref_sam's optimizer eager",
    "step-graph": "bf16 autocast + channels_last; the whole step (both passes, eps, restore, "
                  "BN freeze, base update) in ONE CUDA graph (samkit.optim.graph_step.GraphStep, the "
                  "trainer's compile='graph'); ref_sam eager",
}
CUDA_ONLY_MODES = ("graph", "step-graph")
CHANNELS_LAST_MODES = ("bf16-cl", "graph", "step-graph")
SKIPPED = "skipped: time budget (--budget-s) spent; rerun with --resume"

MODEL_FORMS = "mlp-<width> (784 -> width -> 10) or preact18-<width> (PreActResNet18)"

# Defaults per device. On CPU (2 cores here) a PreActResNet18 of width 64 trains at ~55 img/s,
# so the CPU default stays at widths 8 and 16 and adds the MLP at batch 512 only. A repetition
# is a block of 10 steps with the default variants (sam_k10's cycle), hence fewer repetitions.
DEFAULTS = {
    "cpu": dict(models=["mlp-1024", "preact18-8", "preact18-16"], batches=[128],
                extra=[("mlp-1024", 512)], modes=["fp32"], steps=20, warmup=2, block=1),
    "cuda": dict(models=["mlp-1024", "preact18-16", "preact18-64"], batches=[128, 512],
                 extra=[], modes=["fp32", "bf16-cl", "graph", "step-graph"], steps=30, warmup=3,
                 block=5),
}
QUICK = dict(models=["mlp-32", "preact18-2"], batches=[8], extra=[], modes=["fp32"], steps=3,
             warmup=1, block=1)


# --------------------------------------------------------------------------- models and steps

def build_model(spec: str) -> nn.Module:
    """The package's own model builder (the trainer's models, not copies)."""
    kind, width = parse_model(spec)
    return models.build_model(MODEL_NAMES[kind], width,
                              IN_SHAPE, NUM_CLASSES)


def _sgd_kwargs():
    return dict(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def make_step(variant: str, model: nn.Module, x, y, mode: str = "fp32"):
    """A function doing one full training step of ``variant`` on ``model`` with batch (x, y).

    ``model`` is trained in place (give each variant its own copy); its optimizer lives in the
    closure. ``mode`` picks autocast/compilation as described in the module docstring.
    """
    if mode == "step-graph":
        if variant == "ref_sam":  # host syncs: cannot be captured; the eager bf16-cl baseline
            return make_step(variant, model, x, y, "bf16-cl")
        stepper = GraphStep(model, samkit_optimizer(variant, list(model.parameters())),
                            F.cross_entropy, batch_size=len(x), bf16=True, warmup=1)
        return lambda: stepper(x, y)
    compiled = mode == "graph"
    bf16 = mode in ("bf16-cl", "graph")
    device_type = x.device.type
    fwd = torch.compile(model, mode="reduce-overhead", dynamic=False) if compiled else model
    opt_compile = (lambda f: torch.compile(f, dynamic=False)) if compiled else (lambda f: f)

    def forward_backward():
        if compiled:  # the previous pass's outputs (grads) have been consumed
            torch.compiler.cudagraph_mark_step_begin()
        ctx = (torch.autocast(device_type, dtype=torch.bfloat16) if bf16
               else contextlib.nullcontext())
        with ctx:
            loss = F.cross_entropy(fwd(x), y)
        loss.backward()

    params = list(model.parameters())
    if variant == "sgd":
        opt = torch.optim.SGD(params, **_sgd_kwargs())
        opt_step = opt_compile(opt.step)

        def step():
            forward_backward()
            opt_step()
            opt.zero_grad(set_to_none=True)
    elif variant == "sam":
        opt = SAM(params, torch.optim.SGD, rho=RHO, **_sgd_kwargs())
        first = opt_compile(lambda: opt.first_step())
        second = opt_compile(lambda: opt.second_step())

        def step():
            forward_backward()
            first()
            opt.zero_grad(set_to_none=True)
            with bn_frozen(model):
                forward_backward()
            second()
            opt.zero_grad(set_to_none=True)
    elif variant in CYCLE:  # sam_k<k>, looksam_k<k>: the second pass only when asked for
        k = CYCLE[variant]
        opt = (LookSAM(params, torch.optim.SGD, rho=RHO, k=k, **_sgd_kwargs())
               if variant.startswith("looksam") else
               SAM(params, torch.optim.SGD, rho=RHO, interval=k, **_sgd_kwargs()))

        def step():
            forward_backward()
            if opt.first_step(zero_grad=True):
                with bn_frozen(model):
                    forward_backward()
            opt.second_step(zero_grad=True)
    elif variant == "msam":
        opt = MomentumSAM(params, torch.optim.SGD, rho=RHO, **_sgd_kwargs())

        def step():
            opt.first_step(zero_grad=True)  # to w - rho*v/|v|, before the only pass
            forward_backward()
            opt.second_step(zero_grad=True)
    elif variant == "ref_sam":
        opt = ReferenceSAM(params, torch.optim.SGD(params, **_sgd_kwargs()), rho=RHO)

        def step():
            forward_backward()
            opt.first_step(zero_grad=True)
            with bn_momentum_zero(model):
                forward_backward()
            opt.second_step(zero_grad=True)
    else:
        raise ValueError(f"variant: unknown {variant!r}; allowed: {', '.join(VARIANTS)}")
    return step


def samkit_optimizer(variant: str, params):
    """The optimizer of a samkit variant (the same as ``make_step`` builds)."""
    if variant == "sgd":
        return torch.optim.SGD(params, **_sgd_kwargs())
    if variant == "sam":
        return SAM(params, torch.optim.SGD, rho=RHO, **_sgd_kwargs())
    if variant in CYCLE:
        k = CYCLE[variant]
        if variant.startswith("looksam"):
            return LookSAM(params, torch.optim.SGD, rho=RHO, k=k, **_sgd_kwargs())
        return SAM(params, torch.optim.SGD, rho=RHO, interval=k, **_sgd_kwargs())
    if variant == "msam":
        return MomentumSAM(params, torch.optim.SGD, rho=RHO, **_sgd_kwargs())
    raise ValueError(f"variant: {variant!r} is not a samkit optimizer; allowed: "
                     f"{', '.join(v for v in VARIANTS if v != 'ref_sam')}")


# --------------------------------------------------------------------------- timing

def time_config(spec, batch, mode, device, steps, warmup, block, seed=0, variants=VARIANTS,
                clock="wall"):
    """Median time of one step of each variant, interleaved round-robin. ``clock``: "wall"
    (perf_counter) or "cpu" (this thread's CPU time: on a CPU shared with other jobs, the time
    a step costs, not the time it waited for a core; needs one intra-op thread)."""
    clock_now = timer(clock)
    torch.manual_seed(seed)
    base = build_model(spec).to(device)
    n_params = count_params(base)
    x = torch.randn(batch, *IN_SHAPE, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    if mode in CHANNELS_LAST_MODES:
        base = base.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if mode == "graph":
        torch._dynamo.reset()  # a fresh cache per config: no recompile limit hit across configs
    variants = tuple(variants)
    n_block = math.lcm(block, *(CYCLE.get(v, 1) for v in variants))  # steps per timed block
    models = {v: copy.deepcopy(base) for v in variants}
    for m in models.values():
        m.train()
    run = {v: make_step(v, models[v], x, y, mode) for v in variants}

    def timed_block(v):
        n = n_block  # whole cycles of every variant, the same number of steps for all
        sync(device)
        t0 = clock_now()
        for _ in range(n):
            run[v]()
        sync(device)
        return (clock_now() - t0) / n

    for i in range(warmup):  # compile, allocator, cuDNN autotune, caches
        for v in variants:
            timed_block(v)
    samples = {v: [] for v in variants}
    with gc_paused():
        for r in range(steps):
            k = r % len(variants)  # rotate the order: no variant always runs first
            for v in variants[k:] + variants[:k]:
                samples[v].append(timed_block(v))
    finite = all(torch.isfinite(p).all().item() for m in models.values() for p in m.parameters())

    out = dict(model=spec, params=n_params, batch=batch, mode=mode, finite=finite,
               block_steps=n_block)
    for v in variants:
        t = summary(samples[v], scale=1e3)  # milliseconds
        out[v] = dict(median_ms=t["median"], min_ms=t["min"], q1_ms=t["q1"], q3_ms=t["q3"],
                      n=t["n"], img_per_s=batch / (t["median"] / 1e3), samples_ms=t["samples"])
    out["ratio_sam_sgd"] = out["sam"]["median_ms"] / out["sgd"]["median_ms"]
    out["ratio_ref_sam_sgd"] = out["ref_sam"]["median_ms"] / out["sgd"]["median_ms"]
    out["speedup_sam_vs_ref"] = out["ref_sam"]["median_ms"] / out["sam"]["median_ms"]
    out["ratios_to_sgd"] = {v: out[v]["median_ms"] / out["sgd"]["median_ms"] for v in variants}
    return out


# --------------------------------------------------------------------------- provenance, output

def format_table(results):
    head = (f"{'model':<13}{'params':>10}{'batch':>6} {'mode':<8}{'SGD ms':>9}{'SAM ms':>9}"
            f"{'ref ms':>9}{'SGD img/s':>10}{'SAM img/s':>10}{'SAM/SGD':>8}{'ref/SGD':>8}"
            f"{'speed-up':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        lead = f"{r['model']:<13}{r.get('params', 0):>10,}{r['batch']:>6} {r['mode']:<8}"
        if "error" in r:
            lines.append(lead + f"  ERROR: {r['error']}")
            continue
        lines.append(lead + f"{r['sgd']['median_ms']:>9.2f}{r['sam']['median_ms']:>9.2f}"
                     f"{r['ref_sam']['median_ms']:>9.2f}{r['sgd']['img_per_s']:>10.0f}"
                     f"{r['sam']['img_per_s']:>10.0f}{r['ratio_sam_sgd']:>8.3f}"
                     f"{r['ratio_ref_sam_sgd']:>8.3f}{r['speedup_sam_vs_ref']:>8.2f}x")
    return "\n".join(lines)


def format_ratios(results):
    """Every variant's median step time over SGD's, beside its passes per step."""
    names = [v for v in VARIANTS if any(v in r for r in results if "error" not in r)]
    head = f"{'model':<13}{'batch':>6} {'mode':<8}" + "".join(f"{v:>11}" for v in names)
    lines = [head, f"{'(passes per step)':<28}"
             + "".join(f"{PASSES_PER_STEP[v]:>11.2f}" for v in names), "-" * len(head)]
    for r in results:
        if "error" in r:
            continue
        lines.append(f"{r['model']:<13}{r['batch']:>6} {r['mode']:<8}"
                     + "".join(f"{r['ratios_to_sgd'][v]:>11.3f}" if v in r["ratios_to_sgd"]
                               else f"{'-':>11}" for v in names))
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Median step time of SGD vs samkit SAM vs a reference SAM vs SAM's "
                    "cheaper variants, interleaved.",
        epilog="Defaults per device -- CPU: mlp-1024 at batch 128 and 512, preact18-8/16 at "
               "128, fp32, 20 repetitions of 10-step blocks. CUDA: mlp-1024, preact18-16, "
               "preact18-64 x batch 128, 512 x fp32, bf16-cl, graph, step-graph, 30 blocks of "
               "10 steps.")
    p.add_argument("--models", nargs="+", metavar="M",
                   help=f"models, space or comma separated: {MODEL_FORMS}")
    p.add_argument("--batches", nargs="+", metavar="B", help="batch sizes (positive integers)")
    p.add_argument("--modes", nargs="+", metavar="MODE",
                   help=f"modes: {', '.join(MODES)} ({', '.join(CUDA_ONLY_MODES)}: CUDA only)")
    p.add_argument("--steps", type=int, help="timed repetitions per variant (report: median)")
    p.add_argument("--warmup", type=int, help="untimed repetitions per variant first")
    p.add_argument("--block", type=int,
                   help="steps per timed repetition, rounded up to a multiple of every "
                        "variant's cycle (10 with sam_k10); CUDA default 5 lets steps pipeline")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--variants", nargs="+", metavar="V",
                   help=f"variants besides sgd, sam and ref_sam (always run): "
                        f"{', '.join(VARIANTS[3:])} (default: all)")
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads (default: torch's own; --quick: 1)")
    p.add_argument("--clock", choices=CLOCKS, default="wall",
                   help="wall: elapsed time; cpu: the benchmark thread's CPU time, for a CPU "
                        "shared with other jobs (needs --device cpu and --threads 1)")
    p.add_argument("--out", type=Path,
                   help="JSON path (default results/bench/step_time_<device-slug>.json)")
    p.add_argument("--quick", action="store_true",
                   help="tiny models, batch 8, 3 steps: checks the script, not the speed")
    p.add_argument("--resume", action="store_true",
                   help="keep the configs --out already holds without an error; measure the rest")
    p.add_argument("--budget-s", type=float, metavar="S",
                   help="start no config after S seconds (the rest: recorded as skipped)")
    args = p.parse_args(argv)

    if args.device not in ("auto", "cpu", "cuda"):
        p.error(f"--device: bad value {args.device!r}; allowed: auto, cpu, cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device: 'cuda' asked for but CUDA is not available; allowed here: auto, cpu")
    device = torch.device("cuda" if args.device == "cuda" or
                          (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    d = dict(QUICK if args.quick else DEFAULTS[device.type])

    models, batches, modes = (split_values(args.models), split_values(args.batches),
                              split_values(args.modes))
    for m in models:
        if parse_model(m) is None:
            p.error(f"--models: bad value {m!r}; allowed: {MODEL_FORMS}, e.g. mlp-1024, "
                    "preact18-16")
    for b in batches:
        if not re.fullmatch(r"[1-9][0-9]*", b):
            p.error(f"--batches: bad value {b!r}; allowed: positive integers, e.g. 128 512")
    variants = split_values(args.variants)
    for v in variants:
        if v not in VARIANTS:
            p.error(f"--variants: bad value {v!r}; allowed: {', '.join(VARIANTS)}")
    args.variants = (tuple(v for v in VARIANTS if v in ("sgd", "sam", "ref_sam")
                           or v in variants) if variants else VARIANTS)
    for m in modes:
        if m not in MODES:
            p.error(f"--modes: bad value {m!r}; allowed: {', '.join(MODES)}")
        if m in CUDA_ONLY_MODES and device.type != "cuda":
            p.error(f"--modes: bad value {m!r} on {device.type}: it needs CUDA; allowed here: "
                    f"{', '.join(k for k in MODES if k not in CUDA_ONLY_MODES)}")
    if args.budget_s is not None and not args.budget_s > 0:
        p.error(f"--budget-s: bad value {args.budget_s}; allowed: a number of seconds > 0")
    for name, low in (("steps", 1), ("warmup", 0), ("block", 1), ("threads", 1)):
        v = getattr(args, name)
        if v is not None and v < low:
            p.error(f"--{name}: bad value {v}; allowed: integers >= {low}")

    plan = [(m, int(b)) for m in (models or d["models"]) for b in (batches or d["batches"])]
    if not models and not batches:
        plan += [e for e in d["extra"] if e not in plan]
    args.device = device
    args.plan = [(m, b, mode) for mode in (modes or d["modes"]) for m, b in plan]
    for name in ("steps", "warmup", "block"):
        if getattr(args, name) is None:
            setattr(args, name, d[name])
    if args.threads is None and args.quick:
        args.threads = 1  # tiny tensors: a second thread only adds contention on a busy box
    if not cpu_clock_allowed(args.clock, device.type, args.threads):
        p.error(CPU_CLOCK_NEEDS)
    return args


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    name, slug, extra = device_info(device)
    out = args.out or REPO / "results" / "bench" / f"step_time_{slug}.json"
    if device.type == "cuda":
        cfg = torch._dynamo.config  # a config compiles 2 BN states x 3 models: room to spare
        key = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
        setattr(cfg, key, max(getattr(cfg, key), 64))
    load_before = loadavg()
    print(f"step_time: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {load_before}; {len(args.plan)} configs x {len(args.variants)} variants, "
          f"{args.warmup} warm-up + {args.steps} timed repetitions of {args.block} step(s)",
          flush=True)
    kept = _kept_results(Path(out), args) if args.resume else {}
    if kept:
        print(f"--resume: {len(kept)} of {len(args.plan)} configs already measured in {out}",
              flush=True)
    results, t_start = [], time.perf_counter()
    for spec, batch, mode in args.plan:
        if (spec, batch, mode) in kept:
            results.append(kept[(spec, batch, mode)])
            continue
        if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
            results.append(dict(model=spec, batch=batch, mode=mode, error=SKIPPED))
            continue
        t0 = time.perf_counter()
        try:
            r = time_config(spec, batch, mode, device, args.steps, args.warmup, args.block,
                            variants=args.variants, clock=args.clock)
        except Exception as e:  # one broken mode must not lose the other measurements
            r = dict(model=spec, batch=batch, mode=mode, error=f"{type(e).__name__}: {e}")
        results.append(r)
        print(format_table([r]).splitlines()[-1] + f"   [{time.perf_counter() - t0:.0f} s]",
              flush=True)
        # What is measured so far, in case the process is killed (a time limit): --resume
        # goes on from here.
        write_json(Path(out), _document(args, argv, name, slug, extra, load_before,
                                               t_start, results))
    data = _document(args, argv, name, slug, extra, load_before, t_start, results)
    write_json(Path(out), data)
    print()
    print(format_table(results))
    print("\nSAM/SGD and ref/SGD: ratios of median step times (floor 2.0: two forward+backward "
          "passes); speed-up: ref_sam median / sam median.")
    print()
    print(format_ratios(results))
    print(f"\nstep time / SGD step time per variant (sam_k*, looksam_k5: per step over whole "
          f"cycles of k steps); load average before {load_before}, after {loadavg()}."
          f"\nwrote {out}")
    return 1 if any("error" in r for r in results) else 0


def _kept_results(out: Path, args) -> dict:
    """The results of a JSON written earlier with the same settings, by (model, batch, mode),
    without those that hold an error (a broken or skipped config is measured again)."""
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError):
        return {}
    s = old.get("settings", {})
    same = (old.get("schema") == SCHEMA and s.get("variants") == list(args.variants)
            and all(s.get(k) == getattr(args, k) for k in ("steps", "warmup", "block", "clock",
                                                           "quick")))
    if not same:
        print(f"--resume: {out} was written with other settings; measuring everything",
              flush=True)
        return {}
    return {(r["model"], r["batch"], r["mode"]): r for r in old.get("results", [])
            if "error" not in r}


def _document(args, argv, name, slug, extra, load_before, t_start, results) -> dict:
    return {
        "schema": SCHEMA,
        "provenance": bench_provenance(argv, name, slug, extra, load_before, t_start),
        "settings": {
            "steps": args.steps, "warmup": args.warmup, "block": args.block,
            "statistic": "median over repetitions of (block time / steps in the block) per "
                         "variant, a block being lcm(block, cycle_steps of every variant) "
                         "steps (block_steps in each result) for every variant; variants "
                         "interleaved round-robin, order rotated every repetition",
            "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY, "rho": RHO,
            "input_shape": list(IN_SHAPE), "num_classes": NUM_CLASSES, "data": "synthetic, "
            "resident on the device", "variants": list(args.variants), "modes": MODES,
            "cycle_steps": {v: CYCLE.get(v, 1) for v in args.variants}, "clock": args.clock,
            "passes_per_step": {v: PASSES_PER_STEP[v] for v in args.variants},
            "quick": args.quick,
        },
        "results": list(results),
    }


if __name__ == "__main__":
    sys.exit(main())
