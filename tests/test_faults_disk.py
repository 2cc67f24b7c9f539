"""A full disk while checkpointing: one OSError that says so and names the file, the previous
checkpoint intact, no partial temp file (not torch's "[enforce fail at inline_container.cc]").

The disk is a real, tiny tmpfs mounted in a private mount namespace (``unshare``; as a normal
user through a user namespace), so nothing of the machine's own disks is filled."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHILD = r'''
import os, sys, torch
from samkit.train.checkpoint import save_checkpoint

folder = sys.argv[1]
path = os.path.join(folder, "run.ckpt")
save_checkpoint(path, {"epoch": 1, "w": torch.ones(16)})        # fits
try:
    save_checkpoint(path, {"epoch": 2, "w": torch.ones(1 << 18)})  # 1 MiB: does not
except BaseException as e:
    print("RAISED", type(e).__name__, getattr(e, "errno", None))
    print("MESSAGE", e)
else:
    print("RAISED nothing")
print("FILES", sorted(os.listdir(folder)))
print("EPOCH", torch.load(path)["epoch"])
'''


def in_tiny_tmpfs(tmp_path, script, size="256k"):
    """Run ``script`` with a fresh tmpfs of ``size`` mounted on a folder (its argv[1])."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    child = tmp_path / "child.py"
    child.write_text(script)
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
           f'mount -t tmpfs -o size={size} tmpfs "$1" || exit 77; exec "$2" "$3" "$1"',
           "sh", str(mnt), sys.executable, str(child)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}   # this checkout's samkit
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if r.returncode == 77 or "unshare failed" in r.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr
    return dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line), mnt


def test_disk_full_while_checkpointing_says_so_and_keeps_the_old_checkpoint(tmp_path):
    out, mnt = in_tiny_tmpfs(tmp_path, CHILD)
    assert out["RAISED"] == "OSError 28", out   # errno.ENOSPC
    path = mnt / "run.ckpt"
    assert out["MESSAGE"] == (f"[Errno 28] no space left on device: cannot write the checkpoint "
                              f"{path}; free some space and rerun (the run resumes from its "
                              "previous checkpoint)")
    assert out["FILES"] == "['run.ckpt']"   # no partial run.ckpt.tmp.<pid>
    assert out["EPOCH"] == "1"              # the previous checkpoint, whole
