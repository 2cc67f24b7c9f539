"""samkit.analysis.stats against scipy and analytic cases; the verdict rule on planted intervals."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from samkit.analysis import stats


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
    (-0.002, 0.002, 1, "contradicts"),       # inside ±δ around 0: equivalence
    (0.0005, 0.002, 1, "below δ"),           # excludes 0, but wholly inside ±δ
    (-0.002, -0.0005, -1, "below δ"),        # the same, claimed negative
    (-0.002, -0.0005, 1, "contradicts"),     # inside ±δ on the wrong side of 0
    (0.002, 0.004, 1, "supports"),           # excludes 0, reaches beyond δ
    (-0.002, 0.02, 1, "cannot tell"), (-0.01, -0.001, -1, "supports"),
    (float("nan"), float("nan"), 1, "cannot tell")])
def test_verdict_rule(low, high, direction, want):
    e = stats.Effect((low + high) / 2, low, high, 6, 0.01)
    assert stats.verdict(e, 0.003, direction) == want


def test_seeds_needed_is_the_noncentral_t_power_for_delta():
    """80% power to detect δ at the measured spread, checked against the noncentral t
    distribution itself (scipy), not the statsmodels call the code makes."""
    e = stats.Effect(0.01, -0.005, 0.025, 3, 0.01)
    n = stats.seeds_needed(e, 0.003)
    def power(k):
        nc, crit = 0.003 / (0.01 / np.sqrt(k)), sps.t.ppf(0.975, k - 1)
        return sps.nct.sf(crit, k - 1, nc) + sps.nct.cdf(-crit, k - 1, nc)
    assert power(n) >= 0.8 > power(n - 1)


@pytest.mark.parametrize("low, high", [(0.001, 0.01), (0.0005, 0.002), (-0.002, 0.002),
                                       (-0.002, 0.02)])
def test_decision_p_is_below_alpha_exactly_when_the_ci_decides(low, high):
    n, est = 6, (low + high) / 2
    se = (high - low) / 2 / sps.t.ppf(0.975, n - 1)
    e = stats.Effect(est, low, high, n, se * np.sqrt(n))
    decided = stats.verdict(e, 0.003) != "cannot tell"
    assert (stats.decision_p(e, 0.003) < 0.05) == decided


def test_benjamini_hochberg_against_the_step_up_rule_by_hand():
    p = [0.001, 0.01, 0.035, 0.045, 0.2, float("nan")]
    # m = 5 finite p-values: the largest k with p_(k) <= k/5 * 0.05 is k = 2.
    assert stats.adjusted(p).tolist() == [True, True, False, False, False, False]


def test_trend_uses_the_sources_range_only():
    """An MLP below the paper's range (width 8: 6.5k parameters) does not enter the slope."""
    rows = []
    for seed in range(4):
        for params, gain in ((6_500, -0.2), (55_000, 0.0), (220_000, 0.002)):
            rows += [dict(seed=seed, model="mlp", params=params, optimizer=o, status="ok",
                          acc=0.8 + (gain if o == "sam" else 0)) for o in ("sgd", "sam")]
    e = stats.slope(pd.DataFrame(rows), "acc", {"optimizer": "sam"}, {"optimizer": "sgd"})
    assert e.estimate == pytest.approx(0.001, abs=1e-12)   # 0.002 over 2 doublings


def test_levels_count_diverged_and_keep_empty_groups():
    runs = pd.DataFrame([dict(optimizer=o, width=w, seed=s, acc=0.8 + 0.01 * s,
                              status="diverged" if (o, w) == ("sam", 32) else "ok")
                         for o in ("sgd", "sam") for w in (8, 32) for s in range(3)])
    t = stats.levels(runs, ["optimizer", "width"], "acc").set_index(["optimizer", "width"])
    assert t.loc[("sam", 32), ["n", "diverged"]].tolist() == [0, 3]
    assert np.isnan(t.loc[("sam", 32), "estimate"])
    ci = sps.t.interval(0.95, 2, loc=0.81, scale=np.std([0.8, 0.81, 0.82], ddof=1) / np.sqrt(3))
    assert (t.loc[("sgd", 8), "low"], t.loc[("sgd", 8), "high"]) == pytest.approx(ci)
