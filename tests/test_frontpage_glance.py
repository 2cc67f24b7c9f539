"""The front page's answer at a glance (SAM − SGD by regime, from the frontier and noise
studies' saved results), its sentences, and the claims tables with their citations."""
import glob
import json
import os
import re

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")

from samkit.analysis import fmt, sources
from samkit.pipeline import frontpage  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROBUST = {"fragile": False, "shown": "robust", "leave_one_out": "holds", "retrain": "holds"}
FRAGILE = {"fragile": True, "leave_one_out": "without seed 1: cannot tell; without seed 4: "
           "cannot tell", "retrain": "retrained avx2: cannot tell", "shown": "fragile: ..."}


def claim(est, low, high, verdict, robustness=ROBUST, text="a claim", source="Shin et al. "
          "Sec. 3", unit="pp", n=5):
    return {"text": text, "source": source, "unit": unit, "estimate": est, "ci_low": low,
            "ci_high": high, "n": n, "delta": 0.003, "delta_shown": "0.30 pp", "direction": 1,
            "verdict": verdict, "p_value": 0.01, "seeds_needed": None,
            "shown": fmt.pp(est, low, high), "explained": verdict, "source_effect": None,
            "source_shown": "", "robustness": robustness}


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


def test_every_claim_source_in_the_committed_results_cites_a_reference():
    with open(os.path.join(REPO, "book", "references.bib")) as f:
        keys = set(re.findall(r"^@\w+\{([^,]+),", f.read(), re.M))
    seen = 0
    for path in glob.glob(os.path.join(REPO, "results", "*", "*", "metrics.json")):
        with open(path) as f:
            for c in json.load(f)["metrics"].get("claims", {}).values():
                cited = sources.cite_keys(c["source"])
                assert cited and set(cited) <= keys, (path, c["source"])
                seen += 1
    assert seen >= 40


def test_cite_replaces_the_named_source_and_keeps_the_locator():
    assert sources.cite("Shin et al. Sec. 3") == "{cite:t}`shin2025critical`, Sec. 3"
    assert sources.cite("Shin et al. App. E.4; Foret et al. (two passes per step)") == (
        "{cite:t}`shin2025critical`, App. E.4; {cite:t}`foret2021sam` (two passes per step)")
    assert sources.cite("blog (seed 000), Fashion-MNIST PreActResNet18 table") == (
        "{cite:t}`blog_sam_fmnist`, Fashion-MNIST PreActResNet18 table")
    assert sources.cite_keys("the BatchNorm post (seed 001): drift") == ["blog_sam_batchnorm"]
    assert sources.cite("Becker et al. 2023 (Momentum-SAM)") == \
        "{cite:t}`becker2024msam` (Momentum-SAM)"                # the .bib's year, once
    assert sources.cite("Kwon et al. 2021: ASAM improves on SAM") == \
        "{cite:t}`kwon2021asam`: ASAM improves on SAM"
    assert sources.cite("Foret et al. 2021 (tuned baselines); AlgoPerf's equal-budget rule") == (
        "{cite:t}`foret2021sam` (tuned baselines); AlgoPerf's equal-budget rule "
        "{cite:p}`dahl2023algoperf`")
    with pytest.raises(ValueError, match="names no entry"):
        sources.cite_keys("a source nobody wrote down")


def test_claims_table_rows_labels_verdicts_and_robustness():
    rows = [claim(0.0018, 0.0, 0.0037, "supports", FRAGILE, text="SAM beats SGD at the widest "
                  "mlp (width 2048)"),
            claim(0.0004, -0.001, 0.002, "contradicts", None, unit="pp/doubling",
                  text="ρ* grows (shown: the factor per doubling) | oddly"),
            {**claim(0.01, 0.005, 0.015, "supports"), "source_effect": 0.0019}]
    md = fmt.claims_table(rows)
    head, first, second, third = md.split("\n* - ")[1:]
    assert head.startswith("claim\n") and md.startswith(":::{list-table}")
    assert "SAM beats SGD at the widest MLP (width 2048)" in first
    assert "no: flips if seed 1 or 4 is dropped or if runs are retrained" in first
    assert "(shown:" not in second and "\\|" in second       # aside dropped, pipe escaped
    assert "not checked" in second and "(δ 0.30 pp per doubling)" in second
    assert "its own effect: +0.19 pp; our CI excludes it" in third
    assert "its own effect" not in first + second
    assert fmt.robust_short(ROBUST) == "yes"
    many = {"fragile": True, "leave_one_out": "; ".join(f"without seed {i}: cannot tell"
                                                        for i in range(5)), "retrain": "holds"}
    assert fmt.robust_short(many) == "no: flips if any of 5 seeds is dropped"


def test_effect_table_names_the_unit_of_every_measured_column():
    t = pd.DataFrame([{"width": 32.0, "params": 26506.0, "estimate": 0.0012, "low": -0.001,
                       "high": 0.0034, "n": 6, "diverged": 0, "unfit": 0,
                       "treatment": 0.85, "control": 0.8488}])
    df = fmt.effect_table(t, ["width", "params"]).data
    assert list(df.columns) == ["width (neurons per layer)", "parameters",
                                "SAM − SGD (pp) [95% CI]", "SAM acc (%)", "SGD acc (%)",
                                "seed pairs"]
    assert df.iloc[0].tolist() == ["32", "26,506", "+0.12 [-0.10,\u00a0+0.34]", "85.00", "84.88",
                                   6]
    ratio = fmt.effect_table(t.assign(diverged=1), ["width"], ratio_=True).data
    assert "SAM / SGD (×) [95% CI]" in ratio and "diverged pairs" in ratio
