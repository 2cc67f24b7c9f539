"""The study pipeline: notebooks run on their tiny defaults (nbval), dvc.yaml matches the
studies, the book builds with warnings as errors, and a real browser renders its figures."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import chromium_screenshot
from samkit.pipeline import params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
BIN = os.path.dirname(sys.executable)
with open(os.path.join(REPO, "dvc.yaml")) as _f:
    STAGED = yaml.safe_load(_f)["vars"][0]["studies"]   # the studies the book publishes


def test_every_study_has_its_module_params_notebook_stage_and_page():
    """The registry (samkit.studies.MODULES: the modules of samkit/studies/) is the list of
    studies: each has its module, a params.yaml block per profile and its notebook; the
    published ones (all but the queued) are dvc.yaml's template stages and book pages
    (tests/test_sync.py: both written from the registry)."""
    from samkit import studies
    with open(os.path.join(REPO, "dvc.yaml")) as f:
        spec = yaml.safe_load(f)
    template = spec["stages"]["study"]
    assert template["foreach"] == "${studies}"
    assert template["do"]["cmd"] == "exec python -m samkit stage ${item}"
    assert {"samkit/studies/${item}.py", "notebooks/${item}.ipynb"} <= set(template["do"]["deps"])
    assert template["do"]["params"] == ["profile", "${item}.${profile}"]  # exact keys
    assert STAGED == list(studies.PUBLISHED)
    raw = params.load(os.path.join(REPO, "params.yaml"))
    with open(os.path.join(REPO, "book", "_toc.yml")) as f:
        toc = f.read()
    for study in studies.MODULES:
        assert hasattr(studies.module(study), "analyze")
        assert set(raw[study]) == set(params.PROFILES), study
        assert os.path.exists(os.path.join(REPO, "notebooks", f"{study}.ipynb")), study
        assert (f"studies/{study}" in toc) == (study in STAGED), f"{study}: book page"
    assert spec["stages"]["book"]["cmd"].startswith("jupyter-book build book/")


def test_the_book_stage_reruns_when_a_page_changes_and_only_then():
    """No `always_changed` (a no-op `dvc repro` leaves `dvc status` up to date) and no HTML
    output (not byte-stable): so every source of the book must be a dependency, or an edit to
    it would leave the HTML stale."""
    with open(os.path.join(REPO, "dvc.yaml")) as f:
        book = yaml.safe_load(f)["stages"]["book"]
    assert not book.get("always_changed") and not book.get("outs")
    with open(os.path.join(REPO, "book", "_toc.yml")) as f:
        pages = [f"{m}.ipynb" if os.path.exists(os.path.join(REPO, "book", f"{m}.ipynb"))
                 else f"{m}.md" for m in re.findall(r"(?:root|file): (\S+)", f.read())]
    sources = {f"book/{p}" for p in pages} | {"book/_config.yml", "book/_toc.yml"}
    with open(os.path.join(REPO, "book", "_config.yml")) as f:
        sources |= {f"book/{b}" for b in yaml.safe_load(f).get("bibtex_bibfiles", [])}
    # a dependency on a folder (book/studies) covers every page in it
    covered = {s for s in sources
               if any(s == d or s.startswith(d.rstrip("/") + "/") for d in book["deps"])}
    assert covered == sources, sources - covered


def test_ci_publishes_the_book_built_by_the_target_the_tests_build_it_with():
    with open(os.path.join(REPO, ".github", "workflows", "book.yml")) as f:
        flow = yaml.safe_load(f)
    steps = [s for job in flow["jobs"].values() for s in job["steps"]]
    assert any(s.get("run") == "make book" for s in steps)
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact")]
    assert uploads and uploads[0]["with"]["path"] == "book/_build/html"
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in steps)
    assert flow["jobs"]["deploy"]["permissions"] == {"pages": "write", "id-token": "write"}


def test_dvc_sees_the_pipeline():
    r = subprocess.run([os.path.join(BIN, "dvc"), "dag", "--md"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for study in STAGED:
        assert f"study@{study}" in r.stdout


def test_dvc_plots_render_every_study_from_committed_results():
    r = subprocess.run([os.path.join(BIN, "dvc"), "plots", "show", "--json"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert not shown.get("errors"), shown["errors"]
    titles = " ".join(shown["data"])
    for study in STAGED:
        assert study in titles, f"no dvc plot for {study}"
    for title, plots in shown["data"].items():
        content = plots[0]["content"]
        assert content["data"]["values"], f"{title}: no data"
        x, y = content["encoding"]["x"], content["encoding"]["y"]
        if x["field"] in ("params", "width", "params_per_example"):   # 4k to 5M: log2 axis
            assert x["scale"]["type"] == "log" and x["scale"]["base"] == 2, title
        assert y["title"].endswith(("(pp)", "(%)", "(log2 axis)")), f"{title}: y in {y['title']}"
        assert content["encoding"]["color"]["field"] == "series", f"{title}: one colour"
    # every file a plot names exists: a missing series would otherwise just vanish
    with open(os.path.join(REPO, "dvc.yaml")) as f:
        spec = yaml.safe_load(f)
    profile = params.load(os.path.join(REPO, "params.yaml"))["profile"]
    for plot in spec["plots"]:
        (title, conf), = plot.items()
        for path in conf["y"]:
            assert os.path.exists(os.path.join(REPO, path.replace("${profile}", profile))), \
                f"{title}: {path} missing"


# `dvc exp show` keeping only each study's headline estimates (book/reproduce.md).
HEADLINE_VIEW = ["--drop", ".*", "--keep", r"Experiment$|Created$|.*\.(pp|pp_per_2x|ratio)$"]


@pytest.mark.slow
def test_dvc_experiment_reruns_one_study_and_shows_its_metrics(tmp_path):
    """`dvc exp run -S` on a clone: only the edited study runs, and `dvc exp show` reports the
    experiment's parameter and the metrics it produced beside the committed ones."""
    work = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", REPO, str(work)], check=True, timeout=120)
    for key, value in (("user.name", "test"), ("user.email", "test@example.invalid")):
        subprocess.run(["git", "config", key, value], cwd=work, check=True)
    dvc = os.path.join(BIN, "dvc")
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]}
    # A small width grid, committed (not reproduced: only the experiment runs), then the
    # typical edit on top of it: one knob turned in one study.
    spec = (work / "params.yaml").read_text()
    small = re.sub(r"(\n  cpu:\n    base: &research\n(?:      .*\n)+?)    grid: \{[^}]*\}",
                   r"\1    grid: {optimizer: [sgd, sam], width: [64, 128], seed: [0]}", spec, count=1)
    assert small != spec
    (work / "params.yaml").write_text(small)
    subprocess.run(["git", "commit", "-qam", "a small width grid"], cwd=work, check=True)
    r = subprocess.run([dvc, "exp", "run", "study@width", "-S", "width.cpu.base.epochs=3",
                        "-n", "small"], cwd=work, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Running stage 'study@width'" in r.stdout
    assert "Running stage 'study@headline'" not in r.stdout   # only the edited study reruns
    r = subprocess.run([dvc, "exp", "show", "--json"], cwd=work, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (base,) = [e for e in json.loads(r.stdout) if e.get("experiments")]  # the cloned commit
    (exp,) = [x["revs"][0]["data"] for x in base["experiments"] if x["name"] == "small"]
    grid = exp["params"]["params.yaml"]["data"]["width"]["cpu"]["grid"]
    assert grid["seed"] == [0] and grid["width"] == [64, 128]
    assert exp["params"]["params.yaml"]["data"]["width"]["cpu"]["base"]["epochs"] == 3
    metrics = exp["metrics"]["results/cpu/dvc_metrics/width.json"]["data"]
    committed = base["data"]["metrics"]["results/cpu/dvc_metrics/width.json"]["data"]
    # each claim's estimate in the book's unit, one short column per claim
    assert set(metrics) == set(committed) == {"width.mlp.grows.pp_per_2x", "width.mlp.widest.pp"}
    assert metrics != committed
    # the comparison the book recommends fits a 120-column terminal and a spreadsheet
    show = [dvc, "exp", "show", "--only-changed", "--drop", ".*/"]
    r = subprocess.run(show + ["--csv"], cwd=work, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0].split(",")
    assert len(header) <= 60, header
    assert {"width.cpu.base.epochs", "width.mlp.widest.pp"} <= set(header), header
    # every experiment's headline estimates, whatever changed: a spreadsheet's width
    r = subprocess.run([dvc, "exp", "show", "--csv", *HEADLINE_VIEW], cwd=work, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0].split(",")
    assert len(header) <= 60 and "width.mlp.widest.pp" in header, header
    r = subprocess.run(show + ["--no-pager"], cwd=work, env={**env, "COLUMNS": "120"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout and max(map(len, r.stdout.splitlines())) <= 120, r.stdout
    assert "width.mlp.widest.pp" in r.stdout


@pytest.mark.slow
def test_a_no_op_dvc_repro_changes_no_tracked_file(tmp_path):
    """On a fresh clone, `dvc repro` reruns nothing (the committed results and the book's
    sources are current), leaves git status clean (dvc.lock included) and `dvc status` up to
    date."""
    work = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", REPO, str(work)], check=True, timeout=120)
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]}
    r = subprocess.run([os.path.join(BIN, "dvc"), "repro"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Running stage" not in r.stdout, r.stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=work, capture_output=True,
                            text=True, check=True).stdout
    assert status == "", status
    r = subprocess.run([os.path.join(BIN, "dvc"), "status"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Data and pipelines are up to date." in r.stdout, r.stdout


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
    """The committed book (executed notebooks included), built on a copy by `make book` (what
    CI publishes: warnings as errors); `-o setup`: this environment is already set up."""
    dst = tmp_path_factory.mktemp("book") / "book"
    shutil.copytree(os.path.join(REPO, "book"), dst, ignore=shutil.ignore_patterns("_build"))
    r = subprocess.run(["make", "--no-print-directory", "-o", "setup", "book",
                        f"BOOK_DIR={dst}", f"VENV={os.path.dirname(BIN)}"], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return dst / "_build" / "html"


@pytest.mark.slow
def test_book_has_every_page_with_figures_and_provenance(built_book):
    pages = ["index.html", "performance.html", "reproduce.html", "references.html"] + \
            [f"studies/{s}.html" for s in STAGED]
    for page in pages:
        html = (built_book / page).read_text()
        assert "Traceback" not in html, f"{page} shows an error output"
        assert "papermill overrides" not in html, f"{page} shows the smoke-test defaults cell"
        assert "cell_input" not in html, f"{page} shows code (tag its cells remove-input)"
        if page.startswith("studies/"):
            assert "<img" in html, f"{page} has no figure"
            assert re.search(r'<img[^>]+alt="[^"]{20,}"', html), f"{page}: a figure lacks alt text"
            assert "profile " in html and "commit " in html, f"{page} has no provenance"
    # the References page lists every entry of book/references.bib
    with open(os.path.join(REPO, "book", "references.bib")) as f:
        keys = re.findall(r"^@\w+\{([^,]+),", f.read(), re.M)
    html = (built_book / "references.html").read_text()
    assert len(keys) >= 10 and html.count('role="doc-biblioentry"') == len(keys)


@pytest.mark.slow
@pytest.mark.parametrize("page", ["intro.html", "studies/width.html", "studies/headline.html"])
def test_browser_renders_figures(built_book, tmp_path, page):
    # index.html is Jupyter Book's meta-refresh to the root page: headless Chromium exits on the
    # redirect without a screenshot, so the front page is shot directly and the redirect checked.
    assert 'url=intro.html' in (built_book / "index.html").read_text()
    from PIL import Image
    png = chromium_screenshot((built_book / page).as_uri(), tmp_path / "shot.png")
    img = Image.open(png).convert("RGB")
    assert img.size[0] >= 1000
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200, "page looks blank"
    # a figure's pixels: many distinct non-grey colours (lines, markers), not just text
    chromatic = sum(n for n, (r, g, b) in colors if max(r, g, b) - min(r, g, b) > 60)
    assert chromatic > 2000, "no coloured figure rendered"


def test_dvc_plots_page_renders_offline(tmp_path):
    """The page `dvc plots show` writes loads nothing from the network (the Vega libraries are
    inlined by the template in .dvc/plots/), so it renders on an offline machine."""
    r = subprocess.run([os.path.join(BIN, "dvc"), "plots", "show", "-o", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "index.html").read_text()
    assert "vegaEmbed(" in html and "cdn.jsdelivr" not in html
    assert not re.search(r"<script[^>]*\bsrc\s*=", html), "a script is loaded from elsewhere"
