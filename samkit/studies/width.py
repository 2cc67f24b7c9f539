"""Width: does SAM's gain over SGD grow with the number of parameters? (Shin et al., Sec. 3)"""
from __future__ import annotations

import pandas as pd

from samkit.analysis import sources, stats
from samkit.analysis.claims import Analysis, Claim, SourceEffect
from samkit.analysis.effects import SAM_RUNS, SGD_RUNS

NAME = "width"
TITLE = "Width: does SAM's gain grow with the number of parameters?"
QUESTION = "Does SAM's gain over SGD grow with model size?"
PART, POSITION = "Overparameterization and SAM", 1  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "SAM − SGD test accuracy vs parameters",
        "template": "pp_vs_log2",
        "table": "gain",
        "x": "params",
        "y": "estimate",
        "x_label": "parameters (log2 axis)",
        "y_label": "SAM − SGD test accuracy (pp)"}
METRIC = "best_test_acc"  # test accuracy at the epoch of best validation accuracy
# Smallest effects worth having. Gain: 0.3 pp, about the smallest gain the paper reports as
# meaningful (0.2-2 pp) and 3 test images in 1,000. Trend: 0.1 pp per doubling of the
# parameters, i.e. 0.7 pp over the 7 doublings of a 128x wider model.
DELTA_GAIN, DELTA_SLOPE = 0.003, 0.001


def analyze(runs: pd.DataFrame) -> Analysis:
    gain = stats.paired(runs, METRIC, SAM_RUNS, SGD_RUNS, by=["model", "width", "params"])
    claims, facts = [], {}
    for model, g in runs.groupby("model", sort=True):
        widest = g["width"].max()
        mlp = model == "mlp"
        claims += [
            Claim(f"{model}.grows", f"SAM's gain grows with the parameters ({model}, over the "
                  "paper's range of model sizes)",
                  "Shin et al. Sec. 3", stats.slope(g, METRIC, SAM_RUNS, SGD_RUNS), DELTA_SLOPE,
                  "0.1 pp per doubling: 0.7 pp over a 128x wider model", unit="pp/doubling",
                  source_effect=SourceEffect(sources.shin_mlp_slope(), sources.SHIN_MLP_WHERE)
                  if mlp else None),
            Claim(f"{model}.widest", f"SAM beats SGD at the widest {model} (width {widest})",
                  "Shin et al. Sec. 3", _effect_at(gain, model, widest), DELTA_GAIN,
                  "0.3 pp: the paper's smallest reported gains are 0.2-2 pp",
                  source_effect=SourceEffect(sources.shin_mlp_widest(),
                                             sources.SHIN_MLP_WHERE + ", at 5.4M")
                  if mlp else None),
        ]
        claims.append(_narrowest_fit(g, model))
    return Analysis({"gain": gain}, claims, facts)


def _narrowest_fit(g: pd.DataFrame, model: str) -> Claim:
    """Below the paper's range, does SAM fit its training set worse than SGD? (A claim of its
    own: a failure to fit is a finding, not noise; kept off `dvc exp show`.) Paired on the
    peak clean training accuracy of every finished run, those that fail the fit rule included
    (failing to fit is what this claim measures)."""
    narrowest = g["width"].min()
    at = g[g["width"] == narrowest].assign(
        status=lambda d: d["status"].replace("unfit", "ok"))
    effect = (stats.mean_effect(stats.pairs(at, "peak_train_acc_clean", SAM_RUNS, SGD_RUNS)
                                .query("ok")["diff"])
              if "peak_train_acc_clean" in at else stats.NO_EFFECT)
    return Claim(f"{model}.fit",
                 f"At the narrowest {model} (width {narrowest}) SAM fits the training set worse "
                 "than SGD (peak training accuracy on clean labels, SAM − SGD)",
                 "Shin et al. Sec. 3 (SAM gains little when underparameterized)", effect,
                 DELTA_GAIN, "0.3 pp, the smallest accuracy difference of interest throughout",
                 direction=-1, dvc_metric=False)


def _effect_at(gain: pd.DataFrame, model: str, width: int) -> stats.Effect:
    row = gain[(gain["model"] == model) & (gain["width"] == width)].iloc[0]
    return stats.Effect(row["estimate"], row["low"], row["high"], int(row["n"]), row["sd"])
