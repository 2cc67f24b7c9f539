"""The run cache: one result file per run, ``<cache>/<key>.json``, and the one writer of it.

The key is a hash of the config fields that change a run's numbers (and of NUMERICS_VERSION),
so a killed or extended sweep redoes only what is missing. Writes are atomic (temp file +
rename), and a per-key file lock keeps two processes that share a cache from training the same
run twice. Every stored result carries "sha256", the checksum of the rest of it (``_digest``):
a file that is truncated, edited or lacks it is refused with one line naming it (CacheError),
never used. Results stored before checksums existed are sealed once with ``python -m samkit
cache seal``.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
from contextlib import contextmanager

import torch

from samkit.atomic import _json_default, replacing
from samkit.atomic import write_json as write_json_atomic
from samkit.train.config import TrainConfig
from samkit.train.loop import train as train_run


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
        unlink_and_close(path, fd)


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


def unlink_and_close(path: str, fd: int) -> None:
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
        unlink_and_close(path, fd)


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
    result = load_cached(cfg, cache)
    if result is None:
        key = run_key(cfg)
        result = _train_and_store(cfg, cache, key, os.path.join(cache, f"{key}.json"), quiet,
                                  lock, data=data, on_epoch=on_epoch, provenance=provenance)
        if result is None:
            return None
        result["key"] = key
        result["config"]["tag"] = cfg.tag  # the tag is the caller's label, not the run's identity
    return result


def load_cached(cfg, cache) -> dict | None:
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


def load_result(key: str, cache: str = "results/runs") -> dict:
    """The full stored result of one run (``key`` column of ``run``'s table): history, probe,
    hessian, provenance — what the flat row leaves out. CacheError if it cannot be trusted."""
    path = os.path.join(cache, f"{key}.json")
    result = read_result(path)
    if result is None:
        raise FileNotFoundError(f"{path}: no stored result of run {key}")
    return result
