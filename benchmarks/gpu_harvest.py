#!/usr/bin/env python
"""GPU harvest: every GPU result of samkit out of one short GPU allocation.

On the GPU machine, call the subcommands in this order (benchmarks/README.md has the runbook:
the exact commands, what to bring, the GPU time each takes). Each one is idempotent and picks up
what an earlier call on the same machine left in the harvest folder (--dir):

  check          torch/CUDA/device facts; unpacks the Fashion-MNIST .gz files (--gz); runs the
                 GPU-marked tests (pytest -m gpu) -> check.json
  bench          benchmarks/step_time.py on CUDA (step-graph, fp32, bf16-cl; mlp-1024,
                 preact18-16, preact18-64 at batch 128 and 512; every variant interleaved;
                 --resume and a time budget) -> bench/step_time_<gpu>.json
  start          the blog's table (params.yaml headline.gpu: SGD 300, SAM 150, SAM 200 epochs;
                 seed 0) as ONE detached process (its own session: it outlives the command) that
                 trains the three runs at once on the one GPU, one thread and one CUDA stream
                 each, with the trainer's checkpoints; progress.json, runs/<key>.json
  status         progress; --wait S blocks until every run is done (or S seconds pass)
  collect OUT    the finished runs (run-cache JSON, no weights), the bench JSON, harvest.json
                 (manifest, progress, check) and the trainer log's tail, into OUT

Back on a CPU machine, with the folder the device tool fetched:

  ingest FETCHED the runs into results/runs/, the bench JSON into results/bench/, and the
                 headline study's gpu table into results/gpu/headline/ (run_study with the
                 harvest's own params section; it refuses while a run is missing, so it never
                 trains)

Why three runs in threads of one process: CUDA runs kernels of one process's streams
concurrently, but time-slices separate processes (without MPS, a daemon we cannot count on), so
three processes would take the sum of the three runs' times. At batch 128 even a width-64 step
leaves an H100 mostly idle (an earlier H100 measurement: a SAM step of 5.5 ms is ~15% of the GPU's bf16
throughput), so concurrent streams fill it. With graphs a step costs the host one replay call,
so three Python threads do not wait on each other's launches; captures are serialised. The
numbers of a run do not depend on the runs beside it (only their times do: results say so).
start's "auto" reads check.json: a failing (or crashed) graph test means eager steps, a failing
test of graphs in threads alone means graphs, one run after the other (--compile,
--concurrency override it).

--dry-run: the same, at toy size, on the CPU: width 2, 256 training and 256 test images of
Fashion-MNIST, epochs /50 (6, 3, 4: three distinct runs), eager; bench --quick. The test suite
runs every subcommand so (tests/test_gpu_harvest.py).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # on the GPU machine samkit is not installed: run from the repo
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

STEP_TIME = REPO / "benchmarks" / "step_time.py"
DEFAULT_DIR = os.environ.get("SAMKIT_HARVEST_DIR", "/tmp/samkit-harvest")
STUDY, PROFILE = "headline", "gpu"
DRY_BASE = dict(width=2, n_train=256, n_test=256)  # --dry-run: toy size, CPU, eager
DRY_EPOCH_DIVISOR = 50  # 300/150/200 epochs -> 6/3/4: the blog's ratios, three distinct runs
BENCH_MODELS = ("mlp-1024", "preact18-16", "preact18-64")
BENCH_BATCHES = ("128", "512")
BENCH_MODES = ("step-graph", "fp32", "bf16-cl")  # the fast path first: a budget cut hits fp32
RC_RUNNING, RC_NOTHING = 3, 2


# ----------------------------------------------------------------------------- small helpers

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _write_json(path: Path, obj) -> None:
    from samkit.atomic import write_json
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj)


def _sweep():
    """samkit.sweep.engine (run keys, the result format); filelock, which it imports for its locks
    (unused here), may be missing on the GPU machine."""
    try:
        import filelock  # noqa: F401
    except ImportError:
        import types
        stub = types.ModuleType("filelock")

        class FileLock:  # pragma: no cover - only where filelock is missing
            def __init__(self, *a, **k):
                raise RuntimeError("filelock is not installed")
        stub.FileLock, stub.Timeout = FileLock, TimeoutError
        sys.modules["filelock"] = stub
    from samkit.sweep import engine as sweep
    return sweep


def _env(data_root: str | None = None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if data_root:
        env["SAMKIT_DATA"] = data_root
    return env


def _data_root(args) -> str:
    return args.data_root or os.environ.get("SAMKIT_DATA") or str(Path(args.dir) / "data")


def _prepare_data(args) -> str:
    """Unpack the Fashion-MNIST .gz files (--gz, default ./.fmnist if present) into the data
    root, where samkit.data.datasets finds them (it checks their sha256 when it loads them)."""
    from samkit.data import files as image_files
    root = Path(_data_root(args))
    gz = args.gz or (str(REPO / ".fmnist") if (REPO / ".fmnist").is_dir() else None)
    if gz:
        raw = root / "FashionMNIST" / "raw"
        for name in image_files.IDX_FILES:
            src, dst = Path(gz) / f"{name}.gz", raw / name
            if dst.is_file():
                continue
            if not src.is_file():
                raise SystemExit(f"error: --gz {gz}: missing {src.name}; bring the four "
                                 "Fashion-MNIST .gz files (train/t10k images and labels)")
            image_files._gunzip(src, dst)
    return str(root)


def _cuda() -> bool:
    return torch.cuda.is_available()


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
        return any(b"gpu_harvest" in c for c in cmd) and b"_train" in cmd
    except OSError:
        return False


def _trainer_pid(d: Path) -> int | None:
    try:
        pid = int((d / "trainer.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


# ----------------------------------------------------------------------------- what to train

def harvest_section(params_path: str, seeds, arms=None, dry_run: bool = False) -> dict:
    """The headline study's params section as the harvest trains it: params.yaml's gpu block
    (validated by samkit.pipeline.params), its seed axis set to ``seeds``, only the ``arms`` named (all
    if None); --dry-run: toy size (DRY_BASE, epochs / DRY_EPOCH_DIVISOR)."""
    from samkit.pipeline import params as params_mod
    block = copy.deepcopy(params_mod.load(params_path)[STUDY][PROFILE])
    block["grid"] = {**(block.get("grid") or {}), "seed": list(seeds)}
    if arms:
        known = [a.get("tag") for a in block.get("arms") or []]
        unknown = [a for a in arms if a not in known]
        if unknown:
            raise SystemExit(f"error: --arms: unknown {', '.join(map(repr, unknown))}; "
                             f"allowed: {', '.join(map(repr, known))}")
        block["arms"] = [a for a in block["arms"] if a.get("tag") in arms]
    if dry_run:
        block["base"] = {**(block.get("base") or {}), **DRY_BASE}
        for part in [block["base"], *(block.get("arms") or [])]:
            if "epochs" in part:
                part["epochs"] = max(1, part["epochs"] // DRY_EPOCH_DIVISOR)
    return {PROFILE: block}


def _arms(section: dict, device: str, compile_: str) -> list[dict]:
    """One entry per run: its tag, seed, run key and the config it trains with (the pipeline's
    config plus the execution-only fields device and compile, which leave the key alone)."""
    from samkit.pipeline import params as params_mod
    sweep = _sweep()
    arms, keys = [], set()
    for cfg in params_mod.study_configs(STUDY, section, PROFILE):
        run = dataclasses.replace(cfg, device=device, compile=compile_)
        key = sweep.run_key(run)
        if key != sweep.run_key(cfg):  # pragma: no cover - guards TrainConfig.key_dict
            raise SystemExit("error: device/compile changed a run key; the pipeline would not "
                             "find these runs")
        if key in keys:
            continue
        keys.add(key)
        arms.append({"tag": cfg.tag, "seed": cfg.seed, "epochs": cfg.epochs,
                     "optimizer": cfg.optimizer, "key": key, "config": dataclasses.asdict(run)})
    return arms


def _commit() -> str:
    from samkit.provenance import git_commit
    return os.environ.get("SAMKIT_COMMIT") or git_commit()


# ----------------------------------------------------------------------------- check

def _facts() -> dict:
    f = {"python": platform.python_version(), "torch": torch.__version__,
         "cuda_available": _cuda(), "torch_cuda": torch.version.cuda,
         "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    if _cuda():
        p = torch.cuda.get_device_properties(0)
        f.update(device=p.name, devices=torch.cuda.device_count(),
                 capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                 multiprocessors=p.multi_processor_count, cudnn=torch.backends.cudnn.version(),
                 bf16=torch.cuda.is_bf16_supported(),
                 tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                 tf32_cudnn=torch.backends.cudnn.allow_tf32)
    for name in ("numpy", "pandas", "scipy", "yaml", "tqdm", "filelock", "pytest"):
        try:
            mod = __import__(name)
            f[f"pkg_{name}"] = getattr(mod, "__version__", "present")
        except ImportError:
            f[f"pkg_{name}"] = "missing"
    return f


def _gpu_test_files() -> list[str]:
    """The test files holding GPU-marked tests (only those are collected: the others import
    packages, e.g. the notebook tools, that a GPU machine need not have)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text())


def cmd_check(args) -> int:
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    facts = _facts()
    print("check: " + ", ".join(f"{k} {v}" for k, v in facts.items()), flush=True)
    report = {"date": _now(), "facts": facts, "dry_run": args.dry_run}
    root = _prepare_data(args)
    try:
        from samkit.data.datasets import load_data
        data = load_data("fashion_mnist", root=root)
        report["data"] = f"fashion_mnist: {len(data.x_train)} training, {len(data.x_test)} test"
    except Exception as e:  # noqa: BLE001 - reported, and start would fail the same way
        report["data"] = f"error: {type(e).__name__}: {e}"
    print(f"check: data root {root}: {report['data']}", flush=True)
    files = _gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
           *files]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(root), capture_output=True, text=True,
                              timeout=args.timeout)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {args.timeout} s", 124
    failed = sorted({m.group(1) for m in re.finditer(r"^(?:FAILED|ERROR) (\S+)", out, re.M)})
    summary = next((line.strip("= ") for line in reversed(out.splitlines())
                    if re.search(r"\d+ (passed|failed|skipped|error)", line)), "no summary")
    report["tests"] = {"files": files, "rc": rc, "summary": summary, "failed": failed,
                       "seconds": round(time.time() - t0, 1), "output_tail": out[-8000:]}
    _write_json(d / "check.json", report)
    print(out[-4000:] if rc not in (0, 5) else "", end="")
    print(f"check: pytest -m gpu ({', '.join(files)}): {summary} [rc {rc}]")
    if not _cuda():
        print("check: no CUDA here: the GPU tests were skipped"
              + ("" if args.dry_run else "; this is not a GPU machine"))
        return (0 if rc in (0, 5) else 1) if args.dry_run else 1
    if report["data"].startswith("error"):
        return 1
    return 0 if rc == 0 else 1


# ----------------------------------------------------------------------------- bench

def _bench_path(d: Path, dry_run: bool) -> Path:
    if dry_run or not _cuda():
        slug = "dry-run"
    else:
        name = torch.cuda.get_device_name(0)
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cuda"
    return d / "bench" / f"step_time_{slug}.json"


def cmd_bench(args) -> int:
    d = Path(args.dir)
    out = _bench_path(d, args.dry_run)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        argv = ["--quick", "--device", "cpu", "--variants", "sgd"]
    else:
        if not _cuda():
            print("error: bench: no CUDA here (use --dry-run to check the script on a CPU)",
                  file=sys.stderr)
            return 1
        argv = ["--device", "cuda", "--models", *BENCH_MODELS, "--batches", *BENCH_BATCHES,
                "--modes", *BENCH_MODES, "--steps", str(args.steps), "--warmup", "2",
                "--budget-s", str(args.budget_s)]
        if not args.all_variants:
            argv += ["--variants", "sgd"]  # sgd, sam, ref_sam (always run)
    argv += ["--resume", "--out", str(out)]
    print(f"bench: python {STEP_TIME.relative_to(REPO)} {' '.join(argv)}", flush=True)
    try:  # a hung config must not eat the allocation: the JSON keeps what was measured
        rc = subprocess.run([sys.executable, str(STEP_TIME), *argv], cwd=REPO, env=_env(),
                            timeout=None if args.dry_run else args.budget_s + 240).returncode
    except subprocess.TimeoutExpired:
        print(f"bench: stopped after {args.budget_s + 240:.0f} s", flush=True)
        rc = 124
    data = _read_json(out, {})
    results = data.get("results", [])
    bad = [r for r in results if "error" in r]
    print(f"bench: {out}: {len(results) - len(bad)} of {len(results)} configs measured"
          + (f"; {len(bad)} with an error or skipped (rerun bench to resume them)" if bad else ""))
    return rc


# ----------------------------------------------------------------------------- start

def _choose(args, d: Path) -> tuple[str, str, str]:
    """(compile, concurrency, why): "auto" reads what `check` found. A failing graph test (or
    tests that crashed or timed out) means eager steps; a failing test of graphs in threads
    alone means graphs, one run after the other."""
    if args.dry_run or not _cuda():
        return "eager", args.concurrency.replace("auto", "threads"), "no CUDA (dry run)"
    tests = _read_json(d / "check.json", {}).get("tests")
    failed = (tests or {}).get("failed", [])
    crashed = tests is not None and tests.get("rc") != 0 and not failed
    graph_bad = crashed or any("graph" in t and "threads" not in t for t in failed)
    threads_bad = crashed or any("threads" in t for t in failed)
    compile_ = args.compile if args.compile != "auto" else ("eager" if graph_bad else "graph")
    concurrency = (args.concurrency if args.concurrency != "auto" else
                   "serial" if threads_bad and compile_ == "graph" else "threads")
    why = ("check not run" if tests is None else "check passed" if tests.get("rc") == 0 else
           "check crashed or timed out" if crashed else f"check failed: {', '.join(failed)}")
    return compile_, concurrency, why


def cmd_start(args) -> int:
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    pid = _trainer_pid(d)
    if pid:
        print(f"start: the trainer is already running (pid {pid}); `status` follows it")
        return 0
    if not args.dry_run and not _cuda():
        print("error: start: no CUDA here; the blog's table is GPU work (use --dry-run to "
              "check the script on a CPU)", file=sys.stderr)
        return 1
    root = _prepare_data(args)
    compile_, concurrency, why = _choose(args, d)
    device = "cuda" if (_cuda() and not args.dry_run) else "cpu"
    section = harvest_section(args.params, args.seeds, args.arms, args.dry_run)
    arms = _arms(section, device, compile_)
    manifest = {"created": _now(), "dry_run": args.dry_run, "params": args.params,
                "study": STUDY, "profile": PROFILE, "section": section,
                "seeds": list(args.seeds), "device": device, "compile": compile_,
                "concurrency": concurrency, "choice": why, "commit": _commit(),
                "data_root": root, "arms": arms}
    _write_json(d / "manifest.json", manifest)
    todo = [a for a in arms if not (d / "runs" / f"{a['key']}.json").is_file()]
    print(f"start: {len(arms)} runs ({', '.join(a['tag'] + ' seed ' + str(a['seed']) for a in arms)}"
          f"), {len(todo)} to train, on {device}, compile {compile_}, {concurrency} ({why})")
    if not todo:
        print("start: every run is finished; `collect` takes them")
        return 0
    log = open(d / "trainer.log", "a")
    log.write(f"\n==== {_now()} start: {len(todo)} runs\n")
    log.flush()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "_train", "--dir", str(d)],
        cwd=REPO, env=_env(root), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)  # setsid: survives this command and the tool that ran it
    (d / "trainer.pid").write_text(str(proc.pid))
    time.sleep(args.settle)
    if proc.poll() is not None:
        print(f"error: start: the trainer exited at once (code {proc.returncode}); its log:\n"
              + _tail(d / "trainer.log", 3000), file=sys.stderr)
        return 1
    print(f"start: trainer pid {proc.pid}, log {d / 'trainer.log'}; follow it with `status`")
    return 0


def _tail(path: Path, n: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# ----------------------------------------------------------------------------- the trainer

class _Progress:
    """progress.json: one entry per run, rewritten atomically after every evaluation."""

    def __init__(self, d: Path, arms):
        self.path, self.lock = d / "progress.json", threading.Lock()
        old = _read_json(self.path, {}).get("runs", {})
        self.state = {"pid": os.getpid(), "started": _now(), "runs": {
            a["key"]: {**old.get(a["key"], {}), "tag": a["tag"], "seed": a["seed"],
                       "epochs": a["epochs"]} for a in arms}}

    def update(self, key, **kw):
        with self.lock:
            self.state["runs"][key].update(kw, updated=time.time())
            self.state["updated"] = _now()
            _write_json(self.path, self.state)


def cmd_train(args) -> int:
    """The detached process: trains every unfinished run of the manifest, concurrently."""
    d = Path(args.dir)
    manifest = _read_json(d / "manifest.json")
    arms = [a for a in manifest["arms"] if not (d / "runs" / f"{a['key']}.json").is_file()]
    if manifest["device"] == "cpu":
        torch.set_num_threads(1)  # the dry run: tiny models, threads beside each other
    progress = _Progress(d, manifest["arms"])
    for a in manifest["arms"]:
        progress.update(a["key"], **({"status": "queued", "error": None} if a in arms else
                                     {"status": "done"}))
    print(f"{_now()} trainer {os.getpid()}: {len(arms)} runs on {manifest['device']}, compile "
          f"{manifest['compile']}, {manifest['concurrency']}", flush=True)
    # The data, loaded here once per distinct data config (the runs of the table share one):
    # samkit.data.datasets's loader is not made for threads (its unpacking temp file is per process).
    from samkit.train import loop as train
    from samkit.train.config import TrainConfig
    loaded = {}
    try:
        for a in arms:
            cfg = TrainConfig(**a["config"])
            k = _data_key(cfg)
            if k not in loaded:
                loaded[k] = train.load_for(cfg)
    except Exception as e:  # noqa: BLE001 - every run fails the same way: say so in status
        traceback.print_exc()
        for a in arms:
            progress.update(a["key"], status="failed", error=f"data: {type(e).__name__}: {e}")
        return 1
    jobs = [(a, d, manifest, progress, len(arms) if manifest["concurrency"] == "threads" else 1,
             loaded[_data_key(TrainConfig(**a["config"]))]) for a in arms]
    if manifest["concurrency"] == "serial":  # one run after the other
        for job in jobs:
            _train_run(*job)
    else:  # one thread (and CUDA stream) per run, all at once
        threads = [threading.Thread(target=_train_run, name=job[0]["tag"], args=job)
                   for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    states = [progress.state["runs"][a["key"]].get("status") for a in arms]
    print(f"{_now()} trainer {os.getpid()}: done: {states}", flush=True)
    return 0 if all(s in ("done", "diverged") for s in states) else 1


def _data_key(cfg) -> tuple:
    """What ``samkit.train.loop.load_for`` reads of a config."""
    return (cfg.dataset, cfg.n_train, cfg.n_val, cfg.n_test, cfg.label_noise,
            cfg.effective_data_seed)


def _train_run(arm, d: Path, manifest, progress: _Progress, concurrent: int, data) -> None:
    from samkit.train import loop as train
    from samkit.provenance import provenance
    from samkit.train.config import TrainConfig
    sweep = _sweep()
    key, runs = arm["key"], d / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    progress.update(key, status="running", started=t_start, error=None, first_epoch=None)

    def on_epoch(entry):  # first_epoch: the first evaluation of this process (for the rate)
        first = progress.state["runs"][key].get("first_epoch") is None
        progress.update(key, epoch=entry["epoch"], epoch_t=time.time(),
                        test_acc=entry.get("test_acc"), train_acc=entry.get("train_acc"),
                        **({"first_epoch": entry["epoch"], "first_epoch_t": time.time()}
                           if first else {}))

    try:
        cfg = TrainConfig(**arm["config"])
        stream = torch.cuda.Stream() if cfg.device.startswith("cuda") else None
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            result = train.train(cfg, checkpoint=str(runs / f"{key}.ckpt"), data=data,
                               on_epoch=on_epoch)
        prov = provenance()
        if prov["commit"] == "unknown":  # no .git on the GPU machine: the commit start was given
            prov["commit"] = manifest.get("commit") or "unknown"
        result = {**result, "provenance": prov, "format": sweep.RESULT_FORMAT,
                  "numerics": sweep.NUMERICS_VERSION,
                  "harvest": {"compile": cfg.compile, "concurrent_runs": concurrent,
                              "note": "trained by benchmarks/gpu_harvest.py " + (
                                  f"beside {concurrent - 1} other run(s) on one GPU: its times "
                                  "(seconds, train_seconds) are shared-GPU times"
                                  if concurrent > 1 else "alone on the GPU")}}
        _write_json(runs / f"{key}.json", sweep.sealed(result))  # the run cache refuses unsealed files
        ckpt = runs / f"{key}.ckpt"
        if ckpt.exists():
            ckpt.unlink()
        progress.update(key, status="done" if result["status"] == "ok" else result["status"],
                        finished=time.time(), final_test_acc=result["final"].get("test_acc"))
        print(f"{_now()} {arm['tag']} seed {arm['seed']}: {result['status']}, final test acc "
              f"{result['final'].get('test_acc')}, {result['train_seconds']:.0f} s training",
              flush=True)
    except BaseException as e:  # noqa: BLE001 - recorded for status; the others go on
        traceback.print_exc()
        progress.update(key, status="failed", error=f"{type(e).__name__}: {e}")


# ----------------------------------------------------------------------------- status

def _status(d: Path) -> dict | None:
    manifest = _read_json(d / "manifest.json")
    if manifest is None:
        return None
    runs = _read_json(d / "progress.json", {}).get("runs", {})
    pid = _trainer_pid(d)
    rows = []
    for a in manifest["arms"]:
        p = runs.get(a["key"], {})
        if (d / "runs" / f"{a['key']}.json").is_file():
            state = "diverged" if p.get("status") == "diverged" else "done"
        else:
            state = p.get("status") or ("queued" if pid else "not started")
            if state in ("running", "queued", "done") and not pid:
                state = "stopped"  # the process is gone (killed): `start` resumes it
        epoch, rate, eta = p.get("epoch", 0), None, None
        if p.get("first_epoch") is not None and p.get("epoch_t"):
            span = epoch - p["first_epoch"]
            rate = ((p["epoch_t"] - p["first_epoch_t"]) / span if span > 0 else
                    p["epoch_t"] - p.get("started", p["epoch_t"]))
            eta = rate * (a["epochs"] - epoch) if state == "running" else None
        rows.append({"tag": a["tag"], "seed": a["seed"], "key": a["key"], "epochs": a["epochs"],
                     "epoch": a["epochs"] if state == "done" else epoch, "state": state,
                     "test_acc": p.get("final_test_acc", p.get("test_acc")),
                     "s_per_epoch": rate, "eta_s": eta, "error": p.get("error")})
    return {"pid": pid, "compile": manifest["compile"], "device": manifest["device"],
            "dry_run": manifest["dry_run"], "runs": rows,
            "done": all(r["state"] in ("done", "diverged") for r in rows)}


def _print_status(s: dict) -> None:
    who = f"running (pid {s['pid']})" if s["pid"] else "not running"
    print(f"status {time.strftime('%H:%M:%S')}: trainer {who}; {s['device']}, compile "
          f"{s['compile']}" + (" (dry run)" if s["dry_run"] else ""), flush=True)
    for r in s["runs"]:
        acc = f"test acc {r['test_acc']:.4f}" if r["test_acc"] is not None else ""
        rate = f"{r['s_per_epoch']:.1f} s/epoch" if r["s_per_epoch"] else ""
        eta = f"ETA {r['eta_s'] / 60:.1f} min" if r["eta_s"] is not None else ""
        err = f"  {r['error']}" if r["error"] else ""
        print(f"  {r['tag']:<11} seed {r['seed']}  epoch {r['epoch']:>4}/{r['epochs']:<4} "
              f"{r['state']:<8} {acc:<16} {rate:<15} {eta}{err}".rstrip(), flush=True)


def cmd_status(args) -> int:
    d = Path(args.dir)
    t0, last = time.time(), 0.0
    while True:
        s = _status(d)
        if s is None:
            print(f"status: no harvest started in {d} (run `start`)")
            return RC_NOTHING
        over = time.time() - t0 >= args.wait
        if s["done"] or not s["pid"] or over or time.time() - last >= args.every:
            _print_status(s)
            last = time.time()
        if s["done"]:
            print("status: every run is finished; `collect OUT` takes them")
            return 0
        if not s["pid"]:
            print("status: the trainer is not running and runs are unfinished; `start` "
                  f"resumes them from their checkpoints (log: {d / 'trainer.log'})")
            return 1
        if over:
            return RC_RUNNING
        time.sleep(min(args.poll, max(0.1, args.wait - (time.time() - t0))))


# ----------------------------------------------------------------------------- collect

def cmd_collect(args) -> int:
    d, out = Path(args.dir), Path(args.out)
    manifest = _read_json(d / "manifest.json")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if manifest:
        for a in manifest["arms"]:
            src = d / "runs" / f"{a['key']}.json"
            if src.is_file():
                (out / "runs").mkdir(exist_ok=True)
                shutil.copy2(src, out / "runs" / src.name)
                files.append(f"runs/{src.name}")
    for src in sorted((d / "bench").glob("step_time_*.json")):
        (out / "bench").mkdir(exist_ok=True)
        shutil.copy2(src, out / "bench" / src.name)
        files.append(f"bench/{src.name}")
    status = _status(d)
    _write_json(out / "harvest.json", {
        "collected": _now(), "manifest": manifest, "status": status,
        "progress": _read_json(d / "progress.json"), "check": _read_json(d / "check.json")})
    files.append("harvest.json")
    log = _tail(d / "trainer.log", 200_000)
    if log:
        (out / "harvest.log").write_text(log)
        files.append("harvest.log")
    n_runs = sum(f.startswith("runs/") for f in files)
    total = len(manifest["arms"]) if manifest else 0
    print(f"collect: {out}: {n_runs} of {total} runs finished, "
          f"{sum(f.startswith('bench/') for f in files)} bench file(s); {', '.join(files)}")
    if len(files) > 8:
        print("collect: warning: more than 8 files; the device tool brings back at most 8 "
              "(collect into two folders over two commands)")
    return 0


# ----------------------------------------------------------------------------- ingest

def cmd_ingest(args) -> int:
    """Here, on a CPU machine: the fetched harvest into the repository's results."""
    sweep = _sweep()
    from samkit.train.config import TrainConfig
    src, repo = Path(args.fetched), Path(args.repo).resolve()
    harvest = _read_json(src / "harvest.json")
    if not harvest or not harvest.get("manifest"):
        print(f"error: ingest: {src}/harvest.json is missing or has no manifest (collect "
              "writes it)", file=sys.stderr)
        return 2
    manifest = harvest["manifest"]
    if manifest["dry_run"] and not args.dry_run:
        print("error: ingest: this is a dry run's harvest (toy sizes); it must not enter the "
              "results (pass --dry-run, with --repo a scratch folder, to check the path)",
              file=sys.stderr)
        return 2
    cache = repo / "results" / "runs"
    cache.mkdir(parents=True, exist_ok=True)
    problems = 0
    for f in sorted((src / "runs").glob("*.json")):
        result = _read_json(f, {})
        cfg = TrainConfig(**result.get("config", {}))
        why = ("its key is not its config's" if sweep.run_key(cfg) != f.stem else
               f"result format {result.get('format')} (this code: {sweep.RESULT_FORMAT})"
               if result.get("format") != sweep.RESULT_FORMAT else
               f"numerics {result.get('numerics')} (this code: {sweep.NUMERICS_VERSION})"
               if result.get("numerics") != sweep.NUMERICS_VERSION else None)
        if why:
            print(f"ingest: {f.name}: not taken: {why}")
            problems += 1
            continue
        dest = cache / f.name
        if dest.exists() and dest.read_bytes() != f.read_bytes() and not args.force:
            print(f"ingest: {dest} exists with other content: kept (--force replaces it)")
            continue
        shutil.copyfile(f, dest)
        print(f"ingest: {cfg.tag} seed {cfg.seed} -> {dest.relative_to(repo)}")
    bench = repo / "results" / "bench"
    for f in sorted((src / "bench").glob("step_time_*.json")):
        bench.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, bench / f.name)
        print(f"ingest: bench -> {(bench / f.name).relative_to(repo)}")
    from samkit.pipeline import params as params_mod
    section = manifest["section"]
    configs = params_mod.study_configs(manifest["study"], section, manifest["profile"])
    missing = [c for c in configs if sweep._load_cached(c, str(cache)) is None]
    if missing:
        print(f"ingest: the {manifest['profile']} table waits for "
              + ", ".join(f"{c.tag} seed {c.seed}" for c in missing)
              + " (not in the run cache yet): not written")
        return 1 if problems else 0
    from samkit.pipeline.study import run_study
    cwd = os.getcwd()
    os.chdir(repo)  # studies read and write results/ relative to the repository
    try:
        study = run_study(manifest["study"], section, manifest["profile"], cache=str(cache),
                          root=str(repo / "results"))
    finally:
        os.chdir(cwd)
    table = study.analysis.tables.get("vs_blog")
    where = repo / "results" / manifest["profile"] / manifest["study"]
    print(f"ingest: {where.relative_to(repo)}/ written from {len(study.runs)} cached runs"
          + (":\n" + table.to_string(index=False) if table is not None else ""))
    print("ingest: next: rebuild the headline page (`python -m samkit stage headline`, or "
          "`dvc repro -s -f study@headline` to record it in dvc.lock): it then points to "
          "results/gpu/headline; commit results/runs/, results/bench/ and results/gpu/")
    return 1 if problems else 0


# ----------------------------------------------------------------------------- CLI

def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad value {text!r}; allowed: seeds as 0 or 0,1,2")
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"bad value {text!r}; allowed: seeds >= 0, as 0,1,2")
    return seeds


def parse_args(argv=None):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=DEFAULT_DIR,
                        help="harvest folder on the GPU machine (default $SAMKIT_HARVEST_DIR "
                             f"or {DEFAULT_DIR})")
    common.add_argument("--dry-run", action="store_true",
                        help="toy size on the CPU (width 2, 256 images, epochs /50, eager)")
    p = argparse.ArgumentParser(
        description="Every GPU result of samkit out of one short GPU allocation: check, bench, "
                    "start, status, collect there; ingest here.",
        epilog="benchmarks/README.md has the runbook.")
    sub = p.add_subparsers(dest="cmd", required=True)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--gz", help="folder with the four Fashion-MNIST .gz files (default "
                                   "./.fmnist if present)")
    data.add_argument("--data-root", help="where the data is unpacked (default $SAMKIT_DATA or "
                                          "DIR/data)")
    c = sub.add_parser("check", parents=[common, data], help="device facts, data, GPU tests")
    c.add_argument("--timeout", type=int, default=480, help="seconds for the tests")
    b = sub.add_parser("bench", parents=[common], help="step-time benchmark (resumes)")
    b.add_argument("--budget-s", type=float, default=240,
                   help="start no benchmark config after this many seconds (default 240)")
    b.add_argument("--steps", type=int, default=20, help="timed blocks per variant")
    b.add_argument("--all-variants", action="store_true",
                   help="also SAM every 2/5/10, LookSAM and Momentum-SAM (about 2.5x the time)")
    s = sub.add_parser("start", parents=[common, data], help="launch the detached trainer")
    s.add_argument("--params", default=str(REPO / "params.yaml"))
    s.add_argument("--seeds", type=_seeds, default=[0], help="seeds (default 0)")
    s.add_argument("--arms", type=lambda t: [a.strip() for a in t.split(",") if a.strip()],
                   help="only these arms, by tag, comma separated (default: all)")
    s.add_argument("--compile", choices=("auto", "graph", "eager"), default="auto",
                   help="auto: graph unless check found a failing graph test")
    s.add_argument("--concurrency", choices=("auto", "threads", "serial"), default="auto",
                   help="threads: every run at once, one thread and CUDA stream each; serial: "
                        "one after the other; auto: threads unless check found a failing "
                        "test of graphs in threads")
    s.add_argument("--settle", type=float, default=3.0, help=argparse.SUPPRESS)
    st = sub.add_parser("status", parents=[common], help="progress of the training")
    st.add_argument("--wait", type=float, default=0,
                    help="block until every run is done or this many seconds passed")
    st.add_argument("--every", type=float, default=60, help="print every this many seconds")
    st.add_argument("--poll", type=float, default=5, help=argparse.SUPPRESS)
    co = sub.add_parser("collect", parents=[common], help="finished results into OUT")
    co.add_argument("out")
    i = sub.add_parser("ingest", parents=[common], help="(CPU) a fetched harvest into results/")
    i.add_argument("fetched", help="the folder collect wrote (as fetched by the device tool)")
    i.add_argument("--repo", default=str(REPO), help="repository root (default: this one)")
    i.add_argument("--force", action="store_true", help="replace run results that differ")
    t = sub.add_parser("_train", parents=[common])
    del t
    return p.parse_args(argv)


COMMANDS = {"check": cmd_check, "bench": cmd_bench, "start": cmd_start, "status": cmd_status,
            "collect": cmd_collect, "ingest": cmd_ingest, "_train": cmd_train}


def main(argv=None) -> int:
    args = parse_args(argv)
    return COMMANDS[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
