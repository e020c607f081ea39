"""Element-wise normalize and dx loops, compiled without ``reassoc``.

The mean is subtracted as a hi/lo pair, ``(x - mean_hi) - mean_lo``: for float32 data
``mean_hi`` is the float32 nearest the float64 mean and ``mean_lo`` the float32 of the
remainder. ``x - mean_hi`` is exact (Sterbenz) wherever the cancellation is severe,
so the result carries the mean at about twice float32 precision for one extra
subtraction. ``reassoc`` would let LLVM fold the pair back into one float32 constant,
so these loops use ``config.FASTMATH_ELEMENTWISE``. The output is formed as
``(x - mean) * scale + shift``, never ``x * scale' + shift'``, which cancels for data
far from zero.

Backward uses the same shape: ``dx = a * dy + c * ((x - mean_hi) - mean_lo) + b``
with per-slice coefficients a, b, c derived from the gradient sums.
"""

import numpy as np
from numba import prange

from ._jit import elementwise_helper, kernel

__all__ = [
    "normalize_slice",
    "normalize_slice_affine",
    "dx_slice",
    "normalize_cols",
    "dx_cols",
    "normalize_rows",
    "dx_rows",
    "normalize_planes",
    "dx_planes",
    "dx_slice_affine",
    "accumulate_affine_grads",
]


@elementwise_helper
def normalize_slice(x, y, mean_hi, mean_lo, scale, shift):
    """``y = ((x - mean_hi) - mean_lo) * scale + shift`` over a 1-D slice."""
    for i in range(x.size):
        y[i] = ((x[i] - mean_hi) - mean_lo) * scale + shift


@elementwise_helper
def normalize_slice_affine(x, y, mean_hi, mean_lo, rstd, weight, bias):
    """``y = ((x - mean_hi) - mean_lo) * rstd * weight + bias`` with per-element weight/bias."""
    for i in range(x.size):
        y[i] = (((x[i] - mean_hi) - mean_lo) * rstd) * weight[i] + bias[i]


@elementwise_helper
def dx_slice(x, dy, dx, mean_hi, mean_lo, a, b, c):
    """``dx = a * dy + c * ((x - mean_hi) - mean_lo) + b`` over a 1-D slice."""
    for i in range(x.size):
        dx[i] = a * dy[i] + c * ((x[i] - mean_hi) - mean_lo) + b


@elementwise_helper
def normalize_cols(x2, y2, mean_hi, mean_lo, scale, shift):
    """Per-column ``y = ((x - mean_hi) - mean_lo) * scale + shift`` over a (rows, C) block."""
    for i in range(x2.shape[0]):
        xr = x2[i]
        yr = y2[i]
        for c in range(xr.size):
            yr[c] = ((xr[c] - mean_hi[c]) - mean_lo[c]) * scale[c] + shift[c]


@elementwise_helper
def dx_cols(x2, dy2, dx2, mean_hi, mean_lo, a, b, c):
    """Per-column ``dx = a * dy + c * ((x - mean_hi) - mean_lo) + b`` over a (rows, C) block."""
    for i in range(x2.shape[0]):
        xr = x2[i]
        dyr = dy2[i]
        dxr = dx2[i]
        for j in range(xr.size):
            dxr[j] = a[j] * dyr[j] + c[j] * ((xr[j] - mean_hi[j]) - mean_lo[j]) + b[j]


@kernel
def normalize_rows(x3, y3, mean_hi, mean_lo, scale, shift):
    """Channels-first pass: each (n, c) row of a (N, C, S) array with params (P, C), P in {1, N}."""
    n_samples, n_channels, _ = x3.shape
    per_sample = mean_hi.shape[0] > 1
    for r in prange(n_samples * n_channels):
        n = r // n_channels
        c = r - n * n_channels
        p = n if per_sample else 0
        normalize_slice(x3[n, c], y3[n, c], mean_hi[p, c], mean_lo[p, c], scale[p, c], shift[p, c])


@kernel
def dx_rows(x3, dy3, dx3, mean_hi, mean_lo, a, b, c):
    """Channels-first dx: each (n, c) row of (N, C, S) arrays with coefficients (P, C)."""
    n_samples, n_channels, _ = x3.shape
    per_sample = mean_hi.shape[0] > 1
    for r in prange(n_samples * n_channels):
        n = r // n_channels
        ch = r - n * n_channels
        p = n if per_sample else 0
        dx_slice(x3[n, ch], dy3[n, ch], dx3[n, ch], mean_hi[p, ch], mean_lo[p, ch], a[p, ch], b[p, ch], c[p, ch])


@kernel
def normalize_planes(x3, y3, mean_hi, mean_lo, scale, shift, rows_per_chunk, nchunks):
    """Channels-last pass over (B, R, C) arrays, plane b with params row b (or row 0)."""
    n_planes, n_rows, _ = x3.shape
    per_plane = mean_hi.shape[0] > 1
    for item in prange(n_planes * nchunks):
        b = item // nchunks
        lo = (item - b * nchunks) * rows_per_chunk
        hi = min(lo + rows_per_chunk, n_rows)
        p = b if per_plane else 0
        normalize_cols(x3[b, lo:hi], y3[b, lo:hi], mean_hi[p], mean_lo[p], scale[p], shift[p])


@kernel
def dx_planes(x3, dy3, dx3, mean_hi, mean_lo, a, b, c, rows_per_chunk, nchunks):
    """Channels-last dx over (B, R, C) arrays, plane b with coefficient row b (or row 0)."""
    n_planes, n_rows, _ = x3.shape
    per_plane = mean_hi.shape[0] > 1
    for item in prange(n_planes * nchunks):
        pl = item // nchunks
        lo = (item - pl * nchunks) * rows_per_chunk
        hi = min(lo + rows_per_chunk, n_rows)
        p = pl if per_plane else 0
        dx_cols(x3[pl, lo:hi], dy3[pl, lo:hi], dx3[pl, lo:hi], mean_hi[p], mean_lo[p], a[p], b[p], c[p])


@elementwise_helper
def dx_slice_affine(x, dy, dx, mean_hi, mean_lo, rstd, weight, b, c):
    """``dx = rstd * weight * dy + c * ((x - mean_hi) - mean_lo) + b`` with per-element weight."""
    for i in range(x.size):
        dx[i] = (rstd * weight[i]) * dy[i] + c * ((x[i] - mean_hi) - mean_lo) + b


@elementwise_helper
def accumulate_affine_grads(x, dy, mean, rstd, dweight, dbias):
    """Add ``dy * (x - mean) * rstd`` to ``dweight`` and ``dy`` to ``dbias`` (float64, per element)."""
    for i in range(x.size):
        g = np.float64(dy[i])
        dweight[i] += g * ((x[i] - mean) * rstd)
        dbias[i] += g
