"""samkit.stats against scipy and analytic cases; the verdict rule on planted intervals."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from samkit import stats
from samkit.studies import Claim


def test_mean_effect_is_scipys_paired_t_interval():
    rng = np.random.default_rng(0)
    t, c = rng.normal(0.9, 0.01, 6), rng.normal(0.88, 0.01, 6)
    e = stats.mean_effect(t - c)
    ci = sps.ttest_rel(t, c).confidence_interval(0.95)
    assert e.estimate == pytest.approx(np.mean(t - c), abs=1e-15)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high), abs=1e-15)
    assert e.n == 6 and stats.mean_effect([0.1]).n == 1 and np.isnan(stats.mean_effect([]).low)


def test_slope_recovers_a_planted_trend_per_doubling():
    rows = []
    for seed in range(5):
        for params in (1000, 4000, 16000):
            gain = 0.002 * np.log2(params) + 0.001 * seed   # seed offsets cancel in the slope
            rows += [dict(seed=seed, params=params, optimizer="sgd", status="ok", acc=0.8),
                     dict(seed=seed, params=params, optimizer="sam", status="ok", acc=0.8 + gain)]
    e = stats.slope(pd.DataFrame(rows), "acc", {"optimizer": "sam"}, {"optimizer": "sgd"})
    assert e.estimate == pytest.approx(0.002, abs=1e-12) and e.n == 5


def test_diverged_pairs_leave_the_estimate():
    runs = pd.DataFrame([dict(seed=s, optimizer=o, status="ok" if (s, o) != (2, "sam")
                              else "diverged", acc=0.8 + (0.01 if o == "sam" else 0))
                         for s in range(4) for o in ("sgd", "sam")])
    t = stats.paired(runs, "acc", {"optimizer": "sam"}, {"optimizer": "sgd"})
    assert t["n"].iloc[0] == 3 and t["diverged"].iloc[0] == 1
    assert t["estimate"].iloc[0] == pytest.approx(0.01)


@pytest.mark.parametrize("low, high, direction, want", [
    (0.001, 0.01, 1, "supports"), (-0.01, -0.001, 1, "contradicts"),
    (-0.002, 0.002, 1, "contradicts"),       # inside ±δ: equivalence
    (-0.002, 0.02, 1, "cannot tell"), (-0.01, -0.001, -1, "supports"),
    (float("nan"), float("nan"), 1, "cannot tell")])
def test_verdict_rule(low, high, direction, want):
    e = stats.Effect((low + high) / 2, low, high, 6, 0.01)
    assert stats.verdict(e, 0.003, direction) == want


def test_seeds_needed_matches_the_t_quantile_rule():
    e = stats.Effect(0.01, -0.005, 0.025, 3, 0.01)
    n = stats.seeds_needed(e, 0.003)
    half = lambda k: sps.t.ppf(0.975, k - 1) * 0.01 / np.sqrt(k)   # noqa: E731
    assert half(n) < 0.01 <= half(n - 1)


def test_ratio_claims_read_against_one():
    c = Claim("x", "SAM is flatter", "paper", stats.Effect(np.log(0.5), np.log(0.4),
                                                           np.log(0.6), 6, 0.1),
              np.log(1.1), "10%", direction=-1, unit="ratio")
    assert c.verdict == "supports" and "below 1" in c.explained and c.shown.startswith("0.50×")


def test_levels_count_diverged_and_keep_empty_groups():
    runs = pd.DataFrame([dict(optimizer=o, width=w, seed=s, acc=0.8 + 0.01 * s,
                              status="diverged" if (o, w) == ("sam", 32) else "ok")
                         for o in ("sgd", "sam") for w in (8, 32) for s in range(3)])
    t = stats.levels(runs, ["optimizer", "width"], "acc").set_index(["optimizer", "width"])
    assert t.loc[("sam", 32), ["n", "diverged"]].tolist() == [0, 3]
    assert np.isnan(t.loc[("sam", 32), "estimate"])
    ci = sps.t.interval(0.95, 2, loc=0.81, scale=np.std([0.8, 0.81, 0.82], ddof=1) / np.sqrt(3))
    assert (t.loc[("sgd", 8), "low"], t.loc[("sgd", 8), "high"]) == pytest.approx(ci)
