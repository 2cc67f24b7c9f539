"""Simplicity: does SAM find simpler functions than SGD when overparameterized? (Shin et al.,
Sec. 4.1, Fig. 2, after Andriushchenko and Flammarion, 2022)

One-hidden-layer ReLU networks of several widths fit the same 12 points in 1-D. Each run
stores its learned function on a fine grid (its ``probe``, in the run cache); its simplicity is
measured there: the total variation of the slope (Σ|Δ slope| ≈ ∫|f″|, the summed size of all
kinks; 0 for a line) and the number of linear pieces. SAM vs SGD is a seed-paired ratio: per
seed log(SAM) − log(SGD), its mean and t-interval, shown as a ratio.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from samkit.data import toy
from samkit.analysis import fmt, stats
from samkit.analysis.claims import Analysis
from samkit.analysis.effects import (effect_at, ensure_columns, log_ratios, ratio_table,
                                     smaller_ratio_claim)
from samkit.analysis.regime import status_line

NAME = "simplicity"
TITLE = "Simplicity: does SAM find simpler functions than SGD when overparameterized?"
QUESTION = "Are the functions SAM learns simpler than SGD's once the network is wide?"
PART, POSITION = "Why: the minima SAM finds", 2  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "SAM/SGD ratio vs parameters, one colour per measure",
        "template": "ratio_vs_log2",
        "table": "ratio",
        "x": "params",
        "y": "estimate",
        "x_label": "parameters (log2 axis)",
        "y_label": "SAM / SGD (log2 axis)"}
SOURCE = "Shin et al. Sec. 4.1, Fig. 2"
MEASURES = {"slope_tv": "total variation of the slope", "pieces": "linear pieces"}
KINK_TOL = 0.5    # a kink: the slope changes by more than this between grid steps
FIT_FRACTION = 0.05  # a run fits the points if its training MSE < 5% of the targets' variance
DELTA_REASON = ("×1.1: a 10% simpler function, the smallest difference we would call "
                "simpler")
KEEP = ("width", "optimizer", "seed", "status")


def linear_pieces(x, y, tol: float = KINK_TOL) -> int:
    """Number of linear pieces of the curve (x, y) sampled on a fine grid: 1 + the number of
    kinks, a kink being a run of consecutive grid steps whose slope changes by more than
    ``tol`` (a ReLU kink between two grid points shows up in two adjacent steps)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    jumps = np.abs(np.diff(np.diff(y) / np.diff(x))) > tol
    starts = jumps & ~np.concatenate([[False], jumps[:-1]])
    return int(1 + starts.sum())


def slope_variation(x, y) -> float:
    """Total variation of the slope, Σ|Δ slope| over the grid (≈ ∫|f''|): 0 for a line; for a
    one-hidden-layer ReLU net, the summed kink sizes. Lower = simpler; among functions through
    given points, the piecewise-linear interpolant has the least."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(np.abs(np.diff(np.diff(y) / np.diff(x))).sum())


def curves(runs: pd.DataFrame, cache: str = "results/runs") -> pd.DataFrame:
    """The learned functions of the finished runs as one long table (key, width, optimizer,
    seed, status, x, y), read from each run's stored ``probe`` in ``cache``. A diverged run
    has none; a finished run whose result file is missing is an error (wrong cache)."""
    from samkit.sweep.store import load_result
    frames = []
    for _, row in runs[runs["status"] == "ok"].iterrows():
        path = os.path.join(cache, f"{row['key']}.json")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"simplicity: no stored result {path} for run {row['key']} "
                f"({row['optimizer']}, width {row['width']}, seed {row['seed']}); pass the run "
                "cache the runs came from as analyze(runs, cache=...)")
        probe = load_result(row["key"], cache).get("probe")
        if probe:
            frames.append(pd.DataFrame({"key": row["key"], **{c: row[c] for c in KEEP},
                                        "x": probe["x"], "y": probe["y"]}))
    cols = ["key", *KEEP, "x", "y"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def measures(curves_: pd.DataFrame) -> pd.DataFrame:
    """Per run ``key``: the slope's total variation and the number of linear pieces."""
    rows = [{"key": k, "slope_tv": slope_variation(g["x"], g["y"]),
             "pieces": linear_pieces(g["x"], g["y"])}
            for k, g in curves_.groupby("key", sort=False)]
    return pd.DataFrame(rows, columns=["key", "slope_tv", "pieces"])


def analyze(runs: pd.DataFrame, cache: str = "results/runs") -> Analysis:
    if "key" not in runs:
        raise ValueError("simplicity: the runs need their 'key' column (sweep.run's table) to "
                         "read their learned functions from the run cache")
    runs = ensure_columns(runs, ["final_train_loss"])
    runs = runs.drop(columns=[c for c in MEASURES if c in runs]).merge(
        measures(curves(runs, cache)), on="key", how="left")
    runs = runs.astype({m: float for m in MEASURES})   # all NaN (no probe) stays numeric
    by = ["width", "params"]
    ratios = log_ratios(runs, {m: m for m in MEASURES}, by)
    widest = runs["width"].max()
    claims = [
        smaller_ratio_claim(
            "widest", f"SAM finds a simpler function than SGD at the widest network (width "
            f"{widest}): a smaller total variation of the slope", SOURCE,
            effect_at(ratios["slope_tv"], width=widest), DELTA_REASON),
        smaller_ratio_claim(
            "pieces_widest", f"SAM's function has fewer linear pieces than SGD's at the widest "
            f"network (width {widest})", SOURCE, effect_at(ratios["pieces"], width=widest),
            DELTA_REASON),
    ]
    levels = _levels(runs)
    return Analysis({"ratio": ratio_table(ratios, by), "levels": levels}, claims,
                    _facts(runs, levels, widest))


def _levels(runs) -> pd.DataFrame:
    """Per (measure, width, optimizer): mean over finished runs with its 95% CI half-width
    (``ci95``, the layout ``plots.functions_grid`` notes read), n and diverged runs; also
    the final training MSE."""
    rows = []
    for m in [*MEASURES, "final_train_loss"]:
        for (width, params, opt), g in runs.groupby(["width", "params", "optimizer"],
                                                    sort=True):
            e = stats.mean_effect(g.loc[g["status"] == "ok", m].astype(float))
            rows.append({"measure": m, "width": width, "params": params, "optimizer": opt,
                         "mean": e.estimate, "ci95": e.high - e.estimate, "n": e.n,
                         "diverged": int((g["status"] != "ok").sum())})
    return pd.DataFrame(rows, columns=["measure", "width", "params", "optimizer", "mean",
                                       "ci95", "n", "diverged"])


def _facts(runs, levels, widest) -> dict:
    at = runs[runs["width"] == widest]
    threshold = FIT_FRACTION * float(np.var(toy.TOY1D_Y))
    fits = int((at.loc[at["status"] == "ok", "final_train_loss"] < threshold).sum())

    def level(measure, opt):
        r = levels[(levels["measure"] == measure) & (levels["width"] == widest)
                   & (levels["optimizer"] == opt)]
        return fmt.num(float(r["mean"].iloc[0])) if len(r) else "n/a"

    batch = runs["batch_size"].min() if "batch_size" in runs else float("nan")
    per_epoch = math.ceil(len(toy.TOY1D_X) / batch) if np.isfinite(batch) else 1
    return {
        "status": status_line(runs),
        "points": len(toy.TOY1D_X),
        "widths": ", ".join(str(int(w)) for w in sorted(runs["width"].unique())),
        "widest": int(widest) if np.isfinite(widest) else "n/a",
        "max_pieces": int(widest) + 1 if np.isfinite(widest) else "n/a",
        "steps": ", ".join(f"{int(e) * per_epoch:,}" for e in sorted(runs["epochs"].unique())),
        "fit_count": f"{fits} of {len(at)}",
        "fit_threshold": fmt.num(threshold),
        "fit_fraction": f"{100 * FIT_FRACTION:g}%",
        **{f"{m}_widest_{o}": level(m, o) for m in [*MEASURES, "final_train_loss"]
           for o in ("sgd", "sam")},
    }
