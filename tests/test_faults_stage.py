"""A study stage that fails, is interrupted or is killed leaves every published output byte for
byte as it was, and Ctrl-C stops it within seconds.

Each test works on a clone of this repository (its committed history and dvc.lock, with this
checkout's samkit/, notebooks/ and dvc.yaml) running the simplicity study at toy scale (1-D
data: no dataset needed; two runs of 20000 full-batch steps, a checkpoint every 1000), with
outputs left by an earlier run in place. The faults are real: a bad value, a sweep worker
SIGKILLed mid-run (a crash), SIGKILL to the whole `dvc repro`, Ctrl-C (SIGINT to dvc's process
group, as a terminal sends it), SIGTERM to `samkit stage` alone, and a SIGINT sent to
`samkit sweep` alone (its workers do not get it unless it is forwarded).
"""
import glob
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from samkit.pipeline import params as params_mod
from samkit.sweep import store
from samkit.train.build import build
from samkit.train.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STUDY = "simplicity"
PARAMS = """profile: quick
simplicity:
  quick:
    base: {dataset: toy1d, model: one_hidden_relu, lr: 0.005, momentum: 0.9,
           weight_decay: 0.0, schedule: constant, batch_size: 12, epochs: 20000,
           eval_every: 1000, rho: 0.1, early_stopping: false}
    grid: {width: [5], optimizer: [sgd, sam], seed: [0]}
"""
# What an earlier, successful run published (a results folder, DVC metrics, the book's page).
PREVIOUS = {"results/quick/simplicity/metrics.json": '{"n_runs": 2}\n',
            "results/quick/simplicity/runs.csv": "seed,status\n0,ok\n",
            "results/quick/simplicity/summary.csv": "width,ratio\n5,1.0\n",
            "results/quick/dvc_metrics/simplicity.json": '{"n_runs": 2}\n'}
STOP_S = 5    # Ctrl-C must stop the stage within this, on a busy machine (it took 10.6 s)


def _env(code=REPO):
    """The environment of the commands: this venv, one thread, samkit from ``code``."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture
def work(tmp_path):
    """The clone; on the way out, no process of it is left running."""
    work = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True, timeout=300)
    ignore = shutil.ignore_patterns("__pycache__", "*.tmp.*")
    for name in ("samkit", "notebooks"):
        shutil.rmtree(work / name)
        shutil.copytree(REPO / name, work / name, ignore=ignore)
    # The stage template must run this study even while the published book queues it.
    spec = (REPO / "dvc.yaml").read_text()
    spec = re.sub(r"- studies: \[", f"- studies: [{STUDY}, ", spec, count=1) \
        if not re.search(rf"- studies: \[[^\]]*\b{STUDY}\b", spec) else spec
    (work / "dvc.yaml").write_text(spec)
    (work / "params.yaml").write_text(PARAMS)
    # An empty run cache: the committed one may hold these very runs (the toy config is the
    # cpu profile's narrowest 1-D run), and the tests need training under way.
    shutil.rmtree(work / "results" / "runs", ignore_errors=True)
    page = work / "book" / "studies" / f"{STUDY}.ipynb"
    if not page.exists():  # a published page to keep intact (the notebook itself will do)
        page.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "notebooks" / f"{STUDY}.ipynb", page)
    for rel, text in PREVIOUS.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    assert (work / "book" / "studies" / f"{STUDY}.ipynb").exists()
    yield work
    for pid in _processes_of(work):
        _kill(pid)


def _processes_of(work):
    """Live processes started in the clone (dvc, samkit, the kernel, its workers)."""
    root, found = os.path.realpath(work), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (cwd == root or cwd.startswith(root + os.sep)) and state != "Z":
            found.append(int(entry))
    return found


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(work):
    """Every file a stage may touch: its outputs (and all of results/ and book/), dvc.lock;
    not the run cache, nor temporary files (``debris``)."""
    files = [work / "dvc.lock"]
    for top in ("results", "book"):
        files += [p for p in (work / top).rglob("*")
                  if p.is_file() and "runs" not in p.parts and ".tmp." not in p.name]
    return {str(p.relative_to(work)): (_digest(p), p.stat().st_mtime_ns) for p in sorted(files)}


def debris(work):
    return sorted(glob.glob(str(work / "book" / "studies" / "*.tmp.*"))
                  + glob.glob(str(work / ".stage.tmp.*")))


def cache_debris(work):
    """What a stopped sweep must not leave in the run cache: its work list, lock files."""
    runs = work / "results" / "runs"
    return sorted(glob.glob(str(runs / "sweep-*.json")) + glob.glob(str(runs / "*.lock")))


def start(work, *cmd, code=None, shell=None):
    """``cmd`` in ``work``, in a process group of its own (as a terminal's foreground job),
    with samkit from ``code`` (default: ``work``, the clone) and ``$SHELL`` set to ``shell``."""
    log = open(work.parent / f"{Path(cmd[0]).name}-{time.time_ns()}.log", "w+")
    env = _env(code or work)
    if shell:
        env["SHELL"] = shell
    # A foreground job takes Ctrl-C even when the test suite itself runs as a background job
    # (`pytest &`), which starts with SIGINT ignored: ignored signals survive exec, and
    # `samkit stage` rightly leaves an ignored SIGINT alone.
    proc = subprocess.Popen(list(cmd), cwd=work, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_default_sigint)
    proc.log = log
    return proc


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def output(proc):
    proc.log.seek(0)
    return proc.log.read()


def wait_mid_run(work, proc, timeout=300):
    """Until a run has written its first checkpoint (training under way, not finished)."""
    deadline = time.time() + timeout
    while not glob.glob(str(work / "results" / "runs" / "*.ckpt")):
        assert proc.poll() is None, output(proc)
        assert time.time() < deadline, output(proc)
        time.sleep(0.1)


def start_mid_run(work, *cmd, **kw):
    """``start(work, *cmd)``, returned once training is under way (``wait_mid_run``)."""
    proc = start(work, *cmd, **kw)
    wait_mid_run(work, proc)
    return proc


def sweep_workers(work):
    """The live sweep worker processes started in ``work``."""
    return [pid for pid in _processes_of(work)
            if b"samkit.sweep.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def finish(proc, timeout=600):
    proc.wait(timeout=timeout)
    return proc.returncode, output(proc)


def no_processes_left(work, within=10):
    deadline = time.time() + within
    while _processes_of(work) and time.time() < deadline:
        time.sleep(0.2)
    return _processes_of(work)


def study_configs():
    return params_mod.study_configs(STUDY, yaml.safe_load(PARAMS)[STUDY], "quick")


def assert_resumable(work):
    """A run stopped mid-way left a checkpoint the trainer resumes from (same config)."""
    ckpts = glob.glob(str(work / "results" / "runs" / "*.ckpt"))
    assert ckpts, "no checkpoint left to resume from"
    by_key = {store.run_key(c): c for c in study_configs()}
    for path in ckpts:
        cfg = by_key[Path(path).stem]
        _, model, opt, sched, _ = build(cfg)
        state = load_checkpoint(path, cfg, model, opt, sched)
        assert state is not None and 1 <= state["epoch"] < cfg.epochs, path


# ----------------------------------------------------------------------------- A. failures

@pytest.mark.slow
def test_a_bad_value_fails_the_stage_and_leaves_its_outputs(work):
    (work / "params.yaml").write_text(PARAMS.replace("rho: 0.1", "rho: -0.05"))
    before = snapshot(work)
    rc, out = finish(start(work, "dvc", "repro", f"study@{STUDY}"))
    assert rc != 0 and "error: simplicity.quick.base.rho: got -0.05; allowed: a number >= 0" \
        in out, out
    assert snapshot(work) == before   # DVC removed nothing, the stage touched nothing
    assert not debris(work)


@pytest.mark.slow
def test_a_crash_mid_run_leaves_the_outputs(work):
    before = snapshot(work)
    proc = start_mid_run(work, "dvc", "repro", f"study@{STUDY}")
    workers = sweep_workers(work)
    assert workers, "the study trains in worker processes"
    _kill(workers[0])   # as the OOM killer would
    rc, out = finish(proc)
    assert rc != 0 and "error: simplicity: notebook failed" in out, out
    assert "a sweep worker failed" in out
    assert snapshot(work) == before
    assert not debris(work)
    assert not no_processes_left(work)


@pytest.mark.slow
def test_sigkill_leaves_the_outputs_and_the_next_start_cleans_up(work):
    before = snapshot(work)
    proc = start_mid_run(work, "dvc", "repro", f"study@{STUDY}")
    os.killpg(proc.pid, signal.SIGKILL)   # dvc, the shell, samkit stage: nothing can clean up
    proc.wait(timeout=60)
    # The kernel (a session of its own) sees its parent gone and exits; its sweep workers
    # would train on into the run cache: end them (never the outputs' business).
    time.sleep(3)
    for pid in _processes_of(work):
        _kill(pid)
    assert snapshot(work) == before
    left = debris(work)   # the half-written notebook and the copy of the outputs
    assert any(p.endswith(".ipynb") for p in left) and any(".stage.tmp." in p for p in left)
    # a kill in the middle of writing the results would have left some files new, some old
    (work / "results/quick/simplicity/runs.csv").write_text("seed,status\n0,ok\n1,ok\n")
    (work / "results/quick/simplicity/extra.csv").write_text("x\n")

    (work / "params.yaml").write_text(PARAMS.replace("rho: 0.1", "rho: -0.05"))
    r = subprocess.run([sys.executable, "-m", "samkit", "stage", STUDY], cwd=work,
                       env=_env(work), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert not debris(work)                 # the dead stage's leftovers are gone
    assert snapshot(work) == before         # and the outputs are back as they were


# ----------------------------------------------------------------------------- B. signals

@pytest.mark.slow
def test_ctrl_c_stops_dvc_repro_within_seconds_and_leaves_a_resumable_checkpoint(work):
    before = snapshot(work)
    # SHELL=/bin/sh: DVC runs cmd through it, and dash (unlike bash) forks instead of
    # exec'ing a lone command; a shell left between DVC and the stage dies at Ctrl-C.
    proc = start_mid_run(work, "dvc", "repro", f"study@{STUDY}", shell="/bin/sh")
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)   # what Ctrl-C in a terminal does
    rc, out = finish(proc, timeout=120)
    took = time.time() - t0
    assert "interrupted: simplicity: stopped by SIGINT" in out, out
    assert "exited with 130" in out and rc != 0, out
    assert took < STOP_S, f"took {took:.1f} s to stop"
    assert not no_processes_left(work), "the kernel or a sweep worker is still running"
    assert snapshot(work) == before   # dvc.lock included: nothing recorded
    assert not debris(work) and not cache_debris(work)
    assert_resumable(work)


@pytest.mark.slow
def test_sigterm_to_the_stage_alone_stops_its_kernel_and_workers(work):
    before = snapshot(work)
    proc = start_mid_run(work, sys.executable, "-m", "samkit", "stage", STUDY)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    rc, out = finish(proc, timeout=120)
    took = time.time() - t0
    assert rc == 128 + signal.SIGTERM, out
    assert "interrupted: simplicity: stopped by SIGTERM" in out
    assert took < STOP_S, f"took {took:.1f} s to stop"
    assert not no_processes_left(work), "the kernel or a sweep worker is still running"
    assert snapshot(work) == before
    assert not debris(work) and not cache_debris(work)
    assert_resumable(work)


@pytest.mark.slow
def test_sweep_forwards_a_sigint_sent_to_it_alone_to_its_workers(tmp_path):
    (tmp_path / "params.yaml").write_text(PARAMS)
    cache = tmp_path / "results" / "runs"
    proc = start(tmp_path, sys.executable, "-m", "samkit", "sweep", "--studies", STUDY,
                 "--workers", "2", "--cache", str(cache), code=REPO)
    try:
        wait_mid_run(tmp_path, proc)
        workers = sweep_workers(tmp_path)
        assert len(workers) == 2
        t0 = time.time()
        os.kill(proc.pid, signal.SIGINT)   # not the group: the workers do not get this one
        rc, out = finish(proc, timeout=120)
        assert rc == 130 and "interrupted (SIGINT)" in out, out
        assert time.time() - t0 < STOP_S, "the sweep waited for its workers to finish"
        assert not no_processes_left(tmp_path)
        finished = [f for f in os.listdir(cache) if f.endswith(".json")]
        assert not finished, "a run finished: it was not interrupted"   # nor a work list left
        assert not [f for f in os.listdir(cache) if f.endswith(".lock")]
        assert_resumable(tmp_path)
    finally:
        for pid in _processes_of(tmp_path):
            _kill(pid)
