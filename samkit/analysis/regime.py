"""A study's runs described for its page: the scale it ran at and how many runs finished."""
from __future__ import annotations

import pandas as pd

from samkit.measure import fit
from samkit.analysis import fmt


def regime(runs: pd.DataFrame) -> dict:
    """The scale of a study in numbers, for its page: training images, epochs, seeds, the
    final training accuracy reached (lowest and highest over the finished runs)."""
    ok = runs[runs["status"] == "ok"]
    out = {"runs": len(runs), "diverged": int((runs["status"] == "diverged").sum()),
           "unfit": int((runs["status"] == "unfit").sum()), "fit_rule": fit.RULE,
           "seeds": int(runs["seed"].nunique()),
           "epochs": ", ".join(str(e) for e in sorted(runs["epochs"].unique()))}
    names = {"mlp": "MLP", "preact_resnet18": "PreAct ResNet-18", "one_hidden_relu":
             "one-hidden-layer ReLU net"}
    models = []
    for model, g in runs.groupby("model", sort=True):
        depth = (f" with {int(g['depth'].iloc[0])} hidden layers"
                 if model == "mlp" and "depth" in g else "")
        lo, hi = int(g["width"].min()), int(g["width"].max())
        models.append(f"{names.get(model, model)}{depth}, width "
                      + (f"{lo}" if lo == hi else f"{lo} to {hi}"))
    out["models"] = "; ".join(models)
    if "n_train" in runs:  # 0: the whole training set (less the validation split)
        out["train_images"] = ", ".join(f"{int(n):,}" if n else "all"
                                        for n in sorted(runs["n_train"].unique()))
    acc = ok["final_train_acc"].dropna() if "final_train_acc" in ok else ok.iloc[:0, :0]
    out["final_train_acc_min"] = fmt.pct(float(acc.min())) if len(acc) else "n/a"
    out["final_train_acc_max"] = fmt.pct(float(acc.max())) if len(acc) else "n/a"
    return out


def history(runs: pd.DataFrame, cache: str = "results/runs",
            keep: tuple = ("model", "width", "optimizer", "seed", "tag")) -> pd.DataFrame:
    """The stored per-epoch history of every finished run as one long table (one row per run
    and evaluated epoch), with the ``keep`` columns of its run."""
    from samkit.sweep.store import load_result
    frames = []
    for _, row in runs[runs["status"] == "ok"].iterrows():
        h = pd.DataFrame(load_result(row["key"], cache)["history"])
        for c in keep:
            if c in row:
                h[c] = row[c]
        frames.append(h)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def status_line(runs: pd.DataFrame) -> str:
    """How many runs finished and fit, in words, for a page's prose (says so when none did)."""
    n = len(runs)
    diverged = int((runs["status"] == "diverged").sum())
    unfit = int((runs["status"] == "unfit").sum())
    if n == 0:
        return "there are no runs, so nothing can be compared and every verdict is cannot tell"
    if diverged + unfit == 0:
        return f"all {fmt.count(n, 'run')} finished and fit their training set"
    if diverged == n:
        return (f"all {fmt.count(n, 'run')} diverged, so nothing can be compared and every "
                "verdict is cannot tell")
    if diverged + unfit == n:
        return (f"none of the {fmt.count(n, 'run')} finished and fit its training set, so "
                "nothing can be compared and every verdict is cannot tell")
    parts = [f"{diverged} diverged"] * bool(diverged) + [f"{unfit} failed to fit"] * bool(unfit)
    first, _, rest = " and ".join(parts).partition(" ")  # "1 of 54 runs diverged and 2 ..."
    return (f"{first} of {fmt.count(n, 'run')} {rest}; a seed pair with such a side is left out "
            "of the effects and counted in the tables")
