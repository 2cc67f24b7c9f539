"""Longer training: does SGD's test accuracy degrade when it trains longer while SAM's holds?

Foret et al.: "SAM enables training for more epochs without overfitting, while standard
training degrades". SGD and SAM train for 1×, 2× and 4× the base epochs (the schedule's
learning-rate drops stretch with them), with clean and noisy labels; the accuracy read is the
last epoch's (``final_test_acc``: no early stopping, which would hide a degradation). Per seed:
SGD's change from 1× to the longest run, and the difference in differences (SAM − SGD at the
longest minus SAM − SGD at 1×), both paired by seed.
"""
from __future__ import annotations

import pandas as pd

from samkit.analysis import stats
from samkit.analysis.effects import PAIRED_COLUMNS, ensure_columns
from samkit.analysis.claims import Analysis, Claim
from samkit.analysis.regime import status_line

NAME = "longer"
TITLE = "Longer training: does SGD degrade while SAM holds?"
QUESTION = "When training runs longer, does SGD's test accuracy degrade while SAM's holds?"
PART, POSITION = "Sources' other claims", 2  # its page in the book: part and place in it
QUEUED = True  # its cpu runs are still training: not staged, not in the book yet
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "change in test accuracy from the shortest run vs epochs, per optimizer and noise rate",
        "template": "pp_vs_log2",
        "table": "changes",
        "x": "epochs",
        "y": "estimate",
        "x_label": "epochs (log2 axis)",
        "y_label": "change in test accuracy (pp)"}
SOURCE = "Foret et al. 2021: SAM trains longer without overfitting; standard training degrades"
METRIC = "final_test_acc"
DELTA = 0.003
DELTA_REASON = "0.3 pp, the book's δ for an accuracy difference"


def analyze(runs: pd.DataFrame) -> Analysis:
    runs = ensure_columns(runs, [METRIC])
    base = int(runs["epochs"].min()) if len(runs) else 0
    longest = int(runs["epochs"].max()) if len(runs) else 0
    levels = stats.levels(runs, ["label_noise", "optimizer", "epochs"], METRIC) if len(runs) \
        else pd.DataFrame()
    changes = _changes(runs, base)
    claims = []
    for noise in sorted(runs["label_noise"].unique()) if len(runs) else []:
        labels = "clean labels" if noise == 0 else f"{noise:.0%} label noise"
        slug = f"n{int(round(100 * noise))}"
        claims += [
            Claim(f"sgd_degrades.{slug}", f"SGD's test accuracy degrades from {base} to "
                  f"{longest} epochs ({labels})", SOURCE,
                  _at(changes, noise, "SGD", longest), DELTA, DELTA_REASON, direction=-1,
                  dvc_metric=False),
            Claim(f"sam_degrades.{slug}", f"SAM's test accuracy degrades from {base} to "
                  f"{longest} epochs ({labels}); 'contradicts' means it holds, within ±0.3 pp "
                  "or better", SOURCE, _at(changes, noise, "SAM", longest), DELTA, DELTA_REASON,
                  direction=-1, dvc_metric=False),
            Claim(f"gain_grows.{slug}", f"SAM's gain over SGD grows from {base} to {longest} "
                  f"epochs ({labels})", SOURCE, _at(changes, noise, "SAM − SGD", longest),
                  DELTA, DELTA_REASON),
        ]
    return Analysis({"levels": levels, "changes": changes}, claims,
                    {"status": status_line(runs), "base_epochs": base,
                     "longest_epochs": longest})


def _per_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (noise, seed, epochs): SGD's and SAM's accuracy and SAM − SGD (NaN where a
    side did not finish or failed to fit) and whether a run there diverged."""
    ok = runs[runs["status"] == "ok"]
    # pivot, not pivot_table: two runs in one cell would be a bug, and pivot raises on it
    wide = ok.pivot(index=["label_noise", "seed", "epochs"], columns="optimizer", values=METRIC)
    for side in ("sgd", "sam"):
        if side not in wide:
            wide[side] = float("nan")
    wide["gain"] = wide["sam"] - wide["sgd"]
    diverged = (runs.assign(d=runs["status"] == "diverged")
                .groupby(["label_noise", "seed", "epochs"])["d"].any())
    return wide.join(diverged.rename("diverged"), how="outer").reset_index()


def _changes(runs: pd.DataFrame, base: int) -> pd.DataFrame:
    """Per noise level and longer epoch count: the seed-paired change from ``base`` epochs of
    SGD's accuracy, of SAM's, and of SAM − SGD."""
    if runs.empty:
        return pd.DataFrame(columns=["label_noise", "epochs", "quantity", *PAIRED_COLUMNS])
    per = _per_seed(runs)
    rows = []
    for (noise, epochs), g in per[per["epochs"] != base].groupby(["label_noise", "epochs"]):
        ref = per[(per["label_noise"] == noise) & (per["epochs"] == base)].set_index("seed")
        g = g.set_index("seed")
        diverged = g["diverged"].fillna(False) | ref["diverged"].reindex(g.index).fillna(False)
        for quantity, col in (("SGD", "sgd"), ("SAM", "sam"), ("SAM − SGD", "gain")):
            diff = (g[col] - ref[col].reindex(g.index)).dropna()
            e = stats.mean_effect(diff)
            missing = ~g.index.isin(diff.index)   # seeds left out of this quantity's pairs
            n_diverged = int((missing & diverged.to_numpy()).sum())
            rows.append({"label_noise": noise, "epochs": int(epochs), "quantity": quantity,
                         **e.as_dict(), "diverged": n_diverged,
                         "unfit": int(missing.sum()) - n_diverged,
                         "treatment": g.loc[diff.index, col].mean(),
                         "control": ref[col].reindex(diff.index).mean()})
    return pd.DataFrame(rows)[["label_noise", "epochs", "quantity", *PAIRED_COLUMNS]]


def _at(changes: pd.DataFrame, noise, quantity: str, epochs: int) -> stats.Effect:
    row = changes[(changes["label_noise"] == noise) & (changes["quantity"] == quantity)
                  & (changes["epochs"] == epochs)]
    if row.empty:
        return stats.NO_EFFECT
    r = row.iloc[0]
    return stats.Effect(float(r["estimate"]), float(r["low"]), float(r["high"]), int(r["n"]),
                        float(r["sd"]))
