"""Every kernel path, forced: serial and parallel builds, fused and chunked channels-last
passes, blocked moments. Sizes are small, so thresholds are lowered to reach each path."""

import numpy as np
import pytest
import reference as ref

from numbanorm import config
from numbanorm import functional as F
from numbanorm.distributed import LocalCommunicator


@pytest.fixture(params=["serial", "parallel", "parallel-small-blocks"])
def path(request, monkeypatch):
    if request.param == "serial":
        monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 1 << 40)
    else:
        monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 0)
    if request.param == "parallel-small-blocks":
        monkeypatch.setattr(config, "BLOCK_ELEMENTS", 16)
        monkeypatch.setattr(config, "COLUMN_BLOCK_ELEMENTS", 16)
        monkeypatch.setattr(config, "COLUMN_MIN_ROWS", 1)
    return request.param


def _data(shape, layout, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3 + 2
    dy = rng.standard_normal(shape)
    if layout == "channels_last":
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        x = np.moveaxis(x, -1, 1)
        dy = np.moveaxis(np.ascontiguousarray(np.moveaxis(dy, 1, -1)), -1, 1)
    w = rng.standard_normal(shape[1])
    b = rng.standard_normal(shape[1])
    return x, dy, w, b


def _close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


# N = 1 takes the chunked channels-last path, N = 5 the fused per-sample one.
SHAPES = [(1, 6, 9, 7), (5, 6, 9, 7)]
# (shape, layout) pairs; 2-D input has one layout.
CASES = [(s, layout) for s in SHAPES for layout in ("contiguous", "channels_last")] + [((37, 6), "contiguous")]


@pytest.mark.parametrize("shape,layout", CASES)
def test_group_norm_paths(path, shape, layout):
    x, dy, w, b = _data(shape, layout)
    y, mean, rstd = F.group_norm(x, 3, w, b, return_stats=True)
    ry, rmean, rrstd = ref.group_norm(x, 3, w, b)
    _close(y, ry)
    _close(mean, rmean)
    dx, dw, db = F.group_norm_backward(dy, x, 3, mean, rstd, w, b)
    for got, exp in zip((dx, dw, db), ref.group_norm_backward(dy, x, 3, rmean, rrstd, w, b), strict=True):
        _close(got, exp)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_instance_norm_paths(path, shape, layout):
    x, dy, w, b = _data(shape, layout, seed=1)
    y, mean, rstd = F.instance_norm(x, weight=w, bias=b, return_stats=True)
    ry, rmean, rrstd = ref.group_norm(x, shape[1], w, b)
    _close(y, ry)
    dx, dw, db = F.instance_norm_backward(dy, x, mean, rstd, w, b)
    for got, exp in zip((dx, dw, db), ref.group_norm_backward(dy, x, shape[1], rmean, rrstd, w, b), strict=True):
        _close(got, exp)


@pytest.mark.parametrize("shape,layout", CASES)
@pytest.mark.parametrize("small_plane", [1, 256], ids=["planes", "small-planes-as-columns"])
@pytest.mark.parametrize("comm", [None, LocalCommunicator()], ids=["fused", "split"])
def test_batch_norm_paths(path, shape, layout, small_plane, comm, monkeypatch):
    monkeypatch.setattr(config, "SMALL_PLANE", small_plane)
    x, dy, w, b = _data(shape, layout, seed=2)
    y, mean, invstd = F.batch_norm(x, None, None, w, b, training=True, return_stats=True, comm=comm)
    ry, rmean, rinvstd, _, _ = ref.batch_norm(x, None, None, w, b, training=True)
    _close(y, ry)
    dx, dw, db = F.batch_norm_backward(dy, x, mean, invstd, w, b, comm=comm)
    for got, exp in zip((dx, dw, db), ref.batch_norm_backward(dy, x, rmean, rinvstd, w, b), strict=True):
        _close(got, exp)
    y_eval = F.batch_norm(x, mean, 1 / invstd ** 2 - 1e-5, w, b)
    _close(y_eval, ry)


@pytest.mark.parametrize("center", [True, False])
def test_rows_paths(path, center):
    x, dy, _, _ = _data((13, 3, 8, 5), "contiguous", seed=3)
    w = np.random.default_rng(4).standard_normal((8, 5))
    b = np.random.default_rng(5).standard_normal((8, 5))
    if center:
        y, mean, rstd = F.layer_norm(x, (8, 5), w, b, return_stats=True)
        ry, rmean, rrstd = ref.layer_norm(x, (8, 5), w, b)
        grads = F.layer_norm_backward(dy, x, (8, 5), mean, rstd, w, b)
        rgrads = ref.layer_norm_backward(dy, x, (8, 5), rmean, rrstd, w, b)
    else:
        y, _, rstd = F.rms_norm(x, (8, 5), w, eps=1e-6, return_stats=True)
        ry, rrstd = ref.rms_norm(x, (8, 5), w, eps=1e-6)
        grads = F.rms_norm_backward(dy, x, (8, 5), rstd, w)[:2]
        rgrads = ref.rms_norm_backward(dy, x, (8, 5), rrstd, w)[:2]
    _close(y, ry)
    for got, exp in zip(grads, rgrads, strict=True):
        _close(got, exp)
