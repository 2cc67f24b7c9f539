"""The book's front page: every study's tested claims in one table, the answer in three
sentences and the advice list, all computed from the studies' saved metrics.json."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd

from . import stats
from .studies import MODULES

# What a practitioner should take from a claim, by its verdict. The numbers come from the
# claim ({shown}); a missing claim raises (a renamed metric is an error, not "n/a"). Only a
# robust verdict (see samkit.robustness) gives advice; a fragile one is listed as such.
ADVICE = {
    ("width", "mlp.widest"): {
        "supports": "On a wide model SAM pays: {shown} test accuracy over SGD at the widest MLP.",
        "below δ": "At the widest MLP SAM's gain is real but too small to matter ({shown}).",
        "contradicts": "On these models SAM gave no gain worth having even at the widest "
                       "MLP ({shown}).",
        "cannot tell": "At the widest MLP SAM's gain ({shown}) is not yet resolved."},
    ("width", "mlp.grows"): {
        "supports": "The wider the model, the more SAM helps: {shown}.",
        "below δ": "SAM's gain grows with width, but by less than matters ({shown}): do not "
                   "choose SAM for width alone.",
        "contradicts": "SAM's gain does not grow with width here ({shown}).",
        "cannot tell": "Whether SAM's gain grows with width is unresolved ({shown})."},
    ("noise", "amplified"): {
        "below δ": "Label noise enlarges SAM's advantage only slightly ({shown}).",
        "supports": "With noisy labels SAM's advantage on a wide model is larger ({shown} more "
                    "than without noise): reach for SAM first when labels are noisy.",
        "contradicts": "Label noise did not enlarge SAM's advantage here ({shown}).",
        "cannot tell": "Whether label noise enlarges SAM's advantage is unresolved ({shown})."},
    ("compute", "widest_vs_2x"): {
        "below δ": "At equal compute SAM's edge over SGD with twice the epochs is too small to "
                   "matter ({shown}).",
        "supports": "At equal compute SAM still wins: SAM − SGD with twice the epochs = {shown} "
                    "on the widest model.",
        "contradicts": "On clean labels SAM's doubled cost buys nothing that the same passes "
                       "spent on SGD epochs would not: SAM − SGD with twice the epochs = "
                       "{shown} on the widest model.",
        "cannot tell": "At equal compute SAM and SGD with twice the epochs are not told apart "
                       "({shown})."},
    ("headline", "sam150_acc"): {
        "below δ": "SAM with half the epochs beats SGD by too little to matter ({shown}).",
        "supports": "The blog's protocol holds at this scale: SAM with half the epochs beats "
                    "SGD by {shown}.",
        "contradicts": "The blog's protocol does not hold at this scale: SAM with half the "
                       "epochs − SGD = {shown}.",
        "cannot tell": "The blog's protocol is not settled at this scale ({shown})."},
    ("frontier", "wide_noisy.sam_k5_vs_sam"): {
        "below δ": "SAM's ascent on one step in 5 costs too little to matter ({shown}).",
        "supports": "Cheaper SAM has a price on noisy labels: with the ascent on one step in "
                    "5 (1.2× SGD's gradient evaluations instead of SAM's 2×), SAM every 5 − "
                    "SAM = {shown} on the widest model.",
        "contradicts": "Save SAM's cost: its ascent on one step in 5 (1.2× SGD's gradient "
                       "evaluations instead of 2×) keeps SAM's accuracy on the widest model "
                       "with noisy labels ({shown} against SAM).",
        "cannot tell": "Whether SAM's ascent on one step in 5 gives up accuracy against SAM "
                       "is unresolved ({shown}, widest model, noisy labels)."},
}


def claims(profile: str, root: str = "results", studies=MODULES) -> pd.DataFrame:
    """One row per tested claim of every study (of ``studies``) that has results: study, id,
    text, source, effect, CI, unit, δ, verdict (and explanation), robustness; studies without
    results are absent. Over all studies, also the Benjamini-Hochberg decision."""
    rows = []
    for name in studies:
        meta = load(name, profile, root)
        if meta is None:
            continue
        for cid, c in meta["metrics"]["claims"].items():
            rows.append({"study": name, "id": cid, **c})
    cols = ["study", "id", "text", "source", "unit", "estimate", "ci_low", "ci_high", "n",
            "delta", "delta_shown", "verdict", "explained", "shown", "seeds_needed", "p_value",
            "source_shown", "robustness"]
    table = pd.DataFrame(rows, columns=cols)
    table["fragile"] = [bool(r and r.get("fragile")) for r in table["robustness"]]
    table["robust_shown"] = [r.get("shown", "not checked") if r else "not checked"
                             for r in table["robustness"]]
    # Benjamini-Hochberg over every claim of the book: which decisions survive ~50 tests.
    if tuple(studies) == MODULES:
        decided = table["verdict"] != "cannot tell"
        table["survives_bh"] = stats.adjusted(table["p_value"].astype(float)) & decided
    return table


def load(study: str, profile: str, root: str = "results") -> dict | None:
    path = os.path.join(root, profile, study, "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def answer(profile: str, root: str = "results") -> dict:
    """The front page's numbers: scale, verdict counts, the answer sentences, the advice."""
    table = claims(profile, root)
    metas = {n: load(n, profile, root) for n in MODULES}
    done = {n: m for n, m in metas.items() if m is not None}
    width = done.get("width")
    facts = width["metrics"]["facts"] if width else {}
    pp_claims = table[table["unit"] == "pp"]
    halves = 100 * (pp_claims["ci_high"] - pp_claims["ci_low"]) / 2
    counts = table["verdict"].value_counts()
    out = {
        "profile": profile, "studies_run": len(done), "studies": len(MODULES),
        "missing": ", ".join(n for n in MODULES if n not in done) or "none",
        "claims": len(table), "supports": int(counts.get("supports", 0)),
        "below_delta": int(counts.get("below δ", 0)),
        "contradicts": int(counts.get("contradicts", 0)),
        "cannot_tell": int(counts.get("cannot tell", 0)),
        "fragile": int(table["fragile"].sum()),
        "decided": int((table["verdict"] != "cannot tell").sum()),
        "survive_bh": int(table["survives_bh"].sum()),
        "fragile_list": "; ".join(f"{r.text} ({r.verdict})" for r in
                                  table[table["fragile"]].itertuples()) or "none",
        "runs": sum(m["n_runs"] for m in done.values()),
        "run_hours": f"{sum(m['run_seconds'] for m in done.values()) / 3600:.1f}",
        "train_images": facts.get("train_images", "n/a"), "epochs": facts.get("epochs", "n/a"),
        "seeds": facts.get("seeds", "n/a"), "models": facts.get("models", "n/a"),
        "resolution": f"{np.nanmedian(halves):.2f} pp" if len(halves.dropna()) else "n/a",
        "supported": _list(table, "supports"), "contradicted": _list(table, "contradicts"),
        "below": _list(table, "below δ"),
        "unresolved": _list(table, "cannot tell"),
        "cost": _cost(done.get("compute")),
        "advice": advice(table) + equal_compute(done.get("frontier")),
    }
    return out


def _list(table: pd.DataFrame, verdict: str) -> str:
    t = table[table["verdict"] == verdict]
    return "; ".join(f"{r.text} ({r.shown})" for r in t.itertuples()) or "none"


def _cost(compute: dict | None, bench: str = "results/bench") -> str:
    """What SAM costs: exact gradient evaluations from the compute study's runs and the
    step-time ratio from the benchmark (timed in isolation, interleaved with SGD)."""
    from .results import benchmark_table, load_benchmarks
    table = benchmark_table(load_benchmarks(bench)[0])
    step = (f"a SAM step takes {table['SAM/SGD'].min():.2f}–{table['SAM/SGD'].max():.2f}× an "
            "SGD step in the step-time benchmark" if len(table) else "no step-time benchmark")
    if compute is None:
        return step + " (the compute study has no results)"
    f = compute["metrics"]["facts"]
    # The runs' own training times are not quoted here: they were measured while other jobs
    # shared the machine (the compute page shows them, with that caveat).
    return (f"SAM spends {f.get('grad_evals_ratio', 'n/a')} the gradient evaluations of SGD "
            f"for the same epochs, and {step}")


def advice(table: pd.DataFrame) -> list[str]:
    """One line per ADVICE entry whose study has results and whose verdict is robust, chosen
    by that verdict; a fragile verdict gives no advice (the page lists it)."""
    lines = []
    for (study, cid), by_verdict in ADVICE.items():
        if study not in set(table["study"]):
            continue
        row = table[(table["study"] == study) & (table["id"] == cid)]
        if row.empty:
            raise KeyError(f"front page: study {study!r} has no claim {cid!r} "
                           f"(renamed? update frontpage.ADVICE)")
        r = row.iloc[0]
        if "fragile" in r and r["fragile"]:
            continue
        lines.append(by_verdict[r["verdict"]].format(shown=r["shown"]))
    return lines


def equal_compute(frontier: dict | None) -> list[str]:
    """The frontier study's line of advice: in each setting (width x label noise) the cheapest
    method whose mean test accuracy is within delta of the best method's. A point rule on
    the means (the page's paired CIs say how sure each step is); [] without frontier results
    or without a cell where a run finished."""
    if frontier is None:
        return []
    facts = frontier["metrics"]["facts"]
    picks: dict[str, list[str]] = {}
    for cell in filter(None, facts["cells"].split(", ")):
        f = facts[cell]
        if f["cheapest_method"] == "n/a":  # no run of the cell finished: nothing to pick
            continue
        picks.setdefault(f["cheapest_method"], []).append(f"width {f['width']} with "
                                                          f"{f['noise']} label noise")
    rule = (f"the cheapest method within {facts['delta_shown']} of the best mean test "
            "accuracy, counting gradient evaluations")
    if not picks:
        return []
    if len(picks) == 1:
        (method, where), = picks.items()
        return [f"At equal compute, use {method}: in every setting tested ({'; '.join(where)}) "
                f"it is {rule} (how sure each pick is: the frontier page)."]
    parts = "; ".join(f"{m} at {' and at '.join(w)}" for m, w in picks.items())
    return [f"At equal compute, use {parts}: in each setting that is {rule} (how sure each "
            "pick is: the frontier page)."]


# The pp panel's x range: an effect or CI end beyond it (a method that failed to train, tens
# of pp) is drawn clipped, an arrow at the edge and its value written, so that the effects of
# 0.2-2 pp the claims are about stay readable.
FOREST_PP_LIMIT = 6.0
LABEL_CHARS = 55  # a claim's text is shortened to this in the forest's y labels


def forest(table: pd.DataFrame):
    """Every claim's effect with its 95% CI, coloured by verdict, one panel per unit."""
    import textwrap

    import matplotlib.pyplot as plt
    colors = {"supports": "#2a9d8f", "below δ": "#e9c46a", "contradicts": "#e76f51",
              "cannot tell": "#8d99ae"}
    units = [u for u in ("pp", "pp/doubling", "ratio") if u in set(table["unit"])]
    sizes = [max(1, (table["unit"] == u).sum()) for u in units]
    height = 0.22 * sum(sizes) + 0.9 * len(units) + 0.6
    fig, axes = plt.subplots(len(units), 1, figsize=(11, height), squeeze=False,
                             gridspec_kw={"height_ratios": sizes})
    # A fixed label column (no tight_layout: it gives up on long labels, with a warning).
    fig.subplots_adjust(left=0.5, right=0.97, top=1 - 0.45 / height, bottom=0.55 / height,
                        hspace=0.9 / max(1, np.mean(sizes)) * 2)
    for ax, unit in zip(axes[:, 0], units):
        t = table[table["unit"] == unit].reset_index(drop=True)
        scale = (lambda v: np.exp(v)) if unit == "ratio" else (lambda v: 100 * np.asarray(v))
        est, lo, hi = scale(t["estimate"]), scale(t["ci_low"]), scale(t["ci_high"])
        ys = np.arange(len(t))[::-1]
        limit = FOREST_PP_LIMIT if unit == "pp" else np.inf
        for y, e, l, h, v in zip(ys, est, lo, hi, t["verdict"]):
            _forest_point(ax, y, e, l, h, colors[v], limit)
        low, high = np.nanmin(np.r_[lo, est]), np.nanmax(np.r_[hi, est])
        if low < -limit or high > limit:  # never for the unclipped units (limit inf)
            ax.set_xlim(-limit * 1.08 if low < -limit else None,
                        limit * 1.08 if high > limit else None)
        ax.axvline(1 if unit == "ratio" else 0, color="0.3", lw=0.8, ls="--")
        # The claim id names the cell (e.g. frontier's wide_noisy.*), which the shortened
        # text may cut off.
        labels = [f"{s} {i}: {textwrap.shorten(x, LABEL_CHARS, placeholder=' …')}"
                  for s, i, x in zip(t["study"], t["id"], t["text"])]
        ax.set_yticks(ys, labels, fontsize=7)
        ax.set_ylim(-0.7, len(t) - 0.3)
        if unit == "ratio":
            from matplotlib.ticker import FixedLocator, NullLocator
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator([0.1, 0.2, 0.5, 1, 2, 5]))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}×")
        ax.set_xlabel({"pp": "effect (percentage points of test accuracy)",
                       "pp/doubling": "change of SAM's gain per doubling (pp)",
                       "ratio": "SAM / SGD (ratio)"}[unit], fontsize=8)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=v) for v, c in
               colors.items()]
    axes[0, 0].legend(handles=handles, fontsize=7, loc="lower right", frameon=True)
    axes[0, 0].set_title("Every tested claim: effect and 95% CI, coloured by verdict",
                         fontsize=10)
    return fig


def _forest_point(ax, y, e, l, h, color, limit) -> None:
    """One claim: the estimate and its CI, clipped to ±limit with an arrow and the value."""
    l = l if math.isfinite(l) else e
    h = h if math.isfinite(h) else e
    ce, cl, ch = (float(np.clip(v, -limit, limit)) for v in (e, l, h))
    ax.errorbar([ce], [y], xerr=[[max(ce - cl, 0)], [max(ch - ce, 0)]], fmt="o",
                color=color, capsize=3, ms=4)
    if abs(e) > limit or abs(l) > limit or abs(h) > limit:
        side = -1 if min(e, l) < -limit else 1
        ax.annotate(f"{e:+.1f} [{l:+.1f}, {h:+.1f}] pp", (side * limit, y),
                    xytext=(4 * -side, 3), textcoords="offset points", fontsize=6,
                    va="bottom", ha="left" if side < 0 else "right", color=color)
        ax.plot([side * limit * 1.04], [y], marker="<" if side < 0 else ">", color=color,
                ms=5)


def claims_table(table: pd.DataFrame):
    """The claims as a readable table (no index, units in the cells): effect, δ, verdict,
    robustness, the multiplicity-adjusted decision and the source's own effect."""
    shown = table
    columns = ["study", "text", "shown", "delta_shown", "explained", "robust_shown",
               "adjusted", "source", "source_shown"]
    if "survives_bh" in table:  # over all studies only: one study's page shows none
        shown = table.assign(adjusted=np.where(
            table["verdict"] == "cannot tell", "—",
            np.where(table["survives_bh"], "survives", "does not survive")))
    else:
        columns.remove("adjusted")
    if table["study"].nunique() == 1:
        columns.remove("study")
    shown = shown[columns].rename(columns={
        "text": "claim", "shown": "effect [95% CI]", "delta_shown": "δ", "explained": "verdict",
        "robust_shown": "robustness (leave one seed out; retrain)",
        "adjusted": "Benjamini-Hochberg (FDR 5%)", "source_shown": "the source's own effect"})
    return shown.style.hide(axis="index")
