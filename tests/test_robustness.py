"""samkit.analysis.robustness: leave-one-seed-out and retrained runs on a tiny table."""
import pandas as pd

from samkit.analysis import robustness, stats
from samkit.analysis.claims import Analysis, Claim


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
