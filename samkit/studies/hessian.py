"""Hessian: are SAM's minima flatter, with a more uniform Hessian, than SGD's? (Shin et al.,
Sec. 6.1, Fig. 6)

Following the paper's setting (MSE loss, constant learning rate, no momentum or weight decay),
each run measures at the end of training, on a fixed set of ``hessian_samples`` training
points: λmax (the top Hessian eigenvalue, power iteration), the trace (Hutchinson) and the
non-uniformity of the per-example Hessians (Wu et al., 2018). SAM vs SGD is a seed-paired
ratio: per seed log(SAM) − log(SGD), its mean and t-interval, shown as a ratio.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from samkit.analysis import fmt, stats
from samkit.analysis.effects import (SAM_RUNS, SGD_RUNS, effect_at, ensure_columns, log_ratios,
                                     ratio_table, smaller_ratio_claim)
from samkit.analysis.claims import Analysis
from samkit.analysis.regime import status_line

NAME = "hessian"
TITLE = "Hessian: are SAM's minima flatter and more uniform than SGD's?"
QUESTION = "Does SAM reach minima with a smaller and more uniform Hessian than SGD?"
PART, POSITION = "Why: the minima SAM finds", 1  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "SAM/SGD ratio vs parameters, one colour per measure",
        "template": "ratio_vs_log2",
        "table": "ratio",
        "x": "params",
        "y": "estimate",
        "x_label": "parameters (log2 axis)",
        "y_label": "SAM / SGD (log2 axis)"}
SOURCE = "Shin et al. Sec. 6.1, Fig. 6"
# measure -> (run column, label)
MEASURES = {"lambda_max": ("hessian_lambda_max", "λmax (top eigenvalue)"),
            "trace": ("hessian_trace", "trace"),
            "nonuniformity": ("hessian_nonuniformity", "non-uniformity")}
TEXTS = {"lambda_max": "SAM's minimum is flatter: a smaller top Hessian eigenvalue λmax",
         "trace": "SAM's minimum has a smaller Hessian trace",
         "nonuniformity": "SAM's minimum has a more uniform Hessian (smaller non-uniformity)"}
# Why the smallest effect (studies.RATIO_DELTA) is a 10% lower value:
DELTA_REASON = ("×1.1: a 10% difference, the smallest we would call a flatter (or more "
                "uniform) minimum")
LEVEL_COLUMNS = ["measure", "width", "params", "optimizer", "estimate", "low", "high", "n",
                 "diverged"]


def check(runs: pd.DataFrame) -> None:
    """The study needs runs that measured their Hessian (hessian_samples > 0)."""
    measured = [c for c, _ in MEASURES.values()]
    if "hessian_samples" in runs:
        none = runs[runs["hessian_samples"].fillna(0) <= 0]
        if len(none):
            raise ValueError(
                f"hessian: {len(none)} of {len(runs)} runs have hessian_samples 0, so no "
                "Hessian was measured; set hessian_samples > 0 in the study's base (params.yaml)")
    elif not all(c in runs for c in measured):
        raise ValueError("hessian: the runs have no Hessian measures (hessian_* columns); "
                         "train them with hessian_samples > 0")


def analyze(runs: pd.DataFrame) -> Analysis:
    check(runs)
    runs = ensure_columns(runs, [c for c, _ in MEASURES.values()]
                          + ["final_train_loss", "final_train_acc", "final_test_acc"])
    by = ["width", "params"]
    ratios = log_ratios(runs, {m: col for m, (col, _) in MEASURES.items()}, by)
    widest = runs["width"].max()
    claims = [smaller_ratio_claim(f"{m}.widest", f"{TEXTS[m]} (widest model, width {widest})",
                                  SOURCE, effect_at(ratios[m], width=widest), DELTA_REASON)
              for m in MEASURES]
    claims.append(smaller_ratio_claim(
        "lambda_max.all_widths",
        "SAM's minimum is flatter across widths: per seed, the mean over widths of log(SAM λmax "
        "/ SGD λmax) (a geometric-mean ratio; a seed counts once all its widths finished)",
        SOURCE, across_widths(runs, MEASURES["lambda_max"][0]), DELTA_REASON))
    levels = pd.concat([_levels(runs, m, col) for m, (col, _) in MEASURES.items()],
                       ignore_index=True) if len(runs) else pd.DataFrame(columns=LEVEL_COLUMNS)
    fit = _fit(runs)
    return Analysis({"ratio": ratio_table(ratios, by), "levels": levels, "fit": fit}, claims,
                    _facts(runs, levels, fit, widest))


def across_widths(runs: pd.DataFrame, column: str) -> stats.Effect:
    """Per seed, the mean over widths of log(SAM) − log(SGD) of ``column``; only seeds with a
    finished pair at every width count (the same widths in every seed's mean)."""
    p = stats.pairs(runs, column, SAM_RUNS, SGD_RUNS, ["width"])
    with np.errstate(divide="ignore", invalid="ignore"):
        p["diff"] = np.where(p["ok"], np.log(p[f"{column}_t"]) - np.log(p[f"{column}_c"]),
                             np.nan)
    widths = runs["width"].nunique()
    per_seed = [g["diff"].mean() for _, g in p.groupby("seed")
                if g["diff"].notna().sum() == widths and np.isfinite(g["diff"]).all()]
    return stats.mean_effect(per_seed)




def _levels(runs, measure, column) -> pd.DataFrame:
    """Per (width, optimizer): the geometric mean of ``column`` over finished seeds with its
    95% CI (mean and t-interval of the logs; exp() gives the level)."""
    rows = []
    for (width, params, opt), g in runs.groupby(["width", "params", "optimizer"], sort=True):
        ok = g[g["status"] == "ok"][column].astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(ok.where(ok > 0))
        e = stats.mean_effect(logs)
        rows.append({"measure": measure, "width": width, "params": params, "optimizer": opt,
                     "estimate": e.estimate, "low": e.low, "high": e.high, "n": e.n,
                     "diverged": int((g["status"] != "ok").sum())})
    return pd.DataFrame(rows, columns=LEVEL_COLUMNS)


def _fit(runs) -> pd.DataFrame:
    """How far training got, per (width, optimizer): mean final training MSE, final training
    and test accuracy over finished runs."""
    rows = []
    for (width, params, opt), g in runs.groupby(["width", "params", "optimizer"], sort=True):
        ok = g[g["status"] == "ok"]
        rows.append({"width": width, "params": params, "optimizer": opt,
                     "train_loss": ok["final_train_loss"].mean(),
                     "train_loss_max": ok["final_train_loss"].max(),
                     "train_acc": ok["final_train_acc"].mean(),
                     "test_acc": ok["final_test_acc"].mean(), "n": len(ok),
                     "diverged": int((g["status"] != "ok").sum())})
    return pd.DataFrame(rows, columns=["width", "params", "optimizer", "train_loss",
                                       "train_loss_max", "train_acc", "test_acc", "n",
                                       "diverged"])


def _facts(runs, levels, fit, widest) -> dict:
    ok = runs[runs["status"] == "ok"]
    each = []
    for width, g in fit.groupby("width", sort=True):
        side = {r["optimizer"]: fmt.num(float(r["train_loss"])) for _, r in g.iterrows()}
        each.append(f"width {int(width)}: SGD {side.get('sgd', 'n/a')}, "
                    f"SAM {side.get('sam', 'n/a')}")
    top = levels[(levels["measure"] == "lambda_max") & (levels["width"] == widest)]
    lam = {r["optimizer"]: _exp(r["estimate"]) for _, r in top.iterrows()}
    lr = runs["lr"].max() if "lr" in runs else float("nan")
    samples = sorted({int(s) for s in runs["hessian_samples"]}) if "hessian_samples" in runs \
        else []
    return {
        "status": status_line(runs),
        "widths": ", ".join(str(int(w)) for w in sorted(runs["width"].unique())),
        "widest": int(widest) if np.isfinite(widest) else "n/a",
        "hessian_samples": ", ".join(map(str, samples)) or "n/a",
        "train_loss_each": "; ".join(each) or "n/a",
        "train_loss_max": fmt.num(float(ok["final_train_loss"].max())) if len(ok) else "n/a",
        "train_loss_min": fmt.num(float(ok["final_train_loss"].min())) if len(ok) else "n/a",
        "stability_bound": fmt.num(2 / float(lr)) if np.isfinite(lr) else "n/a",
        "lambda_max_widest_sgd": lam.get("sgd", "n/a"),
        "lambda_max_widest_sam": lam.get("sam", "n/a"),
        "final_train_acc_min": "n/a", "final_train_acc_max": "n/a",
    }


def _exp(log_value) -> str:
    return fmt.num(float(np.exp(log_value))) if np.isfinite(log_value) else "n/a"
