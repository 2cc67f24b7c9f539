"""SAM fits later: how many epochs SAM and SGD take to reach 95% and 99% training accuracy.

The blog: "SAM trains slower: training accuracy reaches near-perfect levels later". Measured on
the width study's MLP runs (the same configs: nothing is trained for this study) from each run's
stored history (``samkit.fit.epochs_to_fit``: the first evaluated epoch at or above the level,
so to within ``eval_every`` epochs). Per seed and width the comparison is log(SAM epochs / SGD
epochs), shown as a ratio. A run that never reaches a level is censored: it enters the pair at
its epochs + 1 (it reached the level later than its last epoch, if ever), a lower bound. Where
only SAM's side is censored the ratio is therefore a lower bound on SAM's delay, and where both
are it is 1: conservative for the claim. Only a pair censored on SGD's side alone would bias it
the other way; the table counts those pairs.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import fmt, stats
from ..fit import FIT_LEVELS
from . import (PAIRED_COLUMNS, SAM, SGD, Analysis, Claim, effect_at, ensure_columns,
               paired_table, status_line)

NAME = "fitspeed"
TITLE = "SAM fits later: epochs to reach a training accuracy"
QUESTION = "Does SAM take more epochs than SGD to fit its training set?"
SOURCE = "the blog (seed 000): SAM's training accuracy reaches near-perfect levels later"
DELTA = math.log(1.1)   # ×1.1: the book's δ for a ratio
DELTA_REASON = "×1.1, the book's δ for a ratio (10% more epochs)"
COLUMNS = {level: f"epochs_to_{round(100 * level)}" for level in FIT_LEVELS}


def analyze(runs: pd.DataFrame) -> Analysis:
    runs = bounded(ensure_columns(runs, COLUMNS.values()))
    in_range = stats.in_trend_range(runs)
    ratios = pd.concat([paired_table(in_range, col, SAM, SGD, by=["width"], log=True)
                        .assign(level=level, sgd_alone_censored=_sgd_alone(in_range, col))
                        for level, col in COLUMNS.items()], ignore_index=True)
    widest = int(in_range["width"].max()) if len(in_range) else 0
    claims = [Claim(f"reach{round(100 * level)}.widest",
                    f"SAM takes more epochs than SGD to reach {fmt.rate(level)} training "
                    f"accuracy (widest model, width {widest})", SOURCE,
                    effect_at(ratios, level=level, width=widest), DELTA, DELTA_REASON,
                    unit="ratio", dvc_metric=level == FIT_LEVELS[-1])
              for level in FIT_LEVELS]
    level = FIT_LEVELS[0]
    claims.append(Claim(f"reach{round(100 * level)}.all",
                        f"SAM takes more epochs than SGD to reach {fmt.rate(level)} training "
                        "accuracy, across widths (per seed, the mean over widths of the log "
                        "ratio)", SOURCE, across_widths(in_range, COLUMNS[level]), DELTA,
                        DELTA_REASON, unit="ratio", dvc_metric=False))
    return Analysis({"epochs": epochs_table(runs),
                     "ratios": ratios[["level", "width", *PAIRED_COLUMNS,
                                       "sgd_alone_censored"]]},
                    claims, {"status": status_line(runs), "widest": widest,
                             "eval_every": ", ".join(str(int(e)) for e in
                                                     sorted(runs["eval_every"].unique()))
                             if "eval_every" in runs else "n/a"})


def bounded(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with each finished run's censored epochs-to-level (never reached: NaN) set to
    its epochs + 1, and ``<column>_censored`` flags."""
    runs = runs.copy()
    done = runs["status"] == "ok"
    for col in COLUMNS.values():
        censored = done & runs[col].isna()
        runs[f"{col}_censored"] = censored.astype(float)  # 1.0 / 0.0: stats.pairs subtracts
        runs.loc[censored, col] = runs.loc[censored, "epochs"] + 1
    return runs


def _sgd_alone(runs: pd.DataFrame, column: str):
    """Per width (the order of a ``paired_table`` by width): seed pairs where SGD's run is
    censored and SAM's is not (the one case where the bound favours the claim)."""
    p = stats.pairs(runs, f"{column}_censored", SAM, SGD, by=["width"])
    alone = p["ok"] & (p[f"{column}_censored_c"] == 1) & (p[f"{column}_censored_t"] == 0)
    counts = alone.groupby(p["width"]).sum()
    return [int(counts.get(w, 0)) for w in sorted(p["width"].unique())]


def across_widths(runs: pd.DataFrame, column: str) -> stats.Effect:
    """Per seed, the mean over widths of log(SAM / SGD) epochs (widths where both sides
    reached the level), then the t-interval over seeds: one number per seed, so seeds are the
    unit of replication."""
    p = stats.pairs(runs, column, SAM, SGD, by=["width"])
    with np.errstate(divide="ignore", invalid="ignore"):
        p["log_ratio"] = np.where(p["ok"], np.log(p[f"{column}_t"]) - np.log(p[f"{column}_c"]),
                                  np.nan)
    per_seed = p.dropna(subset=["log_ratio"]).groupby("seed")["log_ratio"].mean()
    return stats.mean_effect(per_seed)


def epochs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per width and optimizer: finished runs, and per level how many reached it and their
    median epoch (of those that did). ``runs``: after ``bounded``."""
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
