"""The frontier study's analysis on synthetic run tables with planted answers (no training)."""
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from samkit.pipeline import frontpage  # noqa: E402
from samkit.studies import frontier  # noqa: E402

WIDTHS = {32: 1000, 512: 16000}          # width: params
NOISES = (0.0, 0.4)
SEEDS = range(5)
JITTER = np.array([1, -1, 2, -2, 0])     # mean 0: a planted effect is the exact mean
BASE = 60
# (optimizer, sam_interval, epochs, gradient evaluations, train seconds); 1000 steps at 1×
METHODS = {
    "SGD 1×": ("sgd", 1, BASE, 1000, 10.0),
    "SGD 1.5×": ("sgd", 1, 90, 1500, 15.0),
    "SGD 2×": ("sgd", 1, 120, 2000, 20.0),
    "SAM": ("sam", 1, BASE, 2000, 21.0),
    "SAM every 2": ("sam", 2, BASE, 1500, 16.0),
    "SAM every 5": ("sam", 5, BASE, 1200, 13.0),
    "SAM every 10": ("sam", 10, BASE, 1100, 12.0),
    "LookSAM (k 5)": ("looksam", 5, BASE, 1200, 13.5),
    "Momentum-SAM": ("msam", 1, BASE, 1000, 10.5),
}
# Planted accuracy gains over SGD 1× in the wide noisy cell (width 512, noise 0.4): frontier
# Momentum-SAM -> SAM every 10 -> SAM every 5; SAM ties SAM every 5 (up to seed jitter of mean
# 0) at a higher cost, so it is not on the frontier.
WIDE_NOISY = {"SGD 1×": 0.0, "SGD 1.5×": 0.001, "SGD 2×": 0.002, "SAM": 0.020,
              "SAM every 2": 0.019, "SAM every 5": 0.020, "SAM every 10": 0.010,
              "LookSAM (k 5)": 0.019, "Momentum-SAM": 0.005}


def planted(method, w, p, s):
    """Accuracy of ``method`` at (width, noise, seed) over the seed's SGD 1× accuracy."""
    if w == 512 and p == 0.4:
        # SAM every 5 vs SAM: no difference on average, a spread of 0.05 pp per seed
        jitter = {"SAM every 5": 0.0005, "LookSAM (k 5)": 0.0001}.get(method, 0.0)
        return WIDE_NOISY[method] + jitter * JITTER[s]
    if w == 512:  # clean: SAM every 5 loses 0.8 pp against SAM, clearly
        return {"SAM": 0.010, "SAM every 5": 0.002, "SGD 2×": 0.004}.get(method, 0.0) \
            + 0.0001 * JITTER[s] * (method != "SGD 1×")
    if p == 0.0:  # narrow clean: SAM every 5 vs SAM buried in seed noise
        return {"SAM every 5": 0.01 * JITTER[s]}.get(method, 0.0)
    return 0.0    # narrow noisy: every method equal


def make_runs(methods=METHODS, seeds=SEEDS, status=lambda *a: "ok", old_rows=False):
    rows = []
    for w, n in WIDTHS.items():
        for p in NOISES:
            for s in seeds:
                sgd = 0.80 + 0.01 * s - 0.1 * p
                for m, (opt, k, epochs, evals, secs) in methods.items():
                    st = status(m, w, p, s)
                    ok = st == "ok"
                    row = {"tag": m, "optimizer": opt, "sam_interval": k,
                           "looksam_alpha": 0.7, "epochs": epochs, "seed": s, "width": w,
                           "params": n, "label_noise": p, "status": st,
                           "grad_evals": evals if ok else evals // 2,
                           "train_seconds": secs * (1 + w / 512) if ok else np.nan,
                           "best_test_acc": sgd + planted(m, w, p, s) if ok else np.nan,
                           "final_train_acc": 0.99 if ok else np.nan}
                    if old_rows and opt in ("sgd", "sam") and k == 1:
                        row["sam_interval"] = row["looksam_alpha"] = np.nan
                    rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def analysis():
    return frontier.analyze(make_runs())


def row(table, method, w=512, p=0.4):
    r = table[(table["method"] == method) & (table["width"] == w) & (table["label_noise"] == p)]
    assert len(r) == 1, (method, w, p)
    return r.iloc[0]


def test_methods_are_named_from_the_config():
    name = frontier.method_name
    assert name("sgd", np.nan, 60, 60) == "SGD 1×"
    assert name("sgd", 1, 90, 60) == "SGD 1.5×"
    assert name("sam", np.nan, 60, 60) == "SAM"     # stored before sam_interval existed
    assert name("sam", 5, 60, 60) == "SAM every 5"
    assert name("asam", 2, 60, 60) == "ASAM every 2"
    assert name("looksam", 5, 60, 60, 0.7) == "LookSAM (k 5)"
    assert name("looksam", 5, 60, 60, 0.5) == "LookSAM (k 5, α 0.5)"
    assert name("msam", 1, 60, 60) == "Momentum-SAM"
    assert name("sam", 1, 120, 60) == "SAM 2×"


def test_methods_table(analysis):
    t = analysis.tables["methods"]
    assert len(t) == len(WIDTHS) * len(NOISES) * len(METHODS)
    sam = row(t, "SAM")
    assert sam["grad_evals"] == 2000 and sam["budget"] == pytest.approx(2.0)
    assert sam["time_ratio"] == pytest.approx(21.0 / 10.0)
    assert sam["acc"] == pytest.approx(0.80 + 0.02 - 0.04 + 0.020)  # mean over seeds
    assert sam["acc_low"] < sam["acc"] < sam["acc_high"] and sam["n"] == 5
    assert math.isnan(sam["vs_sam"]) and sam["vs_sam_n"] == 0
    assert sam["vs_sgd2x"] == pytest.approx(0.018) and sam["vs_sgd2x_n"] == 5
    k5 = row(t, "SAM every 5")
    assert k5["budget"] == pytest.approx(1.2)
    assert k5["vs_sam"] == pytest.approx(0.0, abs=1e-12)
    assert k5["vs_sam_low"] < 0 < k5["vs_sam_high"]
    # rows of a cell ordered by gradient evaluations
    cell = t[(t["width"] == 512) & (t["label_noise"] == 0.4)]
    assert list(cell["grad_evals"]) == sorted(cell["grad_evals"])


def test_pareto_frontier(analysis):
    t = analysis.tables["methods"]
    cell = t[(t["width"] == 512) & (t["label_noise"] == 0.4)]
    assert list(cell.loc[cell["frontier"], "method"]) == [
        "Momentum-SAM", "SAM every 10", "SAM every 5"]
    assert frontier.pareto([("a", 1, 0.5), ("b", 1, 0.6), ("c", 2, 0.6), ("d", 3, 0.7),
                            ("e", np.nan, 0.9), ("f", 4, np.nan)]) == ["b", "d"]


def test_facts_name_the_frontier_and_the_cheapest_within_delta(analysis):
    f = analysis.facts["wide_noisy"]
    assert f["frontier"].startswith("Momentum-SAM (1.00× SGD's evaluations, ")
    assert f["frontier"].count("→") == 2
    assert f["frontier"].split(" → ")[-1].startswith("SAM every 5 (1.20× SGD's evaluations")
    assert f["frontier_budgets"] == ("from 1.00× to below 1.10×: Momentum-SAM; from 1.10× to "
                                     "below 1.20×: SAM every 10; from 1.20× up: SAM every 5")
    assert f["best"].startswith("SAM") and "80.00%" in f["best"]
    # within 0.3 pp of the best (SAM; SAM every 5 ties it): the cheapest is SAM every 5
    assert f["cheapest_method"] == "SAM every 5"
    assert f["cheapest_within_delta"].startswith("SAM every 5 (1.20× SGD's evaluations, ")
    # narrow noisy: all equal; SGD 1× ties Momentum-SAM in cost and accuracy: SGD, the simpler
    assert analysis.facts["narrow_noisy"]["cheapest_method"] == "SGD 1×"
    assert analysis.facts["narrow_noisy"]["frontier"].startswith("SGD 1× (1.00×")
    assert analysis.facts["cells"] == "narrow_clean, narrow_noisy, wide_clean, wide_noisy"
    assert "width 512, noise 40%: Momentum-SAM" in analysis.facts["frontier_each"]
    assert analysis.facts["cost"].startswith("SGD 1×: 1.00× the evaluations")
    assert "SAM: 2.00× the evaluations, 2.10× the training time" in analysis.facts["cost"]


def test_claims_and_verdicts(analysis):
    ids = [c.id for c in analysis.claims]
    assert len(ids) == 4 * 4 and len(set(ids)) == len(ids)
    c = analysis.claim("wide_noisy.sam_vs_sgd2x")
    assert c.effect.estimate == pytest.approx(0.018) and c.verdict == "supports"
    assert c.delta == 0.003 and c.delta_reason
    # SAM every 5 vs SAM: no loss on average, the CI inside ±0.3 pp: no loss worth having
    c = analysis.claim("wide_noisy.sam_k5_vs_sam")
    assert c.direction == -1 and c.effect.estimate == pytest.approx(0, abs=1e-12)
    assert c.verdict == "contradicts" and "inside" in c.explained
    assert "'contradicts' means no loss worth having" in c.text
    # clean wide: a clear loss of 0.8 pp: the claimed cost is there
    c = analysis.claim("wide_clean.sam_k5_vs_sam")
    assert c.effect.estimate == pytest.approx(-0.008) and c.verdict == "supports"
    assert analysis.claim("narrow_clean.sam_k5_vs_sam").verdict == "cannot tell"
    c = analysis.claim("wide_noisy.msam_vs_sgd")
    assert c.effect.estimate == pytest.approx(0.005) and c.verdict == "supports"
    c = analysis.claim("wide_noisy.looksam_vs_sam_k5")
    assert c.effect.estimate == pytest.approx(-0.001) and c.verdict == "contradicts"
    assert analysis.claim("narrow_noisy.sam_vs_sgd2x").verdict == "contradicts"  # exactly 0


def test_front_page_advice_reads_the_claim(analysis):
    table = pd.DataFrame([{"study": "frontier", "id": cid, **m}
                          for cid, m in analysis.metrics()["claims"].items()])
    lines = frontpage.advice(table)
    shown = analysis.claim("wide_noisy.sam_k5_vs_sam").shown
    assert lines == [frontpage.ADVICE[("frontier", "wide_noisy.sam_k5_vs_sam")]["contradicts"]
                     .format(shown=shown)]
    assert shown in lines[0]


def test_old_cached_rows_without_the_new_columns():
    """SGD and SAM runs shared with the noise and compute studies were stored before
    sam_interval existed: NaN there (or no column at all), and still recognised."""
    a = frontier.analyze(make_runs(old_rows=True))
    b = frontier.analyze(make_runs())
    pd.testing.assert_frame_equal(a.tables["methods"], b.tables["methods"])
    runs = make_runs().drop(columns=["sam_interval", "looksam_alpha"])
    runs = runs[runs["optimizer"].isin(["sgd", "sam"]) & (runs["tag"].isin(
        ["SGD 1×", "SGD 2×", "SAM"]))]
    c = frontier.analyze(runs)
    assert c.claim("wide_noisy.sam_vs_sgd2x").effect.estimate == pytest.approx(0.018)


def test_diverged_and_missing_runs():
    def status(m, w, p, s):
        return "diverged" if (m == "SAM" and w == 512 and p == 0.4 and s == 0) else "ok"
    partial = {m: v for m, v in METHODS.items() if m != "LookSAM (k 5)"}
    a = frontier.analyze(make_runs(methods=partial, status=status))
    sam = row(a.tables["methods"], "SAM")
    assert sam["n"] == 4 and sam["diverged"] == 1
    assert sam["grad_evals"] == 2000      # of the finished runs
    assert a.claim("wide_noisy.sam_vs_sgd2x").effect.n == 4
    c = a.claim("wide_noisy.looksam_vs_sam_k5")   # LookSAM not run (yet): no effect
    assert c.effect.n == 0 and c.verdict == "cannot tell"
    assert "LookSAM" not in set(a.tables["methods"]["method"])


def test_one_run_per_method_cell_and_seed():
    runs = make_runs()
    twice = pd.concat([runs, runs[runs["tag"] == "Momentum-SAM"]], ignore_index=True)
    with pytest.raises(ValueError, match="two runs of method 'Momentum-SAM'"):
        frontier.analyze(twice)


def test_all_diverged_and_empty():
    a = frontier.analyze(make_runs(status=lambda *x: "diverged"))
    assert a.facts["status"].startswith("all") and a.facts["wide_noisy"]["frontier"] == "n/a"
    assert all(c.verdict == "cannot tell" for c in a.claims)
    frontier.figure(a.tables["methods"], None)


def test_figure_and_display_table(analysis):
    fig = frontier.figure(analysis.tables["methods"], None)
    assert len(fig.axes) == len(WIDTHS) * len(NOISES)
    assert fig.alt_text
    html = frontier.display_table(analysis.tables["methods"]).to_html()
    assert "SAM every 5 ★" in html and "2.00" in html


def test_looksam_alpha_line_reports_test_and_train_accuracy_per_alpha():
    rows = [{"optimizer": "looksam", "looksam_alpha": a, "width": 32, "label_noise": 0.0,
             "seed": s, "status": "ok" if (a, s) != (0.7, 0) else "diverged",
             "best_test_acc": acc + 0.01 * s if (a, s) != (0.7, 0) else np.nan,
             "final_train_acc": train if (a, s) != (0.7, 0) else np.nan}
            for a, acc, train in [(0.7, 0.40, 0.20), (np.nan, 0.40, 0.20), (0.1, 0.85, 0.93)]
            for s in (0, 1)]
    rows = [r for r in rows if not (isinstance(r["looksam_alpha"], float)
                                    and math.isnan(r["looksam_alpha"]) and r["seed"] == 0)]
    rows.append({"optimizer": "sgd", "looksam_alpha": 0.7, "width": 32, "label_noise": 0.0,
                 "seed": 0, "status": "ok", "best_test_acc": 0.9, "final_train_acc": 1.0})
    line = frontier.looksam_alpha_line(pd.DataFrame(rows))
    # NaN alpha (a run stored before the field) is the default 0.7; SGD rows are ignored;
    # α 0.7: seed 0 diverged, seeds 1 (two runs) give 41% test and 20% train
    assert line == ("width 32, noise 0%: α 0.1: 85.50% test, 93.00% train; "
                    "α 0.7: 41.00% test, 20.00% train (1 of 3 diverged)")
    assert frontier.looksam_alpha_line(pd.DataFrame(rows[-1:])) == "n/a"


def test_cheapest_within_delta_prefers_sgd_at_equal_cost_when_both_are_within_delta():
    """Momentum-SAM 0.1 pp above SGD 1× (both 1× the evaluations, both within 0.3 pp of the
    best): a difference below δ does not buy the more complex method; 1 pp would."""
    def cell(msam_gain):
        methods = {m: METHODS[m] for m in ("SGD 1×", "SAM", "Momentum-SAM")}
        runs = make_runs(methods)
        bump = (runs["tag"] == "Momentum-SAM") * msam_gain + (runs["tag"] == "SAM") * 0.0015
        runs["best_test_acc"] = runs["best_test_acc"] + bump
        return frontier.analyze(runs).facts["narrow_noisy"]["cheapest_method"]
    assert cell(0.001) == "SGD 1×"
    assert cell(0.010) == "Momentum-SAM"
