"""The BatchNorm gotcha: does forgetting to keep SAM's perturbed pass out of BatchNorm's running
statistics degrade the model, as the BatchNorm post warns?

Three arms of SAM on the headline's PreAct ResNet-18, seed-paired: ``frozen`` (samkit.bn_frozen,
the fix), ``updated`` (no fix: each step's second pass, at w + ε, feeds the running averages
too) and ``momentum 0`` (BatchNorm momentum 0 for the pass, the fix davda54/sam uses). In train
mode BatchNorm normalises with the batch's own statistics, so the three arms take the same
steps: only the running statistics differ, and with them every eval-mode number. The claims
compare eval-mode test accuracy and the running statistics' distance from those the final
weights give (samkit.optim.bn.running_stats_drift)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from samkit.analysis import fmt
from samkit.analysis.effects import PAIRED_COLUMNS, effect_at, ensure_columns, paired_table
from samkit.analysis.claims import Analysis, Claim
from samkit.analysis.regime import status_line

NAME = "batchnorm"
TITLE = "The BatchNorm gotcha: SAM's second pass and the running statistics"
QUESTION = ("Does letting SAM's perturbed pass update BatchNorm's running statistics degrade "
            "the model?")
PART, POSITION = "Sources' other claims", 5  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "eval-mode test accuracy per seed, one colour per arm (fix, no fix, momentum 0)",
        "template": "percent",
        "table": "per_seed",
        "x": "seed",
        "y": "test_acc",
        "x_label": "seed",
        "y_label": "test accuracy, eval mode (%)"}
SOURCE = "the BatchNorm post (seed 001): without the fix, normalisation layers drift"
FROZEN, UPDATED, MOMENTUM0 = ({"bn_perturbed": m} for m in ("frozen", "updated", "momentum0"))
ARMS = {"frozen": "frozen (the fix)", "updated": "updated (no fix)",
        "momentum0": "momentum 0 (davda54's fix)"}
DELTA_ACC = 0.003   # 0.3 pp: the book's δ for an accuracy difference
DRIFT_DELTA = math.log(1.1)   # ×1.1: the book's δ for a ratio
METRICS = {"test_acc": "final_test_acc", "drift_mean": "bn_drift_mean",
           "drift_var": "bn_drift_var"}


def analyze(runs: pd.DataFrame) -> Analysis:
    runs = ensure_columns(runs, [*METRICS.values(), "final_train_loss_running"])
    acc = paired_table(runs, "final_test_acc", FROZEN, UPDATED, by=[])
    drift = paired_table(runs, "bn_drift_mean", UPDATED, FROZEN, by=[], log=True)
    claims = [
        Claim("fix", "Without the fix, SAM's test accuracy (eval mode) is lower", SOURCE,
              effect_at(acc), DELTA_ACC, "0.3 pp, the book's δ for accuracy; the post gives "
              "no size"),
        Claim("drift", "Without the fix, the running means drift further from those of the "
              "model's weights", SOURCE, effect_at(drift), DRIFT_DELTA,
              "×1.1, the book's δ for a ratio", unit="ratio"),
    ]
    return Analysis({"arms": arm_table(runs), "paired": paired_view(runs),
                     "per_seed": per_seed(runs)}, claims, _facts(runs))


def per_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: its arm, seed, eval-mode test accuracy and running-mean drift
    (the `dvc plots` view: one colour per arm)."""
    ok = runs[runs["status"] == "ok"]
    return pd.DataFrame({"arm": ok["bn_perturbed"].map(ARMS), "seed": ok["seed"],
                         "test_acc": ok["final_test_acc"],
                         "drift_mean": ok["bn_drift_mean"]}).sort_values(
        ["arm", "seed"]).reset_index(drop=True)


def arm_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm: finished runs, and the mean and 95% CI half-width of eval-mode test accuracy
    and of the running statistics' relative distance from the final weights' own."""
    from samkit.analysis import stats
    rows = []
    for arm, label in ARMS.items():
        g = runs[runs["bn_perturbed"] == arm] if "bn_perturbed" in runs else runs.iloc[:0]
        ok = g[g["status"] == "ok"]
        row = {"arm": label, "runs": len(g), "finished": len(ok)}
        for name, col in METRICS.items():
            e = stats.mean_effect(ok[col])
            row[name], row[f"{name}_ci"] = e.estimate, (e.high - e.low) / 2
        rows.append(row)
    return pd.DataFrame(rows)


def paired_view(runs: pd.DataFrame) -> pd.DataFrame:
    """The seed-paired comparisons, signed as the claims are: accuracy as pp differences (the
    fix minus no fix; momentum 0 minus the fix), drift as a log ratio (no fix over the fix)."""
    acc = paired_table(runs, "final_test_acc", FROZEN, UPDATED, by=[])
    drift = paired_table(runs, "bn_drift_mean", UPDATED, FROZEN, by=[], log=True)
    m0 = paired_table(runs, "final_test_acc", MOMENTUM0, FROZEN, by=[])
    return pd.concat([acc.assign(comparison="frozen - updated, test accuracy"),
                      m0.assign(comparison="momentum 0 - frozen, test accuracy"),
                      drift.assign(comparison="log(updated / frozen), running-mean drift")],
                     ignore_index=True)[["comparison", *PAIRED_COLUMNS]]


def _facts(runs: pd.DataFrame) -> dict:
    """Whether the arms took the same steps (identical training loss, seed by seed) and how
    far momentum 0 is from the fix."""
    ok = runs[runs["status"] == "ok"]
    wide = ok.pivot_table(index="seed", columns="bn_perturbed",
                          values=["final_train_loss_running", "final_test_acc"],
                          aggfunc="first") if len(ok) else pd.DataFrame()

    def same(col, a, b):
        if (col, a) not in wide or (col, b) not in wide:
            return "n/a"
        both = wide[[(col, a), (col, b)]].dropna()
        if both.empty:
            return "n/a"
        equal = int((both[(col, a)] == both[(col, b)]).sum())
        return f"{equal} of {len(both)}"

    m0 = "n/a"
    if ("final_test_acc", "momentum0") in wide and ("final_test_acc", "frozen") in wide:
        d = (wide[("final_test_acc", "momentum0")] - wide[("final_test_acc", "frozen")]).dropna()
        m0 = fmt.pp(float(np.abs(d).max())) if len(d) else "n/a"
    return {"status": status_line(runs),
            "same_steps": same("final_train_loss_running", "frozen", "updated"),
            "momentum0_same_steps": same("final_train_loss_running", "frozen", "momentum0"),
            "momentum0_same_acc": same("final_test_acc", "frozen", "momentum0"),
            "momentum0_max_diff": m0}
