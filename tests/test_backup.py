"""samkit.pipeline.backup: a stage's published outputs are copied aside before it runs and put
back exactly as they were unless it commits; after a SIGKILL the next stage of the study puts
the dead stage's copy back (never an incomplete copy) and removes its temporary files, and
never touches those of a stage still running.

Outputs are laid out as `samkit stage` has them: a results folder, a DVC metrics file and the
executed notebook (absent before the first run). The killed stages are real processes.
"""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import samkit.pipeline.backup
from samkit.pipeline.backup import Backup, remove_dead_temps, restore_dead_backups

CODE = str(Path(samkit.pipeline.backup.__file__).resolve().parents[2])
TIMEOUT = 60   # generous: the machine may be busy
STUDY = "simplicity"
RESULTS = "results/quick/simplicity"
METRICS = "results/quick/dvc_metrics/simplicity.json"
NOTEBOOK = "book/studies/simplicity.ipynb"
OUTPUTS = [RESULTS, METRICS, NOTEBOOK]
# What an earlier run published (the notebook: never executed yet).
PREVIOUS = {f"{RESULTS}/runs.csv": b"seed,status\n0,ok\n",
            f"{RESULTS}/summary.csv": b"width,ratio\n5,1.0\n",
            f"{RESULTS}/figures/ratio.png": b"\x89PNG\r\n\x1a\n\x00\xff",
            METRICS: b'{"n_runs": 2}\n'}


def snapshot(root="."):
    """Every file (its bytes) and folder under ``root``."""
    found = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            found[os.path.relpath(os.path.join(dirpath, d), root)] = "<dir>"
        for f in files:
            path = os.path.join(dirpath, f)
            found[os.path.relpath(path, root)] = Path(path).read_bytes()
    return found


def published_outputs():
    """``snapshot()`` less the copies of the outputs."""
    return {k: v for k, v in snapshot().items() if not k.startswith(".stage.tmp.")}


def write(path, data: bytes):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Path(path).write_bytes(data)


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A study folder with the outputs of an earlier run, written a while ago."""
    monkeypatch.chdir(tmp_path)
    for path, data in PREVIOUS.items():
        write(path, data)
        past = time.time() - 3600
        os.utime(path, (past, past))
    os.makedirs(os.path.dirname(NOTEBOOK))   # as run_stage makes it before the backup
    return tmp_path


def the_stage_writes():
    """What a run of the stage does to its outputs: rewrites one, adds some, deletes one,
    and creates the ones that were absent."""
    write(f"{RESULTS}/runs.csv", b"seed,status\n0,ok\n1,diverged\n")
    write(f"{RESULTS}/new.csv", b"x\n")
    write(f"{RESULTS}/new_folder/deep.csv", b"y\n")
    os.remove(f"{RESULTS}/summary.csv")
    write(NOTEBOOK, b"{}")


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=TIMEOUT)
    return proc.pid


def backups():
    return glob.glob(".stage.tmp.*")


# A stage in a process of its own: takes its backup, writes its outputs, says so in
# ``marker`` and hangs to be killed; with "commit", it hangs inside ``commit``'s finish.
STAGE = r"""
import os, sys, time
from samkit.pipeline.backup import Backup
study, marker, when, *outputs = sys.argv[1:]
backup = Backup(study, outputs)
with open(f"{outputs[0]}/runs.csv", "w") as f:
    f.write("seed,status\n0,ok\n1,diverged\n")
os.remove(f"{outputs[0]}/summary.csv")
os.remove(outputs[1])
tmp = f"{outputs[2]}.tmp.{os.getpid()}.ipynb"   # the notebook, being executed
with open(tmp, "w") as f:
    f.write("{}")

def finish():
    os.replace(tmp, outputs[2])
    if when == "commit":
        open(marker, "w").close()
        time.sleep(600)

if when == "commit":
    backup.commit(finish, keep=(outputs[2],))
open(marker, "w").close()
time.sleep(600)
"""


def start_stage(when):
    """A stage process, returned once it reached ``when`` ("running" or "commit")."""
    marker = Path("..", f"{Path.cwd().name}.{when}.marker")
    proc = subprocess.Popen([sys.executable, "-c", STAGE, STUDY, str(marker), when, *OUTPUTS],
                            env={**os.environ, "PYTHONPATH": CODE}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode())
        assert time.monotonic() < deadline, "the stage did not get going"
        time.sleep(0.02)
    return proc


def next_start():
    """What the next stage of the study does first (run_stage)."""
    remove_dead_temps(f"{NOTEBOOK}.tmp.", ".ipynb")
    restore_dead_backups(STUDY)


def sigkill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=TIMEOUT)
    proc.stdout.close()


# ----------------------------------------------------------------------------- in-process

def test_a_stage_that_does_not_commit_leaves_every_output_as_it_was(published):
    before = snapshot()
    backup = Backup(STUDY, OUTPUTS)
    the_stage_writes()
    os.remove(METRICS)
    write(f"{RESULTS}/figures/ratio.png", b"half a png")
    backup.restore()
    # byte for byte; the absent notebook absent again, new files gone, the copy gone
    assert snapshot() == before
    assert not backups()


def test_outputs_replaced_by_another_kind_come_back(published):
    before = snapshot()
    backup = Backup(STUDY, OUTPUTS)
    os.remove(METRICS)
    os.makedirs(METRICS)   # a file became a folder
    write(f"{METRICS}/x", b"x")
    # a folder became a file
    shutil.rmtree(RESULTS)
    write(RESULTS, b"not a folder")
    os.makedirs(NOTEBOOK)   # the absent one became a folder
    backup.restore()
    assert snapshot() == before


def test_a_stage_that_commits_keeps_only_what_it_wrote(published):
    backup = Backup(STUDY, OUTPUTS)
    the_stage_writes()
    write(NOTEBOOK + ".tmp", b'{"cells": []}')
    finished = []

    def finish():
        os.replace(NOTEBOOK + ".tmp", NOTEBOOK)
        finished.append(True)

    backup.commit(finish, keep=(NOTEBOOK,))
    assert finished == [True] and backup.committed
    # What the run wrote stays; what only an earlier run wrote is gone, as if DVC had
    # deleted the outputs before the run (the folder left empty with it).
    assert snapshot(RESULTS) == {"runs.csv": b"seed,status\n0,ok\n1,diverged\n",
                                 "new.csv": b"x\n", "new_folder": "<dir>",
                                 os.path.join("new_folder", "deep.csv"): b"y\n"}
    assert not os.path.exists(METRICS)
    assert Path(NOTEBOOK).read_bytes() == b'{"cells": []}'
    assert not backups()


def test_commit_drops_the_copy_before_it_publishes(published):
    """From the moment ``finish`` publishes, a kill must not put the old results back."""
    backup = Backup(STUDY, OUTPUTS)
    the_stage_writes()
    seen = []
    backup.commit(lambda: seen.append(os.listdir(backup.dir)), keep=(NOTEBOOK,))
    assert seen and "manifest.json" not in seen[0]


# ----------------------------------------------------------------------------- after a kill

def test_a_killed_stages_outputs_are_put_back_by_the_next_start(published):
    before = snapshot()
    proc = start_stage("running")
    try:
        during = snapshot()
        assert published_outputs() != before
        restore_dead_backups(STUDY)   # the stage is still running: not its business
        assert snapshot() == during
    finally:
        sigkill(proc)
    next_start()
    assert snapshot() == before
    assert not backups()


def test_a_stage_killed_while_publishing_keeps_its_new_outputs(published):
    proc = start_stage("commit")
    sigkill(proc)
    published_now = published_outputs()
    assert Path(NOTEBOOK).read_bytes() == b"{}"
    next_start()
    # the old results do not come back beside the new notebook
    assert snapshot() == published_now
    assert Path(f"{RESULTS}/runs.csv").read_bytes() == b"seed,status\n0,ok\n1,diverged\n"
    assert not backups()


def test_an_incomplete_copy_is_never_restored(published):
    """Killed while copying (or writing the manifest): the stage had not run yet, so the
    outputs are as they were, and the partial copy must not overwrite them."""
    before = snapshot()
    folder = f".stage.tmp.{STUDY}.{dead_pid()}"
    os.makedirs(folder)
    write(f"{folder}/0", b"a partial copy")
    write(f"{folder}/manifest.json.tmp", b'{"results/quick/sim')
    restore_dead_backups(STUDY)
    assert snapshot() == before   # untouched, and the leftover removed


def test_a_copy_cut_short_by_a_kill_is_never_restored(published, monkeypatch):
    """Killed in the middle of copying the outputs aside (here: after two files)."""
    before = snapshot()
    real_copy2, real_copytree = shutil.copy2, shutil.copytree
    copied = []

    def dying_copy2(src, dst, **kw):
        if len(copied) == 2:
            raise KeyboardInterrupt("stands for the SIGKILL")
        copied.append(src)
        return real_copy2(src, dst, **kw)

    def dying_copytree(src, dst, symlinks=False, ignore=None, copy_function=None, *a, **kw):
        return real_copytree(src, dst, symlinks, ignore, dying_copy2, *a, **kw)

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(shutil, "copy2", dying_copy2)
        m.setattr(shutil, "copytree", dying_copytree)
        Backup(STUDY, OUTPUTS)
    assert len(copied) == 2
    (left,) = backups()
    os.rename(left, f".stage.tmp.{STUDY}.{dead_pid()}")   # the stage is dead
    next_start()
    assert snapshot() == before


def test_a_restore_cut_short_is_finished_by_the_next_start(published):
    before = snapshot()
    proc = start_stage("running")
    sigkill(proc)
    (folder,) = backups()
    # The first restore put the results folder back (the copy ``<index>`` moved into place),
    # then was killed too.
    shutil.rmtree(RESULTS)
    os.replace(os.path.join(folder, str(OUTPUTS.index(RESULTS))), RESULTS)
    next_start()
    assert snapshot() == before
    assert not backups()


def test_other_studies_backups_are_not_restored(published):
    before = snapshot()
    backup = Backup("simplicity_extra", OUTPUTS)
    the_stage_writes()
    dead = f".stage.tmp.simplicity_extra.{dead_pid()}"
    os.rename(backup.dir, dead)
    during = snapshot()
    restore_dead_backups(STUDY)
    assert snapshot() == during
    restore_dead_backups("simplicity_extra")
    assert snapshot() == before


def test_a_dead_stages_backup_is_restored_even_if_its_pid_is_ours_now(published):
    before = snapshot()
    Backup(STUDY, OUTPUTS)   # a stage with the pid this process has now, killed mid-run
    the_stage_writes()
    # The next stage starts (as run_stage does) under the same pid.
    restore_dead_backups(STUDY)
    backup = Backup(STUDY, OUTPUTS)
    try:
        assert published_outputs() == before
    finally:
        backup.restore()


# ----------------------------------------------------------------------------- temp files

def test_remove_dead_temps_removes_only_those_of_dead_processes(published):
    prefix, suffix = f"{NOTEBOOK}.tmp.", ".ipynb"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        dead = dead_pid()
        names = {"dead": f"{prefix}{dead}{suffix}", "live": f"{prefix}{live.pid}{suffix}",
                 "mine": f"{prefix}{os.getpid()}{suffix}",
                 "not a pid": f"{prefix}x{dead}{suffix}",
                 "other suffix": f"{prefix}{dead}.json",
                 "other notebook": f"book/studies/other.ipynb.tmp.{dead}{suffix}",
                 "the notebook": NOTEBOOK}
        for path in names.values():
            write(path, b"{}")
        remove_dead_temps(prefix, suffix)
        # "mine": a stage cleans up before it writes its own temp, so one with our pid was
        # left by a killed stage whose pid we now have
        assert {k for k, p in names.items() if os.path.exists(p)} == set(names) - {"dead", "mine"}
    finally:
        live.kill()
        live.wait(timeout=TIMEOUT)
