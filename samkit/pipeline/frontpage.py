"""The book's front page, computed from the studies' saved results (metrics.json and the
noise study's gain table): the answer at a glance (SAM − SGD by regime, one figure, and the
sentences that read it), every tested claim grouped by study, and the advice list."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from samkit.analysis import stats
from samkit.studies import MODULES

# What a practitioner should take from a claim, by its verdict. The numbers come from the
# claim ({shown}); a missing claim raises (a renamed metric is an error, not "n/a"). Only a
# robust verdict (see samkit.analysis.robustness) gives advice; a fragile one is listed as such.
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
            "delta", "delta_shown", "direction", "verdict", "explained", "shown",
            "seeds_needed", "p_value", "source_effect", "source_shown", "robustness"]
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
        "scope": _scope(done.get(EQUAL_COMPUTE[0])),
    }
    return out


def _scope(study: dict | None) -> str:
    """The model and data behind the figure, in words (from its study's facts)."""
    if study is None:
        return "no runs yet"
    f = study["metrics"]["facts"]
    model = f.get("models", "n/a").split(", width")[0]
    return f"{model}, {f.get('train_images', 'n/a')} Fashion-MNIST training images"


def _list(table: pd.DataFrame, verdict: str) -> str:
    t = table[table["verdict"] == verdict]
    return "; ".join(f"{r.text} ({r.shown})" for r in t.itertuples()) or "none"


def _cost(compute: dict | None, bench: str = "results/bench") -> str:
    """What SAM costs: exact gradient evaluations from the compute study's runs and the
    step-time ratio from the benchmark (timed in isolation, interleaved with SGD)."""
    from samkit.pipeline.results import benchmark_table, load_benchmarks
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


# ----------------------------------------------------------------------------- at a glance
# The front page's figure: SAM − SGD test accuracy in each regime, label noise (clean or noisy)
# × width (narrow or wide) × budget. "Equal compute": SAM against SGD trained for twice the
# epochs (as many gradient evaluations), the frontier study's claim in each of its cells.
# "Equal epochs": SAM against SGD with the same epochs in the same cells (the same MLP, data and
# schedule), from the noise study's gain table; its claim where the noise study tests that
# cell (verdict and robustness from there), else the verdict rule on the table's CI, with no
# robustness check.
EQUAL_COMPUTE = ("frontier", "sam_vs_sgd2x")          # (study, claim id after "<cell>.")
EQUAL_EPOCHS = ("noise", "gain")                      # (study, table)
EQUAL_EPOCHS_CLAIM = "widest_at_max_noise"            # the noise study's claim: widest, max noise
# The verdicts in the figure's margin, in a practitioner's words.
VERDICT_WORDS = {"supports": "SAM wins", "below δ": "gain < δ", "contradicts": "no gain ≥ δ",
                 "cannot tell": "can't tell"}
BUDGETS = {"equal epochs": ("SGD with the same epochs", "#3a6ea5", "o"),
           "equal compute": ("SGD with twice the epochs (equal compute)", "#d0622c", "s")}
POINT_COLUMNS = ["noise", "width", "budget", "regime", "estimate", "low", "high", "n", "delta",
                 "verdict", "robust", "study"]


def glance_points(profile: str, root: str = "results") -> pd.DataFrame:
    """One row per regime point of the front page's figure (POINT_COLUMNS): label noise rate,
    width, budget, the regime in words, SAM − SGD (fractions) with its 95% CI, seed pairs, δ,
    the verdict, robust (True, False, or None: not checked) and the study it comes from. Empty
    without the frontier study's results; equal-epochs points need the noise study's."""
    front = load(EQUAL_COMPUTE[0], profile, root)
    if front is None:
        return pd.DataFrame(columns=POINT_COLUMNS)
    facts, claims_ = front["metrics"]["facts"], front["metrics"]["claims"]
    gain, noise_claims = _equal_epochs(profile, root)
    rows = []
    for cell in filter(None, facts.get("cells", "").split(", ")):
        width, rate = int(facts[cell]["width"]), float(facts[cell]["noise"].rstrip("%")) / 100
        c = claims_.get(f"{cell}.{EQUAL_COMPUTE[1]}")
        if c is not None:
            rows.append(_point(rate, width, "equal compute", c["estimate"], c["ci_low"],
                               c["ci_high"], c["n"], c["delta"], c["verdict"],
                               c.get("robustness"), EQUAL_COMPUTE[0]))
        if gain is None:
            continue
        row = gain[np.isclose(gain["label_noise"], rate) & (gain["width"] == width)]
        if row.empty:
            continue
        r = row.iloc[0]
        c = noise_claims.get(EQUAL_EPOCHS_CLAIM)
        if (c is not None and np.isclose(rate, gain["label_noise"].max())
                and width == gain["width"].max()):
            rows.append(_point(rate, width, "equal epochs", c["estimate"], c["ci_low"],
                               c["ci_high"], c["n"], c["delta"], c["verdict"],
                               c.get("robustness"), EQUAL_EPOCHS[0]))
        else:
            delta = (c or {}).get("delta", 0.003)
            effect = stats.Effect(float(r["estimate"]), float(r["low"]), float(r["high"]),
                                  int(r["n"]), float(r["sd"]))
            rows.append(_point(rate, width, "equal epochs", effect.estimate, effect.low,
                               effect.high, effect.n, delta, stats.verdict(effect, delta),
                               None, EQUAL_EPOCHS[0]))
    points = pd.DataFrame(rows, columns=POINT_COLUMNS)
    if len(points):
        narrow = points["width"].min()
        points["regime"] = [f"{_labels(p)}, {'narrow' if w == narrow else 'wide'} (width {w})"
                            for p, w in zip(points["noise"], points["width"])]
    return points


def _equal_epochs(profile: str, root: str):
    """The noise study's gain table and claims (None, {} without its results)."""
    meta = load(EQUAL_EPOCHS[0], profile, root)
    path = os.path.join(root, profile, EQUAL_EPOCHS[0], f"{EQUAL_EPOCHS[1]}.csv")
    if meta is None or not os.path.exists(path):
        return None, {}
    return pd.read_csv(path), meta["metrics"]["claims"]


def _point(rate, width, budget, est, low, high, n, delta, verdict, robustness, study) -> dict:
    robust = None if not robustness else not robustness.get("fragile", False)
    return {"noise": rate, "width": int(width), "budget": budget, "regime": "",
            "estimate": est, "low": low, "high": high, "n": int(n), "delta": delta,
            "verdict": verdict, "robust": robust, "study": study}


def _labels(rate: float) -> str:
    from samkit.analysis.fmt import rate as shown
    return "clean labels" if rate == 0 else f"{shown(rate)} noisy labels"


def glance(points: pd.DataFrame):
    """The answer at a glance: SAM − SGD (pp, 95% CI) per regime, one row per label noise and
    width, one marker per budget; filled markers are robust verdicts; the ±δ band shaded; each
    point's verdict written in the right margin. None without points."""
    if points.empty:
        return None
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    cells = sorted({(p, w) for p, w in zip(points["noise"], points["width"])})
    fig, ax = plt.subplots(figsize=(5.6, 1.1 * len(cells) + 2.4))
    delta = 100 * float(points["delta"].max())
    ax.axvspan(-delta, delta, color="0.9", zorder=0, lw=0)
    ax.axvline(0, color="0.35", lw=0.9, ls="--", zorder=1)
    offsets = {"equal epochs": 0.17, "equal compute": -0.17}
    labels = []
    for i, (p, w) in enumerate(cells):
        y = len(cells) - 1 - i
        sub = points[(points["noise"] == p) & (points["width"] == w)]
        labels.append((y, sub["regime"].iloc[0].replace(", ", "\n", 1)))
        for _, r in sub.iterrows():
            _, color, marker = BUDGETS[r["budget"]]
            yy = y + offsets[r["budget"]]
            est, lo, hi = (100 * float(r[k]) for k in ("estimate", "low", "high"))
            err = [[max(est - lo, 0) if np.isfinite(lo) else 0],
                   [max(hi - est, 0) if np.isfinite(hi) else 0]]
            ax.errorbar([est], [yy], xerr=err, fmt=marker, color=color, ms=8, capsize=3,
                        elinewidth=1.6, mew=1.6, zorder=3,
                        mfc=color if r["robust"] is True else "white")
            ax.annotate(VERDICT_WORDS[r["verdict"]], xy=(1.02, yy),
                        xycoords=("axes fraction", "data"), va="center", ha="left",
                        fontsize=11, color=color)
    ax.set_yticks([y for y, _ in labels], [t for _, t in labels], fontsize=11)
    ax.set_ylim(-0.6, len(cells) - 0.4)
    ax.set_xlabel("SAM − SGD test accuracy (pp), 95% CI", fontsize=12)
    ax.tick_params(axis="x", labelsize=11)
    ax.set_title("SAM's gain over SGD by regime", fontsize=13, loc="left")
    ax.annotate("verdict", xy=(1.02, 1.0), xycoords="axes fraction", fontsize=10,
                color="0.35", va="bottom")
    from matplotlib.patches import Patch
    handles = [Line2D([], [], color=c, marker=m, ls="", ms=8, label=f"vs {name}")
               for name, c, m in BUDGETS.values()]
    handles += [Line2D([], [], color="0.2", marker="o", ls="", ms=8, label="robust verdict"),
                Line2D([], [], color="0.2", marker="o", mfc="white", ls="", ms=8,
                       label="fragile or not checked"),
                Patch(color="0.9", label=f"±δ ({delta:.2f} pp): too small to matter")]
    fig.legend(handles=handles, loc="lower left", ncol=1, fontsize=10.5, frameon=False,
               bbox_to_anchor=(0.0, 0.0))
    fig.tight_layout(rect=(0, 1.4 / fig.get_figheight(), 1, 1))
    fig.alt_text = ("SAM minus SGD test accuracy in percentage points with 95% CIs, one row per "
                    "label-noise rate and width, one marker for SGD with the same epochs and "
                    "one for SGD with twice the epochs (equal compute); filled markers are "
                    "robust verdicts; the verdict of each point is written at the right")
    return fig


def glance_sentences(points: pd.DataFrame, answer_: dict) -> list[str]:
    """The sentences under the figure: how to read it (pp, CI, δ, the markers: each explained
    once), what it says per label regime, with what to do, and what SAM costs. All numbers and
    words of judgement come from ``points`` and ``answer_`` (``answer``)."""
    if points.empty:
        return ["No study behind this figure has results yet."]
    delta = f"{100 * float(points['delta'].max()):.2f} pp"
    lines = [
        "**How to read it.** Each marker is SAM's test accuracy minus SGD's in percentage "
        "points (pp), averaged over seeds that each train both on the same data "
        f"({answer_['scope']}), with its 95% confidence interval (CI, the bar); the grey band "
        "is ±δ, where "
        f"δ = {delta} is the smallest gain worth having, and a filled marker is a verdict that "
        "holds when any one seed is dropped and when runs are retrained."]
    for rate in sorted(points["noise"].unique(), reverse=True):
        lines.append(_regime_sentence(_labels(rate), points[points["noise"] == rate]))
    lines.append(f"**What it costs:** {answer_['cost']}; that is why the equal-compute comparison "
                 "gives SGD twice the epochs.")
    return lines


def _regime_sentence(name: str, pts: pd.DataFrame) -> str:
    """One label regime: where SAM wins, where it gains nothing worth having, where the runs
    cannot tell, and what to do (the verdicts decide the words, the points give the numbers)."""
    def where(d):
        return "; ".join(f"width {w} at {b}" for w, b in zip(d["width"], d["budget"]))
    won = pts[pts["verdict"] == "supports"]
    null = pts[pts["verdict"].isin(["contradicts", "below δ"])]
    open_ = pts[pts["verdict"] == "cannot tell"]
    n, robust = len(pts), int((won["robust"] == True).sum())  # noqa: E712 (None: not checked)
    groups = [(won, "beats SGD"), (null, "gains nothing worth having"),
              (open_, "cannot be told apart from SGD")]
    groups = [(d, what) for d, what in groups if len(d)]
    parts = []
    for i, (d, what) in enumerate(groups):
        count = (f"all {n} settings" if len(d) == n else f"{len(d)} of {n} settings" if i == 0
                 else ("the other one" if len(d) == 1 else f"the other {len(d)}")
                 if i == len(groups) - 1 else f"{len(d)}")
        detail = where(d) if len(d) <= 2 and d is not won else ""
        if d is won:
            lo, hi = 100 * d["estimate"].min(), 100 * d["estimate"].max()
            detail = (f"by {lo:+.2f} pp" if len(d) == 1 else f"by {lo:+.2f} to {hi:+.2f} pp") \
                + f"; {robust} of these verdicts robust"
        parts.append(f"{what} in {count}" + (f" ({detail})" if detail else ""))
    text = f"**With {name}**, SAM " + (", ".join(parts[:-1]) + " and " if len(parts) > 1 else "") \
        + parts[-1]
    compute = pts[pts["budget"] == "equal compute"]
    if len(compute) and (compute["verdict"] == "supports").all():
        return text + ": it still wins at equal compute, so prefer SAM when labels are this noisy."
    top = 100 * np.nanmax(pts["high"].astype(float))
    then = ("SGD given the same compute is the cheaper choice"
            if len(compute) and not (compute["verdict"] == "supports").any()
            else "test both on your own data")
    return (text + f": no CI reaches above {top:+.2f} pp, so SAM's doubled cost buys at most "
            f"that; {then}.")


def claims_markdown(table: pd.DataFrame, toc: str = os.path.join("book", "_toc.yml")) -> str:
    """Every claim as MyST: one table per study (fmt.claims_table), headed by a link to the
    study's page where the book has one (else its title); decided verdicts that do not
    survive the Benjamini-Hochberg adjustment marked."""
    from samkit.analysis import fmt
    from samkit.studies import module
    pages = open(toc).read() if os.path.exists(toc) else ""
    parts = []
    for study in dict.fromkeys(table["study"]):
        rows = table[table["study"] == study].to_dict("records")
        head = (f"{{doc}}`studies/{study}`" if f"studies/{study}" in pages
                else module(study).TITLE)
        parts.append(f"**{head}**\n\n" + fmt.claims_table(rows, source_effect=False,
                                                           bh="survives_bh" in table))
    return "\n".join(parts)


def claims_table(table: pd.DataFrame):
    """The claims of ``table`` (``claims``) as the book shows them (fmt.claims_table), for a
    notebook cell to display."""
    from IPython.display import Markdown
    from samkit.analysis import fmt
    return Markdown(fmt.claims_table(table.to_dict("records")))
