#!/usr/bin/env python
"""GPU harvest: samkit's GPU results, as much as fits, out of ONE device call of 10 minutes.

A lent task has 15 minutes of device time in all, the machine's start (1-2 min) and the 30 s it
stays warm after a call included, so the harvest is one call of at most 600 s (`timeout_s`),
whose command (`all`) spends BUDGET_S of them, in this order of value per second:

  1. check   torch/CUDA/device facts, the Fashion-MNIST .gz files unpacked (--gz), the GPU-marked
             tests (pytest -m gpu): do the fast paths give the eager numbers on this GPU?
  2. bench   the step-time ratios: benchmarks/step_time.py (sgd, sam, ref_sam; step-graph,
             fp32, bf16-cl; mlp-1024, preact18-16, preact18-64 at batch 128 and 512). It resumes
             from the repository's results/bench/step_time_<gpu>.json, so a later task measures
             only the configs an earlier one did not reach.
  3. train   the blog's table (params.yaml headline.gpu: SGD 300, SAM 150 and SAM 200 epochs,
             seed 0) until the budget's end: every run the repository's run cache lacks, at
             once, one thread and CUDA stream each (samkit.sweep.streams), stored by the sweep
             engine (samkit.sweep.store.cached_run: run keys and the result format are the
             pipeline's). A run not finished by then is stopped after an evaluation.
  4. collect the finished runs, the bench JSON and harvest.json (plan, check, progress with
             s/epoch per run) into --out: at most 5 files (the device tool returns 8).

A run is the unit that persists from one lent task to the next: its result comes back and is
committed to results/runs/, and the next task's harvest skips it. An unfinished run's checkpoint
does not come back (a width-64 ResNet's is ~135 MB; the device tool returns 16 MiB a file), so
a run lands only in a task whose training window holds it whole; progress.json's s/epoch says
which one does. `plan` prints the budget and what the repository already holds.

Back on a CPU machine, with the folder the device tool fetched:

  ingest FETCHED  the runs into results/runs/ (key, format, numerics and checksum checked), the
                  bench JSON into results/bench/, and, once the table's runs are all there, the
                  headline study's gpu table into results/gpu/headline/ (it never trains)

--dry-run: the same on a CPU at toy size: width 2, 256 training and 256 test images, epochs /50
(6, 3, 4: three distinct runs), eager; bench --quick. tests/test_gpu_harvest.py runs it.
tools/README.md has the runbook.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import gzip
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # on the GPU machine samkit is not installed: run from the repo
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.common import device_slug  # noqa: E402
from samkit.atomic import replacing, write_json  # noqa: E402
from samkit.sweep import engine  # noqa: E402
from samkit.sweep import store

STEP_TIME = REPO / "benchmarks" / "step_time.py"
DEFAULT_DIR = os.environ.get("SAMKIT_HARVEST_DIR", "/tmp/samkit-harvest")
STUDY, PROFILE = "headline", "gpu"
DRY_BASE = dict(width=2, n_train=256, n_test=256)  # --dry-run: toy size, CPU, eager
DRY_EPOCH_DIVISOR = 50  # 300/150/200 epochs -> 6/3/4: the blog's ratios, three distinct runs
BENCH_MODELS = ("mlp-1024", "preact18-16", "preact18-64")
BENCH_BATCHES = ("128", "512")
BENCH_MODES = ("step-graph", "fp32", "bf16-cl")  # the fast path first: a budget cut hits fp32
BENCH_STEPS, BENCH_WARMUP = 20, 2
FMNIST_GZ = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
RC_UNFINISHED = 3  # train: runs are left for a later call

# The budget of one device call (seconds). The command may run CALL_LIMIT_S; `all` ends
# BUDGET_S after it starts, leaving the rest for the interpreter, imports and the transfer.
# check and bench have hard limits, so training always gets at least
# BUDGET_S - CHECK_TIMEOUT_S - BENCH_STOP_S - COLLECT_S.
CALL_LIMIT_S = 600
BUDGET_S = 540
CHECK_TIMEOUT_S = 150  # ~22 small CUDA tests: 1-2 min with CUDA's start-up
BENCH_START_S = 120  # step_time.py starts no config after this (the rest: --resume next time)
BENCH_STOP_S = 180  # ... and is stopped after this, whatever it is doing
COLLECT_S = 30  # training stops this long before the budget's end: the last epoch, collect
DEVICE_START_S = 120  # the machine's start, counted in the task's device time
DEVICE_TIME_S = 900  # a lent task's device time, all calls together


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
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj)


def _cuda() -> bool:
    return torch.cuda.is_available()


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
    root, where samkit.data finds them (it checks their sha256 when it loads them)."""
    root = Path(_data_root(args))
    gz = args.gz or (str(REPO / ".fmnist") if (REPO / ".fmnist").is_dir() else None)
    if gz:
        raw = root / "FashionMNIST" / "raw"
        for name in FMNIST_GZ:
            src, dst = Path(gz) / f"{name}.gz", raw / name
            if dst.is_file():
                continue
            if not src.is_file():
                raise SystemExit(f"error: --gz {gz}: missing {src.name}; bring the four "
                                 "Fashion-MNIST .gz files (train/t10k images and labels)")
            dst.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(src, "rb") as fin, replacing(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
    return str(root)


def _commit() -> str:
    from samkit.provenance import git_commit
    commit = git_commit()
    # The device tool copies the working tree without .git: the commit comes from the caller.
    return (os.environ.get("SAMKIT_COMMIT") or commit) if commit == "unknown" else commit


# ----------------------------------------------------------------------------- what to train

def harvest_section(params_path: str, seeds, arms=None, dry_run: bool = False) -> dict:
    """The headline study's params section as the harvest trains it: params.yaml's gpu block
    (validated by samkit.pipeline.params), its seed axis set to ``seeds``, only the ``arms``
    named (all if None); --dry-run: toy size (DRY_BASE, epochs / DRY_EPOCH_DIVISOR)."""
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


def _passes(cfg) -> int:
    """Forward+backward passes per example over the run: what orders runs by length."""
    return cfg.epochs * (1 if cfg.optimizer in ("sgd", "msam") else 2)


def _arms(section: dict, device: str, compile_: str) -> list[dict]:
    """One entry per run, shortest first: its tag, seed, run key and the config it trains with
    (the pipeline's config plus the execution-only fields device and compile, which leave the
    key alone)."""
    from samkit.pipeline import params as params_mod
    arms, keys = [], set()
    for cfg in params_mod.study_configs(STUDY, section, PROFILE):
        run = dataclasses.replace(cfg, device=device, compile=compile_)
        key = store.run_key(run)
        if key != store.run_key(cfg):  # pragma: no cover - guards TrainConfig.key_dict
            raise SystemExit("error: device/compile changed a run key; the pipeline would not "
                             "find these runs")
        if key in keys:
            continue
        keys.add(key)
        arms.append({"tag": cfg.tag, "seed": cfg.seed, "epochs": cfg.epochs,
                     "optimizer": cfg.optimizer, "key": key, "passes": _passes(cfg),
                     "config": dataclasses.asdict(run)})
    return sorted(arms, key=lambda a: a["passes"])


def _known(args) -> Path:
    """The run cache whose runs need no training here: the repository's, as committed."""
    return Path(args.known_cache or REPO / "results" / "runs")


# ----------------------------------------------------------------------------- plan

def budget() -> dict:
    """The seconds of one device call, step by step (the worst case of each)."""
    train_min = BUDGET_S - CHECK_TIMEOUT_S - BENCH_STOP_S - COLLECT_S
    return {"call_limit_s": CALL_LIMIT_S, "command_s": BUDGET_S, "check_s": CHECK_TIMEOUT_S,
            "bench_s": BENCH_STOP_S, "train_min_s": train_min, "collect_s": COLLECT_S,
            "device_time_s": DEVICE_START_S + CALL_LIMIT_S + 30, "task_device_time_s":
            DEVICE_TIME_S}


def cmd_plan(args) -> int:
    """What one device call does, and what the repository already holds (CPU; no GPU needed)."""
    b = budget()
    section = harvest_section(args.params, args.seeds, args.arms, args.dry_run)
    arms = _arms(section, "cuda", "graph")
    known = _known(args)
    benches = sorted(p.name for p in (REPO / "results" / "bench").glob("step_time_nvidia-*.json"))
    print(f"plan: one device call, timeout_s {b['call_limit_s']}; `all` ends after "
          f"{b['command_s']} s:")
    print(f"  1. check  GPU tests (pytest -m gpu)          <= {b['check_s']} s")
    print(f"  2. bench  step-time ratios, resumable        <= {b['bench_s']} s "
          f"(starts no config after {BENCH_START_S} s); in the repository: "
          f"{', '.join(benches) or 'none yet'}")
    print(f"  3. train  the blog table until the end        >= {b['train_min_s']} s "
          "(all of what check and bench leave)")
    print(f"  4. collect into $OUT                          <= {b['collect_s']} s")
    print(f"device time: ~{b['device_time_s'] // 60} min of the task's "
          f"{b['task_device_time_s'] // 60} (the machine's start ~{DEVICE_START_S // 60} min, "
          "the call, 30 s warm after it): one call per lent task")
    for a in arms:
        state = "in the run cache" if (known / f"{a['key']}.json").is_file() else "to train"
        print(f"  {a['tag']:<11} seed {a['seed']}  {a['epochs']:>4} epochs  {a['key']}  {state}")
    print("command: PYTHONUNBUFFERED=1 SAMKIT_COMMIT=$(commit) python3 tools/gpu_harvest.py all "
          "--gz .fmnist --out $OUT   (carry: .fmnist; timeout_s 600)")
    return 0


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
    for name in ("numpy", "pandas", "scipy", "yaml", "tqdm", "pytest"):
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
    except Exception as e:  # noqa: BLE001 - reported, and train would fail the same way
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
        out = f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {args.timeout} s"
        rc = 124
    if isinstance(out, bytes):  # TimeoutExpired keeps bytes even with text=True
        out = out.decode(errors="replace")
    failed = sorted({m.group(1) for m in re.finditer(r"^(?:FAILED|ERROR) (\S+)", out, re.M)})
    summary = next((line.strip("= ") for line in reversed(out.splitlines())
                    if re.search(r"\d+ (passed|failed|skipped|error)", line)), "no summary")
    report["tests"] = {"files": files, "rc": rc, "summary": summary, "failed": failed,
                       "seconds": round(time.time() - t0, 1), "output_tail": out[-8000:]}
    _write_json(d / "check.json", report)
    print(out[-4000:] if rc not in (0, 5) else "", end="")
    print(f"check: pytest -m gpu ({', '.join(files)}): {summary} [rc {rc}]", flush=True)
    if not _cuda():
        print("check: no CUDA here: the GPU tests were skipped"
              + ("" if args.dry_run else "; this is not a GPU machine"))
        return (0 if rc in (0, 5) else 1) if args.dry_run else 1
    if report["data"].startswith("error"):
        return 1
    return 0 if rc == 0 else 1


# ----------------------------------------------------------------------------- bench

def _bench_name(dry_run: bool) -> str:
    slug = "dry-run" if dry_run or not _cuda() else device_slug(torch.cuda.get_device_name(0))
    return f"step_time_{slug or 'cuda'}.json"


def cmd_bench(args) -> int:
    d = Path(args.dir)
    out = d / "bench" / _bench_name(args.dry_run)
    out.parent.mkdir(parents=True, exist_ok=True)
    committed = REPO / "results" / "bench" / out.name
    if not out.exists() and committed.is_file() and not args.dry_run:
        shutil.copyfile(committed, out)  # --resume keeps what an earlier task measured
    if args.dry_run:
        argv = ["--quick", "--device", "cpu", "--variants", "sgd"]
    else:
        if not _cuda():
            print("error: bench: no CUDA here (use --dry-run to check the script on a CPU)",
                  file=sys.stderr)
            return 1
        argv = ["--device", "cuda", "--models", *BENCH_MODELS, "--batches", *BENCH_BATCHES,
                "--modes", *BENCH_MODES, "--steps", str(BENCH_STEPS), "--warmup",
                str(BENCH_WARMUP), "--budget-s", str(args.start_s), "--variants", "sgd"]
    argv += ["--resume", "--out", str(out)]
    print(f"bench: python {STEP_TIME.relative_to(REPO)} {' '.join(argv)}", flush=True)
    try:  # a hung config must not eat the call: the JSON keeps what was measured
        rc = subprocess.run([sys.executable, str(STEP_TIME), *argv], cwd=REPO, env=_env(),
                            timeout=args.stop_s).returncode
    except subprocess.TimeoutExpired:
        print(f"bench: stopped after {args.stop_s:.0f} s", flush=True)
        rc = 124
    results = _read_json(out, {}).get("results", [])
    bad = [r for r in results if "error" in r]
    print(f"bench: {out}: {len(results) - len(bad)} of {len(results)} configs measured"
          + (f"; {len(bad)} with an error or skipped (the next call resumes them)"
             if bad else ""), flush=True)
    return rc


# ----------------------------------------------------------------------------- train

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


class _Progress:
    """progress.json: one entry per run (epoch, test accuracy, s/epoch), rewritten atomically
    after every evaluation; a line printed per run at most every ``every`` seconds."""

    def __init__(self, d: Path, arms, every: float):
        self.path, self.lock, self.every = d / "progress.json", threading.Lock(), every
        self.state = {"started": _now(), "runs": {
            a["key"]: {"tag": a["tag"], "seed": a["seed"], "epochs": a["epochs"]} for a in arms}}
        self.printed = {}

    def update(self, key, **kw):
        with self.lock:
            self.state["runs"][key].update(kw)
            self.state["updated"] = _now()
            _write_json(self.path, self.state)

    def epoch(self, cfg, entry):
        key, now = store.run_key(cfg), time.time()
        run = self.state["runs"][key]
        first = run.get("first_epoch_t") is None
        self.update(key, state="running", epoch=entry["epoch"], epoch_t=now,
                    test_acc=entry.get("test_acc"),
                    **({"first_epoch": entry["epoch"], "first_epoch_t": now} if first else {}))
        span = entry["epoch"] - run["first_epoch"]
        if span > 0:
            self.update(key, s_per_epoch=(now - run["first_epoch_t"]) / span)
        if now - self.printed.get(key, 0) >= self.every or entry["epoch"] == cfg.epochs:
            self.printed[key] = now
            rate, acc = run.get("s_per_epoch"), entry.get("test_acc")
            print(f"{_now()} {cfg.tag} seed {cfg.seed}: epoch {entry['epoch']}/{cfg.epochs}, "
                  f"test acc {float('nan') if acc is None else acc:.4f}"
                  + (f", {rate:.2f} s/epoch" if rate else ""), flush=True)


def cmd_train(args, deadline: float | None = None) -> int:
    """Train the table's runs the run caches lack, at once, until ``deadline`` (time.time();
    default: --until-s from now)."""
    from samkit.sweep import streams
    from samkit.train.config import TrainConfig
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    if not args.dry_run and not _cuda():
        print("error: train: no CUDA here; the blog's table is GPU work (use --dry-run to "
              "check the script on a CPU)", file=sys.stderr)
        return 1
    os.environ["SAMKIT_DATA"] = root = _prepare_data(args)
    if deadline is None and args.until_s is not None:
        deadline = time.time() + args.until_s
    compile_, concurrency, why = _choose(args, d)
    device = "cuda" if (_cuda() and not args.dry_run) else "cpu"
    section = harvest_section(args.params, args.seeds, args.arms, args.dry_run)
    arms = _arms(section, device, compile_)
    cache, known = d / "runs", _known(args)
    manifest = {"created": _now(), "dry_run": args.dry_run, "params": args.params,
                "study": STUDY, "profile": PROFILE, "section": section,
                "seeds": list(args.seeds), "device": device, "compile": compile_,
                "concurrency": concurrency, "choice": why, "commit": _commit(),
                "data_root": root, "arms": arms}
    _write_json(d / "manifest.json", manifest)
    todo = [a for a in arms if not (known / f"{a['key']}.json").is_file()]
    print(f"train: {len(arms)} runs ({', '.join(a['tag'] + ' seed ' + str(a['seed']) for a in arms)}"
          f"), {len(todo)} to train (the others are in {known}), on {device}, compile "
          f"{compile_}, {concurrency} ({why})"
          + (f", for {deadline - time.time():.0f} s" if deadline else ""), flush=True)
    if not todo:
        return 0
    progress = _Progress(d, arms, args.print_every)
    commit = _commit()
    outcome = streams.train_concurrently(
        [TrainConfig(**a["config"]) for a in todo], str(cache), deadline=deadline,
        threads=concurrency == "threads", on_epoch=progress.epoch,
        provenance={"trained_by": "tools/gpu_harvest.py", **(
            {"commit": commit} if commit != "unknown" else {})})
    for a in todo:
        got = outcome.get(a["key"])
        if isinstance(got, dict):
            progress.update(a["key"], state=got["status"], final_test_acc=got["final"].get(
                "test_acc"), train_seconds=got["train_seconds"])
        else:
            progress.update(a["key"], state="unfinished" if isinstance(
                got, streams.DeadlinePassed) else "failed", error=f"{type(got).__name__}: {got}")
        p = progress.state["runs"][a["key"]]
        print(f"train: {a['tag']} seed {a['seed']}: {p['state']}"
              + (f", final test acc {p['final_test_acc']:.4f}" if p.get("final_test_acc")
                 is not None else f" ({p.get('error')})")
              + (f", {p['s_per_epoch']:.2f} s/epoch" if p.get("s_per_epoch") else ""),
              flush=True)
    done = all(isinstance(outcome.get(a["key"]), dict) for a in todo)
    return 0 if done else RC_UNFINISHED


# ----------------------------------------------------------------------------- collect

def cmd_collect(args) -> int:
    d, out = Path(args.dir), Path(args.out)
    manifest = _read_json(d / "manifest.json")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for a in (manifest or {}).get("arms", []):
        src = d / "runs" / f"{a['key']}.json"
        if src.is_file():
            (out / "runs").mkdir(exist_ok=True)
            shutil.copy2(src, out / "runs" / src.name)
            files.append(f"runs/{src.name}")
    for src in sorted((d / "bench").glob("step_time_*.json")):
        (out / "bench").mkdir(exist_ok=True)
        shutil.copy2(src, out / "bench" / src.name)
        files.append(f"bench/{src.name}")
    _write_json(out / "harvest.json", {
        "collected": _now(), "budget": budget(), "steps": _read_json(d / "steps.json"),
        "manifest": manifest, "progress": _read_json(d / "progress.json"),
        "check": _read_json(d / "check.json")})
    files.append("harvest.json")
    n_runs = sum(f.startswith("runs/") for f in files)
    total = len(manifest["arms"]) if manifest else 0
    print(f"collect: {out}: {n_runs} of {total} runs trained here, "
          f"{sum(f.startswith('bench/') for f in files)} bench file(s); {', '.join(files)}")
    return 0


# ----------------------------------------------------------------------------- all

def cmd_all(args) -> int:
    """check, bench, train, collect: one device call, ending BUDGET_S (--budget-s) after it
    starts, whatever a step does (each has a hard limit, training stops at a deadline)."""
    t0 = time.time()
    end = t0 + args.budget_s
    d = Path(args.dir)
    steps, rc = {}, {}

    def left() -> float:
        return end - COLLECT_S - time.time()

    def step(name, fn):
        s = time.time()
        rc[name] = fn()
        steps[name] = {"rc": rc[name], "seconds": round(time.time() - s, 1)}
        _write_json(d / "steps.json", steps)

    try:
        if "check" not in args.skip:
            args.timeout = max(1, int(min(CHECK_TIMEOUT_S, left())))
            step("check", lambda: cmd_check(args))
        if "bench" not in args.skip and left() > 0:
            args.stop_s = max(1.0, min(BENCH_STOP_S, left()))
            args.start_s = max(1.0, min(BENCH_START_S, args.stop_s - 60))
            step("bench", lambda: cmd_bench(args))
        if "train" not in args.skip and left() > 0:
            step("train", lambda: cmd_train(args, deadline=end - COLLECT_S))
    finally:
        cmd_collect(args)
    print(f"all: {round(time.time() - t0)} s of {args.budget_s:.0f}: "
          + ", ".join(f"{k} {v['seconds']:.0f} s (rc {v['rc']})" for k, v in steps.items()))
    return max(rc.values(), default=0)


# ----------------------------------------------------------------------------- ingest

def cmd_ingest(args) -> int:
    """Here, on a CPU machine: the fetched harvest into the repository's results."""
    from samkit.pipeline import params as params_mod
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
        try:
            result = store.read_result(str(f))  # its checksum too
            why = None
        except store.CacheError as e:
            result, why = {}, str(e)
        if why is None:
            cfg = TrainConfig(**result.get("config", {}))
            why = ("its key is not its config's" if store.run_key(cfg) != f.stem else
                   f"result format {result.get('format')} (this code: {store.RESULT_FORMAT})"
                   if result.get("format") != store.RESULT_FORMAT else
                   f"numerics {result.get('numerics')} (this code: {store.NUMERICS_VERSION})"
                   if result.get("numerics") != store.NUMERICS_VERSION else None)
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
    section = manifest["section"]
    configs = params_mod.study_configs(manifest["study"], section, manifest["profile"])
    missing, _ = engine.estimate(configs, str(cache))
    if missing:
        print(f"ingest: the {manifest['profile']} table waits for "
              + ", ".join(f"{c.tag} seed {c.seed}" for c in missing)
              + " (not in the run cache yet; the next lent task trains them): not written")
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


def _steps(text: str) -> list[str]:
    steps = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in steps if s not in ("check", "bench", "train")]
    if bad:
        raise argparse.ArgumentTypeError(f"bad value {', '.join(bad)}; allowed: check, bench, "
                                         "train, comma separated")
    return steps


def parse_args(argv=None):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=DEFAULT_DIR,
                        help="harvest folder on the GPU machine (default $SAMKIT_HARVEST_DIR "
                             f"or {DEFAULT_DIR})")
    common.add_argument("--dry-run", action="store_true",
                        help="toy size on the CPU (width 2, 256 images, epochs /50, eager)")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--gz", help="folder with the four Fashion-MNIST .gz files (default "
                                   "./.fmnist if present)")
    data.add_argument("--data-root", help="where the data is unpacked (default $SAMKIT_DATA or "
                                          "DIR/data)")
    table = argparse.ArgumentParser(add_help=False)
    table.add_argument("--params", default=str(REPO / "params.yaml"))
    table.add_argument("--seeds", type=_seeds, default=[0], help="seeds (default 0)")
    table.add_argument("--arms", type=lambda t: [a.strip() for a in t.split(",") if a.strip()],
                       help="only these arms, by tag, comma separated (default: all)")
    table.add_argument("--known-cache", help="run cache whose runs are not trained again "
                                             "(default: the repository's results/runs)")
    train = argparse.ArgumentParser(add_help=False)
    train.add_argument("--compile", choices=("auto", "graph", "eager"), default="auto",
                       help="auto: graph unless check found a failing graph test")
    train.add_argument("--concurrency", choices=("auto", "threads", "serial"), default="auto",
                       help="threads: every run at once, one thread and CUDA stream each; "
                            "serial: one after the other, shortest first; auto: threads unless "
                            "check found a failing test of graphs in threads")
    train.add_argument("--print-every", type=float, default=60,
                       help="a progress line per run at most every this many seconds")
    p = argparse.ArgumentParser(
        description="samkit's GPU results out of one 10-minute device call: `all` there "
                    "(check, bench, train, collect); `ingest` here.",
        epilog="tools/README.md has the runbook.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("plan", parents=[common, table], help="(CPU) the budget and what is done")
    a = sub.add_parser("all", parents=[common, data, table, train],
                       help="check, bench, train, collect within --budget-s")
    a.add_argument("--out", required=True, help="where collect puts the results ($OUT)")
    a.add_argument("--budget-s", type=float, default=BUDGET_S,
                   help=f"seconds for the whole command (default {BUDGET_S}, of the call's "
                        f"{CALL_LIMIT_S})")
    a.add_argument("--skip", type=_steps, default=[],
                   help="steps to leave out, e.g. check,bench (default: none)")
    c = sub.add_parser("check", parents=[common, data], help="device facts, data, GPU tests")
    c.add_argument("--timeout", type=int, default=CHECK_TIMEOUT_S, help="seconds for the tests")
    b = sub.add_parser("bench", parents=[common], help="step-time benchmark (resumes)")
    b.add_argument("--start-s", type=float, default=BENCH_START_S,
                   help=f"start no benchmark config after this (default {BENCH_START_S})")
    b.add_argument("--stop-s", type=float, default=BENCH_STOP_S,
                   help=f"stop the benchmark after this (default {BENCH_STOP_S})")
    t = sub.add_parser("train", parents=[common, data, table, train],
                       help="train the table's missing runs")
    t.add_argument("--until-s", type=float,
                   help="stop the runs after their first evaluation past this many seconds")
    co = sub.add_parser("collect", parents=[common], help="finished results into OUT")
    co.add_argument("out")
    i = sub.add_parser("ingest", parents=[common], help="(CPU) a fetched harvest into results/")
    i.add_argument("fetched", help="the folder collect wrote (as fetched by the device tool)")
    i.add_argument("--repo", default=str(REPO), help="repository root (default: this one)")
    i.add_argument("--force", action="store_true", help="replace run results that differ")
    return p.parse_args(argv)


COMMANDS = {"plan": cmd_plan, "all": cmd_all, "check": cmd_check, "bench": cmd_bench,
            "train": cmd_train, "collect": cmd_collect, "ingest": cmd_ingest}


def main(argv=None) -> int:
    args = parse_args(argv)
    return COMMANDS[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
