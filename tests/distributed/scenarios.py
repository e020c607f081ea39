"""SyncBatchNorm scenarios shared by the worker processes and the tests that check them.

Each scenario is a global batch split unevenly over the ranks (a rank may get zero
samples); the test process rebuilds the same batch from the seed and runs a
single-process BatchNorm on it as the reference.
"""

import numpy as np

#: name -> (per-sample shape (C, *spatial), dtype, layout, splits by world size, data mean, data std, momentum)
SCENARIOS = {
    "uneven_float64": ((3, 5), np.float64, "contiguous", {2: [4, 3], 3: [3, 0, 4]}, 0.5, 2.0, 0.3),
    "far_from_zero_float32": ((4, 3, 2), np.float32, "contiguous", {2: [1, 5], 3: [2, 2, 2]}, 1e4, 1e-2, 0.1),
    "channels_last_float32": ((5, 3, 4), np.float32, "channels_last", {2: [2, 3], 3: [1, 3, 1]}, -1.0, 3.0, 0.1),
    "rows_float64": ((6,), np.float64, "contiguous", {2: [3, 2], 3: [1, 3, 1]}, 2.0, 0.5, None),
    "volumes_float32": ((2, 2, 3, 2), np.float32, "contiguous", {2: [2, 1], 3: [1, 1, 1]}, 0.0, 1.0, 0.1),
}

STEPS = 2


def batch(name, step):
    """(x, dy) of the whole batch of ``name`` at training step ``step`` (the ranks' splits concatenated)."""
    sample, dtype, layout, splits, loc, scale, _ = SCENARIOS[name]
    n = sum(next(iter(splits.values())))
    rng = np.random.default_rng([sum(map(ord, name)), step])
    x = (loc + scale * rng.standard_normal((n,) + sample)).astype(dtype)
    dy = rng.standard_normal((n,) + sample).astype(dtype)
    return x, dy


def params(name):
    """(weight, bias) every rank and the reference start from."""
    sample, dtype = SCENARIOS[name][:2]
    rng = np.random.default_rng(sum(map(ord, name)) + 7)
    return rng.uniform(0.5, 1.5, sample[0]).astype(dtype), rng.standard_normal(sample[0]).astype(dtype)


def shard(name, a, size, rank):
    """Rank ``rank``'s part of a whole-batch array, in the scenario's memory layout."""
    splits = SCENARIOS[name][3][size]
    lo = sum(splits[:rank])
    part = a[lo:lo + splits[rank]]
    if SCENARIOS[name][2] == "channels_last":
        part = np.moveaxis(np.ascontiguousarray(np.moveaxis(part, 1, -1)), -1, 1)
    return part
