"""Element-wise normalize and dx loops, compiled without ``reassoc``.

The mean is split into a hi/lo pair: for float32 data ``mean_hi`` is the float32
nearest the float64 mean and ``mean_lo = mean - mean_hi`` the part that rounding
lost. The output is formed as ``(x - mean_hi) * scale + shift'`` with
``shift' = shift - mean_lo * scale`` computed in float64 when the parameters are
packed: ``x - mean_hi`` is exact (Sterbenz) wherever the cancellation is severe and
the fused multiply-add rounds once, so the result carries the mean at about twice
float32 precision at no extra cost per element. It is never ``x * scale + shift''``,
which cancels for data far from zero. ``reassoc`` could reorder these expressions,
so the loops use ``config.FASTMATH_ELEMENTWISE``.

Backward has the same shape: ``dx = a * dy + c * (x - mean_hi) + b'`` with per-slice
coefficients from the gradient sums and ``b' = b - c * mean_lo``.
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
    "store_affine",
    "store_dx",
    "pack_affine",
    "pack_stats",
    "update_running",
    "pack_dx",
    "pack_channel_dx",
    "normalize_rows",
    "dx_rows",
    "normalize_planes",
    "dx_planes",
    "dx_slice_affine",
]


@elementwise_helper
def normalize_slice(x, y, mean_hi, scale, shift):
    """``y = (x - mean_hi) * scale + shift`` over a 1-D slice (``shift`` holds the lo part)."""
    for i in range(x.size):
        y[i] = (x[i] - mean_hi) * scale + shift


@elementwise_helper
def normalize_slice_affine(x, y, mean_hi, rstd, shift, weight, bias):
    """``y = ((x - mean_hi) * rstd + shift) * weight + bias`` with per-element weight/bias.

    ``shift = -mean_lo * rstd`` carries the lo part of the mean.
    """
    for i in range(x.size):
        y[i] = ((x[i] - mean_hi) * rstd + shift) * weight[i] + bias[i]


@elementwise_helper
def dx_slice(x, dy, dx, mean_hi, a, b, c):
    """``dx = a * dy + c * (x - mean_hi) + b`` over a 1-D slice (``b`` holds the lo part)."""
    for i in range(x.size):
        dx[i] = a * dy[i] + c * (x[i] - mean_hi) + b


@elementwise_helper
def normalize_cols(x2, y2, mean_hi, scale, shift):
    """Per-column ``y = (x - mean_hi) * scale + shift`` over a (rows, C) block."""
    for i in range(x2.shape[0]):
        xr = x2[i]
        yr = y2[i]
        for c in range(xr.size):
            yr[c] = (xr[c] - mean_hi[c]) * scale[c] + shift[c]


@elementwise_helper
def dx_cols(x2, dy2, dx2, mean_hi, a, b, c):
    """Per-column ``dx = a * dy + c * (x - mean_hi) + b`` over a (rows, C) block."""
    for i in range(x2.shape[0]):
        xr = x2[i]
        dyr = dy2[i]
        dxr = dx2[i]
        for j in range(xr.size):
            dxr[j] = a[j] * dyr[j] + c[j] * (xr[j] - mean_hi[j]) + b[j]


@elementwise_helper
def store_affine(q, p, j, mu, scale, shift):
    """``q[:, p, j] = (mean_hi, scale, shift - mean_lo * scale)``, rounded to q's dtype by the stores."""
    q[0, p, j] = mu
    q[1, p, j] = scale
    q[2, p, j] = shift - (mu - q[0, p, j]) * scale


@elementwise_helper
def pack_affine(mean, rstd, weight, bias, q):
    """Fill ``q`` (3, P, C) in x's dtype with (mean_hi, scale, shift').

    ``scale = rstd * weight`` and ``shift' = bias - (mean - mean_hi) * scale`` in float64;
    ``mean``/``rstd`` are float64 (P, C), ``weight``/``bias`` float64 (C,).
    """
    for p in range(mean.shape[0]):
        for c in range(mean.shape[1]):
            store_affine(q, p, c, mean[p, c], rstd[p, c] * weight[c], bias[c])


@elementwise_helper
def pack_stats(mean, m2, count, eps, weight, bias, q, var, rstd):
    """Statistics to packed params: ``var = m2 / count``, ``rstd = 1 / sqrt(var + eps)``.

    ``mean``/``m2`` (C,) of any float dtype (batch moments, or running mean and
    variance with ``count = 1``); ``weight``/``bias`` (C,) or empty for none.
    Fills float64 ``var``/``rstd`` (C,) and ``q`` (3, 1, C) as :func:`pack_affine` does.
    """
    for c in range(mean.size):
        mu = np.float64(mean[c])
        v = m2[c] / count
        r = 1.0 / np.sqrt(v + eps)
        var[c] = v
        rstd[c] = r
        store_affine(q, 0, c, mu, r * weight[c] if weight.size else r, bias[c] if bias.size else 0.0)


@elementwise_helper
def update_running(running_mean, running_var, mean, var, momentum, unbias):
    """``r = (1 - momentum) * r + momentum * s`` in float64, s averaged over the P rows of
    (P, C) ``mean``/``var``, the variance scaled by ``unbias``. The CUDA twin sums in the
    same order, so both give the same running statistics."""
    planes = mean.shape[0]
    for c in range(running_mean.size):
        s_mean = 0.0
        s_var = 0.0
        for p in range(planes):
            s_mean += mean[p, c]
            s_var += var[p, c]
        running_mean[c] = (1.0 - momentum) * np.float64(running_mean[c]) + momentum * (s_mean / planes)
        running_var[c] = (1.0 - momentum) * np.float64(running_var[c]) + momentum * (s_var / planes * unbias)


@elementwise_helper
def store_dx(q, p, j, mu, a, b, c):
    """``q[:, p, j] = (mean_hi, a, b - c * mean_lo, c)``, rounded to q's dtype by the stores."""
    q[0, p, j] = mu
    q[1, p, j] = a
    q[2, p, j] = b - c * (mu - q[0, p, j])
    q[3, p, j] = c


@elementwise_helper
def pack_dx(mean, a, b, c, q):
    """Fill ``q`` (4, P, C) in x's dtype with (mean_hi, a, b - c * mean_lo, c) from float64 (P, C)."""
    for p in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            store_dx(q, p, j, mean[p, j], a[p, j], b[p, j], c[p, j])


@elementwise_helper
def pack_channel_dx(mean, invstd, weight, s_dy, s_dyx, count, stats_grad, q, s_dyxhat):
    """Per-channel dx coefficients of BatchNorm from its gradient sums, packed into ``q`` (4, 1, C).

    With ``a = invstd * weight`` and ``m = count`` values per channel:
    ``b = -a * sum(dy) / m`` and ``c = -a * invstd * sum(dy * xhat) / m`` when the
    statistics came from the batch (``stats_grad``), else 0, so that
    ``dx = a * dy + c * (x - mean) + b``. ``weight`` is (C,) or empty for none;
    also fills ``s_dyxhat = invstd * sum(dy * (x - mean))`` (float64 (C,), dweight).
    """
    for j in range(mean.size):
        r = invstd[j]
        a = r * weight[j] if weight.size else r
        s_dyxhat[j] = s_dyx[j] * r
        b = -a * s_dy[j] / count if stats_grad else 0.0
        c = -a * r * s_dyxhat[j] / count if stats_grad else 0.0
        store_dx(q, 0, j, np.float64(mean[j]), a, b, c)


@kernel
def normalize_rows(x3, y3, q):
    """Channels-first pass: each (n, c) row of a (N, C, S) array, params ``q`` (3, P, C), P in {1, N}."""
    n_samples, n_channels, _ = x3.shape
    per_sample = q.shape[1] > 1
    for r in prange(n_samples * n_channels):
        n = r // n_channels
        c = r - n * n_channels
        p = n if per_sample else 0
        normalize_slice(x3[n, c], y3[n, c], q[0, p, c], q[1, p, c], q[2, p, c])


@kernel
def dx_rows(x3, dy3, dx3, q):
    """Channels-first dx: each (n, c) row of (N, C, S) arrays, coefficients ``q`` (4, P, C)."""
    n_samples, n_channels, _ = x3.shape
    per_sample = q.shape[1] > 1
    for r in prange(n_samples * n_channels):
        n = r // n_channels
        c = r - n * n_channels
        p = n if per_sample else 0
        dx_slice(x3[n, c], dy3[n, c], dx3[n, c], q[0, p, c], q[1, p, c], q[2, p, c], q[3, p, c])


@kernel
def normalize_planes(x3, y3, q, rows_per_chunk, nchunks):
    """Channels-last pass over (B, R, C) arrays, plane b with params ``q[:, b]`` (or ``q[:, 0]``)."""
    n_planes, n_rows, _ = x3.shape
    per_plane = q.shape[1] > 1
    for item in prange(n_planes * nchunks):
        b = item // nchunks
        lo = (item - b * nchunks) * rows_per_chunk
        hi = min(lo + rows_per_chunk, n_rows)
        p = b if per_plane else 0
        normalize_cols(x3[b, lo:hi], y3[b, lo:hi], q[0, p], q[1, p], q[2, p])


@kernel
def dx_planes(x3, dy3, dx3, q, rows_per_chunk, nchunks):
    """Channels-last dx over (B, R, C) arrays, plane b with coefficients ``q[:, b]`` (or ``q[:, 0]``)."""
    n_planes, n_rows, _ = x3.shape
    per_plane = q.shape[1] > 1
    for item in prange(n_planes * nchunks):
        b = item // nchunks
        lo = (item - b * nchunks) * rows_per_chunk
        hi = min(lo + rows_per_chunk, n_rows)
        p = b if per_plane else 0
        dx_cols(x3[b, lo:hi], dy3[b, lo:hi], dx3[b, lo:hi], q[0, p], q[1, p], q[2, p], q[3, p])


@elementwise_helper
def dx_slice_affine(x, dy, dx, mean_hi, rstd, weight, b, c):
    """``dx = rstd * weight * dy + c * (x - mean_hi) + b`` with per-element weight (``b`` holds the lo part)."""
    for i in range(x.size):
        dx[i] = (rstd * weight[i]) * dy[i] + c * (x[i] - mean_hi) + b
