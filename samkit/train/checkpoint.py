"""Checkpoints of a run: written atomically (a kill leaves the old one or the new one), read
back only into the run they belong to."""
from __future__ import annotations

import errno
import io
import os
import pickle

import torch

from samkit.train.config import KEY_OMITTED_AT_DEFAULT


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


class CheckpointError(RuntimeError):
    """A checkpoint that must not be resumed; str() is one line: the path, why, the fix."""


def load_checkpoint(path, cfg, model, opt, sched):
    """Restore model, optimizer and scheduler from ``path``; the saved state, or None when
    there is no checkpoint. One that cannot be read, or that another config saved, raises
    CheckpointError: training over it would silently throw its epochs away, and resuming it
    into this run would mix two runs."""
    if not path or not os.path.exists(path):
        return None
    fix = f"delete it to start this run afresh (rm {path})"
    try:
        # Tensors and plain containers only: unpickling any other object can run its code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's refusal of other objects (or a damaged pickle)
        raise CheckpointError(f"checkpoint {path}: refused: it does not load as tensors and "
                              "plain data alone (damaged, or it holds objects whose loading "
                              f"could run code); {fix}") from None
    except Exception as e:  # truncated, damaged, not a torch file, unreadable
        why = str(e).split(". ")[0].splitlines()[0][:120] if str(e) else ""
        raise CheckpointError(f"checkpoint {path}: cannot be read (truncated or damaged: "
                              f"{type(e).__name__}{': ' + why if why else ''}); {fix}") from None
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path}: not a samkit checkpoint (no config); {fix}")
    if saved != cfg.key_dict():
        # Refused even when only the epochs grew: the lr schedule (its milestones, cosine's
        # period) is set by the epochs, so a longer run is not this one continued.
        raise CheckpointError(f"checkpoint {path}: saved by another config "
                              f"({_differences(saved, cfg.key_dict())}); allowed: a "
                              f"checkpoint of this config: rerun with the config it was "
                              f"saved with, or {fix}")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return state


def _differences(saved: dict, now: dict) -> str:
    """"epochs 10 there, 20 here; ..." for every run field that differs."""
    saved, now = {**KEY_OMITTED_AT_DEFAULT, **saved}, {**KEY_OMITTED_AT_DEFAULT, **now}
    return "; ".join(f"{k} {saved.get(k)!r} there, {now.get(k)!r} here"
                     for k in sorted(saved.keys() | now.keys()) if saved.get(k) != now.get(k))
