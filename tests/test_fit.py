"""samkit.measure.fit: the fit rule on synthetic histories, unfit runs left out of pairs, and the
epochs to reach a training accuracy read from a history."""
import math

import pandas as pd
import pytest

from samkit.measure import fit
from samkit.analysis import stats


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


def test_epochs_to_fit_is_the_first_evaluated_epoch_at_or_above_the_level():
    history = [{"epoch": e, "train_acc": a} for e, a in
               ((3, 0.90), (6, 0.949), (9, 0.95), (12, 0.97), (15, 0.991), (18, 0.989))]
    assert fit.epochs_to_fit({"history": history}) == {"epochs_to_95": 9.0, "epochs_to_99": 15.0}
    never = fit.epochs_to_fit({"history": history[:3]})
    assert never["epochs_to_95"] == 9.0 and math.isnan(never["epochs_to_99"])
    assert all(math.isnan(v) for v in fit.epochs_to_fit({"history": []}).values())
