"""Signals during a long command: what `samkit stage` and `samkit sweep` do at Ctrl-C or SIGTERM.

The notebook's kernel and the sweep workers it starts run in a process group of their own,
out of reach of a terminal's Ctrl-C, and a signal sent to one process alone reaches none of its
children: so the signal is caught here and passed on to the processes that do the work.
"""
from __future__ import annotations

import os
import signal
import time

# Ctrl-C in `samkit stage`: the notebook's kernel runs in its own session (jupyter_client starts
# it so), out of reach of the terminal's SIGINT, and so do the sweep workers it starts: stopping
# papermill's client alone leaves them training. So `samkit stage` takes SIGINT and SIGTERM
# itself (papermill runs in a thread), interrupts the kernel's process group (the kernel and its
# workers: they stop at once, keeping the checkpoint of their last evaluation), kills the group
# if it has not stopped after STOP_GRACE_S (or at a second signal), and exits 128 + the signal.
# The grace is short: on a busy machine the kernel's orderly shutdown alone takes seconds, and
# nothing the run cache needs happens in it (results and checkpoints are written atomically; a
# killed sweep's lock files and work list are removed at the next start). After the kill the
# stage waits STOP_WAIT_S more for papermill to return, then leaves it: Ctrl-C stops a stage
# within about 5 s.

STOP_GRACE_S = 2.0
STOP_WAIT_S = 1.0


class SignalCatcher:
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


class stop_on_signals(SignalCatcher):
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


def children() -> list[tuple[int, int]]:
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
    return [pid for pid, pgid in children() if pid == pgid]


class interrupts_forwarded(SignalCatcher):
    """For `samkit sweep`: SIGINT or SIGTERM raises KeyboardInterrupt here and reaches the
    worker processes too. A Ctrl-C at the terminal already reaches them (one process group);
    a signal sent to this process alone would not, and the sweep would wait for workers that
    train on, so it is forwarded, unless it came from the terminal to the whole group."""

    def _handler(self, signum, frame):
        first = self.signum is None
        self.signum = self.signum or signum
        if first and not (signum == signal.SIGINT and _terminal_signals_our_group()):
            for pid, _ in children():
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
