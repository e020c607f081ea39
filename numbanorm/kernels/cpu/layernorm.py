"""LayerNorm and RMSNorm: statistics per row of a C-contiguous (R, D) array.

A row stays in cache between its statistics and its output, so forward reads x
once; backward reads x and dy once per row and reduces dweight/dbias into
per-chunk float64 partial rows (one per work item, no races) summed at the end.
RMSNorm is the same pass without the mean (``center=False``): the row's mean
square replaces its variance (Zhang & Sennrich, 2019).
"""

import numba
import numpy as np
from numba import prange

from ... import _memory, config
from ._jit import cast_like, kernel
from .elementwise import dx_slice_affine, normalize_slice_affine
from .moments import slice_moments
from .params import param
from .sums import slice_weighted_grad_sums

__all__ = ["rows_forward", "rows_backward", "forward", "backward"]


@kernel
def rows_forward(x2, y2, weight, bias, eps, block, max_ratio, center, stats):
    """Normalize each row; store its float64 mean and rstd in ``stats`` (2, R)."""
    n_rows, width = x2.shape
    for r in prange(n_rows):
        xr = x2[r]
        _, mu, m2 = slice_moments(xr, block, max_ratio, center)
        inv = 1.0 / np.sqrt(m2 / width + eps)
        stats[0, r] = mu
        stats[1, r] = inv
        hi = cast_like(mu, xr)
        normalize_slice_affine(xr, y2[r], hi, cast_like(inv, xr), cast_like(-(mu - hi) * inv, xr), weight, bias)


@kernel
def rows_backward(x2, dy2, dx2, weight, mean, rstd, center, rows_per_chunk, dweight, dbias):
    """dx of each row, and per-chunk partial dweight/dbias rows (K, D) in float64."""
    n_rows, width = x2.shape
    nchunks = dweight.shape[0]
    for k in prange(nchunks):
        dweight[k] = 0.0
        dbias[k] = 0.0
        start = k * rows_per_chunk
        stop = min(start + rows_per_chunk, n_rows)
        for r in range(start, stop):
            xr = x2[r]
            dyr = dy2[r]
            mu = mean[r]
            inv = rstd[r]
            s_g, s_gx = slice_weighted_grad_sums(xr, dyr, weight, mu, inv, dweight[k], dbias[k])
            b = s_g / width if center else 0.0
            dx_slice_affine(xr, dyr, dx2[r], mu, weight, b, inv * inv * s_gx / width, inv)


def forward(x2, y2, weight, bias, eps, center):
    """Fill ``y2`` and return float64 (mean, rstd) per row; weight/bias are (D,) or None.

    Without ``center`` (RMSNorm) the mean is 0 and the mean square replaces the variance.
    """
    width = x2.shape[1]
    w = param(weight, width, 1.0, x2.dtype, x2.size)
    b = param(bias, width, 0.0, x2.dtype, x2.size)
    stats = np.empty((2, x2.shape[0]))
    rows_forward(x2.size, x2, y2, w, b, eps, config.BLOCK_ELEMENTS, config.SHIFT_RATIO_MAX, bool(center), stats)
    return stats[0], stats[1]


def backward(x2, dy2, dx2, mean, rstd, weight, center):
    """Fill ``dx2`` and return float64 (dweight, dbias) summed over rows."""
    n_rows, width = x2.shape
    if n_rows == 0:
        return np.zeros(width), np.zeros(width)
    w = param(weight, width, 1.0, np.float64, x2.size)  # float64: the dx bracket runs in float64
    items = numba.get_num_threads() if x2.size >= config.PARALLEL_MIN_ELEMENTS else 1
    rows_per_chunk = -(-n_rows // max(1, min(items, n_rows)))
    nchunks = -(-n_rows // rows_per_chunk)
    dweight = _memory.empty((nchunks, width), work=x2.size)
    dbias = _memory.empty((nchunks, width), work=x2.size)
    rows_backward(x2.size, x2, dy2, dx2, w, np.ascontiguousarray(mean), np.ascontiguousarray(rstd), bool(center),
                  rows_per_chunk, dweight, dbias)
    if nchunks == 1:
        return dweight[0], dbias[0]
    return dweight.sum(axis=0), dbias.sum(axis=0)
