"""Reviewable diffs and a `make repro` that says what it did.

Re-executing a study whose numbers did not change rewrites nothing (no timings, no random
table ids, no memory addresses, no random cell ids, no bootstrap noise in a figure), and the
line `make repro` ends with counts the runs it replayed and trained.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TOY_SIMPLICITY_TWO_SEEDS as PARAMS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The simplicity study at toy scale (conftest.TOY_SIMPLICITY_TWO_SEEDS: its params.yaml).
STUDY = "simplicity"


@pytest.fixture
def quick_clone(tmp_path):
    """A clone of this repository with this checkout's code and the toy params; its run cache
    already holds the study's runs (trained once by `samkit sweep`), as after a first repro."""
    work = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True, timeout=300)
    for name in ("samkit", "notebooks"):
        shutil.rmtree(work / name)
        shutil.copytree(REPO / name, work / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.tmp.*"))
    (work / "params.yaml").write_text(PARAMS)
    shutil.rmtree(work / "results" / "runs", ignore_errors=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "samkit", "sweep", "--studies", STUDY],
                       cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return work, env


def _outputs(work):
    """Every file the stage publishes, byte for byte."""
    files = [work / "book" / "studies" / f"{STUDY}.ipynb",
             work / "results" / "quick" / "dvc_metrics" / f"{STUDY}.json"]
    files += sorted((work / "results" / "quick" / STUDY).iterdir())
    return {str(p.relative_to(work)): p.read_bytes() for p in files}


@pytest.mark.slow
def test_a_study_executed_twice_on_the_same_numbers_is_byte_identical(quick_clone):
    work, env = quick_clone
    published = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "samkit", "stage", STUDY], cwd=work, env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        published.append(_outputs(work))
    first, second = published
    assert first.keys() == second.keys()
    changed = [name for name in first if first[name] != second[name]]
    assert not changed, f"a rerun on the same numbers rewrote {changed}"
    nb = json.loads(first[f"book/studies/{STUDY}.ipynb"])
    assert nb["metadata"]["papermill"]["output_path"] == f"book/studies/{STUDY}.ipynb"


def _outside_make():
    """The environment of a shell, not of a recipe: CI runs this suite from `make test`, and a
    nested make then prints "Entering directory" lines around the commands."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}


def test_make_repro_ends_with_the_line_and_make_retrain_keeps_the_old_cache():
    """`make -n`: the commands, in order, without running them."""
    r = subprocess.run(["make", "-n", "-o", "setup", "repro"], cwd=REPO, capture_output=True,
                       text=True, timeout=60, env=_outside_make())
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "touch .venv/.repro-start" and "dvc repro" in lines[1]
    assert lines[-1] == ".venv/bin/python -m samkit.pipeline.results .venv/.repro-start", lines
    r = subprocess.run(["make", "-n", "-o", "setup", "retrain"], cwd=REPO,
                       capture_output=True, text=True, timeout=60, env=_outside_make())
    assert r.returncode == 0, r.stderr
    assert "mv results/runs results/runs.before-retrain" in r.stdout
    assert "python -m samkit sweep && dvc repro -f" in r.stdout
    assert "verify" not in r.stdout
