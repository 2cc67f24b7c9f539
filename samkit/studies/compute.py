"""Equal compute: does SAM still win when SGD gets twice the epochs, and what does SAM cost?
(Shin et al. App. E.4, Fig. 19; Foret et al.: a SAM step costs two gradient evaluations)"""
from __future__ import annotations

import pandas as pd

from samkit.analysis import fmt, stats
from samkit.analysis.claims import Analysis, Claim
from samkit.analysis.effects import effect_at, ensure_columns, paired_table
from samkit.analysis.regime import status_line

NAME = "compute"
TITLE = "Equal compute: does SAM still win when SGD gets twice the epochs?"
QUESTION = "Does SAM beat SGD trained for twice the epochs, and what does SAM cost?"
PART, POSITION = "Overparameterization and SAM", 5  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "paired differences vs parameters (SAM 1x − SGD 2x and the others)",
        "template": "pp_vs_log2",
        "table": "gains",
        "x": "params",
        "y": "estimate",
        "x_label": "parameters (log2 axis)",
        "y_label": "difference in test accuracy (pp)"}
SAM_1X, SGD_1X, SGD_2X = {"tag": "SAM 1x"}, {"tag": "SGD 1x"}, {"tag": "SGD 2x"}
METRIC = "best_test_acc"  # test accuracy at the epoch of best validation accuracy
TIME = "train_seconds"    # training only: no data loading, evaluation or checkpoints
SOURCE = "Shin et al. App. E.4 (Fig. 19)"
# Smallest effects worth having, as in the width study: 0.3 pp for a difference of accuracies
# (the paper's smallest reported gains are 0.2-2 pp) and 0.1 pp per doubling of the parameters
# for a trend (0.7 pp over a 128x wider model).
DELTA_GAIN, DELTA_SLOPE = 0.003, 0.001
BY = ["width", "params"]
COMPARISONS = {"SAM 1x − SGD 2x": (SAM_1X, SGD_2X), "SAM 1x − SGD 1x": (SAM_1X, SGD_1X),
               "SGD 2x − SGD 1x": (SGD_2X, SGD_1X)}

# The page quotes the final training accuracy range, which regime() leaves out when no run
# finished: "n/a" unless regime() fills it in.
NO_FINISHED_RUN = {"final_train_acc_min": "n/a", "final_train_acc_max": "n/a"}


def analyze(runs: pd.DataFrame) -> Analysis:
    runs = ensure_columns(runs, (METRIC, TIME))
    gains = pd.concat([paired_table(runs, METRIC, t, c, BY).assign(comparison=name)
                       for name, (t, c) in COMPARISONS.items()], ignore_index=True)
    gains = gains[["comparison", *[c for c in gains.columns if c != "comparison"]]]
    vs_2x = gains[gains["comparison"] == "SAM 1x − SGD 2x"]
    sgd_2x = gains[gains["comparison"] == "SGD 2x − SGD 1x"]
    time = pd.concat([paired_table(runs, TIME, SAM_1X, c, BY, log=True).assign(baseline=name)
                      for name, c in (("SGD 1x", SGD_1X), ("SGD 2x", SGD_2X))],
                     ignore_index=True)
    widest = runs["width"].max()
    claims = [
        Claim("widest_vs_2x", f"At the widest model (width {widest}) SAM beats SGD trained for "
              "twice the epochs (equal gradient evaluations)", SOURCE,
              effect_at(vs_2x, width=widest), DELTA_GAIN,
              "0.3 pp: the paper's smallest reported gains are 0.2-2 pp"),
        Claim("grows_vs_2x", "SAM's gain over SGD with twice the epochs grows with the "
              "parameters", SOURCE, stats.slope(runs, METRIC, SAM_1X, SGD_2X), DELTA_SLOPE,
              "0.1 pp per doubling: 0.7 pp over a 128x wider model", unit="pp/doubling"),
        Claim("sgd_2x_helps", f"Twice the epochs improve SGD at the widest model (width "
              f"{widest}); a fact about the baseline, not about SAM", SOURCE,
              effect_at(sgd_2x, width=widest), DELTA_GAIN,
              "0.3 pp, the smallest accuracy difference of interest throughout"),
    ]
    cost_1x = effect_at(time[time["baseline"] == "SGD 1x"], width=widest)
    cost_2x = effect_at(time[time["baseline"] == "SGD 2x"], width=widest)
    vs_1x = effect_at(gains[gains["comparison"] == "SAM 1x − SGD 1x"], width=widest)
    facts = {**NO_FINISHED_RUN, "status": status_line(runs), "widest": int(widest),
             "arm_epochs": {k: _epochs(runs, tag) for k, tag in
                            (("sam_1x", SAM_1X), ("sgd_1x", SGD_1X), ("sgd_2x", SGD_2X))},
             "sam_vs_sgd_1x_widest": fmt.pp(vs_1x.estimate, vs_1x.low, vs_1x.high),
             "cost_widest": fmt.ratio(cost_1x.estimate, cost_1x.low, cost_1x.high),
             "cost_widest_vs_2x": fmt.ratio(cost_2x.estimate, cost_2x.low, cost_2x.high)}
    facts["time_ratio_widest"] = facts["cost_widest"]  # the name the front page reads
    facts["grad_evals_ratio"] = _grad_evals_ratio(runs)
    return Analysis({"gains": gains, "time": time}, claims, facts)


def _grad_evals_ratio(runs: pd.DataFrame) -> str:
    """SAM 1x's gradient evaluations over SGD 1x's (exact counts, the same for every seed)."""
    if "grad_evals" not in runs:
        return "n/a"
    sam = runs.loc[(runs["tag"] == SAM_1X["tag"]) & (runs["status"] == "ok"), "grad_evals"]
    sgd = runs.loc[(runs["tag"] == SGD_1X["tag"]) & (runs["status"] == "ok"), "grad_evals"]
    if sam.empty or sgd.empty:
        return "n/a"
    return f"{sam.mean() / sgd.mean():.2f}×"


def _epochs(runs: pd.DataFrame, where: dict) -> str:
    e = runs.loc[runs["tag"] == where["tag"], "epochs"]
    return ", ".join(str(int(x)) for x in sorted(e.unique())) or "n/a"
