"""Grid expansion, the run cache, and the statistics against scipy/numpy references."""
import json
import os
import subprocess

import pandas as pd
import pytest

from samkit import provenance, sweep
from samkit.train import TrainConfig

TINY = dict(dataset="synthetic", n_train=64, model="mlp", width=8, epochs=2, batch_size=16,
            device="cpu", n_test=0)


def test_expand_grid_arms_and_dedup():
    cfgs = sweep.expand({"dataset": "synthetic", "model": "mlp"},
                        {"optimizer": ["sgd", "sam"], "rho": [0.05, 0.1], "seed": [0, 1]},
                        [{"width": [4, 8]}, {"width": 16, "epochs": 3}])
    # SGD ignores rho: one SGD run per (width, seed), two SAM runs
    assert len(cfgs) == 3 * 2 * (1 + 2)
    assert {c.width for c in cfgs} == {4, 8, 16}
    assert all(c.epochs == 3 for c in cfgs if c.width == 16)
    assert len({sweep.run_key(c) for c in cfgs}) == len(cfgs)


def test_run_key_ignores_execution_fields():
    a = TrainConfig(**TINY)
    assert sweep.run_key(a) == sweep.run_key(TrainConfig(**{**TINY, "device": "auto"}, tag="x"))
    assert sweep.run_key(a) != sweep.run_key(TrainConfig(**{**TINY, "seed": 1}))


def test_cache_runs_only_what_is_missing(tmp_path):
    cache = str(tmp_path / "runs")
    first = sweep.run([TrainConfig(**TINY, seed=s) for s in (0, 1)], cache=cache, progress=False)
    assert not first["cached"].any()
    second = sweep.run([TrainConfig(**TINY, seed=s) for s in (0, 1, 2)], cache=cache,
                       progress=False)
    assert second["cached"].tolist() == [True, True, False]
    pd.testing.assert_frame_equal(first.drop(columns="cached"),
                                  second.iloc[:2].drop(columns="cached"))
    files = sorted(f for f in os.listdir(cache) if f.endswith(".json"))
    assert len(files) == 3
    with open(os.path.join(cache, files[0])) as f:
        stored = json.load(f)
    assert {"commit", "device", "torch", "date"} <= set(stored["provenance"])


def test_a_result_of_an_older_format_is_retrained(tmp_path):
    cache = str(tmp_path / "runs")
    cfg = TrainConfig(**TINY)
    sweep.run([cfg], cache=cache, progress=False)
    path = os.path.join(cache, f"{sweep.run_key(cfg)}.json")
    with open(path) as f:
        stored = json.load(f)
    old = {k: v for k, v in stored.items() if k not in ("format", "train_seconds")}
    with open(path, "w") as f:
        json.dump(old, f)  # as written before train_seconds existed
    again = sweep.run([cfg], cache=cache, progress=False)
    assert not again["cached"].any() and again["train_seconds"].notna().all()
    assert sweep.run([cfg], cache=cache, progress=False)["cached"].all()


def test_commit_is_dirty_only_for_code_changes(tmp_path, monkeypatch):
    """The pipeline rewrites tracked results while it runs; that must not mark them "-dirty"."""
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                       capture_output=True)

    monkeypatch.chdir(tmp_path)
    (tmp_path / "samkit").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "samkit" / "sam.py").write_text("a = 1\n")
    (tmp_path / "results" / "runs.csv").write_text("x\n1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    commit = provenance.git_commit.__wrapped__
    (tmp_path / "results" / "runs.csv").write_text("x\n2\n")
    monkeypatch.chdir(tmp_path / "results")  # also from a subdirectory
    assert commit() == head
    (tmp_path / "samkit" / "sam.py").write_text("a = 2\n")
    assert commit() == head + "-dirty"


def test_workers_give_bit_identical_results_to_a_serial_sweep(tmp_path):
    """Two worker processes (one thread each) and one in-process run: same numbers, all runs
    trained once; the result's key is config + NUMERICS_VERSION."""
    cfgs = [TrainConfig(**TINY, seed=s, optimizer=o) for s in (0, 1) for o in ("sgd", "sam")]
    serial = sweep.run(cfgs, cache=str(tmp_path / "a"), workers=1, progress=False)
    parallel = sweep.run(cfgs, cache=str(tmp_path / "b"), workers=2, progress=False)
    assert not parallel["cached"].any()
    cols = [c for c in serial.columns if c.startswith(("final_", "best_"))]
    pd.testing.assert_frame_equal(serial[cols], parallel[cols])
    for k in serial["key"]:
        a, b = (sweep.load_result(k, str(tmp_path / d)) for d in "ab")
        assert a["history"] == b["history"] and b["numerics"] == sweep.NUMERICS_VERSION
    assert sorted(os.listdir(tmp_path / "b")) == sorted(os.listdir(tmp_path / "a"))


def test_a_shard_takes_every_nth_run(tmp_path):
    cfgs = [TrainConfig(**TINY, seed=s) for s in range(3)]
    sweep.train_missing(cfgs, str(tmp_path), progress=False, shard=(1, 2))
    # only run 1, and no lock file: shards are disjoint, locks over NFS are not trusted
    assert sorted(os.listdir(tmp_path)) == [f"{sweep.run_key(cfgs[1])}.json"]


def test_numerics_version_is_part_of_the_key(monkeypatch):
    cfg = TrainConfig(**TINY)
    before = sweep.run_key(cfg)
    monkeypatch.setattr(sweep, "NUMERICS_VERSION", sweep.NUMERICS_VERSION + 1)
    assert sweep.run_key(cfg) != before


def test_cluster_jobs_share_the_runs_through_the_cache(tmp_path):
    """submitit's local executor stands in for SLURM: 2 jobs, disjoint shares, one cache;
    the sweep afterwards finds every run cached and equal to a serial run's numbers."""
    submitit = pytest.importorskip("submitit")
    from samkit import cluster
    cfgs = [TrainConfig(**TINY, seed=s) for s in range(3)]
    ex = submitit.LocalExecutor(folder=str(tmp_path / "logs"))
    ex.update_parameters(timeout_min=5)
    jobs = cluster.submit(cfgs, str(tmp_path / "runs"), ex, n_jobs=2)
    cluster.wait(jobs)
    got = sweep.run(cfgs, cache=str(tmp_path / "runs"), progress=False)
    assert got["cached"].all()
    serial = sweep.run(cfgs, cache=str(tmp_path / "serial"), workers=1, progress=False)
    cols = [c for c in got.columns if c.startswith("final_")]
    pd.testing.assert_frame_equal(got[cols], serial[cols])
