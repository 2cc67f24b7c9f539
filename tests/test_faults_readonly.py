"""A run cache that holds every run needs no write access: a sweep over it, the worker's body
and a single cached run read it without taking a lock (e.g. a read-only checkout, or a cache
shared read-only between users).

Root ignores file permissions, so read-only is made two ways: every write under the cache
refused in-process (open, os.open, mkdir, rename, remove, temp files: what a lock or a result
write would use), and a real read-only bind mount in a private mount namespace (``unshare``)
for the ``samkit sweep`` command."""
import builtins
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import TOY_SIMPLICITY_PARAMS

from samkit.sweep import engine as sweep
from samkit.sweep import store
from samkit.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
BASE = dict(dataset="synthetic", model="mlp", width=4, n_train=32, batch_size=16, epochs=2,
            device="cpu")


def _refuse_writes_under(monkeypatch, folder):
    """Every write access under ``folder`` raises PermissionError, as on a read-only copy."""
    folder = os.path.realpath(folder)

    def inside(path):
        try:
            return os.path.realpath(os.fspath(path)).startswith(folder)
        except TypeError:  # a file descriptor
            return False

    def refuse(path):
        raise PermissionError(13, "Permission denied (read-only run cache)", os.fspath(path))

    real_open, real_os_open = builtins.open, os.open

    def fake_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        if inside(path) and flags & writes:
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guard(real):
        def fake(path, *args, **kwargs):
            if inside(path):
                refuse(path)
            return real(path, *args, **kwargs)
        return fake

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    for name in ("mkdir", "remove", "unlink", "rmdir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    monkeypatch.setattr(os, "replace", lambda src, dst: refuse(dst) if inside(dst) or
                        inside(src) else shutil.move(src, dst))
    real_mkstemp = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, dir=None, **k: refuse(dir) if dir and
                        inside(dir) else real_mkstemp(*a, dir=dir, **k))
    monkeypatch.setattr(os, "makedirs", lambda path, *a, exist_ok=False, **k: None
                        if exist_ok and os.path.isdir(path) else refuse(path))


def test_a_fully_cached_sweep_reads_a_read_only_cache(tmp_path, monkeypatch, one_thread):
    cache = tmp_path / "runs"
    configs = [TrainConfig(**BASE, optimizer=o, seed=s) for o in ("sgd", "sam") for s in (0, 1)]
    first = sweep.run_sweep(configs, cache=str(cache), progress=False, workers=1)
    before = {f: (cache / f).read_bytes() for f in sorted(os.listdir(cache))}

    _refuse_writes_under(monkeypatch, cache)
    with pytest.raises(PermissionError):   # the guard works: a lock could not be taken
        open(cache / "probe.lock", "a")
    again = sweep.run_sweep(configs, cache=str(cache), progress=False)
    assert again["cached"].all() and len(again) == 4
    assert again["key"].tolist() == first["key"].tolist()
    for cfg in configs:                     # one run, as a notebook or a worker asks for it
        r = store.cached_run(cfg, str(cache))
        assert r["cached"] and r["key"] == store.run_key(cfg)
    sweep.train_missing(configs, str(cache), progress=False)   # a worker: nothing to do
    monkeypatch.undo()
    assert {f: (cache / f).read_bytes() for f in sorted(os.listdir(cache))} == before


PARAMS = TOY_SIMPLICITY_PARAMS


def test_samkit_sweep_on_a_read_only_bind_mount(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    (tmp_path / "params.yaml").write_text(PARAMS)
    cache = tmp_path / "runs"
    sweep_cmd = [sys.executable, "-m", "samkit", "sweep", "--params", "params.yaml",
                 "--studies", "simplicity", "--cache", str(cache), "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(sweep_cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "2 ok" in r.stdout, r.stdout + r.stderr
    before = {f: (cache / f).read_bytes() for f in sorted(os.listdir(cache))}

    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 77; '
              'if touch "$1/write-probe" 2>/dev/null; then echo WRITABLE; exit 78; fi; '
              'shift; exec "$@"')
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script,
                        "sh", str(cache), *sweep_cmd], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode == 77 or "unshare failed" in r.stderr:
        pytest.skip(f"cannot bind-mount read-only here: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 of 2 runs from the run cache" in r.stdout and "2 ok, 0 diverged" in r.stdout
    assert {f: (cache / f).read_bytes() for f in sorted(os.listdir(cache))} == before
