"""Grid → cached runs → tidy DataFrame.

A params block (base × grid × arms) is expanded into configs by one rule (``combinations``);
``run_sweep`` fetches each run from the run cache (samkit.sweep.store) or trains it there, in
``workers`` processes of one thread each (a run's numbers never depend on how many run beside
it), and returns one row per run; ``estimate`` says what the missing runs will cost.
"""
from __future__ import annotations

import dataclasses
import fcntl
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

import pandas as pd

from samkit.measure.fit import epochs_to_fit, peaks
from samkit.sweep.store import (CacheError, cached_run, load_cached, read_result, remove_debris,
                                result_files, run_key, unlink_and_close)
from samkit.train.config import TrainConfig
from samkit.train.loop import derived_grad_evals


def combinations(base: dict, grid: dict | None = None, arms: list[dict] | None = None):
    """The field values of every run of a params block, in order: ``base``, then one value of
    each axis (the grid's, and an arm's list values: e.g. each model its own widths), then the
    arm's fixed values; later keys override earlier ones. The one expansion rule of the
    base/grid/arms schema (params.yaml's validation walks the same runs)."""
    for arm in arms or [{}]:
        axes = {**(grid or {}), **{k: v for k, v in arm.items() if isinstance(v, list)}}
        fixed = {k: v for k, v in arm.items() if not isinstance(v, list)}
        for combo in itertools.product(*axes.values()):
            yield {**base, **dict(zip(axes, combo)), **fixed}


def unique(configs) -> list[TrainConfig]:
    """``configs`` without repeats (e.g. SGD at several rho: one run), first one kept."""
    out, seen = [], set()
    for cfg in configs:
        k = (run_key(cfg), cfg.tag)
        if k not in seen:
            seen.add(k)
            out.append(cfg)
    return out


def expand(base: dict, grid: dict | None = None, arms: list[dict] | None = None) -> list[TrainConfig]:
    """Configs for ``base`` × product(grid) × arms (``combinations``), each run once."""
    return unique(TrainConfig(**kw) for kw in combinations(base, grid, arms))


def default_workers() -> int:
    """One worker per CPU core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_sweep(configs: list[TrainConfig], cache: str = "results/runs", quiet: bool = True,
        progress: bool = True, workers: int | None = None) -> pd.DataFrame:
    """Run (or fetch) every config; one row per run with its config and metrics, in the order
    of ``configs``. Missing runs train in ``workers`` processes (default: one per core), each
    taking the next run no other holds; with ``progress`` one line per finished run.
    CacheError, before any training, if a stored result cannot be trusted."""
    if os.path.isdir(cache):
        remove_debris(cache)
    results = [load_cached(cfg, cache) for cfg in configs]
    todo = [cfg for cfg, r in zip(configs, results) if r is None]
    workers = min(workers or default_workers(), len(todo))
    if progress and len(todo) < len(configs):
        print(f"{len(configs) - len(todo)} of {len(configs)} runs from the run cache {cache}",
              flush=True)
    if workers > 1:
        _in_processes(todo, cache, workers, progress)
    # Serially (and after the workers): train what is still missing, or wait for a run that
    # another process (another sweep sharing the cache) holds and read it then.
    got = train_missing([c for c in todo if load_cached(c, cache) is None], cache, quiet,
                        progress, lock="wait")
    for i, cfg in enumerate(configs):
        if results[i] is None:
            key = run_key(cfg)
            results[i] = got.get(key) or load_cached(cfg, cache)
            if results[i] is None:
                raise RuntimeError(f"run {key} ({cfg}) did not finish")
            if key not in got:
                results[i]["cached"] = False  # trained by this call's workers
    return pd.DataFrame([to_row(r) for r in results])


def train_missing(configs, cache, quiet=True, progress=True, shard=None, lock="try") -> dict:
    """Train what ``cache`` lacks of ``configs``; by default skipping runs another process
    is training (the body of every worker). ``shard=(i, n)`` takes every n-th run only and
    no lock (a disjoint share, for cluster jobs that must not rely on file locks over a
    network file system). Returns the results it got, by key."""
    if shard is not None:
        configs, lock = configs[shard[0]::shard[1]], "none"
    keys = [run_key(cfg) for cfg in configs]
    got = {}
    for cfg in configs:
        result = cached_run(cfg, cache, quiet=quiet, lock=lock)
        if result is not None:
            got[result["key"]] = result
        if progress and result is not None and not result["cached"]:
            done = sum(os.path.exists(os.path.join(cache, f"{k}.json")) for k in keys)
            print(_progress_line(done, len(configs), cfg, result), flush=True)
    return got


def _in_processes(configs, cache, workers, progress) -> None:
    """``workers`` fresh interpreters (`python -m samkit.sweep.worker`), each walking the same list
    and taking the runs no other holds, so the load balances itself. The work list is locked
    while this process lives (a killed sweep's list is debris to ``remove_debris``)."""
    os.makedirs(cache, exist_ok=True)
    # Locked before it is given the name that remove_debris looks for.
    fd, tmp = tempfile.mkstemp(suffix=".json", prefix=".sweep-", dir=cache)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = os.path.join(cache, os.path.basename(tmp)[1:])
    os.rename(tmp, path)
    try:
        with open(path, "w") as f:
            json.dump([dataclasses.asdict(c) for c in configs], f)
        cmd = [sys.executable, "-m", "samkit.sweep.worker", path, "--cache", cache]
        procs = []
        try:
            procs = [subprocess.Popen(cmd + ([] if progress else ["--no-progress"]))
                     for _ in range(workers)]
            codes = [p.wait() for p in procs]
        except BaseException:  # Ctrl-C: the workers got it too; wait for their checkpoints
            for p in procs:
                p.wait()
            raise
    finally:
        unlink_and_close(path, fd)
    if any(codes):
        raise WorkerFailed(f"a sweep worker failed (exit codes {codes}); see its output above")


class WorkerFailed(RuntimeError):
    """A sweep worker process exited non-zero (it printed why)."""


def _progress_line(n, total, cfg, result) -> str:
    name = f"{cfg.tag + ' ' if cfg.tag else ''}{cfg.optimizer} {cfg.model}-{cfg.width}"
    if cfg.optimizer != "sgd":
        name += f" rho={cfg.rho:g}"
    name += f" seed {cfg.seed}"
    m = result.get("best") or {}
    acc = (f"test acc {m['test_acc']:.4f}" if "test_acc" in m
           else f"test loss {m['test_loss']:.4g}" if "test_loss" in m else result["status"])
    return f"[{n}/{total}] {name}: {result['seconds']:.0f} s, {acc}"


def to_row(result: dict) -> dict:
    """Flatten a result: config fields, status, params, final_*/best_* metrics, hessian_*,
    bn_drift_*."""
    row = {**result["config"], "status": result["status"],
           "diverged_epoch": result.get("diverged_epoch"), "params": result["params"],
           "nonzero_params": result["nonzero_params"], "seconds": result["seconds"],
           "train_seconds": result.get("train_seconds"), "grad_evals": _grad_evals(result),
           "key": result.get("key"), "cached": result.get("cached")}
    for prefix in ("final", "best"):
        for k, v in result.get(prefix, {}).items():
            row[f"{prefix}_{k}"] = v
    for k, v in result.get("hessian", {}).items():
        row[f"hessian_{k}"] = v
    for k, v in result.get("bn_drift", {}).items():
        row[f"bn_drift_{k}"] = v
    row.update(peaks(result))
    row.update(epochs_to_fit(result))
    return row


def _grad_evals(result: dict):
    """The forward+backward passes of a run's training steps: as the trainer counted them, or,
    for a result stored before it did (sgd, sam and asam, a fixed count per step), derived
    exactly from its config: epochs trained (the diverged epoch if it diverged) x
    ceil(training examples / batch size) x passes per step (sgd 1, sam/asam 2)."""
    if result.get("grad_evals") is not None:
        return result["grad_evals"]
    epochs = (result["config"]["epochs"] if result["status"] == "ok"
              else result.get("diverged_epoch"))
    return float("nan") if epochs is None else derived_grad_evals(result["config"], epochs)


# ----------------------------------------------------------------------------- cost

# For a model the run cache has never run: (width, seconds per training example and forward+
# backward pass) measured on one core of the 2-core CPU box that trained the committed cache
# (median of its stored runs; an unknown model takes the slowest).
REFERENCE_RATES = {"mlp": (512, 6e-5), "one_hidden_relu": (500, 5e-5),
                   "preact_resnet18": (4, 1e-3)}


def measured_rates(cache: str) -> dict:
    """{(dataset, model, depth): {(width, optimizer): [seconds per training example and
    pass]}} of every run stored in ``cache`` (its ``seconds``: one core, RUN_THREADS).
    Unverified files count too: this is an estimate, not a result."""
    rates = {}
    for path in result_files(cache) if os.path.isdir(cache) else []:
        try:
            r = read_result(path, check=False)
            c = r["config"]
            epochs = c["epochs"] if r["status"] == "ok" else r["diverged_epoch"]
            rate = r["seconds"] / (derived_grad_evals(c, epochs) * c["batch_size"])
        except (CacheError, KeyError, TypeError, ZeroDivisionError):
            continue  # refused by name when a sweep reads it
        arch = (c["dataset"], c["model"], c["depth"])
        rates.setdefault(arch, {}).setdefault((c["width"], c["optimizer"]), []).append(rate)
    return rates


def run_seconds(cfg: TrainConfig, rates: dict) -> float:
    """Estimated seconds of one run on one core: its passes (epochs x steps x passes per step
    of its optimizer) x batch size x a rate. The rate: the median of the stored runs
    (``measured_rates``) of its model (of its dataset and depth if any, else any) at the
    nearest measured width (those of its optimizer if any); with no stored run of the model,
    REFERENCE_RATES. Times (width / that width)^2 when wider: compute grows about so."""
    by_width = rates.get((cfg.dataset, cfg.model, cfg.depth))
    if not by_width:
        by_width = {}
        for (_, model, _), runs in rates.items():
            for k, v in runs.items() if model == cfg.model else ():
                by_width.setdefault(k, []).extend(v)
    if by_width:
        w = min({w for w, _ in by_width}, key=lambda w: (abs(math.log(w / cfg.width)), -w))
        rate = statistics.median(by_width.get((w, cfg.optimizer))
                                 or [r for (w2, _), v in by_width.items() if w2 == w for r in v])
    else:
        w, rate = REFERENCE_RATES.get(cfg.model, max(REFERENCE_RATES.values(),
                                                     key=lambda wr: wr[1]))
    passes = derived_grad_evals(vars(cfg), cfg.epochs) * cfg.batch_size  # vars: no deep copy
    return passes * rate * max(1.0, (cfg.width / w) ** 2)


def estimate(configs, cache: str) -> tuple[list[TrainConfig], float]:
    """(the configs ``cache`` lacks, their estimated core-hours: ``run_seconds`` summed).
    ``configs``: a list, or {run key: config} (keys known already: a big grid is quicker)."""
    keyed = configs if isinstance(configs, dict) else {run_key(c): c for c in configs}
    todo = [c for k, c in keyed.items() if not os.path.exists(os.path.join(cache, f"{k}.json"))]
    rates = measured_rates(cache) if todo else {}
    return todo, sum(run_seconds(c, rates) for c in todo) / 3600
