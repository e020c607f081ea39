"""LayerNorm and RMSNorm on CUDA: statistics per row of a C-contiguous (R, D) array.

The twin of :mod:`numbanorm.kernels.cpu.layernorm`. One block per row: its threads
stride over the row (Welford), Chan-merge in shared memory, and normalize the row
while it is in cache. RMSNorm is the same pass without the mean (``center=False``):
the row's mean square replaces its variance (Zhang & Sennrich, 2019).
Backward: one block per row for dx, and per-column dweight/dbias from float64
partial sums over chunks of rows, summed by a second kernel.
"""

import math

import numpy as np
from numba import cuda

from ... import config
from ._jit import THREADS, elementwise_blocks, kernel
from .channels import sum_partials
from .moments import block_merge, block_sum2, welford_add

__all__ = ["forward", "backward"]


@kernel
def _rows_forward(x2, y2, weight, bias, eps, center, mean, rstd):
    """Normalize row ``blockIdx.x``; store its float64 mean and rstd."""
    sh_n = cuda.shared.array(THREADS, np.float64)
    sh_mean = cuda.shared.array(THREADS, np.float64)
    sh_m2 = cuda.shared.array(THREADS, np.float64)
    cast = cuda.shared.array(3, x2.dtype)  # hi, lo, rstd rounded to x's dtype
    r = cuda.blockIdx.x
    t = cuda.threadIdx.x
    width = x2.shape[1]
    n = 0.0
    mu = 0.0
    m2 = 0.0
    for j in range(t, width, cuda.blockDim.x):
        v = np.float64(x2[r, j])
        if not center:
            v = v * v
        n, mu, m2 = welford_add(n, mu, m2, v)
    n, mu, m2 = block_merge(n, mu, m2, sh_n, sh_mean, sh_m2)
    if center:
        var = m2 / width
    else:
        var = mu
        mu = 0.0
    inv = 1.0 / math.sqrt(var + eps)
    if t == 0:
        mean[r] = mu
        rstd[r] = inv
        cast[0] = mu
        cast[1] = mu - cast[0]
        cast[2] = inv
    cuda.syncthreads()
    hi = cast[0]
    lo = cast[1]
    rs = cast[2]
    for j in range(t, width, cuda.blockDim.x):
        y2[r, j] = (((x2[r, j] - hi) - lo) * rs) * weight[j] + bias[j]


@kernel
def _rows_backward(x2, dy2, dx2, weight, mean, rstd, center):
    """dx of row ``blockIdx.x``: ``rstd * w * dy + c * ((x - hi) - lo) + b``."""
    sh_a = cuda.shared.array(THREADS, np.float64)
    sh_b = cuda.shared.array(THREADS, np.float64)
    cast = cuda.shared.array(5, x2.dtype)  # hi, lo, rstd, b, c rounded to x's dtype
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
    if t == 0:
        cast[0] = mu
        cast[1] = mu - cast[0]
        cast[2] = inv
        cast[3] = -inv * s_g / width if center else 0.0
        cast[4] = -inv * inv * inv * s_gx / width
    cuda.syncthreads()
    for j in range(t, width, cuda.blockDim.x):
        dx2[r, j] = (cast[2] * weight[j]) * dy2[r, j] + cast[4] * ((x2[r, j] - cast[0]) - cast[1]) + cast[3]


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


def forward(x2, y2, weight, bias, eps, center):
    """Fill ``y2`` and return float64 (mean, rstd) per row as device arrays;
    weight/bias are (D,) device arrays in x's dtype."""
    n_rows = x2.shape[0]
    mean = cuda.device_array(n_rows, np.float64)
    rstd = cuda.device_array(n_rows, np.float64)
    if n_rows:
        _rows_forward[n_rows, THREADS](x2, y2, weight, bias, float(eps), bool(center), mean, rstd)
    return mean, rstd


def backward(x2, dy2, dx2, weight, mean, rstd, center):
    """Fill ``dx2`` and return (dweight, dbias) summed over rows, (D,) device arrays in x's dtype."""
    n_rows, width = x2.shape
    dweight = cuda.device_array(width, x2.dtype)
    dbias = cuda.device_array(width, x2.dtype)
    if n_rows == 0:
        dweight.copy_to_device(np.zeros(width, x2.dtype))
        dbias.copy_to_device(np.zeros(width, x2.dtype))
        return dweight, dbias
    _rows_backward[n_rows, THREADS](x2, dy2, dx2, weight, mean, rstd, bool(center))
    chunks = max(1, min(n_rows, config.CUDA_MAX_PARTIALS))
    rows_per_chunk = -(-n_rows // chunks)
    chunks = -(-n_rows // rows_per_chunk)
    pdw = cuda.device_array((width, chunks), np.float64)
    pdb = cuda.device_array((width, chunks), np.float64)
    _column_partials[(-(-width // THREADS), chunks), THREADS](x2, dy2, mean, rstd, rows_per_chunk, pdw, pdb)
    sum_partials[elementwise_blocks(width), THREADS](pdw, pdb, dweight, dbias)
    return dweight, dbias
