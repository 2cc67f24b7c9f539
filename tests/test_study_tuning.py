"""The tuning-parity study: the trial choice (validation only) and the tuned comparisons on a
hand-built run table."""
import pandas as pd
import pytest

from samkit.studies import tuning

SGD_SPACE = [(lr, wd) for lr in (0.05, 0.1) for wd in (0.0001, 0.0005)]
SAM_SPACE = [(lr, rho) for lr in (0.05, 0.1) for rho in (0.05, 0.1)]


def make_runs(sam_gain=0.01, sgd2x_gain=0.004, trap=True) -> pd.DataFrame:
    """Per seed, the best-validation trial of each arm is planted: SGD at lr 0.05 / wd 5e-4,
    SAM at lr 0.1 / rho 0.1. ``trap``: another trial with the highest *test* accuracy of all
    and a lower validation accuracy, which a choice on test would take."""
    rows = []
    for seed in range(6):
        base = 0.80 + 0.003 * seed
        for tag, space, best in (("SGD", SGD_SPACE, (0.05, 0.0005)),
                                 ("SGD 2×", SGD_SPACE, (0.05, 0.0005)),
                                 ("SAM", SAM_SPACE, (0.1, 0.1))):
            for i, (lr, other) in enumerate(space):
                chosen = (lr, other) == best
                gain = {"SGD": 0.0, "SGD 2×": sgd2x_gain, "SAM": sam_gain}[tag]
                val = 0.82 + (0.02 if chosen else 0.001 * i)
                test = base + gain if chosen else base - 0.02
                if trap and i == 0 and not chosen:
                    test = base + 0.05   # best on test, not on validation
                rows.append({"model": "mlp", "width": 512, "label_noise": 0.0, "seed": seed,
                             "tag": tag, "optimizer": "sam" if tag == "SAM" else "sgd",
                             "lr": lr, "weight_decay": 0.0001 if tag == "SAM" else other,
                             "rho": other if tag == "SAM" else 0.05, "status": "ok",
                             "epochs": 120 if tag == "SGD 2×" else 60,
                             "best_val_acc": val, "best_test_acc": test})
    return pd.DataFrame(rows)


def test_the_choice_is_made_on_validation_never_on_test():
    chosen = tuning.select(make_runs())
    assert len(chosen) == 6 * 3 and (chosen["trials"] == 4).all()
    sgd = chosen[chosen["tag"] == "SGD"]
    assert (sgd["lr"] == 0.05).all() and (sgd["weight_decay"] == 0.0005).all()
    sam = chosen[chosen["tag"] == "SAM"]
    assert (sam["lr"] == 0.1).all() and (sam["rho"] == 0.1).all()
    assert (chosen["best_test_acc"] < 0.80 + 0.003 * 5 + 0.02).all()   # the trap never chosen


def test_ties_on_validation_go_to_the_first_trial_and_failed_trials_are_skipped():
    runs = make_runs()
    runs.loc[runs["tag"] == "SGD", "best_val_acc"] = 0.83
    chosen = tuning.select(runs)
    assert (chosen[chosen["tag"] == "SGD"]["lr"] == 0.05).all()
    assert (chosen[chosen["tag"] == "SGD"]["weight_decay"] == 0.0001).all()
    runs = make_runs()
    best = (runs["tag"] == "SAM") & (runs["lr"] == 0.1) & (runs["rho"] == 0.1)
    runs.loc[best, "status"] = "diverged"
    sam = tuning.select(runs).query("tag == 'SAM'")
    assert not ((sam["lr"] == 0.1) & (sam["rho"] == 0.1)).any()
    assert (sam["trials"] == 4).all()   # the budget counts the failed trial


def test_tuned_gains_are_paired_by_seed():
    a = tuning.analyze(make_runs())
    eq = a.claim("w512_n0.equal_trials")
    assert eq.effect.estimate == pytest.approx(0.01) and eq.effect.n == 6
    assert eq.verdict == "supports" and not eq.dvc_metric
    comp = a.claim("w512_n0.equal_compute")
    assert comp.effect.estimate == pytest.approx(0.006)
    gains = a.tables["gains"].set_index(["selection", "comparison"])
    # The fixed recipe (lr 0.1, wd 1e-4; rho 0.05) is a losing trial here in every arm.
    fixed = gains.loc[("fixed recipe", "SAM − SGD")]
    assert fixed["estimate"] == pytest.approx(0.0) and fixed["n"] == 6
    assert a.facts["trials"] == "SGD 4, SAM 4, SGD 2× 4"
    chosen = a.tables["chosen"].set_index("tag")
    assert chosen.loc["SAM", "chosen"] == "lr 0.1, ρ 0.1 ×6"


@pytest.mark.parametrize("profile", ["quick", "cpu", "gpu"])
def test_every_profile_holds_the_fixed_recipe_in_every_arm(profile):
    """The page sets the tuned comparison beside the fixed recipe: each profile's spaces must
    contain it, or that comparison would be silently empty."""
    import dataclasses
    import os
    from samkit.pipeline import params
    raw = params.load(os.path.join(os.path.dirname(__file__), "..", "params.yaml"))
    configs = params.study_configs("tuning", raw["tuning"], profile)
    runs = pd.DataFrame([dataclasses.asdict(c) for c in configs])
    chosen = tuning.fixed(runs)
    assert set(chosen["tag"]) == set(tuning.ARMS)
    assert len(chosen) == len(runs.groupby(["tag", "width", "label_noise", "seed"]))


def test_an_arm_without_a_finished_trial_is_a_failed_pair_not_a_lost_seed():
    runs = make_runs()
    runs.loc[(runs["tag"] == "SAM") & (runs["seed"] == 0), "status"] = "diverged"
    chosen = tuning.select(runs)
    row = chosen[(chosen["tag"] == "SAM") & (chosen["seed"] == 0)]
    assert len(row) == 1 and row["status"].iloc[0] == "diverged" and row["trials"].iloc[0] == 4
    gains = tuning.analyze(runs).tables["gains"].set_index(["selection", "comparison"])
    tuned = gains.loc[("tuned", "SAM − SGD")]
    assert tuned["n"] == 5 and tuned["diverged"] == 1
