"""Seaborn figures shared by the study notebooks. Each figure carries its provenance line."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .results import provenance_line

sns.set_theme(context="notebook", style="whitegrid")


def stamp(fig, meta: dict) -> None:
    """Profile, device, commit and date at the foot of the figure."""
    fig.text(0.01, 0.005, provenance_line(meta), fontsize=7, color="0.4", ha="left",
             va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 1))


def gain_vs(table: pd.DataFrame, x: str, meta: dict, hue: str | None = None,
            y: str = "gain", ylabel: str = "SAM − SGD test accuracy (pp)", logx: bool = True,
            xlabel: str | None = None, ax=None, title: str | None = None):
    """Mean with 95% CI error bars vs ``x`` (one line per ``hue``); y in percentage points."""
    fig, ax = _fig(ax)
    groups = [(None, table)] if hue is None else table.groupby(hue, sort=True)
    palette = sns.color_palette(n_colors=max(1, len(groups) if hue else 1))
    for color, (name, g) in zip(palette, groups):
        g = g.sort_values(x)
        ax.errorbar(g[x], 100 * g[y], yerr=100 * g["ci95"].fillna(0), marker="o", capsize=3,
                    color=color, label=None if hue is None else f"{hue}={name}")
        _mark_diverged(ax, g, x, y)
    ax.axhline(0, color="0.3", lw=0.8, ls="--")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if hue is not None:
        ax.legend(fontsize=8)
    stamp(fig, meta)
    return fig


def _mark_diverged(ax, g, x, y):
    bad = g[g.get("diverged", 0) > 0] if "diverged" in g else g.iloc[0:0]
    for _, row in bad.iterrows():
        ax.annotate(f"{int(row['diverged'])} diverged", (row[x], 100 * np.nan_to_num(row[y])),
                    textcoords="offset points", xytext=(0, 8), fontsize=7, color="crimson",
                    ha="center")


def _fig(ax, size=(6.4, 4.0)):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    return ax.figure, ax
