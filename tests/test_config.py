"""samkit.train.config: TrainConfig's validation (one line naming the field, the value and what
is allowed), the fields a run key leaves out at their defaults, data_seed -1, the help text of
every field."""
import pytest
import torch

from samkit.train.build import load_for
from samkit.train.config import TrainConfig


@pytest.mark.parametrize("bad, message", [
    (dict(optimizer="adamw"), "optimizer: got 'adamw'; allowed: sgd, adam, sam, asam"),
    (dict(width=0), "width: got 0; allowed: an int > 0"),
    (dict(label_noise=1.0), "label_noise: got 1.0; allowed: a number in [0, 1)"),
    (dict(epochs="10"), "epochs: got '10' (str); allowed: an int"),
    (dict(prune="snip"), "sparsity: got 0 with prune='snip'"),
    (dict(sparsity=0.5), "prune: got 'none' with sparsity=0.5"),
    # a class-balanced subset needs an example of each class
    (dict(n_train=5), "n_train: got 5; allowed: at least 10 (the subset is class-balanced"),
])
def test_config_validation(bad, message):
    with pytest.raises(ValueError, match=None) as e:
        TrainConfig(**bad)
    assert message in str(e.value)


def test_data_seed_minus_one_follows_the_seed(fmnist_root):
    """-1: the seed draws the subset and the label noise; the key is that of the explicit
    seed, so both spellings share one cached run; SGD and SAM of one seed see the same data."""
    from samkit.sweep import store
    base = dict(dataset="fashion_mnist", n_train=100, n_val=20, label_noise=0.2, data_seed=-1)
    a = TrainConfig(**base, seed=1)
    assert store.run_key(a) == store.run_key(TrainConfig(**{**base, "data_seed": 1},
                                                               seed=1))
    d0 = load_for(TrainConfig(**base, seed=0))
    d1, d1_sam = load_for(a), load_for(TrainConfig(**base, seed=1,
                                                                     optimizer="sam"))
    assert not torch.equal(d0.x_train, d1.x_train)
    assert not torch.equal(d0.noisy_idx, d1.noisy_idx)
    assert torch.equal(d1.x_train, d1_sam.x_train) and torch.equal(d1.y_train, d1_sam.y_train)


@pytest.mark.parametrize("bad, message", [
    (dict(sam_interval=0), "sam_interval: got 0; allowed: an int >= 1"),
    (dict(sam_interval=2.5), "sam_interval: got 2.5 (float); allowed: an int"),
    (dict(looksam_alpha=-0.1), "looksam_alpha: got -0.1; allowed: a number >= 0"),
    (dict(looksam_alpha="0.7"), "looksam_alpha: got '0.7' (str); allowed: a number"),
    (dict(optimizer="msam", momentum=0.0),
     "momentum: got 0.0 with optimizer 'msam'; allowed: momentum > 0"),
    (dict(optimizer="lamb"), "optimizer: got 'lamb'; allowed: sgd, adam, sam, asam, looksam, msam"),
])
def test_new_fields_are_validated_in_one_line(bad, message):
    with pytest.raises(ValueError) as e:
        TrainConfig(**bad)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_adam_options_are_validated_and_keep_old_keys():
    with pytest.raises(ValueError, match=r"^base_optimizer: got 'adam' with optimizer 'sgd'"):
        TrainConfig(model="mlp", optimizer="sgd", base_optimizer="adam")
    with pytest.raises(ValueError, match=r"^nesterov: got True with Adam"):
        TrainConfig(model="mlp", optimizer="adam", nesterov=True)
    sam = TrainConfig(model="mlp", optimizer="sam")
    assert "base_optimizer" not in sam.key_dict()
    on_adam = TrainConfig(model="mlp", optimizer="sam", base_optimizer="adam")
    assert on_adam.key_dict()["base_optimizer"] == "adam"
    # Adam ignores momentum: one cache entry whatever it says
    assert (TrainConfig(model="mlp", optimizer="adam", momentum=0.5).key_dict()
            == TrainConfig(model="mlp", optimizer="adam").key_dict())


def test_bn_options_are_validated_and_keep_old_keys():
    with pytest.raises(ValueError, match=r"^bn_perturbed: got 'sometimes'; allowed: frozen, "):
        TrainConfig(bn_perturbed="sometimes")
    with pytest.raises(ValueError, match=r"^bn_perturbed: got 'updated' with model 'mlp'"):
        TrainConfig(model="mlp", optimizer="sam", bn_perturbed="updated")
    with pytest.raises(ValueError, match=r"^bn_drift: got True with model 'mlp'"):
        TrainConfig(model="mlp", bn_drift=True)
    base = TrainConfig(optimizer="sam")
    assert "bn_perturbed" not in base.key_dict() and "bn_drift" not in base.key_dict()
    assert TrainConfig(optimizer="sam", bn_perturbed="updated").key_dict() != base.key_dict()
    with pytest.raises(ValueError, match=r"^bn_perturbed: got 'updated' with optimizer 'sgd' "
                       r"\(no perturbed pass\)"):
        TrainConfig(optimizer="sgd", bn_perturbed="updated")


def test_every_config_field_has_its_help_text():
    """The CLI's help comes from samkit.train.config.HELP: a new field must say what it does."""
    from samkit.train import config
    missing = [f for f in config.FIELD_TYPES if f not in config.HELP]
    assert not missing, f"samkit.train.config.HELP lacks: {missing}"
