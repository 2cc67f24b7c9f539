"""One DVC stage: validate params.yaml, execute a study's notebook into the book, and never
leave the study's published outputs half-changed (``samkit stage <study>`` runs ``run``)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import sys
import threading
import time


def params_errors(e) -> int:
    """Print every problem of a ParamsError, one ``error:`` line each; the exit status 2."""
    for line in e.problems:
        print(f"error: {line}", file=sys.stderr)
    return 2


# A stage must leave the study's published outputs exactly as they were unless it succeeds:
# DVC keeps them (`persist: true` in dvc.yaml), the executed notebook replaces the book's copy
# only at the end, and the results the notebook writes (results/<profile>/<study>/, the DVC
# metrics) are copied aside first and put back if anything fails: a bad cell, a crash, a
# signal. A SIGKILL leaves the copy behind; the next stage of the study puts it back first.
#
# Ctrl-C: the notebook's kernel runs in its own session (jupyter_client starts it so), out of
# reach of the terminal's SIGINT, and so do the sweep workers it starts: stopping papermill's
# client alone leaves them training. So `samkit stage` takes SIGINT and SIGTERM itself (papermill
# runs in a thread), interrupts the kernel's process group (the kernel and its workers: they
# stop at once, keeping the checkpoint of their last evaluation), kills the group if it has
# not stopped after STOP_GRACE_S (or at a second signal), and exits 128 + the signal.

STOP_GRACE_S = 10.0


def run(study: str, params_path: str = "params.yaml", verbose: bool = False) -> int:
    """Validate params.yaml, then execute notebooks/<study>.ipynb with papermill into the
    book; the executed copy and the study's results change only when the run succeeded.
    Returns the exit status (0, 1 failed, 2 bad params, 128 + signal)."""
    from .params import ParamsError, load
    out = PAGES.get(study, os.path.join("book", "studies", f"{study}.ipynb"))
    _remove_dead_temps(f"{out}.tmp.", ".ipynb")
    _restore_dead_backups(study)
    try:
        params = load(params_path)
    except ParamsError as e:
        return params_errors(e)
    src = os.path.join("notebooks", f"{study}.ipynb")
    parameters = {"profile": params.get("profile", "cpu")}
    if study in params:
        parameters[study] = params[study]
    elif study not in PAGES:
        print(f"error: {study}: no section {study!r} in {params_path}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp.{os.getpid()}.ipynb"
    t0 = time.time()
    with _stop_on_signals() as stop:
        try:
            backup = _Backup(study, _stage_outputs(study, parameters["profile"], out))
        except OSError as e:
            print(f"error: {study}: cannot copy its outputs aside before running: {e}",
                  file=sys.stderr)
            return 1
        failure = None
        try:
            if not stop.signum:
                failure = _execute(src, tmp, parameters, verbose, stop)
            if not failure and not stop.signum:
                _hide_default_parameters(tmp)
                backup.commit(lambda: os.replace(tmp, out), keep=(out,))
        except Exception as e:  # e.g. the notebook is missing or the kernel did not start
            failure = f"{type(e).__name__}: {' '.join(str(e).split())}"
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)  # keep the previous executed notebook, not a failed one
            if not backup.committed:
                backup.restore()
    if stop.signum:
        name = signal.Signals(stop.signum).name
        state = ("it had just finished: its outputs are new" if backup.committed else
                 "its outputs are as they were; finished runs are in the run cache and an "
                 "interrupted run resumes from its last checkpoint")
        print(f"interrupted: {study}: stopped by {name} after {time.time() - t0:.0f} s; "
              f"{state}", file=sys.stderr)
        return 128 + stop.signum
    if failure:
        print(f"error: {study}: {failure}", file=sys.stderr)
        return 1
    print(f"{study}: {out} in {time.time() - t0:.0f} s")
    return 0


def _execute(src, tmp, parameters, verbose, stop) -> str | None:
    """Run the notebook with papermill in a thread (so that this, the main thread, keeps its
    signal handlers and can stop the kernel); None, or what went wrong in one line."""
    import papermill
    outcome = {}

    def target():
        try:
            # log_level: the kernel's own chatter ("Kernel is running over TCP ...") is noise
            # on the terminal of `dvc repro`; its errors still show.
            papermill.execute_notebook(src, tmp, parameters=parameters, kernel_name="python3",
                                       cwd=".", progress_bar=False, log_output=verbose,
                                       extra_arguments=["--IPKernelApp.log_level=ERROR"])
        except papermill.PapermillExecutionError as e:
            outcome["error"] = f"notebook failed in cell {e.exec_count}: {e.ename}: {e.evalue}"
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"

    runner = threading.Thread(target=target, name="papermill", daemon=True)
    runner.start()
    while runner.is_alive():
        runner.join(0.1)
        if stop.signum:
            stop.stop_kernels()
            if time.monotonic() - stop.since > 2 * STOP_GRACE_S:
                break  # papermill does not return: leave it (a daemon thread) behind
    return outcome.get("error")


class _SignalCatcher:
    """While active, SIGINT and SIGTERM go to ``self._handler`` (unless ignored when we
    started, as for a background job); the previous handlers come back on exit."""

    def __enter__(self):
        self.signum, self._old = None, {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _stop_on_signals(_SignalCatcher):
    """SIGINT and SIGTERM record the signal instead of raising; ``stop_kernels`` then
    interrupts the process groups of this process's kernels, and kills them STOP_GRACE_S
    later or at a second signal."""

    def __enter__(self):
        self.count, self.since = 0, None
        self._sent = {}  # pgid -> signal sent
        return super().__enter__()

    def _handler(self, signum, frame):
        self.count += 1
        if self.signum is None:
            self.signum, self.since = signum, time.monotonic()
        self.stop_kernels()

    def stop_kernels(self):
        kill = self.count > 1 or time.monotonic() - self.since > STOP_GRACE_S
        for pgid in _kernel_groups():
            sig = signal.SIGKILL if kill else signal.SIGINT
            if self._sent.get(pgid) in (sig, signal.SIGKILL):
                continue
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                continue
            self._sent[pgid] = sig


def _children() -> list[tuple[int, int]]:
    """(pid, process group) of every live child of this process (Linux /proc)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.append((int(entry), int(fields[2])))
    return found


def _kernel_groups() -> list[int]:
    """The process groups led by children of this process: the kernels papermill started
    (jupyter_client gives each a session of its own, which its sweep workers share)."""
    return [pid for pid, pgid in _children() if pid == pgid]


class interrupts_forwarded(_SignalCatcher):
    """For `samkit sweep`: SIGINT or SIGTERM raises KeyboardInterrupt here and reaches the
    worker processes too. A Ctrl-C at the terminal already reaches them (one process group);
    a signal sent to this process alone would not, and the sweep would wait for workers that
    train on, so it is forwarded, unless it came from the terminal to the whole group."""

    def _handler(self, signum, frame):
        first = self.signum is None
        self.signum = self.signum or signum
        if first and not (signum == signal.SIGINT and _terminal_signals_our_group()):
            for pid, _ in _children():
                try:
                    os.kill(pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        raise KeyboardInterrupt


def _terminal_signals_our_group() -> bool:
    """Is this process in the foreground process group of its controlling terminal (so a
    Ctrl-C there went to all of the group)?"""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_temps(prefix: str, suffix: str) -> None:
    """Remove ``<prefix><pid><suffix>`` files whose process is gone (a killed stage's)."""
    for path in glob.glob(glob.escape(prefix) + "*" + glob.escape(suffix)):
        pid = path[len(prefix):len(path) - len(suffix)]
        if pid.isdigit() and not _pid_alive(int(pid)):
            os.remove(path)


def _stage_outputs(study: str, profile: str, notebook: str) -> list[str]:
    """What DVC tracks as the stage's outputs (dvc.yaml's study template, and the pages):
    the study's results, its DVC metrics and its executed notebook."""
    return [os.path.join("results", profile, study),
            os.path.join("results", profile, "dvc_metrics", f"{study}.json"), notebook]


def _backup_dir(study: str, pid: int) -> str:
    return f".stage.tmp.{study}.{pid}"  # `*.tmp.*`: ignored by git


class _Backup:
    """A copy of a stage's outputs taken before it runs, put back unless the stage commits.

    The copy lives in ``.stage.tmp.<study>.<pid>/`` with a manifest (written last, so an
    incomplete copy is never restored): {path: "file" | "dir" | "absent"}."""

    def __init__(self, study: str, paths: list[str]):
        self.dir = _backup_dir(study, os.getpid())
        self.committed = False
        if os.path.exists(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.dir)
        manifest = {}
        for i, path in enumerate(paths):
            copy = os.path.join(self.dir, str(i))
            if os.path.isdir(path):
                shutil.copytree(path, copy, symlinks=True)
                manifest[path] = "dir"
            elif os.path.exists(path):
                shutil.copy2(path, copy)
                manifest[path] = "file"
            else:
                manifest[path] = "absent"
        self.manifest = manifest
        with open(os.path.join(self.dir, "manifest.json.tmp"), "w") as f:
            json.dump(manifest, f)
        os.replace(os.path.join(self.dir, "manifest.json.tmp"),
                   os.path.join(self.dir, "manifest.json"))
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


def _restore_dead_backups(study: str) -> None:
    """Backups left by a killed stage of ``study``: its outputs go back as they were before it."""
    prefix = _backup_dir(study, "")
    for path in glob.glob(glob.escape(prefix) + "*"):
        pid = path[len(prefix):]
        if pid.isdigit() and not _pid_alive(int(pid)):
            _restore(path)


def _hide_default_parameters(path):
    """No code on the book's pages: the notebook's own defaults cell (a tiny smoke test) would
    mislead there, and the values it ran with are papermill's injected cell, which stays in
    the executed notebook (and papermill's metadata) but is not shown either; each page ends
    with its provenance instead."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if {"parameters", "injected-parameters"} & set(tags) and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, path)


# Pages that are not studies: the front page (all studies' verdicts) and the benchmarks.
PAGES = {"summary": os.path.join("book", "intro.ipynb"),
         "performance": os.path.join("book", "performance.ipynb")}


