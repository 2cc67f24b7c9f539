"""The compute study's analysis on synthetic run tables with planted effects (no training)."""
import math

import numpy as np
import pandas as pd
import pytest

from samkit.studies import compute

WIDTHS = {32: 1000, 128: 4000, 512: 16000}   # params: 2 doublings per 4x width
SEEDS = range(6)
JITTER = np.array([1, -1, 2, -2, 3, -3])     # mean 0
# nearly constant planted differences: scipy warns that their spread is at rounding level
pytestmark = pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
TAGS = {"SGD 1x": ("sgd", 60), "SGD 2x": ("sgd", 120), "SAM 1x": ("sam", 60)}


def make_runs(sam_vs_2x, sgd_2x_gain=lambda d, s: 0.001, time_ratio=1.9, seeds=SEEDS,
              status=lambda *a: "ok", tags=TAGS):
    """SGD 1x accuracy varies by seed and width; SGD 2x = SGD 1x + sgd_2x_gain(doublings,
    seed); SAM 1x = SGD 2x + sam_vs_2x(doublings, seed). Training time: SGD 2x takes twice
    SGD 1x's, SAM 1x ``time_ratio`` times SGD 1x's (times a seed factor shared by all)."""
    rows = []
    for w, n in WIDTHS.items():
        d = math.log2(n / 1000)
        for s in seeds:
            base = 0.84 + 0.003 * s + 0.002 * d
            t = (1 + 0.1 * s) * n / 100
            acc = {"SGD 1x": base, "SGD 2x": base + sgd_2x_gain(d, s)}
            acc["SAM 1x"] = acc["SGD 2x"] + sam_vs_2x(d, s)
            secs = {"SGD 1x": t, "SGD 2x": 2 * t, "SAM 1x": time_ratio * t}
            for tag, (opt, epochs) in tags.items():
                st = status(tag, w, s)
                rows.append({"tag": tag, "optimizer": opt, "epochs": epochs, "seed": s,
                             "width": w, "params": n, "status": st,
                             "train_seconds": secs[tag],
                             "best_test_acc": acc[tag] if st == "ok" else np.nan})
    return pd.DataFrame(rows)


def test_planted_gain_and_trend():
    # SAM 1x − SGD 2x = 0.1 pp + 0.2 pp per doubling (exactly, a little seed spread in level)
    a = compute.analyze(make_runs(lambda d, s: 0.001 + 0.002 * d + 0.0002 * JITTER[s],
                                  sgd_2x_gain=lambda d, s: 0.0003 + 0.0008 * JITTER[s]))
    assert [c.id for c in a.claims] == ["widest_vs_2x", "grows_vs_2x", "sgd_2x_helps"]
    w = a.claim("widest_vs_2x")
    assert w.effect.estimate == pytest.approx(0.009) and w.effect.n == 6
    assert w.verdict == "supports"
    g = a.claim("grows_vs_2x")
    assert g.effect.estimate == pytest.approx(0.002) and g.unit == "pp/doubling"
    assert g.verdict == "supports"
    h = a.claim("sgd_2x_helps")
    assert h.effect.estimate == pytest.approx(0.0003) and h.direction == 1
    assert -0.003 < h.effect.low < 0 < h.effect.high < 0.003
    assert h.verdict == "contradicts"   # the CI lies inside ±0.3 pp


def test_cost_ratio():
    a = compute.analyze(make_runs(lambda d, s: 0.0, time_ratio=1.9))
    assert a.facts["cost_widest"] == a.facts["time_ratio_widest"] == "1.90× [1.90, 1.90]"
    assert a.facts["cost_widest_vs_2x"] == "0.95× [0.95, 0.95]"
    t = a.tables["time"]
    row = t[(t["baseline"] == "SGD 1x") & (t["width"] == 512)].iloc[0]
    assert row["estimate"] == pytest.approx(math.log(1.9))
    assert a.facts["arm_epochs"] == {"sam_1x": "60", "sgd_1x": "60", "sgd_2x": "120"}


def test_no_effect_contradicts():
    a = compute.analyze(make_runs(lambda d, s: 0.0002 * JITTER[s] * (1 + d),
                                  sgd_2x_gain=lambda d, s: 0.0))
    assert a.claim("widest_vs_2x").effect.estimate == pytest.approx(0.0, abs=1e-12)
    assert a.claim("widest_vs_2x").verdict == "contradicts"
    assert a.claim("grows_vs_2x").verdict == "contradicts"
    assert a.claim("sgd_2x_helps").verdict == "contradicts"


def test_sgd_2x_helps_and_sam_loses():
    a = compute.analyze(make_runs(lambda d, s: -0.01 + 0.001 * JITTER[s],
                                  sgd_2x_gain=lambda d, s: 0.01 + 0.001 * JITTER[s]))
    assert a.claim("sgd_2x_helps").effect.estimate == pytest.approx(0.01)
    assert a.claim("sgd_2x_helps").verdict == "supports"
    assert a.claim("widest_vs_2x").verdict == "contradicts"   # CI wholly below 0
    assert a.facts["sam_vs_sgd_1x_widest"].startswith("+0.00 pp")


def test_noisy_cannot_tell():
    a = compute.analyze(make_runs(lambda d, s: 0.001 + 0.01 * JITTER[s] * d))
    assert a.claim("grows_vs_2x").verdict == "cannot tell"
    assert a.claim("widest_vs_2x").verdict == "cannot tell"


def test_some_runs_diverged():
    bad = lambda tag, w, s: "diverged" if (tag, w, s) == ("SAM 1x", 512, 2) else "ok"
    a = compute.analyze(make_runs(lambda d, s: 0.002 * d, status=bad))
    assert a.claim("widest_vs_2x").effect.n == 5
    assert a.claim("grows_vs_2x").effect.n == 6   # seed 2 keeps 2 finished widths
    g = a.tables["gains"]
    assert g[(g["comparison"] == "SAM 1x − SGD 2x") & (g["width"] == 512)]["diverged"].item() == 1
    t = a.tables["time"]
    assert t[(t["baseline"] == "SGD 1x") & (t["width"] == 512)]["n"].item() == 5
    assert "1 of 54 runs diverged" in a.facts["status"]


def test_all_runs_diverged():
    runs = make_runs(lambda d, s: 0.0, status=lambda *a: "diverged")
    a = compute.analyze(runs.drop(columns=["best_test_acc"]))
    for c in a.claims:
        assert c.verdict == "cannot tell" and math.isnan(c.effect.estimate), c.id
    assert a.facts["cost_widest"] == "n/a"
    assert (a.tables["gains"]["diverged"] == 6).all()
    assert a.facts["status"].startswith("all 54 runs diverged")


def test_sgd_2x_not_run_yet():
    tags = {k: TAGS[k] for k in ("SGD 1x", "SAM 1x")}
    a = compute.analyze(make_runs(lambda d, s: 0.0, tags=tags))
    assert a.claim("widest_vs_2x").verdict == "cannot tell"
    assert a.claim("grows_vs_2x").effect.n == 0
    assert a.facts["cost_widest"].startswith("1.90×")
    assert a.facts["arm_epochs"]["sgd_2x"] == "n/a"
