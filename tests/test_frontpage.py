"""samkit.pipeline.frontpage: the advice computed from the frontier study's saved facts, the
answer at a glance (SAM − SGD by regime, from the frontier and noise studies' saved results)
with its sentences, and the claims grouped by study."""
import json
import os

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")

from conftest import FRAGILE, claim  # noqa: E402
from samkit.pipeline import frontpage  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def meta(cheapest: dict) -> dict:
    facts = {"cells": ", ".join(cheapest), "delta_shown": "0.30 pp"}
    for cell, method in cheapest.items():
        width = 32 if cell.startswith("narrow") else 512
        noise = "0%" if cell.endswith("clean") else "40%"
        facts[cell] = {"cheapest_method": method, "width": width, "noise": noise}
    return {"metrics": {"facts": facts}}


def test_one_method_everywhere_gives_one_recommendation():
    lines = frontpage.equal_compute(meta({"narrow_clean": "SGD 1×", "wide_noisy": "SGD 1×"}))
    assert lines == ["At equal compute, use SGD 1×: in every setting tested (width 32 with 0% "
                     "label noise; width 512 with 40% label noise) it is the cheapest method "
                     "within 0.30 pp of the best mean test accuracy, counting gradient "
                     "evaluations (how sure each pick is: the frontier page)."]


def test_methods_that_differ_by_setting_are_each_named_with_their_settings():
    line, = frontpage.equal_compute(meta({"narrow_clean": "SGD 1×", "wide_clean": "SGD 1×",
                                          "wide_noisy": "SAM every 5"}))
    assert line.startswith("At equal compute, use SGD 1× at width 32 with 0% label noise and "
                           "at width 512 with 0% label noise; SAM every 5 at width 512 with "
                           "40% label noise: in each setting")


def test_no_frontier_results_no_line():
    assert frontpage.equal_compute(None) == []


def test_cells_without_a_finished_run_are_left_out():
    line, = frontpage.equal_compute(meta({"narrow_clean": "SGD 1×", "wide_noisy": "n/a"}))
    assert "n/a" not in line and "width 512" not in line
    assert frontpage.equal_compute(meta({"wide_noisy": "n/a"})) == []
    assert frontpage.equal_compute(meta({})) == []  # no cells at all


# -------------------------------------------------------------------------- the answer at a glance

def write_study(root, study, claims, facts=None, tables=None):
    folder = root / "cpu" / study
    folder.mkdir(parents=True)
    meta = {"study": study, "profile": "cpu", "n_runs": 10, "run_seconds": 60.0,
            "metrics": {"claims": claims, "facts": facts or {}}}
    (folder / "metrics.json").write_text(json.dumps(meta))
    for name, t in (tables or {}).items():
        t.to_csv(folder / f"{name}.csv", index=False)


@pytest.fixture()
def results(tmp_path):
    """Frontier cells (width 32/512 × noise 0/40%) and the noise study's gain table."""
    cells = {"narrow_clean": (32, "0%"), "narrow_noisy": (32, "40%"),
             "wide_clean": (512, "0%"), "wide_noisy": (512, "40%")}
    compute = {"narrow_clean": claim(0.0007, -0.0026, 0.0041, "cannot tell"),
               "narrow_noisy": claim(0.021, 0.010, 0.033, "supports"),
               "wide_clean": claim(0.0004, -0.0014, 0.0022, "contradicts", FRAGILE),
               "wide_noisy": claim(0.015, 0.003, 0.028, "supports", FRAGILE)}
    facts = {"cells": ", ".join(cells), "models": "MLP with 2 hidden layers, width 32 to 512",
             "train_images": "10,000",
             **{c: {"width": w, "noise": p} for c, (w, p) in cells.items()}}
    write_study(tmp_path, "frontier",
                {f"{c}.sam_vs_sgd2x": compute[c] for c in cells}, facts)
    gain = pd.DataFrame([
        # label_noise, width: SAM − SGD at the same epochs
        {"label_noise": 0.0, "width": 32, "estimate": -0.0016, "low": -0.0047, "high": 0.0015},
        {"label_noise": 0.0, "width": 512, "estimate": 0.0001, "low": -0.001, "high": 0.0012},
        {"label_noise": 0.2, "width": 512, "estimate": 0.004, "low": -0.0005, "high": 0.0087},
        {"label_noise": 0.4, "width": 32, "estimate": 0.0064, "low": 0.0001, "high": 0.0130},
        {"label_noise": 0.4, "width": 512, "estimate": 0.0121, "low": 0.0050, "high": 0.0192},
    ]).assign(n=6, sd=0.005, params=1)
    write_study(tmp_path, "noise",
                {"widest_at_max_noise": claim(0.0121, 0.0050, 0.0192, "supports", n=6)},
                {"widest": 512}, {"gain": gain})
    return tmp_path


def test_glance_points_one_per_regime_from_the_claims_where_there_are_claims(results):
    p = frontpage.glance_points("cpu", str(results))
    assert len(p) == 8 and set(p["budget"]) == {"equal epochs", "equal compute"}
    assert set(zip(p["noise"], p["width"])) == {(0.0, 32), (0.0, 512), (0.4, 32), (0.4, 512)}
    compute = p[p["budget"] == "equal compute"].set_index(["noise", "width"])
    assert compute.loc[(0.4, 512), "verdict"] == "supports"
    assert compute.loc[(0.4, 512), "robust"] is False       # fragile there
    assert compute.loc[(0.4, 32), "robust"] is True
    epochs = p[p["budget"] == "equal epochs"].set_index(["noise", "width"])
    # the noise study's claim covers its widest model at its highest noise ...
    assert epochs.loc[(0.4, 512), "robust"] is True and epochs.loc[(0.4, 512), "n"] == 6
    # ... elsewhere the verdict rule on the table's CI, with no robustness check
    assert epochs.loc[(0.4, 32), "verdict"] == "supports"
    assert epochs.loc[(0.4, 32), "robust"] is None
    assert epochs.loc[(0.0, 512), "verdict"] == "contradicts"   # CI inside ±0.3 pp
    assert epochs.loc[(0.0, 32), "verdict"] == "cannot tell"
    # the 20% noise row is no regime of the figure (the frontier has no such cell)
    assert 0.2 not in set(p["noise"])
    assert set(p["regime"]) == {"clean labels, narrow (width 32)", "clean labels, wide (width 512)",
                                "40% noisy labels, narrow (width 32)",
                                "40% noisy labels, wide (width 512)"}


def test_glance_points_empty_without_frontier_and_only_compute_without_noise(tmp_path,
                                                                             results):
    assert frontpage.glance_points("cpu", str(tmp_path / "none")).empty
    assert frontpage.glance(frontpage.glance_points("cpu", str(tmp_path / "none"))) is None
    (results / "cpu" / "noise" / "gain.csv").unlink()
    p = frontpage.glance_points("cpu", str(results))
    assert len(p) == 4 and set(p["budget"]) == {"equal compute"}


def test_glance_figure_marks_robust_verdicts_filled_and_keeps_the_legend_off_the_data(results):
    p = frontpage.glance_points("cpu", str(results))
    fig = frontpage.glance(p)
    ax, = fig.axes
    assert ax.get_legend() is None and len(fig.legends) == 1   # below the axes, not on them
    faces = {}
    for line in ax.get_lines():
        if line.get_marker() in ("o", "s") and len(line.get_xdata()) == 1:
            faces[(line.get_marker(), round(float(line.get_xdata()[0]), 4))] = \
                matplotlib.colors.to_hex(line.get_markerfacecolor())
    assert faces[("s", round(100 * 0.021, 4))] != "#ffffff"      # robust: filled
    assert faces[("s", round(100 * 0.015, 4))] == "#ffffff"      # fragile: hollow
    assert faces[("o", round(100 * 0.0064, 4))] == "#ffffff"     # not checked: hollow
    words = {t.get_text() for t in ax.texts}
    assert {"SAM wins", "no gain ≥ δ", "can't tell"} <= words
    assert "pp" in ax.get_xlabel()


def test_glance_sentences_explain_the_terms_once_and_follow_the_verdicts(results):
    p = frontpage.glance_points("cpu", str(results))
    a = {"scope": "an MLP", "cost": "SAM spends 2.00× the gradient evaluations of SGD"}
    lines = frontpage.glance_sentences(p, a)
    assert len(lines) == 4
    text = " ".join(lines)
    for term in ("percentage points (pp)", "confidence interval (CI", "δ = 0.30 pp"):
        assert text.count(term) == 1, term
    noisy = next(line for line in lines if "40% noisy labels" in line)
    assert "SAM beats SGD in all 4 settings" in noisy                # all four support
    assert "2 of these verdicts robust" in noisy
    assert "+0.64 to +2.10 pp" in noisy and "prefer SAM" in noisy
    clean = next(line for line in lines if "clean labels" in line)
    assert "prefer SAM" not in clean and "cheaper choice" in clean
    assert "+0.41 pp" in clean                  # the highest CI end of the clean settings
    assert "2.00×" in lines[-1]
    # a verdict that changes changes the words: clean labels where SAM wins at equal compute
    p2 = p.copy()
    p2.loc[p2["noise"] == 0, "verdict"] = "supports"
    clean2 = next(line for line in frontpage.glance_sentences(p2, a) if "clean labels" in line)
    assert "prefer SAM" in clean2 and "cheaper choice" not in clean2


def test_claims_markdown_groups_by_study_and_cites_every_row(results):
    table = frontpage.claims("cpu", str(results), studies=("frontier", "noise"))
    md = frontpage.claims_markdown(table, toc=os.path.join(REPO, "book", "_toc.yml"))
    assert md.count(":::{list-table}") == 2
    assert md.index("{doc}`studies/frontier`") < md.index("{doc}`studies/noise`")
    rows = [r for r in md.split("\n* - ")[1:] if not r.startswith("claim\n")]
    assert len(rows) == len(table) == 5
    assert all("{cite:t}`shin2025critical`" in r for r in rows)
    assert "sam_vs_sgd2x" not in md and "widest_at_max_noise" not in md
    # a study without a page in the book is headed by its title, not a broken link
    md = frontpage.claims_markdown(table, toc=str(results / "no_toc.yml"))
    assert "{doc}" not in md and "What does SAM cost?" in md
