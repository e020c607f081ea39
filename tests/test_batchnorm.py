"""BatchNorm-only behaviour. The checks every family shares (reference, finite differences,
PyTorch, errors, layouts, numerics, state) run over the table in ``test_families_*.py``."""

import numpy as np
import pytest
import reference as ref
from backends import both
from helpers import assert_close, assert_state_unchanged, data, randomize_affine, snapshot

import numbanorm

F = numbanorm.functional
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_defaults(dtype):
    bn = numbanorm.BatchNorm2d(5, dtype=dtype)
    assert bn.training is True
    assert bn.eps == 1e-5 and bn.momentum == 0.1
    for name, val in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)]:
        arr = getattr(bn, name)
        assert isinstance(arr, np.ndarray) and arr.dtype == dtype and arr.shape == (5,), name
        assert np.all(arr == val), name
    nbt = bn.num_batches_tracked
    assert isinstance(nbt, np.ndarray) and nbt.shape == () and nbt.dtype == np.int64
    assert int(nbt) == 0
    assert bn.grad_weight is None and bn.grad_bias is None

    bn = numbanorm.BatchNorm1d(3, affine=False, track_running_stats=False, dtype=dtype)
    assert bn.weight is None and bn.bias is None
    assert bn.running_mean is None and bn.running_var is None and bn.num_batches_tracked is None


def _trained(rng, cls, shape, steps=2):
    layer = cls(shape[1])
    randomize_affine(layer, rng)
    for _ in range(steps):
        layer(data(rng, shape, np.float32))
    return layer


@pytest.mark.parametrize("be", both())
def test_errors_one_value_per_channel(rng, be):
    msg = "Expected more than 1 value per channel"

    def raises_unchanged(layer, x):
        layer = be.layer(layer)
        before = snapshot(layer)
        with pytest.raises(ValueError, match=msg):
            layer(be.put(x))
        assert_state_unchanged(layer, before)

    bn1 = _trained(rng, numbanorm.BatchNorm1d, (4, 3))
    raises_unchanged(bn1, np.ones((1, 3), np.float32))
    raises_unchanged(bn1, np.ones((1, 3, 1), np.float32))
    raises_unchanged(_trained(rng, numbanorm.BatchNorm2d, (3, 4, 2, 3)), np.ones((1, 4, 1, 1), np.float32))
    # no running stats: batch stats are needed even in eval mode
    raises_unchanged(numbanorm.BatchNorm1d(3, track_running_stats=False).eval(), np.ones((1, 3), np.float32))
    rm, rv = be.put(np.zeros(4)), be.put(np.ones(4))
    with pytest.raises(ValueError, match=msg):
        F.batch_norm(be.put(np.ones((1, 3))), None, None, training=True)
    with pytest.raises(ValueError, match=msg):
        F.batch_norm(be.put(np.ones((1, 4, 1))), rm, rv, training=True)
    assert np.array_equal(be.get(rm), np.zeros(4)) and np.array_equal(be.get(rv), np.ones(4))
    # eval with running stats: one sample is fine
    bn1.eval()
    x = data(rng, (1, 3), np.float32)
    ey = ref.batch_norm(x, bn1.running_mean, bn1.running_var, bn1.weight, bn1.bias, False)[0]
    assert_close(be.get(be.layer(bn1)(be.put(x))), ey, 1e-5)


def test_eval_uses_running_stats_exactly():
    x = (np.random.default_rng(0).standard_normal((5, 3, 7)) * 2 + 3)
    rm = np.array([1.0, -2.0, 3.0])
    rv = np.array([0.5, 2.0, 4.0])
    w = np.array([1.5, -1.0, 0.25])
    b = np.array([0.1, 0.2, 0.3])
    y = F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-3)
    expected = (x - rm[:, None]) / np.sqrt(rv[:, None] + 1e-3) * w[:, None] + b[:, None]
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)
    # running statistics are not touched in eval
    np.testing.assert_array_equal(rm, [1.0, -2.0, 3.0])
