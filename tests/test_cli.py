"""samkit.__main__, `python -m samkit train`: every TrainConfig field is a documented flag; bad
values fail with one clear line before any work."""
import dataclasses
import json
import subprocess
import sys

import pytest

from samkit.train.config import TrainConfig


def samkit(*args):
    return subprocess.run([sys.executable, "-m", "samkit", *args], capture_output=True,
                          text=True, timeout=300)


def test_help_documents_every_field():
    r = samkit("train", "--help")
    assert r.returncode == 0
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in r.stdout


def test_train_prints_result_json(tmp_path):
    r = samkit("train", "--dataset", "synthetic", "--model", "mlp", "--width", "8",
               "--n-train", "64", "--epochs", "2", "--optimizer", "sam", "--quiet",
               "--device", "cpu", "--checkpoint", str(tmp_path / "c.ckpt"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "ok" and out["config"]["optimizer"] == "sam"
    assert "history" not in out and len(out["final"]) > 0


def test_bad_flag_value_is_one_line_and_exit_2():
    r = samkit("train", "--optimizer", "adamw", "--epochs", "1")
    assert r.returncode == 2
    assert "optimizer: got 'adamw'; allowed: sgd, adam, sam, asam" in r.stderr.splitlines()[-1]
    r = samkit("train", "--rho", "-1")
    assert r.returncode == 2 and "rho: got -1.0; allowed: a number >= 0" in r.stderr


@pytest.mark.slow
def test_values_that_would_waste_or_wreck_a_run_are_refused_before_any_work():
    cases = {  # flags -> what the one error line must say
        ("--lr", "inf"): "lr: got inf; allowed: a finite number",
        ("--weight-decay", "nan"): "weight_decay: got nan; allowed: a finite number",
        ("--momentum", "1.5"): "momentum: got 1.5; allowed: a number in [0, 1)",
        ("--n-train", "100000"): "n_train: got 100000; allowed: at most 60000 (the "
                                 "fashion_mnist training set), or 0 for all of it",
        ("--n-train", "59000", "--n-val", "5000"):
            "n_train: got 59000 with n_val 5000; allowed: n_train + n_val <= 60000",
        ("--n-test", "50000"): "n_test: got 50000; allowed: at most 10000 (the fashion_mnist "
                               "test set), or 0 for all of it",
        # synthetic: a test set of n_train // 4 points; more is refused, not cut silently
        ("--dataset", "synthetic", "--model", "mlp", "--n-train", "64", "--n-test", "100"):
            "n_test: got 100; allowed: at most 16 (the synthetic test set)",
    }
    for flags, message in cases.items():
        r = samkit("train", *flags, "--epochs", "1", "--quiet", "--device", "cpu",
                   "--data-root", "/nonexistent")
        assert r.returncode == 2 and r.stdout == "", (flags, r.stderr[-500:])
        assert message in r.stderr.splitlines()[-1], (flags, r.stderr)


def test_early_stopping_follows_the_validation_split():
    tiny = ("--dataset", "synthetic", "--model", "mlp", "--width", "4", "--n-train", "32",
            "--epochs", "1", "--quiet", "--device", "cpu")
    # asked for without a validation split: it would silently report the last epoch
    r = samkit("train", *tiny, "--early-stopping")
    assert r.returncode == 2 and r.stdout == ""
    assert ("early_stopping: got --early-stopping with n_val 0; allowed: --n-val N (N > 0) to "
            "early-stop on a validation split, or --no-early-stopping") in r.stderr
    # not asked for: on with a validation split, off without, and the result says which
    for extra, expected in (((), False), (("--n-val", "16"), True),
                            (("--n-val", "16", "--no-early-stopping"), False)):
        r = samkit("train", *tiny, *extra)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["config"]["early_stopping"] is expected, extra


def test_progress_bar_names_the_test_accuracy(fmnist_root):
    r = samkit("train", "--dataset", "fashion_mnist", "--model", "mlp", "--width", "8",
               "--n-train", "100", "--n-test", "100", "--epochs", "1", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "test_acc=" in r.stderr and " acc=" not in r.stderr and ",acc=" not in r.stderr
