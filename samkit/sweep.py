"""Grid → cached runs → tidy DataFrame.

Each run's result is stored as ``<cache>/<key>.json``, the key a hash of the config fields that
change its numbers (and of NUMERICS_VERSION). A killed or extended sweep therefore redoes only
what is missing. Writes are atomic (temp file + rename) and a per-key file lock keeps two sweep
processes that share a cache from training the same run twice. Runs train in ``workers``
processes of one thread each: a run's numbers never depend on how many run beside it.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager

import filelock
import pandas as pd
import torch

from .atomic import write_json as write_json_atomic
from .config import TrainConfig
from .train import run as train_run


def expand(base: dict, grid: dict | None = None, arms: list[dict] | None = None) -> list[TrainConfig]:
    """Configs for ``base`` × product(grid) × arms. A list value inside an arm is an axis of
    that arm only (e.g. each model its own widths). Later keys override earlier ones; identical
    configs (e.g. SGD at several rho) appear once."""
    configs, seen = [], set()
    for arm in arms or [{}]:
        axes = {**(grid or {}), **{k: v for k, v in arm.items() if isinstance(v, list)}}
        fixed = {k: v for k, v in arm.items() if not isinstance(v, list)}
        for combo in itertools.product(*axes.values()):
            cfg = TrainConfig(**{**base, **dict(zip(axes, combo)), **fixed})
            k = (run_key(cfg), cfg.tag)
            if k not in seen:
                seen.add(k)
                configs.append(cfg)
    return configs


# Bumped when a stored result gains or changes fields: older cache entries are retrained.
# 2: train_seconds (training-only time).
RESULT_FORMAT = 2
# Bumped when a code change alters the numbers of any run (tests/test_golden.py notices): part
# of every run's key, so results of the old code are never mixed with the new.
# 1: the key includes this version.
NUMERICS_VERSION = 1
# CPU threads per run, whatever the number of workers: intra-op parallelism changes the order
# of float sums, so a run trained beside others must use what it would use alone.
RUN_THREADS = 1


def run_key(cfg: TrainConfig) -> str:
    blob = json.dumps({**cfg.key_dict(), "numerics": NUMERICS_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextmanager
def _locked(path: str, mode: str = "wait"):
    """Hold an exclusive lock on ``path`` (mode "wait"); with "try", yields False (holding
    nothing) if another process holds it; "none" takes no lock (the caller's share of the
    runs is disjoint from every other's, e.g. cluster jobs on a network file system)."""
    if mode == "none":
        yield True
        return
    lock = filelock.FileLock(path, timeout=-1 if mode == "wait" else 0)
    try:
        lock.acquire()
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def cached_run(cfg: TrainConfig, cache: str, quiet: bool = True, lock: str = "wait"):
    """The result of ``cfg``, from ``cache`` if present (read-only access is enough), else
    trained (resuming a checkpoint left by a killed attempt) and stored. ``lock``: see
    ``_locked``; with "try", None when another process is training it right now."""
    result = _load_cached(cfg, cache)
    if result is None:
        key = run_key(cfg)
        result = _train_and_store(cfg, cache, key, os.path.join(cache, f"{key}.json"), quiet,
                                  lock)
        if result is None:
            return None
        result["key"] = key
        result["config"]["tag"] = cfg.tag  # the tag is the caller's label, not the run's identity
    return result


def _load_cached(cfg, cache) -> dict | None:
    key = run_key(cfg)
    result = _load_current(os.path.join(cache, f"{key}.json"))
    if result is not None:
        result.update(cached=True, key=key)
        result["config"]["tag"] = cfg.tag
    return result


def _train_and_store(cfg, cache, key, path, quiet, lock) -> dict | None:
    os.makedirs(cache, exist_ok=True)
    with _locked(path + ".lock", lock) as mine:
        if not mine:
            return None
        # Under the lock no live writer of this key exists: a temp file is a killed one's debris.
        for debris in glob.glob(os.path.join(glob.escape(cache), f"{key}.*.tmp.*")):
            os.remove(debris)
        result = _load_current(path)  # another process may have finished it while we waited
        if result is not None:
            result["cached"] = True
            return result
        ckpt = os.path.join(cache, f"{key}.ckpt")
        with _threads(RUN_THREADS):
            result = train_run(cfg, checkpoint=ckpt, quiet=quiet)
        result = {**_with_provenance(result), "format": RESULT_FORMAT,
                  "numerics": NUMERICS_VERSION}
        write_json_atomic(path, result)
        for done in (ckpt, path + ".lock"):
            # The lock file can go: from now on every process finds the result before it
            # would lock, and one already waiting re-reads the result once it gets the lock.
            if os.path.exists(done):
                os.remove(done)
        result["cached"] = False
        return result


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_current(path: str) -> dict | None:
    """A stored result, or None if there is none or it predates the current result format
    (it lacks fields that the studies read, e.g. ``train_seconds``): then it is retrained."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    return result if result.get("format") == RESULT_FORMAT else None


def _with_provenance(result: dict) -> dict:
    from .provenance import provenance
    return {**result, "provenance": provenance()}


def default_workers() -> int:
    """One worker per CPU core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run(configs: list[TrainConfig], cache: str = "results/runs", quiet: bool = True,
        progress: bool = True, workers: int | None = None) -> pd.DataFrame:
    """Run (or fetch) every config; one row per run with its config and metrics, in the order
    of ``configs``. Missing runs train in ``workers`` processes (default: one per core), each
    taking the next run no other holds; with ``progress`` one line per finished run."""
    results = [_load_cached(cfg, cache) for cfg in configs]
    todo = [cfg for cfg, r in zip(configs, results) if r is None]
    workers = min(workers or default_workers(), len(todo))
    if progress and len(todo) < len(configs):
        print(f"{len(configs) - len(todo)} of {len(configs)} runs from the run cache {cache}",
              flush=True)
    if workers > 1:
        _in_processes(todo, cache, workers, progress)
    # Serially (and after the workers): train what is still missing, or wait for a run that
    # another process (another sweep sharing the cache) holds and read it then.
    got = train_missing([c for c in todo if _load_cached(c, cache) is None], cache, quiet,
                        progress, lock="wait")
    for i, cfg in enumerate(configs):
        if results[i] is None:
            key = run_key(cfg)
            results[i] = got.get(key) or _load_cached(cfg, cache)
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
    """``workers`` fresh interpreters (`python -m samkit.worker`), each walking the same list
    and taking the runs no other holds, so the load balances itself."""
    os.makedirs(cache, exist_ok=True)
    fd, path = tempfile.mkstemp(suffix=".json", prefix="sweep-", dir=cache)
    with os.fdopen(fd, "w") as f:
        json.dump([dataclasses.asdict(c) for c in configs], f)
    cmd = [sys.executable, "-m", "samkit.worker", path, "--cache", cache]
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
        os.remove(path)
    if any(codes):
        raise RuntimeError(f"a sweep worker failed (exit codes {codes}); see its output above")


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
    """Flatten a result: config fields, status, params, final_*/best_* metrics, hessian_*."""
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
    return row


def _grad_evals(result: dict):
    """The forward+backward passes of a run's training steps: as the trainer counted them, or,
    for a result stored before it did (sgd, sam and asam, a fixed count per step), derived
    exactly from its config: epochs trained (the diverged epoch if it diverged) x
    ceil(training examples / batch size) x passes per step (sgd 1, sam/asam 2)."""
    if result.get("grad_evals") is not None:
        return result["grad_evals"]
    from .train import derived_grad_evals
    epochs = (result["config"]["epochs"] if result["status"] == "ok"
              else result.get("diverged_epoch"))
    return float("nan") if epochs is None else derived_grad_evals(result["config"], epochs)


# ----------------------------------------------------------------------------- stored results

def load_result(key: str, cache: str = "results/runs") -> dict:
    """The full stored result of one run (``key`` column of ``run``'s table): history, probe,
    hessian, provenance — what the flat row leaves out."""
    with open(os.path.join(cache, f"{key}.json")) as f:
        return json.load(f)
