"""The verdict helpers behind every sentence of the book, against references: exact resampling
distributions, scipy's t intervals, analytic piecewise-linear functions."""
import itertools
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from samkit import findings, sweep


def rho_runs(acc: dict, diverged=()):
    """A tidy SAM run table from {(width, rho): [acc per seed]}."""
    rows = []
    for (width, rho), values in acc.items():
        for seed, a in enumerate(values):
            bad = (width, rho, seed) in diverged
            rows.append({"width": width, "params": 100 * width, "rho": rho, "seed": seed,
                         "status": "diverged" if bad else "ok",
                         "best_test_acc": np.nan if bad else a})
    return pd.DataFrame(rows)


NOISY = {(32, 0.01): [0.80, 0.70, 0.75], (32, 0.05): [0.78, 0.74, 0.73],
         (32, 0.2): [0.60, 0.79, 0.76], (128, 0.01): [0.81, 0.79, 0.70],
         (128, 0.05): [0.70, 0.83, 0.74], (128, 0.2): [0.76, 0.72, 0.78]}


def exact_argmax_distribution(runs, width):
    """Enumerate every ordered resample of the seeds: the exact bootstrap law of the argmax."""
    g = runs[runs["width"] == width].pivot(index="rho", columns="seed", values="best_test_acc")
    acc = np.nan_to_num(g.to_numpy(), nan=-np.inf)
    seeds = range(acc.shape[1])
    picks = [g.index[np.argmax(acc[:, list(s)].mean(1))]
             for s in itertools.product(seeds, repeat=len(seeds))]
    return pd.Series(picks).value_counts(normalize=True)


@pytest.mark.parametrize("diverged", [(), ((128, 0.05, 1),)])
def test_bootstrap_argmax_matches_exact_resampling(diverged):
    runs = rho_runs(NOISY, diverged)
    boot = findings.bootstrap_argmax(runs, "width", "rho", "best_test_acc", n_boot=40000)
    for width in (32, 128):
        exact = exact_argmax_distribution(runs, width)
        got = boot[boot["width"] == width]["rho"].value_counts(normalize=True)
        got = got.reindex(exact.index, fill_value=0.0)
        assert np.allclose(got, exact, atol=0.01), (width, got, exact)
    if diverged:  # the diverged cell wins no resample that contains its seed
        picked = boot[(boot["width"] == 128) & (boot["rho"] == 0.05)]
        assert len(picked) / 40000 <= (2 / 3) ** 3 + 0.01


def test_diverged_cells_cannot_be_best_in_the_point_estimate_or_the_resamples():
    # width 128: rho=0.2 has the best mean over its finished runs, but 3 of 5 seeds diverged
    acc = {(32, 0.01): [0.9] * 5, (32, 0.2): [0.8] * 5,
           (128, 0.01): [0.80, 0.81, 0.79, 0.80, 0.80], (128, 0.2): [0.95] * 5,
           (512, 0.01): [0.7] * 5, (512, 0.2): [0.7] * 5}
    diverged = {(128, 0.2, s) for s in (0, 1, 2)} | {(512, r, s) for r in (0.01, 0.2)
                                                     for s in range(5)}
    runs = rho_runs(acc, diverged)
    best = findings.argmax_by(sweep.summarize(runs, ["width", "params", "rho"],
                                              "best_test_acc"), "width", "rho")
    assert dict(zip(best["width"], best["rho"])) == {32: 0.01, 128: 0.01}  # 512: all diverged
    boot = findings.bootstrap_argmax(runs, "width", "rho", "best_test_acc")
    assert 512 not in set(boot["width"])  # nothing to pick, rather than a made-up rho
    share = boot[boot["width"] == 128]["rho"].value_counts(normalize=True)
    assert share[0.2] == pytest.approx((2 / 5) ** 5, abs=0.01)  # only resamples of seeds 3, 4
    trend = findings.argmax_trend(best, boot, "width", "params", "rho")
    assert trend["each"].startswith("32: 0.01 [0.01–0.01] · 128: 0.01 [0.01–0.01]")
    assert trend["verdict"] == "does not clearly support"


def test_bootstrap_range_stays_on_the_grid():
    boot = pd.DataFrame({"width": 8, "boot": range(2000), "rho": [0.01] * 50 + [0.05] * 1950})
    best = pd.DataFrame({"width": [8], "params": [800], "rho": [0.05]})
    assert findings.argmax_trend(pd.concat([best, best.assign(width=16, params=1600)]),
                                 pd.concat([boot, boot.assign(width=16)]), "width", "params",
                                 "rho")["each"].startswith("8: 0.05 [0.01–0.05]")


def test_duplicate_runs_are_refused_not_silently_dropped():
    runs = rho_runs(NOISY)
    with pytest.raises(ValueError):
        findings.bootstrap_argmax(pd.concat([runs, runs.iloc[:1]]), "width", "rho",
                                  "best_test_acc")


def test_argmax_trend_verdicts():
    clear_growth = {(32, 0.01): [0.9, 0.9, 0.9], (32, 0.2): [0.8, 0.8, 0.8],
                    (128, 0.01): [0.8, 0.81, 0.79], (128, 0.2): [0.9, 0.91, 0.89]}
    clear_fall = {(32, 0.01): clear_growth[128, 0.01], (32, 0.2): clear_growth[128, 0.2],
                  (128, 0.01): clear_growth[32, 0.01], (128, 0.2): clear_growth[32, 0.2]}

    def verdict(acc):
        runs = rho_runs(acc)
        best = findings.argmax_by(sweep.summarize(runs, ["width", "params", "rho"],
                                                  "best_test_acc"), "width", "rho")
        boot = findings.bootstrap_argmax(runs, "width", "rho", "best_test_acc")
        return findings.argmax_trend(best, boot, "width", "params", "rho")

    up = verdict(clear_growth)
    assert up["verdict"] == "supports" and up["p_grows"] == "100.00%"
    assert up["each"] == "32: 0.01 [0.01–0.01] · 128: 0.2 [0.2–0.2]"
    assert verdict(clear_fall)["verdict"] == "contradicts"
    noisy = verdict(NOISY)
    assert noisy["verdict"] == "does not clearly support"
    assert "[0.01–0.2]" in noisy["each"]  # the resamples disagree on ρ*


@pytest.mark.parametrize("mean, ci, expect, verdict", [
    (0.02, 0.01, "positive", "supports"), (-0.02, 0.01, "positive", "contradicts"),
    (0.005, 0.01, "positive", "does not clearly support"), (0.02, np.nan, "positive",
                                                            "cannot test"),
    (-0.02, 0.01, "negative", "supports")])
def test_claim(mean, ci, expect, verdict):
    assert findings.claim(mean, ci, expect) == verdict


def test_trend_needs_a_monotone_rise_and_a_significant_last_point():
    t = pd.DataFrame({"params": [1e3, 1e4, 1e5], "gain": [0.0, 0.01, 0.03],
                      "ci95": [0.01, 0.01, 0.01]})
    assert findings.trend(t, "params")["verdict"] == "supports"
    assert findings.trend(t.assign(ci95=[0.01, 0.01, 0.05]), "params")["verdict"] == \
        "does not clearly support"  # the largest model's gain is not distinguishable from 0
    assert findings.trend(t.assign(gain=-t["gain"]), "params")["verdict"] == "contradicts"


def test_paired_log_ratio_matches_scipy():
    rng = np.random.default_rng(0)
    sgd = rng.uniform(1, 2, 5)
    sam = sgd * rng.uniform(1.8, 2.2, 5)
    runs = pd.DataFrame({"optimizer": ["sgd"] * 5 + ["sam"] * 5, "seed": list(range(5)) * 2,
                         "width": 8, "status": "ok", "train_seconds": [*sgd, *sam]})
    got = findings.paired_log_ratio(runs, ["width"], "train_seconds").iloc[0]
    d = np.log(sam / sgd)
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert got["ratio"] == pytest.approx(np.exp(d.mean()))
    assert (got["ratio_lo"], got["ratio_hi"]) == pytest.approx((np.exp(lo), np.exp(hi)))


def test_ratio_format():
    assert findings.ratio(np.log(2), np.log(2)) == "2.00× (95% CI 1.00–4.00)"


def test_function_complexity_on_analytic_curves():
    x = np.linspace(-1, 1, 2001)
    assert findings.linear_pieces(x, 3 * x + 1) == 1
    assert findings.slope_variation(x, 3 * x + 1) == pytest.approx(0, abs=1e-9)
    assert findings.linear_pieces(x, np.abs(x)) == 2
    assert findings.slope_variation(x, np.abs(x)) == pytest.approx(2)  # slope -1 -> +1
    # kinks between grid points, slopes 0 -> 2 -> -1: 3 pieces, total variation 2 + 3
    hat = np.minimum(np.maximum(2 * (x - 0.1234), 0), 1 - (x - 0.5555))
    assert findings.linear_pieces(x, hat) == 3
    assert findings.slope_variation(x, hat) == pytest.approx(5)


def test_dvc_metrics_carry_numbers_and_verdicts_not_prose(tmp_path):
    from samkit import results
    gain = pd.DataFrame({"params": [10, 100], "gain": [0.01, 0.03], "ci95": [0.005, 0.01]})
    log_ratio = pd.DataFrame({"params": [100], "gain": [np.log(0.5)], "ci95": [0.1]})
    metrics = {"widest": findings.row_claim(findings.at_max(gain, "params")),
               "trend": findings.trend(gain, "params"),
               "ratio": findings.row_claim(log_ratio, expect="negative", fmt=findings.ratio)}
    runs = pd.DataFrame({"seed": [0], "status": ["ok"], "seconds": [2.0], "cached": [True]})
    results.save("study", "cpu", runs, {}, params={}, seconds=1.0, metrics=metrics,
                 root=str(tmp_path))
    with open(tmp_path / "cpu" / "dvc_metrics" / "study.json") as f:
        flat = json.load(f)
    assert flat["widest.value_estimate"] == 0.03 and flat["widest.value_ci95"] == 0.01
    assert flat["widest.verdict"] == "supports" and flat["trend.verdict"] == "supports"
    assert flat["trend.last_estimate"] == 0.03
    assert flat["ratio.value_estimate"] == pytest.approx(0.5)  # a ratio, not its log
    assert "widest.value" not in flat  # the formatted '+3.00 pp (95% CI ±1.00)' stays in prose
    assert flat["run_minutes"] == round(2.0 / 60, 2) and flat["n_runs"] == 1


@pytest.mark.parametrize("regularized, ablations, verdict", [
    ("supports", ["does not clearly support", "contradicts"], "supports"),
    ("supports", ["supports", "does not clearly support"], "contradicts"),
    ("does not clearly support", ["supports", "supports"], "cannot test")])
def test_needs_regularization(regularized, ablations, verdict):
    got = findings.needs_regularization({"verdict": regularized},
                                        [{"verdict": v} for v in ablations])
    assert got == {"verdict": verdict}
