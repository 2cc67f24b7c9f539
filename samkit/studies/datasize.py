"""Data size: is overparameterization parameters relative to data? (beyond the paper)

Shin et al. vary the width at a fixed training set. If what matters for SAM is how
overparameterized the model is, the same gain should follow the number of parameters per
training example when the data change too. We train a few widths on training sets of several
sizes and read SAM − SGD (test accuracy at the epoch of best validation accuracy, seed-paired)
against params / n_train. The trend is the width study's rule with another x: per seed, the
least-squares slope of the gain on log2(params / n_train) pooled over all cells (gain per
doubling of the parameters per example), its mean and t-interval over seeds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from samkit.data import toy
from samkit.analysis import fmt, stats
from samkit.analysis.claims import Analysis, Claim
from samkit.analysis.effects import SAM_RUNS, SGD_RUNS, ensure_columns, paired_table
from samkit.analysis.regime import status_line

NAME = "datasize"
TITLE = "Data size: does SAM's gain follow the parameters per training example?"
QUESTION = "Does SAM's gain over SGD grow with the number of parameters per training example?"
PART, POSITION = "Overparameterization and SAM", 7  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "SAM − SGD test accuracy vs parameters per training example",
        "template": "pp_vs_log2",
        "table": "gain",
        "x": "params_per_example",
        "y": "estimate",
        "x_label": "parameters per training example (log2 axis)",
        "y_label": "SAM − SGD test accuracy (pp)"}
METRIC = "best_test_acc"  # test accuracy at the epoch of best validation accuracy
SOURCE = "beyond Shin et al. (Sec. 3 varies width at fixed data)"
# Training set sizes for n_train 0 ("the whole training set, less the validation split").
TRAIN_SIZE = {"fashion_mnist": 60_000, "mnist": 60_000, "cifar10": 50_000,
              "synthetic": toy.SYNTH_N_TRAIN}
# The width study's smallest effects: 0.3 pp for a gain, 0.1 pp per doubling for a trend.
DELTA_GAIN, DELTA_SLOPE = 0.003, 0.001
GAIN_REASON = "0.3 pp: the paper's smallest reported gains are 0.2-2 pp (the width study's δ)"
SLOPE_REASON = ("0.1 pp per doubling of the parameters per example: the width study's δ "
                "(0.7 pp over a 128x larger ratio)")
BY = ["n_train", "examples", "width", "params"]


def examples(runs: pd.DataFrame) -> pd.Series:
    """Training examples per run: n_train, or for n_train 0 the whole training set less the
    validation split."""
    n = runs["n_train"].astype(float)
    if (n > 0).all():
        return n
    full = runs["dataset"].map(TRAIN_SIZE).astype(float) - runs.get("n_val", 0)
    return n.where(n > 0, full)


def analyze(runs: pd.DataFrame) -> Analysis:
    runs = ensure_columns(runs, [METRIC])
    runs = runs.assign(examples=examples(runs))
    gain = paired_table(runs, METRIC, SAM_RUNS, SGD_RUNS, by=BY)
    gain.insert(len(BY), "params_per_example",
                gain["params"].astype(float) / gain["examples"].astype(float))
    most, least = _extreme(gain, max), _extreme(gain, min)
    claims = [
        Claim("grows_with_ratio", "SAM's gain grows with the number of parameters per "
              "training example (per seed, slope on log2(params / n_train) over all cells)",
              SOURCE, ratio_slope(runs), DELTA_SLOPE, SLOPE_REASON, unit="pp/doubling"),
        Claim("most_overparameterized", "SAM beats SGD at the most parameters per example ("
              + _cell(most) + ")", SOURCE, _effect(most), DELTA_GAIN, GAIN_REASON),
        Claim("least_overparameterized", "SAM beats SGD at the fewest parameters per example "
              "(" + _cell(least) + ")", SOURCE, _effect(least), DELTA_GAIN, GAIN_REASON),
    ]
    ppe = gain["params_per_example"]
    facts = {
        "status": status_line(runs),
        "widths": ", ".join(str(int(w)) for w in sorted(runs["width"].unique())),
        "most_cell": _cell(most), "least_cell": _cell(least),
        "ratio_min": fmt.num(float(ppe.min())) if len(ppe) else "n/a",
        "ratio_max": fmt.num(float(ppe.max())) if len(ppe) else "n/a",
        "final_train_acc_min": "n/a", "final_train_acc_max": "n/a",
    }
    return Analysis({"gain": gain}, claims, facts)


def ratio_slope(runs: pd.DataFrame) -> stats.Effect:
    """Per seed, the least-squares slope of SAM − SGD on log2(params / examples), pooled over
    every (n_train, width) cell the seed finished (>= 2 distinct ratios); mean and 95% CI
    over seeds."""
    p = stats.pairs(runs, METRIC, SAM_RUNS, SGD_RUNS, BY)
    p = p[p["ok"]]
    slopes = []
    for _, g in p.groupby("seed"):
        x = np.log2(g["params"].astype(float) / g["examples"].astype(float))
        if x.nunique() >= 2:
            slopes.append(float(np.polyfit(x, g["diff"].astype(float), 1)[0]))
    return stats.mean_effect(slopes)


def _extreme(gain: pd.DataFrame, pick):
    """The gain row at the largest (``max``) or smallest (``min``) parameters per example."""
    if gain.empty:
        return None
    ppe = gain["params_per_example"]
    return gain.loc[(ppe.idxmax() if pick is max else ppe.idxmin())]


def _effect(row) -> stats.Effect:
    if row is None:
        return stats.NO_EFFECT
    return stats.Effect(float(row["estimate"]), float(row["low"]), float(row["high"]),
                        int(row["n"]), float(row["sd"]))


def _cell(row) -> str:
    if row is None:
        return "no cell"
    return (f"width {int(row['width'])} on {int(row['examples']):,} training images, "
            f"{fmt.num(float(row['params_per_example']))} parameters per example")
