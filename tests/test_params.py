"""samkit.pipeline.params (and samkit.pipeline.yaml_checks, through params.load): params.yaml
validation: every mistake fails with one line naming key, value and what is
allowed, before any work; the shipped params.yaml is valid in both profiles."""
import copy
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import TOY_COST_PARAMS as TOY
from samkit.pipeline import params

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
     "width.cpu.grid.optimizer[1]: got 'samm'; allowed: sgd, adam, sam, asam"),
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
    # subsets larger than the dataset: caught here, not inside the notebook's kernel
    (edited(W + ["base", "n_train"], 100000),
     "width.cpu: n_train: got 100000 with n_val 5000; allowed: n_train + n_val <= 60000 "
     "(the fashion_mnist training set)"),
    (edited(["hessian", "cpu", "base", "n_train"], 70000),
     "hessian.cpu: n_train: got 70000; allowed: at most 60000 (the fashion_mnist training "
     "set), or 0 for all of it"),
    (edited(W + ["base", "n_test"], 50000),  # refused, not cut to the whole 10k test set
     "width.cpu: n_test: got 50000; allowed: at most 10000 (the fashion_mnist test set)"),
    # what a study needs of its runs
    (edited(["hessian", "cpu", "base", "hessian_samples"], 0),
     "hessian.cpu: hessian_samples: got 0; allowed: an int > 0"),
    (edited(["hessian", "cpu", "base", "hessian_samples"], None, delete=True),
     "hessian.cpu: hessian_samples: got 0 (the default); allowed: an int > 0"),
    (edited(["simplicity", "cpu", "base", "dataset"], "synthetic"),
     "simplicity.cpu: dataset: got 'synthetic'; allowed: toy1d"),
    # non-finite numbers pass "> 0" and ">= 0"
    (edited(W + ["base", "lr"], float("inf")),
     "width.cpu.base.lr: got inf; allowed: a finite number"),
    (edited(W + ["base", "weight_decay"], float("inf")),
     "width.cpu.base.weight_decay: got inf; allowed: a finite number"),
    (edited(["rho", "cpu", "grid", "rho"], [0.05, float("nan")]),
     "rho.cpu.grid.rho[1]: got nan; allowed: a finite number"),
    (edited(W + ["base", "momentum"], 1.5),
     "width.cpu.base.momentum: got 1.5; allowed: a number in [0, 1)"),
    (edited(W + ["base", "momentum"], 1.0),
     "width.cpu.base.momentum: got 1.0; allowed: a number in [0, 1)"),
    # every profile block is checked, not only the active one (cpu)
    (edited(["width", "gpu", "base", "lr"], -1),
     "width.gpu.base.lr: got -1; allowed: a number > 0"),
    (edited(["noise", "quick", "grid", "label_noise"], [0.0, 1.2]),
     "noise.quick.grid.label_noise[1]: got 1.2; allowed: a number in [0, 1)"),
    (edited(["datasize", "gpu", "grid", "n_train"], [5000, 60000]),
     "datasize.gpu: n_train: got 60000 with n_val 5000; allowed: n_train + n_val <= 60000"),
    (edited(["hessian", "quick", "base", "hessian_samples"], 0),
     "hessian.quick: hessian_samples: got 0; allowed: an int > 0"),
    # early stopping without a validation split would report the last epoch as the best one
    (edited(W + ["base", "n_val"], 0),
     "width.cpu: early_stopping: got true with n_val 0; allowed: n_val > 0 (early stopping "
     "picks the epoch of best validation accuracy), or early_stopping: false"),
    (edited(["regularization", "quick", "arms"], [{"n_val": 0, "early_stopping": True}]),
     "regularization.quick: early_stopping: got true with n_val 0; allowed: n_val > 0"),
    # a class-balanced subset smaller than the number of classes
    (edited(["datasize", "cpu", "grid", "n_train"], [5, 10000]),
     "datasize.cpu: n_train: got 5; allowed: at least 10 (the subset is class-balanced"),
    (edited(["max_core_hours"], 0), "max_core_hours: got 0; allowed: a number > 0"),
    (edited(["max_core_hours"], "1e3"), "max_core_hours: got '1e3'; allowed: a number > 0 "
     "(the estimated core-hours a sweep may take without --yes) (YAML reads 1e3 as a string: "
     "write 1.0e+3)"),
]


def test_shipped_params_are_valid_in_every_profile():
    params.load(os.path.join(REPO, "params.yaml"))  # its merge keys (<<:) are no duplicates
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
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {BAD[3][1]}"), lines
    bad.write_text("width: [unclosed")
    r = subprocess.run([sys.executable, "-m", "samkit", "validate", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not valid YAML" in r.stderr


def test_params_yaml_reports_a_bad_new_field():
    section = {"cpu": {"base": {"dataset": "synthetic", "model": "mlp"},
                       "grid": {"sam_interval": [1, 0]}}}
    with pytest.raises(params.ParamsError) as e:
        params.study_configs("width", section, "cpu")
    assert "width.cpu.grid.sam_interval[1]: got 0; allowed: an int >= 1" in str(e.value)


# ----------------------------------------------------------------------------- the file's text

TEXT = open(os.path.join(REPO, "params.yaml")).read()


def text_edited(old, new, count=1):
    """params.yaml's text with the ``count``-th occurrence of ``old`` replaced by ``new``."""
    at = -1
    for _ in range(count):
        at = TEXT.index(old, at + 1)
    return TEXT[:at] + new + TEXT[at + len(old):]


def line_of(text, needle, count=1):
    """The line number of the ``count``-th occurrence of ``needle`` (a section: "\\nwidth:")."""
    at = -1
    for _ in range(count):
        at = text.index(needle, at + 1)
    return text.count("\n", 0, at + needle.startswith("\n")) + 1


def problems(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(params.ParamsError) as e:
        params.load(str(path))
    return e.value.problems, str(path)


def test_duplicate_key_in_a_mapping_is_refused(tmp_path):
    # yaml.safe_load keeps the last of two keys silently: lr 0.1 would quietly become 0.5
    text = text_edited("lr: 0.1, momentum: 0.9", "lr: 0.1, momentum: 0.9, lr: 0.5")
    found, path = problems(tmp_path, text)
    line = line_of(text, "lr: 0.1, momentum: 0.9, lr: 0.5")
    assert found == [f"{path}:{line}: width.cpu.base.lr: duplicate key (first at line "
                     f"{line}); allowed: each key once"]
    # a key beside a merge key (<<: *anchor) overrides the merged one: no duplicate
    merged = tmp_path / "merged.yaml"
    merged.write_text("profile: quick\nwidth:\n  quick:\n    base: &b {model: mlp, width: 8, "
                      "lr: 0.1}\n    grid: {seed: [0]}\n  cpu:\n    base: {<<: *b, lr: 0.2}\n"
                      "    grid: {seed: [0]}\n")
    assert params.load(str(merged))["width"]["cpu"]["base"]["lr"] == 0.2


def test_duplicate_key_on_its_own_line_and_in_a_list_item(tmp_path):
    text = text_edited("    grid: {width: [5, 50, 500], optimizer: [sgd, sam], seed: [0, 1, 2]}",
                       "    grid: {width: [5, 50, 500], optimizer: [sgd, sam], seed: [0, 1, 2]}"
                       "\n    grid: {width: [5], optimizer: [sgd, sam], seed: [0]}")
    text = text.replace("- {tag: SGD 1x, optimizer: sgd}",
                        "- {tag: SGD 1x, optimizer: sgd, optimizer: sam}", 1)
    found, path = problems(tmp_path, text)
    first = line_of(text, "    grid: {width: [5, 50, 500], optimizer: [sgd, sam], seed: [0, 1, 2]}")
    arm = line_of(text, "- {tag: SGD 1x, optimizer: sgd, optimizer: sam}")
    assert found == [
        f"{path}:{arm}: compute.quick.arms[0].optimizer: duplicate key (first at line {arm}); "
        "allowed: each key once",
        f"{path}:{first + 1}: simplicity.quick.grid: duplicate key (first at line {first}); "
        "allowed: each key once"]


def test_duplicate_section_is_refused(tmp_path):
    text = TEXT + "\nwidth:\n  cpu:\n    base: {model: mlp}\n"
    found, path = problems(tmp_path, text)
    assert found == [f"{path}:{line_of(text, chr(10) + 'width:', 2)}: width: duplicate section "
                     f"(first at line {line_of(text, chr(10) + 'width:')}); allowed: each "
                     "section once"]


@pytest.mark.parametrize("written, fix", [("1e-3", "1.0e-3"), ("5e-3", "5.0e-3"),
                                          ("1E-2", "1.0e-2"), ("2.5e3", "2.5e+3")])
def test_a_number_that_yaml_reads_as_a_string_says_how_to_write_it(tmp_path, written, fix):
    # YAML 1.1 (PyYAML) reads 1e-3 as the string '1e-3' (its floats need a dot and a sign)
    text = text_edited("lr: 0.005", f"lr: {written}", count=2)   # simplicity.cpu
    found, _ = problems(tmp_path, text)
    assert found == [f"simplicity.cpu.base.lr: got '{written}' (str); allowed: a number (YAML "
                     f"reads {written} as a string: write {fix})"]
    ok = tmp_path / "fixed.yaml"
    ok.write_text(text_edited("lr: 0.005", f"lr: {fix}", count=2))
    assert params.load(str(ok))["simplicity"]["cpu"]["base"]["lr"] == float(written)


def test_an_int_field_written_in_e_notation(tmp_path):
    text = text_edited("epochs: 20000", "epochs: 2e4", count=2)   # simplicity.cpu
    found, _ = problems(tmp_path, text)
    assert found == ["simplicity.cpu.base.epochs: got '2e4' (str); allowed: an int (YAML reads "
                     "2e4 as a string: write 20000)"]


def test_validate_reports_every_problem_of_every_profile_at_once(tmp_path):
    text = text_edited("lr: 0.1, momentum: 0.9", "lr: .inf, momentum: 1.5")     # width.cpu
    text = text.replace("hessian_samples: 16}", "hessian_samples: 0}", 1)          # quick
    text = text.replace("n_train: [5000, 20000, 55000]", "n_train: [5000, 20000, 100000]", 1)
    text = text.replace("weight_decay: 0.0005, batch_size: 128, epochs: 15",      # width.quick
                        "weight_decay: 5e-4, batch_size: 128, epochs: 15", 1)
    text += "\nrho:\n  cpu: {}\n"                                                # duplicate
    bad = tmp_path / "params.yaml"
    bad.write_text(text)
    r = subprocess.run([sys.executable, "-m", "samkit", "validate", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    expected = [
        f"{bad}:{line_of(text, chr(10) + 'rho:', 2)}: rho: duplicate section",
        "width.quick.base.weight_decay: got '5e-4' (str); allowed: a number (YAML reads 5e-4 "
        "as a string: write 5.0e-4)",
        "width.cpu.base.lr: got inf; allowed: a finite number",
        "width.cpu.base.momentum: got 1.5; allowed: a number in [0, 1)",
        "hessian.quick: hessian_samples: got 0; allowed: an int > 0",
        "datasize.gpu: n_train: got 100000 with n_val 5000; allowed: n_train + n_val <= 60000",
    ]
    assert len(lines) >= len(expected), r.stderr
    for want in expected:
        assert [ln for ln in lines if ln.startswith("error: ") and want in ln], (want, lines)
    assert all(ln.startswith("error: ") for ln in lines)
    # the anchor &small (width.quick.base) is merged into other quick studies: its bad value
    # shows there too, each place once
    assert len(lines) == len(set(lines))


def test_an_empty_params_file_is_one_clear_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(params.ParamsError, match="top level must be a mapping of sections"):
        params.load(str(path))


# ----------------------------------------------------------------------------- what a sweep costs


def _toy(tmp_path, epochs=20, seeds="[0]", limit=None):
    text = TOY.replace("EPOCHS", str(epochs)).replace("SEEDS", seeds)
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("MAX", f"max_core_hours: {limit}" if limit else ""))
    return path


def _samkit(*args, cwd):
    return subprocess.run([sys.executable, "-m", "samkit", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=600)


def test_validate_estimates_the_cost_of_a_huge_grid(tmp_path):
    path = _toy(tmp_path, epochs=200000, seeds=str(list(range(500))))
    r = _samkit("validate", str(path), "--cache", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    ok, cost = r.stdout.splitlines()
    assert ok == f"{path}: ok"
    assert cost.startswith("profile quick: 1000 runs, 1000 not in the run cache")
    hours = float(re.search(r"an estimated ([\d,.]+) core-hours", cost)[1].replace(",", ""))
    assert hours > 24 and cost.endswith("over max_core_hours 24: `samkit sweep` and the stages "
                                        "start them only with --yes")


def test_the_committed_params_validate_ok():
    r = _samkit("validate", cwd=REPO)
    assert r.returncode == 0 and r.stdout.startswith("params.yaml: ok\n"), r.stdout + r.stderr


@pytest.mark.slow
def test_a_sweep_over_max_core_hours_starts_only_with_yes(tmp_path):
    path = _toy(tmp_path, limit="0.000001")   # 2 toy runs: about 0.00001 core-hours
    cache = tmp_path / "runs"
    for cmd in (["sweep", "--params", str(path), "--cache", str(cache)],
                ["stage", "simplicity", "--params", str(path)]):
        r = _samkit(*cmd, cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (cmd, r.stderr)
        assert re.fullmatch(r"error: (sweep|simplicity): 2 runs to train, an estimated "
                            r"0\.0 core-hours \(about 0\.0 h on \d workers\); allowed: at most "
                            rf"max_core_hours 1e-06 unless confirmed: pass --yes, or raise "
                            rf"max_core_hours in {re.escape(str(path))}", lines[0]), lines[0]
        assert not cache.exists() and not (tmp_path / "book").exists()
    r = _samkit("sweep", "--params", str(path), "--cache", str(cache), "--yes", cwd=tmp_path)
    assert r.returncode == 0 and "2 ok" in r.stdout, r.stdout + r.stderr
    assert "sweep: 2 runs to train, an estimated" in r.stdout
