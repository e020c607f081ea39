"""LayerNorm and RMSNorm on CUDA: statistics per row of a C-contiguous (R, D) array.

The twin of :mod:`numbanorm.kernels.cpu.layernorm`. A row's statistics are the
per-sample "channel" statistics of the (R, 1, D) view, from the shared moments
primitive (RMSNorm: its mean-square mode, ``center=False``); one element-wise pass then
normalizes with the row's mean as an x-dtype hi/lo pair and per-element weight and bias.
Backward: one block per row for dx (the bracket in float64), and per-column
dweight/dbias from float64 partial sums over chunks of rows, summed by a second kernel.

The skip form: the statistics kernel writes ``s = x + residual`` in the read that takes its
moments (:func:`numbanorm.kernels.cuda.moments.partial_moments_add`), the normalize pass
reads s; backward adds ``dsum`` in the dx loop (``_rows_backward_sum``).
"""

import numpy as np
from numba import cuda

from ... import config
from ._jit import THREADS, device, elementwise_blocks, kernel
from .channels import _forward_coefs, sum_partials
from .moments import block_sum2, channel_stats
from .params import param

__all__ = ["forward", "backward"]


@kernel
def _normalize_rows(x2, y2, hi, lo, rs, weight, bias):
    """``y = (((x - hi) - lo) * rstd) * weight + bias`` with (R, 1) row coefficients."""
    width = x2.shape[1]
    for i in range(cuda.grid(1), x2.size, cuda.gridsize(1)):
        r = i // width
        j = i - r * width
        y2[r, j] = (((x2[r, j] - hi[r, 0]) - lo[r, 0]) * rs[r, 0]) * weight[j] + bias[j]


@device
def _row_dx(x2, dy2, dsum2, add, dx2, weight, mean, rstd, center, sh_a, sh_b):
    """The body of :func:`_rows_backward` (``add`` False: ``dsum2`` is not read) and of
    :func:`_rows_backward_sum` (``dsum2`` added to dx, in float64, rounded once)."""
    r = cuda.blockIdx.x
    t = cuda.threadIdx.x
    width = x2.shape[1]
    mu = mean[r]
    inv = rstd[r]
    s_g = 0.0
    s_gx = 0.0
    for j in range(t, width, cuda.blockDim.x):
        g = np.float64(dy2[r, j]) * weight[j]
        s_g += g
        s_gx += g * (x2[r, j] - mu)
    s_g, s_gx = block_sum2(s_g, s_gx, sh_a, sh_b)
    b = s_g / width if center else 0.0
    c = inv * inv * s_gx / width
    for j in range(t, width, cuda.blockDim.x):
        bracket = (np.float64(weight[j]) * np.float64(dy2[r, j]) - b) - (np.float64(x2[r, j]) - mu) * c
        if add:
            dx2[r, j] = inv * bracket + np.float64(dsum2[r, j])
        else:
            dx2[r, j] = inv * bracket


@kernel
def _rows_backward(x2, dy2, dx2, weight, mean, rstd, center):
    """dx of row ``blockIdx.x``: ``rstd * ((w * dy - mean(g)) - (x - mean) * rstd**2 * mean(g * (x - mean)))``."""
    sh_a = cuda.shared.array(THREADS, np.float64)
    sh_b = cuda.shared.array(THREADS, np.float64)
    _row_dx(x2, dy2, dy2, False, dx2, weight, mean, rstd, center, sh_a, sh_b)


@kernel
def _rows_backward_sum(x2, dy2, dsum2, dx2, weight, mean, rstd, center):
    """:func:`_rows_backward` plus ``dsum2``: the gradient reaching the normalized input by another
    path (LayerNorm's skip form), added in the same loop."""
    sh_a = cuda.shared.array(THREADS, np.float64)
    sh_b = cuda.shared.array(THREADS, np.float64)
    _row_dx(x2, dy2, dsum2, True, dx2, weight, mean, rstd, center, sh_a, sh_b)


@kernel
def _column_partials(x2, dy2, mean, rstd, rows_per_chunk, pdw, pdb):
    """Grid (column blocks, K): float64 partial ``sum dy * (x - mean) * rstd`` and ``sum dy``
    of column j over the k-th chunk of rows into ``pdw[j, k]``, ``pdb[j, k]``."""
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    k = cuda.blockIdx.y
    n_rows, width = x2.shape
    if j < width:
        dw = 0.0
        db = 0.0
        for r in range(k * rows_per_chunk, min((k + 1) * rows_per_chunk, n_rows)):
            g = np.float64(dy2[r, j])
            dw += g * ((x2[r, j] - mean[r]) * rstd[r])
            db += g
        pdw[j, k] = dw
        pdb[j, k] = db


def forward(x2, y2, weight, bias, eps, center, r2=None, s2=None):
    """Fill ``y2`` and return float64 (mean, rstd) per row as device arrays; weight/bias (D,) or None.

    Without ``center`` (RMSNorm) the mean is 0 and the mean square replaces the variance.
    With ``r2`` (rows like x2) the rows of ``s2 = x2 + r2`` are written and normalized.
    """
    n_rows, width = x2.shape
    if n_rows == 0 or width == 0:
        return cuda.device_array(n_rows, np.float64), cuda.device_array(n_rows, np.float64)
    dtype = x2.dtype
    if r2 is None:
        _, mean, _, rstd = channel_stats(x2.reshape(n_rows, 1, width), True, eps, center)
    else:
        _, mean, _, rstd = channel_stats(x2.reshape(n_rows, 1, width), True, eps, center,
                                         r2.reshape(n_rows, 1, width), s2.reshape(n_rows, 1, width))
        x2 = s2
    hi, lo, scale, shift = (cuda.device_array((n_rows, 1), dtype) for _ in range(4))
    one = param(None, 1, 1.0, dtype)
    _forward_coefs[elementwise_blocks(n_rows), THREADS](mean, rstd, 1, one, param(None, 1, 0.0, dtype),
                                                        hi, lo, scale, shift)
    _normalize_rows[elementwise_blocks(x2.size), THREADS](x2, y2, hi, lo, scale, param(weight, width, 1.0, dtype),
                                                          param(bias, width, 0.0, dtype))
    return mean.reshape(n_rows), rstd.reshape(n_rows)


def backward(x2, dy2, dx2, mean, rstd, weight, center, dsum2=None):
    """Fill ``dx2`` (plus ``dsum2``, rows like x2, when given) and return float64 (dweight, dbias)
    summed over rows, (D,) device arrays."""
    n_rows, width = x2.shape
    if n_rows == 0:
        return param(None, width, 0.0), param(None, width, 0.0)
    dweight = cuda.device_array(width, np.float64)
    dbias = cuda.device_array(width, np.float64)
    w = param(weight, width, 1.0, x2.dtype)
    if dsum2 is None:
        _rows_backward[n_rows, THREADS](x2, dy2, dx2, w, mean, rstd, bool(center))
    else:
        _rows_backward_sum[n_rows, THREADS](x2, dy2, dsum2, dx2, w, mean, rstd, bool(center))
    chunks = max(1, min(n_rows, config.CUDA_MAX_PARTIALS))
    rows_per_chunk = -(-n_rows // chunks)
    chunks = -(-n_rows // rows_per_chunk)
    pdw = cuda.device_array((width, chunks), np.float64)
    pdb = cuda.device_array((width, chunks), np.float64)
    _column_partials[(-(-width // THREADS), chunks), THREADS](x2, dy2, mean, rstd, rows_per_chunk, pdw, pdb)
    sum_partials[elementwise_blocks(width), THREADS](pdw, pdb, dweight, dbias)
    return dweight, dbias
