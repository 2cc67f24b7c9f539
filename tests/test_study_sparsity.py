"""The sparsity study's analysis on synthetic run tables with planted gains (no training)."""
import math

import numpy as np
import pandas as pd
import pytest

from samkit.studies import sparsity

SEEDS = range(6)
JITTER = np.array([1, -1, 2, -2, 3, -3])   # mean 0
NONZERO = 26506
# (tag, prune, width, params): the dense width-32 model and wide models pruned to its size
VARIANTS = [("dense", "none", 32, NONZERO)] + [
    ("sparse", m, w, p) for m in ("random", "snip") for w, p in ((128, 118282), (512, 669706))]


def make_runs(gain, seeds=SEEDS, status=lambda *a: "ok", variants=VARIANTS):
    """SAM = SGD + gain(prune, width, seed); SGD accuracy varies by seed and variant."""
    rows = []
    for tag, prune, w, params in variants:
        for s in seeds:
            sgd = 0.84 + 0.004 * s - 0.00001 * w
            for opt, acc in (("sgd", sgd), ("sam", sgd + gain(prune, w, s))):
                st = status(opt, prune, w, s)
                rows.append({"tag": tag, "prune": prune, "width": w, "params": params,
                             "nonzero_params": NONZERO + (s % 2) * (prune == "snip"),
                             "prune_to_width": 0 if prune == "none" else 32,
                             "optimizer": opt, "seed": s, "status": st, "epochs": 60,
                             "best_test_acc": acc if st == "ok" else np.nan})
    return pd.DataFrame(rows)


def planted(prune, w, s):
    """Dense: +0.2 pp. Random pruning: +1.0 pp at width 512. SNIP: the dense gain at every
    width (no extra benefit). A little seed spread everywhere."""
    spread = 0.0002 * JITTER[s]
    if prune == "random":
        return {128: 0.006, 512: 0.010}[w] + spread
    return 0.002 + spread


def test_planted_gains():
    a = sparsity.analyze(make_runs(planted))
    assert [c.id for c in a.claims] == ["random.beats_dense", "random.gain_widest",
                                        "snip.beats_dense", "snip.gain_widest"]
    r = a.claim("random.beats_dense")
    assert r.effect.estimate == pytest.approx(0.008) and r.effect.n == 6
    assert r.verdict == "supports"
    assert a.claim("random.gain_widest").effect.estimate == pytest.approx(0.010)
    assert a.claim("random.gain_widest").verdict == "supports"
    s = a.claim("snip.beats_dense")
    assert s.effect.estimate == pytest.approx(0.0, abs=1e-12)
    assert s.verdict == "contradicts"             # same gain as dense: inside ±0.3 pp
    assert a.claim("snip.gain_widest").effect.estimate == pytest.approx(0.002)
    assert a.facts["dense_width"] == 32 and a.facts["sparse_widths"] == "128, 512"
    assert a.facts["widest"] == {"random": 512, "snip": 512}
    assert a.facts["dense_gain"].startswith("+0.20 pp")
    assert a.facts["nonzero_min"] == "26,506" and a.facts["nonzero_max"] == "26,507"


def test_gain_table():
    g = sparsity.analyze(make_runs(planted)).tables["gain"]
    assert len(g) == 5 and (g["n"] == 6).all()
    row = g[(g["prune"] == "random") & (g["width"] == 128)].iloc[0]
    assert row["estimate"] == pytest.approx(0.006) and row["nonzero_params"] == NONZERO


def test_sparse_worse_than_dense_contradicts():
    a = sparsity.analyze(make_runs(lambda p, w, s: (0.004 if p == "none" else -0.004)
                                   + 0.0002 * JITTER[s]))
    assert a.claim("random.beats_dense").effect.estimate == pytest.approx(-0.008)
    assert a.claim("random.beats_dense").verdict == "contradicts"
    assert a.claim("snip.gain_widest").verdict == "contradicts"


def test_noisy_gains_cannot_tell():
    a = sparsity.analyze(make_runs(lambda p, w, s: 0.004 * JITTER[s] * (p == "snip")))
    assert a.claim("snip.beats_dense").verdict == "cannot tell"
    assert a.claim("snip.beats_dense").seeds_needed is not None


def test_dense_run_diverged():
    bad = lambda opt, p, w, s: "diverged" if (opt, p, s) == ("sgd", "none", 3) else "ok"
    a = sparsity.analyze(make_runs(planted, status=bad))
    assert a.claim("random.beats_dense").effect.n == 5
    assert a.claim("random.gain_widest").effect.n == 6
    g = a.tables["gain"]
    assert g[g["prune"] == "none"]["diverged"].item() == 1
    assert "1 of 60 runs diverged" in a.facts["status"]


def test_all_runs_diverged():
    runs = make_runs(planted, status=lambda *a: "diverged").drop(columns=["best_test_acc"])
    a = sparsity.analyze(runs)
    assert len(a.claims) == 4
    for c in a.claims:
        assert c.verdict == "cannot tell" and math.isnan(c.effect.estimate), c.id
    assert (a.tables["gain"]["diverged"] == 6).all()
    assert a.facts["nonzero_min"] == "n/a" and a.facts["dense_gain"] == "n/a"
    assert a.facts["status"].startswith("all 60 runs diverged")


def test_only_the_dense_model_so_far():
    a = sparsity.analyze(make_runs(planted, variants=VARIANTS[:1]))
    assert [c.id for c in a.claims] == ["random.beats_dense", "random.gain_widest",
                                        "snip.beats_dense", "snip.gain_widest"]
    assert all(c.verdict == "cannot tell" for c in a.claims)
    assert a.facts["sparse_widths"] == "n/a"
