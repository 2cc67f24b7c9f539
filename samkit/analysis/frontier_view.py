"""How the frontier study's page shows its methods table: the figure (accuracy against
gradient evaluations, the Pareto frontier drawn) and the display table."""
from __future__ import annotations

import numpy as np
import pandas as pd

from samkit.analysis import fmt

# One marker per optimizer family, so a method's family reads without the legend.
MARKERS = {"sgd": "o", "sam": "s", "asam": "s", "looksam": "^", "msam": "D"}
# A method whose mean is more than FAR_PP below the cell's best is drawn at the panel's foot
# with its value written, so one failed method does not squash the others into a line.
FAR_PP = 6.0


def figure(table: pd.DataFrame, meta: dict | None):
    """Test accuracy (mean, 95% CI) against gradient evaluations, one panel per (label noise,
    width), every method a labelled point; the Pareto frontier as a step line."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from samkit.analysis.plots import stamp
    widths = sorted(table["width"].unique()) or [None]
    noises = sorted(table["label_noise"].unique()) or [None]
    methods = list(dict.fromkeys(table.sort_values("grad_evals")["method"]))
    colors = dict(zip(methods, sns.color_palette("tab10", n_colors=max(1, len(methods)))))
    fig, axes = plt.subplots(len(noises), len(widths), figsize=(5.2 * len(widths) + 0.6,
                                                                  3.9 * len(noises) + 0.4),
                             squeeze=False)
    for i, p in enumerate(noises):
        for j, w in enumerate(widths):
            ax = axes[i][j]
            _panel(ax, table[(table["width"] == w) & (table["label_noise"] == p)], colors)
            ax.set_title(f"width {w} · label noise {fmt.rate(p) if p is not None else ''}",
                         fontsize=10)
            if i == len(noises) - 1:
                ax.set_xlabel("gradient evaluations (thousands)")
            if j == 0:
                ax.set_ylabel("test accuracy (%)")
    _legend(fig, axes, methods)
    if meta is not None:
        stamp(fig, meta)
    fig.alt_text = ("Test accuracy against gradient evaluations for every method, one panel "
                    "per width and label-noise rate, with 95% CIs and the Pareto frontier "
                    "drawn as a dashed step line")
    return fig


def _panel(ax, t: pd.DataFrame, colors: dict) -> None:
    """One cell's methods as points with CIs (frontier points larger, black-edged), the
    frontier as a step line, and the diverged runs noted at the foot."""
    ok = t[np.isfinite(t["acc"].astype(float))]
    costliest = ok["grad_evals"].max() / 1e3
    far = ok["acc"] < ok["acc"].max() - FAR_PP / 100
    for _, r in ok[far].iterrows():
        ax.annotate(f"{r['method']}: {100 * r['acc']:.1f}% ↓", (r["grad_evals"] / 1e3, 0),
                    xycoords=("data", "axes fraction"), textcoords="offset points",
                    xytext=(0, 12), fontsize=7, ha="center", color=colors[r["method"]])
        ax.plot([r["grad_evals"] / 1e3], [0.02], marker="v", color=colors[r["method"]],
                transform=ax.get_xaxis_transform(), ls="", label=r["method"])
    ok = ok[~far]
    for _, r in ok.iterrows():
        err = [[max(r["acc"] - r["acc_low"], 0) if np.isfinite(r["acc_low"]) else 0],
               [max(r["acc_high"] - r["acc"], 0) if np.isfinite(r["acc_high"]) else 0]]
        ax.errorbar([r["grad_evals"] / 1e3], [100 * r["acc"]],
                    yerr=100 * np.asarray(err), fmt=MARKERS.get(r["optimizer"], "o"),
                    color=colors[r["method"]], capsize=3, ms=7 if r["frontier"] else 5,
                    markeredgecolor="black" if r["frontier"] else "none",
                    label=r["method"])
    front = ok[ok["frontier"].astype(bool)].sort_values("grad_evals")
    if len(front):
        # The step runs on to the costliest method: beyond the last frontier point, nothing
        # costlier does better.
        x = list(front["grad_evals"] / 1e3) + [costliest]
        y = list(100 * front["acc"]) + [100 * front["acc"].iloc[-1]]
        ax.step(x, y, where="post", color="0.3", lw=1.2, ls="--", zorder=0,
                label="Pareto frontier")
    for _, r in t[t["diverged"] > 0].iterrows():
        ax.annotate(f"{int(r['diverged'])} diverged", (r["grad_evals"] / 1e3, 0),
                    xycoords=("data", "axes fraction"), textcoords="offset points",
                    xytext=(0, 22), fontsize=7, color="crimson", ha="center")


def _legend(fig, axes, methods: list) -> None:
    """One legend for all panels, below them: the methods by cost, then the frontier."""
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    order = [m for m in methods if m in handles] + [k for k in handles if k not in methods]
    if order:
        fig.legend([handles[k] for k in order], order, loc="upper center", fontsize=9,
                   bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(order)), frameon=False,
                   title="black edge: on the Pareto frontier; ↓ far below the cell's best",
                   title_fontsize=8)


def display_table(table: pd.DataFrame):
    """The methods table as the page shows it: percentages, CIs, budgets."""
    rows = []
    for _, r in table.iterrows():
        rows.append({
            "width": int(r["width"]), "label noise": fmt.rate(r["label_noise"]),
            "method": r["method"] + (" ★" if r["frontier"] else ""),
            "grad. evals": f"{r['grad_evals']:,.0f}" if np.isfinite(r["grad_evals"]) else "n/a",
            "× SGD 1×": f"{r['budget']:.2f}" if np.isfinite(r["budget"]) else "n/a",
            "train s": f"{r['train_seconds']:.0f}" if np.isfinite(r["train_seconds"]) else "n/a",
            "test acc (%) [95% CI]": _acc(r),
            "− SAM [95% CI]": fmt.pp(r["vs_sam"], r["vs_sam_low"], r["vs_sam_high"]),
            "− SGD 2× [95% CI]": fmt.pp(r["vs_sgd2x"], r["vs_sgd2x_low"], r["vs_sgd2x_high"]),
            "finished": int(r["n"]), "diverged": int(r["diverged"])})
    return pd.DataFrame(rows).style.hide(axis="index")


def _acc(r) -> str:
    if not np.isfinite(r["acc"]):
        return "n/a"
    s = f"{100 * r['acc']:.2f}"
    if np.isfinite(r["acc_low"]) and np.isfinite(r["acc_high"]):
        s += f" [{100 * r['acc_low']:.2f}, {100 * r['acc_high']:.2f}]"
    return s
