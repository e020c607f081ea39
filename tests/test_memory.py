"""Aligned allocation (numbanorm._memory) and the arrays the layers hand to kernels."""

import numpy as np
import pytest

import numbanorm
from numbanorm import _memory, config
from numbanorm import functional as F


def _address(a):
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("shape", [(0,), (1,), (3, 5), (7, 1, 64), (1 << 16,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_is_aligned_with_the_right_shape_and_dtype(shape, dtype):
    a = _memory.empty(shape, dtype, work=1 << 20)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    if a.size:
        assert _address(a) % config.ALIGN_BYTES == 0
    a[...] = 3  # the whole array is writable memory of its own
    assert np.all(a == 3)


def test_small_work_gets_a_plain_numpy_array(monkeypatch):
    monkeypatch.setattr(config, "ALIGN_MIN_ELEMENTS", 100)
    small = _memory.empty((3, 4), np.float32)
    assert small.base is None  # np.empty, no over-allocated buffer behind it
    assert _memory.empty((3, 4), np.float32, work=100).base is not None


def test_full_and_aligned():
    f = _memory.full((5, 3), 2.5, np.float32, work=1 << 20)
    assert f.dtype == np.float32 and np.all(f == 2.5) and _address(f) % config.ALIGN_BYTES == 0
    buf = _memory.empty(40, np.float64, work=1 << 20)
    buf[:] = np.arange(40)
    odd = buf[1:33]  # 8 bytes past an aligned start
    assert _address(odd) % config.ALIGN_BYTES == 8
    got = _memory.aligned(odd, work=1 << 20)
    assert _address(got) % config.ALIGN_BYTES == 0
    np.testing.assert_array_equal(got, odd)
    assert _memory.aligned(got, work=1 << 20) is got  # already aligned: no copy
    assert _memory.aligned(odd, work=1) is odd  # small work: used as it is


def test_large_outputs_and_layer_parameters_are_aligned():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 48, 48)).astype(np.float32)
    x_cl = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    for arr in (x, x_cl):
        bn = numbanorm.BatchNorm2d(8)
        y = bn(arr)
        assert _address(y) % config.ALIGN_BYTES == 0
        np.testing.assert_allclose(y, F.batch_norm(arr, None, None, training=True), rtol=1e-5, atol=1e-5)
        dx = bn.backward(np.ones_like(arr))
        assert _address(dx) % config.ALIGN_BYTES == 0
        assert y.strides == arr.strides  # layout kept
    ln = numbanorm.LayerNorm(48)
    for p in (ln.weight, ln.bias):
        assert _address(p) % config.ALIGN_BYTES == 0
    assert _address(ln(x)) % config.ALIGN_BYTES == 0


def test_misaligned_user_parameters_give_the_same_result():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 1024)).astype(np.float32)
    buf = rng.standard_normal(2 * 1024 + 1).astype(np.float32)
    w, b = buf[1:1025], buf[1025:]  # 4 bytes into the buffer: misaligned views
    y = F.layer_norm(x, 1024, w, b)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
