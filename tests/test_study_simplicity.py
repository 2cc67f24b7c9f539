"""The simplicity study's analysis on synthetic runs whose learned functions (probes) are
written as tiny result JSONs into a temporary run cache."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from samkit.analysis.regime import regime
from samkit.sweep import store
from samkit.studies import simplicity

GRID = np.linspace(-1.4, 1.5, 401)
PARAMS = {5: 16, 50: 151}
SEEDS = range(4)


def relus(kinks: list[float], size: float) -> np.ndarray:
    """A piecewise-linear function with a slope change of ±``size`` (alternating) at each
    of ``kinks``: its slope's total variation is size × len(kinks)."""
    y = np.zeros_like(GRID)
    for i, b in enumerate(kinks):
        y += (-1) ** i * size * np.maximum(GRID - b, 0.0)
    return y


SGD_KINKS = [-1.0, -0.7, -0.4, -0.1, 0.2, 0.5, 0.8, 1.1]   # 8 kinks: 9 pieces
SAM_KINKS = [-0.4, 0.5]                                    # 2 kinks: 3 pieces


def function(width, opt, seed):
    scale = 1 + 0.1 * seed
    if width == 5 or opt == "sgd":      # narrow: both the same; wide SGD: 8 kinks
        return relus(SGD_KINKS, 2.0 * scale)
    return relus(SAM_KINKS, 4.0 * scale)  # wide SAM: half the slope variation, 3 pieces


def make_runs(cache, diverged=()) -> pd.DataFrame:
    """Runs for widths × optimizers × seeds, each with a result JSON holding its probe (none
    for the (width, optimizer, seed) triples in ``diverged``)."""
    rows = []
    for width, params in PARAMS.items():
        for seed in SEEDS:
            for opt in ("sgd", "sam"):
                key = f"{opt}{width}s{seed}"
                bad = (width, opt, seed) in diverged
                result = {"status": "diverged" if bad else "ok"}
                if not bad:
                    result["probe"] = {"x": GRID.tolist(),
                                       "y": function(width, opt, seed).tolist()}
                (cache / f"{key}.json").write_text(json.dumps(store.sealed(result)))
                rows.append({"key": key, "dataset": "toy1d", "model": "one_hidden_relu",
                             "width": width, "params": params, "optimizer": opt, "seed": seed,
                             "status": "diverged" if bad else "ok", "epochs": 200,
                             "batch_size": 12, "n_train": 0,
                             "final_train_loss": np.nan if bad else 0.001})
    return pd.DataFrame(rows)


def test_measures_of_a_known_function():
    y = relus(SGD_KINKS, 2.0)
    assert simplicity.linear_pieces(GRID, y) == 9
    assert simplicity.slope_variation(GRID, y) == pytest.approx(16.0)
    assert simplicity.linear_pieces(GRID, 3 * GRID + 1) == 1
    assert simplicity.slope_variation(GRID, 3 * GRID + 1) == pytest.approx(0.0, abs=1e-9)


def test_planted_simpler_sam(tmp_path):
    a = simplicity.analyze(make_runs(tmp_path), cache=str(tmp_path))
    tv = a.claim("widest")
    assert math.exp(tv.effect.estimate) == pytest.approx(0.5)
    assert tv.effect.n == 4 and tv.verdict == "supports" and tv.direction == -1
    pieces = a.claim("pieces_widest")
    assert math.exp(pieces.effect.estimate) == pytest.approx(3 / 9)
    assert pieces.verdict == "supports"
    ratio = a.tables["ratio"].set_index(["measure", "width"])
    # no difference at the narrow width: a ratio of 1 with no spread (equivalent within ×1.1)
    assert np.exp(ratio.loc[("slope_tv", 5), "estimate"]) == pytest.approx(1.0)
    levels = a.tables["levels"].set_index(["measure", "width", "optimizer"])
    assert levels.loc[("pieces", 50, "sgd"), "mean"] == pytest.approx(9)
    assert levels.loc[("slope_tv", 50, "sam"), "mean"] == pytest.approx(
        np.mean([8 * (1 + 0.1 * s) for s in SEEDS]))
    assert a.facts["points"] == 12 and a.facts["widest"] == 50
    assert a.facts["fit_count"] == "8 of 8" and a.facts["pieces_widest_sgd"] == "9"
    assert a.facts["steps"] == "200"


def test_no_difference_contradicts(tmp_path):
    # the narrow networks learn the same function under both optimizers
    runs = make_runs(tmp_path)
    a = simplicity.analyze(runs[runs["width"] == 5], cache=str(tmp_path))
    for c in a.claims:
        assert math.exp(c.effect.estimate) == pytest.approx(1.0)
        assert c.verdict == "contradicts"


def test_diverged_runs_have_no_function(tmp_path):
    runs = make_runs(tmp_path, diverged={(50, "sam", 0)})
    a = simplicity.analyze(runs, cache=str(tmp_path))
    tv = a.claim("widest")
    assert tv.effect.n == 3 and math.exp(tv.effect.estimate) == pytest.approx(0.5)
    assert a.tables["ratio"].set_index(["measure", "width"]).loc[("slope_tv", 50),
                                                                 "diverged"] == 1
    assert "1 of 16 runs diverged" in a.facts["status"]
    c = simplicity.curves(runs, str(tmp_path))
    assert c["key"].nunique() == 15 and len(c) == 15 * len(GRID)


def test_all_diverged(tmp_path):
    runs = make_runs(tmp_path, diverged={(w, o, s) for w in PARAMS for o in ("sgd", "sam")
                                         for s in SEEDS})
    runs = runs.drop(columns=["final_train_loss"])
    a = simplicity.analyze(runs, cache=str(tmp_path))
    for c in a.claims:
        assert c.verdict == "cannot tell" and c.shown == "n/a"
    assert "all 16 runs diverged" in a.facts["status"]
    assert a.facts["fit_count"] == "0 of 8" and a.facts["slope_tv_widest_sam"] == "n/a"
    assert simplicity.curves(runs, str(tmp_path)).empty
    assert regime(runs)["diverged"] == 16
    a.metrics()


def test_wrong_cache_is_a_clear_error(tmp_path):
    runs = make_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="cache"):
        simplicity.analyze(runs, cache=str(tmp_path / "elsewhere"))
