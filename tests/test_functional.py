"""Functional API details shared by every op: ``out=``, empty inputs, statistics shapes."""

import numpy as np
import pytest

from numbanorm import functional as F


def _x(shape, seed=0, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * 2 + 3).astype(dtype)


CASES = [
    ("batch_norm", lambda x, **kw: F.batch_norm(x, None, None, training=True, **kw), (4, 3, 5, 6)),
    ("group_norm", lambda x, **kw: F.group_norm(x, 3, **kw), (4, 6, 5, 6)),
    ("instance_norm", lambda x, **kw: F.instance_norm(x, **kw), (4, 3, 5, 6)),
    ("layer_norm", lambda x, **kw: F.layer_norm(x, (5, 6), **kw), (4, 3, 5, 6)),
    ("rms_norm", lambda x, **kw: F.rms_norm(x, (5, 6), **kw), (4, 3, 5, 6)),
]


@pytest.mark.parametrize("name,op,shape", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("out_layout", ["contiguous", "channels_last", "strided"])
def test_out_is_written_and_returned(name, op, shape, out_layout):
    x = _x(shape)
    expected = op(x)
    if out_layout == "contiguous":
        out = np.empty_like(x)
    elif out_layout == "channels_last":
        out = np.empty(np.array(shape)[[0, 2, 3, 1]], x.dtype).transpose(0, 3, 1, 2)
    else:
        out = np.empty(shape[:-1] + (2 * shape[-1],), x.dtype)[..., ::2]
    result = op(x, out=out)
    assert result is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name,op,shape", CASES, ids=[c[0] for c in CASES])
def test_bad_out_is_rejected_before_anything_runs(name, op, shape):
    x = _x(shape)
    with pytest.raises(ValueError, match="out must have shape"):
        op(x, out=np.empty(shape[:-1] + (shape[-1] + 1,), x.dtype))
    with pytest.raises(ValueError, match="out must have shape"):
        op(x, out=np.empty(shape, np.float64))
    with pytest.raises(ValueError, match="overlap"):
        op(x, out=x)
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        op(x, out=[0.0])


def test_channels_last_input_without_copy_keeps_layout_in_every_op():
    x = np.ascontiguousarray(_x((2, 6, 4, 5)).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    for y in (F.batch_norm(x, None, None, training=True), F.group_norm(x, 2), F.instance_norm(x)):
        assert y.strides == x.strides


def test_empty_batch_in_eval_returns_empty():
    x = np.empty((0, 3, 4), np.float32)
    y = F.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32))
    assert y.shape == x.shape and y.dtype == x.dtype


def test_eval_batch_norm_uses_running_stats_exactly():
    x = _x((5, 3, 7), dtype=np.float64)
    rm = np.array([1.0, -2.0, 3.0])
    rv = np.array([0.5, 2.0, 4.0])
    w = np.array([1.5, -1.0, 0.25])
    b = np.array([0.1, 0.2, 0.3])
    y = F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-3)
    ref = (x - rm[:, None]) / np.sqrt(rv[:, None] + 1e-3) * w[:, None] + b[:, None]
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-13)
    # running statistics are not touched in eval
    np.testing.assert_array_equal(rm, [1.0, -2.0, 3.0])


def test_return_stats_shapes_and_dtypes():
    x = _x((4, 6, 5))
    _, mean, invstd = F.batch_norm(x, None, None, training=True, return_stats=True)
    assert mean.shape == invstd.shape == (6,) and mean.dtype == np.float64
    _, mean, rstd = F.group_norm(x, 3, return_stats=True)
    assert mean.shape == rstd.shape == (4, 3)
    _, mean, rstd = F.instance_norm(x, return_stats=True)
    assert mean.shape == rstd.shape == (4, 6)
    _, mean, rstd = F.layer_norm(x, 5, return_stats=True)
    assert mean.shape == rstd.shape == (4, 6)
    _, _, rstd = F.rms_norm(x, (6, 5), return_stats=True)
    assert rstd.shape == (4,)
    mean_square = (x.astype(np.float64) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(rstd, 1 / np.sqrt(mean_square + np.finfo(np.float32).eps), rtol=1e-12)


def test_backward_rejects_wrong_statistics_shape():
    x = _x((4, 6, 5))
    dy = np.ones_like(x)
    with pytest.raises(ValueError, match="mean must have shape"):
        F.batch_norm_backward(dy, x, np.zeros(5), np.ones(6))
    with pytest.raises(ValueError, match="rstd must have shape"):
        F.group_norm_backward(dy, x, 3, np.zeros((4, 3)), np.ones((4, 2)))
