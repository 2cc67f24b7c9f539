"""The rho study's analysis on synthetic run tables with planted ρ* (no training)."""
import math

import numpy as np
import pandas as pd
import pytest

from samkit.studies import rho

WIDTHS = {32: 1000, 128: 4000, 512: 16000}    # params: 2 doublings per 4x width
GRID = (0.0125, 0.025, 0.05, 0.1, 0.2, 0.4)   # geometric: ln ρ steps of ln 2
SEEDS = range(4)


def make_runs(star, gain=0.01, seeds=SEEDS, status=lambda *a: "ok", sgd_rho="config"):
    """SAM accuracy peaks at ρ = star(width, seed) (a parabola in ln ρ); its peak is SGD's
    accuracy + gain. SGD has one row per grid ρ (as the sweep gives), all the same run; its
    ``rho`` column is the config's ρ, or one stored value (``sgd_rho`` a number)."""
    rows = []
    for w, n in WIDTHS.items():
        for s in seeds:
            sgd = 0.85 + 0.005 * s
            for r in GRID:
                st = status("sgd", w, r, s)
                rows.append({"optimizer": "sgd", "seed": s, "width": w, "params": n,
                             "rho": r if sgd_rho == "config" else sgd_rho, "status": st,
                             "epochs": 60, "best_test_acc": sgd if st == "ok" else np.nan})
            for r in GRID:
                acc = sgd + gain - 0.01 * (math.log(r) - math.log(star(w, s))) ** 2
                st = status("sam", w, r, s)
                rows.append({"optimizer": "sam", "seed": s, "width": w, "params": n, "rho": r,
                             "status": st, "epochs": 60,
                             "best_test_acc": acc if st == "ok" else np.nan})
    return pd.DataFrame(rows)


def growing(w, s):   # ρ* doubles per 4x width (2 doublings of the params)
    return {32: 0.025, 128: 0.05, 512: 0.1}[w]


def test_planted_growth():
    a = rho.analyze(make_runs(growing))
    c = a.claim("rho_star_grows")
    assert c.effect.estimate == pytest.approx(math.log(2) / 2)   # ×1.41 per doubling
    assert c.effect.n == 4 and c.verdict == "supports"
    assert c.unit == "ratio" and c.shown.startswith("1.41×")
    assert c.delta == pytest.approx(math.log(1.1)) and c.delta_shown == "×1.10"
    star = a.tables["rho_star"]
    assert list(star[star["seed"] == 0]["rho_star"]) == [0.025, 0.05, 0.1]
    assert a.facts["rho_star_on_mean"] == "width 32: 0.025; width 128: 0.05; width 512: 0.1"


def test_gain_at_best_rho_widest():
    a = rho.analyze(make_runs(growing, gain=0.01))
    c = a.claim("gain_at_best_rho_widest")
    assert a.facts["best_rho_widest"] == "0.1"
    assert c.effect.estimate == pytest.approx(0.01) and c.effect.n == 4
    assert c.verdict == "supports"
    g = a.tables["gain"]
    assert len(g) == len(WIDTHS) * len(GRID) and (g["n"] == 4).all()
    # one ρ step (ln 2) away from ρ*: gain − 0.01 · ln(2)^2
    row = g[(g["width"] == 512) & (g["rho"] == 0.2)].iloc[0]
    assert row["estimate"] == pytest.approx(0.01 - 0.01 * math.log(2) ** 2)


def test_mixed_seeds():
    """Two seeds' ρ* grow (slope ln 2 / 2), two stay flat: mean ln 2 / 4, too spread to tell."""
    a = rho.analyze(make_runs(lambda w, s: growing(w, s) if s < 2 else 0.05))
    c = a.claim("rho_star_grows")
    assert c.effect.estimate == pytest.approx(math.log(2) / 4)
    assert c.verdict == "cannot tell"


def test_no_trend_contradicts():
    a = rho.analyze(make_runs(lambda w, s: 0.05, gain=0.0))
    c = a.claim("rho_star_grows")
    assert c.effect.estimate == 0.0 and c.verdict == "contradicts"
    g = a.claim("gain_at_best_rho_widest")
    assert g.effect.estimate == pytest.approx(0.0, abs=1e-12)
    assert g.verdict == "contradicts"


def test_sgd_rows_paired_by_optimizer_only():
    """SGD's stored ρ is whatever the config that trained it said: pairing must ignore it."""
    a = rho.analyze(make_runs(growing, sgd_rho=0.05))
    assert (a.tables["gain"]["n"] == 4).all()
    assert a.claim("gain_at_best_rho_widest").effect.estimate == pytest.approx(0.01)


def test_diverged_rho_cannot_be_best():
    # the planted best ρ at the widest model diverges for seed 0: its ρ* becomes a neighbour
    bad = lambda opt, w, r, s: "diverged" if (opt, w, r, s) == ("sam", 512, 0.1, 0) else "ok"
    a = rho.analyze(make_runs(growing, status=bad))
    star = a.tables["rho_star"]
    assert star[(star["seed"] == 0) & (star["width"] == 512)]["rho_star"].item() == 0.05
    acc = a.tables["sam_acc"]
    cell = acc[(acc["width"] == 512) & (acc["rho"] == 0.1)].iloc[0]
    assert cell["n"] == 3 and cell["diverged"] == 1
    assert a.claim("gain_at_best_rho_widest").effect.n == 3   # still best on the mean
    assert "1 of 144 runs diverged" in a.facts["status"]


def test_all_runs_diverged():
    runs = make_runs(growing, status=lambda *a: "diverged").drop(columns=["best_test_acc"])
    a = rho.analyze(runs)
    for c in a.claims:
        assert c.verdict == "cannot tell" and math.isnan(c.effect.estimate), c.id
    assert a.tables["rho_star"].empty
    assert (a.tables["gain"]["diverged"] == 4).all()
    assert a.facts["best_rho_widest"] == "n/a"
    assert a.facts["status"].startswith("all 144 runs diverged")


def test_only_sgd_runs_so_far():
    runs = make_runs(growing)
    a = rho.analyze(runs[runs["optimizer"] == "sgd"])
    assert a.tables["gain"].empty and a.tables["sam_acc"].empty
    assert all(c.verdict == "cannot tell" for c in a.claims)


def test_incomplete_grid_has_no_rho_star():
    """A (seed, width) where some grid ρ has not run yet gets no ρ* (not an argmax over part
    of the grid); the other cells still count."""
    runs = make_runs(growing)
    runs = runs[~((runs["optimizer"] == "sam") & (runs["seed"] == 0) & (runs["rho"] != 0.05))]
    a = rho.analyze(runs)
    star = a.tables["rho_star"]
    assert 0 not in set(star["seed"]) and len(star) == 9
    assert a.claim("rho_star_grows").effect.n == 3
    assert a.claim("rho_star_grows").effect.estimate == pytest.approx(math.log(2) / 2)


def test_only_one_rho_run_so_far_cannot_tell():
    runs = make_runs(growing)
    a = rho.analyze(runs[(runs["optimizer"] == "sgd") | (runs["rho"] == 0.05)])
    assert a.tables["rho_star"].empty       # one ρ is no choice: ρ* would be flat by design
    assert a.claim("rho_star_grows").verdict == "cannot tell"
