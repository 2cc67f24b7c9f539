"""Atomic file writes: a kill at any moment leaves the old file or the new one, never half.

The data go to a temporary file beside the target (same file system), are fsynced, and the
temporary file is renamed over the target; on failure it is removed.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager

import numpy as np


@contextmanager
def replacing(path, mode: str = "w"):
    """``with replacing(path) as f: f.write(...)``: ``path`` changes only if the block ends
    without an exception."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj) -> None:
    with replacing(path) as f:
        json.dump(obj, f, indent=1, default=_json_default)
        f.write("\n")


def _json_default(o):
    if isinstance(o, (np.integer, np.floating, np.bool_)):  # a comparison of numpy values
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
