"""samkit.atomic: a write through ``replacing`` changes the target only if its block ends without
an exception, and a kill at any moment leaves the old file or the new one, never half of one;
``write_json`` writes numpy scalars as plain numbers and refuses anything else.

The kills are real: a child process SIGKILLed while inside ``replacing`` (synchronised by a
marker file it writes), or in the middle of a stream of rewrites.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import samkit.atomic
from samkit.atomic import replacing, write_json

REPO = Path(__file__).resolve().parents[1]
# The child processes import the very samkit these tests import.
CODE = str(Path(samkit.atomic.__file__).resolve().parents[1])
TIMEOUT = 60   # generous: the machine may be busy


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (CODE, os.environ.get("PYTHONPATH")) if p)}


def _start(script, *args):
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(cond, proc, what):
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"child exited ({proc.returncode}) before {what}: "
                                 f"{proc.stdout.read().decode()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=TIMEOUT)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def _git_ignores(name) -> bool:
    """Does the repository's .gitignore ignore a file called ``name`` in results/?"""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    r = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index",
                        f"results/quick/study/{name}"], timeout=TIMEOUT)
    assert r.returncode in (0, 1)
    return r.returncode == 0


# Inside ``replacing``: write part of the new content, say so, and hang (to be SIGKILLed).
KILLED_INSIDE = r"""
import sys, time
from samkit.atomic import replacing
path, marker = sys.argv[1:]
with replacing(path) as f:
    f.write("new " * 100_000)
    f.flush()
    open(marker, "w").close()
    time.sleep(600)
    f.write("the end\n")
"""

# Just after ``replacing`` returned: the new content is complete and in place.
KILLED_AFTER = r"""
import sys, time
from samkit.atomic import replacing
path, marker = sys.argv[1:]
with replacing(path) as f:
    f.write("new " * 100_000)
open(marker, "w").close()
time.sleep(600)
"""

# Rewrites ``path`` with a growing version number, as fast as it can, until killed.
REWRITING = r"""
import sys
from samkit.atomic import write_json
path = sys.argv[1]
for version in range(10**9):
    write_json(path, {"version": version, "payload": [version] * 200_000})
"""


def test_a_kill_inside_replacing_leaves_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old\n")
    marker = tmp_path.parent / f"{tmp_path.name}.marker"
    proc = _start(KILLED_INSIDE, path, marker)
    _wait_for(marker.exists, proc, "the child is inside replacing")
    _kill(proc)
    assert path.read_text() == "old\n"
    # The half-written temporary file stays (nothing could remove it), beside the target
    # and under a name git ignores.
    left = [p.name for p in tmp_path.iterdir() if p.name != "metrics.json"]
    assert len(left) == 1 and left[0].startswith("metrics.json"), left
    assert _git_ignores(left[0]), left


def test_a_kill_inside_replacing_leaves_no_file_where_there_was_none(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    marker = tmp_path / "marker"
    proc = _start(KILLED_INSIDE, path, marker)
    _wait_for(marker.exists, proc, "the child is inside replacing")
    _kill(proc)
    assert not path.exists()


def test_a_kill_after_replacing_returned_leaves_the_whole_new_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old\n")
    marker = tmp_path.parent / f"{tmp_path.name}.marker"
    proc = _start(KILLED_AFTER, path, marker)
    _wait_for(marker.exists, proc, "replacing returned")
    _kill(proc)
    assert path.read_text() == "new " * 100_000
    assert os.listdir(tmp_path) == ["metrics.json"]   # and no temporary file


def test_a_kill_amid_rewrites_leaves_one_complete_version(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"version": -1, "payload": []})

    def rewritten_twice():
        return json.loads(path.read_text())["version"] >= 1   # each read sees a whole file

    proc = _start(REWRITING, path)
    _wait_for(rewritten_twice, proc, "two rewrites")
    _kill(proc)   # most likely mid-write: the child does nothing else
    doc = json.loads(path.read_text())
    assert doc["version"] >= 1
    assert doc["payload"] == [doc["version"]] * 200_000


def test_replacing_changes_the_file_when_the_block_succeeds(tmp_path):
    path = tmp_path / "new" / "folder" / "table.csv"   # missing folders are made
    with replacing(path) as f:
        f.write("a,b\n")
        assert not path.exists()   # nothing visible before the block ends
    assert path.read_text() == "a,b\n"
    with replacing(str(path), "wb") as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["table.csv"]


def test_an_exception_in_the_block_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old\n")
    with pytest.raises(ZeroDivisionError):
        with replacing(path) as f:
            f.write("half of the new")
            1 / 0
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_an_exception_in_the_block_leaves_no_file_where_there_was_none(tmp_path):
    path = tmp_path / "metrics.json"
    with pytest.raises(KeyboardInterrupt):
        with replacing(path) as f:
            f.write("half")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_write_json_writes_numpy_scalars_as_plain_numbers(tmp_path):
    path = tmp_path / "m.json"
    doc = {"n": np.int64(3), "small": np.int8(-2), "u": np.uint32(7), "loss": np.float64(0.25),
           "acc": np.float32(0.5), "half": np.float16(1.5), "list": [np.int32(1), 2.0, "x"],
           "plain": {"a": None, "b": True}, "flag": np.float64(2.0) > 1}
    write_json(path, doc)
    back = json.loads(path.read_text())
    assert back == {"n": 3, "small": -2, "u": 7, "loss": 0.25, "acc": 0.5, "half": 1.5,
                    "list": [1, 2.0, "x"], "plain": {"a": None, "b": True}, "flag": True}
    assert type(back["n"]) is int and type(back["loss"]) is float
    assert path.read_text().endswith("}\n")
    # np.float32(0.1) is not 0.1: its exact value comes back, not a rounded one
    write_json(path, [np.float32(0.1)])
    assert json.loads(path.read_text()) == [float(np.float32(0.1))]


@pytest.mark.parametrize("bad", [object(), {1, 2}, np.arange(3), b"bytes", 1j],
                         ids=["object", "set", "ndarray", "bytes", "complex"])
def test_write_json_refuses_other_objects_and_leaves_the_old_file(tmp_path, bad):
    path = tmp_path / "m.json"
    write_json(path, {"old": 1})
    with pytest.raises(TypeError):
        write_json(path, {"new": [1, bad]})
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["m.json"]
