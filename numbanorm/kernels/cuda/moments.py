"""The CUDA moments primitive: per-thread Welford, block-level Chan merge, partial merges.

A reduction over m values is shared by the threads of a block (and, for long
reductions, by several blocks). Each thread keeps a float64 (count, mean, M2) of the
values it strides over, updated with Welford's recurrence (one read of x, no
``E[x^2] - E[x]^2``); the block then merges its threads' partials pairwise in a
shared-memory tree with Chan, Golub & LeVeque's formula, and blocks' partials are
merged the same way by :func:`merge_moments`.

The merge is the CPU primitive itself: :func:`numbanorm.kernels.cpu.moments.chan_merge`
is an ``@njit`` function, and numba-cuda compiles a CPU dispatcher called from a
kernel as a device function, so the formula exists once. (Its CPU fast-math flag set
reaches NVVM as "fastmath on", which only changes float32 division and sqrt; the
merge is all float64.)

RMSNorm's mean-square mode (``center=False``) runs the same recurrence on ``x**2``
and reports the moments about zero, ``(count, 0, sum(x**2))``, as the CPU primitive
does, so that every caller finishes the statistics as ``var = M2 / count``.

The skip form of LayerNorm/RMSNorm takes the moments of ``s = x + residual``:
:func:`partial_moments_add` writes each value of ``s`` (in x's dtype) in the read that takes
its moments, with the same per-thread Welford and block merge (one device function serves both).
"""

import math

import numpy as np
from numba import cuda

from ..cpu.moments import chan_merge
from ._jit import THREADS, device, elementwise_blocks, kernel, partials
from .layout import contiguous

__all__ = [
    "chan_merge",
    "welford_add",
    "block_merge",
    "block_sum2",
    "channel_chunk",
    "partial_moments",
    "partial_moments_add",
    "merge_moments",
    "finish_stats",
    "channel_moments",
    "channel_stats",
]


@device
def welford_add(n, mean, m2, v):
    """Add one float64 value to a running (count, mean, M2) (Welford, 1962)."""
    n += 1.0
    d = v - mean
    mean += d / n
    m2 += d * (v - mean)
    return n, mean, m2


@device
def block_merge(n, mean, m2, sh_n, sh_mean, sh_m2):
    """Chan-merge every thread's (count, mean, M2) of the block; all threads get the total.

    ``sh_*`` are float64 shared arrays of ``THREADS`` entries; the block size must be
    a power of two. A shared-memory tree: log2(THREADS) steps, each a barrier.
    """
    t = cuda.threadIdx.x
    sh_n[t] = n
    sh_mean[t] = mean
    sh_m2[t] = m2
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            nn, mm, ss = chan_merge(sh_n[t], sh_mean[t], sh_m2[t], sh_n[t + half], sh_mean[t + half], sh_m2[t + half])
            sh_n[t] = nn
            sh_mean[t] = mm
            sh_m2[t] = ss
        cuda.syncthreads()
        half //= 2
    nn = sh_n[0]
    mm = sh_mean[0]
    ss = sh_m2[0]
    cuda.syncthreads()  # the shared arrays may be reused right after
    return nn, mm, ss


@device
def block_sum2(a, b, sh_a, sh_b):
    """Sum two float64 values over the block (shared-memory tree); all threads get the sums."""
    t = cuda.threadIdx.x
    sh_a[t] = a
    sh_b[t] = b
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            sh_a[t] += sh_a[t + half]
            sh_b[t] += sh_b[t + half]
        cuda.syncthreads()
        half //= 2
    a = sh_a[0]
    b = sh_b[0]
    cuda.syncthreads()
    return a, b


@device
def channel_chunk(x3, per_sample, chunk):
    """``(q, k, p, c, lo, hi)`` of this block in a ``(P * C, K)`` grid over (N, C, S) ``x3``.

    Block (q, k) takes values ``lo:hi`` of channel ``c = q % C``, numbered over all
    samples and positions (``per_sample`` False, p = 0) or over the positions of sample
    ``p = q // C``; value j sits at ``x3[p + j // S, c, j % S]`` either way.
    """
    q = cuda.blockIdx.x
    k = cuda.blockIdx.y
    channels = x3.shape[1]
    length = x3.shape[2]
    p = q // channels
    c = q - p * channels
    span = length if per_sample else x3.shape[0] * length
    lo = k * chunk
    return q, k, p, c, lo, min(lo + chunk, span)


@device
def _chunk_moments(x3, r3, s3, add, per_sample, center, chunk, pn, pmean, pm2, sh_n, sh_mean, sh_m2):
    """The body of :func:`partial_moments` (``add`` False: ``r3``/``s3`` are not read) and of
    :func:`partial_moments_add` (``add`` True: the values are ``s = x + r``, written to ``s3``)."""
    q, k, p, c, lo, hi = channel_chunk(x3, per_sample, chunk)
    length = x3.shape[2]
    n = 0.0
    mean = 0.0
    m2 = 0.0
    for j in range(lo + cuda.threadIdx.x, hi, cuda.blockDim.x):
        r = j // length
        i = j - r * length
        if add:
            sv = x3[p + r, c, i] + r3[p + r, c, i]
            s3[p + r, c, i] = sv
            v = np.float64(sv)
        else:
            v = np.float64(x3[p + r, c, i])
        if not center:
            v = v * v
        n, mean, m2 = welford_add(n, mean, m2, v)
    n, mean, m2 = block_merge(n, mean, m2, sh_n, sh_mean, sh_m2)
    if cuda.threadIdx.x == 0:
        pn[q, k] = n
        pmean[q, k] = mean
        pm2[q, k] = m2


@kernel
def partial_moments(x3, per_sample, center, chunk, pn, pmean, pm2):
    """Partial moments of the channels of a C-contiguous (N, C, S) array.

    Grid ``(P * C, K)``: block (q, k) reduces the k-th ``chunk`` of the values of
    channel ``c = q % C`` — over all samples and positions (``per_sample`` False, P = 1:
    BatchNorm) or over the positions of sample ``p = q // C`` (P = N: InstanceNorm, and
    GroupNorm on the (N, G, C/G * S) view) — into ``pn``, ``pmean``, ``pm2`` (P * C, K).
    With ``center`` False the moments are those of ``x**2`` (RMSNorm).
    """
    sh_n = cuda.shared.array(THREADS, np.float64)
    sh_mean = cuda.shared.array(THREADS, np.float64)
    sh_m2 = cuda.shared.array(THREADS, np.float64)
    _chunk_moments(x3, x3, x3, False, per_sample, center, chunk, pn, pmean, pm2, sh_n, sh_mean, sh_m2)


@kernel
def partial_moments_add(x3, r3, s3, per_sample, center, chunk, pn, pmean, pm2):
    """:func:`partial_moments` of ``s = x3 + r3`` (C-contiguous, x's dtype), each value written to
    ``s3`` in the read that takes its moments (the skip form of LayerNorm and RMSNorm)."""
    sh_n = cuda.shared.array(THREADS, np.float64)
    sh_mean = cuda.shared.array(THREADS, np.float64)
    sh_m2 = cuda.shared.array(THREADS, np.float64)
    _chunk_moments(x3, r3, s3, True, per_sample, center, chunk, pn, pmean, pm2, sh_n, sh_mean, sh_m2)


@kernel
def merge_moments(pn, pmean, pm2, center, count, mean, m2):
    """Chan-merge the K partials of each row q of (Q, K) arrays; one block per row.

    Writes float64 ``count[q]``, ``mean[q]`` and ``m2[q]``; without ``center`` the partials
    are moments of ``x**2`` and the result is the moments about zero, ``(n, 0, sum(x**2))``.
    """
    sh_n = cuda.shared.array(THREADS, np.float64)
    sh_mean = cuda.shared.array(THREADS, np.float64)
    sh_m2 = cuda.shared.array(THREADS, np.float64)
    q = cuda.blockIdx.x
    n = 0.0
    mu = 0.0
    s = 0.0
    for k in range(cuda.threadIdx.x, pn.shape[1], cuda.blockDim.x):
        n, mu, s = chan_merge(n, mu, s, pn[q, k], pmean[q, k], pm2[q, k])
    n, mu, s = block_merge(n, mu, s, sh_n, sh_mean, sh_m2)
    if cuda.threadIdx.x == 0:
        count[q] = n
        if center:
            mean[q] = mu
            m2[q] = s
        else:
            mean[q] = 0.0
            m2[q] = mu * n


@kernel
def finish_stats(mean, m2, count, eps, mean64, var, rstd):
    """``var = m2 / count`` and ``rstd = 1 / sqrt(var + eps)`` per entry of 1-D arrays;
    ``mean64`` is ``mean`` widened to float64 (running statistics come in their own dtype);
    every entry holds the moments of ``count`` values."""
    for i in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        v = np.float64(m2[i]) / count
        mean64[i] = mean[i]
        var[i] = v
        rstd[i] = 1.0 / math.sqrt(v + eps)


def channel_moments(x3, per_sample, center=True, residual=None, s3=None):
    """Moments of the channels of a C-contiguous (N, C, S) device array.

    Per channel over samples and positions (P = 1) or per (sample, channel) over
    positions (``per_sample``, P = N). Returns ``(count, mean, M2)``: the count per
    channel as a float, and float64 (P, C) device arrays, from the partial moments of
    up to ``config.CUDA_MAX_PARTIALS`` blocks per channel, Chan-merged by a second kernel.
    With ``residual`` (like x3) the moments are those of ``s = x3 + residual``, written to ``s3``.
    """
    n, c, s = x3.shape
    planes = n if per_sample else 1
    span = s if per_sample else n * s
    chunks, chunk = partials(span)
    rows = planes * c
    pn = cuda.device_array((rows, chunks), np.float64)
    pmean = cuda.device_array((rows, chunks), np.float64)
    pm2 = cuda.device_array((rows, chunks), np.float64)
    if residual is None:
        partial_moments[(rows, chunks), THREADS](x3, bool(per_sample), bool(center), chunk, pn, pmean, pm2)
    else:
        partial_moments_add[(rows, chunks), THREADS](x3, residual, s3, bool(per_sample), bool(center), chunk,
                                                     pn, pmean, pm2)
    count = cuda.device_array(rows, np.float64)
    mean = cuda.device_array(rows, np.float64)
    m2 = cuda.device_array(rows, np.float64)
    merge_moments[rows, THREADS](pn, pmean, pm2, bool(center), count, mean, m2)
    shape = (planes, c)
    return float(span), mean.reshape(*shape), m2.reshape(*shape)


def finish(mean, m2, count, eps):
    """float64 ``(mean, var, rstd)`` device arrays of ``mean``'s shape from (mean, M2) of
    ``count`` values each (``count`` a float; running statistics pass ``(mean, var, 1)``)."""
    shape = tuple(mean.shape)
    size = mean.size
    out = [cuda.device_array(size, np.float64) for _ in range(3)]
    if size:
        finish_stats[elementwise_blocks(size), THREADS](contiguous(mean).reshape(size), contiguous(m2).reshape(size),
                                                        float(count), float(eps), *out)
    return tuple(a.reshape(*shape) for a in out)


def channel_stats(x3, per_sample, eps, center=True, residual=None, s3=None):
    """``(count, mean, var, rstd)`` of the channels of a C-contiguous (N, C, S) device array:
    :func:`channel_moments` (of ``x3 + residual``, written to ``s3``, when given), finished;
    float64 (P, C) device arrays."""
    count, mean, m2 = channel_moments(x3, per_sample, center, residual, s3)
    mean, var, rstd = finish(mean, m2, count, eps)
    return count, mean, var, rstd
