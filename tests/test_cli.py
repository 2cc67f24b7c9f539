"""`python -m samkit train`: every TrainConfig field is a documented flag; bad values fail
with one clear line before any work."""
import dataclasses
import json
import subprocess
import sys

from samkit.train import TrainConfig


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
    assert "optimizer: got 'adamw'; allowed: sgd, sam, asam" in r.stderr.splitlines()[-1]
    r = samkit("train", "--rho", "-1")
    assert r.returncode == 2 and "rho: got -1.0; allowed: a number >= 0" in r.stderr


def test_book_copy_drops_the_defaults_cell_and_keeps_the_injected_values(tmp_path):
    import nbformat
    from samkit.__main__ import _hide_default_parameters
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('profile = "tiny"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell('profile = "cpu"', metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("print(profile)")])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    _hide_default_parameters(path)
    tags = [c.metadata.get("tags", []) for c in nbformat.read(path, as_version=4).cells]
    assert tags == [["parameters", "remove-cell"], ["injected-parameters"], []]
