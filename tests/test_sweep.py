"""Grid expansion, the run cache, and the statistics against scipy/numpy references."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from samkit import provenance
from samkit.sweep import engine as sweep
from samkit.train.config import TrainConfig

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
    first = sweep.run_sweep([TrainConfig(**TINY, seed=s) for s in (0, 1)], cache=cache, progress=False)
    assert not first["cached"].any()
    second = sweep.run_sweep([TrainConfig(**TINY, seed=s) for s in (0, 1, 2)], cache=cache,
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
    sweep.run_sweep([cfg], cache=cache, progress=False)
    path = os.path.join(cache, f"{sweep.run_key(cfg)}.json")
    with open(path) as f:
        stored = json.load(f)
    old = {k: v for k, v in stored.items() if k not in ("format", "train_seconds")}
    with open(path, "w") as f:
        json.dump(old, f)  # as written before train_seconds existed
    again = sweep.run_sweep([cfg], cache=cache, progress=False)
    assert not again["cached"].any() and again["train_seconds"].notna().all()
    assert sweep.run_sweep([cfg], cache=cache, progress=False)["cached"].all()


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
    serial = sweep.run_sweep(cfgs, cache=str(tmp_path / "a"), workers=1, progress=False)
    parallel = sweep.run_sweep(cfgs, cache=str(tmp_path / "b"), workers=2, progress=False)
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


# ----------------------------------------------------------------------------- a trusted cache

def _one_run(tmp_path):
    cache = str(tmp_path / "runs")
    cfg = TrainConfig(**TINY)
    sweep.run_sweep([cfg], cache=cache, progress=False)
    return cfg, cache, os.path.join(cache, f"{sweep.run_key(cfg)}.json")


def test_a_truncated_or_edited_result_is_refused_by_name_never_used(tmp_path):
    cfg, cache, path = _one_run(tmp_path)
    text = open(path).read()
    stored = json.loads(text)
    assert list(stored)[-1] == "sha256" and stored["sha256"] == sweep._digest(stored)
    edited = {**stored, "best": {**stored["best"], "test_loss": 0.001}}   # a hand edit
    damages = {"truncated": (text[:len(text) // 2], "not a stored result (truncated"),
               "edited": (json.dumps(edited, indent=1), "checksum mismatch (edited or damaged")}
    for name, (damaged, why) in damages.items():
        with open(path, "w") as f:
            f.write(damaged)
        for read in (lambda: sweep.run_sweep([cfg], cache=cache, progress=False),
                     lambda: sweep.load_result(sweep.run_key(cfg), cache)):
            with pytest.raises(sweep.CacheError) as e:
                read()
            assert str(e.value).startswith(f"{path}: {why}"), (name, str(e.value))
            assert "\n" not in str(e.value) and "delete it to retrain" in str(e.value)
        assert open(path).read() == damaged   # refused, not trained over
    os.remove(path)   # the fix the message names
    assert not sweep.run_sweep([cfg], cache=cache, progress=False)["cached"].any()


def _unsealed(path):
    """The file as results were stored before checksums (no trailing newline, as committed)."""
    stored = json.load(open(path))
    del stored["sha256"]
    text = json.dumps(stored, indent=1)
    with open(path, "w") as f:
        f.write(text)
    return text


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "samkit", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_seal_adds_only_the_checksum_and_an_unsealed_result_is_refused(tmp_path):
    cfg, cache, path = _one_run(tmp_path)
    before = _unsealed(path)
    with pytest.raises(sweep.CacheError) as e:
        sweep.run_sweep([cfg], cache=cache, progress=False)
    assert str(e.value) == (f"{path}: no sha256 checksum (stored before results were sealed); "
                            f"allowed: a sealed result: run `python -m samkit cache seal --cache "
                            f"{cache}` once, or delete it to retrain the run")
    r = _cli("cache", "verify", "--cache", cache)
    assert r.returncode == 1 and r.stderr.startswith(f"error: {path}: no sha256"), r.stderr
    r = _cli("cache", "seal", "--cache", cache)
    assert r.returncode == 0 and r.stdout == f"{cache}: sealed 1, 0 sealed before\n", r
    after = open(path).read()
    digest = json.loads(after)["sha256"]
    cut = before.rindex("\n")   # every byte kept; one field added, last
    assert after == before[:cut] + f',\n "sha256": "{digest}"' + before[cut:]
    assert sweep.run_sweep([cfg], cache=cache, progress=False)["cached"].all()
    r = _cli("cache", "seal", "--cache", cache)
    assert r.returncode == 0 and "sealed 0, 1 sealed before" in r.stdout
    with open(path, "w") as f:   # an edit after sealing is not sealed over
        f.write(after.replace('"status": "ok"', '"status": "OK"'))
    r = _cli("cache", "seal", "--cache", cache)
    assert r.returncode == 1 and f"error: {path}: checksum mismatch" in r.stderr


PARAMS = """profile: quick
simplicity:
  quick:
    base: {dataset: toy1d, model: one_hidden_relu, lr: 0.005, momentum: 0.9,
           weight_decay: 0.0, schedule: constant, batch_size: 12, epochs: EPOCHS,
           eval_every: 10, rho: 0.1, early_stopping: false}
    grid: {width: [5], optimizer: [sgd, sam], seed: [0]}
"""


def test_samkit_sweep_names_a_damaged_result_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text(PARAMS.replace("EPOCHS", "20"))
    cache = tmp_path / "runs"
    r = _cli("sweep", "--studies", "simplicity", "--cache", str(cache), "--workers", "1",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    victim = sorted(cache.glob("*.json"))[0]
    victim.write_text(victim.read_text()[:100])
    r = _cli("sweep", "--studies", "simplicity", "--cache", str(cache), "--workers", "1",
             cwd=tmp_path)
    assert r.returncode == 1 and r.stderr == (
        f"error: {victim}: not a stored result (truncated or damaged JSON); allowed: the file "
        "as the sweep wrote it: restore it (e.g. from git) or delete it to retrain the run\n")


# ----------------------------------------------------------------------------- debris

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


def test_the_next_sweep_removes_what_killed_sweeps_left_and_no_live_one_holds(tmp_path):
    cache = tmp_path / "runs"
    cache.mkdir()
    dead = [cache / "sweep-abc123.json", cache / "0123456789abcdef.json.lock"]
    for f in dead:
        f.write_text("[]")
    live = [cache / "sweep-live.json", cache / "fedcba9876543210.json.lock"]
    holders = [subprocess.Popen([sys.executable, "-c", HOLD, str(f)], stdout=subprocess.PIPE,
                                text=True) for f in live]
    try:
        assert all(h.stdout.readline() == "held\n" for h in holders)
        got = sweep.run_sweep([TrainConfig(**TINY)], cache=str(cache), progress=False)
        assert got["status"].tolist() == ["ok"]
        assert not any(f.exists() for f in dead)   # no live process held them
        assert all(f.exists() for f in live)       # a running sweep's are left alone
        assert not list(cache.glob("*.ckpt")) and len(list(cache.glob("*.json.lock"))) == 1
    finally:
        for h in holders:
            h.kill()
            h.wait()


def test_a_killed_sweep_leaves_debris_that_the_next_start_removes(tmp_path):
    """SIGKILL to `samkit sweep` and its workers mid-run leaves their work list and lock
    files (nothing can clean up); the next sweep removes them and resumes."""
    import glob
    import signal
    import time
    (tmp_path / "params.yaml").write_text(PARAMS.replace("EPOCHS", "200000"))
    cache = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "samkit", "sweep", "--studies", "simplicity",
                             "--cache", str(cache), "--workers", "2"], cwd=tmp_path, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while len(glob.glob(str(cache / "*.ckpt"))) < 2:
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.1)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    while any(str(cache) in _cmdline(pid) for pid in os.listdir("/proc") if pid.isdigit()):
        time.sleep(0.1)   # the workers die too (their locks go with them)
    left = sorted(os.path.basename(f) for f in glob.glob(str(cache / "*")))
    assert [f for f in left if f.startswith("sweep-")] and \
        len([f for f in left if f.endswith(".lock")]) == 2, left
    sweep.remove_debris(str(cache))   # what the next sweep.run does first
    # left: the checkpoints to resume (and a checkpoint write cut short, removed under the
    # run's lock when it resumes)
    assert sorted(os.listdir(cache)) == [f for f in left if ".ckpt" in f]


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""
