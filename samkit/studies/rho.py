"""ρ*: does the best perturbation radius grow with width? (Shin et al. Sec. 4.2, Fig. 4)"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from samkit.analysis import stats
from samkit.analysis.claims import Analysis, Claim
from samkit.analysis.effects import SAM_RUNS, SGD_RUNS, effect_at, ensure_columns, paired_table
from samkit.analysis.regime import status_line

NAME = "rho"
TITLE = "ρ*: does the best perturbation radius grow with width?"
QUESTION = "Does the best SAM radius ρ* grow with model size?"
PART, POSITION = "Overparameterization and SAM", 2  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "SAM − SGD test accuracy vs ρ, one colour per width",
        "template": "pp_vs_log",
        "table": "gain",
        "x": "rho",
        "y": "estimate",
        "x_label": "ρ (log axis)",
        "y_label": "SAM − SGD test accuracy (pp)"}
METRIC = "best_test_acc"  # test accuracy at the epoch of best validation accuracy
SOURCE = "Shin et al. Sec. 4.2 (Fig. 4)"
# Smallest effects worth having. ρ* trend: ×1.1 per doubling of the parameters (ln 1.1 in the
# slope's ln units), i.e. ρ* about doubling over a 128x wider model (7 doublings: 1.1^7 = 1.9),
# the step of a ρ grid such as 0.05 -> 0.1. Gain: 0.3 pp, as in the width study (the paper's
# smallest reported gains are 0.2-2 pp).
DELTA_RHO, DELTA_GAIN = math.log(1.1), 0.003

# The page quotes the final training accuracy range, which regime() leaves out when no run
# finished: "n/a" unless regime() fills it in.
NO_FINISHED_RUN = {"final_train_acc_min": "n/a", "final_train_acc_max": "n/a"}


def analyze(runs: pd.DataFrame) -> Analysis:
    runs = ensure_columns(runs, (METRIC,))
    sam = runs[runs["optimizer"] == "sam"]
    # SGD ignores ρ: every grid ρ maps to the same cached SGD run per (width, seed), whatever
    # ρ its row says. One SGD row per (width, seed), copied to every SAM ρ for the pairing.
    sgd = runs[runs["optimizer"] == "sgd"].drop_duplicates(["width", "seed"])
    rhos = pd.DataFrame({"rho": sorted(sam["rho"].unique())})
    sgd = sgd.drop(columns="rho").merge(rhos, how="cross")
    both = pd.concat([sam, sgd], ignore_index=True)
    gain = paired_table(both, METRIC, SAM_RUNS, SGD_RUNS, by=["width", "params", "rho"])
    acc = _accuracy(sam)
    star = rho_star(sam)
    widest = runs["width"].max()
    best_rho = _best_on_mean(acc, widest)
    claims = [
        Claim("rho_star_grows", "ρ* grows with the parameters (shown: the factor by which ρ* "
              "multiplies per doubling of the parameters; seed-paired slope of ln ρ*)", SOURCE,
              rho_star_slope(star), DELTA_RHO,
              "×1.1 per doubling: ρ* about doubles over a 128x wider model, one step of the "
              "ρ grid", unit="ratio"),
        Claim("gain_at_best_rho_widest", f"At the widest model (width {widest}) SAM at its best "
              "ρ on average beats SGD", SOURCE,
              effect_at(gain, width=widest, rho=best_rho) if best_rho is not None
              else stats.NO_EFFECT, DELTA_GAIN,
              "0.3 pp: the paper's smallest reported gains are 0.2-2 pp"),
    ]
    facts = {**NO_FINISHED_RUN, "status": status_line(runs), "widest": int(widest),
             "rho_grid": ", ".join(f"{r:g}" for r in rhos["rho"]) or "n/a",
             "widths": ", ".join(str(int(w)) for w in sorted(runs["width"].unique())),
             "best_rho_widest": "n/a" if best_rho is None else f"{best_rho:g}",
             "rho_star_on_mean": "; ".join(
                 f"width {int(w)}: {_g(_best_on_mean(acc, w))}"
                 for w in sorted(acc["width"].unique())) or "n/a",
             "rho_star_seeds": int(star["seed"].nunique()) if len(star) else 0}
    return Analysis({"gain": gain, "sam_acc": acc, "rho_star": star}, claims, facts)


def rho_star(sam: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, width): ρ* = the grid ρ whose finished SAM run has the highest test accuracy
    (a diverged ρ cannot be best; ties go to the smaller ρ). No row where no ρ finished, or
    where some grid ρ has no run at all (a partial run cache): the argmax over part of the
    grid is not ρ*; none at all with fewer than 2 grid ρ."""
    grid = set(sam["rho"].unique())
    if len(grid) < 2:  # one ρ is no choice: its "ρ*" would be flat by construction
        sam = sam.iloc[:0]
    else:
        complete = sam.groupby(["seed", "width"])["rho"].transform(lambda r: set(r) == grid)
        sam = sam[complete.astype(bool)]
    ok = sam[(sam["status"] == "ok") & sam[METRIC].notna()]
    ok = ok.sort_values(["seed", "width", METRIC, "rho"], ascending=[True, True, False, True])
    star = ok.groupby(["seed", "width"], sort=True).head(1)
    keep = ["seed", *(["model"] if "model" in star else []), "width", "params", "rho", METRIC]
    return star[keep].rename(
        columns={"rho": "rho_star"}).reset_index(drop=True)


def rho_star_slope(star: pd.DataFrame) -> stats.Effect:
    """Per seed, the least-squares slope of ln ρ* on log2(params) (ln units per doubling;
    exp() is the factor per doubling) over the source's range of MLP sizes; mean and 95% CI
    over seeds with >= 2 widths."""
    slopes = []
    for _, g in stats.in_trend_range(star).groupby("seed"):
        if g["params"].nunique() < 2:
            continue
        if g["rho_star"].nunique() == 1:  # exactly flat (polyfit would leave ±1e-17)
            slopes.append(0.0)
        else:
            slopes.append(float(np.polyfit(np.log2(g["params"].astype(float)),
                                           np.log(g["rho_star"].astype(float)), 1)[0]))
    return stats.mean_effect(slopes)


def _accuracy(sam: pd.DataFrame) -> pd.DataFrame:
    """SAM test accuracy per (width, ρ): mean over finished seeds with its 95% CI."""
    rows = []
    for (w, p, r), g in sam.groupby(["width", "params", "rho"], sort=True):
        e = stats.mean_effect(g.loc[g["status"] == "ok", METRIC])
        rows.append({"width": w, "params": p, "rho": r, "mean": e.estimate, "low": e.low,
                     "high": e.high, "n": e.n, "diverged": int((g["status"] != "ok").sum())})
    return pd.DataFrame(rows, columns=["width", "params", "rho", "mean", "low", "high", "n",
                                       "diverged"])


def _best_on_mean(acc: pd.DataFrame, width) -> float | None:
    """The ρ with the highest mean SAM accuracy at ``width`` (None if none finished)."""
    a = acc[(acc["width"] == width) & acc["mean"].notna()]
    return None if a.empty else float(a.sort_values(["mean", "rho"],
                                                    ascending=[False, True]).iloc[0]["rho"])


def _g(x) -> str:
    return "n/a" if x is None else f"{x:g}"
