"""Software prefetch is a hint: every pass that issues it gives bit-for-bit the results it
gives without it, in its serial and parallel builds, on every slice length."""

import numpy as np
import pytest
import reference as ref

from numbanorm import config
from numbanorm import functional as F
from numbanorm.kernels.cpu.prefetch import prefetch_lines, prefetch_slice


@pytest.fixture(params=["serial", "parallel"])
def build(request, monkeypatch):
    for name in ("PARALLEL_MIN_ELEMENTS", "ROWS_PARALLEL_MIN_ELEMENTS"):
        monkeypatch.setattr(config, name, 1 << 40 if request.param == "serial" else 0)
    return request.param


def _twice(monkeypatch, run):
    """``run()`` with prefetch forced on (every input size), then with it off."""
    monkeypatch.setattr(config, "PREFETCH_MIN_BYTES", 0)
    monkeypatch.setattr(config, "PREFETCH", True)
    on = run()
    monkeypatch.setattr(config, "PREFETCH", False)
    return on, run()


def _same(on, off):
    for a, b in zip(on, off, strict=True):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b)


def test_prefetch_lines_follows_config(monkeypatch):
    monkeypatch.setattr(config, "PREFETCH", True)
    monkeypatch.setattr(config, "PREFETCH_MIN_BYTES", 1000)
    monkeypatch.setattr(config, "CACHE_LINE_BYTES", 64)
    assert prefetch_lines(999) == 0
    assert prefetch_lines(1000) == 64
    monkeypatch.setattr(config, "PREFETCH", False)
    assert prefetch_lines(1 << 30) == 0


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1023])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("line", [1, 64, 4096])
def test_prefetch_slice_leaves_the_slice_as_it_was(size, dtype, line):
    x = np.arange(size + 3, dtype=dtype)[2:-1]
    before = x.copy()
    prefetch_slice(x, line)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("shape", [(1, 7), (3, 1023), (7, 3)])
@pytest.mark.parametrize("residual", [False, True])
def test_layer_norm_rows(build, monkeypatch, shape, residual):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32) * 3 + 1e3
    r = rng.standard_normal(shape).astype(np.float32) if residual else None
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    on, off = _twice(monkeypatch, lambda: F.layer_norm(x, shape[-1], w, b, residual=r, return_stats=True))
    _same(on, off)
    y = on[0]
    expected = ref.layer_norm(x.astype(np.float64) + (0 if r is None else r), shape[-1], w, b)[0]
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 4, 16, 17), (3, 5, 16, 17)])
@pytest.mark.parametrize("epilogue", [None, "relu"])
def test_batch_norm_channel_pass(build, monkeypatch, shape, epilogue):
    # Planes of 272 values (not small) and at least two channels per thread: the one-pass
    # per-channel kernels, forward and backward.
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 2 + 5
    dy = rng.standard_normal(shape)
    r = rng.standard_normal(shape) if epilogue else None
    w = rng.standard_normal(shape[1])
    b = rng.standard_normal(shape[1])

    def run():
        y, mean, rstd = F.batch_norm(x, None, None, w, b, training=True, return_stats=True, residual=r,
                                     activation=epilogue)
        grads = F.batch_norm_backward(dy, x, mean, rstd, w, b, y=y, activation=epilogue, residual=r is not None)
        return (y, mean, rstd) + tuple(grads)

    on, off = _twice(monkeypatch, run)
    _same(on, off)
    ry = ref.batch_norm(x, None, None, w, b, training=True)[0]
    if epilogue:
        ry = np.maximum(ry + r, 0)
    np.testing.assert_allclose(on[0], ry, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("epilogue", [None, "relu"])
def test_batch_norm_two_pass(build, monkeypatch, epilogue):
    # Channels too large for the one-pass kernel: row moments, then the channels-first normalize.
    monkeypatch.setattr(config, "FUSED_CHANNEL_BYTES", 0)
    rng = np.random.default_rng(2)
    shape = (3, 5, 16, 17)
    x = rng.standard_normal(shape).astype(np.float32) * 2 + 5
    r = rng.standard_normal(shape).astype(np.float32) if epilogue else None
    w = rng.standard_normal(shape[1]).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    on, off = _twice(monkeypatch, lambda: F.batch_norm(x, None, None, w, b, training=True, return_stats=True,
                                                       residual=r, activation=epilogue))
    _same(on, off)
    ry = ref.batch_norm(x, None, None, w, b, training=True)[0]
    if epilogue:
        ry = np.maximum(ry + r, 0)
    np.testing.assert_allclose(on[0], ry, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize("residual", [False, True])
def test_group_norm_blocks(build, monkeypatch, groups, residual):
    rng = np.random.default_rng(3)
    shape = (3, 6, 7, 5)
    x = rng.standard_normal(shape) * 4 - 2
    r = rng.standard_normal(shape) if residual else None
    w = rng.standard_normal(shape[1])
    b = rng.standard_normal(shape[1])
    on, off = _twice(monkeypatch, lambda: F.group_norm(x, groups, w, b, return_stats=True, residual=r))
    _same(on, off)
    ry = ref.group_norm(x, groups, w, b)[0]
    np.testing.assert_allclose(on[0], ry if r is None else ry + r, rtol=1e-10, atol=1e-10)
