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

from ... import config
from ._jit import kernel
from .elementwise import accumulate_affine_grads, dx_slice_affine, normalize_slice_affine
from .moments import slice_mean_square, slice_moments
from .sums import slice_weighted_grad_sums

__all__ = ["rows_forward", "rows_backward", "forward", "backward"]


@kernel
def rows_forward(x2, y2, weight, bias, eps, block, center, mean, rstd, cast):
    """Normalize each row; store its float64 mean and rstd. ``cast`` (R, 3) is x-dtype scratch."""
    n_rows, width = x2.shape
    for r in prange(n_rows):
        xr = x2[r]
        if center:
            _, mu, m2 = slice_moments(xr, block)
            var = m2 / width
        else:
            mu = 0.0
            var = slice_mean_square(xr)
        inv = 1.0 / np.sqrt(var + eps)
        mean[r] = mu
        rstd[r] = inv
        # Rounded to x's dtype through stores: hi, lo = remainder, rstd.
        cast[r, 0] = mu
        cast[r, 1] = mu - cast[r, 0]
        cast[r, 2] = inv
        normalize_slice_affine(xr, y2[r], cast[r, 0], cast[r, 1], cast[r, 2], weight, bias)


@kernel
def rows_backward(x2, dy2, dx2, weight, mean, rstd, center, rows_per_chunk, dweight, dbias, cast):
    """dx of each row, and per-chunk partial dweight/dbias rows (K, D) in float64."""
    n_rows, width = x2.shape
    nchunks = dweight.shape[0]
    for k in prange(nchunks):
        dweight[k] = 0.0
        dbias[k] = 0.0
        for r in range(k * rows_per_chunk, min((k + 1) * rows_per_chunk, n_rows)):
            xr = x2[r]
            dyr = dy2[r]
            mu = mean[r]
            inv = rstd[r]
            s_g, s_gx = slice_weighted_grad_sums(xr, dyr, weight, mu)
            b = -inv * s_g / width if center else 0.0
            cast[k, 0] = mu
            cast[k, 1] = mu - cast[k, 0]
            cast[k, 2] = inv
            cast[k, 3] = b
            cast[k, 4] = -inv * inv * inv * s_gx / width
            dx_slice_affine(xr, dyr, dx2[r], cast[k, 0], cast[k, 1], cast[k, 2], weight, cast[k, 3], cast[k, 4])
            accumulate_affine_grads(xr, dyr, mu, inv, dweight[k], dbias[k])


def forward(x2, y2, weight, bias, eps, center):
    """Fill ``y2`` and return float64 (mean, rstd) per row; weight/bias are (D,) in x's dtype."""
    n_rows = x2.shape[0]
    mean = np.empty(n_rows)
    rstd = np.empty(n_rows)
    cast = np.empty((n_rows, 3), x2.dtype)
    rows_forward(x2.size, x2, y2, weight, bias, eps, config.BLOCK_ELEMENTS, center, mean, rstd, cast)
    return mean, rstd


def backward(x2, dy2, dx2, weight, mean, rstd, center):
    """Fill ``dx2`` and return float64 (dweight, dbias) summed over rows."""
    n_rows, width = x2.shape
    if n_rows == 0:
        return np.zeros(width), np.zeros(width)
    items = numba.get_num_threads() if x2.size >= config.PARALLEL_MIN_ELEMENTS else 1
    rows_per_chunk = -(-n_rows // max(1, min(items, n_rows)))
    nchunks = -(-n_rows // rows_per_chunk)
    dweight = np.empty((nchunks, width))
    dbias = np.empty((nchunks, width))
    cast = np.empty((nchunks, 5), x2.dtype)
    rows_backward(x2.size, x2, dy2, dx2, weight, mean, rstd, center, rows_per_chunk, dweight, dbias, cast)
    return dweight.sum(axis=0), dbias.sum(axis=0)
