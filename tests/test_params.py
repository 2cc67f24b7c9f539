"""params.yaml validation: every mistake fails with one line naming key, value and what is
allowed, before any work; the shipped params.yaml is valid in both profiles."""
import copy
import os
import subprocess
import sys

import pytest
import yaml

from samkit import params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(REPO, "params.yaml")) as f:
    GOOD = yaml.safe_load(f)


def edited(path, value=None, delete=False):
    p = copy.deepcopy(GOOD)
    node = p
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return p


W = ["width", "cpu"]
BAD = [  # (edit, substring the message must contain)
    (edited(["profile"], "tpu"), "profile: got 'tpu'; allowed: quick, cpu, gpu"),
    (edited(["widht"], {}), "widht: unknown section; allowed: profile, headline"),
    (edited(W + ["base", "lrr"], 0.1), "width.cpu.base.lrr: unknown key; allowed: dataset"),
    (edited(W + ["grid", "optimizer"], ["sgd", "samm"]),
     "width.cpu.grid.optimizer[1]: got 'samm'; allowed: sgd, sam, asam"),
    (edited(W + ["base", "rho"], -0.05), "width.cpu.base.rho: got -0.05; allowed: a number >= 0"),
    (edited(W + ["base", "label_noise"], 1.5),
     "width.cpu.base.label_noise: got 1.5; allowed: a number in [0, 1)"),
    (edited(["noise", "cpu", "grid", "label_noise"], [0.0, 1.0]),
     "noise.cpu.grid.label_noise[1]: got 1.0; allowed: a number in [0, 1)"),
    (edited(W + ["arms"], [{"model": "mlp", "width": [0, 16]}]),
     "width.cpu.arms[0].width[0]: got 0; allowed: an int > 0"),
    (edited(W + ["grid", "seed"], []), "width.cpu.grid.seed: got []; allowed: a non-empty list"),
    (edited(W + ["base", "epochs"], "10"), "width.cpu.base.epochs: got '10' (str); allowed: an int"),
    (edited(W + ["base", "lr"], "fast"), "width.cpu.base.lr: got 'fast' (str); allowed: a number"),
    (edited(W + ["arms"], [{"model": "mlp", "width": [16, 16]}]),
     "width.cpu.arms[0].width[1]: got 16 twice; allowed: each value once"),
    (edited(["sparsity", "cpu", "base", "sparsity"], 1.0),
     "sparsity.cpu.base.sparsity: got 1.0; allowed: a number in [0, 1)"),
    (edited(["sparsity", "cpu", "arms"], [{"width": 64, "prune": "magnitude", "sparsity": 0.5}]),
     "sparsity.cpu.arms[0].prune: got 'magnitude'; allowed: none, random, snip"),
    (edited(W + ["base", "early_stopping"], "yes"),
     "width.cpu.base.early_stopping: got 'yes' (str); allowed: true or false"),
    (edited(W + ["base", "batch_size"], 12.5),
     "width.cpu.base.batch_size: got 12.5 (float); allowed: an int"),
    (edited(W + ["base", "epochs"], True), "width.cpu.base.epochs: got True (bool); allowed: an int"),
    (edited(W + ["base", "dataset"], "imagenet"),
     "width.cpu.base.dataset: got 'imagenet'; allowed: fashion_mnist, mnist, cifar10"),
    (edited(W + ["grid", "width"], 16), "width.cpu.grid.width: got 16; allowed: a non-empty list"),
    (edited(W + ["gird"], {}), "width.cpu.gird: unknown key; allowed: base, grid, arms"),
    (edited(["rho", "cpu"], None, delete=True),
     "rho.cpu: missing; this study has no settings for profile 'cpu'"),
    (edited(W + ["base", "schedule"], "linear"),
     "width.cpu.base.schedule: got 'linear'; allowed: step, step3, cosine, constant"),
    (edited(W + ["arms"], []), "width.cpu.arms: got []; allowed: a non-empty list of mappings"),
    (edited(["sparsity", "cpu", "arms"], [{"width": 64, "prune": "random"}]),
     "sparsity.cpu: sparsity: got 0 with prune='random'"),
    (edited(W + ["base", "n_train"], -5), "width.cpu.base.n_train: got -5; allowed: an int >= 0"),
    (edited(["hessian", "cpu", "base", "loss"], "hinge"),
     "hessian.cpu.base.loss: got 'hinge'; allowed: auto, ce, mse"),
]


def test_shipped_params_are_valid_in_both_profiles():
    params.validate(GOOD)
    for profile in params.PROFILES:
        for study in params.STUDIES:
            assert params.study_configs(study, GOOD[study], profile)


@pytest.mark.parametrize("bad, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_params_one_clear_line(bad, message):
    with pytest.raises(params.ParamsError) as e:
        params.validate(bad)
    text = str(e.value)
    assert message in text
    assert "\n" not in text


def test_at_least_twenty_bad_cases():
    assert len(BAD) >= 20


def test_validate_cli_reports_and_exits_2(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(BAD[3][0]))
    r = subprocess.run([sys.executable, "-m", "samkit", "validate", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {BAD[3][1]}"]
    bad.write_text("width: [unclosed")
    r = subprocess.run([sys.executable, "-m", "samkit", "validate", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not valid YAML" in r.stderr
