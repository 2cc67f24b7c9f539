"""Sweeps beyond one machine: the sweep worker as cluster jobs through submitit
(``pip install 'samkit[cluster]'``).

Each job trains a disjoint share of the runs (``sweep.train_missing(..., shard=(i, n))``) and
writes each result atomically (temp file + rename) into a cache directory that all jobs share;
no job relies on file locks (unreliable over NFS). Resubmitting the same list later trains
only what is still missing. On a SLURM cluster::

    ex = submitit.AutoExecutor("slurm_logs"); ex.update_parameters(timeout_min=240, cpus_per_task=1)
    jobs = samkit.sweep.cluster.submit(configs, "results/runs", ex, n_jobs=50)
    samkit.sweep.cluster.wait(jobs)   # then sweep.run_sweep(configs) reads everything from the cache

tests/test_slurm.py runs this against a real single-node SLURM (slurmctld, slurmd, munge).
"""
from __future__ import annotations

import time


def _job(configs, cache, i, n) -> dict:
    """One job's body: train share i of n; what it trained, and under which job id."""
    from samkit.sweep.engine import train_missing
    got = train_missing(configs, cache, progress=False, shard=(i, n))
    return {"shard": i, "job_id": _job_id(),
            "trained": sorted(key for key, r in got.items() if not r["cached"]),
            "cached": sorted(key for key, r in got.items() if r["cached"])}


def _job_id() -> str | None:
    """The scheduler's id of the running job (``<array id>_<task>`` in a job array), as
    submitit's ``Job.job_id`` names it on the submitting side."""
    try:
        import submitit
        return str(submitit.JobEnvironment().job_id)
    except Exception:  # not under submitit: no id to give
        return None


def submit(configs, cache: str, executor, n_jobs: int):
    """Submit ``n_jobs`` jobs to a submitit ``executor``; job i trains runs i, i+n, ..."""
    configs = list(configs)
    n_jobs = max(1, min(n_jobs, len(configs)))
    with executor.batch():
        jobs = [executor.submit(_job, configs, cache, i, n_jobs) for i in range(n_jobs)]
    return jobs


def wait(jobs, timeout: float | None = None, poll_s: float = 1.0) -> list[dict]:
    """Block until every job ended (at most ``timeout`` seconds: then TimeoutError, the jobs
    left running); re-raises a job's exception. Returns each job's report: its ``shard``,
    ``job_id``, and the run keys it ``trained`` and found ``cached``."""
    if timeout is not None:
        deadline = time.monotonic() + timeout
        while not all(job.done() for job in jobs):
            if time.monotonic() > deadline:
                pending = [str(job.job_id) for job in jobs if not job.done()]
                raise TimeoutError(f"cluster jobs {', '.join(pending)} not done after "
                                   f"{timeout:g} s")
            time.sleep(poll_s)
    return [job.result() for job in jobs]
