"""One sweep worker process: ``python -m samkit.sweep.worker CONFIGS.json --cache DIR``.

Trains, one thread, every run of the list that the cache lacks and that no other worker holds
(per-run file locks), so N of them on one machine share the work. ``--shard I/N`` takes a
disjoint share instead (cluster jobs on a network file system, where locks are unreliable).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from samkit.train.checkpoint import CheckpointError
from samkit.sweep.engine import train_missing
from samkit.sweep.store import CacheError
from samkit.train.config import TrainConfig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m samkit.sweep.worker", description=__doc__)
    p.add_argument("configs", help="JSON list of TrainConfig fields")
    p.add_argument("--cache", default="results/runs")
    p.add_argument("--shard", help="I/N: only runs I, I+N, I+2N, ... of the list")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    with open(args.configs) as f:
        configs = [TrainConfig(**c) for c in json.load(f)]
    shard = None
    if args.shard:
        i, n = (int(v) for v in args.shard.split("/"))
        shard = (i, n)
    try:
        train_missing(configs, args.cache, progress=not args.no_progress, shard=shard)
    except (CacheError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        # The run's last checkpoint stays (rerunning resumes it) and its lock file is gone.
        # Exit now: the interpreter's teardown (torch) takes over a second on a busy machine,
        # and Ctrl-C waits for it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
