"""Reviewable diffs and a `make repro` that says what it did.

Re-executing a study whose numbers did not change rewrites nothing (no timings, no random
table ids, no memory addresses, no random cell ids, no bootstrap noise in a figure), and the
line `make repro` ends with counts the runs it replayed and trained.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from samkit.pipeline import params as params_mod, results
from samkit.sweep import engine as sweep
from samkit.pipeline.stage import _strip_run_noise

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The simplicity study at toy scale (1-D data: no dataset; 2 seeds so its statistics run).
STUDY = "simplicity"
PARAMS = """profile: quick
simplicity:
  quick:
    base: {dataset: toy1d, model: one_hidden_relu, lr: 0.005, momentum: 0.9,
           weight_decay: 0.0, schedule: constant, batch_size: 12, epochs: 3000,
           eval_every: 1000, rho: 0.1, early_stopping: false}
    grid: {width: [5, 50], optimizer: [sgd, sam], seed: [0, 1]}
"""


def _styled_notebook(path, uid, address):
    """An executed notebook as papermill leaves it: timings, a temporary output path, a random
    id on the injected cell, a Styler table with a random id and a repr with an address."""
    html = (f'<style type="text/css">\n#T_{uid}_row0_col0 {{ color: red; }}\n</style>\n'
            f'<table id="T_{uid}">\n  <td id="T_{uid}_row0_col0" class="data row0 col0" >1'
            '</td>\n</table>\n')
    out = nbformat.v4.new_output("execute_result", execution_count=2, data={
        "text/html": html, "text/plain": f"<pandas.io.formats.style.Styler at {address}>"})
    timing = {"start_time": f"2026-01-01T00:00:0{uid[-1]}", "end_time": f"{address}",
              "duration": int(uid[-1], 16) / 10, "status": "completed", "exception": False}
    injected = nbformat.v4.new_code_cell('profile = "cpu"', metadata={
        "tags": ["injected-parameters"], "papermill": dict(timing)})
    injected.id = f"rand{uid}"
    shown = nbformat.v4.new_code_cell("t", execution_count=2, outputs=[out], metadata={
        "papermill": dict(timing), "execution": {"iopub.status.busy": timing["start_time"]}})
    shown.id = "cell1"
    nb = nbformat.v4.new_notebook(cells=[injected, shown], metadata={"papermill": {
        **timing, "output_path": f"book/x.ipynb.tmp.{uid}.ipynb", "parameters": {}}})
    nbformat.write(nb, path)


def test_run_noise_is_stripped_and_the_table_still_styled(tmp_path):
    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    _styled_notebook(a, "53616", "0x7f9c3d157490")
    _styled_notebook(b, "9be01", "0x7f00aa001122")
    for path in (a, b):
        _strip_run_noise(path, "book/x.ipynb")
    assert a.read_bytes() == b.read_bytes()
    nb = nbformat.read(a, as_version=4)
    assert nb.metadata.papermill == {"status": "completed", "exception": False,
                                     "output_path": "book/x.ipynb", "parameters": {}}
    assert nb.cells[0].id == "injected-parameters"
    assert "execution" not in nb.cells[1].metadata
    html = nb.cells[1].outputs[0].data["text/html"]
    uid = re.search(r'<table id="T_(\w+)"', html).group(1)
    assert f"#T_{uid}_row0_col0 {{" in html and f'<td id="T_{uid}_row0_col0"' in html
    assert nb.cells[1].outputs[0].data["text/plain"] == "<pandas.io.formats.style.Styler>"


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


def test_the_repro_line_counts_replayed_and_trained_runs(tmp_path):
    """Runs in the cache before the stamp were replayed, newer ones trained, absent missing;
    only the runs of the studies dvc.yaml publishes count."""
    spec = yaml.safe_load(PARAMS)
    (tmp_path / "params.yaml").write_text(PARAMS)
    (tmp_path / "dvc.yaml").write_text(f"vars:\n  - studies: [{STUDY}]\n  - queued: []\n")
    keys = sorted({sweep.run_key(c) for c in
                   params_mod.study_configs(STUDY, spec[STUDY], "quick")})
    assert len(keys) == 8
    cache = tmp_path / "runs"
    cache.mkdir()
    for key in keys[:5]:
        (cache / f"{key}.json").write_text("{}")
        os.utime(cache / f"{key}.json", (1_000_000, 1_000_000))
    stamp = tmp_path / "stamp"
    stamp.write_text("")
    os.utime(stamp, (2_000_000, 2_000_000))
    for key in keys[5:7]:
        (cache / f"{key}.json").write_text("{}")   # written now: after the stamp
    line = results.repro_line(str(stamp), str(tmp_path / "params.yaml"),
                              str(tmp_path / "dvc.yaml"), str(cache))
    assert line.startswith(f"5 runs replayed from the run cache ({cache}/), 2 trained, "
                           "1 missing (profile quick).")
    assert line.endswith("To retrain every run into a fresh cache (hours): make retrain")


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
