"""The Hessian study's analysis on synthetic run tables with planted SAM/SGD ratios."""
import math

import numpy as np
import pandas as pd
import pytest

from samkit.analysis.regime import regime
from samkit.studies import hessian

PARAMS = {32: 26_000, 128: 118_000, 512: 670_000}
SEEDS = range(6)
WOBBLE = [-0.02, 0.02, -0.01, 0.01, 0.0, 0.0]   # per-seed log noise, mean 0


def make_runs(ratio_lambda=0.5, ratio_trace=1.0, ratio_nonuni=None) -> pd.DataFrame:
    """SAM = SGD × ratio × exp(wobble) per measure; ``ratio_nonuni``: width -> ratio."""
    ratio_nonuni = ratio_nonuni or {32: 1.0, 128: 0.8, 512: 0.5}
    rows = []
    for width, params in PARAMS.items():
        for seed in SEEDS:
            sgd = {"lambda_max": 20.0 * (1 + 0.1 * seed), "trace": 300.0 + 10 * seed,
                   "nonuniformity": 5.0 + seed}
            for opt in ("sgd", "sam"):
                w = WOBBLE[seed] if opt == "sam" else 0.0
                r = ({"lambda_max": ratio_lambda, "trace": ratio_trace,
                      "nonuniformity": ratio_nonuni[width]} if opt == "sam"
                     else dict.fromkeys(sgd, 1.0))
                rows.append({
                    "model": "mlp", "width": width, "params": params, "optimizer": opt,
                    "seed": seed, "status": "ok", "epochs": 200, "n_train": 2000, "lr": 0.1,
                    "hessian_samples": 128, "final_train_loss": 0.003 + 0.001 * (width == 32),
                    "final_train_acc": 0.999, "final_test_acc": 0.85,
                    **{f"hessian_{m}": v * r[m] * math.exp(w) for m, v in sgd.items()}})
    return pd.DataFrame(rows)


def test_planted_ratios():
    a = hessian.analyze(make_runs())
    lam = a.claim("lambda_max.widest")
    assert math.exp(lam.effect.estimate) == pytest.approx(0.5)
    assert lam.effect.n == 6 and lam.verdict == "supports" and lam.direction == -1
    assert lam.unit == "ratio" and lam.delta == pytest.approx(math.log(1.1))
    assert lam.shown.startswith("0.50×")
    trace = a.claim("trace.widest")
    assert math.exp(trace.effect.estimate) == pytest.approx(1.0)
    assert trace.verdict == "contradicts"       # CI inside ×1.1 either way
    nonuni = a.claim("nonuniformity.widest")
    assert math.exp(nonuni.effect.estimate) == pytest.approx(0.5)
    assert nonuni.verdict == "supports"
    every = a.claim("lambda_max.all_widths")
    assert math.exp(every.effect.estimate) == pytest.approx(0.5) and every.effect.n == 6
    ratio = a.tables["ratio"].set_index(["measure", "width"])
    assert np.exp(ratio.loc[("nonuniformity", 32), "estimate"]) == pytest.approx(1.0)
    assert np.exp(ratio.loc[("nonuniformity", 128), "estimate"]) == pytest.approx(0.8)
    levels = a.tables["levels"].set_index(["measure", "width", "optimizer"])
    sgd = np.exp(levels.loc[("lambda_max", 512, "sgd"), "estimate"])
    assert sgd == pytest.approx(np.exp(np.mean(np.log([20 * (1 + 0.1 * s) for s in SEEDS]))))
    assert a.facts["widest"] == 512 and a.facts["stability_bound"] == "20"
    assert a.facts["train_loss_each"].startswith("width 32: SGD 0.004, SAM 0.004")
    assert a.facts["train_loss_max"] == "0.004"


def test_sam_sharper_contradicts():
    a = hessian.analyze(make_runs(ratio_lambda=2.0))
    assert a.claim("lambda_max.widest").verdict == "contradicts"
    assert math.exp(a.claim("lambda_max.all_widths").effect.estimate) == pytest.approx(2.0)


def test_diverged_pairs_are_left_out():
    runs = make_runs()
    bad = (runs["seed"] == 0) & (runs["width"] == 512) & (runs["optimizer"] == "sam")
    runs.loc[bad, "status"] = "diverged"
    runs.loc[bad, [c for c in runs if c.startswith(("hessian_", "final_")) and
                   c != "hessian_samples"]] = np.nan
    a = hessian.analyze(runs)
    lam = a.claim("lambda_max.widest")
    assert lam.effect.n == 5 and math.exp(lam.effect.estimate) == pytest.approx(0.5, rel=0.01)
    assert a.claim("lambda_max.all_widths").effect.n == 5  # seed 0 lacks a width
    ratio = a.tables["ratio"].set_index(["measure", "width"])
    assert ratio.loc[("lambda_max", 512), "diverged"] == 1
    assert "1 of 36 runs diverged" in a.facts["status"]


def test_all_diverged():
    runs = make_runs()
    runs = runs.drop(columns=[c for c in runs if c.startswith(("hessian_", "final_"))
                              and c != "hessian_samples"])
    runs["status"] = "diverged"
    a = hessian.analyze(runs)
    for c in a.claims:
        assert c.verdict == "cannot tell" and c.shown == "n/a"
    assert "all 36 runs diverged" in a.facts["status"]
    assert a.facts["lambda_max_widest_sgd"] == "n/a" and a.facts["train_loss_max"] == "n/a"
    assert a.tables["fit"]["n"].eq(0).all()
    assert regime(runs)["diverged"] == 36
    a.metrics()


def test_no_hessian_measured_is_one_clear_error():
    runs = make_runs().drop(columns=[f"hessian_{m}" for m in hessian.MEASURES])
    runs["hessian_samples"] = 0
    with pytest.raises(ValueError, match="hessian_samples"):
        hessian.analyze(runs)
    with pytest.raises(ValueError, match="hessian_samples"):
        hessian.analyze(runs.drop(columns=["hessian_samples"]))
