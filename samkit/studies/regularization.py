"""Regularization: does the width trend of SAM's gain need weight decay and early stopping?
(Shin et al., Sec. 5, Fig. 5c-d)

Three variants of the same widths, optimizers and seeds:

- ``regularized``: weight decay and early stopping (test accuracy at the epoch of best
  validation accuracy, ``best_test_acc``);
- ``no weight decay``: weight decay 0, still early-stopped;
- ``no early stopping``: the last epoch's test accuracy (``final_test_acc``). If the runs have
  an arm tagged ``no early stopping`` (trained with early_stopping false) its runs are used;
  otherwise the variant is read from the last epoch of the ``regularized`` runs themselves
  (the cpu profile: same runs, no retraining).

Per variant the trend is the seed-paired slope of SAM − SGD on log2(parameters). "The trend
needs <regularizer>" is, per seed, slope(regularized) − slope(without it) > 0, with its mean
and t-interval over the seeds both variants finished (each seed is the same data subset in
every variant).
"""
from __future__ import annotations

import pandas as pd

from samkit.analysis import stats
from samkit.analysis.claims import Analysis, Claim
from samkit.analysis.effects import SAM_RUNS, SGD_RUNS, ensure_columns, paired_table
from samkit.analysis.regime import status_line

NAME = "regularization"
TITLE = "Regularization: does SAM's width trend survive without weight decay or early stopping?"
QUESTION = "Does the growth of SAM's gain with width need weight decay and early stopping?"
PART, POSITION = "Overparameterization and SAM", 6  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "SAM − SGD test accuracy vs parameters, one colour per variant",
        "template": "pp_vs_log2",
        "table": "gain",
        "x": "params",
        "y": "estimate",
        "x_label": "parameters (log2 axis)",
        "y_label": "SAM − SGD test accuracy (pp)"}
REGULARIZED, NO_WD, NO_ES = "regularized", "no weight decay", "no early stopping"
VARIANTS = (REGULARIZED, NO_WD, NO_ES)
ABLATIONS = {NO_WD: "weight_decay", NO_ES: "early_stopping"}  # ablation -> what it removes
SOURCE = "Shin et al. Sec. 5, Fig. 5c-d"
# Smallest trend of interest: 0.1 pp per doubling of the parameters, the width study's
# (0.7 pp over a 128x wider model). A difference of two trends uses the same scale.
DELTA_SLOPE = 0.001
DELTA_REASON = "0.1 pp per doubling: 0.7 pp over a 128x wider model (the width study's δ)"


def slug(variant: str) -> str:
    return variant.replace(" ", "_")


def variant_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, run) with the variant's test accuracy in column ``acc``."""
    runs = ensure_columns(runs, ["tag", "best_test_acc", "final_test_acc"])
    reg = runs[runs["tag"] == REGULARIZED]
    wd = runs[runs["tag"] == NO_WD]
    es = runs[runs["tag"] == NO_ES]
    if es.empty:   # no trained arm: the regularized runs' last epoch
        es = reg
    frames = [reg.assign(variant=REGULARIZED, acc=reg["best_test_acc"]),
              wd.assign(variant=NO_WD, acc=wd["best_test_acc"]),
              es.assign(variant=NO_ES, acc=es["final_test_acc"])]
    return pd.concat(frames, ignore_index=True)


def analyze(runs: pd.DataFrame) -> Analysis:
    tags = sorted(map(str, runs["tag"].unique())) if "tag" in runs else []
    if REGULARIZED not in tags:
        raise ValueError(f"regularization: no runs tagged {REGULARIZED!r} (tags: "
                         f"{', '.join(tags) or 'none'}); its arms need {{tag: regularized}}")
    v = variant_runs(runs)
    gain = paired_table(v, "acc", SAM_RUNS, SGD_RUNS, by=["variant", "width", "params"])
    by_variant = {name: v[v["variant"] == name] for name in VARIANTS}
    slopes = {name: stats.seed_slopes(g, "acc", SAM_RUNS, SGD_RUNS) for name, g in by_variant.items()}
    claims = []
    for name in VARIANTS:
        claims.append(Claim(
            f"trend_{slug(name)}",
            f"SAM's gain grows with the parameters ({name})", SOURCE,
            stats.slope(by_variant[name], "acc", SAM_RUNS, SGD_RUNS), DELTA_SLOPE, DELTA_REASON,
            unit="pp/doubling"))
    for ablation, removed in ABLATIONS.items():
        both = sorted(set(slopes[REGULARIZED]) & set(slopes[ablation]))
        diffs = [slopes[REGULARIZED][s] - slopes[ablation][s] for s in both]
        claims.append(Claim(
            f"needs_{removed}",
            f"The width trend weakens without {removed.replace('_', ' ')} (per seed: slope "
            f"regularized − slope {ablation} > 0)", SOURCE, stats.mean_effect(diffs),
            DELTA_SLOPE, DELTA_REASON, unit="pp/doubling"))
    trends = pd.DataFrame([{"variant": name, **c.effect.as_dict(), "verdict": c.verdict}
                           for name, c in zip(VARIANTS, claims)])
    trained_es = bool((runs["tag"] == NO_ES).any())
    reg = runs[runs["tag"] == REGULARIZED]
    facts = {
        "status": status_line(runs),
        "no_early_stopping_from": (
            "separate runs trained without early stopping (their last epoch)" if trained_es
            else "the last epoch of the regularized runs themselves (the same runs, read "
                 "without early stopping)"),
        "weight_decay": ", ".join(f"{w:g}" for w in sorted(reg["weight_decay"].unique()))
        if "weight_decay" in reg else "n/a",
        "widths": ", ".join(str(int(w)) for w in sorted(runs["width"].unique())),
        "final_train_acc_min": "n/a", "final_train_acc_max": "n/a",
    }
    return Analysis({"gain": gain, "trends": trends}, claims, facts)
