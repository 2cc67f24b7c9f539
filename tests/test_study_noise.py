"""The noise study's analysis on synthetic run tables with planted effects (no training)."""
import math

import numpy as np
import pandas as pd
import pytest

from samkit.studies import noise

WIDTHS = {32: 1000, 128: 4000, 512: 16000}   # params: 2 doublings per 4x width
NOISES = (0.0, 0.2, 0.4)
SEEDS = range(6)
JITTER = np.array([1, -1, 2, -2, 3, -3])     # mean 0: the planted value is the exact mean


def make_runs(gain, seeds=SEEDS, noises=NOISES, status=lambda *a: "ok"):
    """SGD accuracy varies by seed and width; SAM = SGD + gain(noise, doublings, seed)."""
    rows = []
    for p in noises:
        for w, n in WIDTHS.items():
            d = math.log2(n / 1000)
            for s in seeds:
                sgd = 0.80 + 0.01 * s - 0.1 * p + 0.002 * d
                for opt, acc in (("sgd", sgd), ("sam", sgd + gain(p, d, s))):
                    st = status(opt, p, w, s)
                    ok = st == "ok"
                    rows.append({"optimizer": opt, "seed": s, "width": w, "params": n,
                                 "label_noise": p, "status": st, "epochs": 60,
                                 "best_test_acc": acc if ok else np.nan,
                                 "final_test_acc": acc - 0.001 if ok else np.nan,
                                 "final_train_acc": 0.99 - 0.5 * p * (opt == "sam") if ok
                                 else np.nan,
                                 "final_train_acc_clean": 0.9 if ok else np.nan})
    return pd.DataFrame(rows)


def planted(p, d, s):
    """Noise 0: no trend (per-seed slopes of mean 0, well inside ±δ); 0.2: a trend buried in
    seed noise; 0.4: exactly 0.2 pp per doubling, a little seed spread."""
    if p == 0.0:
        return 0.001 + 0.0001 * JITTER[s] * d
    if p == 0.2:
        return (0.002 + 0.01 * JITTER[s]) * d
    return 0.001 + (0.002 + 0.0001 * JITTER[s]) * d


def test_trend_per_noise_level():
    a = noise.analyze(make_runs(planted))
    assert [c.id for c in a.claims] == ["grows_at_0", "grows_at_0.2", "grows_at_0.4",
                                        "amplified", "widest_at_max_noise"]
    g0, g2, g4 = (a.claim(f"grows_at_{p:g}") for p in NOISES)
    assert g0.effect.estimate == pytest.approx(0, abs=1e-12)
    assert 0 < g0.effect.high < 0.001
    assert g0.verdict == "contradicts"          # no trend: the CI lies inside ±0.1 pp
    assert g2.effect.estimate == pytest.approx(0.002)
    assert g2.verdict == "cannot tell"          # the seeds' slopes spread far beyond δ
    assert g4.effect.estimate == pytest.approx(0.002)
    assert g4.effect.n == 6
    assert g4.verdict == "supports"
    assert g4.unit == "pp/doubling" and g4.delta == 0.001


def test_amplified_and_widest():
    a = noise.analyze(make_runs(planted))
    # widest: 4 doublings; noise 0.4 gain 0.001 + 0.008 (+ jitter of mean 0); noise 0: 0.001
    assert a.claim("widest_at_max_noise").effect.estimate == pytest.approx(0.009)
    assert a.claim("widest_at_max_noise").verdict == "supports"
    amp = a.claim("amplified")
    assert amp.effect.estimate == pytest.approx(0.008)
    assert amp.effect.n == 6
    assert amp.verdict == "supports"
    assert a.facts["highest_noise"] == "40%" and a.facts["widest"] == 512
    assert a.facts["grows_each"].startswith("noise 0%:")


def test_no_effect_anywhere_contradicts():
    a = noise.analyze(make_runs(lambda p, d, s: 0.0))
    for c in a.claims:
        assert c.effect.estimate == pytest.approx(0, abs=1e-12)
        assert c.verdict == "contradicts", c.id


def test_sam_worse_at_high_noise_contradicts_amplified():
    a = noise.analyze(make_runs(lambda p, d, s: -0.02 * p + 0.0002 * JITTER[s]))
    assert a.claim("amplified").effect.estimate == pytest.approx(-0.008)
    assert a.claim("amplified").verdict == "contradicts"
    assert a.claim("widest_at_max_noise").verdict == "contradicts"


def test_memorization_facts_and_fit_table():
    a = noise.analyze(make_runs(planted))
    m = a.facts["memorization"]
    assert m["sgd_train_acc"] == "99.00%" and m["sam_train_acc"] == "79.00%"
    assert m["sam_train_acc_clean"] == "90.00%"
    fit = a.tables["fit"]
    assert len(fit) == len(NOISES) * len(WIDTHS) * 2 and (fit["n"] == 6).all()


def test_some_runs_diverged():
    bad = lambda opt, p, w, s: "diverged" if (opt, p, w, s) == ("sam", 0.4, 512, 0) else "ok"
    a = noise.analyze(make_runs(planted, status=bad))
    c = a.claim("widest_at_max_noise")
    assert c.effect.n == 5 and a.claim("amplified").effect.n == 5
    row = a.tables["gain"].query("label_noise == 0.4 and width == 512").iloc[0]
    assert row["diverged"] == 1 and row["n"] == 5
    assert a.claim("grows_at_0.4").effect.n == 6   # seed 0 still has 2 finished widths
    assert "1 of 108 runs diverged" in a.facts["status"]


def test_all_runs_diverged():
    runs = make_runs(planted, status=lambda *a: "diverged")
    runs = runs.drop(columns=["best_test_acc", "final_test_acc", "final_train_acc",
                              "final_train_acc_clean"])  # as the run table has them then
    a = noise.analyze(runs)
    for c in a.claims:
        assert c.verdict == "cannot tell" and math.isnan(c.effect.estimate), c.id
        assert c.explained.startswith("cannot tell")
    assert (a.tables["gain"]["diverged"] == 6).all()
    assert a.facts["memorization"]["sam_train_acc"] == "n/a"
    assert a.facts["status"].startswith("all 108 runs diverged")


def test_one_noise_level_one_width():
    runs = make_runs(planted, noises=(0.4,))
    runs = runs[runs["width"] == 512]
    a = noise.analyze(runs)
    assert a.claim("grows_at_0.4").verdict == "cannot tell"   # one width: no slope
    assert a.claim("amplified").verdict == "cannot tell"      # one noise level: nothing to compare
    assert a.claim("widest_at_max_noise").verdict == "supports"


def test_only_sgd_runs_so_far():
    """A partial run cache (SAM not trained yet): empty tables with their columns, no crash."""
    runs = make_runs(planted)
    a = noise.analyze(runs[runs["optimizer"] == "sgd"])
    assert a.tables["gain"].empty and "estimate" in a.tables["gain"]
    assert all(c.verdict == "cannot tell" for c in a.claims)
    assert a.facts["memorization"]["sam_train_acc"] == "n/a"
