"""What produced a result: code version, device, library versions, time."""
from __future__ import annotations

import datetime
import functools
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


def provenance() -> dict:
    return {"commit": git_commit(), "device": device_name(), "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
