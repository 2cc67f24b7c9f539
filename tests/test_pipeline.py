"""The study pipeline: notebooks run on their tiny defaults (nbval), dvc.yaml matches the
studies, the book builds with warnings as errors, and a real browser renders its figures."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from samkit import params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
BIN = os.path.dirname(sys.executable)


def test_every_study_has_a_notebook_and_a_stage():
    with open(os.path.join(REPO, "dvc.yaml")) as f:
        stages = yaml.safe_load(f)["stages"]
    for study in params.STUDIES:
        assert os.path.exists(os.path.join(REPO, "notebooks", f"{study}.ipynb"))
        st = stages[study]
        assert st["cmd"] == f"python -m samkit stage {study}"
        assert f"notebooks/{study}.ipynb" in st["deps"]
        assert st["params"] == ["profile", study]  # exact keys: editing one study reruns one
    assert stages["book"]["cmd"].startswith("jupyter-book build book/")


def test_dvc_sees_the_pipeline():
    r = subprocess.run([os.path.join(BIN, "dvc"), "dag", "--md"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for study in params.STUDIES:
        assert study in r.stdout


@pytest.mark.slow
def test_notebooks_run_on_tiny_parameters(tmp_path, fmnist_root):
    """nbval executes each notebook with its parameters cell's smoke defaults."""
    work = tmp_path / "notebooks"
    work.mkdir()
    for nb in NOTEBOOKS:
        shutil.copy(nb, work)
    env = {**os.environ, "SAMKIT_DATA": fmnist_root, "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--nbval-lax", "--nbval-cell-timeout=600", str(work)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert len(list((work / "results").glob("*/*/metrics.json"))) >= len(params.STUDIES)


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """The committed book (executed notebooks included), built with warnings as errors."""
    dst = tmp_path_factory.mktemp("book") / "book"
    shutil.copytree(os.path.join(REPO, "book"), dst, ignore=shutil.ignore_patterns("_build"))
    r = subprocess.run([os.path.join(BIN, "jupyter-book"), "build", str(dst), "-W", "-n",
                        "--keep-going"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return dst / "_build" / "html"


@pytest.mark.slow
def test_book_has_every_page_with_figures_and_provenance(built_book):
    pages = ["index.html", "performance.html", "reproduce.html"] + \
            [f"studies/{s}.html" for s in params.STUDIES]
    for page in pages:
        html = (built_book / page).read_text()
        assert "Traceback" not in html, f"{page} shows an error output"
        if page.startswith("studies/"):
            assert "<img" in html, f"{page} has no figure"
            assert "profile " in html and "commit " in html, f"{page} has no provenance"


def _screenshot(url, out):
    """Headless Chromium screenshot. Chromium may linger after writing the file (no D-Bus in a
    container), so wait for the file, then stop the browser."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs chromium (apt-get install chromium)")
    proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--hide-scrollbars",
                             "--window-size=1280,2400", f"--screenshot={out}", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline, last = time.time() + 120, -1
    while time.time() < deadline and proc.poll() is None:
        size = out.stat().st_size if out.exists() else -1
        if size > 0 and size == last:
            break
        last = size
        time.sleep(1)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert out.exists(), "chromium wrote no screenshot"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("page", ["index.html", "studies/width.html"])
def test_browser_renders_figures(built_book, tmp_path, page):
    from PIL import Image
    png = _screenshot((built_book / page).as_uri(), tmp_path / "shot.png")
    img = Image.open(png).convert("RGB")
    assert img.size[0] >= 1000
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200, "page looks blank"
    # a figure's pixels: many distinct non-grey colours (lines, markers), not just text
    chromatic = sum(n for n, (r, g, b) in colors if max(r, g, b) - min(r, g, b) > 60)
    assert chromatic > 2000, "no coloured figure rendered"
