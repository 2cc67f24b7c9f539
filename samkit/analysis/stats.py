"""Seed-paired effects, their 95% CIs, and verdicts that can decide (scipy.stats underneath).

Every comparison pairs runs that share a seed (same initialisation, batch order, data subset
and label noise), so seed-to-seed variation cancels. A claim is decided against a smallest
effect of interest δ:

- ``contradicts``: the 95% CI lies wholly on the wrong side of 0, or inside ±δ while it
  includes 0 (an equivalence test: no effect worth having at this scale);
- ``below δ``: the CI excludes 0 in the claimed direction but lies wholly inside ±δ: the
  effect is real and too small to matter at this resolution; never counted as support;
- ``supports``: the CI excludes 0 in the claimed direction (and is not wholly inside ±δ);
- ``cannot tell``: otherwise; ``seeds_needed`` is a prospective power calculation: the seeds
  at which a paired t-test detects an effect of size δ with 80% power, at the measured spread.

Each decision has a p-value on one scale (``decision_p``: below 0.05 exactly when the CI rule
decides), so that a multiplicity adjustment over all claims (Benjamini-Hochberg) can say which
decisions survive.

Width trends use one rule everywhere: per seed, the least-squares slope of the paired gain on
log2(parameters) (gain per doubling of the model), over the source's own range of model sizes
(``TREND_PARAMS``; narrower models are shown as context, outside the trend); the slopes' mean
and t-interval over seeds.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

VERDICTS = ("supports", "below δ", "contradicts", "cannot tell")
MAX_SEEDS = 1000  # beyond this "seeds needed" is reported as more than MAX_SEEDS
POWER = 0.8       # of the prospective power calculation behind "seeds needed"
ALPHA = 0.05      # two-sided, the 95% CIs' level


# The model sizes a width trend is fitted over, per model family: the range of the source's own
# figure (Shin et al., Fig. 1(a): its MNIST MLP panel spans 0.06M-5.4M parameters, a depth-2
# MLP on 784 inputs of width ~64 to ~2,000). Below it the narrowest MLPs fit their training set
# poorly under either optimizer, and a trend through them measures that, not the claim. Models
# not listed are used whole.
TREND_PARAMS = {"mlp": (50_000, 6_000_000)}


def in_trend_range(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``runs`` whose model size lies in its family's ``TREND_PARAMS`` range."""
    keep = pd.Series(True, index=runs.index)
    if "model" in runs and "params" in runs:
        for model, (lo, hi) in TREND_PARAMS.items():
            mine = runs["model"] == model
            keep &= ~mine | runs["params"].between(lo, hi)
    return runs[keep]


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
    ``ok`` (both sides finished: neither diverged nor failed to fit, see samkit.measure.fit)."""
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
    low, high (95% CI), n pairs, sd, pairs left out (a side diverged; a side failed to fit),
    and both sides' means. ``log``: the
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
        diverged = (g["status_t"] == "diverged") | (g["status_c"] == "diverged")
        rows.append({**dict(zip(by, keys)), **mean_effect(ok["diff"]).as_dict(),
                     "diverged": int(diverged.sum()), "unfit": int((~g["ok"] & ~diverged).sum()),
                     "treatment": ok[f"{metric}_t"].mean(), "control": ok[f"{metric}_c"].mean()})
    return pd.DataFrame(rows)


def seed_slopes(runs: pd.DataFrame, metric: str, treatment: dict, control: dict,
                x: str = "params", pair_on: str = "seed") -> dict:
    """The trend rule, per seed: {seed: least-squares slope of the paired gain on log2(``x``)
    (gain per doubling)} over the models in the source's range (``in_trend_range``). A seed
    needs finished pairs at >= 2 sizes."""
    p = pairs(in_trend_range(runs), metric, treatment, control, [x], pair_on)
    slopes = {}
    for seed, g in p[p["ok"]].groupby(pair_on):
        if g[x].nunique() >= 2:
            slopes[seed] = float(np.polyfit(np.log2(g[x].astype(float)), g["diff"], 1)[0])
    return slopes


def slope(runs: pd.DataFrame, metric: str, treatment: dict, control: dict,
          x: str = "params", pair_on: str = "seed") -> Effect:
    """The trend: ``seed_slopes``' mean and 95% CI over seeds."""
    return mean_effect(list(seed_slopes(runs, metric, treatment, control, x, pair_on).values()))


def verdict(effect: Effect, delta: float, direction: int = 1) -> str:
    """Decide "the effect has sign ``direction``" (+1 or -1) against δ (see module doc)."""
    lo, hi = sorted((direction * effect.low, direction * effect.high))
    if np.isnan(lo) or np.isnan(hi):   # an infinite bound is a one-sided interval: it decides
        return "cannot tell"
    inside = lo > -delta and hi < delta
    if hi < 0:
        return "contradicts"
    if lo > 0:
        return "below δ" if inside else "supports"
    return "contradicts" if inside else "cannot tell"


def decision_p(effect: Effect, delta: float) -> float:
    """The p-value of the claim's decision, two-sided scale: the t-test of "no effect" for a
    CI that excludes 0 (or for an undecided claim), the equivalence test (TOST, the larger of
    its one-sided p-values, doubled) for a CI inside ±δ that includes 0. Either is below
    ALPHA exactly when the 95% CI decides. NaN without a spread (fewer than 2 pairs)."""
    n, est = effect.n, effect.estimate
    if n < 2 or not (np.isfinite(est) and np.isfinite(effect.sd)):
        return float("nan")
    se = effect.sd / np.sqrt(n)
    if se == 0:
        return 0.0 if est != 0 or delta > 0 else 1.0
    p_zero = float(2 * stats.t.sf(abs(est) / se, n - 1))
    if effect.low <= 0 <= effect.high and effect.low > -delta and effect.high < delta:
        tost = max(stats.t.sf((est + delta) / se, n - 1), stats.t.sf((delta - est) / se, n - 1))
        return float(min(1.0, 2 * tost))
    return p_zero


def seeds_needed(effect: Effect, delta: float) -> int | None:
    """Prospective power: the seeds at which a two-sided paired t-test (noncentral t,
    statsmodels) detects an effect of size δ, the smallest that matters, with POWER, given the
    spread measured over the seeds. None without a spread; MAX_SEEDS + 1 beyond MAX_SEEDS."""
    if not (np.isfinite(effect.sd) and effect.sd > 0):
        return None
    from statsmodels.stats.power import TTestPower
    d = delta / effect.sd
    n = TTestPower().solve_power(effect_size=d, alpha=ALPHA, power=POWER,
                                 alternative="two-sided")
    n = int(np.ceil(np.atleast_1d(n)[0])) if np.isfinite(np.atleast_1d(n)[0]) else MAX_SEEDS + 1
    return min(max(n, 2), MAX_SEEDS + 1)


def adjusted(p_values, alpha: float = ALPHA) -> np.ndarray:
    """Benjamini-Hochberg over a family of decisions: True where a decision survives at false
    discovery rate ``alpha``. NaN p-values (undecidable claims) never survive."""
    from statsmodels.stats.multitest import multipletests
    p = np.asarray(p_values, dtype=float)
    out = np.zeros(len(p), dtype=bool)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=alpha, method="fdr_bh")[0]
    return out


def _select(df: pd.DataFrame, where: dict) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for k, v in where.items():
        mask &= (df[k] == v).to_numpy()
    return df.loc[mask]


def levels(runs: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Per group of ``by``: the mean of ``metric`` over finished runs with its 95% CI (low,
    high), n finished, diverged and unfit runs (kept as counts, never dropped)."""
    rows = []
    for keys, g in runs.groupby(by, sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        ok = g[g["status"] == "ok"]
        e = mean_effect(ok[metric]) if metric in ok else NO_EFFECT
        rows.append({**dict(zip(by, keys)), **e.as_dict(),
                     "diverged": int((g["status"] == "diverged").sum()),
                     "unfit": int((g["status"] == "unfit").sum())})
    return pd.DataFrame(rows)
