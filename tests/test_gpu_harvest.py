"""The GPU harvest and the fast GPU path, checked on a CPU so that neither rots between GPU
allocations:

* TrainConfig.compile: validation, and run keys that stay the eager run's;
* samkit.optim.graph_step' bookkeeping (warm-up per step kind, static inputs, a new capture when the LR
  changes, eager short batches, the SAM counters a replay must advance), with a stand-in for
  CUDA whose "capture" runs the step's Python once and undoes its numbers, and whose "replay"
  runs the step again without its Python side effects: the trainer's compile="graph" must then
  give the eager run's numbers exactly (the real CUDA checks are tests/test_gpu.py);
* benchmarks/step_time.py's --budget-s and --resume;
* samkit.sweep.streams: runs at once in threads, stored by the sweep engine, stopped at a
  deadline and resumed, with the numbers of the engine's own serial path;
* tools/gpu_harvest.py: its budget against the device's limits, and `all --dry-run` (toy size
  on the CPU) as on the GPU machine, then ingest into a scratch repository and the headline
  study's gpu table.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from samkit.optim import graph_step as graphs
from samkit.sweep import store
from samkit.train import loop as train
from samkit.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
NO_GPU = "compile: got 'graph' on device cpu; allowed: eager (CUDA graphs need a GPU)"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- the config field

def test_compile_is_validated_in_one_line():
    with pytest.raises(ValueError) as e:
        TrainConfig(compile="graph", device="cpu")
    assert str(e.value) == NO_GPU
    with pytest.raises(ValueError) as e:
        TrainConfig(compile="jit")
    assert "compile: got 'jit'; allowed: eager, graph" in str(e.value)
    TrainConfig(compile="graph", device="cuda")  # checked where it runs, not where it is written


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: graph runs there")
def test_graph_without_cuda_is_one_clear_error():
    with pytest.raises(ValueError) as e:  # device auto resolves to the CPU here
        train.train(TrainConfig(dataset="synthetic", model="mlp", width=4, n_train=16, epochs=1,
                              compile="graph"))
    assert str(e.value) == NO_GPU


def test_compile_leaves_run_keys_alone():
    """A key pinned before the field existed (tests/test_engine.py), whatever compile
    and device say: a graph run fills the cache entry of the eager config."""
    research = dict(dataset="fashion_mnist", model="mlp", depth=2, n_train=10000, n_val=5000,
                    n_test=0, data_seed=-1, rho=0.05, lr=0.1, momentum=0.9,
                    weight_decay=0.0001, batch_size=128, epochs=60, schedule="step3",
                    eval_every=3, early_stopping=True, optimizer="sam", width=32, seed=0)
    for extra in ({}, dict(compile="eager"), dict(compile="graph", device="cuda")):
        cfg = TrainConfig(**research, **extra)
        assert store.run_key(cfg) == "1e6d91e0400fa249"
        assert "compile" not in cfg.key_dict()


# ----------------------------------------------------------------------------- graph bookkeeping

def _optimizers(step):
    return [o for o in (step.opt, getattr(step.opt, "base_optimizer", None)) if o is not None]


def _state_tensors(step):
    """Every tensor a training step may change in place: weights, BN buffers, optimizer state."""
    tensors = list(step.model.state_dict(keep_vars=True).values())
    for opt in _optimizers(step):
        for state in opt.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
    return tensors


def _state_layout(step):
    """Which optimizer state exists (per parameter and name; on a CPU SAM swaps storages, so
    the tensor objects themselves change from step to step)."""
    return [sorted((id(p), k) for p, state in opt.state.items() for k, v in state.items()
                   if torch.is_tensor(v)) for opt in _optimizers(step)]


class _FakeGraph:
    def __init__(self, backend, step, loss, key, kind):
        self.backend, self.step, self.loss, self.key, self.kind = backend, step, loss, key, kind

    def replay(self):
        """The step on the static inputs, leaving the Python-side counters alone (GraphStep
        advances them), with the hyperparameters and of the kind it was captured for."""
        s = self.step
        assert graphs.hyper_key(s.opt) == self.key, "replayed with stale hyperparameters"
        assert graphs.step_kind(s.opt) == self.kind, "replayed a graph of another step kind"
        assert len(s.static[0]) == s.batch_size
        saved = {n: getattr(s.opt, n) for n in graphs.COUNTERS if hasattr(s.opt, n)}
        self.loss.copy_(s._step(*s.static))
        for n, v in saved.items():
            setattr(s.opt, n, v)
        self.backend.replays += 1


class _FakeCuda:
    """samkit.optim.graph_step' CUDA calls, on a CPU: streams are nothing; a capture runs the step's Python
    once and puts every tensor back (a capture launches no kernel), and must create no new
    state (the eager warm-up made it all)."""

    def __init__(self):
        self.captures = self.replays = 0

    def stream(self, device):
        return None

    def on(self, stream):
        return contextlib.nullcontext()

    def join(self, waiting, other):
        pass

    def current(self):
        return None

    def capture(self, step):
        tensors, layout = _state_tensors(step), _state_layout(step)
        key, kind = graphs.hyper_key(step.opt), graphs.step_kind(step.opt)
        saved = [t.detach().clone() for t in tensors]
        loss = step._step(*step.static)
        assert _state_layout(step) == layout, (
            "the captured step created optimizer state: the warm-up was too short")
        with torch.no_grad():
            for t, v in zip(tensors, saved):
                t.copy_(v)
        self.captures += 1
        holder = loss.detach().clone()
        return _FakeGraph(self, step, holder, key, kind), holder


@pytest.fixture()
def fake_cuda(monkeypatch):
    fake = _FakeCuda()
    monkeypatch.setattr(graphs, "BACKEND", fake)
    monkeypatch.setattr(graphs, "require_cuda", lambda device: None)
    return fake


SYN = dict(dataset="synthetic", model="mlp", width=8, n_train=50, epochs=5, batch_size=16,
           schedule="step")  # 50 = 3 x 16 + 2: a short batch every epoch; the LR drops twice


@pytest.mark.parametrize("kw", [dict(optimizer="sgd"), dict(optimizer="sam"),
                                dict(optimizer="asam", rho=0.5),
                                dict(optimizer="sam", sam_interval=2),
                                dict(optimizer="looksam", sam_interval=2),
                                dict(optimizer="msam", rho=0.3),
                                dict(optimizer="sam", bf16=True)],
                         ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_graph_path_gives_the_eager_numbers(kw, fake_cuda, one_thread):
    eager = train.train(TrainConfig(**SYN, **kw))
    graphed = train.train(TrainConfig(**SYN, **kw, compile="graph"))
    assert fake_cuda.captures >= 2 and fake_cuda.replays >= 5, vars(fake_cuda)
    assert graphed["history"] == eager["history"]
    assert graphed["grad_evals"] == eager["grad_evals"]


def test_graph_path_with_batchnorm_and_augmentation(fmnist_root, fake_cuda, one_thread):
    kw = dict(model="preact_resnet18", width=2, n_train=40, n_test=40, batch_size=16,
              augment=True, epochs=3, schedule="step", optimizer="sam")
    eager = train.train(TrainConfig(**kw))
    graphed = train.train(TrainConfig(**kw, compile="graph"))
    assert fake_cuda.replays >= 1
    assert graphed["history"] == eager["history"]


def test_graph_step_needs_cuda():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError) as e:
        graphs.GraphStep(model, torch.optim.SGD(model.parameters(), lr=0.1),
                         torch.nn.functional.mse_loss, batch_size=4)
    assert str(e.value) == NO_GPU


# ----------------------------------------------------------------------------- step_time.py

st = _load("step_time_for_harvest", REPO / "benchmarks" / "step_time.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: step-graph is allowed")
def test_step_graph_mode_is_refused_without_cuda(capsys):
    with pytest.raises(SystemExit):
        st.parse_args(["--modes", "step-graph"])
    assert "'step-graph' on cpu: it needs CUDA" in capsys.readouterr().err


def test_budget_then_resume(tmp_path, one_thread, capsys):
    out = tmp_path / "b.json"
    argv = ["--quick", "--device", "cpu", "--variants", "sgd", "--models", "mlp-4", "mlp-8",
            "--batches", "4", "--steps", "2", "--warmup", "0", "--out", str(out)]
    assert st.main(argv + ["--budget-s", "0.001"]) == 1  # the second config is skipped
    first = json.loads(out.read_text())["results"]
    assert "error" not in first[0] and first[1]["error"] == st.SKIPPED
    assert st.main(argv + ["--resume"]) == 0
    second = json.loads(out.read_text())["results"]
    assert second[0] == first[0]  # kept, not measured again
    assert "error" not in second[1] and second[1]["model"] == "mlp-8"
    assert "1 of 2 configs already measured" in capsys.readouterr().out


# ----------------------------------------------------------------------------- samkit.sweep.streams

TINY = dict(dataset="synthetic", model="mlp", width=4, n_train=64, n_test=0, batch_size=16,
            epochs=4, schedule="step")


def test_streams_stop_at_the_deadline_resume_and_match_the_engine(tmp_path, one_thread):
    """Two runs at once in threads: stopped by a deadline after their first evaluation, they
    store nothing and leave checkpoints; run again, they finish from those checkpoints with the
    numbers (and run keys) of the same configs trained one by one by the engine's serial path,
    in the run-cache format that path writes."""
    from samkit.sweep import streams
    configs = [TrainConfig(**TINY, optimizer="sgd"), TrainConfig(**TINY, optimizer="sam")]
    keys = [store.run_key(c) for c in configs]
    cache = tmp_path / "streams"
    seen = []
    stopped = streams.train_concurrently(configs, str(cache), deadline=0.0,
                                         on_epoch=lambda cfg, e: seen.append(e["epoch"]))
    assert all(isinstance(stopped[k], streams.DeadlinePassed) for k in keys), stopped
    assert seen == [1, 1]  # one evaluation each, then stopped
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{k}.ckpt" for k in keys)
    done = streams.train_concurrently(configs, str(cache), provenance={"note": "test"})
    serial = tmp_path / "serial"
    for cfg, key in zip(configs, keys):
        reference = store.cached_run(cfg, str(serial))
        stored = store.read_result(str(cache / f"{key}.json"))  # sealed: the checksum holds
        assert done[key]["key"] == key == reference["key"]
        assert stored["history"] == reference["history"] and len(stored["history"]) == 4
        assert stored["final"] == reference["final"]
        assert stored["format"] == store.RESULT_FORMAT
        assert stored["numerics"] == store.NUMERICS_VERSION
        assert stored["provenance"]["concurrent_runs"] == 2
        assert stored["provenance"]["note"] == "test"
        assert sorted(stored) == sorted(store.read_result(str(serial / f"{key}.json")))
    assert not list(cache.glob("*.ckpt"))  # removed once the result is stored


def test_streams_serial_mode_starts_nothing_past_the_deadline(tmp_path, one_thread):
    from samkit.sweep import streams
    cfg = TrainConfig(**TINY, optimizer="sgd")
    out = streams.train_concurrently([cfg], str(tmp_path), deadline=0.0, threads=False)
    assert isinstance(out[store.run_key(cfg)], streams.DeadlinePassed)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- the harvest

HARVEST = REPO / "tools" / "gpu_harvest.py"
hv = _load("gpu_harvest_for_tests", HARVEST)


def test_the_harvest_fits_one_device_call():
    """The device's limits (the device tool's: a command of at most 600 s; 15 minutes of device
    time per lent task, the machine's start of 1-2 minutes included): the harvest's worst case
    of every step fits one command, with room left to train."""
    b = hv.budget()
    assert b["check_s"] + b["bench_s"] + b["train_min_s"] + b["collect_s"] == b["command_s"]
    assert b["command_s"] <= 600 - 30 and b["call_limit_s"] <= 600
    assert b["train_min_s"] >= 120
    assert 120 + 600 + 30 <= b["device_time_s"] <= 15 * 60


def test_one_writer_of_the_run_cache_format():
    """The harvest stores runs only through the sweep engine: neither it nor the threaded mode
    seals, formats or writes a result itself."""
    for path in (HARVEST, REPO / "samkit" / "sweep" / "streams.py"):
        src = path.read_text()
        for needle in ("sealed(", '"format":', "NUMERICS_VERSION,", "write_json_atomic",
                       "filelock"):
            assert needle not in src, f"{path.name}: {needle}"
    assert "cached_run(" in (REPO / "samkit" / "sweep" / "streams.py").read_text()


def test_arms_come_from_params_yaml():
    section = hv.harvest_section(str(REPO / "params.yaml"), [0], ["SAM 150 ep"])
    block = section["gpu"]
    assert block["grid"]["seed"] == [0] and [a["tag"] for a in block["arms"]] == ["SAM 150 ep"]
    arms = hv._arms(section, "cuda", "graph")
    assert len(arms) == 1 and arms[0]["config"]["compile"] == "graph"
    assert arms[0]["config"]["width"] == 64 and arms[0]["config"]["n_train"] == 0
    with pytest.raises(SystemExit) as e:
        hv.harvest_section(str(REPO / "params.yaml"), [0], ["SAM 15 ep"])
    assert "unknown 'SAM 15 ep'" in str(e.value)
    # every arm, shortest first (forward+backward passes: SGD 300 x 1, SAM 150 x 2, SAM 200 x 2)
    arms = hv._arms(hv.harvest_section(str(REPO / "params.yaml"), [0]), "cuda", "graph")
    assert [a["tag"] for a in arms] == ["SGD 300 ep", "SAM 150 ep", "SAM 200 ep"]


def _harvest(*args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(HARVEST), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_dry_run_of_one_device_call_then_ingest(fmnist_root, tmp_path, one_thread):
    d, out, repo = tmp_path / "harvest", tmp_path / "out", tmp_path / "repo"
    # all: check (the GPU tests, skipped here), bench (--quick), train, collect, in one command
    p = _harvest("all", "--dir", str(d), "--dry-run", "--out", str(out), "--print-every", "0")
    assert "pytest -m gpu" in p.stdout and "3 to train" in p.stdout and "compile eager" in p.stdout
    steps = json.loads((d / "steps.json").read_text())
    assert list(steps) == ["check", "bench", "train"]  # in this order
    assert all(s["rc"] == 0 for s in steps.values()), steps
    check = json.loads((d / "check.json").read_text())
    assert check["tests"]["rc"] == 0 and "tests/test_gpu.py" in check["tests"]["files"]
    assert check["data"].startswith("fashion_mnist: 60000 training")
    bench = json.loads((d / "bench" / "step_time_dry-run.json").read_text())
    assert bench["results"] and not any("error" in r for r in bench["results"])
    assert "--resume" in bench["provenance"]["argv"]
    # collect: results in the run-cache format, no weights, at most 8 files
    files = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
    assert len(files) <= 8 and not any(f.endswith(".ckpt") for f in files), files
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 3
    epochs = {}
    for f in runs:
        r = store.read_result(str(f))  # sealed
        cfg = TrainConfig(**r["config"])
        assert store.run_key(cfg) == f.stem
        assert r["format"] == store.RESULT_FORMAT and r["numerics"] == store.NUMERICS_VERSION
        assert r["status"] == "ok" and len(r["history"]) == cfg.epochs
        assert cfg.width == 2 and cfg.n_train == 256 and cfg.augment
        assert r["provenance"]["concurrent_runs"] == 3
        assert r["provenance"]["trained_by"] == "tools/gpu_harvest.py"
        epochs[cfg.tag] = cfg.epochs
        if cfg.tag == "SAM 150 ep":  # the reference: the trainer alone, in this process
            alone = train.train(TrainConfig(**{**r["config"], "tag": ""}))
            assert r["history"] == alone["history"]
    assert epochs == {"SGD 300 ep": 6, "SAM 150 ep": 3, "SAM 200 ep": 4}
    harvest = json.loads((out / "harvest.json").read_text())
    assert harvest["check"]["tests"]["rc"] == 0 and harvest["budget"] == hv.budget()
    assert {r["state"] for r in harvest["progress"]["runs"].values()} == {"ok"}
    # ingest: refused as real results; into a scratch repository with --dry-run, where the
    # headline study's gpu table is computed from the run cache (nothing trained)
    p = _harvest("ingest", str(out), "--repo", str(repo), check=False)
    assert p.returncode == 2 and "dry run" in p.stderr
    assert not (repo / "results").exists()
    p = _harvest("ingest", str(out), "--repo", str(repo), "--dry-run")
    assert len(list((repo / "results" / "runs").glob("*.json"))) == 3
    assert (repo / "results" / "bench" / "step_time_dry-run.json").is_file()
    from samkit.studies import headline
    table = headline.gpu_rows(str(repo / "results"))
    assert table is not None and list(table["arm"]) == ["SGD 300 ep", "SAM 150 ep", "SAM 200 ep"]
    # toy runs (width 2, a few epochs) fail the fit rule: kept and counted, not finished
    assert list(table["epochs"]) == [6, 3, 4]
    assert list(table["n"] + table["unfit"]) == [1, 1, 1] and not table["diverged"].any()
    meta = json.loads((repo / "results" / "gpu" / "headline" / "metrics.json").read_text())
    assert meta["n_runs"] == meta["n_cached"] == 3
    # the next lent task trains nothing the repository's run cache holds
    known = ["--dry-run", "--known-cache", str(repo / "results" / "runs")]
    assert _harvest("plan", *known).stdout.count("in the run cache") == 3
    p = _harvest("train", "--dir", str(tmp_path / "next"), *known)
    assert "0 to train" in p.stdout and not (tmp_path / "next" / "runs").exists()


@pytest.mark.parametrize("failed, rc, want", [
    (None, None, ("graph", "threads")),  # check not run
    ([], 0, ("graph", "threads")),
    (["tests/test_gpu.py::test_graph_step_equals_eager_step[fp32-sam]"], 1, ("eager", "threads")),
    (["tests/test_gpu.py::test_graph_steps_in_threads_equal_eager_steps"], 1, ("graph", "serial")),
    (["tests/test_gpu.py::test_bf16_autocast_sam_close_to_fp32"], 1, ("graph", "threads")),
    ([], -11, ("eager", "threads")),  # pytest crashed: no test named, trust nothing
])
def test_start_reads_what_check_found(failed, rc, want, tmp_path, monkeypatch):
    import argparse
    monkeypatch.setattr(hv, "_cuda", lambda: True)
    if failed is not None:
        (tmp_path / "check.json").write_text(json.dumps({"tests": {"rc": rc, "failed": failed}}))
    args = argparse.Namespace(dry_run=False, compile="auto", concurrency="auto")
    assert hv._choose(args, tmp_path)[:2] == want
    args = argparse.Namespace(dry_run=False, compile="graph", concurrency="serial")
    assert hv._choose(args, tmp_path)[:2] == ("graph", "serial")  # asked for: done
