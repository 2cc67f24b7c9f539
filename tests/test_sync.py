"""samkit.pipeline.sync: dvc.yaml's study lists and plots and the book's table of contents are
derived from the registry (the modules of samkit/studies/), so a new study is its module, its
notebook, its params block and its test, and nothing else."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from samkit import studies
from samkit.pipeline import sync

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_the_committed_dvc_yaml_and_toc_are_what_the_registry_writes():
    assert sync.stale(str(REPO)) == [], "run `python -m samkit sync`"


def test_the_generated_files_stage_and_page_exactly_the_published_studies():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    toc = yaml.safe_load((REPO / "book" / "_toc.yml").read_text())
    pages = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    staged = spec["vars"][0]["studies"]
    assert staged == [n for n in studies.MODULES if not getattr(studies.module(n), "QUEUED",
                                                                  False)]
    assert [p.split("/", 1)[1] for p in pages if p.startswith("studies/")] == staged
    plotted = [next(iter(p)).split(",", 1)[0] for p in spec["plots"]]
    assert plotted == staged
    # the parts appear in the registry's order, each study under its module's PART
    captions = [part["caption"] for part in toc["parts"]]
    assert [c for c in studies.PARTS if c in captions] == [c for c in captions if c in
                                                          studies.PARTS]
    for part in toc["parts"]:
        for c in part["chapters"]:
            if c["file"].startswith("studies/"):
                assert studies.module(c["file"][8:]).PART == part["caption"]


def test_sync_rewrites_only_between_its_markers_and_check_names_stale_files(tmp_path):
    (tmp_path / "book").mkdir()
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / "book" / "_toc.yml", tmp_path / "book" / "_toc.yml")
    text = (tmp_path / "dvc.yaml").read_text()
    staged = yaml.safe_load(text)["vars"][0]["studies"]
    edited = text.replace(f"studies: [{', '.join(staged)}]", "studies: [width]") \
        .replace("# The study pipeline.", "# A comment a person wrote. The study pipeline.")
    (tmp_path / "dvc.yaml").write_text(edited)
    assert sync.stale(str(tmp_path)) == [str(tmp_path / "dvc.yaml")]
    assert sync.write(str(tmp_path)) == [str(tmp_path / "dvc.yaml")]
    fixed = (tmp_path / "dvc.yaml").read_text()
    assert "# A comment a person wrote." in fixed          # outside the markers: kept
    assert yaml.safe_load(fixed)["vars"][0]["studies"] == staged
    assert sync.stale(str(tmp_path)) == []
    (tmp_path / "dvc.yaml").write_text(fixed.replace(sync.BEGIN, "# gone", 1))
    with pytest.raises(ValueError, match="dvc.yaml: expected 2"):
        sync.stale(str(tmp_path))


def test_the_cli_check_fails_on_a_stale_file_and_sync_fixes_it(tmp_path):
    (tmp_path / "book").mkdir()
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "book" / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    check = [sys.executable, "-m", "samkit", "sync", "--check"]
    r = subprocess.run(check, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout.startswith("stale: ./book/_toc.yml"), r.stdout
    r = subprocess.run(check[:-1], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout == "wrote: ./book/_toc.yml\n", r.stdout + r.stderr
    assert (tmp_path / "book" / "_toc.yml").read_text() == (REPO / "book" / "_toc.yml").read_text()
    r = subprocess.run(check, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "", r.stdout


def _digests(root: Path) -> dict:
    skip = {".git", ".dvc", "__pycache__", "results", "_build"}
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
def test_a_new_study_needs_its_module_notebook_params_block_and_test_only(tmp_path):
    """Add a study `newstudy` (the width study's code under another name) to a copy of the
    repository: its module, notebook, params block and test. `samkit sync` then writes the
    rest; the files that changed are exactly those (plus the two generated ones), and `dvc
    repro` stages, runs and plots it."""
    work = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True, timeout=300)
    for name in ("samkit", "notebooks"):   # this checkout's code, committed or not
        shutil.rmtree(work / name)
        shutil.copytree(REPO / name, work / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.tmp.*"))
    for name in ("dvc.yaml", "params.yaml", "book/_toc.yml"):
        shutil.copy(REPO / name, work / name)
    before = _digests(work)

    module = (REPO / "samkit" / "studies" / "width.py").read_text()
    module = module.replace('NAME = "width"', 'NAME = "newstudy"', 1).replace(
        'PART, POSITION = "Overparameterization and SAM", 1',
        'PART, POSITION = "Sources\' other claims", 99', 1)
    assert 'NAME = "newstudy"' in module and "99" in module
    (work / "samkit" / "studies" / "newstudy.py").write_text(module)
    nb = json.loads((REPO / "notebooks" / "width.ipynb").read_text())
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        src = src.replace("\nwidth = {", "\nnewstudy = {").replace(
            'run_study("width", width, profile)', 'run_study("newstudy", newstudy, profile)')
        cell["source"] = src.splitlines(keepends=True)
    (work / "notebooks" / "newstudy.ipynb").write_text(json.dumps(nb, indent=1) + "\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny = {"base": {"dataset": "fashion_mnist", "n_train": 200, "n_val": 100, "n_test": 200,
                     "epochs": 2},
            "grid": {"optimizer": ["sgd", "sam"], "seed": [0, 1]},
            "arms": [{"model": "mlp", "width": [8, 32]}]}
    block = {"quick": tiny, "cpu": params["width"]["cpu"], "gpu": params["width"]["gpu"]}
    with open(work / "params.yaml", "a") as f:
        f.write("\n" + yaml.safe_dump({"newstudy": block}, sort_keys=False))
    text = (work / "params.yaml").read_text()
    (work / "params.yaml").write_text(text.replace("profile: cpu", "profile: quick", 1))
    (work / "tests" / "test_study_newstudy.py").write_text("def test_it():\n    pass\n")

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "samkit", "sync"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    after = _digests(work)
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed == {"samkit/studies/newstudy.py", "notebooks/newstudy.ipynb",
                       "tests/test_study_newstudy.py", "params.yaml",
                       "dvc.yaml", "book/_toc.yml"}, changed
    assert "studies/newstudy" in (work / "book" / "_toc.yml").read_text()

    r = subprocess.run([str(BIN / "dvc"), "repro", "--single-item", "study@newstudy"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    metrics = json.loads((work / "results" / "quick" / "newstudy" / "metrics.json").read_text())
    assert metrics["study"] == "newstudy" and metrics["metrics"]["claims"]
    r = subprocess.run([str(BIN / "dvc"), "plots", "show", "--json"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert any(t.startswith("newstudy,") for t in json.loads(r.stdout)["data"]), r.stdout[:500]
