"""Seed-paired effects of a study's run table, the building blocks every study's ``analyze``
uses: paired tables and the effect in one of their rows, SAM/SGD ratios, and the equal-budget
tuning rule (each arm's trials compete on validation accuracy; the chosen one is reported)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from samkit.analysis import stats
from samkit.analysis.claims import Claim


def ensure_columns(runs: pd.DataFrame, columns) -> pd.DataFrame:
    """``runs`` with every column of ``columns`` present (NaN where missing): a run table
    whose runs all diverged has no ``best_*``/``final_*`` metrics at all."""
    missing = [c for c in columns if c not in runs]
    return runs.assign(**{c: float("nan") for c in missing}) if missing else runs


PAIRED_COLUMNS = ("estimate", "low", "high", "n", "sd", "diverged", "unfit", "treatment",
                  "control")


def paired_table(runs: pd.DataFrame, metric: str, treatment: dict, control: dict,
                 by: list[str], **kw) -> pd.DataFrame:
    """``stats.paired`` that keeps its columns when no seed pair exists at all (one side not
    run yet, e.g. a partial run cache), so that lookups find no row instead of no column."""
    table = stats.paired(runs, metric, treatment, control, by=by, **kw)
    return table if len(table) else pd.DataFrame(columns=[*by, *PAIRED_COLUMNS])


def effect_at(table: pd.DataFrame, **where) -> stats.Effect:
    """The effect in the row of a ``paired`` table where every column equals its ``where``
    value; no such row: no effect (NaN, n = 0)."""
    mask = pd.Series(True, index=table.index)
    for k, v in where.items():
        if k not in table:
            return stats.NO_EFFECT
        mask &= table[k] == v
    if not mask.any():
        return stats.NO_EFFECT
    r = table[mask].iloc[0]
    return stats.Effect(float(r["estimate"]), float(r["low"]), float(r["high"]), int(r["n"]),
                        float(r["sd"]))


# ----------------------------------------------------------------------------- SAM/SGD ratios
# Studies of a measure where smaller is the claim (Hessian sharpness, function complexity)
# compare SAM with SGD per seed as log(SAM) − log(SGD): a ratio, decided on its log.

SAM_RUNS, SGD_RUNS = {"optimizer": "sam"}, {"optimizer": "sgd"}  # the runs of each side
RATIO_DELTA = math.log(1.1)  # smallest effect: a 10% smaller value (ratio 1/1.1 or below)


def log_ratios(runs: pd.DataFrame, columns: dict, by: list[str]) -> dict:
    """{measure: the seed-paired table of log(SAM) − log(SGD) of its run column} for the
    {measure: column} pairs of ``columns``, per ``by`` cell."""
    return {m: paired_table(runs, col, SAM_RUNS, SGD_RUNS, by=by, log=True)
            for m, col in columns.items()}


def ratio_table(ratios: dict, by: list[str]) -> pd.DataFrame:
    """The ``log_ratios`` tables as one, with a ``measure`` column first."""
    return pd.concat([t.assign(measure=m) for m, t in ratios.items()],
                     ignore_index=True)[["measure", *by, *PAIRED_COLUMNS]]


def smaller_ratio_claim(claim_id: str, text: str, source: str, effect: stats.Effect,
                        delta_reason: str) -> Claim:
    """The claim that SAM's value is smaller than SGD's by at least ×1.1."""
    return Claim(claim_id, text, source, effect, RATIO_DELTA, delta_reason, direction=-1,
                 unit="ratio")


# ----------------------------------------------------------------------------- tuning
# Equal-budget tuning (AlgoPerf's rule): each arm's trials (its ``tag``'s runs that differ in
# hyperparameters) compete on validation accuracy; the chosen trial is reported on test.

SELECT_ON = "best_val_acc"    # the choice: validation accuracy at the early-stopped epoch
REPORT_CHOSEN = "best_test_acc"
HYPER = ("lr", "weight_decay", "rho")


def select_trials(runs: pd.DataFrame, cell: list[str]) -> pd.DataFrame:
    """Per (``cell``, seed, tag): the trial with the highest validation accuracy (ties: the
    first in lr, weight decay, ρ order), with its hyperparameters, its test accuracy and the
    number of trials it was chosen from, status "ok"; an arm whose trials all diverged or failed
    to fit gets a failed row for that seed. Only ``SELECT_ON`` orders the trials: test
    accuracy never does."""
    ok = runs[runs["status"] == "ok"].dropna(subset=[SELECT_ON])
    group = [*cell, "seed", "tag"]
    ordered = ok.sort_values([*group, SELECT_ON, *HYPER],
                             ascending=[True] * len(group) + [False] + [True] * len(HYPER),
                             kind="mergesort")
    chosen = ordered.groupby(group, sort=True).head(1)
    trials = runs.groupby(group).agg(trials=("status", "size"),
                                     all_diverged=("status", lambda s: (s == "diverged").all()))
    chosen = chosen.merge(trials["trials"].reset_index(), on=group).assign(status="ok")
    # A seed whose arm has no finished trial stays, as a failed row: the pairings count it
    # (diverged when every trial diverged, unfit otherwise) instead of losing the seed.
    failed = trials.drop(index=pd.MultiIndex.from_frame(chosen[group]), errors="ignore")
    failed = failed.reset_index().assign(
        status=lambda d: np.where(d["all_diverged"], "diverged", "unfit"),
        **{c: np.nan for c in (*HYPER, SELECT_ON, REPORT_CHOSEN)})
    cols = [*group, *HYPER, SELECT_ON, REPORT_CHOSEN, "trials", "status"]
    return pd.concat([chosen[cols], failed[cols]], ignore_index=True).sort_values(
        group, kind="mergesort").reset_index(drop=True)


def trials_per_arm(chosen: pd.DataFrame, order=None) -> str:
    """The tuning budget as a page states it, "SGD 8, SAM 8": each arm's trials per seed (the
    most over its cells) from ``select_trials``' output; arms in ``order``, else by name."""
    per = chosen.groupby("tag")["trials"].max()
    return ", ".join(f"{tag} {int(per[tag])}" for tag in (order or per.index) if tag in per)
