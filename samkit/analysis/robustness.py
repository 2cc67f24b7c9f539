"""Does a verdict survive a second look? Two checks, run on every claim of a study:

- **leave one seed out**: the study analysed again without each seed in turn; a verdict that
  changes when any single seed is dropped rests on that seed;
- **retrain check**: a fixed sample of runs (the lowest seed of every study) retrained under
  another CPU kernel path (``RETRAIN_ROOT/<set>/``, e.g. AVX2 kernels where the cache was
  trained with AVX-512: another summation order, as on another CPU) and substituted for the
  committed runs; a verdict that changes rests on the rounding of one machine.

A verdict that changes under either is ``fragile``; the front page's advice uses robust
verdicts only.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os

import pandas as pd

from samkit.measure import fit
from samkit.train.config import TrainConfig

RETRAIN_ROOT = "results/retrain"
CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def retrain_sets(root: str = RETRAIN_ROOT) -> dict[str, pd.DataFrame]:
    """{set name: one row per retrained run (metrics only, indexed by run key)} for every
    folder of ``root`` that holds stored results."""
    from samkit.sweep.engine import to_row
    sets = {}
    for folder in sorted(glob.glob(os.path.join(glob.escape(root), "*", ""))):
        rows = {}
        for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
            with open(path) as f:
                result = json.load(f)
            if isinstance(result, dict) and "config" in result:
                row = to_row(result)
                rows[os.path.basename(path)[:-5]] = {k: v for k, v in row.items()
                                                     if k not in CONFIG_FIELDS}
        if rows:
            sets[os.path.basename(os.path.dirname(folder))] = pd.DataFrame.from_dict(
                rows, orient="index")
    return sets


def substitute(raw: pd.DataFrame, retrained: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``raw`` (unmarked runs) with the metrics of every run that ``retrained`` holds replaced
    by the retrained ones (the study's own config columns, e.g. its tags, stay); and how many
    rows were replaced."""
    out = raw.copy()
    hit = out["key"].isin(retrained.index)
    for col in retrained.columns:
        if col in ("key", "cached"):
            continue
        if col not in out:
            out[col] = float("nan")
        out[col] = out[col].astype(object)
        out.loc[hit, col] = retrained.loc[out.loc[hit, "key"], col].to_numpy()
        out[col] = out[col].infer_objects()  # back to numbers where they are numbers
    return out, int(hit.sum())


def check(analyze, raw: pd.DataFrame, claims: list, retrained: dict[str, pd.DataFrame]) -> dict:
    """Fill every claim's ``robustness`` (leave one seed out; each retrain set) and return a
    summary for the page. ``analyze``: the study's analyze(runs); ``raw``: its runs before the
    fit rule (it is applied again to each variant)."""
    base = {c.id: c.verdict for c in claims}
    flips: dict[str, list[str]] = {cid: [] for cid in base}
    seeds = sorted(int(s) for s in raw["seed"].unique())
    for seed in seeds if len(seeds) > 2 else []:
        _compare(analyze(fit.mark(raw[raw["seed"] != seed])), base, flips,
                 f"without seed {seed}")
    loo = {cid: list(v) for cid, v in flips.items()}
    checked = []
    for name, rows in retrained.items():
        variant, n = substitute(raw, rows)
        if n:
            checked.append(f"{name} ({n} runs)")
            _compare(analyze(fit.mark(variant)), base, flips, f"retrained {name}")
    for c in claims:
        retrain_flips = [f for f in flips[c.id] if f not in loo[c.id]]
        c.robustness = {
            "fragile": bool(flips[c.id]),
            "leave_one_out": ("; ".join(loo[c.id]) or "holds") if len(seeds) > 2
                             else "not checked (fewer than 3 seeds)",
            "retrain": (("; ".join(retrain_flips) or "holds") if checked
                        else "not checked (no retrained runs of this study)"),
            "shown": "fragile: " + "; ".join(flips[c.id]) if flips[c.id] else "robust"}
    return {"retrain_sets": ", ".join(checked) or "none",
            "fragile": sum(c.robustness["fragile"] for c in claims)}


def _compare(analysis, base: dict, flips: dict, label: str) -> None:
    got = {c.id: c.verdict for c in analysis.claims}
    for cid, verdict in base.items():
        other = got.get(cid, "cannot tell")
        if other != verdict:
            flips[cid].append(f"{label}: {other}")
