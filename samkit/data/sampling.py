"""Seeded draws from a labelled training set: class-balanced subsets and label noise.

Every draw runs on a CPU generator of its own purpose, so the same data, seeds and sizes give
the same examples and the same flipped labels on every machine.
"""
from __future__ import annotations

import hashlib

import torch


def seeded_generator(purpose: str, seed: int) -> torch.Generator:
    """A CPU generator per purpose: callers may pass one seed as both noise_seed and
    subset_seed, and equal seeds must not draw the same random stream for both."""
    digest = hashlib.sha256(f"{purpose}:{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def balanced_counts(n: int, available: list[int]) -> list[int]:
    """Split n over classes as evenly as availability allows; remainders go to the lowest
    class indices; a class that runs out passes its share to the others."""
    counts = [0] * len(available)
    while n > 0:
        open_ = [c for c, a in enumerate(available) if counts[c] < a]
        share, extra = divmod(n, len(open_))
        for i, c in enumerate(open_):
            take = min(share + (i < extra), available[c] - counts[c])
            counts[c] += take
            n -= take
    return counts


def split(labels: torch.Tensor, n_train: int | None, n_val: int, seed: int,
          num_classes: int):
    """Sorted (train, val) indices; class-balanced, disjoint, drawn with ``seed``.
    ``n_train`` None: every example not in the validation split trains."""
    if n_train is None and n_val == 0:
        return torch.arange(len(labels)), torch.arange(0)
    g = seeded_generator("subset", seed)
    pools = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        pools.append(idx[torch.randperm(len(idx), generator=g)])
    sizes = [len(p) for p in pools]
    if n_train is None:  # val first, everything else trains
        v = balanced_counts(n_val, sizes)
        val = torch.cat([p[:k] for p, k in zip(pools, v)])
        train = torch.cat([p[k:] for p, k in zip(pools, v)])
    else:
        t = balanced_counts(n_train, sizes)
        v = balanced_counts(n_val, [s - k for s, k in zip(sizes, t)])
        train = torch.cat([p[:k] for p, k in zip(pools, t)])
        val = torch.cat([p[k:k + m] for p, k, m in zip(pools, t, v)])
    # Sorted: keeps the dataset's own order instead of grouping the examples by class.
    return train.sort().values, val.sort().values


def flip_labels(y: torch.Tensor, p: float, seed: int, num_classes: int):
    """(noisy labels, sorted indices of the flipped ones): exactly round(p·n) labels moved to
    a uniformly drawn *other* class."""
    g = seeded_generator("noise", seed)
    n_noisy = round(p * len(y))
    idx = torch.randperm(len(y), generator=g)[:n_noisy].sort().values
    shift = torch.randint(1, num_classes, (n_noisy,), generator=g)  # never 0: always a flip
    y_noisy = y.clone()
    y_noisy[idx] = (y[idx] + shift) % num_classes
    return y_noisy, idx
