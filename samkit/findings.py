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
    half = np.nan_to_num(last.get("ci95", np.nan), nan=np.inf)  # one seed: no CI, no claim
    # A verdict needs a monotone trend AND a gain at the largest size whose 95% CI excludes 0.
    if r >= 0.5 and last[y] > first[y] and last[y] - half > 0:
        verdict = "supports"
    elif r <= -0.5 and last[y] < first[y] and last[y] + half < 0:
        verdict = "contradicts"
    else:
        verdict = "does not clearly support"
    return {"verdict": verdict, "spearman": round(r, 2), "n_points": len(t),
            "first_x": _num(first[x]), "last_x": _num(last[x]),
            "first": pp(first[y], first.get("ci95")), "last": pp(last[y], last.get("ci95")),
            **_raw("last", last[y], last.get("ci95"))}


def _raw(name: str, mean, ci=None, fmt=None) -> dict:
    """The unformatted estimate and CI half-width beside a formatted one, for `dvc exp show`
    (which compares numbers). A log-ratio (``fmt=ratio``) is given as the ratio itself."""
    mean = float(mean) if mean is not None else float("nan")
    out = {f"{name}_estimate": float(np.exp(mean)) if fmt is ratio else mean}
    if ci is not None and np.isfinite(ci) and fmt is not ratio:
        out[f"{name}_ci95"] = float(ci)
    return out


def argmax_by(df: pd.DataFrame, group: str, over: str, value: str = "mean") -> pd.DataFrame:
    """Per ``group``, the row whose ``value`` is largest (e.g. the best rho per width). A row
    with diverged runs cannot be the best: the same rule as ``bootstrap_argmax``."""
    ok = df.dropna(subset=[value])
    if "diverged" in ok:
        ok = ok[ok["diverged"] == 0]
    return ok.loc[ok.groupby(group)[value].idxmax()].reset_index(drop=True)


def _num(v):
    return v.item() if hasattr(v, "item") else v


# ----------------------------------------------------------------------------- study helpers
# Small, flat helpers for the study notebooks: each turns a summary table into the strings and
# verdicts that the page's prose glues in. Verdicts use one vocabulary everywhere: "supports",
# "contradicts", "does not clearly support", "cannot test".

def num(mean: float, ci: float | None = None, digits: int = 3) -> str:
    """A plain number with its 95% CI, in ``digits`` significant digits: '12.3 (95% CI ±1.1)'."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    s = f"{mean:.{digits}g}"
    return s + (f" (95% CI ±{ci:.{digits}g})" if ci is not None and np.isfinite(ci) else "")


def pct_ci(mean: float, ci: float | None = None) -> str:
    """A fraction as a percentage with its 95% CI: '91.20% (95% CI ±0.31)'."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    return pct(mean) + (f" (95% CI ±{100 * ci:.2f})" if ci is not None and np.isfinite(ci)
                        else "")


def ratio(mean_log: float, ci_log: float | None = None) -> str:
    """A mean log-ratio as a ratio with its 95% CI: '0.62× (95% CI 0.55–0.70)'."""
    if mean_log is None or not np.isfinite(mean_log):
        return "n/a"
    s = f"{np.exp(mean_log):.2f}×"
    if ci_log is not None and np.isfinite(ci_log):
        s += f" (95% CI {np.exp(mean_log - ci_log):.2f}–{np.exp(mean_log + ci_log):.2f})"
    return s


def slug(value) -> str:
    """A glue-key-safe name: 'SGD 300 ep' -> 'sgd_300_ep', 0.2 -> '0_2'."""
    s = "".join(c if c.isalnum() else "_" for c in str(value).lower())
    return "_".join(p for p in s.split("_") if p)


def claim(mean: float, ci: float | None, expect: str = "positive") -> str:
    """Verdict on "the effect has the expected sign" from a mean and its 95% CI half-width:
    supports (CI excludes 0 on the expected side), contradicts (CI excludes 0 on the other
    side), does not clearly support (CI includes 0), cannot test (no estimate)."""
    if mean is None or not np.isfinite(mean) or ci is None or not np.isfinite(ci):
        return "cannot test"
    sign = 1 if expect == "positive" else -1
    if sign * mean - ci > 0:
        return "supports"
    if sign * mean + ci < 0:
        return "contradicts"
    return "does not clearly support"


def sign_at_each(table: pd.DataFrame, y: str = "gain", expect: str = "positive",
                 unit: str = "widths") -> dict:
    """``claim`` at every row (e.g. every width): supports if it holds at all, contradicts if
    the opposite holds at any, else does not clearly support; 'k of n' counts the rows where
    the expected sign is significant."""
    t = table.dropna(subset=[y])
    if t.empty:
        return {"verdict": "cannot test", "count": f"0 of 0 {unit}"}
    each = [claim(r[y], r.get("ci95"), expect) for _, r in t.iterrows()]
    if all(v == "supports" for v in each):
        verdict = "supports"
    elif any(v == "contradicts" for v in each):
        verdict = "contradicts"
    elif all(v == "cannot test" for v in each):
        verdict = "cannot test"
    else:
        verdict = "does not clearly support"
    return {"verdict": verdict, "count": f"{each.count('supports')} of {len(each)} {unit}"}


def trend_of(table: pd.DataFrame, x: str, y: str = "mean", fmt=num,
             direction: str = "grows") -> dict:
    """Like ``trend`` for any quantity (formatted by ``fmt``) and either direction: verdict on
    "y grows with x" (or "falls"), from the Spearman r over the rows and whether the last
    point differs from the first by more than their joint 95% CI (column 'ci95', if any)."""
    t = table.dropna(subset=[y]).sort_values(x)
    if len(t) < 2:
        return {"verdict": "cannot test", "spearman": float("nan"), "first": "n/a",
                "last": "n/a", "n_points": len(t)}
    sign = 1 if direction == "grows" else -1
    r = float(stats.spearmanr(t[x], t[y]).statistic) if t[y].nunique() > 1 else 0.0
    first, last = t.iloc[0], t.iloc[-1]
    ci_f = np.nan_to_num(first.get("ci95", 0.0), nan=np.inf) if "ci95" in t else 0.0
    ci_l = np.nan_to_num(last.get("ci95", 0.0), nan=np.inf) if "ci95" in t else 0.0
    moved = sign * (last[y] - first[y])
    margin = float(np.hypot(ci_f, ci_l))  # first and last differ beyond their joint CI
    if sign * r >= 0.5 and moved > margin:
        verdict = "supports"
    elif sign * r <= -0.5 and -moved > margin:
        verdict = "contradicts"
    else:
        verdict = "does not clearly support"
    ci = (lambda row: row.get("ci95")) if "ci95" in t else (lambda row: None)
    return {"verdict": verdict, "spearman": round(r, 2), "n_points": len(t),
            "first_x": _num(first[x]), "last_x": _num(last[x]),
            "first": fmt(first[y], ci(first)), "last": fmt(last[y], ci(last)),
            **_raw("last", last[y], ci(last), fmt)}


def trend_by(table: pd.DataFrame, by: str, x: str, y: str = "gain") -> dict:
    """``trend`` of ``y`` vs ``x`` within each value of ``by``: one entry per value (its
    ``slug``), the entries 'lowest' and 'highest' (smallest and largest value of ``by``, with
    its value as 'level'), and 'each': all verdicts on one line."""
    out, line = {}, []
    for value, g in table.groupby(by, sort=True):
        out[slug(value)] = {**trend(g, x=x, y=y), "level": _num(value)}
        line.append(f"{value}: {out[slug(value)]['verdict']}")
    if out:
        keys = list(out)
        out["lowest"], out["highest"] = out[keys[0]], out[keys[-1]]
    out["each"] = "; ".join(line) if line else "cannot test"
    return out


def at_max(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows at the largest value of ``column`` (e.g. the widest model)."""
    return table[table[column] == table[column].max()]


def at_min(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows at the smallest value of ``column``."""
    return table[table[column] == table[column].min()]


def cell(table: pd.DataFrame, fmt=pct_ci, value: str = "mean", **where) -> str:
    """The one row of ``table`` matching ``where`` (column=value), formatted with its CI;
    'n/a' if no row matches."""
    t = table
    for k, v in where.items():
        t = t[t[k] == v]
    if len(t) != 1:
        return "n/a"
    row = t.iloc[0]
    return fmt(row[value], row.get("ci95"))


def row_claim(table: pd.DataFrame, y: str = "gain", expect: str = "positive",
              fmt=pp) -> dict:
    """The single-row table's ``y`` formatted, with ``claim``'s verdict and its diverged
    count (a table of several rows or none gives 'cannot test')."""
    if len(table) != 1:
        return {"value": "n/a", "verdict": "cannot test", "diverged": 0}
    r = table.iloc[0]
    return {"value": fmt(r[y], r.get("ci95")), "verdict": claim(r[y], r.get("ci95"), expect),
            "diverged": int(r.get("diverged", 0)), **_raw("value", r[y], r.get("ci95"), fmt)}


def summarize_many(runs: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """``sweep.summarize`` of several metrics stacked, with a ``metric`` column."""
    from .sweep import summarize
    return pd.concat([summarize(runs, by, m).assign(metric=m) for m in metrics],
                     ignore_index=True)


def paired_log_ratio(runs: pd.DataFrame, by: list[str], metric: str, **kw) -> pd.DataFrame:
    """``sweep.paired_gain`` of log(metric) (SAM vs SGD unless told): ``gain`` is the mean
    log-ratio; ``ratio``, ``ratio_lo``, ``ratio_hi`` its exponent and 95% CI. Non-positive
    values have no log and count as missing."""
    from .sweep import paired_gain
    v = runs[metric].astype(float)
    logged = runs.assign(**{metric: np.log(v.where(v > 0))})
    g = paired_gain(logged, by=by, metric=metric, **kw)
    return g.assign(ratio=np.exp(g["gain"]), ratio_lo=np.exp(g["gain"] - g["ci95"]),
                    ratio_hi=np.exp(g["gain"] + g["ci95"]))


def equal_within(values, tol: float = 0.02) -> dict:
    """Whether ``values`` (e.g. nonzero parameter counts) are equal to within ``tol``
    (relative to the smallest): min, max, spread and a verdict."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return {"verdict": "cannot test", "min": "n/a", "max": "n/a", "spread": "n/a"}
    spread = (v.max() - v.min()) / v.min() if v.min() > 0 else float("inf")
    verdict = (f"equal within {100 * tol:g}%" if spread <= tol
               else f"differ by {100 * spread:.1f}%")
    return {"verdict": verdict, "min": int(v.min()), "max": int(v.max()),
            "spread": f"{100 * spread:.2f}%"}


def needs_regularization(regularized: dict, ablations: list[dict]) -> dict:
    """The paper's "the width trend needs regularization", from ``trend`` results: supports
    if the trend holds with regularization and in no ablation; contradicts if it holds in an
    ablation too; cannot test if it does not hold even with regularization."""
    if regularized.get("verdict") != "supports":
        verdict = "cannot test"
    elif any(a.get("verdict") == "supports" for a in ablations):
        verdict = "contradicts"
    else:
        verdict = "supports"
    return {"verdict": verdict}


def vs_blog(acc: pd.DataFrame, gap: pd.DataFrame, blog: pd.DataFrame,
            arm: str = "tag") -> pd.DataFrame:
    """Our test accuracy and generalization gap per arm (``sweep.summarize`` tables with
    column ``arm``) beside the blog's numbers; rows in the blog's order."""
    ours = acc.rename(columns={"mean": "test_acc", "ci95": "test_acc_ci", arm: "arm"}).merge(
        gap.rename(columns={"mean": "gap", "ci95": "gap_ci", arm: "arm"})[
            ["arm", "gap", "gap_ci"]], on="arm")
    b = blog.rename(columns={"test_acc": "blog_test_acc", "gap": "blog_gap",
                             "epochs": "blog_epochs"})[
        ["arm", "blog_epochs", "blog_test_acc", "blog_gap"]]
    cols = ["arm", "epochs", "blog_epochs", "test_acc", "test_acc_ci", "blog_test_acc", "gap",
            "gap_ci", "blog_gap", "n", "diverged"]
    return b.merge(ours, on="arm", how="left")[[c for c in cols if c in b.columns
                                               or c in ours.columns]]


def arm_metrics(table: pd.DataFrame) -> dict:
    """Per row of a ``vs_blog`` table, keyed by the arm's ``slug``: our epochs, test accuracy
    and gap (with CIs), the blog's, and the epoch scale ours/blog (e.g. '1/10')."""
    from fractions import Fraction
    out = {}
    for _, r in table.iterrows():
        ok = np.isfinite(r.get("epochs", np.nan))
        scale = Fraction(int(r["epochs"]), int(r["blog_epochs"])) if ok else None
        out[slug(r["arm"])] = {
            "epochs": int(r["epochs"]) if ok else "n/a", "blog_epochs": int(r["blog_epochs"]),
            "scale": "n/a" if scale is None else ("1" if scale == 1 else str(scale)),
            "test_acc": pct_ci(r["test_acc"], r["test_acc_ci"]),
            "gap": pct_ci(r["gap"], r["gap_ci"]), "blog_test_acc": pct(r["blog_test_acc"]),
            "blog_gap": pct(r["blog_gap"]), "n": int(np.nan_to_num(r.get("n", 0))),
            "diverged": int(np.nan_to_num(r.get("diverged", 0)))}
    return out


def linear_pieces(x, y, tol: float = 0.5) -> int:
    """Number of linear pieces of the curve (x, y) sampled on a fine grid: 1 + the number of
    kinks, a kink being a run of consecutive grid steps whose slope changes by more than
    ``tol`` (a ReLU kink between two grid points shows up in two adjacent steps)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    jumps = np.abs(np.diff(np.diff(y) / np.diff(x))) > tol
    starts = jumps & ~np.concatenate([[False], jumps[:-1]])
    return int(1 + starts.sum())


def slope_variation(x, y) -> float:
    """Total variation of the slope, Σ|Δ slope| over the grid (≈ ∫|f''|): 0 for a line; for a
    one-hidden-layer ReLU net, the summed kink sizes. Lower = simpler; among functions through
    given points, the piecewise-linear interpolant has the least."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(np.abs(np.diff(np.diff(y) / np.diff(x))).sum())


def simplicity(curves: pd.DataFrame, tol: float = 0.5) -> pd.DataFrame:
    """Per run ``key`` of a long table of learned functions (columns key, x, y): its
    ``linear_pieces`` and ``slope_variation`` of the final model, as ``final_pieces`` and
    ``final_slope_tv`` (so ``results.save`` keeps them with the run's other metrics)."""
    rows = [{"key": k, "final_pieces": linear_pieces(g["x"], g["y"], tol),
             "final_slope_tv": slope_variation(g["x"], g["y"])}
            for k, g in curves.groupby("key", sort=False)]
    return pd.DataFrame(rows, columns=["key", "final_pieces", "final_slope_tv"])


def restrict(runs: pd.DataFrame, best: pd.DataFrame, keys: list[str],
             where: dict | None = None) -> pd.DataFrame:
    """``runs`` with the rows matching ``where`` (default SAM) kept only at the ``keys``
    combinations listed in ``best`` (e.g. each width's best rho); other rows unchanged."""
    where = where or {"optimizer": "sam"}
    mask = np.ones(len(runs), dtype=bool)
    for k, v in where.items():
        mask &= (runs[k] == v).to_numpy()
    picked = runs[mask].merge(best[keys].drop_duplicates(), on=keys)
    return pd.concat([picked, runs[~mask]], ignore_index=True)


def bootstrap_argmax(runs: pd.DataFrame, group: str, over: str, metric: str,
                     n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """How well the data determine each ``group``'s best ``over`` (e.g. ρ* per width): seeds
    are resampled with replacement (jointly, since a seed means the same data split and init
    in every cell) and the argmax of the mean ``metric`` is taken in each resample. Returns
    per group and resample the chosen (numeric) value: columns group, 'boot', over. A
    diverged or missing run (NaN metric) makes its cell lose in the resamples that contain
    it; a resample in which every cell of a group lost picks nothing (no row)."""
    grid = pd.MultiIndex.from_product([sorted(runs[group].unique()),
                                       sorted(runs[over].unique())], names=[group, over])
    # pivot (not pivot_table) raises on duplicate (group, over, seed) rows instead of
    # silently keeping one of them
    table = runs.pivot(index=[group, over], columns="seed", values=metric).reindex(grid)
    groups, values = grid.levels
    acc = np.nan_to_num(table.to_numpy(float).reshape(len(groups), len(values), -1),
                        nan=-np.inf)
    pick = np.random.default_rng(seed).integers(0, acc.shape[-1], (n_boot, acc.shape[-1]))
    means = acc[:, :, pick].mean(-1)                         # group × value × resample
    best = np.asarray(values, float)[means.argmax(1)]        # group × resample
    best[np.isneginf(means.max(1))] = np.nan
    out = pd.DataFrame({group: np.repeat(np.asarray(groups), n_boot),
                        "boot": np.tile(np.arange(n_boot), len(groups)), over: best.ravel()})
    return out.dropna(subset=[over]).reset_index(drop=True)


def argmax_trend(best: pd.DataFrame, boot: pd.DataFrame, group: str, x: str,
                 over: str) -> dict:
    """Does the best ``over`` grow with ``x``? From the bootstrap of ``bootstrap_argmax``: the
    share of resamples where the largest model's argmax exceeds the smallest's ('p_grows') or
    falls below it ('p_falls'); a verdict only when 95% of resamples agree. This measures how
    stable the argmax is under resampling the seeds, not a calibrated test (3 seeds allow
    only 10 distinct resamples). 'each' lists the point value per group (``best``, from
    ``argmax_by``) with the 2.5–97.5% range of its resampled values (grid values only)."""
    order = best.sort_values(x)[group].tolist()
    if len(order) < 2:
        return {"verdict": "cannot test", "each": "n/a", "p_grows": "n/a", "p_falls": "n/a",
                "spearman": float("nan")}
    wide = boot.pivot(index="boot", columns=group, values=over).reindex(columns=order)
    small, large = wide[order[0]].to_numpy(), wide[order[-1]].to_numpy()
    p_grows, p_falls = float(np.mean(large > small)), float(np.mean(large < small))
    verdict = ("supports" if p_grows >= 0.95 else "contradicts" if p_falls >= 0.95
               else "does not clearly support")
    lo = wide.quantile(0.025, interpolation="lower")
    hi = wide.quantile(0.975, interpolation="higher")
    t = best.set_index(group).loc[order]
    each = " · ".join(f"{_num(g)}: {_num(t.loc[g, over]):g} [{lo[g]:g}–{hi[g]:g}]"
                      for g in order)
    r = (float(stats.spearmanr(t[x], t[over]).statistic) if t[over].nunique() > 1 else 0.0)
    return {"verdict": verdict, "each": each, "p_grows": pct(p_grows),
            "p_falls": pct(p_falls), "spearman": round(r, 2), "p_grows_estimate": p_grows,
            "p_falls_estimate": p_falls}


def ratio_claims(table: pd.DataFrame, x: str = "params") -> dict:
    """For a ``paired_log_ratio`` table (SAM/SGD per size): is SAM's value lower at every size
    ('verdict', 'count'), the ratio at the smallest and largest size ('first', 'last'), and does
    the ratio fall with size ('grows': SAM's relative advantage grows; 'spearman')."""
    each = sign_at_each(table, expect="negative", unit="sizes")
    t = trend_of(table, x=x, y="gain", fmt=ratio, direction="falls")
    return {"verdict": each["verdict"], "count": each["count"], "grows": t["verdict"],
            "spearman": t["spearman"], "first": t["first"], "last": t["last"]}


# ----------------------------------------------------------------------------- the book's summary
# What each study tests and which of its metrics.json entries answer it ("group.key" paths of
# the metrics dict its notebook saves). summary.ipynb turns this into the front page's table.
SUMMARY = {
    "headline": {
        "claim": "Blog: SAM (150/200 ep) beats SGD (300 ep) in test accuracy, with a much "
                 "smaller train−test gap",
        "verdicts": {"SAM 150 acc > SGD 300": "sam150_acc.verdict",
                     "SAM 150 gap < SGD 300": "sam150_gap.verdict",
                     "SAM 200 acc > SGD 300": "sam200_acc.verdict"},
        "numbers": {"SAM 150 − SGD 300 acc": "sam150_acc.value",
                    "SAM 150 − SGD 300 gap": "sam150_gap.value"}},
    "width": {
        "claim": "Paper §3: SAM's gain over SGD grows with the number of parameters",
        "verdicts": {"MLP": "mlp.verdict", "ResNet": "preact_resnet18.verdict"},
        "numbers": {"MLP gain, widest": "mlp.last", "ResNet gain, widest":
                    "preact_resnet18.last"}},
    "rho": {
        "claim": "Paper §4.2: the best perturbation radius ρ* grows with width",
        "verdicts": {"ρ* grows": "rho_star.verdict"},
        "numbers": {"ρ* per width": "rho_star.each"}},
    "noise": {
        "claim": "Paper §5: under label noise the gain grows with width, more so with more noise",
        "verdicts": {"grows, highest noise": "width.highest.verdict",
                     "larger with more noise": "noise_at_widest.verdict"},
        "numbers": {"gain, widest, highest noise": "width.highest.last"}},
    "sparsity": {
        "claim": "Paper §5: sparse wide models gain more from SAM than a dense small one of "
                 "equal size",
        "verdicts": {"random": "random.verdict", "SNIP": "snip.verdict"},
        "numbers": {"dense": "dense.value", "random, widest": "random.last",
                    "SNIP, widest": "snip.last"}},
    "compute": {
        "claim": "Paper App. E.4: SAM beats SGD even when SGD gets 2× the epochs",
        "verdicts": {"widest": "widest_2x.verdict", "gain grows": "vs_2x.verdict"},
        "numbers": {"SAM 1x − SGD 2x, widest": "widest_2x.value",
                    "SAM/SGD training time": "cost.widest"}},
    "regularization": {
        "claim": "Paper §5: the width trend needs regularization (weight decay, early stopping)",
        "verdicts": {"needs regularization": "needs.verdict"},
        "numbers": {"trend per variant": "trends.each"}},
    "hessian": {
        "claim": "Paper §6.1: SAM's minima are flatter and have more uniform Hessians than SGD's",
        "verdicts": {"λmax lower": "lambda_max.verdict",
                     "non-uniformity lower": "nonuniformity.verdict"},
        "numbers": {"λmax SAM/SGD, widest": "lambda_max.last",
                    "non-uniformity SAM/SGD, widest": "nonuniformity.last"}},
    "simplicity": {
        "claim": "Paper §4.1: SAM finds simpler functions than SGD when overparameterized",
        "verdicts": {"simpler, widest": "widest.verdict"},
        "numbers": {"slope TV SAM/SGD, widest": "widest.value"}},
}


def _get(d: dict, path: str):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return "n/a"
        d = d[part]
    return d


def _put(d: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[last] = value


def collect(profile: str, root: str = "results", studies: dict | None = None) -> dict:
    """Every study's saved metrics (``results.load``) gathered for the book's front page:
    'table' (study, claim, verdicts, key numbers, runs, run minutes; a missing study shows
    'not run'), 'missing' and a metrics.json-like dict ('metrics' keyed by study with 'claim',
    'verdicts', 'numbers', 'status', 'runs' and 'm' (each summarized metric by its path), plus
    'book' (counts of studies and verdicts); 'profile', 'provenance', 'n_runs', 'seeds',
    'n_cached', 'run_seconds') so ``results.glue_metrics`` and ``results.provenance_line``
    work on it."""
    from .provenance import provenance
    from .results import load
    studies = studies or SUMMARY
    rows, metrics, missing, seeds, tally = [], {}, [], set(), []
    n_runs = n_cached = run_seconds = 0
    for study, spec in studies.items():
        try:
            meta, _ = load(study, profile, root)
        except (FileNotFoundError, NotADirectoryError):
            meta = None
            missing.append(study)
        m = meta["metrics"] if meta else {}
        verdicts = {k: _get(m, p) if meta else "not run" for k, p in spec["verdicts"].items()}
        numbers = {k: _get(m, p) if meta else "not run" for k, p in spec["numbers"].items()}
        v_line = "; ".join(f"{k}: {v}" for k, v in verdicts.items())
        n_line = "; ".join(f"{k}: {v}" for k, v in numbers.items())
        metrics[study] = {"claim": spec["claim"], "status": "ok" if meta else "not run",
                          "verdicts": v_line, "numbers": n_line,
                          "runs": meta["n_runs"] if meta else 0, "m": {}}
        for path in [*spec["verdicts"].values(), *spec["numbers"].values()]:
            _put(metrics[study]["m"], path, _get(m, path) if meta else "not run")
        tally.extend(v for v in verdicts.values() if meta)
        rows.append({"study": study, "claim tested": spec["claim"],
                     "verdict(s)": v_line if meta else
                     f"not run (no {root}/{profile}/{study}/metrics.json)",
                     "key number(s)": n_line if meta else "",
                     "runs": meta["n_runs"] if meta else 0,
                     "diverged": meta["n_diverged"] if meta else 0,
                     "run minutes": round(meta["run_seconds"] / 60, 1) if meta else np.nan})
        if meta:
            n_runs += meta["n_runs"]
            n_cached += meta["n_cached"]
            run_seconds += meta["run_seconds"]
            seeds.update(meta["seeds"])
    n_ok = sum(1 for s in metrics.values() if s["status"] == "ok")
    metrics["book"] = {"profile": profile, "studies_run": n_ok, "studies": len(studies),
                       "missing": ", ".join(missing) or "none", "runs": n_runs,
                       "run_minutes": round(run_seconds / 60, 1), "verdicts": len(tally),
                       "supports": tally.count("supports"),
                       "contradicts": tally.count("contradicts"),
                       "unclear": len(tally) - tally.count("supports")
                       - tally.count("contradicts")}
    return {"table": pd.DataFrame(rows), "missing": missing, "metrics": metrics,
            "profile": profile, "provenance": provenance(), "n_runs": n_runs,
            "seeds": sorted(seeds), "n_cached": n_cached, "run_seconds": run_seconds}


def describe(runs: pd.DataFrame, columns: list[str]) -> dict:
    """Each column's value(s) across the runs as text ('4' or '4, 8'), for the prose's
    description of the setup."""
    out = {}
    for c in columns:
        vals = {_num(v) for v in runs[c].dropna()} if c in runs else set()
        try:
            vals = sorted(vals)
        except TypeError:  # mixed types: sort as text
            vals = sorted(vals, key=str)
        out[c] = ", ".join(str(v) for v in vals) or "n/a"
    return out


def stack(tables: dict, name: str) -> pd.DataFrame:
    """Tables with the same columns stacked, each labelled in column ``name`` by its key
    (e.g. several paired comparisons in one figure)."""
    return pd.concat([t.assign(**{name: k}) for k, t in tables.items()], ignore_index=True)


def interpolates(runs: pd.DataFrame, targets, metric: str = "final_train_loss",
                 frac: float = 0.05) -> dict:
    """Do the runs fit their training points? A run fits if its training MSE (``metric``) is
    below ``frac`` of the targets' variance. 'verdict' is 'yes' when most finished runs fit;
    'count' says how many do; diverged runs count as not fitting."""
    threshold = frac * float(np.var(np.asarray(targets, dtype=float)))
    loss = runs[metric].where(runs["status"] == "ok")
    n_fit = int((loss < threshold).sum())
    verdict = "yes" if len(runs) and n_fit > len(runs) / 2 else "no"
    return {"verdict": verdict, "count": f"{n_fit} of {len(runs)} runs",
            "threshold": num(threshold)}


def requires(result: dict, condition: dict, reason: str) -> dict:
    """``result`` with its verdict replaced by 'cannot test' unless ``condition['verdict']``
    is 'yes' (e.g. a claim about interpolating solutions, tested on runs that do not
    interpolate); the original verdict is kept as 'raw_verdict' and ``reason`` as 'note'."""
    if condition.get("verdict") == "yes":
        return {**result, "raw_verdict": result.get("verdict"), "note": ""}
    return {**result, "verdict": "cannot test", "raw_verdict": result.get("verdict"),
            "note": reason}
