"""The data-size study's analysis on synthetic run tables with planted gains."""
import math

import numpy as np
import pandas as pd
import pytest

from samkit.analysis.regime import regime
from samkit.studies import datasize

PARAMS = {64: 40_000, 512: 640_000}
N_TRAIN = (2_500, 10_000, 40_000)      # params per example: 1 .. 256, powers of 2
SEEDS = range(6)
WOBBLE = [-0.0004, 0.0004, -0.0002, 0.0002, 0.0, 0.0]   # per-seed slope noise, mean 0


def make_runs(slope=0.0, constant=0.0) -> pd.DataFrame:
    """SAM − SGD = constant + (slope + wobble) × log2(params / n_train)."""
    rows = []
    for n in N_TRAIN:
        for width, params in PARAMS.items():
            dbl = math.log2(params / n)
            for seed in SEEDS:
                base = 0.80 + 0.01 * seed + 0.01 * math.log2(n / 2_500)
                for opt in ("sgd", "sam"):
                    gain = constant + (slope + WOBBLE[seed]) * dbl if opt == "sam" else 0.0
                    rows.append({"dataset": "fashion_mnist", "model": "mlp", "n_train": n,
                                 "n_val": 5_000, "width": width, "params": params,
                                 "optimizer": opt, "seed": seed, "status": "ok", "epochs": 60,
                                 "best_test_acc": base + gain, "final_train_acc": 0.99})
    return pd.DataFrame(rows)


def test_planted_trend_in_parameters_per_example():
    a = datasize.analyze(make_runs(slope=0.002))
    grows = a.claim("grows_with_ratio")
    assert grows.effect.estimate == pytest.approx(0.002) and grows.effect.n == 6
    assert grows.verdict == "supports" and grows.unit == "pp/doubling"
    most = a.claim("most_overparameterized")
    assert most.effect.estimate == pytest.approx(0.002 * 8)      # 256 params per example
    assert most.verdict == "supports"
    least = a.claim("least_overparameterized")
    assert least.effect.estimate == pytest.approx(0.0, abs=1e-12)  # 1 param per example
    assert least.verdict == "contradicts"
    gain = a.tables["gain"]
    assert list(gain.columns[:5]) == ["n_train", "examples", "width", "params",
                                      "params_per_example"]
    assert sorted(gain["params_per_example"]) == [1, 4, 16, 16, 64, 256]
    assert "width 512 on 2,500 training images, 256" in a.facts["most_cell"]
    assert "width 64 on 40,000 training images, 1 " in a.facts["least_cell"]


def test_constant_gain_without_trend():
    a = datasize.analyze(make_runs(constant=0.01))
    assert a.claim("grows_with_ratio").effect.estimate == pytest.approx(0.0, abs=1e-12)
    assert a.claim("grows_with_ratio").verdict == "contradicts"
    for cid in ("most_overparameterized", "least_overparameterized"):
        assert a.claim(cid).effect.estimate == pytest.approx(0.01)
        assert a.claim(cid).verdict == "supports"


def test_no_effect():
    a = datasize.analyze(make_runs())
    for c in a.claims:
        assert c.effect.estimate == pytest.approx(0.0, abs=1e-12)
        assert c.verdict == "contradicts"


def test_whole_training_set_counts_its_examples():
    runs = make_runs(slope=0.002)
    runs.loc[runs["n_train"] == 40_000, "n_train"] = 0      # "all": 60,000 − 5,000 here
    ex = datasize.examples(runs)
    assert set(ex[runs["n_train"] == 0]) == {55_000.0}
    a = datasize.analyze(runs)
    least = a.tables["gain"].sort_values("params_per_example").iloc[0]
    assert least["n_train"] == 0 and least["params_per_example"] == pytest.approx(40 / 55)


def test_diverged_pairs_are_left_out():
    runs = make_runs(slope=0.002)
    bad = (runs["seed"] == 0) & (runs["n_train"] == 2_500) & (runs["width"] == 512) & (
        runs["optimizer"] == "sgd")
    runs.loc[bad, ["status", "best_test_acc"]] = ["diverged", np.nan]
    a = datasize.analyze(runs)
    most = a.claim("most_overparameterized")
    assert most.effect.n == 5
    assert a.tables["gain"]["diverged"].sum() == 1
    assert a.claim("grows_with_ratio").effect.n == 6   # seed 0 keeps five cells
    assert "1 of 72 runs diverged" in a.facts["status"]


def test_all_diverged():
    runs = make_runs(slope=0.002).drop(columns=["best_test_acc", "final_train_acc"])
    runs["status"] = "diverged"
    a = datasize.analyze(runs)
    for c in a.claims:
        assert c.verdict == "cannot tell" and c.shown == "n/a"
    assert "all 72 runs diverged" in a.facts["status"]
    assert len(a.tables["gain"]) == 6 and a.tables["gain"]["n"].eq(0).all()
    assert regime(runs)["diverged"] == 72
    a.metrics()
