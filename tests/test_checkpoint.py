"""samkit.train.checkpoint: a checkpoint loads only into the run it belongs to: a crafted one runs
no code, another config's is refused naming the difference, a damaged one is one line with the
fix. (Exact resume from a checkpoint: tests/test_train.py.)"""
import pytest

from samkit.train import loop as train
from samkit.train.config import TrainConfig


TOY = dict(dataset="toy1d", model="one_hidden_relu", width=5, batch_size=12, epochs=2,
           early_stopping=False, device="cpu")


EVIL = '''
import os, sys, torch

class Payload:  # unpickling it calls os.system (what a crafted checkpoint can do)
    def __reduce__(self):
        return (os.system, (f"touch {sys.argv[2]}",))

torch.save({"config": {}, "model": Payload()}, sys.argv[1])
'''


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    import subprocess
    import sys
    from samkit.train.checkpoint import CheckpointError
    ckpt, marker = tmp_path / "evil.ckpt", tmp_path / "code-ran"
    subprocess.run([sys.executable, "-c", EVIL, str(ckpt), str(marker)], check=True)
    with pytest.raises(CheckpointError) as e:
        train.train(TrainConfig(**TOY), checkpoint=str(ckpt))
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert str(ckpt) in str(e.value) and "rm " in str(e.value) and "\n" not in str(e.value)


def test_a_checkpoint_of_another_config_is_refused_naming_the_difference(tmp_path):
    """--epochs 4 on a 2-epoch run's checkpoint used to restart from zero without a word and
    overwrite it; the lr schedule depends on the epochs, so it is refused, and kept."""
    from samkit.train.checkpoint import CheckpointError
    ckpt = tmp_path / "run.ckpt"
    train.train(TrainConfig(**TOY), checkpoint=str(ckpt))
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError) as e:
        train.train(TrainConfig(**{**TOY, "epochs": 4, "lr": 0.01}), checkpoint=str(ckpt))
    assert str(e.value) == (
        f"checkpoint {ckpt}: saved by another config (epochs 2 there, 4 here; lr 0.05 there, "
        "0.01 here); allowed: a checkpoint of this config: rerun with the config it was saved "
        f"with, or delete it to start this run afresh (rm {ckpt})")
    assert ckpt.read_bytes() == before
    assert train.train(TrainConfig(**TOY), checkpoint=str(ckpt))["history"][-1]["epoch"] == 2


def test_a_corrupt_checkpoint_is_one_line_with_the_fix(tmp_path):
    import subprocess
    import sys
    good = tmp_path / "good.ckpt"
    train.train(TrainConfig(**TOY), checkpoint=str(good))
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(good.read_bytes()[:1000])
    args = ["train", "--dataset", "toy1d", "--model", "one_hidden_relu", "--width", "5",
            "--batch-size", "12", "--epochs", "2", "--no-early-stopping", "--device", "cpu",
            "--quiet", "--checkpoint", str(bad)]
    r = subprocess.run([sys.executable, "-m", "samkit", *args], capture_output=True, text=True,
                       timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint {bad}: cannot be read "
                                                   "(truncated or damaged"), lines
    assert lines[0].endswith(f"delete it to start this run afresh (rm {bad})")
