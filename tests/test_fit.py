"""The fit rule on synthetic histories, and leave-one-seed-out on a tiny table."""
import pandas as pd
import pytest

from samkit.measure import fit
from samkit.analysis import robustness, stats
from samkit.analysis.claims import Analysis, Claim


def _result(accs, clean=None, status="ok"):
    history = [{"epoch": 3 * (i + 1), "train_acc": a,
                "train_acc_clean": (clean or accs)[i]} for i, a in enumerate(accs)]
    return {"history": history, "final": dict(history[-1]), "status": status}


@pytest.mark.parametrize("accs, clean, want", [
    ([0.7, 0.9, 0.95], None, None),             # fits
    ([0.5, 0.7, 0.76], None, "underfit"),       # never reaches 80%
    ([0.8, 0.9, 0.7], None, "collapsed"),       # falls 20 pp below its peak
    ([0.8, 0.9, 0.81], None, None),             # falls 9 pp: within the rule
    # 40% label noise: low accuracy on the noisy labels, the clean ones fit: not judged unfit
    ([0.45, 0.55, 0.6], [0.8, 0.83, 0.78], None),
    # memorising noise lowers clean accuracy late; the trained-on labels still rise: fits
    ([0.55, 0.7, 0.9], [0.83, 0.75, 0.66], None),
])
def test_fit_rule_on_synthetic_histories(accs, clean, want):
    r = _result(accs, clean)
    row = {"status": "ok", "final_train_acc": accs[-1], **fit.peaks(r)}
    assert fit.reason(row) == want


def test_unfit_runs_are_kept_counted_and_left_out_of_pairs():
    runs = pd.DataFrame([dict(seed=s, optimizer=o, status="ok", final_train_acc=0.95,
                              peak_train_acc=0.95, peak_train_acc_clean=0.7 if (s, o) == (1, "sam")
                              else 0.95, acc=0.8 + (0.01 if o == "sam" else 0))
                         for s in range(4) for o in ("sgd", "sam")])
    marked = fit.mark(runs)
    assert len(marked) == 8 and (marked["status"] == "unfit").sum() == 1
    t = stats.paired(marked, "acc", {"optimizer": "sam"}, {"optimizer": "sgd"})
    assert (t["n"].iloc[0], t["unfit"].iloc[0], t["diverged"].iloc[0]) == (3, 1, 0)


def _analyze(runs):
    e = stats.mean_effect(stats.pairs(runs, "acc", {"optimizer": "sam"},
                                      {"optimizer": "sgd"}).query("ok")["diff"])
    return Analysis({}, [Claim("gain", "SAM beats SGD", "test", e, 0.003, "0.3 pp")])


def test_leave_one_out_flags_a_verdict_that_rests_on_one_seed():
    # gains +1 pp for four seeds and -5 pp for one: supported without seed 4 only
    gains = {0: 0.010, 1: 0.011, 2: 0.009, 3: 0.010, 4: -0.05}
    runs = pd.DataFrame([dict(seed=s, optimizer=o, status="ok", key=f"{s}{o}",
                              acc=0.8 + (g if o == "sam" else 0))
                         for s, g in gains.items() for o in ("sgd", "sam")])
    claims = _analyze(runs).claims
    assert claims[0].verdict == "cannot tell"
    robustness.check(_analyze, runs, claims, {})
    r = claims[0].robustness
    assert r["fragile"] and r["leave_one_out"] == "without seed 4: supports"
    assert r["retrain"].startswith("not checked")


def test_a_retrained_run_that_flips_the_verdict_makes_it_fragile():
    gains = {0: 0.010, 1: 0.011, 2: 0.009, 3: 0.010}
    runs = pd.DataFrame([dict(seed=s, optimizer=o, status="ok", key=f"{s}{o}",
                              acc=0.8 + (g if o == "sam" else 0))
                         for s, g in gains.items() for o in ("sgd", "sam")])
    claims = _analyze(runs).claims
    assert claims[0].verdict == "supports"
    retrained = pd.DataFrame({"acc": [0.75], "status": ["ok"]}, index=["0sam"])
    robustness.check(_analyze, runs, claims, {"other-cpu": retrained})
    r = claims[0].robustness
    assert r["fragile"] and r["retrain"] == "retrained other-cpu: cannot tell"
    assert r["leave_one_out"] == "holds"
