"""A stage's published outputs, copied aside before it runs and put back unless it succeeds.

A stage must leave the study's published outputs exactly as they were unless it succeeds: DVC
keeps them (`persist: true` in dvc.yaml), and the results the notebook writes
(results/<profile>/<study>/, the DVC metrics) are copied aside first and put back if anything
fails: a bad cell, a crash, a signal. A SIGKILL leaves the copy (and the half-written
notebook) behind; the next stage of the study puts the copy back first and removes the rest
(``restore_dead_backups``, ``remove_dead_temps``).
"""
from __future__ import annotations

import glob
import json
import os
import shutil


def _backup_dir(study: str, pid: int) -> str:
    return f".stage.tmp.{study}.{pid}"  # `*.tmp.*`: ignored by git


class Backup:
    """A copy of a stage's outputs taken before it runs, put back unless the stage commits.

    The copy lives in ``.stage.tmp.<study>.<pid>/`` with a manifest (written last, so an
    incomplete copy is never restored): {path: "file" | "dir" | "absent"}."""

    def __init__(self, study: str, paths: list[str]):
        self.dir = _backup_dir(study, os.getpid())
        self.committed = False
        if os.path.exists(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.dir)
        self.manifest = _copy_aside(paths, self.dir)
        _write_manifest(self.dir, self.manifest)
        # Files the stage writes from now on have this mtime or a later one (same clock).
        self.started_ns = os.stat(os.path.join(self.dir, "manifest.json")).st_mtime_ns

    def commit(self, finish, keep=()) -> None:
        """The stage succeeded: drop the copy (its manifest first: a kill from here on must
        not put the old results back beside the new notebook), remove what this run did not
        write (as DVC would have, had it deleted the outputs first), then ``finish()``. The
        paths in ``keep`` are left to ``finish``."""
        os.remove(os.path.join(self.dir, "manifest.json"))
        self.committed = True
        for path in self.manifest:
            if path not in keep:
                _remove_older(path, self.started_ns)
        finish()
        shutil.rmtree(self.dir, ignore_errors=True)

    def restore(self) -> None:
        _restore(self.dir)


def _copy_aside(paths: list[str], folder: str) -> dict:
    """Copy each path into ``folder`` (as ``<its index>``); {path: "file" | "dir" | "absent"}."""
    manifest = {}
    for i, path in enumerate(paths):
        copy = os.path.join(folder, str(i))
        if os.path.isdir(path):
            shutil.copytree(path, copy, symlinks=True)
            manifest[path] = "dir"
        elif os.path.exists(path):
            shutil.copy2(path, copy)
            manifest[path] = "file"
        else:
            manifest[path] = "absent"
    return manifest


def _write_manifest(folder: str, manifest: dict) -> None:
    # Written whole, then renamed: a kill mid-write leaves no manifest, so no half copy is
    # ever restored.
    with open(os.path.join(folder, "manifest.json.tmp"), "w") as f:
        json.dump(manifest, f)
    os.replace(os.path.join(folder, "manifest.json.tmp"), os.path.join(folder, "manifest.json"))


def _remove_older(path: str, ns: int) -> None:
    """Remove the files under ``path`` (or ``path`` itself) last modified before ``ns``, and
    the folders that leaves empty: outputs of an earlier run that this one did not write."""
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                f = os.path.join(root, name)
                if os.lstat(f).st_mtime_ns < ns:
                    os.remove(f)
            if root != path and not os.listdir(root):
                os.rmdir(root)
    elif os.path.lexists(path) and os.lstat(path).st_mtime_ns < ns:
        os.remove(path)


def _restore(backup: str) -> None:
    """Put every output recorded in ``backup`` back as it was, then delete the backup."""
    try:
        with open(os.path.join(backup, "manifest.json")) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        manifest = {}  # incomplete: taken before anything ran, or already committed
    for i, (path, kind) in enumerate(manifest.items()):
        copy = os.path.join(backup, str(i))
        if kind != "absent" and not os.path.lexists(copy):
            continue  # put back already, by an earlier attempt at this restore
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        if kind != "absent":
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            os.replace(copy, path)
    shutil.rmtree(backup, ignore_errors=True)


def restore_dead_backups(study: str) -> None:
    """Backups left by a killed stage of ``study``: its outputs go back as they were before it."""
    for path in _left_by_dead_processes(_backup_dir(study, "")):
        _restore(path)


def remove_dead_temps(prefix: str, suffix: str) -> None:
    """Remove ``<prefix><pid><suffix>`` files whose process is gone (a killed stage's)."""
    for path in _left_by_dead_processes(prefix, suffix):
        os.remove(path)


def _left_by_dead_processes(prefix: str, suffix: str = "") -> list[str]:
    """The paths ``<prefix><pid><suffix>`` whose process ``pid`` is gone. One that names this
    process is a dead one's too: a stage cleans up before it writes anything of its own, so such
    a path was left by a killed stage whose pid this process now has (pids repeat, in a
    container soon)."""
    found = []
    for path in glob.glob(glob.escape(prefix) + "*" + glob.escape(suffix)):
        pid = path[len(prefix):len(path) - len(suffix)]
        if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
            found.append(path)
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True
