"""Faults and bad input: kill, corrupt, diverge, misconfigure — nothing lost, every error clear.

1. SIGKILL at many moments of a sweep (mid-epoch, during a checkpoint write, between the write
   and the rename, after training but before the result is stored, while the result JSON is
   written, between runs, at a random time); each time the cache holds only whole results, the
   rerun recomputes no finished run, and the final results equal an uninterrupted run's bit
   for bit.
2. A bad params.yaml makes ``python -m samkit stage width`` exit non-zero with one line and
   touch nothing under results/ or book/.
3. A corrupt, truncated or missing dataset gives ``python -m samkit train`` one ``error:`` line
   saying how to fix it (no traceback), and a sweep stores nothing.
4. A run with an absurd learning rate is recorded as diverged (with its epoch), the other runs
   finish, and the tables and figure show it.
5. Two sweep processes sharing one cache train each run once and never corrupt an entry.
"""
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import threading
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from samkit.analysis import plots, stats
from samkit.pipeline import results
from samkit.sweep import engine as sweep  # noqa: E402
from samkit.sweep import store
from samkit.data import files as image_files  # noqa: E402
from samkit.train.config import TrainConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EPOCHS, BATCHES_PER_EPOCH = 4, 8   # the child's configs: n_train 256, batch 32
WATCHDOG_S = 240

# A fork server: imports samkit once, then forks one process per sweep attempt (an attempt
# costs no interpreter start-up, so the test can kill many). Each forked child runs a tiny
# sweep with its stdout/stderr in files. With HOOKS=1 it announces the moments the test kills
# it at ("@<event> <count> [key]") and, if PAUSE_AT=<event>:<count>, prints PAUSED and waits
# there to be killed. The hooks only split writes in two and announce; the real checkpoint
# and result code (temp file + os.replace) is what runs.
FORK_SERVER = r'''
import io, json, os, sys, time, traceback

import torch
from samkit.sweep import engine as sweep
from samkit.sweep import store
from samkit.train import loop as train
from samkit.train.config import TrainConfig

BASE = dict(dataset="synthetic", model="mlp", width=8, n_train=256, n_val=64, batch_size=32,
            epochs=4, lr=0.05, schedule="step", device="cpu")


def sweep_main(cache):
    configs = [TrainConfig(**BASE, optimizer=o, seed=s) for s in (0, 1) for o in ("sgd", "sam")]
    if os.environ.get("ORDER") == "reverse":
        configs.reverse()
    pause = os.environ.get("PAUSE_AT", "")
    counts = {}

    def event(name, detail=""):
        counts[name] = counts.get(name, 0) + 1
        print(f"@{name} {counts[name]} {detail}".rstrip(), flush=True)
        if pause == f"{name}:{counts[name]}":
            print("PAUSED", flush=True)
            time.sleep(600)

    if os.environ.get("HOOKS") == "1":
        real_train, real_cached = store.train_run, store.cached_run
        real_save = torch.save
        hold = float(os.environ.get("HOLD", "0"))
        counter = os.environ.get("COUNTER")

        def train_run(cfg, **kw):
            key = store.run_key(cfg)
            if counter:
                with open(counter, "a") as f:
                    f.write(f"{key} {os.getpid()}\n")
            event("train-start", key)
            time.sleep(hold)
            result = real_train(cfg, **kw)
            event("trained", key)
            return result

        def cached_run(cfg, cache, **kw):
            result = real_cached(cfg, cache, **kw)
            event("run-done", result["key"])
            return result

        class Progress:  # train_epoch calls update() after every optimizer step
            def update(self, n):
                event("batch")

            def set_postfix(self, **kw):
                pass

            def close(self):
                pass

        def save(obj, path):
            buf = io.BytesIO()
            real_save(obj, buf)
            b = buf.getvalue()
            with open(path, "wb") as f:
                f.write(b[:len(b) // 2])
                f.flush()
                event("ckpt-partial")
                f.write(b[len(b) // 2:])
            event("ckpt-written")

        def dump(obj, f, **kw):
            s = json.dumps(obj, **kw)
            f.write(s[:len(s) // 2])
            f.flush()
            event("json-partial")
            f.write(s[len(s) // 2:])

        # the engine calls cached_run by its own name; the store trains through train_run
        store.train_run, sweep.cached_run = train_run, cached_run
        train._progress = lambda *args: Progress()
        torch.save, json.dump = save, dump

    go = os.environ.get("GO")
    print("READY", flush=True)
    while go and not os.path.exists(go):
        time.sleep(0.01)
    t0 = time.time()
    df = sweep.run_sweep(configs, cache=cache, progress=False, workers=1)  # hooks are in-process
    cached = {k: bool(c) for k, c in zip(df["key"], df["cached"])}
    rows = df.drop(columns=["seconds", "train_seconds", "cached"]).to_dict(orient="records")
    out = {"rows": rows, "cached": cached, "seconds": time.time() - t0}
    print("RESULT " + json.dumps(out, sort_keys=True, default=lambda o: o.item()), flush=True)


for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "wait":
        _, status = os.waitpid(cmd["pid"], 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            out = os.open(cmd["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            err = os.open(cmd["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.environ.update(cmd["env"])
            sweep_main(cmd["cache"])
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            print(f"EXIT {code}", flush=True)
            os._exit(code)
    print(pid, flush=True)
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    script = tmp_path_factory.mktemp("forkserver") / "fork_server.py"
    script.write_text(FORK_SERVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env, cwd=script.parent)
    p.attempts = []
    yield p
    for a in p.attempts:   # a failed test may leave one paused: end it
        if a.rc is None:
            a.kill()
    p.stdin.close()
    p.wait(timeout=60)


class Attempt:
    """One forked sweep process: its pid and its stdout lines, read as they come."""

    def __init__(self, server, tmp_path, cache, env):
        self.server, self.lines, self._buf = server, [], ""
        n = len(list(tmp_path.glob("attempt-*.out")))
        out, err = tmp_path / f"attempt-{n}.out", tmp_path / f"attempt-{n}.err"
        out.touch()
        self.err = err
        self._f = open(out)
        self._ask({"op": "run", "cache": str(cache), "out": str(out), "err": str(err),
                   "env": {k: str(v) for k, v in env.items()}})
        self.pid = int(server.stdout.readline())
        self.rc = None
        self._watchdog = threading.Timer(WATCHDOG_S, self.kill)
        self._watchdog.daemon = True
        self._watchdog.start()
        server.attempts.append(self)

    def _ask(self, cmd):
        self.server.stdin.write(json.dumps(cmd) + "\n")
        self.server.stdin.flush()

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _read(self):
        while True:
            chunk = self._f.readline()
            if not chunk:
                return
            self._buf += chunk
            if self._buf.endswith("\n"):
                self.lines.append(self._buf[:-1])
                self._buf = ""

    def wait_for(self, prefix) -> bool:
        """Poll the output until a line starts with ``prefix``; False if the process ends."""
        seen = 0
        deadline = time.time() + WATCHDOG_S
        while time.time() < deadline:
            self._read()
            for line in self.lines[seen:]:
                if line.startswith(prefix):
                    return True
                if line.startswith("EXIT"):
                    return False
            seen = len(self.lines)
            time.sleep(0.005)
        return False

    def finish(self) -> int:
        """Wait for the process to end (reaped: nothing of it runs any more)."""
        self._ask({"op": "wait", "pid": self.pid})
        self.rc = int(self.server.stdout.readline())
        self._watchdog.cancel()
        self._read()
        self._f.close()
        assert self.rc in (0, -signal.SIGKILL), self.err.read_text()
        return self.rc

    @property
    def started(self) -> set:
        return {ln.split()[2] for ln in self.lines if ln.startswith("@train-start")}

    @property
    def result(self) -> dict:
        [line] = [ln for ln in self.lines if ln.startswith("RESULT ")]
        return json.loads(line[len("RESULT "):])


def attempt(server, tmp_path, cache, pause=None, delay=None, **env):
    """Run the sweep on ``cache``; SIGKILL it at event ``pause`` ("<event>:<n>") or ``delay``
    seconds after it is ready. Returns (killed, the attempt)."""
    a = Attempt(server, tmp_path, cache, {"HOOKS": 1, "PAUSE_AT": pause or "", **env})
    if pause:
        if not a.wait_for("PAUSED"):
            a.finish()
            pytest.fail(f"never reached {pause}: {a.lines[-5:]}\n{a.err.read_text()}")
    elif delay is not None:
        assert a.wait_for("READY")
        time.sleep(delay)
    killed = False
    if pause or delay is not None:
        a._read()
        killed = not any(ln.startswith("EXIT") for ln in a.lines)
        if killed:
            a.kill()
    rc = a.finish()
    assert rc == (-signal.SIGKILL if killed else 0), (pause, delay, rc)
    return killed, a


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_cache(cache):
    """Every file a kill can leave is whole or ignorable: results parse and are complete,
    checkpoints load; anything else is a lock or an unrenamed temp file. Returns the
    finished results as {file: (sha256, mtime_ns)}."""
    done = {}
    for f in sorted(os.listdir(cache)) if os.path.isdir(cache) else []:
        path = os.path.join(cache, f)
        if f.endswith(".json"):
            with open(path) as fh:
                r = json.load(fh)
            assert r["status"] == "ok" and len(r["history"]) == EPOCHS, f
            assert store.run_key(TrainConfig(**r["config"])) == f[:-5]
            done[f] = (digest(path), os.stat(path).st_mtime_ns)
        elif f.endswith(".ckpt"):
            state = torch.load(path, map_location="cpu", weights_only=False)
            assert 1 <= state["epoch"] <= EPOCHS and state["status"] == "ok", f
        else:
            assert f.endswith(".lock") or ".tmp." in f, f"unexpected file {f} in the cache"
    return done


def stored(cache):
    """Stored results without what may differ between identical runs (time, provenance, and
    so the checksum over them)."""
    out = {}
    for f in sorted(os.listdir(cache)):
        if f.endswith(".json"):
            with open(os.path.join(cache, f)) as fh:
                r = json.load(fh)
            out[f] = {k: v for k, v in r.items()
                      if k not in ("seconds", "train_seconds", "provenance", "sha256")}
    return out


# ------------------------------------------------------------------------- 1. kill anywhere

def test_sigkill_anywhere_loses_nothing_and_matches_an_uninterrupted_sweep(server, tmp_path):
    ref_cache, cache = tmp_path / "ref", tmp_path / "runs"
    rng = random.Random(20240611)
    plan = [f"batch:{rng.randint(1, BATCHES_PER_EPOCH - 1)}",      # mid-epoch 1, first run
            f"ckpt-partial:{rng.randint(1, 2)}",                   # checkpoint half written
            f"ckpt-written:{rng.randint(1, 2)}",                   # written, not renamed
            "trained:1",                      # trained, result not stored (ckpt at last epoch)
            "json-partial:1",                 # result JSON half written
            "run-done:1",                     # between runs: first result stored
            f"batch:{BATCHES_PER_EPOCH + rng.randint(1, BATCHES_PER_EPOCH - 1)}",  # epoch 2
            "run-done:1"]                     # between runs: second result stored (the
    # first run, now cached, is read without passing through cached_run)
    done, moments = {}, []

    def after_kill(a, what):
        assert not a.started & {f[:-5] for f in done}, f"{what}: a finished run was retrained"
        now = check_cache(cache)
        assert all(now.get(f) == v for f, v in done.items()), f"{what}: a result changed"
        return now

    for pause in plan:
        killed, a = attempt(server, tmp_path, cache, pause=pause)
        moments.append(pause)
        done = after_kill(a, pause)
    assert len(done) == 2   # the plan finishes exactly two runs before its last kill

    ref = Attempt(server, tmp_path, ref_cache, {})   # an uninterrupted sweep
    assert ref.finish() == 0
    reference = ref.result
    for _ in range(3):  # kills at random times (a kill may come too late: the sweep is done)
        delay = rng.uniform(0, reference["seconds"] / 2)
        killed, a = attempt(server, tmp_path, cache, delay=delay)
        done = after_kill(a, f"random {delay:.3f} s")
        if killed:
            moments.append(f"random {delay:.3f} s")
    assert len(moments) >= 5, moments

    _, a = attempt(server, tmp_path, cache)   # to completion
    final = a.result
    assert final["rows"] == reference["rows"]   # bit for bit (floats round-trip exactly)
    assert json.dumps(final["rows"], sort_keys=True) == json.dumps(reference["rows"],
                                                                   sort_keys=True)
    assert stored(cache) == stored(ref_cache) and len(stored(cache)) == 4
    # exactly the runs finished before this last attempt come from the cache
    assert final["cached"] == {k: f"{k}.json" in done for k in final["cached"]}
    assert a.started == {k for k, c in final["cached"].items() if not c}
    now = check_cache(cache)
    assert all(now.get(f) == v for f, v in done.items())
    assert not [f for f in os.listdir(cache) if f.endswith(".ckpt")]  # removed on success
    assert not [f for f in os.listdir(cache) if ".tmp." in f]  # killed writers' debris too


# ------------------------------------------------------------------------- 2. bad params

def _negative_lr(p):
    p["width"]["cpu"]["base"]["lr"] = -0.1


def _bad_optimizer(p):
    p["width"]["cpu"]["grid"]["optimizer"] = ["sgd", "adamw"]


def _typo_in_other_study(p):  # every stage checks the whole file before training
    p["rho"]["cpu"]["base"]["widht"] = 32


BAD_PARAMS = {
    "negative lr": (_negative_lr, "width.cpu.base.lr: got -0.1"),
    "bad optimizer": (_bad_optimizer, "width.cpu.grid.optimizer[1]: got 'adamw'"),
    "typo in another study": (_typo_in_other_study, "rho.cpu.base.widht: unknown key"),
    "not yaml": (None, "params.yaml: not valid YAML"),
}


def snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size, digest(p))
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_bad_params_stop_the_stage_with_one_line_and_touch_nothing(tmp_path):
    procs = {}
    for name, (edit, _) in BAD_PARAMS.items():
        repo = tmp_path / name.replace(" ", "_")
        repo.mkdir()
        for f in ("dvc.yaml", "notebooks", "book"):
            src = REPO / f
            if src.is_dir():
                shutil.copytree(src, repo / f, ignore=shutil.ignore_patterns("_build"))
            else:
                shutil.copy(src, repo / f)
        # previous outputs that a refused stage must leave exactly as they are
        (repo / "book" / "studies").mkdir(parents=True, exist_ok=True)
        (repo / "book" / "studies" / "width.ipynb").write_text('{"cells": []}\n')
        for f, text in (("cpu/width/metrics.json", '{"n_runs": 1}\n'),
                        ("cpu/width/runs.csv", "seed,status\n0,ok\n"),
                        ("cpu/dvc_metrics/width.json", "{}\n"), ("runs/0123abcd.json", "{}\n")):
            (repo / "results" / f).parent.mkdir(parents=True, exist_ok=True)
            (repo / "results" / f).write_text(text)
        text = (REPO / "params.yaml").read_text()
        if edit is None:
            text += "\nwidth_extra: {unclosed: [1, 2\n"
        else:
            params = yaml.safe_load(text)
            edit(params)
            text = yaml.safe_dump(params, sort_keys=False)
        (repo / "params.yaml").write_text(text)
        before = snapshot(repo)
        procs[name] = (repo, before, subprocess.Popen(
            [sys.executable, "-m", "samkit", "stage", "width"], cwd=repo, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for name, (repo, before, p) in procs.items():
        out, err = p.communicate(timeout=WATCHDOG_S)
        assert p.returncode != 0, (name, out, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert BAD_PARAMS[name][1] in lines[0], (name, lines[0])
        assert "Traceback" not in err and out == ""
        assert snapshot(repo) == before, name   # nothing created, modified or removed


# ------------------------------------------------------------------------- 3. data faults

TRAIN_ARGS = ["train", "--dataset", "fashion_mnist", "--model", "mlp", "--width", "8",
              "--n-train", "100", "--n-test", "100", "--epochs", "1", "--quiet",
              "--device", "cpu"]

# `python -m samkit` on a machine without network and without the Debian package.
OFFLINE = r'''
import sys, pathlib
import samkit.data.files as files

def offline(name, root):
    raise OSError("[Errno 101] Network is unreachable")

files._torchvision_download = offline
files.DEBIAN_FASHION_DIR = pathlib.Path(sys.argv[1])
from samkit.__main__ import main
sys.exit(main(sys.argv[2:]))
'''


def _damaged_copy(good: Path, root: Path, damaged: str, damage) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in image_files.IDX_FILES:
        if f == damaged:
            (raw / f).write_bytes(damage(bytearray((good / f).read_bytes())))
        else:
            (raw / f).symlink_to(good / f)
    return raw / damaged


def _flip(b):
    b[len(b) // 3] ^= 0x10
    return bytes(b)


def _truncate(b):
    return bytes(b[:len(b) - 1000])


@pytest.fixture(scope="module")
def fmnist_raw(fmnist_root):
    return image_files._ensure_files("fashion_mnist", Path(fmnist_root), download=False)


def test_data_faults_give_one_line_with_the_fix_through_the_cli(fmnist_raw, tmp_path):
    flipped = _damaged_copy(fmnist_raw, tmp_path / "flip", "t10k-images-idx3-ubyte", _flip)
    truncated = _damaged_copy(fmnist_raw, tmp_path / "trunc", "train-labels-idx1-ubyte",
                              _truncate)
    offline = tmp_path / "offline.py"
    offline.write_text(OFFLINE)
    empty = tmp_path / "empty"
    fix = ["Delete it and rerun", "apt-get install dataset-fashion-mnist"]
    cases = {
        "flipped byte": ([*TRAIN_ARGS, "--data-root", str(tmp_path / "flip")],
                         ["fashion_mnist: corrupt file", str(flipped), *fix]),
        "truncated": ([*TRAIN_ARGS, "--data-root", str(tmp_path / "trunc")],
                      ["fashion_mnist: corrupt file", str(truncated), *fix]),
        "missing, offline": ([str(offline), str(tmp_path / "no-debian"), *TRAIN_ARGS,
                              "--data-root", str(empty)],
                             ["download failed", "Network is unreachable",
                              f"in {empty / 'FashionMNIST' / 'raw'}",
                              "apt-get install dataset-fashion-mnist"]),
        # a subset larger than the dataset is a bad value, refused before any data is read
        # (exit 2): tests/test_cli.py
    }
    procs = {}
    for name, (args, _) in cases.items():
        cmd = [sys.executable, *args] if args[0].endswith(".py") else \
              [sys.executable, "-m", "samkit", *args]
        procs[name] = subprocess.Popen(cmd, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
    for name, p in procs.items():
        out, err = p.communicate(timeout=WATCHDOG_S)
        assert p.returncode == 1, (name, out, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        for part in cases[name][1]:
            assert part in lines[0], (name, part, lines[0])
        assert "Traceback" not in err and out == "", name
    assert not [p for p in empty.rglob("*") if p.is_file()]  # nothing half-made left behind


def test_corrupt_data_makes_a_sweep_fail_loudly_and_store_nothing(fmnist_raw, tmp_path,
                                                                   monkeypatch):
    _damaged_copy(fmnist_raw, tmp_path / "flip", "train-images-idx3-ubyte", _flip)
    monkeypatch.setenv("SAMKIT_DATA", str(tmp_path / "flip"))
    cfg = TrainConfig(dataset="fashion_mnist", model="mlp", width=8, n_train=100,
                      n_test=100, epochs=1, device="cpu")
    cache = tmp_path / "runs"
    with pytest.raises(RuntimeError, match="corrupt file .*train-images-idx3-ubyte.*Delete it"):
        sweep.run_sweep([cfg], cache=str(cache), progress=False)
    assert not [f for f in os.listdir(cache) if not f.endswith(".lock")]


# ------------------------------------------------------------------------- 4. divergence

def test_divergence_is_recorded_kept_in_tables_and_marked_on_the_figure(tmp_path):
    base = dict(dataset="synthetic", model="mlp", n_train=128, n_val=32, batch_size=32,
                epochs=3, device="cpu")
    absurd = {(16, "sam", 1), (32, "sam", 0), (32, "sam", 1)}   # lr 1e8
    configs = [TrainConfig(**base, width=w, optimizer=o, seed=s,
                           lr=1e8 if (w, o, s) in absurd else 0.05)
               for w in (8, 16, 32) for s in (0, 1) for o in ("sgd", "sam")]
    cache = str(tmp_path / "runs")
    runs = sweep.run_sweep(configs, cache=cache, progress=False)
    assert len(runs) == 12   # the sweep went on after each divergence
    for _, r in runs.iterrows():
        full = store.load_result(r["key"], cache)
        if (r["width"], r["optimizer"], r["seed"]) in absurd:
            assert r["status"] == "diverged" and full["status"] == "diverged"
            assert r["diverged_epoch"] == full["diverged_epoch"] == len(full["history"]) >= 1
            assert full["final"] == {} and full["best"] == {}
        else:
            assert r["status"] == "ok" and r["best_test_loss"] < 10
            assert len(full["history"]) == 3
    again = sweep.run_sweep(configs, cache=cache, progress=False)   # diverged runs are cached too
    assert again["cached"].all() and (again["status"] == runs["status"]).all()

    gain = stats.paired(runs, "best_test_loss", {"optimizer": "sam"}, {"optimizer": "sgd"},
                        by=["width"])
    g = gain.set_index("width")
    assert list(g.index) == [8, 16, 32]   # the all-diverged width is kept, not dropped
    assert g.loc[8, ["n", "diverged"]].tolist() == [2, 0]
    assert g.loc[16, ["n", "diverged"]].tolist() == [1, 1]
    assert g.loc[32, ["n", "diverged"]].tolist() == [0, 2]
    assert g.loc[32, "estimate"] != g.loc[32, "estimate"]  # NaN, not a number made of nothing
    summary = stats.levels(runs, by=["optimizer", "width"], metric="best_test_loss")
    s = summary.set_index(["optimizer", "width"])
    assert s.loc[("sam", 16), ["n", "diverged"]].tolist() == [1, 1]
    assert s.loc[("sam", 32), ["n", "diverged"]].tolist() == [0, 2]
    assert s.xs("sgd")["diverged"].tolist() == [0, 0, 0]

    meta = results.save("faults", "cpu", runs, {"gain": gain}, params={}, seconds=1.0,
                        root=str(tmp_path / "results"))
    assert meta["n_diverged"] == 3 and meta["n_runs"] == 12
    _, tables = results.load("faults", "cpu", root=str(tmp_path / "results"))
    saved = tables["runs"]
    assert sorted(saved.loc[saved["status"] == "diverged", "diverged_epoch"]) == \
        sorted(runs.loc[runs["status"] == "diverged", "diverged_epoch"])
    assert tables["gain"]["diverged"].tolist() == [0, 1, 2]

    fig = plots.effect_vs(gain, "width", meta)
    try:
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert "1 diverged" in texts and "2 diverged" in texts
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------- 5. concurrent writers

def test_two_sweeps_sharing_a_cache_train_each_run_once(server, tmp_path):
    cache, counter, go = tmp_path / "runs", tmp_path / "trained.txt", tmp_path / "go"
    env = dict(HOOKS=1, HOLD=0.5, COUNTER=counter, GO=go)   # HOLD: trains slowly, lock held
    procs = [Attempt(server, tmp_path, cache, {**env, "ORDER": order})
             for order in ("forward", "reverse")]
    assert all(p.wait_for("READY") for p in procs)
    go.touch()   # both start the sweep together, from opposite ends
    assert [p.finish() for p in procs] == [0, 0]
    a, b = (p.result for p in procs)

    trained = counter.read_text().split()[::2]
    assert sorted(trained) == sorted(a["cached"]) and len(set(trained)) == 4  # each once
    for key in a["cached"]:   # exactly one of the two computed it, the other read it
        assert [a["cached"][key], b["cached"][key]].count(False) == 1
    assert 0 < list(a["cached"].values()).count(False) < 4   # they really ran side by side
    by_key = [{r["key"]: r for r in x["rows"]} for x in (a, b)]
    assert by_key[0] == by_key[1]
    assert sorted(f for f in os.listdir(cache) if not f.endswith(".lock")) == \
        sorted(f"{k}.json" for k in a["cached"])   # no temp files, no checkpoints left
    for f in os.listdir(cache):
        if f.endswith(".json"):
            with open(cache / f) as fh:
                assert json.load(fh)["status"] == "ok"
