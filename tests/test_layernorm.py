"""LayerNorm-only behaviour. The checks every family shares run over the table in
``test_families_*.py``."""

import numpy as np
import pytest
from backends import both

import numbanorm

F = numbanorm.functional


def test_defaults():
    ln = numbanorm.LayerNorm(6)
    assert ln.weight.shape == (6,) and ln.weight.dtype == np.float32 and np.all(ln.weight == 1)
    assert ln.bias.shape == (6,) and np.all(ln.bias == 0)
    assert ln.eps == 1e-5
    ln = numbanorm.LayerNorm((2, 3), bias=False, dtype=np.float64)
    assert ln.weight.shape == (2, 3) and ln.weight.dtype == np.float64 and ln.bias is None
    ln = numbanorm.LayerNorm([4], elementwise_affine=False)
    assert ln.weight is None and ln.bias is None


@pytest.mark.parametrize("be", both())
def test_normalized_shape_must_match_the_trailing_dims(be):
    x = be.put(np.ones((3, 2, 4)))
    with pytest.raises(ValueError, match="trailing dimensions"):
        F.layer_norm(x, 5)
    with pytest.raises(ValueError, match="trailing dimensions"):
        F.layer_norm(x, (3, 4))
    for bad in (0, (), (2, -1), 2.5, "4"):
        with pytest.raises((TypeError, ValueError), match="normalized_shape"):
            F.layer_norm(x, bad)
