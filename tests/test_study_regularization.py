"""The regularization study's analysis on synthetic run tables with planted trends."""
import math

import numpy as np
import pandas as pd
import pytest

from samkit.analysis.regime import regime
from samkit.studies import regularization as reg

PARAMS = {32: 64_000, 128: 256_000, 512: 1_024_000}   # two doublings per step, in the trend range
SEEDS = range(6)
# per-seed slope noise (mean 0), a different draw for each tag and for the last epoch
WOBBLE = {reg.REGULARIZED: [-0.0004, 0.0004, -0.0002, 0.0002, 0.0, 0.0],
          reg.NO_WD: [0.0002, -0.0002, 0.0, 0.0, 0.0004, -0.0004],
          reg.NO_ES: [0.0, 0.0004, 0.0, -0.0004, 0.0002, -0.0002]}
LAST = [0.0, 0.0, 0.0004, -0.0004, -0.0002, 0.0002]


def make_runs(slopes: dict, final_slope: float | None = None, drop_wd: bool = False):
    """SAM − SGD = slope × log2(params / 1000) + per-seed wobble, per tag (``slopes``: tag ->
    slope of the early-stopped metric best_test_acc). The last epoch's final_test_acc has
    slope ``final_slope`` (default: the tag's own); a tag "no early stopping" is an arm
    trained without early stopping (best == final)."""
    rows = []
    for tag, slope in slopes.items():
        if drop_wd and tag == reg.NO_WD:
            continue
        last = slope if final_slope is None or tag == reg.NO_ES else final_slope
        for width, params in PARAMS.items():
            for seed in SEEDS:
                dbl = math.log2(params / 64_000)
                base = 0.80 + 0.01 * seed + 0.02 * dbl
                w = WOBBLE[tag][seed]
                for opt in ("sgd", "sam"):
                    up = opt == "sam"
                    best = base + ((slope + w) * dbl if up else 0.0)
                    final = (best if tag == reg.NO_ES else
                             base - 0.01 + ((last + LAST[seed]) * dbl if up else 0.0))
                    rows.append({
                        "tag": tag, "model": "mlp", "width": width, "params": params,
                        "optimizer": opt, "seed": seed, "status": "ok", "epochs": 10,
                        "n_train": 1000, "weight_decay": 0.0 if tag == reg.NO_WD else 1e-4,
                        "best_test_acc": best, "final_test_acc": final,
                        "final_train_acc": 0.99})
    return pd.DataFrame(rows)


def test_planted_trend_and_its_ablations():
    runs = make_runs({reg.REGULARIZED: 0.002, reg.NO_WD: 0.0}, final_slope=0.002)
    a = reg.analyze(runs)
    trend = a.claim("trend_regularized")
    assert trend.effect.estimate == pytest.approx(0.002)
    assert trend.effect.n == 6 and trend.verdict == "supports"
    no_wd = a.claim("trend_no_weight_decay")
    assert no_wd.effect.estimate == pytest.approx(0.0, abs=1e-12)
    assert no_wd.verdict == "contradicts"           # CI inside ±0.1 pp per doubling
    needs_wd = a.claim("needs_weight_decay")
    assert needs_wd.effect.estimate == pytest.approx(0.002) and needs_wd.verdict == "supports"
    # no early stopping is read from the same runs' last epoch: the same trend, so removing
    # early stopping takes nothing away
    assert a.claim("trend_no_early_stopping").effect.estimate == pytest.approx(0.002)
    needs_es = a.claim("needs_early_stopping")
    assert needs_es.effect.estimate == pytest.approx(0.0, abs=1e-12)
    assert needs_es.verdict == "contradicts"
    assert "last epoch of the regularized runs" in a.facts["no_early_stopping_from"]
    gain = a.tables["gain"]
    assert set(gain["variant"]) == set(reg.VARIANTS) and len(gain) == 9
    widest = gain[(gain["variant"] == reg.REGULARIZED) & (gain["width"] == 512)].iloc[0]
    assert widest["estimate"] == pytest.approx(0.002 * 4) and widest["n"] == 6
    assert a.claim("trend_regularized").unit == "pp/doubling"
    assert a.claim("needs_weight_decay").delta == pytest.approx(0.001)


def test_no_effect_anywhere_contradicts_the_trend():
    a = reg.analyze(make_runs({reg.REGULARIZED: 0.0, reg.NO_WD: 0.0}, final_slope=0.0))
    for c in a.claims:
        assert c.effect.estimate == pytest.approx(0.0, abs=1e-12)
        assert c.verdict == "contradicts", c.id


def test_trained_no_early_stopping_arm_is_used_when_present():
    # the regularized runs' last epoch has the trend; the trained arm has none
    runs = make_runs({reg.REGULARIZED: 0.002, reg.NO_WD: 0.002, reg.NO_ES: 0.0},
                     final_slope=0.002)
    a = reg.analyze(runs)
    assert a.claim("trend_no_early_stopping").effect.estimate == pytest.approx(0.0, abs=1e-12)
    assert a.claim("needs_early_stopping").effect.estimate == pytest.approx(0.002)
    assert a.claim("needs_early_stopping").verdict == "supports"
    assert "separate runs" in a.facts["no_early_stopping_from"]


def test_missing_ablation_arm_cannot_tell():
    a = reg.analyze(make_runs({reg.REGULARIZED: 0.002, reg.NO_WD: 0.0}, drop_wd=True))
    assert a.claim("trend_no_weight_decay").verdict == "cannot tell"
    assert a.claim("needs_weight_decay").verdict == "cannot tell"
    assert a.claim("trend_regularized").verdict == "supports"


def test_diverged_runs_leave_their_pairs_out():
    runs = make_runs({reg.REGULARIZED: 0.002, reg.NO_WD: 0.0}, final_slope=0.002)
    bad = ((runs["tag"] == reg.REGULARIZED) & (runs["seed"] == 0) & (runs["width"] == 512)
           & (runs["optimizer"] == "sam"))
    runs.loc[bad, ["status", "best_test_acc", "final_test_acc"]] = ["diverged", np.nan, np.nan]
    a = reg.analyze(runs)
    gain = a.tables["gain"].set_index(["variant", "width"])
    assert gain.loc[(reg.REGULARIZED, 512), "n"] == 5
    assert gain.loc[(reg.REGULARIZED, 512), "diverged"] == 1
    # seed 0 still has two finished sizes, so it keeps a slope
    assert a.claim("trend_regularized").effect.n == 6
    assert "1 of 72 runs diverged" in a.facts["status"]


def test_all_diverged():
    runs = make_runs({reg.REGULARIZED: 0.002, reg.NO_WD: 0.0})
    runs = runs.drop(columns=["best_test_acc", "final_test_acc", "final_train_acc"])
    runs["status"] = "diverged"
    a = reg.analyze(runs)
    for c in a.claims:
        assert c.verdict == "cannot tell" and math.isnan(c.effect.estimate)
        assert c.shown == "n/a"
    assert "all 72 runs diverged" in a.facts["status"]
    assert a.tables["gain"]["n"].eq(0).all()
    assert regime(runs)["diverged"] == 72
    a.metrics()  # every claim serializes


def test_needs_a_regularized_arm():
    runs = make_runs({reg.NO_WD: 0.0})
    with pytest.raises(ValueError, match="regularized"):
        reg.analyze(runs)
