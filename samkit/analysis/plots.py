"""Seaborn figures shared by the study notebooks. Each figure carries its provenance line."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from samkit.provenance import provenance_line

sns.set_theme(context="notebook", style="whitegrid")


def stamp(fig, meta: dict) -> None:
    """Profile, device, commit and date at the foot of the figure, wrapped to its width."""
    import textwrap
    width_chars = max(40, int(fig.get_figwidth() * 17))  # ~17 characters per inch at 7 pt
    lines = textwrap.wrap(provenance_line(meta), width_chars)
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=7, color="0.4", ha="left",
             va="bottom")
    fig.tight_layout(rect=(0, 0.012 + 0.11 * len(lines) / fig.get_figheight(), 1, 1))


def _fig(ax, size=(6.4, 4.0)):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    return ax.figure, ax


# ----------------------------------------------------------------------------- study figures

def _mark_diverged(ax, g, x, y):
    """Note above each row of ``g`` with diverged runs how many (at the foot if y is NaN)."""
    if "diverged" not in g:
        return
    for _, row in g[g["diverged"] > 0].iterrows():
        yv = row[y] if np.isfinite(row[y]) else ax.get_ylim()[0]
        ax.annotate(f"{int(row['diverged'])} diverged", (row[x], yv),
                    textcoords="offset points", xytext=(0, 8), fontsize=7, color="crimson",
                    ha="center")


def vs_blog(table: pd.DataFrame, meta: dict):
    """Per arm of a ``findings.vs_blog`` table, our mean with its 95% CI (dots) next to the
    blog's number (diamonds), for test accuracy and for the generalization gap; each axis
    spans the values shown (accuracy is not drawn from 0). The legend sits below the panels."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.9))
    xs = np.arange(len(table))
    ours_c, blog_c = sns.color_palette(n_colors=2)
    for ax, col, label in ((axes[0], "test_acc", "test accuracy (%)"),
                           (axes[1], "gap", "generalization gap, train − test (pp)")):
        ours = 100 * table[col].to_numpy(dtype=float)
        ci = 100 * table[f"{col}_ci"].fillna(0).to_numpy(dtype=float)
        ax.errorbar(xs - 0.1, ours, yerr=ci, fmt="o", ms=7, capsize=4, color=ours_c,
                    label="ours (mean, 95% CI)")
        ax.plot(xs + 0.1, 100 * table[f"blog_{col}"].to_numpy(dtype=float), "D", ms=7,
                color=blog_c, label="the blog's table")
        for i, r in table.reset_index(drop=True).iterrows():
            note = "" if np.isfinite(ours[i]) else "no finished run"
            if r.get("diverged", 0) and np.isfinite(r.get("diverged", 0)):
                note = f"{int(r['diverged'])} diverged " + note
            if note:
                ax.annotate(note, (i - 0.1, 0), xycoords=("data", "axes fraction"),
                            textcoords="offset points", xytext=(0, 4), fontsize=7,
                            color="crimson", ha="center")
        labels = [f"{a}\n(ours: {int(e)} ep)" if np.isfinite(e) else a
                  for a, e in zip(table["arm"], table["epochs"].astype(float))]
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_xlim(-0.5, len(table) - 0.5)
        ax.margins(y=0.15)
        ax.set_ylabel(label)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0.06))
    stamp(fig, meta)
    fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.1)
    return fig


def functions_grid(curves: pd.DataFrame, points: tuple, meta: dict,
                   row: str = "width", col: str = "optimizer", line: str = "seed",
                   notes: pd.DataFrame | None = None, note: str = "slope_tv"):
    """Learned 1-D functions (long table: x, y and the ``row``/``col``/``line`` columns): one
    panel per (row, col), one line per ``line`` value, the training ``points`` (xs, ys) as
    dots. ``notes``: a summary table (mean, ci95 per row/col) printed in each panel."""
    rows, cols = sorted(curves[row].unique()), sorted(curves[col].unique())
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.6 * len(cols) + 0.5,
                                                            2.4 * len(rows) + 0.6),
                             sharex=True, sharey=True, squeeze=False)
    lo, hi = min(points[1]), max(points[1])
    pad = 0.6 * (hi - lo)
    for (i, r), (j, c) in ((ic, jc) for ic in enumerate(rows) for jc in enumerate(cols)):
        ax = axes[i][j]
        g = curves[(curves[row] == r) & (curves[col] == c)]
        for k, (name, s) in enumerate(g.groupby(line, sort=True)):
            ax.plot(s["x"], s["y"], lw=1.3, color=sns.color_palette(n_colors=8)[k % 8],
                    label=f"{line} {name}")
        ax.scatter(points[0], points[1], s=14, color="black", zorder=3)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(f"{col} {str(c).upper()} · {row} {r}", fontsize=9)
        if notes is not None:
            n = notes[(notes[row] == r) & (notes[col] == c)]
            if len(n):
                txt = f"{note} {n['mean'].iloc[0]:.3g}"
                if np.isfinite(n["ci95"].iloc[0]):
                    txt += f" ± {n['ci95'].iloc[0]:.2g}"
                if n.get("diverged", pd.Series([0])).iloc[0]:
                    txt += f"\n{int(n['diverged'].iloc[0])} diverged"
                ax.set_title(f"{ax.get_title()}\n{txt}", fontsize=8)
    fig.suptitle(f"one line per {line}; black dots: the training points", fontsize=9,
                 x=0.01, ha="left")
    stamp(fig, meta)
    return fig


def step_ratios(bench: pd.DataFrame, provenance: list[dict]):
    """SAM/SGD and reference-SAM/SGD step-time ratios per configuration as dots on an axis
    that spans them (not from 0: the question is 2.0 against 2.05), floor and target marked."""
    if bench.empty:
        fig, ax = plt.subplots(figsize=(7.5, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no step-time benchmark results yet", ha="center")
        return fig
    d = bench[bench["variant"] != "sgd"].copy()
    d["config"] = d["model"] + " b" + d["batch"].astype(str) + " " + d["mode"]
    configs = list(dict.fromkeys(d["config"]))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(configs) + 1.8))
    names = {"sam": "samkit SAM", "ref_sam": "reference SAM"}
    for (variant, name), color, dy in zip(names.items(), sns.color_palette(n_colors=2),
                                          (-0.12, 0.12)):
        v = d[d["variant"] == variant]
        ax.plot(v["ratio_to_sgd"], [configs.index(c) + dy for c in v["config"]], "o",
                color=color, ms=7, label=name)
    ax.axvline(2.0, color="0.2", ls="--", lw=1, label="floor 2.0")
    ax.axvline(2.05, color="crimson", ls=":", lw=1, label="target 2.05")
    ax.set_yticks(range(len(configs)), configs)
    ax.set_ylim(len(configs) - 0.5, -0.5)
    lo, hi = min(d["ratio_to_sgd"].min(), 2.0), max(d["ratio_to_sgd"].max(), 2.05)
    ax.set_xlim(lo - 0.1 * (hi - lo) - 0.02, hi + 0.1 * (hi - lo) + 0.02)
    ax.set_xlabel("step time / SGD step time (×)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False, fontsize=8)
    devices = "; ".join(sorted({f"{p['device']}, torch {p['torch']}, {p['date'][:10]}"
                                for p in provenance}))
    fig.text(0.01, 0.005, f"device: {devices}", fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


# ----------------------------------------------------------------------------- paired effects

def effect_vs(table: pd.DataFrame, x: str, meta: dict | None, hue: str | None = None,
              labels: dict | None = None, xlabel: str | None = None,
              ylabel: str = "SAM − SGD test accuracy (pp)", title: str | None = None,
              ratio: bool = False, ax=None, alt: str | None = None):
    """Paired effects (``estimate`` with its 95% CI ``low``..``high``) vs ``x`` on a log axis
    with ticks at the actual values, one dodged series per ``hue`` (``labels`` maps a hue
    value to its legend text); a zero line (1 for ratios); diverged pairs annotated."""
    fig, ax = _fig(ax)
    _dodged_series(ax, table, x, _series(table, hue), hue, labels,
                   np.exp if ratio else (lambda v: 100 * v))
    ax.axhline(1 if ratio else 0, color="0.3", lw=0.8, ls="--")
    if ratio:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}×")
        ax.yaxis.set_minor_formatter(lambda v, _: f"{v:g}×" if f"{v:g}"[0] in "25" else "")
    elif _outlying(table):
        # One very uncertain point (e.g. a tiny model whose runs sometimes collapse) would
        # squash every other interval into a line: linear within ±1 pp, logarithmic beyond.
        ax.set_yscale("symlog", linthresh=1.0)
        ticks = [-30, -10, -3, -1, -0.5, 0, 0.5, 1, 3, 10, 30]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.yaxis.set_minor_locator(plt.NullLocator())
        ylabel += "\n(linear within ±1 pp, logarithmic beyond)"
    return _label(fig, ax, xlabel or x, ylabel, title, hue is not None, meta, alt)


def _series(table: pd.DataFrame, hue: str | None) -> list:
    """(hue value, rows) per series; one unnamed series without ``hue``."""
    return [(None, table)] if hue is None else list(table.groupby(hue, sort=True))


def _dodged_series(ax, table, x, groups, hue, labels, shown) -> None:
    """Each (name, rows) of ``groups`` as points with 95% CIs (columns ``estimate``, ``low``,
    ``high``; ``shown`` maps them to the plotted scale: ×100 for pp, exp for logs) against
    ``x`` on a log axis ticked at the actual values. Each series is shifted a little sideways,
    so that CIs at one x do not hide each other. Rows with diverged runs are annotated."""
    palette = sns.color_palette(n_colors=max(1, len(groups)))
    for i, (color, (name, g)) in enumerate(zip(palette, groups)):
        g = g.sort_values(x)
        shift = 1.06 ** (i - (len(groups) - 1) / 2)  # dodge on the log axis
        est, lo, hi = (shown(g[c].to_numpy(float)) for c in ("estimate", "low", "high"))
        err = np.nan_to_num(np.vstack([est - lo, hi - est]), nan=0.0)
        label = None if hue is None else (labels or {}).get(name, f"{hue} {name}")
        ax.errorbar(g[x] * shift, est, yerr=err, marker="o", capsize=3, color=color,
                    label=label)
        _mark_diverged(ax, g.assign(_shown=est), x, "_shown")
    xs = sorted(v for v in table[x].unique() if np.isfinite(v) and v > 0)
    ax.set_xscale("log")
    ax.set_xticks(xs, _thinned([_tick(v) for v in xs], xs))
    ax.xaxis.set_minor_locator(plt.NullLocator())


def _thinned(labels: list, xs: list, factor: float = 1.25) -> list:
    """Tick labels with those closer than ``factor`` (on the log axis) to the last labelled
    tick left blank, so that no two labels overlap (the ticks stay)."""
    out, last = [], None
    for label, v in zip(labels, xs):
        keep = last is None or v / last >= factor
        out.append(label if keep else "")
        last = v if keep else last
    return out


def _label(fig, ax, xlabel, ylabel, title, legend, meta, alt):
    """Axis labels, title, legend, the provenance stamp and the alt text (the line plots')."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend:
        outside_legend(ax)
    if meta is not None:
        stamp(fig, meta)
    if alt:
        fig.alt_text = alt
    return fig


def outside_legend(ax, **kw) -> None:
    """The axes' legend to the right of it, never over the data (the layout makes room)."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              borderaxespad=0, **kw)


def _outlying(table: pd.DataFrame) -> bool:
    ends = 100 * table[["low", "high"]].abs().max(axis=1).dropna()
    return len(ends) > 2 and ends.max() > 5 * max(ends.median(), 0.2)


def _tick(v) -> str:
    v = float(v)
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    return f"{int(v)}" if v.is_integer() else f"{v:.3g}"


def curves(history: pd.DataFrame, meta: dict | None, y: str = "test_acc", hue: str = "optimizer",
           col: str | None = None, ylabel: str = "test accuracy (%)", percent: bool = True):
    """Training curves from the stored per-epoch history (mean over seeds, 95% band), one
    panel per ``col`` value."""
    data = history.copy()
    if percent:
        data[y] = 100 * data[y]
    wrap = 4 if col is not None and data[col].nunique() > 4 else None
    g = sns.relplot(data=data, x="epoch", y=y, hue=hue, col=col, col_wrap=wrap, kind="line",
                    errorbar=("ci", 95), height=2.6, aspect=1.2, facet_kws={"sharey": False},
                    seed=0)  # the band is bootstrapped: a fixed seed redraws the same figure
    g.set_axis_labels("epoch", ylabel)
    if g.legend is not None:  # above the panels, never over a curve
        sns.move_legend(g, "lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    if meta is not None:
        stamp(g.figure, meta)
    return g.figure


def levels_vs(table: pd.DataFrame, x: str, meta: dict | None, hue: str | None = None,
              labels: dict | None = None, xlabel: str | None = None, ylabel: str = "",
              title: str | None = None, log: bool = True, ax=None, alt: str | None = None):
    """Levels (``estimate`` with its 95% CI ``low``..``high``) vs ``x`` on a log axis with ticks
    at the actual values, one dodged series per ``hue``; no reference line (levels, not
    differences). ``log``: the three columns are logs (geometric means), drawn as exp() on a
    log y axis. ``labels`` (hue value -> legend text) also orders the series. Groups with
    diverged runs (column ``diverged``) are annotated."""
    fig, ax = _fig(ax)
    groups = _series(table, hue)
    if labels:
        order = list(labels)
        groups.sort(key=lambda ng: order.index(ng[0]) if ng[0] in order else len(order))
    _dodged_series(ax, table, x, groups, hue, labels, np.exp if log else (lambda v: v))
    if log and np.isfinite(table["estimate"].to_numpy(float)).any():  # nothing to scale if all
        ax.set_yscale("log")                                           # runs diverged
    return _label(fig, ax, xlabel or x, ylabel, title, hue is not None, meta, alt)
