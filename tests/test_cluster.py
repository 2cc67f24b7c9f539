"""samkit.sweep.cluster through submitit's local executor (a real SLURM: tests/test_slurm.py)."""
import pandas as pd
import pytest

from conftest import TINY_SYNTHETIC as TINY
from samkit.sweep import engine as sweep
from samkit.train.config import TrainConfig


def test_cluster_jobs_share_the_runs_through_the_cache(tmp_path):
    """submitit's local executor stands in for SLURM: 2 jobs, disjoint shares, one cache;
    the sweep afterwards finds every run cached and equal to a serial run's numbers."""
    submitit = pytest.importorskip("submitit")
    from samkit.sweep import cluster
    cfgs = [TrainConfig(**TINY, seed=s) for s in range(3)]
    ex = submitit.LocalExecutor(folder=str(tmp_path / "logs"))
    ex.update_parameters(timeout_min=5)
    jobs = cluster.submit(cfgs, str(tmp_path / "runs"), ex, n_jobs=2)
    cluster.wait(jobs)
    got = sweep.run_sweep(cfgs, cache=str(tmp_path / "runs"), progress=False)
    assert got["cached"].all()
    serial = sweep.run_sweep(cfgs, cache=str(tmp_path / "serial"), workers=1, progress=False)
    cols = [c for c in got.columns if c.startswith("final_")]
    pd.testing.assert_frame_equal(got[cols], serial[cols])
