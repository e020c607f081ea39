"""GroupNorm-only behaviour. The checks every family shares run over the table in
``test_families_*.py``."""

import numpy as np
import pytest
from backends import both

import numbanorm

F = numbanorm.functional


def test_defaults():
    gn = numbanorm.GroupNorm(2, 6)
    assert gn.weight.shape == (6,) and gn.weight.dtype == np.float32 and np.all(gn.weight == 1)
    assert np.all(gn.bias == 0) and gn.eps == 1e-5
    gn = numbanorm.GroupNorm(3, 3, affine=False, dtype=np.float64)
    assert gn.weight is None and gn.bias is None


@pytest.mark.parametrize("be", both())
def test_groups_must_divide_channels(rng, be):
    with pytest.raises(ValueError, match="divisible"):
        numbanorm.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="positive integer"):
        numbanorm.GroupNorm(0, 6)
    x = be.put(rng.standard_normal((2, 6, 3)))
    with pytest.raises(ValueError, match="divisible"):
        F.group_norm(x, 4)
    _, mean, rstd = F.group_norm(x, 3, return_stats=True)
    with pytest.raises(ValueError, match="divisible"):
        F.group_norm_backward(x, x, 4, mean, rstd)
