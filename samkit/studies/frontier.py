"""What does SAM cost? Cheaper SAM variants and the equal-compute frontier.

Every method is placed by what it costs, its gradient evaluations (forward+backward passes,
counted by the trainer; derived exactly from the config for runs stored before it counted),
and what it gives, test accuracy. Methods: SGD at 1x, 1.5x and 2x the epochs; SAM (two passes
per step); SAM's ascent on one step in k (``sam_interval``; Composer's SAM); LookSAM (Liu et
al., CVPR 2022); Momentum-SAM (Becker et al., 2023). A method is named from its config, not
its tag, so runs shared with other studies (under their tags) are recognised.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from samkit.analysis import fmt, stats
from samkit.train.config import KEY_OMITTED_AT_DEFAULT
from samkit.analysis.claims import Analysis, Claim
from samkit.analysis.effects import effect_at, ensure_columns, paired_table
from samkit.analysis.regime import status_line
# The page's figure and table: the notebook calls them as frontier.figure/display_table.
from samkit.analysis.frontier_view import display_table, figure  # noqa: F401

NAME = "frontier"
TITLE = "What does SAM cost? Cheaper SAM variants and the equal-compute frontier"
QUESTION = ("Per gradient evaluation, which of SGD with more epochs, SAM and its cheaper "
            "variants gives the best test accuracy?")
PART, POSITION = "Cost and method", 1  # its page in the book: part and place in it
# its `dvc plots show` view: one column of one of its tables
PLOT = {"title": "test accuracy vs gradient evaluations (relative to SGD 1x), every method and cell",
        "template": "percent",
        "table": "methods",
        "x": "budget",
        "y": "acc",
        "x_label": "gradient evaluations (× SGD 1×)",
        "y_label": "test accuracy (%)"}
METRIC = "best_test_acc"  # test accuracy at the epoch of best validation accuracy
EVALS = "grad_evals"      # forward+backward passes of the training steps
TIME = "train_seconds"    # training only: no data loading, evaluation or checkpoints
CELL = ["width", "label_noise"]
# The methods the claims compare (names as ``method_name`` gives them).
SGD_1X, SGD_2X, SAM, SAM_K5 = "SGD 1×", "SGD 2×", "SAM", "SAM every 5"
LOOKSAM, MSAM = "LookSAM (k 5)", "Momentum-SAM"
REFERENCES = (SAM, SGD_2X)  # every method's seed-paired difference to these two
# Smallest effect worth having: 0.3 pp, as in the other studies (the paper's smallest reported
# gains are 0.2-2 pp; 3 test images in 1,000).
DELTA = 0.003
DELTA_REASON = "0.3 pp: the paper's smallest reported gains are 0.2-2 pp"
SOURCES = {"sam_vs_sgd2x": "Shin et al. App. E.4; Foret et al. (two passes per step)",
           "sam_k5_vs_sam": "MosaicML Composer's SAM (interval); Liu et al. 2022 (Sec. 3)",
           "looksam_vs_sam_k5": "Liu et al., CVPR 2022 (LookSAM)",
           "msam_vs_sgd": "Becker et al. 2023 (Momentum-SAM)"}
# The page quotes the final training accuracy range, which regime() leaves out when no run
# finished: "n/a" unless regime() fills it in.
NO_FINISHED_RUN = {"final_train_acc_min": "n/a", "final_train_acc_max": "n/a"}
# A stored config leaves out sam_interval and looksam_alpha at these values (NaN in the table).
DEFAULT_INTERVAL = KEY_OMITTED_AT_DEFAULT["sam_interval"]
DEFAULT_ALPHA = KEY_OMITTED_AT_DEFAULT["looksam_alpha"]
TABLE_COLUMNS = [*CELL, "method", "optimizer", "grad_evals", "budget", "train_seconds",
                 "time_ratio", "acc", "acc_low", "acc_high", "n", "diverged",
                 *[f"vs_{r}{s}" for r in ("sam", "sgd2x") for s in ("", "_low", "_high", "_n")],
                 "frontier"]


def method_name(optimizer: str, interval, epochs, base_epochs, alpha=None) -> str:
    """'SGD 2×', 'SAM', 'SAM every 5', 'ASAM every 2', 'LookSAM (k 5)', 'Momentum-SAM', with
    ' 1.5×' appended to a SAM-family method trained for other than the base epochs."""
    k = DEFAULT_INTERVAL if interval is None or pd.isna(interval) else int(interval)
    scale = f"{epochs / base_epochs:g}×"
    if optimizer == "sgd":
        return f"SGD {scale}"
    if optimizer in ("sam", "asam"):
        name = optimizer.upper() + (f" every {k}" if k > 1 else "")
    elif optimizer == "looksam":
        a = DEFAULT_ALPHA if alpha is None or pd.isna(alpha) else float(alpha)
        name = f"LookSAM (k {k}" + (f", α {a:g}" if a != DEFAULT_ALPHA else "") + ")"
    elif optimizer == "msam":
        name = "Momentum-SAM"
    else:
        name = optimizer
    return name if epochs == base_epochs else f"{name} {scale}"


def with_methods(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with a ``method`` column. Runs stored before ``sam_interval`` and
    ``looksam_alpha`` existed lack them (NaN): they held the defaults. The base epochs are the
    fewest any run of the table trains for."""
    runs = ensure_columns(runs, ("sam_interval", "looksam_alpha"))
    base = runs["epochs"].min() if len(runs) else 1
    names = [method_name(r.optimizer, r.sam_interval, r.epochs, base, r.looksam_alpha)
             for r in runs[["optimizer", "sam_interval", "epochs", "looksam_alpha"]]
             .itertuples()]
    out = runs.assign(method=names)
    dup = out.duplicated([*CELL, "method", "seed"])
    if dup.any():
        r = out[dup].iloc[0]
        raise ValueError(f"frontier: two runs of method {r['method']!r} at width {r['width']}, "
                         f"label noise {r['label_noise']}, seed {r['seed']} (e.g. two rho "
                         "values); allowed: one run per method, cell and seed")
    return out


def analyze(runs: pd.DataFrame) -> Analysis:
    runs = with_methods(ensure_columns(runs, (METRIC, EVALS, TIME)))
    paired = pd.concat(
        [paired_table(runs, METRIC, {"method": m}, {"method": ref}, by=CELL)
         .assign(method=m, reference=ref)
         for ref in REFERENCES for m in sorted(runs["method"].unique()) if m != ref]
        or [pd.DataFrame(columns=[*CELL, "method", "reference"])], ignore_index=True)
    table = methods_table(runs, paired)
    claims, facts = [], {**NO_FINISHED_RUN, "status": status_line(runs),
                         "delta_shown": f"{100 * DELTA:.2f} pp"}
    cells = cell_names(runs)
    for (w, p), cell in cells.items():
        t = table[(table["width"] == w) & (table["label_noise"] == p)]
        claims += _cell_claims(runs, cell, w, p)
        facts[cell] = _cell_facts(t, w, p)
    facts["frontier_each"] = "; ".join(
        f"width {w}, noise {fmt.rate(p)}: {facts[c]['frontier']}" for (w, p), c in cells.items())
    facts["cheapest_each"] = "; ".join(
        f"width {w}, noise {fmt.rate(p)}: {facts[c]['cheapest_within_delta']}"
        for (w, p), c in cells.items())
    facts["cells"] = ", ".join(cells.values())
    facts["cost"] = cost_line(table)
    facts["looksam_alpha"] = looksam_alpha_line(runs)
    return Analysis({"methods": table, "paired": paired}, claims, facts)


def cell_names(runs: pd.DataFrame) -> dict:
    """{(width, label noise): name} for every cell, named by rank so that the claim ids (and
    the front page's advice) do not depend on the profile's widths: narrow/wide (other widths:
    w<width>) and clean (noise 0)/noisy (the highest noise; others: noise<percent>)."""
    widths = sorted(runs["width"].unique())
    noises = sorted(runs["label_noise"].unique())
    out = {}
    for w in widths:
        wn = "wide" if w == widths[-1] else "narrow" if w == widths[0] else f"w{w}"
        for p in noises:
            pn = "clean" if p == 0 else "noisy" if p == noises[-1] else f"noise{100 * p:g}"
            out[(w, p)] = f"{wn}_{pn}"
    return out


def _cell_claims(runs, cell, w, p) -> list[Claim]:
    """The four comparisons of one cell; only SAM vs SGD 2x (the answer at equal compute) is a
    `dvc exp show` column, so that an experiment fits a terminal."""
    where = f"width {w}, label noise {fmt.rate(p)}"
    runs = runs[(runs["width"] == w) & (runs["label_noise"] == p)]

    def effect(t, c):
        return effect_at(paired_table(runs, METRIC, {"method": t}, {"method": c}, by=CELL),
                         width=w, label_noise=p)
    return [
        Claim(f"{cell}.sam_vs_sgd2x", f"SAM beats SGD trained for twice the epochs, at equal "
              f"gradient evaluations ({where})", SOURCES["sam_vs_sgd2x"],
              effect(SAM, SGD_2X), DELTA, DELTA_REASON),
        Claim(f"{cell}.sam_k5_vs_sam", "SAM's ascent on only one step in 5 (1.2× SGD's "
              f"gradient evaluations instead of 2×) costs test accuracy against SAM ({where}); "
              "'contradicts' means no loss worth having: the cheap SAM keeps SAM's accuracy "
              "within ±0.3 pp or does better", SOURCES["sam_k5_vs_sam"],
              effect(SAM_K5, SAM), DELTA, DELTA_REASON, direction=-1, dvc_metric=False),
        Claim(f"{cell}.looksam_vs_sam_k5", "LookSAM (k 5) beats SAM every 5 steps at the same "
              f"gradient evaluations: reusing the last SAM gradient's orthogonal component pays "
              f"({where})", SOURCES["looksam_vs_sam_k5"], effect(LOOKSAM, SAM_K5), DELTA,
              DELTA_REASON, dvc_metric=False),
        Claim(f"{cell}.msam_vs_sgd", "Momentum-SAM beats SGD at the same gradient evaluations "
              f"(one pass per step; {where})", SOURCES["msam_vs_sgd"], effect(MSAM, SGD_1X),
              DELTA, DELTA_REASON, dvc_metric=False),
    ]


def methods_table(runs: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """Per (width, label noise, method): mean gradient evaluations and their ratio to SGD 1×'s
    (``budget``), mean training seconds and their ratio to SGD 1×'s, test accuracy (mean and
    95% CI), finished and diverged runs, the seed-paired difference to SAM and to SGD 2× (with
    CI and pairs), and whether the method is on the cell's Pareto frontier. Rows by cell, then
    by gradient evaluations."""
    rows = []
    for (w, p), cell in runs.groupby(CELL, sort=True):
        means = {m: _method_row(w, p, m, g, paired)
                 for m, g in cell.groupby("method", sort=True)}
        _place_in_cell(means)
        rows += means.values()
    if not rows:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    table = pd.DataFrame(rows)[TABLE_COLUMNS]
    return table.sort_values([*CELL, "grad_evals", "method"], ignore_index=True)


def _method_row(w, p, m, g: pd.DataFrame, paired: pd.DataFrame) -> dict:
    """One method's row of one cell, from its runs ``g``: all but the cell-relative columns
    (``_place_in_cell`` adds those)."""
    ok = g[g["status"] == "ok"]
    src = ok if len(ok) else g  # the planned budget when no run finished
    acc = stats.mean_effect(ok[METRIC])
    row = {"width": w, "label_noise": p, "method": m, "optimizer": g["optimizer"].iloc[0],
           "grad_evals": _mean(src[EVALS]), "train_seconds": _mean(ok[TIME]),
           "acc": acc.estimate, "acc_low": acc.low, "acc_high": acc.high,
           "n": len(ok), "diverged": len(g) - len(ok)}
    for ref, col in ((SAM, "vs_sam"), (SGD_2X, "vs_sgd2x")):
        e = (effect_at(paired[paired["reference"] == ref], width=w, label_noise=p, method=m)
             if m != ref and len(paired) else stats.NO_EFFECT)
        row.update({col: e.estimate, f"{col}_low": e.low, f"{col}_high": e.high,
                    f"{col}_n": e.n})
    return row


def _place_in_cell(means: dict) -> None:
    """Add each row's cost relative to SGD 1× (else the cheapest method) of its cell, and
    whether it is on the cell's Pareto frontier."""
    base = means.get(SGD_1X) or min(means.values(), key=lambda r: _nan_last(r["grad_evals"]))
    front = set(pareto([(r["method"], r["grad_evals"], r["acc"])
                        for r in sorted(means.values(), key=_simplest_first)]))
    for r in means.values():
        r["budget"] = r["grad_evals"] / base["grad_evals"]
        r["time_ratio"] = r["train_seconds"] / base["train_seconds"]
        r["frontier"] = r["method"] in front


def pareto(points) -> list[str]:
    """Names of the (name, cost, value) points no other point beats: none costs at most as much
    and gives at least as much, one of the two strictly. In order of cost; of points equal in
    both, the first given. NaN is no point."""
    pts = sorted((c, -v, i, n) for i, (n, c, v) in enumerate(points)
                 if np.isfinite(c) and np.isfinite(v))
    front, best = [], -np.inf
    for c, neg_v, _, n in pts:  # cheapest first; at equal cost the best first
        if -neg_v > best:
            front.append(n)
            best = -neg_v
    return front


def _simplest_first(r) -> tuple:
    """Ties in cost and accuracy go to SGD, then the SAM family, by name."""
    return (r["optimizer"] != "sgd", r["method"])


def _cell_facts(t: pd.DataFrame, w, p) -> dict:
    """The prose's numbers of one cell: its frontier from the cheapest method up, the cheapest
    method within δ of the best mean accuracy, the best. Within δ counts as as good: at equal
    cost plain SGD is preferred to a SAM variant whose mean is higher by less than δ."""
    ok = t[np.isfinite(t["acc"].astype(float))]
    front = ok[ok["frontier"]].sort_values("grad_evals")
    facts = {"width": int(w), "noise": fmt.rate(p),
             "frontier": " → ".join(_point(r) for _, r in front.iterrows()) or "n/a",
             "frontier_budgets": _budgets(front),
             "best": "n/a", "cheapest_within_delta": "n/a", "cheapest_method": "n/a"}
    if len(ok):
        best = ok.loc[ok["acc"].idxmax()]
        near = ok[ok["acc"] >= best["acc"] - DELTA].assign(
            _sgd=ok["optimizer"] != "sgd").sort_values(["grad_evals", "_sgd", "acc", "method"],
                                                       ascending=[True, True, False, True])
        cheap = near.iloc[0]
        facts.update(best=_point(best), cheapest_within_delta=_point(cheap),
                     cheapest_method=cheap["method"])
    return facts


def _budgets(front: pd.DataFrame) -> str:
    """Which method the frontier offers at each budget: 'up to 1.2×: SAM every 5'."""
    parts = []
    for i, (_, r) in enumerate(front.iterrows()):
        nxt = front.iloc[i + 1]["budget"] if i + 1 < len(front) else None
        span = (f"from {r['budget']:.2f}× to below {nxt:.2f}×" if nxt is not None
                else f"from {r['budget']:.2f}× up")
        parts.append(f"{span}: {r['method']}")
    return "; ".join(parts) or "n/a"


def _point(r) -> str:
    return f"{r['method']} ({_budget(r['budget'])}, {fmt.pct(float(r['acc']))})"


def _budget(b) -> str:
    return f"{b:.2f}× SGD's evaluations" if np.isfinite(b) else "n/a"


def looksam_alpha_line(runs: pd.DataFrame) -> str:
    """Per cell, every LookSAM α the runs hold: mean test accuracy and mean final training
    accuracy over its finished runs (and how many diverged). The training accuracy tells a
    reuse that fails to train (the loss climbs from the first epoch) from one that overfits."""
    look = ensure_columns(runs[runs["optimizer"] == "looksam"], ("final_train_acc",))
    if look.empty:
        return "n/a"
    look = look.assign(alpha=look["looksam_alpha"].fillna(DEFAULT_ALPHA))
    cells = []
    for (w, p), c in look.groupby(CELL):
        parts = []
        for a, r in c.groupby("alpha"):
            ok = r[r["status"] == "ok"]
            lost = len(r) - len(ok)
            parts.append(f"α {a:g}: {fmt.pct(_mean(ok[METRIC]))} test, "
                         f"{fmt.pct(_mean(ok['final_train_acc']))} train"
                         + (f" ({lost} of {len(r)} diverged)" if lost else ""))
        cells.append(f"width {w}, noise {fmt.rate(p)}: " + "; ".join(parts))
    return " | ".join(cells)


def cost_line(table: pd.DataFrame) -> str:
    """Per method, over all cells: mean gradient-evaluation budget and mean measured training
    time, both relative to SGD 1× of the same cell."""
    if table.empty:
        return "n/a"
    means = (table.groupby("method")[["budget", "time_ratio"]].mean().reset_index()
             .sort_values(["budget", "time_ratio", "method"], na_position="last"))
    return "; ".join(f"{r.method}: {r.budget:.2f}× the evaluations, "
                     + (f"{r.time_ratio:.2f}× the training time" if np.isfinite(r.time_ratio)
                        else "time n/a") for r in means.itertuples())


def _mean(s: pd.Series) -> float:
    v = pd.to_numeric(s, errors="coerce").astype(float)
    return float(v.mean()) if v.notna().any() else float("nan")


def _nan_last(x) -> float:
    return x if np.isfinite(x) else np.inf
