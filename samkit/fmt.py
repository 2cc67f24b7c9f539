"""Numbers as the book's prose shows them (percentage points, ratios, CIs)."""
from __future__ import annotations

import math


def _ok(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def pct(x) -> str:
    """A fraction as a percentage: 0.9234 -> '92.34%'."""
    return f"{100 * x:.2f}%" if _ok(x) else "n/a"


def rate(p) -> str:
    """A rate set in a config, as short as it was written: 0.4 -> '40%', 0.05 -> '5%'."""
    return f"{100 * p:g}%"


def pp(est, low=None, high=None) -> str:
    """A difference of fractions in percentage points with its CI: '+0.84 pp [+0.31, +1.37]'."""
    if not _ok(est):
        return "n/a"
    s = f"{100 * est:+.2f} pp"
    return s + (f" [{100 * low:+.2f}, {100 * high:+.2f}]" if _ok(low) and _ok(high) else "")


def ratio(log_est, log_low=None, log_high=None) -> str:
    """A ratio from its log and log-CI: '0.34× [0.31, 0.37]'."""
    if not _ok(log_est):
        return "n/a"
    s = f"{math.exp(log_est):.2f}×"
    if _ok(log_low) and _ok(log_high):
        s += f" [{math.exp(log_low):.2f}, {math.exp(log_high):.2f}]"
    return s


def num(x, digits: int = 3) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def effect_table(table, keys: list[str], rename: dict | None = None, ratio_: bool = False,
                 levels: tuple = ("treatment", "control"), level_names=("SAM", "SGD")):
    """A display table of paired effects: the ``keys`` columns, both sides' mean test
    accuracy (%), the effect with its 95% CI, seed pairs and diverged pairs; no index."""
    import pandas as pd
    rows = []
    for _, r in table.iterrows():
        row = {(rename or {}).get(k, k): (f"{r[k]:,}" if k == "params" else r[k]) for k in keys}
        for col, name in zip(levels, level_names):
            if col in r:
                row[name + (" (mean)" if ratio_ else " acc (%)")] = (
                    num(float(r[col])) if ratio_ else f"{100 * r[col]:.2f}")
        row["effect [95% CI]"] = (ratio(r["estimate"], r["low"], r["high"]) if ratio_
                                  else pp(r["estimate"], r["low"], r["high"]))
        row["seed pairs"] = int(r["n"])
        row["diverged"] = int(r["diverged"])
        rows.append(row)
    return pd.DataFrame(rows).style.hide(axis="index")
