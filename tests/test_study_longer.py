"""The longer-training study's analysis on a hand-built run table: SGD degrading, SAM holding."""
import pandas as pd
import pytest

from samkit.studies import longer


def make_runs(sgd_drop=0.01, sam_drop=0.0) -> pd.DataFrame:
    rows = []
    for noise in (0.0, 0.4):
        for seed in range(6):
            base = 0.85 - 0.1 * noise + 0.002 * seed
            for k, epochs in enumerate((60, 120, 240)):
                for opt, drop in (("sgd", sgd_drop), ("sam", sam_drop)):
                    wobble = 0.0005 * ((seed + k) % 3) if opt == "sam" else 0.0
                    rows.append({"model": "mlp", "width": 512, "label_noise": noise,
                                 "optimizer": opt, "seed": seed, "epochs": epochs,
                                 "status": "ok", "final_test_acc": base - drop * k / 2 + wobble})
    return pd.DataFrame(rows)


def test_sgd_degrades_and_the_gain_grows():
    a = longer.analyze(make_runs())
    degrade = a.claim("sgd_degrades.n40")
    assert degrade.effect.estimate == pytest.approx(-0.01) and degrade.direction == -1
    assert degrade.verdict == "supports" and degrade.effect.n == 6
    grows = a.claim("gain_grows.n0")
    wobble = sum(0.0005 * ((s + 2) % 3) - 0.0005 * (s % 3) for s in range(6)) / 6
    assert grows.effect.estimate == pytest.approx(0.01 + wobble)
    assert grows.verdict == "supports"
    holds = a.claim("sam_degrades.n0")   # SAM's own change: wobble only, inside ±0.3 pp
    assert holds.direction == -1 and holds.verdict == "contradicts"
    changes = a.tables["changes"].set_index(["label_noise", "epochs", "quantity"])
    assert changes.loc[(0.0, 120, "SGD"), "estimate"] == pytest.approx(-0.005)
    assert a.facts["base_epochs"] == 60 and a.facts["longest_epochs"] == 240


def test_no_degradation_contradicts_and_a_diverged_run_is_left_out_and_counted():
    runs = make_runs(sgd_drop=0.0)
    a = longer.analyze(runs)
    assert a.claim("sgd_degrades.n0").verdict == "contradicts"
    runs.loc[(runs["seed"] == 0) & (runs["epochs"] == 240) & (runs["optimizer"] == "sgd"),
             "status"] = "diverged"
    changes = longer.analyze(runs).tables["changes"].set_index(
        ["label_noise", "epochs", "quantity"])
    row = changes.loc[(0.0, 240, "SAM − SGD")]
    assert row["n"] == 5 and row["diverged"] == 1 and row["unfit"] == 0
    sam = changes.loc[(0.0, 240, "SAM")]
    assert sam["n"] == 6 and sam["diverged"] == 0 and sam["unfit"] == 0
