"""SAM fits later: how many epochs SAM and SGD take to reach 95% and 99% training accuracy.

The blog: "SAM trains slower: training accuracy reaches near-perfect levels later". Measured on
the width study's MLP runs (the same configs: nothing is trained for this study) from each run's
stored history (``samkit.measure.fit.epochs_to_fit``: the first evaluated epoch at or above the level).
Training accuracy is evaluated every k epochs, so a run first seen at the level at epoch e
crossed it somewhere in [e − k + 1, e]; a run that never reaches it crossed after its last epoch
E, if ever: [E + 1, ∞). Per seed and width the comparison is log(SAM epochs / SGD epochs), and
its 95% CI is built from the least favourable ends of those intervals on each side (low: SAM's
earliest over SGD's latest; high: SAM's latest over SGD's earliest, infinite when SAM's run is
censored). So neither the evaluation grid nor censoring can make the ratio look decided: two
runs seen at the same evaluation, or both censored, leave the CI wide enough to say "cannot
tell", never "no difference". The point estimate uses e for a run that reached the level and
E + 1 for one that did not.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from samkit.analysis import fmt, stats
from samkit.measure.fit import FIT_LEVELS
from samkit.analysis.effects import SAM_RUNS, SGD_RUNS, ensure_columns
from samkit.analysis.claims import Analysis, Claim
from samkit.analysis.regime import status_line

NAME = "fitspeed"
TITLE = "SAM fits later: epochs to reach a training accuracy"
QUESTION = "Does SAM take more epochs than SGD to fit its training set?"
PART, POSITION = "Sources' other claims", 4  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "SAM/SGD epochs to reach 95% and 99% training accuracy vs width",
        "template": "ratio_vs_log2",
        "table": "ratios",
        "x": "width",
        "y": "estimate",
        "x_label": "width (log2 axis)",
        "y_label": "SAM / SGD epochs (log2 axis)"}
SOURCE = "the blog (seed 000): SAM's training accuracy reaches near-perfect levels later"
DELTA = math.log(1.1)   # ×1.1: the book's δ for a ratio
DELTA_REASON = "×1.1, the book's δ for a ratio (10% more epochs)"
COLUMNS = {level: f"epochs_to_{round(100 * level)}" for level in FIT_LEVELS}


def analyze(runs: pd.DataFrame) -> Analysis:
    runs = intervals(ensure_columns(runs, [*COLUMNS.values(), "eval_every"]))
    in_range = stats.in_trend_range(runs)
    widths = sorted(in_range["width"].unique()) if len(in_range) else []
    ratios = pd.DataFrame([{"measure": f"epochs to {fmt.rate(level)}", "level": level,
                            "width": int(w),
                            **interval_effect(in_range[in_range["width"] == w], col).as_dict(),
                            **censoring(in_range[in_range["width"] == w], col)}
                           for level, col in COLUMNS.items() for w in widths],
                          columns=["measure", "level", "width", "estimate", "low", "high", "n",
                                   "sd",
                                   "sam_censored", "sgd_censored", "both_censored"])
    widest = int(widths[-1]) if widths else 0
    at_widest = in_range[in_range["width"] == widest]
    claims = [Claim(f"reach{round(100 * level)}.widest",
                    f"SAM takes more epochs than SGD to reach {fmt.rate(level)} training "
                    f"accuracy (widest model, width {widest})", SOURCE,
                    interval_effect(at_widest, col), DELTA, DELTA_REASON, unit="ratio",
                    dvc_metric=level == FIT_LEVELS[-1])
              for level, col in COLUMNS.items()]
    level = FIT_LEVELS[0]
    claims.append(Claim(f"reach{round(100 * level)}.all",
                        f"SAM takes more epochs than SGD to reach {fmt.rate(level)} training "
                        "accuracy, across widths (per seed, the mean over widths of the log "
                        "ratio)", SOURCE, interval_effect(in_range, COLUMNS[level], "width"),
                        DELTA, DELTA_REASON, unit="ratio", dvc_metric=False))
    return Analysis({"epochs": epochs_table(runs), "ratios": ratios}, claims,
                    {"status": status_line(runs), "widest": widest,
                     "eval_every": ", ".join(str(int(e)) for e in
                                             sorted(runs["eval_every"].dropna().unique()))})


def intervals(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with, per level column, where each finished run crossed the level:
    ``<column>_lo``/``_hi`` (see the module doc), its point value (e, or E + 1 when censored)
    in ``<column>`` and a ``<column>_censored`` flag (1.0 / 0.0)."""
    runs = runs.copy()
    done = runs["status"] == "ok"
    k = runs["eval_every"].fillna(1).clip(lower=1)
    for col in COLUMNS.values():
        censored = done & runs[col].isna()
        runs[f"{col}_censored"] = censored.astype(float)
        runs.loc[censored, col] = runs.loc[censored, "epochs"] + 1
        runs[f"{col}_lo"] = np.where(censored, runs[col], np.maximum(runs[col] - k + 1, 1))
        runs[f"{col}_hi"] = np.where(censored, np.inf, runs[col])
    return runs


def _seed_logs(runs: pd.DataFrame, column: str, by: str | None) -> pd.DataFrame:
    """Per seed (averaged over ``by`` when given): the log ratio's point value and its least
    and most favourable bounds, from the pairs where both sides finished and fit."""
    keys = ["seed"] + ([by] if by else [])
    cols = [column, f"{column}_lo", f"{column}_hi"]
    sides = runs[runs["status"] == "ok"]
    t = sides[sides["optimizer"] == SAM_RUNS["optimizer"]].set_index(keys)[cols]
    c = sides[sides["optimizer"] == SGD_RUNS["optimizer"]].set_index(keys)[cols]
    both = t.add_suffix("_t").join(c.add_suffix("_c"), how="inner")
    if both.empty:
        return pd.DataFrame(columns=["point", "low", "high"])
    with np.errstate(divide="ignore"):   # a censored side's bound is infinite: log is ±inf
        logs = pd.DataFrame({
            "point": np.log(both[f"{column}_t"] / both[f"{column}_c"]),
            "low": np.log(both[f"{column}_lo_t"] / both[f"{column}_hi_c"]),
            "high": np.log(both[f"{column}_hi_t"] / both[f"{column}_lo_c"])})
    return logs.groupby(level="seed").mean() if by else logs


def interval_effect(runs: pd.DataFrame, column: str, by: str | None = None) -> stats.Effect:
    """The seed-paired log ratio SAM / SGD of ``column`` (averaged per seed over ``by``): the
    point estimate and its t-interval, widened to the t-intervals of the bounds (the lower
    limit of the least favourable bound, the upper limit of the most favourable one; infinite
    where a bound is)."""
    logs = _seed_logs(runs, column, by)
    point = stats.mean_effect(logs["point"])
    if point.n == 0:
        return stats.NO_EFFECT
    low = (stats.mean_effect(logs["low"]).low if np.isfinite(logs["low"]).all()
           else -np.inf)
    high = (stats.mean_effect(logs["high"]).high if np.isfinite(logs["high"]).all()
            else np.inf)
    if point.n < 2:
        low = high = float("nan")
    # the spread of the side that decides: the lower bound's for a delay, the upper's else
    side = logs["low"] if point.estimate >= 0 else logs["high"]
    sd = float(side.std(ddof=1)) if np.isfinite(side).all() and point.n > 1 else point.sd
    return stats.Effect(point.estimate, min(low, point.low), max(high, point.high), point.n, sd)


def censoring(runs: pd.DataFrame, column: str) -> dict:
    """Seed pairs (both finished and fit) censored on SAM's side only, SGD's only, and both."""
    ok = runs[runs["status"] == "ok"]
    t = ok[ok["optimizer"] == "sam"].set_index("seed")[f"{column}_censored"]
    c = ok[ok["optimizer"] == "sgd"].set_index("seed")[f"{column}_censored"]
    t, c = t.align(c, join="inner")
    return {"sam_censored": int(((t == 1) & (c == 0)).sum()),
            "sgd_censored": int(((t == 0) & (c == 1)).sum()),
            "both_censored": int(((t == 1) & (c == 1)).sum())}


def epochs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per width and optimizer: finished runs, and per level how many reached it and their
    median epoch (of those that did). ``runs``: after ``intervals``."""
    ok = runs[runs["status"] == "ok"]
    rows = []
    for (width, opt), g in ok.groupby(["width", "optimizer"], sort=True):
        row = {"width": int(width), "optimizer": opt, "runs": len(g)}
        for level, col in COLUMNS.items():
            reached = g.loc[g[f"{col}_censored"] == 0, col]
            tag = round(100 * level)
            row[f"reached_{tag}"] = len(reached)
            row[f"median_epochs_to_{tag}"] = float(reached.median()) if len(reached) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
