"""The BatchNorm-gotcha study's analysis on a hand-built run table."""
import math

import numpy as np
import pandas as pd
import pytest

from samkit.studies import batchnorm


def make_runs(cost=0.01, drift_ratio=2.0) -> pd.DataFrame:
    rows = []
    for seed in range(6):
        base_acc, base_drift = 0.88 + 0.002 * seed, 0.05 + 0.01 * seed
        arms = {"frozen": (base_acc, base_drift),
                "updated": (base_acc - cost - 0.001 * (seed % 2), base_drift * drift_ratio),
                "momentum0": (base_acc, base_drift)}
        for arm, (acc, drift) in arms.items():
            if arm == "momentum0" and seed > 1:
                continue
            rows.append({"model": "preact_resnet18", "width": 4, "params": 700_000,
                         "optimizer": "sam", "bn_perturbed": arm, "seed": seed, "status": "ok",
                         "epochs": 15, "n_train": 10000, "final_test_acc": acc,
                         "final_train_acc": 0.97, "final_train_loss_running": 0.1 + seed,
                         "bn_drift_mean": drift, "bn_drift_var": 2 * drift})
    return pd.DataFrame(rows)


def test_a_planted_cost_of_the_gotcha():
    a = batchnorm.analyze(make_runs())
    fix = a.claim("fix")   # fix − no fix
    assert fix.effect.estimate == pytest.approx(0.01 + 0.0005) and fix.effect.n == 6
    assert fix.verdict == "supports"
    drift = a.claim("drift")
    assert math.exp(drift.effect.estimate) == pytest.approx(2.0) and drift.verdict == "supports"
    assert a.facts["same_steps"] == "6 of 6" and a.facts["momentum0_same_acc"] == "2 of 2"
    arms = a.tables["arms"].set_index("arm")
    assert arms.loc[batchnorm.ARMS["momentum0"], "finished"] == 2
    assert arms.loc[batchnorm.ARMS["updated"], "test_acc"] == pytest.approx(
        np.mean([0.88 + 0.002 * s - 0.01 - 0.001 * (s % 2) for s in range(6)]))


def test_no_cost_contradicts():
    a = batchnorm.analyze(make_runs(cost=0.0, drift_ratio=1.0))
    assert a.claim("fix").verdict == "contradicts"
    assert a.claim("drift").verdict == "contradicts"
