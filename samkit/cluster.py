"""Sweeps beyond one machine: the sweep worker as cluster jobs through submitit.

Each job trains a disjoint share of the runs (``sweep.train_missing(..., shard=(i, n))``) and
writes each result atomically (temp file + rename) into a cache directory that all jobs share;
no job relies on file locks (unreliable over NFS). Resubmitting the same list later trains
only what is still missing. On a SLURM cluster::

    ex = submitit.AutoExecutor("slurm_logs"); ex.update_parameters(timeout_min=240, cpus_per_task=1)
    jobs = samkit.cluster.submit(configs, "results/runs", ex, n_jobs=50)
    samkit.cluster.wait(jobs)   # then sweep.run(configs) reads everything from the cache
"""
from __future__ import annotations

from .sweep import train_missing


def _job(configs, cache, i, n):
    train_missing(configs, cache, progress=False, shard=(i, n))
    return i


def submit(configs, cache: str, executor, n_jobs: int):
    """Submit ``n_jobs`` jobs to a submitit ``executor``; job i trains runs i, i+n, ..."""
    n_jobs = max(1, min(n_jobs, len(configs)))
    with executor.batch():
        jobs = [executor.submit(_job, configs, cache, i, n_jobs) for i in range(n_jobs)]
    return jobs


def wait(jobs) -> None:
    """Block until every job ended; re-raises a job's exception."""
    for job in jobs:
        job.result()
