"""Grid → cached runs → tidy DataFrame.

Each run's result is stored as ``<cache>/<key>.json``, the key a hash of the config fields that
change its numbers (and of NUMERICS_VERSION). A killed or extended sweep therefore redoes only
what is missing. Writes are atomic (temp file + rename) and a per-key file lock keeps two sweep
processes that share a cache from training the same run twice. Runs train in ``workers``
processes of one thread each: a run's numbers never depend on how many run beside it.

Every stored result carries "sha256", the checksum of the rest of it (``_digest``): a file that
is truncated, edited or lacks it is refused with one line naming it (CacheError), never used.
Results stored before checksums existed are sealed once with ``python -m samkit cache seal``.
"""
from __future__ import annotations

import dataclasses
import fcntl
import glob
import hashlib
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager

import pandas as pd
import torch

from samkit.atomic import _json_default, replacing
from samkit.atomic import write_json as write_json_atomic
from samkit.train.config import TrainConfig
from samkit.measure.fit import epochs_to_fit, peaks
from samkit.train.loop import derived_grad_evals, train as train_run


def combinations(base: dict, grid: dict | None = None, arms: list[dict] | None = None):
    """The field values of every run of a params block, in order: ``base``, then one value of
    each axis (the grid's, and an arm's list values: e.g. each model its own widths), then the
    arm's fixed values; later keys override earlier ones. The one expansion rule of the
    base/grid/arms schema (params.yaml's validation walks the same runs)."""
    for arm in arms or [{}]:
        axes = {**(grid or {}), **{k: v for k, v in arm.items() if isinstance(v, list)}}
        fixed = {k: v for k, v in arm.items() if not isinstance(v, list)}
        for combo in itertools.product(*axes.values()):
            yield {**base, **dict(zip(axes, combo)), **fixed}


def unique(configs) -> list[TrainConfig]:
    """``configs`` without repeats (e.g. SGD at several rho: one run), first one kept."""
    out, seen = [], set()
    for cfg in configs:
        k = (run_key(cfg), cfg.tag)
        if k not in seen:
            seen.add(k)
            out.append(cfg)
    return out


def expand(base: dict, grid: dict | None = None, arms: list[dict] | None = None) -> list[TrainConfig]:
    """Configs for ``base`` × product(grid) × arms (``combinations``), each run once."""
    return unique(TrainConfig(**kw) for kw in combinations(base, grid, arms))


# Bumped when a stored result gains or changes fields: older cache entries are retrained.
# 2: train_seconds (training-only time).
RESULT_FORMAT = 2
# Bumped when a code change alters the numbers of any run (tests/test_golden.py notices): part
# of every run's key, so results of the old code are never mixed with the new.
# 1: the key includes this version.
NUMERICS_VERSION = 1
# CPU threads per run, whatever the number of workers: intra-op parallelism changes the order
# of float sums, so a run trained beside others must use what it would use alone.
RUN_THREADS = 1


def run_key(cfg: TrainConfig) -> str:
    blob = json.dumps({**cfg.key_dict(), "numerics": NUMERICS_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextmanager
def _locked(path: str, mode: str = "wait"):
    """Hold an exclusive lock on the file ``path`` (mode "wait"); with "try", yields False
    (holding nothing) if another process holds it; "none" takes no lock (the caller's share of
    the runs is disjoint from every other's, e.g. cluster jobs on a network file system).

    The lock file is removed on the way out, while still held (also on Ctrl-C): a process that
    opened it before and gets the lock after finds it unlinked and locks the path anew. A
    killed holder's lock (the kernel drops it) leaves the file, which ``remove_debris``
    removes."""
    if mode == "none":
        yield True
        return
    fd = _lock_fd(path, blocking=mode == "wait")
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        _unlink_and_close(path, fd)


def _lock_fd(path: str, blocking: bool) -> int | None:
    """An open descriptor holding flock on the file at ``path`` (made if missing); None if
    another process holds it and not ``blocking``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if os.fstat(fd).st_nlink:  # still the file at ``path``: a holder unlinks it first
            return fd
        os.close(fd)


def _unlink_and_close(path: str, fd: int) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)  # releases the lock


def remove_debris(cache: str) -> None:
    """Remove what killed sweeps left in ``cache`` and no live process holds: lock files and
    work lists (``sweep-*.json``; a live sweep holds a lock on its own). Held ones stay, and so
    does anything this process may not write (a read-only cache)."""
    for path in (glob.glob(os.path.join(glob.escape(cache), "sweep-*.json"))
                 + glob.glob(os.path.join(glob.escape(cache), "*.lock"))):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:  # gone already, or read-only
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a live process
            os.close(fd)
            continue
        _unlink_and_close(path, fd)


def cached_run(cfg: TrainConfig, cache: str, quiet: bool = True, lock: str = "wait",
               data=None, on_epoch=None, provenance: dict | None = None):
    """The result of ``cfg``, from ``cache`` if present (read-only access is enough), else
    trained (resuming a checkpoint left by a killed attempt) and stored. ``lock``: see
    ``_locked``; with "try", None when another process is training it right now.

    For a caller that trains several runs in one process (samkit.sweep.streams): ``data``, the
    config's data set loaded once for all of them (the loader is not made for threads);
    ``on_epoch(entry)``, called after each evaluation and its checkpoint (an exception it
    raises stops the run: nothing is stored, the checkpoint stays to resume from);
    ``provenance``, fields added to the stored result's provenance (e.g. how many runs shared
    the device, which makes its times shared-device times). None of them changes a number of
    the run or its key."""
    result = _load_cached(cfg, cache)
    if result is None:
        key = run_key(cfg)
        result = _train_and_store(cfg, cache, key, os.path.join(cache, f"{key}.json"), quiet,
                                  lock, data=data, on_epoch=on_epoch, provenance=provenance)
        if result is None:
            return None
        result["key"] = key
        result["config"]["tag"] = cfg.tag  # the tag is the caller's label, not the run's identity
    return result


def _load_cached(cfg, cache) -> dict | None:
    key = run_key(cfg)
    result = _load_current(os.path.join(cache, f"{key}.json"))
    if result is not None:
        result.update(cached=True, key=key)
        result["config"]["tag"] = cfg.tag
    return result


def _train_and_store(cfg, cache, key, path, quiet, lock, data=None, on_epoch=None,
                     provenance=None) -> dict | None:
    """The one writer of the run-cache format: train ``cfg`` under the key's lock and store its
    sealed result at ``path`` (None if another process holds the lock and ``lock`` is "try")."""
    os.makedirs(cache, exist_ok=True)
    with _locked(path + ".lock", lock) as mine:
        if not mine:
            return None
        # Under the lock no live writer of this key exists: a temp file is a killed one's debris.
        for debris in glob.glob(os.path.join(glob.escape(cache), f"{key}.*.tmp.*")):
            os.remove(debris)
        result = _load_current(path)  # another process may have finished it while we waited
        if result is not None:
            result["cached"] = True
            return result
        ckpt = os.path.join(cache, f"{key}.ckpt")
        with _threads(RUN_THREADS):
            result = train_run(cfg, checkpoint=ckpt, quiet=quiet, data=data, on_epoch=on_epoch)
        result = {**_with_provenance(result), "format": RESULT_FORMAT,
                  "numerics": NUMERICS_VERSION}
        result["provenance"].update(provenance or {})
        write_json_atomic(path, sealed(result))
        if os.path.exists(ckpt):
            os.remove(ckpt)
        result["cached"] = False
        return result


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_current(path: str) -> dict | None:
    """A stored result, or None if there is none or it predates the current result format
    (it lacks fields that the studies read, e.g. ``train_seconds``): then it is retrained.
    CacheError if it cannot be trusted (``read_result``)."""
    result = read_result(path, check=False)
    if result is None or result.get("format") != RESULT_FORMAT:
        return None
    _check_seal(path, result)
    return result


class CacheError(RuntimeError):
    """A stored result that must not be used; str() is one line: the file, why, the fix."""


SEAL_COMMAND = "python -m samkit cache seal"


def _digest(result: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``result`` less "sha256"."""
    rest = {k: v for k, v in result.items() if k != "sha256"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def sealed(result: dict) -> dict:
    """``result`` as it will be read back from JSON, with its checksum as the last field."""
    plain = json.loads(json.dumps(result, default=_json_default))
    return {**plain, "sha256": _digest(plain)}


def read_result(path: str, check: bool = True) -> dict | None:
    """The stored result at ``path`` (None if there is none); CacheError if it is not valid
    JSON, or (``check``) its checksum is missing or does not match."""
    try:
        with open(path) as f:
            result = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        result = None
    if not isinstance(result, dict):
        raise CacheError(f"{path}: not a stored result (truncated or damaged JSON); allowed: "
                         "the file as the sweep wrote it: restore it (e.g. from git) or "
                         "delete it to retrain the run")
    if check:
        _check_seal(path, result)
    return result


def _check_seal(path: str, result: dict) -> None:
    if "sha256" not in result:
        raise CacheError(f"{path}: no sha256 checksum (stored before results were sealed); "
                         f"allowed: a sealed result: run `{SEAL_COMMAND} --cache "
                         f"{os.path.dirname(path) or '.'}` once, or delete it to retrain the run")
    if result["sha256"] != _digest(result):
        raise CacheError(f"{path}: checksum mismatch (edited or damaged since it was stored); "
                         "allowed: the file as the sweep wrote it: restore it (e.g. from git) "
                         "or delete it to retrain the run")


_RESULT_NAME = re.compile(r"[0-9a-f]{16}\.json")


def result_files(cache: str) -> list[str]:
    """The stored results in ``cache`` (``<key>.json``; not the sweeps' work lists)."""
    return sorted(os.path.join(cache, f) for f in os.listdir(cache) if _RESULT_NAME.fullmatch(f))


def seal(cache: str) -> tuple[int, int, list[str]]:
    """Add "sha256" to every stored result of ``cache`` that lacks one, its other bytes
    unchanged (the field goes last, as ``sealed`` puts it). Run it when no sweep writes to the
    cache. Returns (sealed now, sealed before, one line per file that cannot be sealed: not
    valid JSON, or a checksum that does not match)."""
    done, before, problems = 0, 0, []
    for path in result_files(cache):
        try:
            result = read_result(path, check=False)
            if result is not None and "sha256" in result:
                _check_seal(path, result)  # sealed already; a mismatch is not sealed over
                before += 1
                continue
        except CacheError as e:
            problems.append(str(e))
            continue
        if result is None:  # removed meanwhile
            continue
        with open(path) as f:
            text = f.read()
        body, end = text.rstrip(), text[len(text.rstrip()):]  # end: kept as it was
        digest = _digest(result)
        new = f'{body[:-1].rstrip()},\n "sha256": "{digest}"\n}}{end}'
        check = json.loads(new) if body.endswith("}") else {}
        if list(check) != [*result, "sha256"] or _digest(check) != digest:
            problems.append(f"{path}: not sealed: its JSON does not end with the result's "
                            "closing brace; allowed: a file as the sweep wrote it")
            continue
        with replacing(path) as f:
            f.write(new)
        done += 1
    return done, before, problems


def _with_provenance(result: dict) -> dict:
    from samkit.provenance import provenance
    return {**result, "provenance": provenance()}


def default_workers() -> int:
    """One worker per CPU core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_sweep(configs: list[TrainConfig], cache: str = "results/runs", quiet: bool = True,
        progress: bool = True, workers: int | None = None) -> pd.DataFrame:
    """Run (or fetch) every config; one row per run with its config and metrics, in the order
    of ``configs``. Missing runs train in ``workers`` processes (default: one per core), each
    taking the next run no other holds; with ``progress`` one line per finished run.
    CacheError, before any training, if a stored result cannot be trusted."""
    if os.path.isdir(cache):
        remove_debris(cache)
    results = [_load_cached(cfg, cache) for cfg in configs]
    todo = [cfg for cfg, r in zip(configs, results) if r is None]
    workers = min(workers or default_workers(), len(todo))
    if progress and len(todo) < len(configs):
        print(f"{len(configs) - len(todo)} of {len(configs)} runs from the run cache {cache}",
              flush=True)
    if workers > 1:
        _in_processes(todo, cache, workers, progress)
    # Serially (and after the workers): train what is still missing, or wait for a run that
    # another process (another sweep sharing the cache) holds and read it then.
    got = train_missing([c for c in todo if _load_cached(c, cache) is None], cache, quiet,
                        progress, lock="wait")
    for i, cfg in enumerate(configs):
        if results[i] is None:
            key = run_key(cfg)
            results[i] = got.get(key) or _load_cached(cfg, cache)
            if results[i] is None:
                raise RuntimeError(f"run {key} ({cfg}) did not finish")
            if key not in got:
                results[i]["cached"] = False  # trained by this call's workers
    return pd.DataFrame([to_row(r) for r in results])


def train_missing(configs, cache, quiet=True, progress=True, shard=None, lock="try") -> dict:
    """Train what ``cache`` lacks of ``configs``; by default skipping runs another process
    is training (the body of every worker). ``shard=(i, n)`` takes every n-th run only and
    no lock (a disjoint share, for cluster jobs that must not rely on file locks over a
    network file system). Returns the results it got, by key."""
    if shard is not None:
        configs, lock = configs[shard[0]::shard[1]], "none"
    keys = [run_key(cfg) for cfg in configs]
    got = {}
    for cfg in configs:
        result = cached_run(cfg, cache, quiet=quiet, lock=lock)
        if result is not None:
            got[result["key"]] = result
        if progress and result is not None and not result["cached"]:
            done = sum(os.path.exists(os.path.join(cache, f"{k}.json")) for k in keys)
            print(_progress_line(done, len(configs), cfg, result), flush=True)
    return got


def _in_processes(configs, cache, workers, progress) -> None:
    """``workers`` fresh interpreters (`python -m samkit.sweep.worker`), each walking the same list
    and taking the runs no other holds, so the load balances itself. The work list is locked
    while this process lives (a killed sweep's list is debris to ``remove_debris``)."""
    os.makedirs(cache, exist_ok=True)
    # Locked before it is given the name that remove_debris looks for.
    fd, tmp = tempfile.mkstemp(suffix=".json", prefix=".sweep-", dir=cache)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = os.path.join(cache, os.path.basename(tmp)[1:])
    os.rename(tmp, path)
    try:
        with open(path, "w") as f:
            json.dump([dataclasses.asdict(c) for c in configs], f)
        cmd = [sys.executable, "-m", "samkit.sweep.worker", path, "--cache", cache]
        procs = []
        try:
            procs = [subprocess.Popen(cmd + ([] if progress else ["--no-progress"]))
                     for _ in range(workers)]
            codes = [p.wait() for p in procs]
        except BaseException:  # Ctrl-C: the workers got it too; wait for their checkpoints
            for p in procs:
                p.wait()
            raise
    finally:
        _unlink_and_close(path, fd)
    if any(codes):
        raise WorkerFailed(f"a sweep worker failed (exit codes {codes}); see its output above")


class WorkerFailed(RuntimeError):
    """A sweep worker process exited non-zero (it printed why)."""


def _progress_line(n, total, cfg, result) -> str:
    name = f"{cfg.tag + ' ' if cfg.tag else ''}{cfg.optimizer} {cfg.model}-{cfg.width}"
    if cfg.optimizer != "sgd":
        name += f" rho={cfg.rho:g}"
    name += f" seed {cfg.seed}"
    m = result.get("best") or {}
    acc = (f"test acc {m['test_acc']:.4f}" if "test_acc" in m
           else f"test loss {m['test_loss']:.4g}" if "test_loss" in m else result["status"])
    return f"[{n}/{total}] {name}: {result['seconds']:.0f} s, {acc}"


def to_row(result: dict) -> dict:
    """Flatten a result: config fields, status, params, final_*/best_* metrics, hessian_*,
    bn_drift_*."""
    row = {**result["config"], "status": result["status"],
           "diverged_epoch": result.get("diverged_epoch"), "params": result["params"],
           "nonzero_params": result["nonzero_params"], "seconds": result["seconds"],
           "train_seconds": result.get("train_seconds"), "grad_evals": _grad_evals(result),
           "key": result.get("key"), "cached": result.get("cached")}
    for prefix in ("final", "best"):
        for k, v in result.get(prefix, {}).items():
            row[f"{prefix}_{k}"] = v
    for k, v in result.get("hessian", {}).items():
        row[f"hessian_{k}"] = v
    for k, v in result.get("bn_drift", {}).items():
        row[f"bn_drift_{k}"] = v
    row.update(peaks(result))
    row.update(epochs_to_fit(result))
    return row


def _grad_evals(result: dict):
    """The forward+backward passes of a run's training steps: as the trainer counted them, or,
    for a result stored before it did (sgd, sam and asam, a fixed count per step), derived
    exactly from its config: epochs trained (the diverged epoch if it diverged) x
    ceil(training examples / batch size) x passes per step (sgd 1, sam/asam 2)."""
    if result.get("grad_evals") is not None:
        return result["grad_evals"]
    epochs = (result["config"]["epochs"] if result["status"] == "ok"
              else result.get("diverged_epoch"))
    return float("nan") if epochs is None else derived_grad_evals(result["config"], epochs)


# ----------------------------------------------------------------------------- cost

# For a model the run cache has never run: (width, seconds per training example and forward+
# backward pass) measured on one core of the 2-core CPU box that trained the committed cache
# (median of its stored runs; an unknown model takes the slowest).
REFERENCE_RATES = {"mlp": (512, 6e-5), "one_hidden_relu": (500, 5e-5),
                   "preact_resnet18": (4, 1e-3)}


def measured_rates(cache: str) -> dict:
    """{(dataset, model, depth): {(width, optimizer): [seconds per training example and
    pass]}} of every run stored in ``cache`` (its ``seconds``: one core, RUN_THREADS).
    Unverified files count too: this is an estimate, not a result."""
    rates = {}
    for path in result_files(cache) if os.path.isdir(cache) else []:
        try:
            r = read_result(path, check=False)
            c = r["config"]
            epochs = c["epochs"] if r["status"] == "ok" else r["diverged_epoch"]
            rate = r["seconds"] / (derived_grad_evals(c, epochs) * c["batch_size"])
        except (CacheError, KeyError, TypeError, ZeroDivisionError):
            continue  # refused by name when a sweep reads it
        arch = (c["dataset"], c["model"], c["depth"])
        rates.setdefault(arch, {}).setdefault((c["width"], c["optimizer"]), []).append(rate)
    return rates


def run_seconds(cfg: TrainConfig, rates: dict) -> float:
    """Estimated seconds of one run on one core: its passes (epochs x steps x passes per step
    of its optimizer) x batch size x a rate. The rate: the median of the stored runs
    (``measured_rates``) of its model (of its dataset and depth if any, else any) at the
    nearest measured width (those of its optimizer if any); with no stored run of the model,
    REFERENCE_RATES. Times (width / that width)^2 when wider: compute grows about so."""
    by_width = rates.get((cfg.dataset, cfg.model, cfg.depth))
    if not by_width:
        by_width = {}
        for (_, model, _), runs in rates.items():
            for k, v in runs.items() if model == cfg.model else ():
                by_width.setdefault(k, []).extend(v)
    if by_width:
        w = min({w for w, _ in by_width}, key=lambda w: (abs(math.log(w / cfg.width)), -w))
        rate = statistics.median(by_width.get((w, cfg.optimizer))
                                 or [r for (w2, _), v in by_width.items() if w2 == w for r in v])
    else:
        w, rate = REFERENCE_RATES.get(cfg.model, max(REFERENCE_RATES.values(),
                                                     key=lambda wr: wr[1]))
    passes = derived_grad_evals(vars(cfg), cfg.epochs) * cfg.batch_size  # vars: no deep copy
    return passes * rate * max(1.0, (cfg.width / w) ** 2)


def estimate(configs, cache: str) -> tuple[list[TrainConfig], float]:
    """(the configs ``cache`` lacks, their estimated core-hours: ``run_seconds`` summed).
    ``configs``: a list, or {run key: config} (keys known already: a big grid is quicker)."""
    keyed = configs if isinstance(configs, dict) else {run_key(c): c for c in configs}
    todo = [c for k, c in keyed.items() if not os.path.exists(os.path.join(cache, f"{k}.json"))]
    rates = measured_rates(cache) if todo else {}
    return todo, sum(run_seconds(c, rates) for c in todo) / 3600


# ----------------------------------------------------------------------------- stored results

def load_result(key: str, cache: str = "results/runs") -> dict:
    """The full stored result of one run (``key`` column of ``run``'s table): history, probe,
    hessian, provenance — what the flat row leaves out. CacheError if it cannot be trusted."""
    path = os.path.join(cache, f"{key}.json")
    result = read_result(path)
    if result is None:
        raise FileNotFoundError(f"{path}: no stored result of run {key}")
    return result
