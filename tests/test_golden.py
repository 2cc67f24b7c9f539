"""The run cache is keyed by config + NUMERICS_VERSION: a code change that alters a run's numbers
must bump the version, or stale cached results would be mixed with new ones. These golden runs
notice such a change.

Regenerate after a deliberate change (and bump store.NUMERICS_VERSION):
    python tests/test_golden.py
"""
import json
import math
import os
import sys

import pytest

from samkit.sweep import store
from samkit.train.config import TrainConfig
from samkit.train.loop import train

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "runs.json")
CONFIGS = {
    # the research profile's recipe in miniature: real data, seeds that redraw the subset and
    # the label noise, depth-2 MLP, SAM, the paper's step3 schedule, early stopping
    "sam_fmnist": dict(dataset="fashion_mnist", model="mlp", depth=2, width=16, n_train=256,
                       n_val=64, n_test=256, data_seed=-1, seed=3, label_noise=0.2,
                       optimizer="sam", rho=0.05, lr=0.1, weight_decay=1e-4, epochs=4,
                       batch_size=64, schedule="step3", device="cpu"),
    "sgd_synthetic": dict(dataset="synthetic", model="mlp", width=8, n_train=64, epochs=3,
                          batch_size=16, optimizer="sgd", schedule="cosine", device="cpu"),
}
# Float32 kernels round differently on AVX2 and AVX-512 CPUs; over these few dozen steps that
# moves losses by ~1e-6 relative. A change of what is computed (init, data, update rule,
# schedule) moves them by far more than 1e-4, the tolerance used here.
REL_TOL = 1e-4


def golden_numbers(name: str) -> list[float]:
    result = train(TrainConfig(**CONFIGS[name]))
    return [v for h in result["history"] for k, v in sorted(h.items())
            if isinstance(v, float) and k != "lr"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_numerics_unchanged(name, fmnist_root, one_thread):
    with open(GOLDEN) as f:
        stored = json.load(f)
    assert stored["numerics"] == store.NUMERICS_VERSION, (
        "NUMERICS_VERSION was bumped: regenerate tests/golden/runs.json "
        "(python tests/test_golden.py)")
    got, want = golden_numbers(name), stored["runs"][name]
    assert len(got) == len(want) and all(
        math.isclose(g, w, rel_tol=REL_TOL, abs_tol=1e-7) for g, w in zip(got, want)), (
        f"training numerics changed ({name}): bump NUMERICS_VERSION in samkit/sweep/engine.py and "
        "regenerate tests/golden/runs.json (python tests/test_golden.py)")


if __name__ == "__main__":
    import torch
    torch.set_num_threads(1)
    os.environ.setdefault("SAMKIT_DATA", "data")
    runs = {name: golden_numbers(name) for name in sorted(CONFIGS)}
    with open(GOLDEN, "w") as f:
        json.dump({"numerics": store.NUMERICS_VERSION, "runs": runs}, f, indent=1)
    print(f"wrote {GOLDEN}", file=sys.stderr)
