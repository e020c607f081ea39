"""LayerNorm and RMSNorm: statistics per row of a C-contiguous (R, D) array.

A row stays in cache between its statistics and its output, so forward reads x
once; backward reads x and dy once per row and reduces dweight/dbias into
per-chunk float64 partial rows (one per work item, no races) summed at the end.
RMSNorm is the same pass without the mean (``center=False``): the row's mean
square replaces its variance (Zhang & Sennrich, 2019).

The skip form (ONNX Runtime's SkipLayerNormalization, Liger's FusedAddRMSNorm) normalizes
``s = x + residual``: each row of s is written and its moments taken in one read of x and
the residual, then normalized from cache. Its backward adds the gradient that reaches s by
the residual stream (``dsum``) in the dx loop.
"""

import numba
import numpy as np
from numba import prange

from ... import _memory, config
from ._jit import cast_like, dx_helper, kernel
from .elementwise import dx_slice_affine, dx_slice_affine_sum, normalize_slice_affine, normalize_slice_scaled
from .moments import add_slice_moments, slice_moments
from .params import param
from .prefetch import prefetch_lines, prefetch_slice
from .subarrays import sub
from .sums import pair_weighted_grad_sums, slice_weighted_grad_sums

__all__ = ["rows_forward", "rows_backward", "forward", "backward"]


@kernel(threshold="ROWS_PARALLEL_MIN_ELEMENTS")
def rows_forward(x2, y2, weight, bias, eps, block, max_ratio, center, stats, r2, s2, prefetch):
    """Normalize each row; store its float64 mean and rstd in ``stats`` (2, R).

    With ``r2`` (not None) the rows normalized are those of ``s2 = x2 + r2``, written in the
    statistics' read. ``prefetch``: the cache-line size, to prefetch the next row's lines
    when a row starts (0: no prefetch). ``bias`` None (without ``center`` only): RMSNorm's
    ``y = x * rstd * weight``, with no mean, shift or bias to apply.
    """
    n_rows, width = x2.shape
    for r in prange(n_rows):
        if prefetch and r + 1 < n_rows:
            prefetch_slice(sub(x2, r + 1), prefetch)
            if r2 is not None:
                prefetch_slice(sub(r2, r + 1), prefetch)
        xr = sub(x2, r)
        if r2 is None:
            _, mu, m2 = slice_moments(xr, block, max_ratio, center)
        else:
            _, mu, m2 = add_slice_moments(xr, sub(r2, r), sub(s2, r), block, max_ratio, center)
        inv = 1.0 / np.sqrt(m2 / width + eps)
        stats[0, r] = mu
        stats[1, r] = inv
        hi = cast_like(mu, xr)
        inv_x = cast_like(inv, xr)
        shift_x = cast_like(-(mu - hi) * inv, xr)
        src = xr if r2 is None else sub(s2, r)
        if bias is None:
            normalize_slice_scaled(src, sub(y2, r), inv_x, weight)
        else:
            normalize_slice_affine(src, sub(y2, r), hi, inv_x, shift_x, weight, bias)


@dx_helper
def _row_dx(x2, dy2, dx2, dsum2, r, weight, mu, inv, s_g, s_gx, center):
    """dx of row ``r`` from its weighted gradient sums (plus ``dsum2``'s row when not None)."""
    width = x2.shape[1]
    b = s_g / width if center else 0.0
    c = inv * inv * s_gx / width
    if dsum2 is None:
        dx_slice_affine(sub(x2, r), sub(dy2, r), sub(dx2, r), mu, weight, b, c, inv)
    else:
        dx_slice_affine_sum(sub(x2, r), sub(dy2, r), sub(dsum2, r), sub(dx2, r), mu, weight, b, c, inv)


@kernel  # its per-chunk dweight/dbias rows are summed afterwards: a merge, as in a channel pass
def rows_backward(x2, dy2, dx2, weight, mean, rstd, center, rows_per_chunk, dweight, dbias, dsum2):
    """dx of each row, and per-chunk partial dweight/dbias rows (K, D) in float64; with
    ``dsum2`` (not None) added to dx in the same loop. The gradient sums take two rows per
    sweep (:func:`pair_weighted_grad_sums`), then dx of each while both are in cache."""
    n_rows, width = x2.shape
    nchunks = dweight.shape[0]
    for k in prange(nchunks):
        dweight[k] = 0.0
        dbias[k] = 0.0
        start = k * rows_per_chunk
        stop = min(start + rows_per_chunk, n_rows)
        for r in range(start, stop - 1, 2):
            s_g0, s_gx0, s_g1, s_gx1 = pair_weighted_grad_sums(
                sub(x2, r), sub(dy2, r), sub(x2, r + 1), sub(dy2, r + 1), weight, mean[r], mean[r + 1], rstd[r],
                rstd[r + 1], sub(dweight, k), sub(dbias, k))
            _row_dx(x2, dy2, dx2, dsum2, r, weight, mean[r], rstd[r], s_g0, s_gx0, center)
            _row_dx(x2, dy2, dx2, dsum2, r + 1, weight, mean[r + 1], rstd[r + 1], s_g1, s_gx1, center)
        if (stop - start) % 2:
            r = stop - 1
            s_g, s_gx = slice_weighted_grad_sums(sub(x2, r), sub(dy2, r), weight, mean[r], rstd[r], sub(dweight, k),
                                                 sub(dbias, k))
            _row_dx(x2, dy2, dx2, dsum2, r, weight, mean[r], rstd[r], s_g, s_gx, center)


def forward(x2, y2, weight, bias, eps, center, r2=None, s2=None):
    """Fill ``y2`` and return float64 (mean, rstd) per row; weight/bias are (D,) or None.

    Without ``center`` (RMSNorm) the mean is 0 and the mean square replaces the variance.
    With ``r2`` (rows like x2) the rows of ``s2 = x2 + r2`` are written and normalized.
    """
    width = x2.shape[1]
    w = param(weight, width, 1.0, x2.dtype, x2.size)
    b = None if bias is None and not center else param(bias, width, 0.0, x2.dtype, x2.size)
    stats = np.empty((2, x2.shape[0]))
    rows_forward(x2.size, x2, y2, w, b, eps, config.BLOCK_ELEMENTS, config.SHIFT_RATIO_MAX, bool(center), stats, r2,
                 s2, prefetch_lines(x2.nbytes))
    return stats[0], stats[1]


def backward(x2, dy2, dx2, mean, rstd, weight, center, dsum2=None):
    """Fill ``dx2`` (plus ``dsum2``, rows like x2, when given) and return float64 (dweight, dbias)
    summed over rows."""
    n_rows, width = x2.shape
    if n_rows == 0:
        return np.zeros(width), np.zeros(width)
    w = param(weight, width, 1.0, np.float64, x2.size)  # float64: the dx bracket runs in float64
    items = numba.get_num_threads() if rows_backward.runs_parallel(x2.size) else 1
    rows_per_chunk = -(-n_rows // max(1, min(items, n_rows)))
    nchunks = -(-n_rows // rows_per_chunk)
    dweight = _memory.empty((nchunks, width), work=x2.size)
    dbias = _memory.empty((nchunks, width), work=x2.size)
    rows_backward(x2.size, x2, dy2, dx2, w, np.ascontiguousarray(mean), np.ascontiguousarray(rstd), bool(center),
                  rows_per_chunk, dweight, dbias, dsum2)
    if nchunks == 1:
        return dweight[0], dbias[0]
    return dweight.sum(axis=0), dbias.sum(axis=0)
