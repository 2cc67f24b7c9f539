"""ASAM, and SAM on Adam: does the adaptive variant beat SAM, and does SAM help Adam?

Kwon et al. (2021) scale ASAM's neighbourhood by |w| + η, so its ρ lives on another scale than
SAM's (they use ρ about ten times SAM's); each is tuned on its own scale here. The blog's advice
"try SAM with Adam" is tested as Adam vs SAM wrapping Adam. Every arm gets the same number of
trials from its own search space (SGD and Adam: the learning rate; SAM, ASAM and SAM(Adam): ρ),
chosen per seed on validation accuracy and reported on test, at a narrow and a wide MLP.
"""
from __future__ import annotations

import pandas as pd

from samkit.analysis import stats
from samkit.analysis.effects import (PAIRED_COLUMNS, REPORT_CHOSEN, effect_at, ensure_columns,
                                     select_trials, trials_per_arm)
from samkit.analysis.claims import Analysis, Claim
from samkit.analysis.regime import status_line

NAME = "asam_adam"
TITLE = "ASAM, and SAM on Adam"
QUESTION = "Does ASAM beat SAM, and does SAM improve Adam?"
PART, POSITION = "Sources' other claims", 3  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "tuned differences vs width, one colour per comparison and noise rate",
        "template": "pp_vs_log2",
        "table": "gains",
        "x": "width",
        "y": "estimate",
        "x_label": "width (log2 axis)",
        "y_label": "difference in test accuracy (pp)"}
CELL = ["width", "label_noise"]
COMPARISONS = {  # claim id: (treatment tag, control tag, text, source)
    "asam_vs_sam": ("ASAM", "SAM", "ASAM (tuned ρ) beats SAM (tuned ρ)",
                    "Kwon et al. 2021: ASAM improves on SAM"),
    "sam_adam_vs_adam": ("SAM(Adam)", "Adam", "SAM wrapping Adam beats Adam",
                         "the blog (seed 000): try SAM with Adam"),
    "asam_vs_sgd": ("ASAM", "SGD", "ASAM (tuned ρ) beats SGD (tuned lr)",
                    "Kwon et al. 2021"),
}
DELTA = 0.003
DELTA_REASON = "0.3 pp, the book's δ for an accuracy difference"


def analyze(runs: pd.DataFrame) -> Analysis:
    runs = ensure_columns(runs, ["best_val_acc", REPORT_CHOSEN])
    chosen = select_trials(runs, CELL)
    gains = _gains(chosen)
    claims = []
    cells = sorted(set(map(tuple, chosen[CELL].to_numpy()))) if len(chosen) else []
    widest = max((w for w, _ in cells), default=None)
    for cid, (t, c, text, source) in COMPARISONS.items():
        for width, noise in cells:
            tag = f"w{int(width)}" + (f"_n{int(round(100 * noise))}" if noise else "")
            where = f"width {int(width)}" + (f", {noise:.0%} label noise" if noise else "")
            claims.append(Claim(f"{cid}.{tag}", f"{text} ({where})", source,
                                effect_at(gains[gains["comparison"] == f"{t} − {c}"],
                                          width=width, label_noise=noise),
                                DELTA, DELTA_REASON, dvc_metric=width == widest and not noise
                                and cid != "asam_vs_sgd"))
    return Analysis({"gains": gains, "chosen": _chosen_table(chosen)}, claims,
                    {"status": status_line(runs), "trials": trials_per_arm(chosen)})


def _gains(chosen: pd.DataFrame) -> pd.DataFrame:
    frames = [stats.paired(chosen, REPORT_CHOSEN, {"tag": t}, {"tag": c}, by=CELL)
              .assign(comparison=f"{t} − {c}") for t, c, _, _ in COMPARISONS.values()]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["comparison", *CELL, *PAIRED_COLUMNS])
    return pd.concat(frames, ignore_index=True)[["comparison", *CELL, *PAIRED_COLUMNS]]


def _chosen_table(chosen: pd.DataFrame) -> pd.DataFrame:
    """Per width and arm: the chosen trials' test accuracy (mean) and how often each setting
    was chosen."""
    rows = []
    for (width, tag), g in chosen.groupby(["width", "tag"], sort=True):
        knob = "lr" if tag in ("SGD", "Adam") else "rho"
        picks = g[knob].value_counts().sort_index()
        rows.append({"width": int(width), "arm": tag,
                     "test_acc": float(g[REPORT_CHOSEN].mean()),
                     "chosen": "; ".join(f"{'lr' if knob == 'lr' else 'ρ'} {v:g} ×{n}"
                                         for v, n in picks.items())})
    return pd.DataFrame(rows, columns=["width", "arm", "test_acc", "chosen"])
