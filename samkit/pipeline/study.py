"""One study end to end, as its notebook runs it: configs from its params section -> cached runs
-> the fit rule -> its analysis -> the robustness of every verdict -> results/<profile>/<study>/."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pandas as pd

from samkit.measure import fit
from samkit.pipeline import params, results
from samkit.analysis import regime, robustness
from samkit import studies
from samkit.sweep import engine as sweep
from samkit.analysis.claims import Analysis


@dataclass
class Study:
    name: str
    runs: pd.DataFrame
    analysis: Analysis
    meta: dict


def run_study(name: str, section: dict, profile: str, cache: str = "results/runs",
        root: str = "results", progress: bool = True,
        retrain_root: str | None = None) -> Study:
    """Configs from the study's params section -> cached runs -> the fit rule -> analysis ->
    robustness of every verdict -> saved results. ``progress``: one line per trained run;
    the worker processes write it to the terminal of `dvc repro` (the kernel's own output
    goes into the notebook, whose cell the book hides). ``retrain_root``: the retrain check's
    runs (default ``<root>/retrain``)."""
    t0 = time.time()
    raw = sweep.run_sweep(params.study_configs(name, section, profile), cache=cache,
                    progress=progress)
    runs = fit.mark(raw)
    analyze = studies.module(name).analyze
    analysis = analyze(runs)
    analysis.facts.update(regime.regime(runs))
    retrained = robustness.retrain_sets(retrain_root or os.path.join(root, "retrain"))
    analysis.facts["robustness"] = robustness.check(analyze, raw, analysis.claims, retrained)
    meta = results.save(name, profile, runs, analysis.tables, params=section[profile],
                        seconds=time.time() - t0, metrics=analysis.metrics(), root=root)
    return Study(name, runs, analysis, meta)
