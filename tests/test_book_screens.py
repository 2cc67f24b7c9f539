"""The book as a reader sees it: the front page and two study pages, built by `make book` (what
CI publishes) and shot in headless Chromium at a desktop width (1280 px) and a phone width
(390 px). Each shot must show a page (not blank) with its figure; each page's HTML must show
no code, no internal claim id or file path, and carry the figures, tables and citations the
page promises: the front page opens with one figure, a study page has one figure, its claims
table and one data table."""
import glob
import html as html_lib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import chromium_screenshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
# The book to build: the repository's (its executed notebooks, as the pipeline left them), or
# SAMKIT_BOOK_SRC, a book folder executed elsewhere (e.g. a pipeline run on a copy).
BOOK_SRC = os.environ.get("SAMKIT_BOOK_SRC", os.path.join(REPO, "book"))
PAGES = ["intro.html", "studies/width.html", "studies/noise.html"]
WIDTHS = (1280, 390)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """The book built on a copy by `make book` (warnings as errors); `-o setup`: this
    environment is already set up."""
    dst = tmp_path_factory.mktemp("screens") / "book"
    shutil.copytree(BOOK_SRC, dst, ignore=shutil.ignore_patterns("_build"))
    r = subprocess.run(["make", "--no-print-directory", "-o", "setup", "book",
                        f"BOOK_DIR={dst}", f"VENV={os.path.dirname(BIN)}"], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return dst / "_build" / "html"


# ----------------------------------------------------------------------------- the HTML

def _main(page_html: str) -> str:
    """The page's article (no navigation, no sidebar: those list every page's title)."""
    m = re.search(r'<article class="bd-article"[^>]*>(.*)</article>', page_html, re.S)
    assert m, "no article in the page"
    return m.group(1)


def _text(fragment: str) -> str:
    """Visible text: tags, scripts and styles dropped, entities decoded, spaces collapsed."""
    fragment = re.sub(r"<(script|style)\b.*?</\1>", " ", fragment, flags=re.S)
    fragment = re.sub(r'\s(?:title|alt)="[^"]*"', " ", fragment)  # tooltips: not on the page
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def _claim_ids() -> set[str]:
    """Every claim id of the committed results (e.g. mlp.grows, widest_vs_2x), and each as
    the DVC metric names it (width.mlp.grows)."""
    ids = set()
    for path in glob.glob(os.path.join(REPO, "results", "*", "*", "metrics.json")):
        with open(path) as f:
            meta = json.load(f)
        for cid in meta.get("metrics", {}).get("claims", {}):
            ids |= {cid, f"{meta['study']}.{cid}"}
    return ids


# Internal names a reader must never see: claim ids and glue keys (snake_case or dotted
# lowercase paths), file paths of the repository.
SNAKE = re.compile(r"(?<![\w./-])[a-z][a-z0-9]*(?:_[a-z0-9]*[a-z][a-z0-9]*)+(?![\w/-])")
DOTTED = re.compile(r"(?<![\w./])(?:claims|facts)\.[\w.]+")
# A figure's alt text: words that describe it, not the image's file name (the default).
ALT = re.compile(r'<img[^>]+alt="(?!_images/)[^"]*\s[^"]{30,}"')
PATHS = re.compile(r"\b(?:results|samkit|benchmarks|notebooks|book)/[\w./-]+")


@pytest.mark.parametrize("page", PAGES)
def test_page_shows_no_code_ids_or_paths(built_book, page):
    raw = (built_book / page).read_text()
    main = _main(raw)
    assert "cell_input" not in main and "highlight-ipython3" not in main, f"{page} shows code"
    assert "Traceback" not in main and "papermill overrides" not in main, page
    text = _text(main)
    leaked = sorted({w for w in re.findall(r"[\w.]+", text) if w in _claim_ids()
                     and ("_" in w or "." in w)})
    assert not leaked, f"{page} shows internal claim ids: {leaked}"
    assert not SNAKE.findall(text), f"{page} shows internal names: {SNAKE.findall(text)}"
    assert not DOTTED.findall(text), f"{page} shows glue keys: {DOTTED.findall(text)}"
    assert not PATHS.findall(text), f"{page} shows file paths: {PATHS.findall(text)}"


def test_front_page_opens_with_one_figure_then_the_claims_by_study(built_book):
    main = _main((built_book / "intro.html").read_text())
    imgs = [m.start() for m in re.finditer(r"<img\b", main)]
    assert len(imgs) == 1, f"the front page has {len(imgs)} figures, not one"
    assert re.search(ALT, main), "the figure lacks alt text"
    first_table = main.find("<table")
    assert 0 <= imgs[0] < first_table, "the figure does not open the page"
    text = _text(main[:first_table])
    # the sentences under the figure explain pp, CI and δ, with numbers from the pipeline
    for term in ("percentage points (pp)", "confidence interval (CI", "δ ="):
        assert term in text, f"the front page does not explain {term!r}"
    assert re.search(r"[+−-]\d+\.\d\d pp", text), "no effect quoted under the figure"
    # every claim in a table grouped by study, each row citing its source
    tables = re.findall(r"<table[^>]*claims-table.*?</table>", main, re.S)
    assert len(tables) >= 5, "the claims are not grouped by study"
    rows = [r for t in tables for r in re.findall(r"<tr\b.*?</tr>", t, re.S)[1:]]
    assert len(rows) >= 20
    uncited = [_text(r)[:60] for r in rows if "references.html#" not in r]
    assert not uncited, f"claims without a linked citation: {uncited}"


@pytest.mark.parametrize("page", PAGES[1:])
def test_study_page_has_claim_source_one_figure_one_table_and_a_short_reading(built_book,
                                                                             page):
    main = _main((built_book / page).read_text())
    assert len(re.findall(r"<img\b", main)) == 1, f"{page}: not exactly one figure"
    assert re.search(ALT, main), f"{page}: the figure lacks alt text"
    tables = re.findall(r"<table\b.*?</table>", main, re.S)
    claims = [t for t in tables if "claims-table" in t]
    assert len(claims) == 1 and len(tables) == 2, f"{page}: a claims table and one table"
    intro = main[:main.find("<table")]
    assert "references.html#" in intro, f"{page}: the claim's source is not cited"
    data = next(t for t in tables if "claims-table" not in t)
    headers = [_text(h) for h in re.findall(r"<th\b[^>]*col_heading.*?</th>", data, re.S)]
    assert any("(pp)" in h for h in headers) and any("(%)" in h for h in headers), headers
    m = re.search(r'<section id="reading">(.*?)</section>', main, re.S)
    assert m, f"{page}: no Reading section"
    reading = _text(re.sub(r"<small>.*?</small>", "", m.group(1), flags=re.S))
    reading = re.sub(r"^Reading\W*", "", reading)
    sentences = [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Zρ(“\"])",
                                     reading.replace("et al.", "et al")) if s.strip()]
    assert 3 <= len(sentences) <= 6, f"{page}: the reading has {len(sentences)} sentences"


# ----------------------------------------------------------------------------- the pixels

@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page", PAGES)
def test_screenshot_shows_the_page_and_its_figure(built_book, tmp_path, page, width):
    from PIL import Image
    png = chromium_screenshot((built_book / page).as_uri(), tmp_path / "shot.png", width,
                              height=4000)
    img = np.asarray(Image.open(png).convert("RGB")).astype(float)
    assert img.shape[1] == width
    grey = img.mean(axis=2)
    assert grey.std() > 20, f"{page} at {width} px looks blank (pixel sd {grey.std():.1f})"
    # text on every part of the first screen, not one line on white
    rows = (grey < 128).any(axis=1)
    assert rows[:1500].mean() > 0.2, f"{page} at {width} px: little on the first screen"
    # the figure: its coloured markers and lines (saturated pixels), beyond links and bars
    chroma = img.max(axis=2) - img.min(axis=2)
    assert (chroma > 80).sum() > 1500, f"{page} at {width} px: no coloured figure"
    # nothing wider than the window (a page that scrolls sideways is cut off on a phone)
    assert not (grey[:, -3:] < 100).all(axis=1).any(), f"{page} at {width} px: cut off"
