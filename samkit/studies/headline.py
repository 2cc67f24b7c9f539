"""Headline: the blog's table. Does SAM with half the epochs beat SGD, with a smaller gap?"""
from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pandas as pd

from samkit.analysis import fmt, stats
from samkit.analysis.claims import Analysis, Claim, SourceEffect

NAME = "headline"
TITLE = "Headline: SAM at equal compute, the blog's table"
QUESTION = "At equal gradient evaluations, does SAM beat SGD, with a smaller train-test gap?"
PART, POSITION = "Headline", 1  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "final test accuracy per arm vs epochs",
        "template": "percent",
        "table": "vs_blog",
        "x": "epochs",
        "y": "test_acc",
        "x_label": "epochs",
        "y_label": "test accuracy (%)"}
SOURCE = "blog (seed 000), Fashion-MNIST PreActResNet18 table"
# The blog's table (seed 000): PreActResNet18 (width 64) on Fashion-MNIST, batch 128, rho 0.05.
BLOG_TABLE = pd.DataFrame([
    {"arm": "SGD 300 ep", "optimizer": "sgd", "blog_epochs": 300, "blog_test_acc": 0.920,
     "blog_gap": 0.068},
    {"arm": "SAM 150 ep", "optimizer": "sam", "blog_epochs": 150, "blog_test_acc": 0.925,
     "blog_gap": 0.023},
    {"arm": "SAM 200 ep", "optimizer": "sam", "blog_epochs": 200, "blog_test_acc": 0.927,
     "blog_gap": 0.030},
])
SGD300 = {"tag": "SGD 300 ep"}
# Accuracy: 0.3 pp (the blog's own margins are 0.5 and 0.7 pp). Gap: 1 pp; the blog reports
# 4.5 pp less gap ("much smaller"), so a difference under 1 pp would not be its effect.
DELTA_ACC, DELTA_GAP = 0.003, 0.01


def analyze(runs: pd.DataFrame) -> Analysis:
    table = vs_blog(runs)
    claims = []
    for arm in ("SAM 150 ep", "SAM 200 ep"):
        key = arm.split()[1]
        claims += [
            Claim(f"sam{key}_acc", f"SAM {key} ep beats SGD 300 ep in test accuracy", SOURCE,
                  _paired(runs, "final_test_acc", arm), DELTA_ACC,
                  "0.3 pp; the blog's margins are 0.5-0.7 pp",
                  source_effect=_blog(arm, "blog_test_acc")),
            Claim(f"sam{key}_gap", f"SAM {key} ep has a smaller train-test gap than SGD 300 ep",
                  SOURCE, _paired(runs, "final_gap", arm), DELTA_GAP,
                  "1 pp; the blog reports 4.5 pp less gap", direction=-1,
                  source_effect=_blog(arm, "blog_gap")),
        ]
    return Analysis({"vs_blog": table}, claims, _arm_facts(table))


def _blog(arm: str, column: str) -> SourceEffect:
    """The blog's own difference, ``arm`` − SGD 300 ep, of one of its table's columns."""
    t = BLOG_TABLE.set_index("arm")[column]
    return SourceEffect(float(t[arm] - t["SGD 300 ep"]),
                        "the blog's table, PreActResNet18 width 64, 60k images")


def _paired(runs, metric, arm) -> stats.Effect:
    t = stats.paired(runs, metric, {"tag": arm}, SGD300)
    if t.empty:
        return stats.NO_EFFECT
    r = t.iloc[0]
    return stats.Effect(r["estimate"], r["low"], r["high"], int(r["n"]), r["sd"])


def vs_blog(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm: our epochs, final test accuracy and gap (means, 95% CI half-widths), the
    blog's numbers, finished and diverged runs; rows in the blog's order."""
    rows = []
    for arm in BLOG_TABLE["arm"]:
        g = runs[runs["tag"] == arm]
        ok = g[g["status"] == "ok"]
        row = {"arm": arm, "epochs": int(g["epochs"].iloc[0]) if len(g) else np.nan,
               "n": len(ok), "diverged": int((g["status"] == "diverged").sum()),
               "unfit": int((g["status"] == "unfit").sum())}
        for col, metric in (("test_acc", "final_test_acc"), ("gap", "final_gap")):
            e = stats.mean_effect(ok[metric]) if metric in ok else stats.NO_EFFECT
            row[col], row[f"{col}_ci"] = e.estimate, (e.high - e.low) / 2
        rows.append(row)
    return BLOG_TABLE.merge(pd.DataFrame(rows), on="arm")


def _arm_facts(table: pd.DataFrame) -> dict:
    facts = {}
    for _, r in table.iterrows():
        ok = np.isfinite(r["epochs"])
        scale = Fraction(int(r["epochs"]), int(r["blog_epochs"])) if ok else None
        facts[fmt_slug(r["arm"])] = {
            "epochs": int(r["epochs"]) if ok else "n/a",
            "scale": "n/a" if scale is None else str(scale),
            "test_acc": _pct_ci(r["test_acc"], r["test_acc_ci"]),
            "gap": _pct_ci(r["gap"], r["gap_ci"]), "blog_test_acc": fmt.pct(r["blog_test_acc"]),
            "blog_gap": fmt.pct(r["blog_gap"]), "n": int(r["n"]), "diverged": int(r["diverged"])}
    return facts


def _pct_ci(mean, half) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return fmt.pct(mean) + (f" ± {100 * half:.2f}" if np.isfinite(half) else "")


def fmt_slug(value) -> str:
    """'SGD 300 ep' -> 'sgd_300_ep' (a glue-key-safe name)."""
    s = "".join(c if c.isalnum() else "_" for c in str(value).lower())
    return "_".join(p for p in s.split("_") if p)


def gpu_rows(root: str = "results") -> pd.DataFrame | None:
    """The gpu profile's table when results/gpu/headline holds one (from a GPU harvest)."""
    path = os.path.join(root, "gpu", NAME, "vs_blog.csv")
    return pd.read_csv(path) if os.path.exists(path) else None
