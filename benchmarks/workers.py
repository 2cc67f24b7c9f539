#!/usr/bin/env python
"""1 vs 2 sweep workers on the same grid of runs: wall time, speed-up, identical numbers.

Each sweep is ``samkit.sweep.engine.run_sweep(configs, cache, workers=N)`` (what ``samkit sweep --workers N``
calls) in a fresh process (interpreter start, imports and data parsing counted for every sweep
alike, as for a real ``samkit sweep``) on an empty temporary cache, so every run trains and
nothing is read from a cache. The sweeps alternate 1, 2, 2, 1 workers (``--repeats`` pairs,
the order mirrored each pair) so drift hits both alike; reported: each sweep's wall time, the
median per worker count and the speed-up (1-worker median / 2-worker median).

Then the stored result JSONs of every sweep are compared with the first one's, run by run and
field by field, all but the times and the provenance (``VOLATILE``): equal JSON text means
bit-equal floats (Python writes floats round-trip exactly). ``bit_identical`` says whether the
worker count changed any number (it must not: each run trains in one thread wherever it runs).

The grid: params.yaml's research base (the cpu profile's MLP, depth 2, 10k Fashion-MNIST images,
batch 128), widths 128 and 512, SGD and SAM, seeds 0-2, ``--epochs`` 12 (not 60): 12 runs of
2-10 s each. It needs a quiet machine (wall time, two cores busy).
``--quick``: 4 tiny synthetic runs, 1 then 2 workers: checks the script, not the speed.

Results go to results/bench/workers_<device>.json (written atomically).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the benchmarks package is in the repository root
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.common import bench_provenance, device_info, loadavg  # noqa: E402
from samkit.atomic import write_json  # noqa: E402
from samkit.pipeline import params as params_mod  # noqa: E402
from samkit.sweep import engine as sweep  # noqa: E402
from samkit.sweep import store
from samkit.train.config import TrainConfig  # noqa: E402

SCHEMA = "samkit.bench.workers/1"
# Fields of a stored result that differ between two trainings of the same run by nature.
# Timing and provenance differ run to run; the checksum covers them, so it differs too.
VOLATILE = ("seconds", "train_seconds", "provenance", "sha256")
QUICK_BASE = dict(dataset="synthetic", n_train=64, model="mlp", width=8, epochs=2,
                  batch_size=16, n_test=0)


def grid(quick: bool, epochs: int) -> list[TrainConfig]:
    if quick:
        base, widths, seeds = QUICK_BASE, [8], [0, 1]
    else:
        base = {**params_mod.load(str(REPO / "params.yaml"))["width"]["cpu"]["base"],
                "epochs": epochs}
        widths, seeds = [128, 512], [0, 1, 2]
    # device cpu: the sweep's workers are CPU processes (on a GPU machine "auto" would not be)
    return sweep.expand({**base, "device": "cpu"},
                        {"width": widths, "optimizer": ["sgd", "sam"], "seed": seeds})


def _sweep(configs, cache, workers):  # the body of each fresh sweep process
    sweep.run_sweep(configs, cache=cache, workers=workers, progress=False)


def timed_sweep(configs, workers) -> tuple[float, dict]:
    """(wall seconds, the stored results by key) of one sweep from an empty cache."""
    with tempfile.TemporaryDirectory(prefix="samkit-workers-") as cache:
        proc = multiprocessing.get_context("spawn").Process(target=_sweep,
                                                            args=(configs, cache, workers))
        t0 = time.perf_counter()
        proc.start()
        proc.join()
        wall = time.perf_counter() - t0
        if proc.exitcode != 0:
            raise RuntimeError(f"the {workers}-worker sweep failed (exit code {proc.exitcode})")
        return wall, load_runs(cache, [store.run_key(c) for c in configs])


def load_runs(cache, keys) -> dict:
    """The stored result of each run key."""
    runs = {}
    for key in keys:
        with open(os.path.join(cache, f"{key}.json")) as f:
            runs[key] = json.load(f)
    return runs


def differences(a: dict, b: dict) -> list[str]:
    """'key: field' for every field but the VOLATILE ones (or 'key: missing' for every run)
    that differs between two sweeps' results (``load_runs``). Compared as JSON text: equal
    text is equal float bits, NaN included (NaN != NaN as floats)."""
    out = []
    for key in sorted(a.keys() | b.keys()):
        if key not in a or key not in b:
            out.append(f"{key}: missing")
            continue
        for field in sorted((a[key].keys() | b[key].keys()) - set(VOLATILE)):
            if (json.dumps(a[key].get(field), sort_keys=True)
                    != json.dumps(b[key].get(field), sort_keys=True)):
                out.append(f"{key}: {field}")
    return out


def measure(configs, order) -> dict:
    sweeps, first = [], None
    for workers in order:
        wall, runs = timed_sweep(configs, workers)
        first = first or runs
        diff = differences(first, runs)
        # The runs' own training time, summed: whether two side by side slow each other down
        train_s = sum(r["train_seconds"] for r in runs.values())
        sweeps.append(dict(workers=workers, wall_s=wall, train_s_summed=train_s,
                           differences=diff))
        print(f"{workers} worker(s): {wall:7.1f} s wall, runs' training {train_s:6.1f} s  "
              f"{'identical to the first sweep' if not diff else f'{len(diff)} differences'}",
              flush=True)
    med = {n: statistics.median(s["wall_s"] for s in sweeps if s["workers"] == n)
           for n in sorted(set(order))}
    return dict(sweeps=sweeps, median_wall_s=med, speedup=med[1] / med[2],
                bit_identical=not any(s["differences"] for s in sweeps))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="1 vs 2 sweep workers on one grid: wall time, "
                                "speed-up, bit-identical results. Needs a quiet machine.")
    p.add_argument("--epochs", type=int, default=12, help="epochs per run (default 12)")
    p.add_argument("--repeats", type=int, default=2,
                   help="pairs of sweeps, order 1,2 then 2,1, ... (default 2: 1,2,2,1)")
    p.add_argument("--out", type=Path,
                   help="JSON path (default results/bench/workers_<device-slug>.json)")
    p.add_argument("--quick", action="store_true",
                   help="4 tiny synthetic runs, 1 then 2 workers: checks the script only")
    args = p.parse_args(argv)
    for name in ("epochs", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: bad value {getattr(args, name)}; allowed: integers >= 1")
    if args.quick:
        args.repeats = 1
    return args


def main(argv=None):
    args = parse_args(argv)
    name, slug, extra = device_info(torch.device("cpu"))
    out = args.out or REPO / "results" / "bench" / f"workers_{slug}.json"
    configs = grid(args.quick, args.epochs)
    order = [n for r in range(args.repeats) for n in ((1, 2) if r % 2 == 0 else (2, 1))]
    load_before, t_start = loadavg(), time.perf_counter()
    print(f"workers: {name}, {os.cpu_count()} cores, load {load_before}; {len(configs)} runs "
          f"per sweep, sweeps of {order} worker(s)", flush=True)
    if load_before and load_before[0] > 0.5:
        print(f"warning: load average {load_before[0]:.1f}: the machine is busy, wall times "
              "(and the speed-up) are not clean", flush=True)
    result = measure(configs, order)
    write_json(Path(out), {
        "schema": SCHEMA,
        "provenance": bench_provenance(argv, name, slug, extra, load_before, t_start,
                                       threads_per_run=store.RUN_THREADS),
        "settings": {
            "quick": args.quick, "epochs": configs[0].epochs, "order": order,
            "runs": [c.key_dict() for c in configs],
            "sweep": "samkit.sweep.engine.run_sweep(configs, cache=<empty temp dir>, workers=N) in a fresh "
                     "process; wall time from its start to its exit",
            "compared": f"every stored result field except {', '.join(VOLATILE)}, as JSON text",
        },
        **result,
    })
    print(f"\nmedian wall: 1 worker {result['median_wall_s'][1]:.1f} s, 2 workers "
          f"{result['median_wall_s'][2]:.1f} s; speed-up {result['speedup']:.2f}x; results "
          f"bit-identical across all sweeps: {result['bit_identical']}. Load average before "
          f"{load_before}, after {loadavg()}.\nwrote {out}")
    return 0 if result["bit_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
