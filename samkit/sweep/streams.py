"""Several runs at once on one GPU: one thread and one CUDA stream each, in one process.

The sweep's worker processes suit a CPU (one core per run). On one GPU they do not: CUDA runs
the kernels of one process's streams concurrently but time-slices separate processes (without
the MPS daemon, which a lent machine need not run), while one small run (a width-64 ResNet at
batch 128) leaves a data-centre GPU mostly idle. So the runs here share a process, each in its
own thread and stream. Every run is trained and stored by ``store.cached_run``, the one writer
of the run-cache format: run keys and results are those of a sweep. A run's numbers do not
depend on the runs beside it (tests/test_gpu.py checks graph steps in threads against eager
steps); its times do, so each stored result's provenance gives ``concurrent_runs``.
"""
from __future__ import annotations

import threading
import time
import traceback
from contextlib import nullcontext

import torch

from samkit.sweep import store
from samkit.train.build import load_for, pick_device


class DeadlinePassed(Exception):
    """Raised after an evaluation once the deadline has passed: the run stops there, stores
    nothing, and its checkpoint stays in the cache to resume from."""


def data_key(cfg) -> tuple:
    """What ``samkit.train.build.load_for`` reads of a config: runs with equal keys share one
    loaded data set."""
    return (cfg.dataset, cfg.n_train, cfg.n_val, cfg.n_test, cfg.label_noise,
            cfg.effective_data_seed)


def train_concurrently(configs, cache: str, deadline: float | None = None, threads: bool = True,
                       on_epoch=None, provenance: dict | None = None) -> dict:
    """Train (or fetch) every config through ``store.cached_run`` into ``cache``, all at once
    (``threads``: one thread and, on CUDA, one stream each) or one after the other, in the
    order given. ``deadline`` (a ``time.time()``): a run still training then stops after its
    next evaluation. ``on_epoch(cfg, entry)``: progress, from the run's thread. ``provenance``:
    added to each stored result's provenance, beside ``concurrent_runs``.

    Returns {run key: the result, or the exception that ended the run (DeadlinePassed, or what
    the training raised; printed with its traceback)}."""
    configs = list(configs)
    loaded = {}
    for cfg in configs:  # here, before the threads: the loader is not made for threads
        if data_key(cfg) not in loaded:
            loaded[data_key(cfg)] = load_for(cfg)
    # One intra-op thread for the whole process, as each sweep run has (store.RUN_THREADS):
    # the engine's per-run setting then restores what every other thread also uses.
    threads_before = torch.get_num_threads()
    torch.set_num_threads(store.RUN_THREADS)
    concurrent = len(configs) if threads else 1
    outcome = {}

    def one(cfg):
        key = store.run_key(cfg)

        def epoch_done(entry):
            if on_epoch is not None:
                on_epoch(cfg, entry)
            if deadline is not None and time.time() >= deadline and entry["epoch"] < cfg.epochs:
                raise DeadlinePassed(f"stopped after epoch {entry['epoch']} of {cfg.epochs}")

        stream = torch.cuda.Stream() if pick_device(cfg.device).type == "cuda" else None
        try:
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                outcome[key] = store.cached_run(
                    cfg, cache, data=loaded[data_key(cfg)], on_epoch=epoch_done,
                    provenance={**(provenance or {}), "concurrent_runs": concurrent})
        except DeadlinePassed as e:
            outcome[key] = e
        except Exception as e:  # noqa: BLE001 - reported per run; the others go on
            traceback.print_exc()
            outcome[key] = e

    try:
        if threads:
            workers = [threading.Thread(target=one, args=(cfg,),
                                        name=cfg.tag or store.run_key(cfg)) for cfg in configs]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
        else:
            for cfg in configs:
                if deadline is not None and time.time() >= deadline:
                    outcome[store.run_key(cfg)] = DeadlinePassed("not started: deadline passed")
                    continue
                one(cfg)
    finally:
        torch.set_num_threads(threads_before)
    return outcome
