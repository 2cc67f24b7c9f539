"""Sparsity: do sparse wide models gain more from SAM than a dense small one of the same
nonzero size? (Shin et al. Sec. 5, Fig. 5b)"""
from __future__ import annotations

import pandas as pd

from samkit.analysis import fmt, stats
from samkit.analysis.claims import Analysis, Claim
from samkit.analysis.effects import (SAM_RUNS, SGD_RUNS, effect_at, ensure_columns,
                                     paired_table)
from samkit.analysis.regime import status_line

NAME = "sparsity"
TITLE = "Sparsity: do sparse wide models gain more from SAM than a dense small one?"
QUESTION = "At equal nonzero parameters, does a wider sparse model gain more from SAM?"
PART, POSITION = "Overparameterization and SAM", 4  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "SAM − SGD test accuracy vs width, dense and pruned",
        "template": "pp_vs_log2",
        "table": "gain",
        "x": "width",
        "y": "estimate",
        "x_label": "width (log2 axis)",
        "y_label": "SAM − SGD test accuracy (pp)"}
METRIC = "best_test_acc"  # test accuracy at the epoch of best validation accuracy
SOURCE = "Shin et al. Sec. 5 (Fig. 5b)"
# Smallest effect worth having: 0.3 pp, as in the width study (the paper's smallest reported
# gains are 0.2-2 pp; 3 test images in 1,000), for a gain and for a difference of gains.
DELTA_GAIN = 0.003
NAMES = {"none": "dense", "random": "random pruning", "snip": "SNIP"}

# The page quotes the final training accuracy range, which regime() leaves out when no run
# finished: "n/a" unless regime() fills it in.
NO_FINISHED_RUN = {"final_train_acc_min": "n/a", "final_train_acc_max": "n/a"}


def analyze(runs: pd.DataFrame) -> Analysis:
    runs = ensure_columns(runs, (METRIC,))
    gain = paired_table(runs, METRIC, SAM_RUNS, SGD_RUNS, by=["prune", "width", "params"])
    gain = gain.merge(_nonzero(runs), on=["prune", "width"], how="left")
    dense = runs[runs["prune"] == "none"]
    dense_width = dense["width"].max() if len(dense) else None
    dense_gain = _seed_gain(dense[dense["width"] == dense_width])
    # no sparse run yet (a partial run cache): the paper's two methods, with no effect
    methods = sorted(runs.loc[runs["prune"] != "none", "prune"].unique()) or ["random", "snip"]
    claims, widest = [], {}
    for m in methods:
        ws = runs.loc[runs["prune"] == m, "width"]
        w = widest[m] = int(ws.max()) if len(ws) else None
        sparse_gain = _seed_gain(runs[(runs["prune"] == m) & (runs["width"] == w)])
        name = NAMES.get(m, m)
        claims += [
            Claim(f"{m}.beats_dense", f"The widest sparse model ({name}, width {w}) gains more "
                  f"from SAM than the dense one (width {dense_width}) of the same nonzero size",
                  SOURCE, stats.mean_effect(sparse_gain - dense_gain), DELTA_GAIN,
                  "0.3 pp: the paper's smallest reported gains are 0.2-2 pp"),
            Claim(f"{m}.gain_widest", f"SAM beats SGD on the widest sparse model ({name}, "
                  f"width {w})", SOURCE, effect_at(gain, prune=m, width=w), DELTA_GAIN,
                  "0.3 pp: the paper's smallest reported gains are 0.2-2 pp"),
        ]
    ok = runs[runs["status"] == "ok"]
    facts = {**NO_FINISHED_RUN, "status": status_line(runs),
             "dense_width": "n/a" if dense_width is None else int(dense_width),
             "dense_gain": _shown(effect_at(gain, prune="none", width=dense_width)),
             "sparse_widths": ", ".join(str(int(w)) for w in sorted(
                 runs.loc[runs["prune"] != "none", "width"].unique())) or "n/a",
             "widest": {m: "n/a" if w is None else w for m, w in widest.items()},
             "nonzero_min": f"{int(ok['nonzero_params'].min()):,}" if len(ok) else "n/a",
             "nonzero_max": f"{int(ok['nonzero_params'].max()):,}" if len(ok) else "n/a"}
    return Analysis({"gain": gain}, claims, facts)


def _seed_gain(cell: pd.DataFrame) -> pd.Series:
    """SAM − SGD per seed in one model variant; NaN where a side diverged."""
    p = stats.pairs(cell, METRIC, SAM_RUNS, SGD_RUNS)
    return p.set_index("seed")["diff"].groupby(level=0).first()


def _nonzero(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean nonzero parameter count per variant (over its runs; pruning masks are per seed)."""
    return (runs.groupby(["prune", "width"], sort=True)["nonzero_params"].mean().round()
            .rename("nonzero_params").reset_index())


def _shown(e: stats.Effect) -> str:
    return fmt.pp(e.estimate, e.low, e.high)
