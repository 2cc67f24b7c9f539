"""samkit.sweep.engine: grid expansion, run keys (those of the existing run cache never change),
the run cache (only what is missing is trained, sealed results, damaged ones refused, debris of
killed sweeps removed), worker processes and shards, the rows and the cost estimate."""
import dataclasses
import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import SYN, TINY_SYNTHETIC as TINY, TOY_COST_PARAMS as TOY
from samkit.pipeline import params
from samkit.sweep import engine as sweep
from samkit.sweep import store
from samkit.train import config
from samkit.train.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_expand_grid_arms_and_dedup():
    cfgs = sweep.expand({"dataset": "synthetic", "model": "mlp"},
                        {"optimizer": ["sgd", "sam"], "rho": [0.05, 0.1], "seed": [0, 1]},
                        [{"width": [4, 8]}, {"width": 16, "epochs": 3}])
    # SGD ignores rho: one SGD run per (width, seed), two SAM runs
    assert len(cfgs) == 3 * 2 * (1 + 2)
    assert {c.width for c in cfgs} == {4, 8, 16}
    assert all(c.epochs == 3 for c in cfgs if c.width == 16)
    assert len({store.run_key(c) for c in cfgs}) == len(cfgs)


def test_run_key_ignores_execution_fields():
    a = TrainConfig(**TINY)
    assert store.run_key(a) == store.run_key(TrainConfig(**{**TINY, "device": "auto"}, tag="x"))
    assert store.run_key(a) != store.run_key(TrainConfig(**{**TINY, "seed": 1}))


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
    path = os.path.join(cache, f"{store.run_key(cfg)}.json")
    with open(path) as f:
        stored = json.load(f)
    old = {k: v for k, v in stored.items() if k not in ("format", "train_seconds")}
    with open(path, "w") as f:
        json.dump(old, f)  # as written before train_seconds existed
    again = sweep.run_sweep([cfg], cache=cache, progress=False)
    assert not again["cached"].any() and again["train_seconds"].notna().all()
    assert sweep.run_sweep([cfg], cache=cache, progress=False)["cached"].all()


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
        a, b = (store.load_result(k, str(tmp_path / d)) for d in "ab")
        assert a["history"] == b["history"] and b["numerics"] == store.NUMERICS_VERSION
    assert sorted(os.listdir(tmp_path / "b")) == sorted(os.listdir(tmp_path / "a"))


def test_a_shard_takes_every_nth_run(tmp_path):
    cfgs = [TrainConfig(**TINY, seed=s) for s in range(3)]
    sweep.train_missing(cfgs, str(tmp_path), progress=False, shard=(1, 2))
    # only run 1, and no lock file: shards are disjoint, locks over NFS are not trusted
    assert sorted(os.listdir(tmp_path)) == [f"{store.run_key(cfgs[1])}.json"]


def test_numerics_version_is_part_of_the_key(monkeypatch):
    cfg = TrainConfig(**TINY)
    before = store.run_key(cfg)
    monkeypatch.setattr(store, "NUMERICS_VERSION", store.NUMERICS_VERSION + 1)
    assert store.run_key(cfg) != before


# ----------------------------------------------------------------------------- a trusted cache

def _one_run(tmp_path):
    cache = str(tmp_path / "runs")
    cfg = TrainConfig(**TINY)
    sweep.run_sweep([cfg], cache=cache, progress=False)
    return cfg, cache, os.path.join(cache, f"{store.run_key(cfg)}.json")


def test_a_truncated_or_edited_result_is_refused_by_name_never_used(tmp_path):
    cfg, cache, path = _one_run(tmp_path)
    text = open(path).read()
    stored = json.loads(text)
    assert list(stored)[-1] == "sha256" and stored["sha256"] == store._digest(stored)
    edited = {**stored, "best": {**stored["best"], "test_loss": 0.001}}   # a hand edit
    damages = {"truncated": (text[:len(text) // 2], "not a stored result (truncated"),
               "edited": (json.dumps(edited, indent=1), "checksum mismatch (edited or damaged")}
    for name, (damaged, why) in damages.items():
        with open(path, "w") as f:
            f.write(damaged)
        for read in (lambda: sweep.run_sweep([cfg], cache=cache, progress=False),
                     lambda: store.load_result(store.run_key(cfg), cache)):
            with pytest.raises(store.CacheError) as e:
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
    with pytest.raises(store.CacheError) as e:
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
    store.remove_debris(str(cache))   # what the next sweep.run does first
    # left: the checkpoints to resume (and a checkpoint write cut short, removed under the
    # run's lock when it resumes)
    assert sorted(os.listdir(cache)) == [f for f in left if ".ckpt" in f]


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# ----------------------------------------------------------------------------- run keys

# The research base of params.yaml (cpu profile), and run keys computed by the code before the
# new fields existed (commit a7de158): they must never change.
RESEARCH = dict(dataset="fashion_mnist", model="mlp", depth=2, n_train=10000, n_val=5000,
                n_test=0, data_seed=-1, rho=0.05, lr=0.1, momentum=0.9, weight_decay=0.0001,
                batch_size=128, epochs=60, schedule="step3", eval_every=3, early_stopping=True)


PINNED_KEYS = [
    (dict(optimizer="sgd", width=8, seed=5), "075b56d122a3e658"),
    (dict(optimizer="sam", width=32, seed=0), "1e6d91e0400fa249"),
    (dict(optimizer="asam", width=32, seed=1, rho=0.5), "510bd33263f13c8d"),
    (dict(optimizer="sam", width=512, seed=4, label_noise=0.4), "294af14928a6302c"),
    (dict(optimizer="sgd", width=512, seed=2, epochs=120), "b878c2108cd25be2"),
]


@pytest.mark.parametrize("extra, key", PINNED_KEYS)
def test_keys_of_existing_configs_are_unchanged(extra, key):
    cfg = TrainConfig(**{**RESEARCH, **extra})
    assert store.run_key(cfg) == key
    assert not set(config.KEY_OMITTED_AT_DEFAULT) & set(cfg.key_dict())
    # spelling out the defaults is the same run
    same = TrainConfig(**{**RESEARCH, **extra, **config.KEY_OMITTED_AT_DEFAULT})
    assert store.run_key(same) == key


def _tracked_runs():
    try:
        out = subprocess.run(["git", "ls-files", "results/runs"], cwd=REPO, capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("git is not available")
    runs = [p for p in out if p.endswith(".json") and os.path.exists(os.path.join(REPO, p))]
    if not runs:
        pytest.skip("no committed run cache in this checkout")
    return runs


def test_every_committed_cache_entry_keeps_its_key():
    """Each committed result, stored before the new fields existed, is found again: its own
    config hashes to its file name, and the width study's cpu configs find the entries."""
    tracked = _tracked_runs()
    for path in tracked:
        with open(os.path.join(REPO, path)) as f:
            stored = json.load(f)["config"]
        key = os.path.basename(path)[:-len(".json")]
        assert store.run_key(TrainConfig(**stored)) == key, path
    with open(os.path.join(REPO, "params.yaml")) as f:
        section = yaml.safe_load(f)["width"]
    width_keys = {store.run_key(c) for c in params.study_configs("width", section, "cpu")}
    found = {os.path.basename(p)[:-len(".json")] for p in tracked} & width_keys
    assert found, "no committed run of the width study's cpu configs is found by its key"
    for key in found:
        assert os.path.exists(os.path.join(REPO, "results", "runs", f"{key}.json"))


def test_new_options_change_the_key_only_where_they_act():
    def key(**kw):
        return store.run_key(TrainConfig(**{**SYN, **kw}))
    sam = key(optimizer="sam")
    assert key(optimizer="sam", sam_interval=5) != sam
    assert key(optimizer="asam", sam_interval=5) != key(optimizer="asam")
    assert key(optimizer="looksam") != sam
    assert key(optimizer="looksam", looksam_alpha=0.5) != key(optimizer="looksam")
    assert key(optimizer="looksam", sam_interval=10) != key(optimizer="looksam")
    assert key(optimizer="msam") not in (sam, key(optimizer="sgd"))
    assert key(optimizer="msam", rho=0.3) != key(optimizer="msam")
    # ignored options: one cache entry whatever their value
    assert key(optimizer="sgd", sam_interval=5, looksam_alpha=0.1) == key(optimizer="sgd")
    assert key(optimizer="sam", looksam_alpha=0.1) == sam
    assert key(optimizer="msam", sam_interval=5, eta=0.5) == key(optimizer="msam")
    assert key(optimizer="looksam", eta=0.5) == key(optimizer="looksam")


def test_old_results_derive_grad_evals_exactly():
    """A result of the cpu profile's kind stored before the count existed (no grad_evals, no
    new config fields): epochs x ceil(10000 / 128) steps, x2 for SAM; diverged: its epochs."""
    def old(optimizer, status="ok", diverged_epoch=None, **kw):
        stored = dataclasses.asdict(TrainConfig(**{**RESEARCH, "optimizer": optimizer, **kw}))
        for k in config.KEY_OMITTED_AT_DEFAULT:
            stored.pop(k)
        return {"config": stored, "status": status, "diverged_epoch": diverged_epoch,
                "params": 1, "nonzero_params": 1, "seconds": 1.0}
    assert sweep.to_row(old("sgd"))["grad_evals"] == 60 * 79
    assert sweep.to_row(old("sam"))["grad_evals"] == 2 * 60 * 79
    assert sweep.to_row(old("sgd", epochs=120))["grad_evals"] == 120 * 79
    assert sweep.to_row(old("asam", n_train=0))["grad_evals"] == 2 * 60 * math.ceil(55000 / 128)
    assert sweep.to_row(old("sam", "diverged", 9))["grad_evals"] == 2 * 9 * 79
    assert math.isnan(sweep.to_row(old("sam", "diverged", None))["grad_evals"])


# ----------------------------------------------------------------------------- what a sweep costs

def test_the_estimate_scales_measured_runs_by_passes(tmp_path):
    """A stored sgd run of width 5 that took 60 s for 20 epochs of 12 examples (one full batch
    a step): 0.25 s per example and pass. SAM takes two passes a step, and 40 epochs twice the
    steps; width 10, not measured, is scaled from the nearest width by (10/5)^2; a model the
    cache never ran takes samkit.sweep.engine.REFERENCE_RATES."""
    from samkit.sweep import engine as sweep
    from samkit.train.config import TrainConfig
    base = yaml.safe_load(TOY.replace("EPOCHS", "20").replace("SEEDS", "[0]")
                          .replace("MAX", ""))["simplicity"]["quick"]["base"]
    cfg = TrainConfig(**base, width=5, optimizer="sgd")
    cache = tmp_path / "runs"
    cache.mkdir()
    stored = {"config": dataclasses.asdict(cfg), "status": "ok", "seconds": 60.0}
    (cache / f"{store.run_key(cfg)}.json").write_text(json.dumps(store.sealed(stored)))
    hours = {}
    for name, kw in {"measured": {}, "sam": {"optimizer": "sam"}, "40 epochs": {"epochs": 40},
                     "width 10": {"width": 10}, "seed 1": {"seed": 1}}.items():
        todo, hours[name] = sweep.estimate([dataclasses.replace(cfg, **kw)], str(cache))
        assert len(todo) == (0 if name == "measured" else 1)
    assert hours == pytest.approx({"measured": 0, "sam": 120 / 3600, "40 epochs": 120 / 3600,
                                   "width 10": 240 / 3600, "seed 1": 60 / 3600})
    width, rate = sweep.REFERENCE_RATES["one_hidden_relu"]
    todo, h = sweep.estimate([dataclasses.replace(cfg, width=width)], str(tmp_path / "empty"))
    assert h == pytest.approx(20 * 12 * rate / 3600)
