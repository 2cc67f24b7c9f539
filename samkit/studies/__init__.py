"""One module per study: the claim it tests, and ``analyze(runs)`` -> tables and claims.

A study module defines ``NAME``, ``TITLE``, ``QUESTION`` (one line) and
``analyze(runs: DataFrame) -> Analysis``. Its runs come from its params.yaml section (the same
``base``/``grid``/``arms`` schema for every study); ``run`` ties the pieces together for the
study's notebook: configs -> cached runs -> analysis -> results/<profile>/<study>/.

Adding a study: a module here (listed in ``MODULES``), its params.yaml block, its notebook.
"""
from __future__ import annotations

import importlib
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import fit, fmt, stats

MODULES = ("headline", "width", "rho", "noise", "sparsity", "compute", "regularization",
           "hessian", "simplicity", "datasize", "frontier", "batchnorm", "fitspeed", "tuning",
           "longer", "asam_adam")


@dataclass(frozen=True)
class SourceEffect:
    """The source's own size of a claimed effect (read off its figure or table), in the
    claim's unit (a fraction for pp, a log ratio for ratios), with where it comes from."""
    value: float
    where: str


@dataclass
class Claim:
    """A tested claim: its words, its source, the measured effect and the verdict against δ.

    ``unit``: "pp" (a difference of accuracies), "pp/doubling" (a width-trend slope) or
    "ratio" (``effect`` is a difference of logs; shown as a ratio). ``source_effect``: the
    source's own estimate of the effect, where it quantifies one. ``robustness`` is filled in
    by ``robustness.check`` (leave-one-seed-out and the retrain check)."""
    id: str
    text: str
    source: str
    effect: stats.Effect
    delta: float
    delta_reason: str
    direction: int = 1
    unit: str = "pp"
    source_effect: SourceEffect | None = None
    robustness: dict | None = None
    # False: the claim stays off `dvc exp show` (a terminal holds a few columns per study);
    # it is on its page, the front page and metrics.json all the same.
    dvc_metric: bool = True

    @property
    def verdict(self) -> str:
        return stats.verdict(self.effect, self.delta, self.direction)

    @property
    def p_value(self) -> float:
        return stats.decision_p(self.effect, self.delta)

    @property
    def seeds_needed(self) -> int | None:
        if self.verdict != "cannot tell":
            return None
        return stats.seeds_needed(self.effect, self.delta)

    def _show(self, est, low=None, high=None) -> str:
        if self.unit == "ratio":
            return fmt.ratio(est, low, high)
        s = fmt.pp(est, low, high)
        return s.replace(" pp", " pp per doubling", 1) if self.unit == "pp/doubling" else s

    @property
    def shown(self) -> str:
        e = self.effect
        return self._show(e.estimate, e.low, e.high)

    @property
    def delta_shown(self) -> str:
        if self.unit == "ratio":
            return f"×{math.exp(self.delta):.2f}"
        return f"{100 * self.delta:.2f} pp"

    @property
    def source_shown(self) -> str:
        """The source's own effect, whether our 95% CI holds it, and whether it is below δ."""
        s = self.source_effect
        if s is None:
            return ""
        v = s.value
        held = self.effect.low <= v <= self.effect.high
        small = abs(v) < self.delta
        return (f"{self._show(v)} ({s.where}); our CI {'holds' if held else 'excludes'} it"
                + ("; the source's own effect is below δ, so this scale cannot resolve it"
                   if small else ""))

    def metrics(self) -> dict:
        """What metrics.json (and `dvc exp show`) records of this claim."""
        e = self.effect
        s = self.source_effect
        return {"text": self.text, "source": self.source, "unit": self.unit,
                "estimate": e.estimate, "ci_low": e.low, "ci_high": e.high, "n": e.n,
                "delta": self.delta, "delta_reason": self.delta_reason,
                "direction": self.direction, "verdict": self.verdict,
                "p_value": self.p_value, "seeds_needed": self.seeds_needed,
                "shown": self.shown, "delta_shown": self.delta_shown,
                "explained": self.explained,
                "source_effect": None if s is None else s.value,
                "source_where": None if s is None else s.where,
                "source_shown": self.source_shown,
                "robustness": self.robustness, "dvc_metric": self.dvc_metric}

    @property
    def explained(self) -> str:
        """The verdict with its reason, for prose and tables (ratios are read against 1)."""
        v, side = self.verdict, "above" if self.direction > 0 else "below"
        zero = "1 (no change)" if self.unit == "ratio" else "0"
        band = (f"×1/{math.exp(self.delta):.2f} to {self.delta_shown}" if self.unit == "ratio"
                else f"±{self.delta_shown}")
        small = (" The source's own effect is also below δ: it cannot be resolved at this scale."
                 if self.source_effect is not None and abs(self.source_effect.value) < self.delta
                 else "")
        if v == "supports":
            return f"supports: the 95% CI lies {side} {zero}" + small
        if v == "below δ":
            return (f"below δ: the 95% CI lies {side} {zero} but inside {band}: real, too "
                    "small to matter at this resolution" + small)
        if v == "contradicts":
            inside = (self.effect.low > -self.delta and self.effect.high < self.delta)
            return (f"contradicts: the 95% CI lies inside {band} (no effect worth having at "
                    "this scale)" if inside else
                    f"contradicts: the 95% CI lies on the other side of {zero}") + small
        n = self.seeds_needed
        if self.effect.n < 2:
            return "cannot tell: fewer than 2 finished seed pairs"
        more = (f"about {n} seeds would give 80% power to detect δ" if n and n <= stats.MAX_SEEDS
                else "no feasible number of seeds would decide it")
        return f"cannot tell: the 95% CI spans {zero} and reaches beyond {band}; {more}" + small


@dataclass
class Analysis:
    tables: dict[str, pd.DataFrame]
    claims: list[Claim]
    facts: dict = field(default_factory=dict)   # other numbers the page's prose quotes

    def metrics(self) -> dict:
        return {"claims": {c.id: c.metrics() for c in self.claims}, "facts": self.facts}

    def claim(self, claim_id: str) -> Claim:
        for c in self.claims:
            if c.id == claim_id:
                return c
        raise KeyError(f"no claim {claim_id!r}; has: {', '.join(c.id for c in self.claims)}")


@dataclass
class Study:
    name: str
    runs: pd.DataFrame
    analysis: Analysis
    meta: dict


def module(name: str):
    if name not in MODULES:
        raise KeyError(f"unknown study {name!r}; known: {', '.join(MODULES)}")
    return importlib.import_module(f"{__name__}.{name}")


def run(name: str, section: dict, profile: str, cache: str = "results/runs",
        root: str = "results", progress: bool = True,
        retrain_root: str | None = None) -> Study:
    """Configs from the study's params section -> cached runs -> the fit rule -> analysis ->
    robustness of every verdict -> saved results. ``progress``: one line per trained run;
    the worker processes write it to the terminal of `dvc repro` (the kernel's own output
    goes into the notebook, whose cell the book hides). ``retrain_root``: the retrain check's
    runs (default ``<root>/retrain``)."""
    from .. import params, results, robustness, sweep
    t0 = time.time()
    raw = sweep.run(params.study_configs(name, section, profile), cache=cache,
                    progress=progress)
    runs = fit.mark(raw)
    analyze = module(name).analyze
    analysis = analyze(runs)
    analysis.facts.update(regime(runs))
    retrained = robustness.retrain_sets(retrain_root or os.path.join(root, "retrain"))
    analysis.facts["robustness"] = robustness.check(analyze, raw, analysis.claims, retrained)
    meta = results.save(name, profile, runs, analysis.tables, params=section[profile],
                        seconds=time.time() - t0, metrics=analysis.metrics(), root=root)
    return Study(name, runs, analysis, meta)


def regime(runs: pd.DataFrame) -> dict:
    """The scale of a study in numbers, for its page: training images, epochs, seeds, the
    final training accuracy reached (lowest and highest over the finished runs)."""
    ok = runs[runs["status"] == "ok"]
    out = {"runs": len(runs), "diverged": int((runs["status"] == "diverged").sum()),
           "unfit": int((runs["status"] == "unfit").sum()), "fit_rule": fit.RULE,
           "seeds": int(runs["seed"].nunique()),
           "epochs": ", ".join(str(e) for e in sorted(runs["epochs"].unique()))}
    names = {"mlp": "MLP", "preact_resnet18": "PreAct ResNet-18", "one_hidden_relu":
             "one-hidden-layer ReLU net"}
    models = []
    for model, g in runs.groupby("model", sort=True):
        depth = (f" with {int(g['depth'].iloc[0])} hidden layers"
                 if model == "mlp" and "depth" in g else "")
        lo, hi = int(g["width"].min()), int(g["width"].max())
        models.append(f"{names.get(model, model)}{depth}, width "
                      + (f"{lo}" if lo == hi else f"{lo} to {hi}"))
    out["models"] = "; ".join(models)
    if "n_train" in runs:  # 0: the whole training set (less the validation split)
        out["train_images"] = ", ".join(f"{int(n):,}" if n else "all"
                                        for n in sorted(runs["n_train"].unique()))
    acc = ok["final_train_acc"].dropna() if "final_train_acc" in ok else ok.iloc[:0, :0]
    out["final_train_acc_min"] = fmt.pct(float(acc.min())) if len(acc) else "n/a"
    out["final_train_acc_max"] = fmt.pct(float(acc.max())) if len(acc) else "n/a"
    return out


def history(runs: pd.DataFrame, cache: str = "results/runs",
            keep: tuple = ("model", "width", "optimizer", "seed", "tag")) -> pd.DataFrame:
    """The stored per-epoch history of every finished run as one long table (one row per run
    and evaluated epoch), with the ``keep`` columns of its run."""
    from ..sweep import load_result
    frames = []
    for _, row in runs[runs["status"] == "ok"].iterrows():
        h = pd.DataFrame(load_result(row["key"], cache)["history"])
        for c in keep:
            if c in row:
                h[c] = row[c]
        frames.append(h)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def ensure_columns(runs: pd.DataFrame, columns) -> pd.DataFrame:
    """``runs`` with every column of ``columns`` present (NaN where missing): a run table
    whose runs all diverged has no ``best_*``/``final_*`` metrics at all."""
    missing = [c for c in columns if c not in runs]
    return runs.assign(**{c: float("nan") for c in missing}) if missing else runs


def status_line(runs: pd.DataFrame) -> str:
    """How many runs finished and fit, in words, for a page's prose (says so when none did)."""
    n = len(runs)
    diverged = int((runs["status"] == "diverged").sum())
    unfit = int((runs["status"] == "unfit").sum())
    if n == 0:
        return "there are no runs, so nothing can be compared and every verdict is cannot tell"
    if diverged + unfit == 0:
        return f"all {fmt.count(n, 'run')} finished and fit their training set"
    if diverged == n:
        return (f"all {fmt.count(n, 'run')} diverged, so nothing can be compared and every "
                "verdict is cannot tell")
    if diverged + unfit == n:
        return (f"none of the {fmt.count(n, 'run')} finished and fit its training set, so "
                "nothing can be compared and every verdict is cannot tell")
    parts = [f"{diverged} diverged"] * bool(diverged) + [f"{unfit} failed to fit"] * bool(unfit)
    first, _, rest = " and ".join(parts).partition(" ")  # "1 of 54 runs diverged and 2 ..."
    return (f"{first} of {fmt.count(n, 'run')} {rest}; a seed pair with such a side is left out "
            "of the effects and counted in the tables")


PAIRED_COLUMNS = ("estimate", "low", "high", "n", "sd", "diverged", "unfit", "treatment",
                  "control")


def paired_table(runs: pd.DataFrame, metric: str, treatment: dict, control: dict,
                 by: list[str], **kw) -> pd.DataFrame:
    """``stats.paired`` that keeps its columns when no seed pair exists at all (one side not
    run yet, e.g. a partial run cache), so that lookups find no row instead of no column."""
    table = stats.paired(runs, metric, treatment, control, by=by, **kw)
    return table if len(table) else pd.DataFrame(columns=[*by, *PAIRED_COLUMNS])


def effect_at(table: pd.DataFrame, **where) -> stats.Effect:
    """The effect in the row of a ``paired`` table where every column equals its ``where``
    value; no such row: no effect (NaN, n = 0)."""
    mask = pd.Series(True, index=table.index)
    for k, v in where.items():
        if k not in table:
            return stats.NO_EFFECT
        mask &= table[k] == v
    if not mask.any():
        return stats.NO_EFFECT
    r = table[mask].iloc[0]
    return stats.Effect(float(r["estimate"]), float(r["low"]), float(r["high"]), int(r["n"]),
                        float(r["sd"]))


# ----------------------------------------------------------------------------- SAM/SGD ratios
# Studies of a measure where smaller is the claim (Hessian sharpness, function complexity)
# compare SAM with SGD per seed as log(SAM) − log(SGD): a ratio, decided on its log.

SAM, SGD = {"optimizer": "sam"}, {"optimizer": "sgd"}  # the runs of each side
RATIO_DELTA = math.log(1.1)  # smallest effect: a 10% smaller value (ratio 1/1.1 or below)


def log_ratios(runs: pd.DataFrame, columns: dict, by: list[str]) -> dict:
    """{measure: the seed-paired table of log(SAM) − log(SGD) of its run column} for the
    {measure: column} pairs of ``columns``, per ``by`` cell."""
    return {m: paired_table(runs, col, SAM, SGD, by=by, log=True)
            for m, col in columns.items()}


def ratio_table(ratios: dict, by: list[str]) -> pd.DataFrame:
    """The ``log_ratios`` tables as one, with a ``measure`` column first."""
    return pd.concat([t.assign(measure=m) for m, t in ratios.items()],
                     ignore_index=True)[["measure", *by, *PAIRED_COLUMNS]]


def smaller_ratio_claim(claim_id: str, text: str, source: str, effect: stats.Effect,
                        delta_reason: str) -> Claim:
    """The claim that SAM's value is smaller than SGD's by at least ×1.1."""
    return Claim(claim_id, text, source, effect, RATIO_DELTA, delta_reason, direction=-1,
                 unit="ratio")


# ----------------------------------------------------------------------------- tuning
# Equal-budget tuning (AlgoPerf's rule): each arm's trials (its ``tag``'s runs that differ in
# hyperparameters) compete on validation accuracy; the chosen trial is reported on test.

SELECT_ON = "best_val_acc"    # the choice: validation accuracy at the early-stopped epoch
REPORT_CHOSEN = "best_test_acc"
HYPER = ("lr", "weight_decay", "rho")


def select_trials(runs: pd.DataFrame, cell: list[str]) -> pd.DataFrame:
    """Per (``cell``, seed, tag): the trial with the highest validation accuracy (ties: the
    first in lr, weight decay, ρ order), with its hyperparameters, its test accuracy and the
    number of trials it was chosen from, status "ok"; an arm whose trials all diverged or failed
    to fit gets a failed row for that seed. Only ``SELECT_ON`` orders the trials: test
    accuracy never does."""
    ok = runs[runs["status"] == "ok"].dropna(subset=[SELECT_ON])
    group = [*cell, "seed", "tag"]
    ordered = ok.sort_values([*group, SELECT_ON, *HYPER],
                             ascending=[True] * len(group) + [False] + [True] * len(HYPER),
                             kind="mergesort")
    chosen = ordered.groupby(group, sort=True).head(1)
    trials = runs.groupby(group).agg(trials=("status", "size"),
                                     all_diverged=("status", lambda s: (s == "diverged").all()))
    chosen = chosen.merge(trials["trials"].reset_index(), on=group).assign(status="ok")
    # A seed whose arm has no finished trial stays, as a failed row: the pairings count it
    # (diverged when every trial diverged, unfit otherwise) instead of losing the seed.
    failed = trials.drop(index=pd.MultiIndex.from_frame(chosen[group]), errors="ignore")
    failed = failed.reset_index().assign(
        status=lambda d: np.where(d["all_diverged"], "diverged", "unfit"),
        **{c: np.nan for c in (*HYPER, SELECT_ON, REPORT_CHOSEN)})
    cols = [*group, *HYPER, SELECT_ON, REPORT_CHOSEN, "trials", "status"]
    return pd.concat([chosen[cols], failed[cols]], ignore_index=True).sort_values(
        group, kind="mergesort").reset_index(drop=True)


def trials_per_arm(chosen: pd.DataFrame, order=None) -> str:
    """The tuning budget as a page states it, "SGD 8, SAM 8": each arm's trials per seed (the
    most over its cells) from ``select_trials``' output; arms in ``order``, else by name."""
    per = chosen.groupby("tag")["trials"].max()
    return ", ".join(f"{tag} {int(per[tag])}" for tag in (order or per.index) if tag in per)
