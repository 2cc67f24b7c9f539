"""The fitting-speed study: epochs-to-level read from histories, and its analysis on hand-built
run tables (planted delays, censored runs)."""
import math

import numpy as np
import pandas as pd
import pytest

from samkit import fit
from samkit.studies import fitspeed

PARAMS = {64: 55_000, 2048: 5_800_000}


def test_epochs_to_fit_is_the_first_evaluated_epoch_at_or_above_the_level():
    history = [{"epoch": e, "train_acc": a} for e, a in
               ((3, 0.90), (6, 0.949), (9, 0.95), (12, 0.97), (15, 0.991), (18, 0.989))]
    assert fit.epochs_to_fit({"history": history}) == {"epochs_to_95": 9.0, "epochs_to_99": 15.0}
    never = fit.epochs_to_fit({"history": history[:3]})
    assert never["epochs_to_95"] == 9.0 and math.isnan(never["epochs_to_99"])
    assert all(math.isnan(v) for v in fit.epochs_to_fit({"history": []}).values())


def make_runs(sgd95=18, sam95=27, sgd99=33, sam99=None, epochs=60) -> pd.DataFrame:
    """Two widths, 6 seeds; SAM's epochs are planted (None: never reached, NaN)."""
    rows = []
    for width, params in PARAMS.items():
        for seed in range(6):
            jitter = 3 * (seed % 2)   # the same in both arms: the ratio stays planted
            for opt, e95, e99 in (("sgd", sgd95, sgd99), ("sam", sam95, sam99)):
                rows.append({"model": "mlp", "width": width, "params": params,
                             "optimizer": opt, "seed": seed, "status": "ok", "epochs": epochs,
                             "eval_every": 3, "final_train_acc": 0.99,
                             "epochs_to_95": e95 + jitter,
                             "epochs_to_99": np.nan if e99 is None else e99 + jitter})
    return pd.DataFrame(rows)


def test_a_planted_delay_and_censored_runs_count_as_a_lower_bound():
    a = fitspeed.analyze(make_runs())
    widest = a.claim("reach95.widest")
    per_seed = [math.log((27 + 3 * (s % 2)) / (18 + 3 * (s % 2))) for s in range(6)]
    assert widest.effect.estimate == pytest.approx(np.mean(per_seed))
    assert widest.unit == "ratio" and widest.verdict == "supports" and widest.effect.n == 6
    # SAM never reaches 99%: it enters at epochs + 1 = 61, a lower bound on its delay.
    r99 = a.claim("reach99.widest")
    assert r99.effect.estimate == pytest.approx(
        np.mean([math.log(61 / (33 + 3 * (s % 2))) for s in range(6)]))
    ratios = a.tables["ratios"].set_index(["level", "width"])
    assert ratios.loc[(0.99, 2048), "sgd_alone_censored"] == 0
    epochs = a.tables["epochs"].set_index(["width", "optimizer"])
    assert epochs.loc[(2048, "sam"), "reached_99"] == 0
    assert epochs.loc[(2048, "sgd"), "reached_99"] == 6
    assert epochs.loc[(2048, "sgd"), "median_epochs_to_99"] == pytest.approx(34.5)
    every = a.claim("reach95.all")   # both widths planted alike: the same mean
    assert every.effect.estimate == pytest.approx(np.mean(per_seed)) and every.effect.n == 6


def test_equal_epochs_contradict_and_sgd_alone_censored_is_counted():
    a = fitspeed.analyze(make_runs(sam95=18, sgd99=None, sam99=40))
    assert a.claim("reach95.widest").verdict == "contradicts"   # a ratio of exactly 1
    ratios = a.tables["ratios"].set_index(["level", "width"])
    assert ratios.loc[(0.99, 2048), "sgd_alone_censored"] == 6


def test_widths_outside_the_trend_range_are_left_out():
    runs = make_runs()
    narrow = runs[runs["width"] == 64].assign(width=8, params=6_500, epochs_to_95=99.0)
    a = fitspeed.analyze(pd.concat([runs, narrow], ignore_index=True))
    assert a.facts["widest"] == 2048
    assert 8 not in set(a.tables["ratios"]["width"])


def test_runs_that_all_fail_to_fit_leave_every_claim_undecided():
    runs = make_runs().assign(status="unfit")
    a = fitspeed.analyze(runs)
    assert all(c.verdict == "cannot tell" and c.effect.n == 0 for c in a.claims)
    assert list(a.tables["ratios"]["sgd_alone_censored"]) == [0] * len(a.tables["ratios"])
