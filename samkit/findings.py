"""Numbers and verdicts for the book's prose, computed from a study's tables.

The notebooks glue these strings into their text, so every number and every "supports /
contradicts" on a page comes from the runs, never from a hand-typed sentence.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def pp(mean: float, ci: float | None = None) -> str:
    """A fraction as signed percentage points with its 95% CI: '+0.84 pp (±0.31)'."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    s = f"{100 * mean:+.2f} pp"
    return s + (f" (95% CI ±{100 * ci:.2f})" if ci is not None and np.isfinite(ci) else "")


def pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.2f}%"


def trend(table: pd.DataFrame, x: str, y: str = "gain") -> dict:
    """How ``y`` moves with ``x`` (log-scale): Spearman r over the group means, the first and
    last points with their CIs, and a verdict on "y grows with x"."""
    t = table.dropna(subset=[y]).sort_values(x)
    if len(t) < 2:
        return {"verdict": "cannot test", "spearman": float("nan"), "first": pp(np.nan),
                "last": pp(np.nan), "n_points": len(t)}
    r = float(stats.spearmanr(t[x], t[y]).statistic) if t[y].nunique() > 1 else 0.0
    first, last = t.iloc[0], t.iloc[-1]
    last_lo = last[y] - np.nan_to_num(last.get("ci95", np.nan), nan=np.inf)
    first_hi = first[y] + np.nan_to_num(first.get("ci95", np.nan), nan=np.inf)
    last_hi = last[y] + np.nan_to_num(last.get("ci95", np.nan), nan=np.inf)
    if r >= 0.5 and last[y] > first[y] and last_lo > 0:
        verdict = "supports"
    elif r <= -0.5 and last[y] < first[y] and last_hi < first_hi:
        verdict = "contradicts"
    else:
        verdict = "does not clearly support"
    return {"verdict": verdict, "spearman": round(r, 2), "n_points": len(t),
            "first_x": _num(first[x]), "last_x": _num(last[x]),
            "first": pp(first[y], first.get("ci95")), "last": pp(last[y], last.get("ci95"))}


def argmax_by(df: pd.DataFrame, group: str, over: str, value: str = "mean") -> pd.DataFrame:
    """Per ``group``, the row whose ``value`` is largest (e.g. the best rho per width)."""
    ok = df.dropna(subset=[value])
    return ok.loc[ok.groupby(group)[value].idxmax()].reset_index(drop=True)


def _num(v):
    return v.item() if hasattr(v, "item") else v
