"""A study's outputs: runs.csv, one CSV per table and metrics.json, each with provenance.

``results/<profile>/<study>/`` is small and tracked by git; every file is written atomically,
so a killed notebook leaves the previous results, never half a file.
"""
from __future__ import annotations

import json
import math
import os

import pandas as pd

from samkit.provenance import provenance, provenance_line
from samkit.atomic import replacing, write_json as write_json_atomic

RUN_COLUMNS = ("tag", "model", "width", "depth", "optimizer", "rho", "label_noise", "prune",
               "sparsity", "prune_to_width", "weight_decay", "early_stopping", "epochs", "seed",
               "status", "diverged_epoch", "params", "nonzero_params", "grad_evals", "sam_interval",
               "looksam_alpha", "seconds", "train_seconds", "fit", "peak_train_acc",
               "peak_train_acc_clean",
               "cached")


# The run-table columns that are measurements (the rest describe the run).
METRIC_PREFIXES = ("final_", "best_", "hessian_", "bn_drift_")


def save(study: str, profile: str, runs: pd.DataFrame, tables: dict[str, pd.DataFrame],
         params: dict, seconds: float, metrics: dict | None = None, root: str = "results") -> dict:
    """Write the study's files; returns the metrics.json content (for the notebook's prose).
    Nothing that differs between two runs on the same numbers is written (``seconds``, the
    stage's wall time, is not; the date is the day), so a rerun leaves `git diff` empty."""
    out = os.path.join(root, profile, study)
    os.makedirs(out, exist_ok=True)
    metric_cols = [c for c in runs.columns if c.startswith(METRIC_PREFIXES)]
    cols = [c for c in RUN_COLUMNS if c in runs.columns] + metric_cols
    _csv_atomic(runs[cols], os.path.join(out, "runs.csv"))
    for name, table in tables.items():
        _csv_atomic(table, os.path.join(out, f"{name}.csv"))
    meta = {
        "study": study, "profile": profile, "metrics": metrics or {}, "params": params,
        "seeds": sorted({int(s) for s in runs["seed"]}) if "seed" in runs else [],
        "n_runs": len(runs), "n_diverged": int((runs["status"] == "diverged").sum()),
        "n_cached": int(runs["cached"].sum()) if "cached" in runs else 0,
        "run_seconds": float(runs["seconds"].sum()),
        "provenance": {**provenance(), "date": provenance()["date"][:10]},
    }
    write_json_atomic(os.path.join(out, "metrics.json"), meta)
    _write_dvc_metrics(meta, os.path.join(root, profile, "dvc_metrics", f"{study}.json"))
    return meta


# The unit a claim's estimate is shown in, in `dvc exp show`: (name suffix, conversion).
DVC_UNITS = {"pp": ("pp", lambda e: 100 * e),
             "pp/doubling": ("pp_per_2x", lambda e: 100 * e),
             "ratio": ("ratio", math.exp)}   # the estimate is a difference of logs


def _write_dvc_metrics(meta: dict, path: str) -> None:
    """Each claim's estimate, as the book shows it (pp, pp per doubling, ratio), for `dvc
    metrics show` / `dvc exp show`: a few short columns per study, named
    ``<study>.<claim>.<unit>``, so that an experiment fits a terminal. Everything else (CIs,
    verdicts, facts, provenance) stays in the study's metrics.json, an ordinary output; so do
    the claims marked ``dvc_metric`` False."""
    flat = {}
    for claim_id, c in meta["metrics"].get("claims", {}).items():
        if not c.get("dvc_metric", True):
            continue
        suffix, convert = DVC_UNITS[c.get("unit", "pp")]
        est = c.get("estimate")
        if isinstance(est, (int, float)) and math.isfinite(est):
            flat[f"{meta['study']}.{claim_id}.{suffix}"] = round(convert(est), 3)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, flat)


def load(study: str, profile: str, root: str = "results") -> tuple[dict, dict[str, pd.DataFrame]]:
    """(metrics.json, {table name: DataFrame}) of a saved study."""
    out = os.path.join(root, profile, study)
    with open(os.path.join(out, "metrics.json")) as f:
        meta = json.load(f)
    tables = {f[:-4]: pd.read_csv(os.path.join(out, f)) for f in sorted(os.listdir(out))
              if f.endswith(".csv")}
    return meta, tables


def _csv_atomic(df: pd.DataFrame, path: str) -> None:
    with replacing(path) as f:
        df.to_csv(f, index=False, float_format="%.6g")


def glue_metrics(meta: dict, glue) -> None:
    """Glue every metric as ``<group>.<key>`` (or ``<key>``) for the page's prose; ``glue`` is
    myst_nb.glue, passed in so samkit does not depend on the book's toolchain."""
    for name, value in _flatten(meta["metrics"]):
        glue(name, value, display=False)
    glue("provenance", provenance_line(meta), display=False)


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def table(df: pd.DataFrame, percent=(), rename: dict | None = None):
    """A display table: fractions in ``percent`` shown as percent, tidy headers."""
    out = df.copy()
    for c in percent:
        if c in out:
            out[c] = (100 * out[c]).round(2)
    out = out.rename(columns={c: f"{c} (%)" if c in percent else c for c in out.columns})
    if rename:
        out = out.rename(columns={f"{k} (%)": f"{v} (%)" for k, v in rename.items()})
    return out.style.hide(axis="index").format(precision=2)


def repro_line(since: str, params_path: str = "params.yaml", dvc_yaml: str = "dvc.yaml",
               cache: str = "results/runs") -> str:
    """The line `make repro` ends with: of the runs behind the published studies (dvc.yaml's
    ``studies``, params.yaml's profile), how many came from the run cache and how many were
    trained since the file ``since`` was touched. A fresh clone retrains nothing: say so."""
    import yaml
    from samkit.pipeline import params
    from samkit.sweep import store
    with open(dvc_yaml) as f:
        studies = yaml.safe_load(f)["vars"][0]["studies"]
    spec = params.load(params_path)
    keys = {store.run_key(cfg) for study in studies
            for cfg in params.study_configs(study, spec[study], spec["profile"])}
    start = os.path.getmtime(since)
    trained = replayed = 0
    for key in keys:
        path = os.path.join(cache, f"{key}.json")
        if os.path.exists(path):
            trained += os.path.getmtime(path) > start
            replayed += os.path.getmtime(path) <= start
    missing = len(keys) - trained - replayed
    return (f"{replayed:,} runs replayed from the run cache ({cache}/), {trained:,} trained"
            + (f", {missing:,} missing" if missing else "")
            + f" (profile {spec['profile']}). To retrain every run into a fresh cache (hours): "
            "make retrain")


def load_benchmarks(folder: str = "results/bench") -> tuple[pd.DataFrame, list[dict]]:
    """Every step-time benchmark JSON in ``folder`` as one tidy table (one row per device ×
    model × batch × mode × variant), plus each file's provenance."""
    rows, provs = [], []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not (name.startswith("step_time") and name.endswith(".json")):
            continue
        with open(os.path.join(folder, name)) as f:
            bench = json.load(f)
        prov = bench["provenance"]
        provs.append(prov)
        for r in bench["results"]:
            if "error" in r:
                continue
            for variant in ("sgd", "sam", "ref_sam"):
                rows.append({"device": prov["device"], "model": r["model"], "batch": r["batch"],
                             "mode": r["mode"], "variant": variant,
                             "median_ms": r[variant]["median_ms"],
                             "img_per_s": r[variant]["img_per_s"],
                             "ratio_to_sgd": r[variant]["median_ms"] / r["sgd"]["median_ms"],
                             "speedup_vs_ref": r["ref_sam"]["median_ms"] / r[variant]["median_ms"]})
    cols = ["device", "model", "batch", "mode", "variant", "median_ms", "img_per_s",
            "ratio_to_sgd", "speedup_vs_ref"]
    return pd.DataFrame(rows, columns=cols), provs


def benchmark_table(bench: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: median ms of each variant, SAM/SGD, ref/SGD, speed-up."""
    cols = ["device", "model", "batch", "mode", "sgd", "sam", "ref_sam", "SAM/SGD", "ref/SGD",
            "samkit speed-up vs ref"]
    if bench.empty:
        return pd.DataFrame(columns=cols)
    t = bench.pivot_table(index=["device", "model", "batch", "mode"], columns="variant",
                          values="median_ms").reset_index()
    t["SAM/SGD"] = t["sam"] / t["sgd"]
    t["ref/SGD"] = t["ref_sam"] / t["sgd"]
    t["samkit speed-up vs ref"] = t["ref_sam"] / t["sam"]
    return t[cols]


if __name__ == "__main__":  # `make repro` ends with: python -m samkit.pipeline.results <file touched first>
    import sys
    print(repro_line(sys.argv[1]))
