"""What produced a result: code version, device, library versions, time."""
from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess

import torch


# ":(top)" makes the paths relative to the repository root wherever the process runs.
CODE_PATHS = tuple(f":(top){p}" for p in ("samkit", "notebooks", "benchmarks", "pyproject.toml",
                                          "requirements.lock"))


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        # Only code counts: the pipeline itself rewrites tracked files (results/, the executed
        # notebooks in book/), and the params a result used are recorded beside it.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                *CODE_PATHS], capture_output=True, text=True, timeout=10
                               ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name (e.g. "AMD EPYC"): another model may round differently."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The vector instruction set ATen's CPU kernels dispatch to (e.g. "AVX512"; lowered by
    ATEN_CPU_CAPABILITY): it decides the order of float sums, so runs differ across it."""
    isa = torch.backends.cpu.get_cpu_capability()
    cbwr = os.environ.get("MKL_CBWR")  # MKL's own kernel choice, forced the same way
    return f"{isa} (MKL_CBWR={cbwr})" if cbwr else isa


def provenance() -> dict:
    return {"commit": git_commit(), "device": device_name(), "cpu": cpu_model(),
            "cpu_isa": cpu_isa(), "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def provenance_line(meta: dict) -> str:
    """One line for a figure caption or page footer, from a study's saved metadata."""
    p = meta["provenance"]
    return (f"profile {meta['profile']} · {p['device']} · torch {p['torch']} · commit "
            f"{p['commit']} · {p['date'][:10]} · {meta['n_runs']} runs "
            f"({meta['n_cached']} from the run cache), seeds "
            f"{','.join(map(str, meta['seeds']))} · {meta['run_seconds'] / 60:.1f} min of runs")
