"""Passes shared by the channel-wise families (BatchNorm, InstanceNorm, GroupNorm) on CUDA.

Input is a C-contiguous (N, C, S) device array. Statistics come as float64 (P, G)
device arrays — P = 1 (per channel, BatchNorm) or P = N (per sample), G groups of
``group`` channels (G = C, ``group`` = 1 except for GroupNorm) — and become per-(p, c)
coefficients in x's dtype, the mean as a hi/lo pair, for one element-wise pass:

``y = ((x - hi) - lo) * scale + shift`` and ``dx = a * dy + c * ((x - hi) - lo) + b``,

the forms of :mod:`numbanorm.kernels.cpu.elementwise`. Gradient sums (``sum dy`` and
``sum dy * (x - mean)`` per (p, c)) are float64 block partials, summed by a second kernel.
"""

import math

import numpy as np
from numba import cuda

from ._jit import THREADS, device, elementwise_blocks, kernel, partials
from .moments import block_sum2, channel_chunk

__all__ = ["stats_from_running", "update_running", "normalize", "backward", "ones", "zeros"]


@kernel
def _stats_from_running(running_mean, running_var, eps, mean, rstd):
    """``mean[p, c] = running_mean[c]``, ``rstd[p, c] = 1 / sqrt(running_var[c] + eps)``."""
    planes, channels = mean.shape
    for i in range(cuda.grid(1), planes * channels, cuda.gridsize(1)):
        p = i // channels
        c = i - p * channels
        mean[p, c] = running_mean[c]
        rstd[p, c] = 1.0 / math.sqrt(np.float64(running_var[c]) + eps)


@kernel
def _update_running(mean, var, count, momentum, running_mean, running_var):
    """``r = (1 - momentum) * r + momentum * s`` per channel, s averaged over the P rows,
    with the unbiased variance ``var * count / (count - 1)``."""
    for c in range(cuda.grid(1), running_mean.shape[0], cuda.gridsize(1)):
        planes = mean.shape[0]
        s_mean = 0.0
        s_var = 0.0
        for p in range(planes):
            s_mean += mean[p, c]
            s_var += var[p, c]
        unbiased = count / (count - 1.0)
        # float64 on the device and in the simulator alike (NumPy scalars would stay float32)
        running_mean[c] = (1.0 - momentum) * np.float64(running_mean[c]) + momentum * (s_mean / planes)
        running_var[c] = (1.0 - momentum) * np.float64(running_var[c]) + momentum * (s_var / planes * unbiased)


@kernel
def _forward_coefs(mean, rstd, group, weight, bias, hi, lo, scale, shift):
    """Per (p, c): the mean as an x-dtype hi/lo pair, ``scale = rstd * weight``, ``shift = bias``."""
    planes, channels = hi.shape
    for i in range(cuda.grid(1), planes * channels, cuda.gridsize(1)):
        p = i // channels
        c = i - p * channels
        g = c // group
        mu = mean[p, g]
        hi[p, c] = mu
        lo[p, c] = mu - hi[p, c]  # the float64 remainder, rounded to x's dtype by the store
        scale[p, c] = rstd[p, g] * weight[c]
        shift[p, c] = bias[c]


@device
def element_at(x3, i, per_sample):
    """``(n, c, s, p)`` of flat index ``i`` of a C-contiguous (N, C, S) array; ``p`` is the
    row of (P, C) coefficients: ``n`` when ``per_sample``, else 0."""
    length = x3.shape[2]
    channels = x3.shape[1]
    r = i // length
    s = i - r * length
    n = r // channels
    return n, r - n * channels, s, n if per_sample else 0


@kernel
def _normalize(x3, y3, hi, lo, scale, shift):
    """``y = ((x - hi) - lo) * scale + shift`` with (P, C) coefficients, P in {1, N}."""
    per_sample = hi.shape[0] > 1
    for i in range(cuda.grid(1), x3.size, cuda.gridsize(1)):
        n, c, s, p = element_at(x3, i, per_sample)
        y3[n, c, s] = ((x3[n, c, s] - hi[p, c]) - lo[p, c]) * scale[p, c] + shift[p, c]


@kernel
def _partial_grad_sums(x3, dy3, mean, group, per_sample, chunk, ps_dy, ps_dyx):
    """Partial ``sum(dy)`` and ``sum(dy * (x - mean))`` (float64) per (p, c), grid (P * C, K).

    Block (q, k) takes the k-th ``chunk`` of channel ``c = q % C``'s values, over all
    samples (P = 1) or the positions of sample ``p = q // C``; ``mean`` is (P, G).
    """
    sh_a = cuda.shared.array(THREADS, np.float64)
    sh_b = cuda.shared.array(THREADS, np.float64)
    q, k, p, c, lo, hi = channel_chunk(x3, per_sample, chunk)
    length = x3.shape[2]
    mu = mean[p, c // group]
    s_dy = 0.0
    s_dyx = 0.0
    for j in range(lo + cuda.threadIdx.x, hi, cuda.blockDim.x):
        r = j // length
        s = j - r * length
        g = np.float64(dy3[p + r, c, s])
        s_dy += g
        s_dyx += g * (x3[p + r, c, s] - mu)
    s_dy, s_dyx = block_sum2(s_dy, s_dyx, sh_a, sh_b)
    if cuda.threadIdx.x == 0:
        ps_dy[q, k] = s_dy
        ps_dyx[q, k] = s_dyx


@kernel
def sum_partials(ps_dy, ps_dyx, s_dy, s_dyx):
    """Sum the K partials of each row of two (Q, K) arrays into (Q,) ones (stored in their dtype)."""
    for q in range(cuda.grid(1), ps_dy.shape[0], cuda.gridsize(1)):
        a = 0.0
        b = 0.0
        for k in range(ps_dy.shape[1]):
            a += ps_dy[q, k]
            b += ps_dyx[q, k]
        s_dy[q] = a
        s_dyx[q] = b


@kernel
def _backward_coefs(s_dy, s_dyx, mean, rstd, group, weight, count, stats_grad, hi, lo, a, b, c3):
    """dx coefficients per (p, c) for a group of m = ``count`` values with g = dy * weight:

    ``dx = r * w * dy + (-r**3 * sum(g (x - mean)) / m) * (x - mean) - r * sum(g) / m``
    (only the first term without ``stats_grad``: fixed statistics).
    """
    planes, channels = hi.shape
    for i in range(cuda.grid(1), planes * channels, cuda.gridsize(1)):
        p = i // channels
        c = i - p * channels
        g = c // group
        r = rstd[p, g]
        mu = mean[p, g]
        hi[p, c] = mu
        lo[p, c] = mu - hi[p, c]
        a[p, c] = r * weight[c]
        if stats_grad:
            s_g = 0.0
            s_gx = 0.0
            for cc in range(g * group, (g + 1) * group):
                w = np.float64(weight[cc])
                s_g += s_dy[p, cc] * w
                s_gx += s_dyx[p, cc] * w
            b[p, c] = -r * s_g / count
            c3[p, c] = -(r * r * r) * s_gx / count
        else:
            b[p, c] = 0.0
            c3[p, c] = 0.0


@kernel
def _param_grads(s_dy, s_dyx, rstd, group, dweight, dbias):
    """``dweight[c] = sum_p sum(dy * (x - mean)) * rstd``, ``dbias[c] = sum_p sum(dy)``."""
    for c in range(cuda.grid(1), dweight.shape[0], cuda.gridsize(1)):
        dw = 0.0
        db = 0.0
        for p in range(s_dy.shape[0]):
            dw += s_dyx[p, c] * rstd[p, c // group]
            db += s_dy[p, c]
        dweight[c] = dw
        dbias[c] = db


@kernel
def _apply_dx(x3, dy3, dx3, hi, lo, a, b, c3):
    """``dx = a * dy + c * ((x - hi) - lo) + b`` with (P, C) coefficients, P in {1, N}."""
    per_sample = hi.shape[0] > 1
    for i in range(cuda.grid(1), x3.size, cuda.gridsize(1)):
        n, c, s, p = element_at(x3, i, per_sample)
        dx3[n, c, s] = a[p, c] * dy3[n, c, s] + c3[p, c] * ((x3[n, c, s] - hi[p, c]) - lo[p, c]) + b[p, c]


def _launch(size):
    return elementwise_blocks(size), THREADS


def ones(n, dtype):
    return cuda.to_device(np.ones(n, dtype))


def zeros(n, dtype):
    return cuda.to_device(np.zeros(n, dtype))


def stats_from_running(running_mean, running_var, eps, planes):
    """Float64 (planes, C) ``mean`` and ``rstd`` device arrays from running statistics."""
    channels = running_mean.shape[0]
    mean = cuda.device_array((planes, channels), np.float64)
    rstd = cuda.device_array((planes, channels), np.float64)
    _stats_from_running[_launch(planes * channels)](running_mean, running_var, float(eps), mean, rstd)
    return mean, rstd


def update_running(mean, var, count, momentum, running_mean, running_var):
    """Update running statistics in place from (P, G=C) float64 statistics of ``count`` values."""
    _update_running[_launch(running_mean.shape[0])](mean, var, float(count), float(momentum),
                                                    running_mean, running_var)


def normalize(x3, y3, mean, rstd, group, weight, bias):
    """Fill ``y3`` from float64 (P, G) statistics; weight/bias (C,) device arrays or None."""
    n, channels, _ = x3.shape
    dtype = x3.dtype
    weight = ones(channels, dtype) if weight is None else weight
    bias = zeros(channels, dtype) if bias is None else bias
    shape = (mean.shape[0], channels)
    hi, lo, scale, shift = (cuda.device_array(shape, dtype) for _ in range(4))
    _forward_coefs[_launch(hi.size)](mean, rstd, group, weight, bias, hi, lo, scale, shift)
    _normalize[_launch(x3.size)](x3, y3, hi, lo, scale, shift)


def backward(x3, dy3, dx3, mean, rstd, group, weight, count, stats_grad):
    """Fill ``dx3``; return (dweight, dbias) as (C,) device arrays in x's dtype.

    ``mean``/``rstd`` are float64 (P, G) statistics of groups of ``count`` values;
    ``stats_grad`` False treats them as constants (running statistics).
    """
    n, channels, length = x3.shape
    dtype = x3.dtype
    planes = mean.shape[0]
    per_sample = planes > 1  # with N = 1, per sample and per channel are the same reduction
    span = length if per_sample else n * length
    chunks, chunk = partials(span)
    rows = planes * channels
    ps_dy = cuda.device_array((rows, chunks), np.float64)
    ps_dyx = cuda.device_array((rows, chunks), np.float64)
    _partial_grad_sums[(rows, chunks), THREADS](x3, dy3, mean, group, per_sample, chunk, ps_dy, ps_dyx)
    s_dy = cuda.device_array(rows, np.float64)
    s_dyx = cuda.device_array(rows, np.float64)
    sum_partials[_launch(rows)](ps_dy, ps_dyx, s_dy, s_dyx)
    shape = (planes, channels)
    s_dy = s_dy.reshape(shape)
    s_dyx = s_dyx.reshape(shape)
    w = ones(channels, dtype) if weight is None else weight
    hi, lo, a, b, c3 = (cuda.device_array(shape, dtype) for _ in range(5))
    _backward_coefs[_launch(a.size)](s_dy, s_dyx, mean, rstd, group, w, float(count), bool(stats_grad),
                                     hi, lo, a, b, c3)
    _apply_dx[_launch(x3.size)](x3, dy3, dx3, hi, lo, a, b, c3)
    dweight = cuda.device_array(channels, dtype)
    dbias = cuda.device_array(channels, dtype)
    _param_grads[_launch(channels)](s_dy, s_dyx, rstd, group, dweight, dbias)
    return dweight, dbias
