"""The ASAM / SAM-on-Adam study's analysis on a hand-built run table."""
import pandas as pd
import pytest

from samkit.studies import asam_adam

SPACES = {"SGD": ("lr", [0.05, 0.1, 0.2]), "SAM": ("rho", [0.02, 0.05, 0.1]),
          "ASAM": ("rho", [0.2, 0.5, 1.0]), "Adam": ("lr", [0.0005, 0.001, 0.002]),
          "SAM(Adam)": ("rho", [0.02, 0.05, 0.1])}
GAIN = {"SGD": 0.0, "SAM": 0.004, "ASAM": 0.009, "Adam": -0.01, "SAM(Adam)": -0.01}


def make_runs() -> pd.DataFrame:
    """Per seed, the middle trial of every arm is best on validation; the arm's planted gain
    sits on it; the other trials are worse on both splits."""
    rows = []
    for width in (64, 512):
        for seed in range(6):
            base = 0.85 + 0.002 * seed
            for tag, (knob, values) in SPACES.items():
                for i, v in enumerate(values):
                    best = i == 1
                    rows.append({"model": "mlp", "width": width, "label_noise": 0.0,
                                 "seed": seed, "tag": tag, "status": "ok",
                                 "lr": v if knob == "lr" else 0.1,
                                 "rho": v if knob == "rho" else 0.05, "weight_decay": 0.0001,
                                 "best_val_acc": 0.86 if best else 0.85 - 0.001 * i,
                                 "best_test_acc": base + GAIN[tag] - (0 if best else 0.01)})
    return pd.DataFrame(rows)


def test_tuned_comparisons():
    a = asam_adam.analyze(make_runs())
    c = a.claim("asam_vs_sam.w512")
    assert c.effect.estimate == pytest.approx(0.005) and c.effect.n == 6
    assert c.verdict == "supports" and c.dvc_metric
    adam = a.claim("sam_adam_vs_adam.w64")
    assert adam.effect.estimate == pytest.approx(0.0) and adam.verdict == "contradicts"
    assert not adam.dvc_metric
    assert a.claim("asam_vs_sgd.w64").effect.estimate == pytest.approx(0.009)
    chosen = a.tables["chosen"].set_index(["width", "arm"])
    assert chosen.loc[(512, "ASAM"), "chosen"] == "ρ 0.5 ×6"
    assert chosen.loc[(64, "Adam"), "chosen"] == "lr 0.001 ×6"
    assert a.facts["trials"] == "ASAM 3, Adam 3, SAM 3, SAM(Adam) 3, SGD 3"
