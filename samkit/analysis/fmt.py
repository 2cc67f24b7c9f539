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
    elif _ok(log_low) and log_high == math.inf:   # a lower bound only (censored data)
        s += f" [{math.exp(log_low):.2f}, ∞)"
    elif log_low == -math.inf and _ok(log_high):
        s += f" (0, {math.exp(log_high):.2f}]"
    return s


def num(x, digits: int = 3) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


# How the display tables name the columns that describe a cell (units in the header).
COLUMN_NAMES = {"params": "parameters", "width": "width (neurons per layer)",
                "n_train": "training images", "label_noise": "label noise", "rho": "ρ"}


def interval(est, low=None, high=None, ratio_: bool = False) -> str:
    """An effect and its CI without the unit (the column header carries it):
    '+0.84 [+0.31, +1.37]' (pp) or '0.34 [0.31, 0.37]' (a ratio from its logs)."""
    if not _ok(est):
        return "n/a"
    if ratio_:
        f = lambda v: f"{math.exp(v):.2f}"  # noqa: E731
    else:
        f = lambda v: f"{100 * v:+.2f}"  # noqa: E731
    # a non-breaking space inside the brackets: a narrow column breaks before the CI only
    return f(est) + (f" [{f(low)},\u00a0{f(high)}]" if _ok(low) and _ok(high) else "")


def effect_table(table, keys: list[str], rename: dict | None = None, ratio_: bool = False,
                 levels: tuple = ("treatment", "control"), level_names=("SAM", "SGD"),
                 effect: str | None = None):
    """A display table of paired effects: the ``keys`` columns, the effect with its 95% CI,
    both sides' mean test accuracy (%), seed pairs, and the pairs that diverged or failed
    the fit rule (each column only where any did); no index. Every
    header names its unit: the effect is '<effect> (pp) [95% CI]' (SAM − SGD by default), or
    for ``ratio_`` '<effect> (×) [95% CI]' (SAM / SGD), and the cells are bare numbers."""
    import pandas as pd
    names = {**COLUMN_NAMES, **(rename or {})}
    effect = effect or (f"{level_names[0]} / {level_names[1]}" if ratio_
                        else f"{level_names[0]} − {level_names[1]}")
    failed = [c for c in ("diverged", "unfit") if c in table and table[c].fillna(0).sum() > 0]
    rows = []
    for _, r in table.iterrows():
        row = {names.get(k, k): _key(k, r[k]) for k in keys}
        # the effect first after the cell (what a phone shows before the table scrolls)
        row[f"{effect} ({'×' if ratio_ else 'pp'}) [95% CI]"] = interval(
            r["estimate"], r["low"], r["high"], ratio_)
        for col, name in zip(levels, level_names):
            if col in r:
                row[name + (" (mean)" if ratio_ else " acc (%)")] = (
                    num(float(r[col])) if ratio_ else
                    f"{100 * r[col]:.2f}" if _ok(float(r[col])) else "n/a")
        row["seed pairs"] = int(r["n"])
        for c in failed:  # only where a pair failed somewhere in the table
            row[f"{c} pairs"] = int(r[c])
        rows.append(row)
    return pd.DataFrame(rows).style.hide(axis="index")


def _key(column: str, value):
    """A describing cell: counts with thousands separators, whole numbers without '.0'."""
    if isinstance(value, float) and _ok(value):
        if column == "rho":
            return f"{value:g}"
        if value.is_integer():
            return f"{int(value):,}" if column in ("params", "n_train") else str(int(value))
    if column in ("params", "n_train") and isinstance(value, int):
        return f"{value:,}"
    return value


# ----------------------------------------------------------------------------- claims tables
# A tested claim as the book's tables show it: its words (shortened to a label), its source
# cited, the effect, the verdict against δ and whether the verdict is robust. The tables are
# MyST markdown (a list-table) so that the citations resolve against book/references.bib; the
# book's CSS (book/_static/claims.css) turns each row into a card on a narrow screen.

# Asides a claim's words carry for the analysis that a table's label does without: a balanced
# parenthesis opening with one of these, or everything from one of the cut marks on.
_ASIDES = ("(shown:", "(per seed", "(a geometric")
_CUTS = ("; 'contradicts'", ": per seed,")


def claim_label(text: str) -> str:
    """A claim's words as a table label: asides dropped, model names spelled as in prose."""
    import re
    for cut in _CUTS:
        text = text.split(cut)[0]
    for aside in _ASIDES:
        while (i := text.find(aside)) >= 0:
            depth, j = 0, i
            for j in range(i, len(text)):
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                if depth == 0:
                    break
            text = text[:i].rstrip() + text[j + 1:]
    text = re.sub(r"\bmlp\b", "MLP", text)
    return " ".join(text.split()).rstrip(" ;:,")


def robust_short(robustness: dict | None) -> str:
    """Whether a verdict survives dropping each seed in turn and the retrained runs, briefly:
    'yes', 'no: …' naming what changes it, or 'not checked'."""
    if not robustness:
        return "not checked"
    if not robustness.get("fragile"):
        return "yes"
    import re
    what = []
    seeds = re.findall(r"without seed (\d+)", robustness.get("leave_one_out", ""))
    if len(seeds) == 1:
        what.append(f"seed {seeds[0]} is dropped")
    elif seeds:
        what.append(f"seed {', '.join(seeds[:-1])} or {seeds[-1]} is dropped" if len(seeds) < 4
                    else f"any of {len(seeds)} seeds is dropped")
    if robustness.get("retrain", "holds") not in ("holds", "not checked", ""):
        what.append("runs are retrained")
    return "no: flips if " + " or if ".join(what) if what else "no"


def _cell(text) -> str:
    """Text safe inside a MyST list-table cell: one line, no table or math syntax."""
    s = " ".join(str(text).split())
    return s.replace("|", "\\|").replace("$", "\\$").replace("*", "\\*") or "—"


def claims_table(claims, source_effect: bool = True, bh: bool = False) -> str:
    """The claims as a MyST list-table: claim, source (cited), effect [95% CI], verdict (δ),
    robust. ``claims``: mappings with metrics.json's claim fields (text, source, shown,
    verdict, delta_shown, robustness; source_shown and survives_bh when present).
    ``source_effect``: the source's own effect, where it gives one, beside its citation.
    ``bh``: mark a decided verdict that does not survive the Benjamini-Hochberg adjustment."""
    from samkit.analysis.sources import cite
    claims = list(claims)
    with_source = source_effect and any(c.get("source_effect") is not None and
                                        c.get("source_effect") == c.get("source_effect")
                                        for c in claims)
    head = ["claim", "source", "effect [95% CI]", "verdict (δ)", "robust"]
    widths = [30, 24, 16, 15, 15]
    rows = []
    for c in claims:
        verdict = c["verdict"]
        delta = c["delta_shown"] + (" per doubling" if c.get("unit") == "pp/doubling" else "")
        verdict += f" (δ {delta})"
        if bh and c["verdict"] != "cannot tell" and c.get("survives_bh") is False:
            verdict += "; not after BH"
        source = cite(c["source"])
        if with_source and _source_effect(c) != "—":
            source += f"; its own effect: {_source_effect(c)}"
        row = [claim_label(c["text"]), source, _unbroken_ci(c["shown"]), verdict,
               robust_short(c.get("robustness"))]
        rows.append(row)
    lines = [":::{list-table}", ":header-rows: 1", ":class: claims-table",
             f":widths: {' '.join(map(str, widths))}", ""]
    for row in [head] + rows:
        cells = [_cell(v) if i != 1 or row is head else " ".join(str(v).split())
                 for i, v in enumerate(row)]
        lines.append(f"* - {cells[0]}")
        lines += [f"  - {v}" for v in cells[1:]]
    lines.append(":::")
    return "\n".join(lines) + "\n"


def _unbroken_ci(shown: str) -> str:
    """'+0.18 pp [+0.00, +0.37]' with a non-breaking space inside the brackets."""
    import re
    return re.sub(r"\[([^\]]*?), ", lambda m: f"[{m.group(1)},\u00a0", shown)


def _source_effect(c) -> str:
    """The source's own effect in the claim's unit, and whether our 95% CI holds it."""
    v = c.get("source_effect")
    if v is None or v != v:
        return "—"
    shown = ratio(v) if c.get("unit") == "ratio" else pp(v).replace(
        " pp", " pp per doubling" if c.get("unit") == "pp/doubling" else " pp")
    low, high = c.get("ci_low"), c.get("ci_high")
    if _ok(low) and _ok(high):
        shown += f"; our CI {'holds' if low <= v <= high else 'excludes'} it"
    return shown


def with_units(table, names: dict, drop=()):
    """A display table (DataFrame or Styler) without its ``drop`` columns and with the others
    renamed to ``names`` (headers that carry their unit); in a column whose new header says
    (pp), the cells' own ' pp' is dropped. No index."""
    df = getattr(table, "data", table)
    df = df.drop(columns=[c for c in drop if c in df]).rename(columns=names)
    for col in df.columns:
        if "(pp)" in str(col):
            df[col] = df[col].astype(str).str.replace(" pp", "", regex=False)
    return df.style.hide(axis="index")


def vs_blog_table(table):
    """The headline study's table beside the blog's numbers (one row per arm and scale):
    ours with the half-width of its 95% CI, then the blog's, every header with its unit."""
    cols = {"arm": "arm (the blog's name)", "scale": "runs", "epochs": "our epochs",
            "test_acc": "test acc (%)", "test_acc_ci": "± 95% CI (pp)",
            "blog_test_acc": "blog's test acc (%)", "gap": "train − test gap (pp)",
            "gap_ci": "gap ± 95% CI (pp)", "blog_gap": "blog's gap (pp)",
            "blog_epochs": "blog's epochs", "n": "seeds", "diverged": "diverged runs"}
    shown = table.assign(**{c: (100 * table[c]).round(2) for c in
                            ("test_acc", "test_acc_ci", "blog_test_acc", "gap", "gap_ci",
                             "blog_gap") if c in table})
    shown = shown[[c for c in cols if c in shown]].rename(columns=cols)
    return shown.style.hide(axis="index").format(precision=2)
