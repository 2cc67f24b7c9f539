"""The fitting-speed study's analysis on hand-built run tables (planted delays, censored runs);
epochs-to-level read from histories: tests/test_fit.py."""
import numpy as np
import pandas as pd
import pytest

from scipy import stats

from samkit.studies import fitspeed

PARAMS = {64: 55_000, 2048: 5_800_000}


def make_runs(sgd95=18, sam95=27, sgd99=33, sam99=None, epochs=60) -> pd.DataFrame:
    """Two widths, 6 seeds, evaluated every 3 epochs; SAM's epochs are planted (None: never
    reached, NaN)."""
    rows = []
    for width, params in PARAMS.items():
        for seed in range(6):
            jitter = 3 * (seed % 2)   # the same in both arms
            for opt, e95, e99 in (("sgd", sgd95, sgd99), ("sam", sam95, sam99)):
                rows.append({"model": "mlp", "width": width, "params": params,
                             "optimizer": opt, "seed": seed, "status": "ok", "epochs": epochs,
                             "eval_every": 3, "final_train_acc": 0.99,
                             "epochs_to_95": np.nan if e95 is None else e95 + jitter,
                             "epochs_to_99": np.nan if e99 is None else e99 + jitter})
    return pd.DataFrame(rows)


def _t_interval(values):
    return stats.ttest_1samp(values, 0).confidence_interval(0.95)


def test_a_planted_delay_is_bounded_by_the_evaluation_grid():
    """SAM first seen at 27(+3), SGD at 18(+3): the crossings lie in [e - 2, e], so the CI
    runs from the t-interval of log((27 - 2) / 18) to that of log(27 / (18 - 2))."""
    a = fitspeed.analyze(make_runs())
    widest = a.claim("reach95.widest")
    j = np.array([3 * (s % 2) for s in range(6)])
    assert widest.effect.estimate == pytest.approx(np.mean(np.log((27 + j) / (18 + j))))
    assert widest.effect.low == pytest.approx(_t_interval(np.log((25 + j) / (18 + j))).low)
    assert widest.effect.high == pytest.approx(_t_interval(np.log((27 + j) / (16 + j))).high)
    assert widest.unit == "ratio" and widest.verdict == "supports" and widest.effect.n == 6


def test_a_censored_sam_run_gives_a_lower_bound_only():
    a = fitspeed.analyze(make_runs())   # SAM never reaches 99%: it crossed at 61 or later
    r99 = a.claim("reach99.widest")
    j = np.array([3 * (s % 2) for s in range(6)])
    assert r99.effect.estimate == pytest.approx(np.mean(np.log(61 / (33 + j))))
    assert r99.effect.low == pytest.approx(_t_interval(np.log(61 / (33 + j))).low)
    assert r99.effect.high == np.inf and r99.verdict == "supports"
    assert r99.shown.endswith(", ∞)")
    ratios = a.tables["ratios"].set_index(["level", "width"])
    assert ratios.loc[(0.99, 2048), "sam_censored"] == 6
    assert ratios.loc[(0.99, 2048), "both_censored"] == 0
    epochs = a.tables["epochs"].set_index(["width", "optimizer"])
    assert epochs.loc[(2048, "sam"), "reached_99"] == 0
    assert epochs.loc[(2048, "sgd"), "reached_99"] == 6
    assert epochs.loc[(2048, "sgd"), "median_epochs_to_99"] == pytest.approx(34.5)


def test_the_same_evaluation_or_both_censored_cannot_show_equality():
    """Crossings seen at the same evaluated epoch may be 2 epochs apart either way (a ratio
    of 16/18 to 18/16, wider than ×1.1), and two censored runs say nothing: cannot tell,
    never contradicts."""
    a = fitspeed.analyze(make_runs(sam95=18, sgd99=None, sam99=None))
    assert a.claim("reach95.widest").verdict == "cannot tell"
    assert a.claim("reach99.widest").verdict == "cannot tell"
    assert a.tables["ratios"].set_index(["level", "width"]).loc[(0.99, 2048),
                                                               "both_censored"] == 6


def test_across_widths_averages_per_seed():
    runs = make_runs()
    runs.loc[(runs["width"] == 64) & (runs["optimizer"] == "sam"), "epochs_to_95"] += 9
    a = fitspeed.analyze(runs)
    j = np.array([3 * (s % 2) for s in range(6)])
    per_seed = (np.log((27 + j) / (18 + j)) + np.log((36 + j) / (18 + j))) / 2
    every = a.claim("reach95.all")
    assert every.effect.estimate == pytest.approx(per_seed.mean()) and every.effect.n == 6


def test_widths_outside_the_trend_range_are_left_out():
    runs = make_runs()
    narrow = runs[runs["width"] == 64].assign(width=8, params=6_500, epochs_to_95=99.0)
    a = fitspeed.analyze(pd.concat([runs, narrow], ignore_index=True))
    assert a.facts["widest"] == 2048
    assert 8 not in set(a.tables["ratios"]["width"])


def test_runs_that_all_fail_to_fit_leave_every_claim_undecided():
    a = fitspeed.analyze(make_runs().assign(status="unfit"))
    assert all(c.verdict == "cannot tell" and c.effect.n == 0 for c in a.claims)
