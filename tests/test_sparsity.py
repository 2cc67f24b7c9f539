"""samkit.measure.sparsity: the prunable weights, random and SNIP masks, pruned weights that stay
exactly zero under every optimizer (and through a state_dict), the sparsity for a parameter
count, and bad arguments refused."""
import copy

import pytest
import torch
import torch.nn.functional as F

from samkit.optim.bn import bn_frozen
from samkit.models import MLP, PreActResNet18, count_params
from samkit.optim.sam import SAM
from samkit.measure.sparsity import (PRUNERS, apply_masks, prunable, prune, random_masks,
                                     saved_masks, snip_masks, sparsity_for_params)


def mlp():
    torch.manual_seed(0)
    return MLP(6, [16, 8], 3)


def resnet():
    torch.manual_seed(0)
    return PreActResNet18(width=2, in_channels=3, num_classes=3)


def batch(model, n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3, 4, 4) if isinstance(model, PreActResNet18) else (n, 6)
    return torch.randn(shape, generator=g), torch.randint(0, 3, (n,), generator=g)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def n_dense(model):
    return count_params(model) - sum(w.numel() for w in prunable(model).values())


def n_used(model):
    """Parameters a pruned model uses: every non-prunable one (BatchNorm biases start at exactly
    0 but train) plus the nonzero prunable weights."""
    return n_dense(model) + sum(int(w.count_nonzero()) for w in prunable(model).values())


# ----------------------------------------------------------------------------- masks

def test_prunable_is_conv_and_linear_weights_only():
    assert list(prunable(mlp())) == ["net.1.weight", "net.3.weight", "net.5.weight"]
    names = list(prunable(resnet()))
    assert names[0] == "conv1.weight" and names[-1] == "linear.weight"
    assert all(n.endswith(".weight") and ".bn" not in n and not n.startswith("bn")
               for n in names)
    assert len(names) == 1 + 16 + 3 + 1  # stem, 2 convs × 8 blocks, 3 shortcuts, classifier


@pytest.mark.parametrize("s", [0.0, 0.3, 0.9, 0.99])
def test_random_masks_have_per_layer_density(s):
    model = resnet()
    masks = random_masks(model, s, seed=0)
    for name, w in prunable(model).items():
        assert masks[name].dtype == torch.bool and masks[name].shape == w.shape
        assert int(masks[name].sum()) == round((1 - s) * w.numel()), name


def test_random_masks_depend_on_seed_only():
    a, b, c = (random_masks(resnet(), 0.5, seed) for seed in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("method", PRUNERS)
def test_count_params_nonzero_after_pruning(method):
    model = resnet()
    x, y = batch(model)
    s = 0.8
    masks = prune(model, method, s, seed=0, loss_fn=F.cross_entropy, x=x, y=y)
    kept = sum(int(m.sum()) for m in masks.values())
    if method == "random":
        assert kept == sum(round((1 - s) * w.numel()) for w in prunable(model).values())
    else:  # global top-k
        assert kept == round((1 - s) * sum(w.numel() for w in prunable(model).values()))
    assert n_used(model) == n_dense(model) + kept


def test_snip_picks_the_global_top_k_of_abs_w_times_grad():
    torch.manual_seed(3)
    model = MLP(5, [7], 4).double()
    x = torch.randn(32, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (32,))
    # Reference: plain autograd on a copy, scores sorted by hand.
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y).backward()
    ws = [ref.net[1].weight, ref.net[3].weight]
    scores = torch.cat([(w * w.grad).abs().flatten() for w in ws])
    s = 0.6
    k = round((1 - s) * scores.numel())
    order = scores.sort(descending=True).values
    assert order[k - 1] > order[k]  # no tie at the cut: the top-k set is unique
    keep = scores >= order[k - 1]
    want = dict(zip(["net.1.weight", "net.3.weight"],
                    [m.view(w.shape) for m, w in zip(keep.split([w.numel() for w in ws]), ws)]))

    got = snip_masks(model, F.cross_entropy, x, y, s)
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_snip_leaves_model_untouched():
    model = resnet()
    x, y = batch(model)
    F.cross_entropy(model(x), y).backward()  # non-trivial grads and running stats
    model.layers[1].eval()  # a mixed train/eval model
    before = state(model)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    flags = [m.training for m in model.modules()]

    snip_masks(model, F.cross_entropy, x, y, 0.5)

    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(grads[n], p.grad) for n, p in model.named_parameters())
    assert flags == [m.training for m in model.modules()]


# ----------------------------------------------------------------------------- training

def sgd(ps):
    return torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-3, nesterov=True)


def adam(ps):
    return torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3)


def adamw(ps):
    return torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)


def sam(ps):
    return SAM(ps, torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9, weight_decay=5e-3)


def asam(ps):
    return SAM(ps, torch.optim.SGD, rho=2.0, adaptive=True, lr=0.1, momentum=0.9,
               weight_decay=5e-3)


def train(model, opt, steps=8, seed=1):
    for step in range(steps):
        x, y = batch(model, seed=seed + step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if isinstance(opt, SAM):
            opt.first_step(zero_grad=True)
            with bn_frozen(model):
                F.cross_entropy(model(x), y).backward()
            opt.second_step()
        else:
            opt.step()


def assert_masked_zero(model, masks):
    for name, w in prunable(model).items():
        assert torch.all(w[~masks[name]] == 0), name


@pytest.mark.parametrize("make_opt", [sgd, adam, adamw, sam, asam])
@pytest.mark.parametrize("make_model", [mlp, resnet])
def test_pruned_weights_stay_exactly_zero(make_model, make_opt):
    model = make_model()
    x, y = batch(model)
    masks = prune(model, "snip", 0.7, seed=0, loss_fn=F.cross_entropy, x=x, y=y)
    kept = sum(int(m.sum()) for m in masks.values())
    before = state(model)
    train(model, make_opt(model.parameters()))
    assert_masked_zero(model, masks)
    # After training no dense parameter is 0 any more (BatchNorm biases start at 0).
    assert count_params(model, nonzero=True) == n_dense(model) + kept
    for name, w in prunable(model).items():  # the kept weights did train
        assert not torch.equal(w[masks[name]], before[name][masks[name]]), name


def test_masks_survive_state_dict_round_trip_and_resume():
    model = resnet()
    masks = prune(model, "random", 0.8, seed=0)
    opt = sgd(model.parameters())
    train(model, opt, steps=3)
    ckpt = {"model": state(model), "opt": copy.deepcopy(opt.state_dict())}

    # The trainer's resume: rebuild, re-prune deterministically, load, continue.
    resumed = resnet()
    prune(resumed, "random", 0.8, seed=0)
    resumed.load_state_dict(ckpt["model"])
    opt2 = sgd(resumed.parameters())
    opt2.load_state_dict(ckpt["opt"])
    train(resumed, opt2, steps=3, seed=10)
    train(model, opt, steps=3, seed=10)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 resumed.state_dict().values()))
    assert_masked_zero(resumed, masks)


def test_loaded_mask_replaces_a_different_one():
    # Resume with masks taken from the checkpoint (e.g. SNIP on another batch): the hook
    # follows the loaded buffer, not the mask first applied.
    model = mlp()
    masks = prune(model, "random", 0.5, seed=0)
    ckpt = state(model)
    other = mlp()
    apply_masks(other, random_masks(other, 0.5, seed=1))
    other.load_state_dict(ckpt)
    assert all(torch.equal(saved_masks(other.state_dict())[k], masks[k]) for k in masks)
    train(other, adam(other.parameters()))
    assert_masked_zero(other, masks)


def test_apply_masks_twice_and_on_a_deep_copy():
    model = mlp()
    masks = prune(model, "random", 0.5, seed=0)
    apply_masks(model, masks)  # no second hook, no error
    twin = copy.deepcopy(model)  # torch drops tensor hooks on deepcopy ...
    apply_masks(twin, saved_masks(twin.state_dict()))  # ... so re-arm
    train(twin, adam(twin.parameters()))
    assert_masked_zero(twin, masks)


def test_masked_gradient_is_zero_even_if_nan():
    model = mlp()
    masks = prune(model, "random", 0.5, seed=0)
    w = model.net[1].weight
    (w * float("nan")).sum().backward()
    assert torch.all(w.grad[~masks["net.1.weight"]] == 0)


# ----------------------------------------------------------------------------- sizing

def test_sparsity_for_params_hits_the_target():
    small, wide = (PreActResNet18(w, 3, 10) for w in (2, 6))
    target = count_params(small)
    s = sparsity_for_params(wide, target)
    assert 0 < s < 1
    n_layers = len(prunable(wide))
    x, y = torch.randn(4, 3, 4, 4), torch.randint(0, 10, (4,))
    for method, slack in (("random", 0.5 * n_layers), ("snip", 0.5)):
        model = copy.deepcopy(wide)
        prune(model, method, s, seed=0, loss_fn=F.cross_entropy, x=x, y=y)
        assert abs(n_used(model) - target) <= slack, method


def test_sparsity_for_params_rejects_unreachable_targets():
    model = mlp()
    dense, total = n_dense(model), count_params(model)
    assert sparsity_for_params(model, total) == 0
    for bad in (total + 1, dense, 0):
        with pytest.raises(ValueError, match="target_params"):
            sparsity_for_params(model, bad)


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("s", [1.0, -0.1, 1.5, True, "0.5"])
def test_bad_sparsity_is_rejected(s):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        random_masks(mlp(), s, seed=0)


def test_bad_method_and_missing_snip_data_are_rejected():
    with pytest.raises(ValueError, match="allowed: random, snip"):
        prune(mlp(), "magnitude", 0.5, seed=0)
    with pytest.raises(ValueError, match="needs loss_fn, x and y"):
        prune(mlp(), "snip", 0.5, seed=0)


def test_apply_masks_rejects_unknown_names_and_shapes():
    model = mlp()
    with pytest.raises(ValueError, match="not a prunable weight"):
        apply_masks(model, {"net.1.bias": torch.ones(16, dtype=torch.bool)})
    with pytest.raises(ValueError, match="has shape"):
        apply_masks(model, {"net.1.weight": torch.ones(3, 3, dtype=torch.bool)})
