"""Tuning parity: does SAM beat SGD when each gets the same tuning budget?

Every other study runs SGD and SAM at one shared recipe. Here each optimizer gets the same
number of trials from its own declared search space (params.yaml: the ``trials`` axes of its
arm, e.g. SGD lr × weight decay, SAM lr × ρ), as MLCommons AlgoPerf compares training
algorithms (Dahl et al., 2023): per seed, the trial with the best validation accuracy is
chosen, and its test accuracy (at its early-stopped epoch) is reported. Test accuracy never
enters the choice. Each seed is one replicate of the whole tuning procedure (its own data
subset, split and noise), so tuned SAM and tuned SGD are paired by seed. A third arm gives SGD
twice the epochs (SAM's gradient evaluations), tuned alike: equal trials and equal compute.

The fixed recipe of the other studies is one trial of each space, so the page also shows the
untuned comparison on the same runs.
"""
from __future__ import annotations

import pandas as pd

from samkit.analysis import stats
from samkit.analysis.effects import (PAIRED_COLUMNS, effect_at, ensure_columns, select_trials,
                                     trials_per_arm)
from samkit.analysis.claims import Analysis, Claim
from samkit.analysis.regime import status_line

NAME = "tuning"
TITLE = "Tuning parity: SAM against a tuned SGD"
QUESTION = ("Does SAM beat SGD when both get the same tuning budget, and the same gradient "
            "evaluations?")
PART, POSITION = "Sources' other claims", 1  # its page in the book: part and place in it
QUEUED = True  # its cpu runs are still training: not staged, not in the book yet
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "tuned and untuned differences vs width, one colour per comparison and noise rate",
        "template": "pp_vs_log2",
        "table": "gains",
        "x": "width",
        "y": "estimate",
        "x_label": "width (log2 axis)",
        "y_label": "difference in test accuracy (pp)"}
SOURCE = "Foret et al. 2021 (SAM improves on tuned baselines); AlgoPerf's equal-budget rule"
# The fixed recipe of the other studies: the cpu profile's research base, and the quick and gpu
# profiles' (their &small and &full bases). The first whose trial every arm holds is used.
FIXED_RECIPES = ({"lr": 0.1, "weight_decay": 0.0001, "rho": 0.05},
                 {"lr": 0.05, "weight_decay": 0.0005, "rho": 0.05})
ARMS = ("SGD", "SAM", "SGD 2×")
CELL = ["width", "label_noise"]
REPORT = "best_test_acc"
DELTA = 0.003
DELTA_REASON = "0.3 pp, the book's δ for an accuracy difference"


def select(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (width, label noise, seed, arm): the trial chosen on validation."""
    return select_trials(runs, CELL)


def fixed(runs: pd.DataFrame) -> pd.DataFrame:
    """The fixed-recipe trial of each arm (the other studies' shared recipe); empty when no
    recipe is a trial of every arm."""
    for recipe in FIXED_RECIPES:
        keep = (((runs["lr"] - recipe["lr"]).abs() < 1e-12)
                & ((runs["weight_decay"] - recipe["weight_decay"]).abs() < 1e-12)
                & ((runs["tag"] != "SAM") | ((runs["rho"] - recipe["rho"]).abs() < 1e-12)))
        if set(runs.loc[keep, "tag"]) >= set(ARMS):
            return runs[keep]
    return runs.iloc[:0]


def analyze(runs: pd.DataFrame) -> Analysis:
    runs = ensure_columns(runs, ["best_val_acc", REPORT])
    chosen = select(runs)
    tuned = _gains(chosen, "tuned")
    untuned = _gains(fixed(runs), "fixed recipe")
    claims = []
    for (width, noise), _ in chosen.groupby(CELL, sort=True):
        regime = f"width {int(width)}, {'clean labels' if noise == 0 else f'{noise:.0%} label noise'}"
        slug = f"w{int(width)}_n{int(round(100 * noise))}"
        at = dict(width=width, label_noise=noise)
        claims += [
            Claim(f"{slug}.equal_trials", f"Tuned SAM beats tuned SGD at equal trials ({regime})",
                  SOURCE, effect_at(tuned[tuned["comparison"] == "SAM − SGD"], **at), DELTA,
                  DELTA_REASON, dvc_metric=False),
            Claim(f"{slug}.equal_compute", "Tuned SAM beats tuned SGD at equal trials and equal "
                  f"gradient evaluations (SGD 2× epochs; {regime})", SOURCE,
                  effect_at(tuned[tuned["comparison"] == "SAM − SGD 2×"], **at), DELTA,
                  DELTA_REASON, dvc_metric=False),
        ]
    return Analysis({"gains": pd.concat([tuned, untuned], ignore_index=True),
                     "chosen": chosen_table(chosen)}, claims,
                    {"status": status_line(runs), "trials": trials_per_arm(chosen, ARMS)})


def _gains(runs: pd.DataFrame, how: str) -> pd.DataFrame:
    """SAM − SGD and SAM − SGD 2× (seed-paired) per cell, labelled ``how``."""
    frames = []
    for control in ("SGD", "SGD 2×"):
        t = stats.paired(runs, REPORT, {"tag": "SAM"}, {"tag": control}, by=CELL)
        if len(t):
            frames.append(t.assign(comparison=f"SAM − {control}", selection=how))
    if not frames:
        return pd.DataFrame(columns=["selection", "comparison", *CELL, *PAIRED_COLUMNS])
    return pd.concat(frames, ignore_index=True)[["selection", "comparison", *CELL,
                                                 *PAIRED_COLUMNS]]


def chosen_table(chosen: pd.DataFrame) -> pd.DataFrame:
    """Per cell and arm: how often each hyperparameter setting was chosen over the seeds."""
    if chosen.empty:
        return pd.DataFrame(columns=[*CELL, "tag", "chosen"])
    rows = []
    for (width, noise, tag), g in chosen.groupby([*CELL, "tag"], sort=True):
        picks = g.apply(lambda r: _setting(r, tag), axis=1).value_counts()
        rows.append({"width": width, "label_noise": noise, "tag": tag,
                     "chosen": "; ".join(f"{k} ×{v}" for k, v in picks.items())})
    return pd.DataFrame(rows)


def _setting(row, tag: str) -> str:
    if tag == "SAM":
        return f"lr {row['lr']:g}, ρ {row['rho']:g}"
    return f"lr {row['lr']:g}, wd {row['weight_decay']:g}"
