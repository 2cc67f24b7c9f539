"""Label noise: does SAM's gain grow with width, and more so with noisier labels?
(Shin et al. Sec. 5, Fig. 5a; Foret et al.: SAM is robust to label noise)"""
from __future__ import annotations

import numpy as np
import pandas as pd

from samkit.analysis import fmt, stats
from samkit.analysis.claims import Analysis, Claim
from samkit.analysis.effects import SAM_RUNS, SGD_RUNS, effect_at, ensure_columns, paired_table
from samkit.analysis.regime import status_line

NAME = "noise"
TITLE = "Label noise: does SAM's gain grow with width, and more so with noisier labels?"
QUESTION = "Does label noise make SAM's gain over SGD grow faster with model size?"
PART, POSITION = "Overparameterization and SAM", 3  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "SAM − SGD test accuracy vs parameters, one colour per noise rate",
        "template": "pp_vs_log2",
        "table": "gain",
        "x": "params",
        "y": "estimate",
        "x_label": "parameters (log2 axis)",
        "y_label": "SAM − SGD test accuracy (pp)"}
METRIC = "best_test_acc"  # clean test labels, at the epoch of best (clean) validation accuracy
# Smallest effects worth having, as in the width study: a gain of 0.3 pp (the paper's smallest
# reported gains are 0.2-2 pp; 3 test images in 1,000) and a trend of 0.1 pp per doubling of
# the parameters (0.7 pp over a 128x wider model).
DELTA_GAIN, DELTA_SLOPE = 0.003, 0.001
SOURCE = "Shin et al. Sec. 5 (Fig. 5a)"
FIT = ("final_train_acc", "final_train_acc_clean", "final_test_acc")

# The page quotes the final training accuracy range, which regime() leaves out when no run
# finished: "n/a" unless regime() fills it in.
NO_FINISHED_RUN = {"final_train_acc_min": "n/a", "final_train_acc_max": "n/a"}


def analyze(runs: pd.DataFrame) -> Analysis:
    runs = ensure_columns(runs, (METRIC, *FIT))
    gain = paired_table(runs, METRIC, SAM_RUNS, SGD_RUNS, by=["label_noise", "width", "params"])
    levels = sorted(runs["label_noise"].unique())
    low, high, widest = levels[0], levels[-1], runs["width"].max()
    claims = []
    for p in levels:
        claims.append(Claim(
            f"grows_at_{p:g}",
            f"SAM's gain grows with the parameters at label noise {fmt.rate(p)}", SOURCE,
            stats.slope(runs[runs["label_noise"] == p], METRIC, SAM_RUNS, SGD_RUNS),
            DELTA_SLOPE, "0.1 pp per doubling: 0.7 pp over a 128x wider model",
            unit="pp/doubling"))
    amplified = (stats.mean_effect(_seed_gain(runs, high, widest)
                                   - _seed_gain(runs, low, widest))
                 if len(levels) > 1 else stats.NO_EFFECT)
    claims += [
        Claim("amplified", f"At the widest model (width {widest}) SAM's gain is larger at label "
              f"noise {fmt.rate(high)} than at {fmt.rate(low)}", SOURCE, amplified, DELTA_GAIN,
              "0.3 pp: the paper's smallest reported gains are 0.2-2 pp"),
        Claim("widest_at_max_noise", f"SAM beats SGD at the widest model (width {widest}) "
              f"under label noise {fmt.rate(high)}", f"{SOURCE}; Foret et al. (label noise)",
              effect_at(gain, label_noise=high, width=widest), DELTA_GAIN,
              "0.3 pp: the paper's smallest reported gains are 0.2-2 pp"),
    ]
    fit = _fit(runs)
    facts = {**NO_FINISHED_RUN, "status": status_line(runs),
             "noise_levels": ", ".join(fmt.rate(p) for p in levels),
             "lowest_noise": fmt.rate(low), "highest_noise": fmt.rate(high),
             "clean_label_share": fmt.rate(1 - high), "widest": int(widest),
             "grows_each": "; ".join(f"noise {fmt.rate(c_p)}: {c.shown} ({c.verdict})"
                                     for c_p, c in zip(levels, claims)),
             "grows_lowest": {"shown": claims[0].shown, "explained": claims[0].explained},
             "grows_highest": {"shown": claims[len(levels) - 1].shown,
                               "explained": claims[len(levels) - 1].explained},
             "slope_delta": claims[0].delta_shown,
             "memorization": _memorization(fit, high, widest)}
    return Analysis({"gain": gain, "fit": fit}, claims, facts)


def _seed_gain(runs: pd.DataFrame, noise: float, width) -> pd.Series:
    """SAM − SGD per seed in one (noise, width) cell; NaN where a side diverged."""
    cell = runs[(runs["label_noise"] == noise) & (runs["width"] == width)]
    p = stats.pairs(cell, METRIC, SAM_RUNS, SGD_RUNS)
    return p.set_index("seed")["diff"].groupby(level=0).first()


def _fit(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (noise, width, optimizer): mean over finished runs of the final training accuracy
    on the labels it was given (noisy), on the true labels, and the final (clean) test
    accuracy; finished and diverged run counts."""
    rows = []
    for (p, w, opt), g in runs.groupby(["label_noise", "width", "optimizer"], sort=True):
        ok = g[g["status"] == "ok"]
        rows.append({"label_noise": p, "width": w, "optimizer": opt,
                     **{c: float(ok[c].mean()) if len(ok) else np.nan for c in FIT},
                     "n": len(ok), "diverged": int((g["status"] != "ok").sum())})
    return pd.DataFrame(rows, columns=["label_noise", "width", "optimizer", *FIT, "n",
                                       "diverged"])


def _memorization(fit: pd.DataFrame, noise: float, width) -> dict:
    """Final train accuracy (on the noisy labels) and clean test accuracy per optimizer at
    (``noise``, ``width``), formatted for the prose."""
    out = {}
    for opt in ("sgd", "sam"):
        r = fit[(fit["label_noise"] == noise) & (fit["width"] == width)
                & (fit["optimizer"] == opt)]
        vals = r.iloc[0] if len(r) else {}
        out[f"{opt}_train_acc"] = fmt.pct(_num(vals, "final_train_acc"))
        out[f"{opt}_train_acc_clean"] = fmt.pct(_num(vals, "final_train_acc_clean"))
        out[f"{opt}_test_acc"] = fmt.pct(_num(vals, "final_test_acc"))
    return out


def _num(row, key):
    try:
        v = float(row[key])
    except (KeyError, TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None
