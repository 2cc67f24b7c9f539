"""The fit rule: a run that fails to fit its training set is kept, counted and shown, but left
out of paired gains, like a diverged run.

The rule is fixed on training accuracy alone, before any gain is looked at. A run fails to fit
when either holds:

- **underfit**: its peak accuracy on the *clean* training labels stays below
  ``MIN_PEAK_TRAIN_ACC``. 80% is below what a linear classifier reaches on Fashion-MNIST's
  training images (~87%), so a run under it has not fit even the linear part of the data.
  The clean labels are used so that label noise, which no model should fit early, does not
  count against a run (a noisy-label run fits the clean signal first, then memorises);
- **late collapse**: its final accuracy on the labels it trains on lies more than
  ``MAX_LATE_DROP`` below its peak: training fell apart after it had fit.

Runs without a training accuracy (regression, e.g. the 1-D simplicity study) are not judged.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

MIN_PEAK_TRAIN_ACC = 0.80
MAX_LATE_DROP = 0.10
RULE = (f"a run fails to fit when its peak training accuracy on the clean labels stays below "
        f"{100 * MIN_PEAK_TRAIN_ACC:.0f}%, or its final training accuracy falls more than "
        f"{100 * MAX_LATE_DROP:.0f} pp below its peak")


def peaks(result: dict) -> dict:
    """The peak training accuracies of a stored result over its evaluated epochs (and its
    last): on the labels trained on, and on the clean labels."""
    epochs = [*(result.get("history") or []), result.get("final") or {}]
    def peak(key):
        values = [e[key] for e in epochs if e.get(key) is not None]
        return max(values) if values else float("nan")
    clean = peak("train_acc_clean")
    return {"peak_train_acc": peak("train_acc"),
            "peak_train_acc_clean": clean if np.isfinite(clean) else peak("train_acc")}


# Training accuracies whose first epoch the fitting-speed study compares (the blog: SAM reaches
# "near-perfect" training accuracy later).
FIT_LEVELS = (0.95, 0.99)


def epochs_to_fit(result: dict) -> dict:
    """The first evaluated epoch at which a stored result's training accuracy (on the labels it
    trains on) reaches each of ``FIT_LEVELS``, as ``epochs_to_95`` etc.; NaN where it never
    does (censored: the run ended first) or was not evaluated. Coarse by ``eval_every``."""
    out = {}
    for level in FIT_LEVELS:
        reached = [e["epoch"] for e in result.get("history") or []
                   if e.get("train_acc") is not None and e["train_acc"] >= level]
        out[f"epochs_to_{round(100 * level)}"] = float(min(reached)) if reached else float("nan")
    return out


def reason(row) -> str | None:
    """Why a finished run fails to fit ("underfit" or "collapsed"), or None."""
    if row.get("status") != "ok":
        return None
    peak_clean, peak = row.get("peak_train_acc_clean"), row.get("peak_train_acc")
    final = row.get("final_train_acc")
    if peak_clean is None or not np.isfinite(peak_clean):
        return None
    if peak_clean < MIN_PEAK_TRAIN_ACC:
        return "underfit"
    if final is not None and np.isfinite(final) and peak - final > MAX_LATE_DROP:
        return "collapsed"
    return None


def mark(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with ``status`` "unfit" where the rule fails a finished run and its cause in
    ``fit``. Every pairing and level then leaves it out, as it does a diverged run."""
    runs = runs.copy()
    if "peak_train_acc_clean" not in runs:
        runs["fit"] = None
        return runs
    why = [reason(r) for r in runs.to_dict("records")]
    runs["fit"] = why
    runs.loc[[w is not None for w in why], "status"] = "unfit"
    return runs
