"""Checkpoints of a run: written atomically (a kill leaves the old one or the new one), read
back only into the run they belong to."""
from __future__ import annotations

import errno
import io
import os

import torch


def save_checkpoint(path: str, state: dict) -> None:
    """Write-then-rename: a kill at any moment leaves the old checkpoint or the new one.

    A failed write (disk full, quota, read-only folder) raises OSError with its errno and the
    path ("no space left on device: ..."), never torch's bare "[enforce fail at
    inline_container.cc]", and leaves no partial temp file; the old checkpoint stays."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        failed = False
        try:
            torch.save(state, tmp)
        except RuntimeError:  # not kept: its traceback holds torch's writer (and its file) open
            failed = True
        if failed:
            # torch's zip writer reports a failed write without its cause (errno). Write the
            # same bytes with Python's file API, which raises OSError with the real errno
            # (or succeeds, if the failure was transient).
            buf = io.BytesIO()
            torch.save(state, buf)
            with open(tmp, "wb") as f:
                f.write(buf.getbuffer())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"no space left on device: cannot write the checkpoint "
                          f"{path}; free some space and rerun (the run resumes from its "
                          "previous checkpoint)") from None
        raise OSError(e.errno, f"cannot write the checkpoint {path}: {e.strerror or e}") from e


def load_checkpoint(path, cfg, model, opt, sched):
    """Restore model, optimizer and scheduler from ``path``; the saved state, or None when
    there is no checkpoint or it belongs to another config."""
    if not path or not os.path.exists(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("config") != cfg.key_dict():
        return None  # a checkpoint of another run: start afresh rather than mix them
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return state
