"""samkit.pipeline.signals: what `samkit stage` and `samkit sweep` do at Ctrl-C or SIGTERM.

Every test runs real processes in a session of their own (so no signal reaches pytest): a
"stage" or "sweep" process using the module, and under it "kernels" (a process group of their
own, as jupyter_client starts them) and "workers". The kernels and workers are recorders: they
block SIGINT, SIGTERM and SIGUSR1 and take them with sigtimedwait, logging each signal with the
pid that sent it (0: the kernel, e.g. a terminal's Ctrl-C); SIGUSR1 means "the test is over".
"""
import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

import samkit.pipeline.signals
from samkit.pipeline.signals import STOP_GRACE_S, children, stop_on_signals

CODE = str(Path(samkit.pipeline.signals.__file__).resolve().parents[2])
TIMEOUT = 60   # generous: the machine may be busy

RECORDER = r"""
import json, os, signal, subprocess, sys, time
log, mode = sys.argv[1], sys.argv[2]   # mode "exit": exit at the first SIGINT or SIGTERM
SIGS = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1}
signal.pthread_sigmask(signal.SIG_BLOCK, SIGS)
if len(sys.argv) > 3:   # a kernel: it starts a worker, in its process group
    subprocess.Popen([sys.executable, sys.argv[0], sys.argv[3], mode])
    deadline = time.monotonic() + 60
    while not os.path.exists(sys.argv[3] + ".ready") and time.monotonic() < deadline:
        time.sleep(0.02)

def record(info):
    with open(log, "a") as f:
        f.write(json.dumps([signal.Signals(info.si_signo).name, info.si_pid]) + "\n")

with open(log + ".pid", "w") as f:
    f.write(str(os.getpid()))
os.replace(log + ".pid", log + ".ready")
deadline = time.monotonic() + 120   # never outlive the test by much
while time.monotonic() < deadline:
    info = signal.sigtimedwait(SIGS, 1.0)
    if info is None:
        continue
    if info.si_signo == signal.SIGUSR1:   # over: log what else is pending, then exit
        while (info := signal.sigtimedwait(SIGS - {signal.SIGUSR1}, 0)) is not None:
            record(info)
        break
    record(info)
    if mode == "exit":
        break
"""

COMMON = r"""
import json, os, signal, subprocess, sys, time
recorder, tmp, scenario = sys.argv[1:4]

def wait_for(path):
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {path}")
        time.sleep(0.02)

def recorder_process(name, mode, *more, **kw):
    proc = subprocess.Popen([sys.executable, recorder, f"{tmp}/{name}", mode, *more], **kw)
    wait_for(f"{tmp}/{name}.ready")
    return proc
"""

# `samkit stage`: a kernel (its own process group, with a worker in it) and a plain child (in
# the stage's group, not a kernel); waits for the kernel to end, as papermill would.
STAGE = COMMON + r"""
from samkit.pipeline import signals
if scenario == "second":
    signals.STOP_GRACE_S = 1e6   # only a second signal may kill
out = {}
with signals.stop_on_signals() as stop:
    kernel = recorder_process("kernel", "exit" if scenario == "interrupt" else "ignore",
                              f"{tmp}/worker", start_new_session=True)
    plain = recorder_process("plain", "exit")
    open(f"{tmp}/stage.ready", "w").close()
    deadline = time.monotonic() + 120
    while kernel.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if stop.signum and scenario == "grace":
            stop.stop_kernels()   # as run_stage's loop does
    out["kernel_rc"] = kernel.poll()
    out["stopped_after"] = time.monotonic() - stop.since if stop.since else None
    out["signum"], out["count"] = stop.signum, stop.count
    plain.send_signal(signal.SIGUSR1)
    plain.wait(60)
out["handlers_after"] = [signal.getsignal(signal.SIGINT) is signal.default_int_handler,
                         signal.getsignal(signal.SIGTERM) == signal.SIG_DFL]
with open(f"{tmp}/stage.json", "w") as f:
    json.dump(out, f)
"""

# `samkit sweep`: a worker in the sweep's process group.
SWEEP = COMMON + r"""
from samkit.pipeline.signals import interrupts_forwarded
out = {"interrupted": False}
try:
    with interrupts_forwarded() as stop:
        worker = recorder_process("worker", "ignore")
        open(f"{tmp}/sweep.ready", "w").close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
except KeyboardInterrupt:
    out["interrupted"] = True
out["signum"] = stop.signum
worker.send_signal(signal.SIGUSR1)
worker.wait(60)
with open(f"{tmp}/sweep.json", "w") as f:
    json.dump(out, f)
"""


@pytest.fixture
def lab(tmp_path):
    """The scripts, and on the way out no recorder left running."""
    (tmp_path / "recorder.py").write_text(RECORDER)
    started = []
    yield tmp_path, started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)
    recorder = str(tmp_path / "recorder.py").encode()
    for ready in tmp_path.glob("*.ready"):
        try:
            pid = int(ready.read_text())
            if recorder in Path(f"/proc/{pid}/cmdline").read_bytes():   # still ours
                os.kill(pid, signal.SIGKILL)
        except (ValueError, OSError):
            pass


def _default_sigint():
    # pytest may run as a background job, with SIGINT ignored: that would be inherited.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(lab, script, scenario="", preexec_fn=_default_sigint, **kw):
    """``script`` in a session of its own, returned once it is ready."""
    tmp, started = lab
    name = "stage" if script is STAGE else "sweep"
    with open(tmp / f"{name}.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(tmp / "recorder.py"), str(tmp), scenario],
            env={**os.environ, "PYTHONPATH": CODE}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=preexec_fn, **kw)
    started.append(proc)
    wait_until(lambda: (tmp / f"{name}.ready").exists(), proc, f"{name} ready")
    return proc


def wait_until(cond, proc, what):
    """Poll ``cond`` until true; fail if ``proc`` (if any) exits first, or at the deadline."""
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if proc is not None:
            assert proc.poll() is None, f"exited ({proc.returncode}) before {what}: " \
                f"{log_of(proc)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def log_of(proc):
    return Path(proc.args[4], "stage.log" if proc.args[2] is STAGE else "sweep.log").read_text()


def finish(proc, name):
    proc.wait(timeout=TIMEOUT)
    assert proc.returncode == 0, log_of(proc)
    return json.loads(Path(proc.args[4], f"{name}.json").read_text())


def received(tmp, name):
    """[(signal name, sender pid)] that recorder ``name`` got."""
    path = tmp / name
    lines = path.read_text().split("\n")[:-1] if path.exists() else []   # whole lines only
    return [tuple(json.loads(line)) for line in lines]


def pid_of(tmp, name):
    return int((tmp / f"{name}.ready").read_text())


def gone(pid):
    """Exited (a zombie counts: its parent is gone too, and reaping is init's business)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# ----------------------------------------------------------------------------- stop_on_signals

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_stage_interrupts_its_kernels_process_group(lab, sig):
    tmp, _ = lab
    stage = start(lab, STAGE, "interrupt")
    stage.send_signal(sig)   # to the stage alone: the kernel and its worker do not get it
    out = finish(stage, "stage")
    # recorded, not raised: the stage ends normally, its handlers back as they were
    assert out["signum"] == sig and out["count"] == 1
    assert out["handlers_after"] == [True, True]
    # the kernel's whole group is interrupted (not killed): the kernel and its worker
    assert out["kernel_rc"] == 0
    assert received(tmp, "kernel") == [("SIGINT", stage.pid)]
    assert received(tmp, "worker") == [("SIGINT", stage.pid)]
    # a child that leads no process group of its own is no kernel: left alone
    assert received(tmp, "plain") == []


def test_a_second_signal_kills_the_kernels_process_group(lab):
    tmp, _ = lab
    stage = start(lab, STAGE, "second")   # the grace never ends: only the count matters
    stage.send_signal(signal.SIGTERM)
    wait_until(lambda: received(tmp, "kernel"), stage, "the kernel got the interrupt")
    stage.send_signal(signal.SIGINT)
    out = finish(stage, "stage")
    assert out["signum"] == signal.SIGTERM and out["count"] == 2   # the first one is kept
    assert out["kernel_rc"] == -signal.SIGKILL
    assert received(tmp, "kernel") == [("SIGINT", stage.pid)]   # interrupted once, then killed
    worker = pid_of(tmp, "worker")
    wait_until(lambda: gone(worker), None, "worker gone")
    assert received(tmp, "worker") == [("SIGINT", stage.pid)]


def test_a_kernel_that_does_not_stop_is_killed_after_the_grace_and_interrupted_once(lab):
    tmp, _ = lab
    stage = start(lab, STAGE, "grace")   # stop_kernels called every 0.05 s after the signal
    stage.send_signal(signal.SIGTERM)
    out = finish(stage, "stage")
    assert out["count"] == 1 and out["kernel_rc"] == -signal.SIGKILL
    assert STOP_GRACE_S <= out["stopped_after"] < STOP_GRACE_S + TIMEOUT
    assert received(tmp, "kernel") == [("SIGINT", stage.pid)]
    assert received(tmp, "worker") == [("SIGINT", stage.pid)]
    worker = pid_of(tmp, "worker")
    wait_until(lambda: gone(worker), None, "worker gone")


def test_signals_ignored_at_start_stay_ignored_and_handlers_come_back():
    """A background job (`cmd &`) starts with SIGINT ignored: Ctrl-C at the terminal is not
    for it, and stays so."""
    old_int, old_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def mine(signum, frame):
        pass

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, mine)
        with stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (mine, signal.SIG_DFL,
                                                            signal.SIG_IGN)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


# ----------------------------------------------------------------------------- sweep

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_sweep_alone_raises_and_reaches_its_workers(lab, sig):
    tmp, _ = lab
    sweep = start(lab, SWEEP)
    sweep.send_signal(sig)   # to the sweep alone, not its group
    out = finish(sweep, "sweep")
    assert out["interrupted"] and out["signum"] == sig
    got = received(tmp, "worker")   # the worker is told to stop (it logs SIGUSR1 not)
    assert got and got[0][1] == sweep.pid and got[0][0] in ("SIGINT", "SIGTERM"), got
    if sig == signal.SIGINT:
        assert got == [("SIGINT", sweep.pid)]


def test_ctrl_c_at_the_terminal_is_not_forwarded_a_second_time(lab):
    """Ctrl-C at the terminal goes to the whole foreground group, workers included: the
    sweep must not send its workers a second SIGINT."""
    try:
        master, slave = os.openpty()
    except OSError as e:
        pytest.skip(f"needs a pseudo-terminal: {e}")
    attrs = termios.tcgetattr(slave)
    attrs[3] |= termios.ISIG   # lflag: the line discipline turns ^C into SIGINT
    attrs[6][termios.VINTR] = b"\x03"
    termios.tcsetattr(slave, termios.TCSANOW, attrs)

    def foreground_job():   # in its new session: the pty becomes its controlling terminal
        _default_sigint()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    tmp, _ = lab
    try:
        sweep = start(lab, SWEEP, preexec_fn=foreground_job, stdin=slave)
        os.write(master, b"\x03")
        out = finish(sweep, "sweep")
    finally:
        os.close(slave)
        os.close(master)
    assert out["interrupted"] and out["signum"] == signal.SIGINT
    got = received(tmp, "worker")
    assert ("SIGINT", 0) in got, got   # the terminal's: the test did reach the group
    assert ("SIGINT", sweep.pid) not in got, got


# ----------------------------------------------------------------------------- children

def test_children_lists_live_children_with_their_process_group(lab):
    tmp, started = lab
    recorder = str(tmp / "recorder.py")
    leader = subprocess.Popen([sys.executable, recorder, str(tmp / "kernel"), "exit",
                               str(tmp / "worker")], start_new_session=True)
    plain = subprocess.Popen([sys.executable, recorder, str(tmp / "plain"), "exit"])
    started += [leader, plain]
    for name, proc in (("kernel", leader), ("plain", plain)):
        wait_until(lambda: (tmp / f"{name}.ready").exists(), proc, f"{name} ready")
    found = dict(children())
    assert found.get(leader.pid) == leader.pid       # leads a group of its own
    assert found.get(plain.pid) == os.getpgrp()      # in ours
    assert pid_of(tmp, "worker") not in found        # a grandchild is not a child
    # an exited child that is not reaped yet (a zombie) is not live
    plain.send_signal(signal.SIGKILL)
    wait_until(lambda: gone(plain.pid), None, "the child is a zombie")
    assert plain.returncode is None   # not reaped: still a zombie
    assert plain.pid not in dict(children())
    plain.wait(timeout=TIMEOUT)
    os.killpg(leader.pid, signal.SIGKILL)   # its worker too
    leader.wait(timeout=TIMEOUT)
    assert leader.pid not in dict(children())
