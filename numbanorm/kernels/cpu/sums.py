"""Gradient sums for backward passes: ``sum(dy)`` and ``sum(dy * (x - mean))``.

With ``xhat = (x - mean) * rstd`` these give ``sum(dy)`` (dbias and the mean term of
dx) and ``sum(dy * xhat) = rstd * sum(dy * (x - mean))`` (dweight and the variance
term of dx). Accumulated in float64, with the float64 mean, from one read of x and dy.

Behind a ReLU epilogue (``y = relu(norm(x) + residual)``) the gradient that reaches the
normalization is ``g = dy * (y > 0)``: the ``*_relu`` sums form it from the same read (of y
too), sum it in its place and write it once, to the residual's gradient or to the dx buffer,
where the dx loop reads it back while it is in cache.
"""

import numpy as np
from numba import prange

from ... import _memory
from ._jit import cast_like, kernel, reduce_helper
from .moments import _plan_chunks
from .subarrays import sub2

__all__ = [
    "slice_grad_sums",
    "strided_grad_sums",
    "slice_grad_sums_relu",
    "slice_weighted_grad_sums",
    "pair_weighted_grad_sums",
    "slice_weighted_grad_sums_relu",
    "cols_block_grad_sums",
    "cols_block_grad_sums_relu",
    "row_grad_sums",
    "column_grad_sums",
]


@reduce_helper
def slice_grad_sums(x, dy, mean):
    """``(sum(dy), sum(dy * (x - mean)))`` over a 1-D slice, in float64."""
    s_dy = 0.0
    s_dyx = 0.0
    for i in range(x.size):
        g = np.float64(dy[i])
        s_dy += g
        s_dyx += g * (x[i] - mean)
    return s_dy, s_dyx


@reduce_helper
def strided_grad_sums(x3, dy3, c, mean):
    """:func:`slice_grad_sums` over channel ``c`` of C-contiguous (N, C, S) arrays: its N
    slices in one loop nest (for short slices, where a call per slice would cost as much
    as its values)."""
    n, _, length = x3.shape
    s_dy = 0.0
    s_dyx = 0.0
    for i in range(n):
        xr = sub2(x3, i, c)
        gr = sub2(dy3, i, c)
        for j in range(length):
            g = np.float64(gr[j])
            s_dy += g
            s_dyx += g * (xr[j] - mean)
    return s_dy, s_dyx


@reduce_helper
def slice_grad_sums_relu(x, dy, y, g, mean):
    """:func:`slice_grad_sums` of ``g = dy * (y > 0)`` (ReLU's mask from its output), which is
    written to ``g`` in dy's dtype (``g`` may be the dx slice)."""
    zero = cast_like(0.0, dy)
    s_dy = 0.0
    s_dyx = 0.0
    for i in range(x.size):
        v = dy[i] if y[i] > zero else zero
        g[i] = v
        w = np.float64(v)
        s_dy += w
        s_dyx += w * (x[i] - mean)
    return s_dy, s_dyx


@reduce_helper
def cols_block_grad_sums(x2, dy2, mean, s_dy, s_dyx):
    """Add per-column ``sum(dy)`` and ``sum(dy * (x - mean))`` of a (rows, C) block.

    Each sweep takes row ``i`` of the first half and row ``i`` of the second, so the
    (C,) accumulators are read and written half as often. The halves, not adjacent
    rows: two halves are two sequential streams per array, which the hardware
    prefetcher follows; two interleaved rows of 512 B or more are not followed, and a
    block from memory then reads about twice as slowly.
    """
    rows = x2.shape[0]
    half = rows // 2
    xa, xb, ga, gb = x2[:half], x2[half:2 * half], dy2[:half], dy2[half:2 * half]
    for i in range(half):
        x0, x1, g0, g1 = xa[i], xb[i], ga[i], gb[i]
        for c in range(x0.size):
            a = np.float64(g0[c])
            b = np.float64(g1[c])
            mu = mean[c]
            s_dy[c] += a + b
            s_dyx[c] += a * (x0[c] - mu) + b * (x1[c] - mu)
    for i in range(2 * half, rows):
        xr = x2[i]
        dyr = dy2[i]
        for c in range(xr.size):
            g = np.float64(dyr[c])
            s_dy[c] += g
            s_dyx[c] += g * (xr[c] - mean[c])


@reduce_helper
def cols_block_grad_sums_relu(x2, dy2, y2, g2, mean, s_dy, s_dyx):
    """:func:`cols_block_grad_sums` of ``g = dy * (y > 0)``, written to ``g2`` (the same sweep)."""
    zero = cast_like(0.0, dy2)
    rows = x2.shape[0]
    half = rows // 2
    xa, xb, ga, gb = x2[:half], x2[half:2 * half], dy2[:half], dy2[half:2 * half]
    ya, yb, oa, ob = y2[:half], y2[half:2 * half], g2[:half], g2[half:2 * half]
    for i in range(half):
        x0, x1, g0, g1, y0, y1, o0, o1 = xa[i], xb[i], ga[i], gb[i], ya[i], yb[i], oa[i], ob[i]
        for c in range(x0.size):
            u = g0[c] if y0[c] > zero else zero
            v = g1[c] if y1[c] > zero else zero
            o0[c] = u
            o1[c] = v
            a = np.float64(u)
            b = np.float64(v)
            mu = mean[c]
            s_dy[c] += a + b
            s_dyx[c] += a * (x0[c] - mu) + b * (x1[c] - mu)
    for i in range(2 * half, rows):
        xr = x2[i]
        dyr = dy2[i]
        yr = y2[i]
        gr = g2[i]
        for c in range(xr.size):
            u = dyr[c] if yr[c] > zero else zero
            gr[c] = u
            g = np.float64(u)
            s_dy[c] += g
            s_dyx[c] += g * (xr[c] - mean[c])


@kernel
def rows_grad_sums(x2, dy2, mean, s_dy, s_dyx, y2, g2):
    """Gradient sums of every row of (R, L) arrays, each row with its own mean; with ``y2``
    (not None), of ``dy * (y2 > 0)``, written to ``g2``."""
    for r in prange(x2.shape[0]):
        if y2 is None:
            s_dy[r], s_dyx[r] = slice_grad_sums(x2[r], dy2[r], mean[r])
        else:
            s_dy[r], s_dyx[r] = slice_grad_sums_relu(x2[r], dy2[r], y2[r], g2[r], mean[r])


@kernel
def cols_grad_sums(x3, dy3, mean, rows_per_chunk, s_dy, s_dyx, y3, g3):
    """Partial per-column gradient sums of (B, R, C) arrays into (B, K, C) chunk slots; with
    ``y3`` (not None), of ``dy * (y3 > 0)``, written to ``g3``."""
    nb, nrows, _ = x3.shape
    nchunks = s_dy.shape[1]
    for item in prange(nb * nchunks):
        b = item // nchunks
        k = item - b * nchunks
        start = k * rows_per_chunk
        stop = min(start + rows_per_chunk, nrows)
        s_dy[b, k] = 0.0
        s_dyx[b, k] = 0.0
        if y3 is None:
            cols_block_grad_sums(x3[b, start:stop], dy3[b, start:stop], mean[b], s_dy[b, k], s_dyx[b, k])
        else:
            cols_block_grad_sums_relu(x3[b, start:stop], dy3[b, start:stop], y3[b, start:stop],
                                      g3[b, start:stop], mean[b], s_dy[b, k], s_dyx[b, k])


def row_grad_sums(x2, dy2, mean, y2=None, g2=None):
    """Per-row gradient sums of C-contiguous (R, L) arrays; ``mean`` is (R,) float64.

    With ``y2`` (a ReLU's output), the sums of ``g = dy * (y2 > 0)``, written to ``g2``.
    """
    rows = x2.shape[0]
    s_dy = np.empty(rows)
    s_dyx = np.empty(rows)
    rows_grad_sums(x2.size, x2, dy2, np.ascontiguousarray(mean, dtype=np.float64), s_dy, s_dyx, y2, g2)
    return s_dy, s_dyx


def column_grad_sums(x3, dy3, mean, y3=None, g3=None):
    """Per-column gradient sums of each plane of (B, R, C) arrays; ``mean`` is (B, C).

    With ``y3`` (a ReLU's output), the sums of ``g = dy * (y3 > 0)``, written to ``g3``.
    """
    planes, rows, cols = x3.shape
    rows_per_chunk, nchunks = _plan_chunks(planes, rows, cols)
    s_dy = _memory.empty((planes, nchunks, cols), work=x3.size)
    s_dyx = _memory.empty((planes, nchunks, cols), work=x3.size)
    mean = np.ascontiguousarray(mean, dtype=np.float64)
    cols_grad_sums(x3.size, x3, dy3, mean, rows_per_chunk, s_dy, s_dyx, y3, g3)
    if nchunks == 1:
        return s_dy[:, 0], s_dyx[:, 0]
    return s_dy.sum(axis=1), s_dyx.sum(axis=1)


@reduce_helper
def slice_weighted_grad_sums(x, dy, weight, mean, scale, acc_dyx, acc_dy):
    """``(sum(dy * w), sum(dy * w * (x - mean)))`` over a 1-D slice, in float64; in the same
    read, per element, ``acc_dyx += dy * (x - mean) * scale`` and ``acc_dy += dy``.

    The accumulators are LayerNorm's float64 dweight/dbias partial rows (``scale`` the
    row's rstd): adding into them here costs a read and write of two (D,) rows per
    input row, which cached rows make cheaper than a second sweep over x and dy.
    GroupNorm's (N, C) path passes zeroed rows and ``scale = 1`` to get the per-element
    terms themselves.
    """
    s_g = 0.0
    s_gx = 0.0
    for i in range(x.size):
        g = np.float64(dy[i])
        p = g * (x[i] - mean)
        s_g += g * weight[i]
        s_gx += p * weight[i]
        acc_dyx[i] += p * scale
        acc_dy[i] += g
    return s_g, s_gx


@reduce_helper
def pair_weighted_grad_sums(x0, dy0, x1, dy1, weight, mean0, mean1, scale0, scale1, acc_dyx, acc_dy):
    """:func:`slice_weighted_grad_sums` of two rows in one sweep: ``(s_g, s_gx)`` of each, and
    ``acc_dyx += p0 * scale0 + p1 * scale1``, ``acc_dy += g0 + g1``.

    The float64 accumulators and the weight are read and written once per two rows, half as
    many of the loads and stores that bound the sweep when the rows are in cache.
    """
    s_g0 = 0.0
    s_gx0 = 0.0
    s_g1 = 0.0
    s_gx1 = 0.0
    for i in range(x0.size):
        g0 = np.float64(dy0[i])
        g1 = np.float64(dy1[i])
        p0 = g0 * (x0[i] - mean0)
        p1 = g1 * (x1[i] - mean1)
        w = weight[i]
        s_g0 += g0 * w
        s_gx0 += p0 * w
        s_g1 += g1 * w
        s_gx1 += p1 * w
        acc_dyx[i] += p0 * scale0 + p1 * scale1
        acc_dy[i] += g0 + g1
    return s_g0, s_gx0, s_g1, s_gx1


@reduce_helper
def slice_weighted_grad_sums_relu(x, dy, y, g, weight, mean, scale, acc_dyx, acc_dy):
    """:func:`slice_weighted_grad_sums` of ``g = dy * (y > 0)``, which is written to ``g``."""
    zero = cast_like(0.0, dy)
    s_g = 0.0
    s_gx = 0.0
    for i in range(x.size):
        v = dy[i] if y[i] > zero else zero
        g[i] = v
        w = np.float64(v)
        p = w * (x[i] - mean)
        s_g += w * weight[i]
        s_gx += p * weight[i]
        acc_dyx[i] += p * scale
        acc_dy[i] += w
    return s_g, s_gx
