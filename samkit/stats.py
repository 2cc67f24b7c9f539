"""Seed-paired effects, their 95% CIs, and verdicts that can decide (scipy.stats underneath).

Every comparison pairs runs that share a seed (same initialisation, batch order, data subset
and label noise), so seed-to-seed variation cancels. A claim is decided against a smallest
effect of interest δ:

- ``supports``: the 95% CI excludes 0 in the claimed direction;
- ``contradicts``: the CI excludes the claimed direction (lies wholly on the other side of 0),
  or lies inside ±δ (an equivalence test: no effect worth having at this scale);
- ``cannot tell``: otherwise; ``seeds_needed`` says how many seeds would settle it if the
  effect and its spread stay as measured.

Width trends use one rule everywhere: per seed, the least-squares slope of the paired gain on
log2(parameters) (gain per doubling of the model); the slopes' mean and t-interval over seeds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

VERDICTS = ("supports", "contradicts", "cannot tell")
MAX_SEEDS = 1000  # beyond this "seeds needed" is reported as more than MAX_SEEDS


@dataclass(frozen=True)
class Effect:
    """A paired mean difference with its 95% CI; ``values`` are the per-pair differences."""
    estimate: float
    low: float
    high: float
    n: int
    sd: float

    def as_dict(self) -> dict:
        return asdict(self)


NO_EFFECT = Effect(float("nan"), float("nan"), float("nan"), 0, float("nan"))


def mean_effect(values) -> Effect:
    """Mean of per-pair differences with the Student-t 95% CI (scipy's one-sample t-test,
    which for paired differences is ``ttest_rel``). Fewer than 2 pairs: no interval."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return NO_EFFECT
    if len(v) == 1 or np.all(v == v[0]):
        # One pair has no spread to estimate; identical pairs have a zero-width interval.
        half = float("nan") if len(v) == 1 else 0.0
        return Effect(float(v[0]), float(v[0]) - half, float(v[0]) + half, len(v),
                      0.0 if len(v) > 1 else float("nan"))
    ci = stats.ttest_1samp(v, 0.0).confidence_interval(0.95)
    return Effect(float(v.mean()), float(ci.low), float(ci.high), len(v), float(v.std(ddof=1)))


def pairs(runs: pd.DataFrame, metric: str, treatment: dict, control: dict,
          by: list[str] = (), pair_on: str = "seed") -> pd.DataFrame:
    """One row per (``by`` group, seed) with treatment and control values of ``metric`` and
    ``ok`` (both sides finished, not diverged)."""
    by = list(by)
    t, c = _select(runs, treatment), _select(runs, control)
    keep = [*by, pair_on, metric, "status"]
    merged = t[keep].merge(c[keep], on=[*by, pair_on], suffixes=("_t", "_c"))
    merged["ok"] = (merged["status_t"] == "ok") & (merged["status_c"] == "ok")
    merged["diff"] = np.where(merged["ok"], merged[f"{metric}_t"] - merged[f"{metric}_c"],
                              np.nan)
    return merged


def paired(runs: pd.DataFrame, metric: str, treatment: dict, control: dict,
           by: list[str] = (), pair_on: str = "seed", log: bool = False) -> pd.DataFrame:
    """treatment − control of ``metric`` per ``by`` group, paired on ``pair_on``: estimate,
    low, high (95% CI), n pairs, sd, diverged pairs, and both sides' means. ``log``: the
    difference of logs (a ratio's log; exp() of the columns gives the ratio and its CI)."""
    by = list(by)
    p = pairs(runs, metric, treatment, control, by, pair_on)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            p["diff"] = np.log(p[f"{metric}_t"]) - np.log(p[f"{metric}_c"])
        p.loc[~p["ok"], "diff"] = np.nan
    rows = []
    for keys, g in (p.groupby(by, sort=True) if by else [((), p)]):
        keys = keys if isinstance(keys, tuple) else (keys,)
        ok = g[g["ok"]]
        rows.append({**dict(zip(by, keys)), **mean_effect(ok["diff"]).as_dict(),
                     "diverged": int((~g["ok"]).sum()),
                     "treatment": ok[f"{metric}_t"].mean(), "control": ok[f"{metric}_c"].mean()})
    return pd.DataFrame(rows)


def slope(runs: pd.DataFrame, metric: str, treatment: dict, control: dict,
          x: str = "params", pair_on: str = "seed") -> Effect:
    """The trend rule: per seed, the least-squares slope of the paired gain on log2(``x``)
    (gain per doubling); mean and 95% CI over seeds. A seed needs >= 2 finished pairs."""
    p = pairs(runs, metric, treatment, control, [x], pair_on)
    slopes = []
    for _, g in p[p["ok"]].groupby(pair_on):
        if g[x].nunique() >= 2:
            slopes.append(float(np.polyfit(np.log2(g[x].astype(float)), g["diff"], 1)[0]))
    return mean_effect(slopes)


def verdict(effect: Effect, delta: float, direction: int = 1) -> str:
    """Decide "the effect has sign ``direction``" (+1 or -1) against δ (see module doc)."""
    lo, hi = direction * effect.low, direction * effect.high
    lo, hi = min(lo, hi), max(lo, hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "cannot tell"
    if lo > 0:
        return "supports"
    if hi < 0 or (lo > -delta and hi < delta):
        return "contradicts"
    return "cannot tell"


def seeds_needed(effect: Effect, delta: float) -> int | None:
    """Seeds at which a 95% CI of the measured spread would settle the claim, if the
    estimate stayed where it is: exclude 0 when |estimate| > δ/2, else fit inside ±δ.
    None without a spread; MAX_SEEDS + 1 when more than MAX_SEEDS would be needed."""
    if not (np.isfinite(effect.sd) and effect.sd > 0 and np.isfinite(effect.estimate)):
        return None
    size = abs(effect.estimate)
    room = size if size > delta / 2 else delta - size
    for n in range(2, MAX_SEEDS + 1):
        if stats.t.ppf(0.975, n - 1) * effect.sd / np.sqrt(n) < room:
            return n
    return MAX_SEEDS + 1


def _select(df: pd.DataFrame, where: dict) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for k, v in where.items():
        mask &= (df[k] == v).to_numpy()
    return df.loc[mask]


def levels(runs: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Per group of ``by``: the mean of ``metric`` over finished runs with its 95% CI (low,
    high), n finished, diverged runs (kept as a count, never dropped)."""
    rows = []
    for keys, g in runs.groupby(by, sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        ok = g[g["status"] == "ok"]
        e = mean_effect(ok[metric]) if metric in ok else NO_EFFECT
        rows.append({**dict(zip(by, keys)), **e.as_dict(),
                     "diverged": int((g["status"] != "ok").sum())})
    return pd.DataFrame(rows)
