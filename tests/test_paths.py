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
    for name in ("PARALLEL_MIN_ELEMENTS", "ROWS_PARALLEL_MIN_ELEMENTS"):
        monkeypatch.setattr(config, name, 1 << 40 if request.param == "serial" else 0)
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
@pytest.mark.parametrize("small_plane", [1, 256], ids=["planes", "small-planes"])
@pytest.mark.parametrize("comm", [None, LocalCommunicator()], ids=["fused", "split"])
def test_batch_norm_paths(path, shape, layout, small_plane, comm, monkeypatch):
    monkeypatch.setattr(config, "SMALL_PLANE", small_plane)
    monkeypatch.setattr(config, "WIDE_PLANE", small_plane)  # serial small planes as (N, C*S) rows
    x, dy, w, b = _data(shape, layout, seed=2)
    y, mean, invstd = F.batch_norm(x, None, None, w, b, training=True, return_stats=True, comm=comm)
    ry, rmean, rinvstd, _, _ = ref.batch_norm(x, None, None, w, b, training=True)
    _close(y, ry)
    dx, dw, db = F.batch_norm_backward(dy, x, mean, invstd, w, b, comm=comm)
    for got, exp in zip((dx, dw, db), ref.batch_norm_backward(dy, x, rmean, rinvstd, w, b), strict=True):
        _close(got, exp)
    y_eval = F.batch_norm(x, mean, 1 / invstd ** 2 - 1e-5, w, b)
    _close(y_eval, ry)


# 39 rows: the parallel build's chunks (20 and 19 rows on 2 threads) end the backward's
# two-row sweeps with and without a single row; 1 and 2 rows: a lone row, one pair.
@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("rows", [(13, 3), (1,), (2,)])
def test_rows_paths(path, center, rows):
    x, dy, _, _ = _data(rows + (8, 5), "contiguous", seed=3)
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_short_planes_in_parallel_hard_inputs(monkeypatch, dtype):
    """Short planes run in parallel take two plain passes per channel: mean 1e4 / std 1e-2
    data, a constant channel and a NaN stay exact where they must, fused equals split."""
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 0)
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((6, 5, 3, 3)) * 1e-2 + 1e4).astype(dtype)
    x[:, 1] = dtype(1e4 + 0.5)  # a constant channel
    x[2, 3, 1, 1] = np.nan
    dy = rng.standard_normal(x.shape).astype(dtype)
    w = rng.standard_normal(5).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    y, mean, rstd = F.batch_norm(x, None, None, w, b, training=True, return_stats=True)
    dx, dw, db = F.batch_norm_backward(dy, x, mean, rstd, w, b)
    ry, rmean, rrstd, _, _ = ref.batch_norm(x, None, None, w, b, training=True)
    rdx, rdw, rdb = ref.batch_norm_backward(dy, x, rmean, rrstd, w, b)
    ok = [0, 1, 2, 4]
    tol = 1e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(y[:, ok], ry[:, ok], rtol=tol, atol=tol)
    np.testing.assert_allclose(dx[:, ok], rdx[:, ok], rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(dw[ok], rdw[ok], rtol=tol, atol=tol * 10)
    assert np.all(y[:, 1] == b[1]) and mean[1] == np.float64(x[0, 1, 0, 0])  # constant channel: exactly
    assert np.all(np.isnan(y[:, 3])) and np.isnan(mean[3]) and np.all(np.isfinite(y[:, ok]))
    np.testing.assert_allclose(mean[ok], rmean[ok], rtol=1e-12)
    # the split path (SyncBatchNorm's) takes the same statistics and output
    y2, mean2, rstd2 = F.batch_norm(x, None, None, w, b, training=True, return_stats=True,
                                    comm=LocalCommunicator())
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(mean2, mean)
    np.testing.assert_array_equal(rstd2, rstd)
    dx2, dw2, db2 = F.batch_norm_backward(dy, x, mean2, rstd2, w, b, comm=LocalCommunicator())
    np.testing.assert_allclose(dx2, dx, rtol=1e-12, atol=1e-12 if dtype == np.float64 else 1e-6)


def test_row_passes_have_their_own_parallel_threshold(monkeypatch):
    """Row kernels with nothing to merge (LayerNorm/RMSNorm forward rows, GroupNorm blocks) go
    parallel from ROWS_PARALLEL_MIN_ELEMENTS, every other kernel (the LayerNorm backward, whose
    weight-gradient rows are summed, included) from PARALLEL_MIN_ELEMENTS; a threshold that
    config lacks fails when compiled."""
    from numbanorm.kernels.cpu import _jit, elementwise, groupnorm, layernorm

    monkeypatch.setattr(config, "PARALLEL", True)
    monkeypatch.setattr(config, "ROWS_PARALLEL_MIN_ELEMENTS", 100)
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 1000)
    for k in (layernorm.rows_forward, groupnorm.blocks_forward, groupnorm.blocks_backward):
        assert k.runs_parallel(100) and not k.runs_parallel(99)
    for k in (layernorm.rows_backward, elementwise.normalize_rows):
        assert k.runs_parallel(1000) and not k.runs_parallel(999)
    monkeypatch.setattr(config, "PARALLEL", False)
    assert not layernorm.rows_forward.runs_parallel(1 << 40)
    with pytest.raises(AttributeError):
        _jit.Kernel(lambda x: x, threshold="NO_SUCH_THRESHOLD")
