"""Passes shared by the channel-wise families (BatchNorm, InstanceNorm, GroupNorm) on CUDA.

Input is a C-contiguous (N, C, S) device array. Statistics come as float64 (P, G)
device arrays — P = 1 (per channel, BatchNorm) or P = N (per sample), G groups of
``group`` channels (G = C, ``group`` = 1 except for GroupNorm) — and become per-(p, c)
coefficients for one element-wise pass, the forms of
:mod:`numbanorm.kernels.cpu.elementwise`:

``y = ((x - hi) - lo) * scale + shift`` with the mean as an x-dtype hi/lo pair, and
``dx = s * ((a * dy - b) - (x - m) * c)`` with float64 coefficients and the bracket
in float64.

Gradient sums (``sum dy`` and ``sum dy * (x - mean)`` per (p, c)) are float64 block
partials, summed by a second kernel.

The fused epilogue, as on the CPU: :func:`normalize` adds a residual and applies ReLU in
the pass that writes y (``_normalize_epilogue``); :func:`grad_sums` with the forward's
output writes ReLU's masked gradient ``dy * (y > 0)`` in its read of dy
(``_partial_grad_sums_relu``), and dx is formed from it (in place in dx's buffer, or from
the residual's gradient).
"""


import numpy as np
from numba import cuda

from ._jit import THREADS, device, elementwise_blocks, kernel, partials
from .moments import block_sum2, channel_chunk
from .params import param

__all__ = ["update_running_stats", "normalize", "grad_sums", "apply_dx", "param_grads", "backward", "sum_partials"]


@kernel
def _update_running(mean, var, count, momentum, running_mean, running_var):
    """``r = (1 - momentum) * r + momentum * s`` per channel, s averaged over the P rows,
    with the unbiased variance ``var * count / (count - 1)``; the CPU twin sums in the
    same order."""
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
def _normalize_epilogue(x3, r3, y3, hi, lo, scale, shift, add, relu):
    """:func:`_normalize`, then ``+ r3`` (``add``) and ReLU (``relu``) in the same write; ``r3`` is
    not read without ``add``. ReLU is ``0 if v < 0 else v``: NaN propagates."""
    per_sample = hi.shape[0] > 1
    for i in range(cuda.grid(1), x3.size, cuda.gridsize(1)):
        n, c, s, p = element_at(x3, i, per_sample)
        v = ((x3[n, c, s] - hi[p, c]) - lo[p, c]) * scale[p, c] + shift[p, c]
        if add:
            v = v + r3[n, c, s]
        if relu and v < 0:
            y3[n, c, s] = 0
        else:
            y3[n, c, s] = v


@device
def _chunk_grad_sums(x3, dy3, y3, g3, relu, mean, group, per_sample, chunk, ps_dy, ps_dyx, sh_a, sh_b):
    """The body of :func:`_partial_grad_sums` (``relu`` False: ``y3``/``g3`` are not read) and of
    :func:`_partial_grad_sums_relu` (the sums of ``g = dy * (y3 > 0)``, written to ``g3``)."""
    q, k, p, c, lo, hi = channel_chunk(x3, per_sample, chunk)
    length = x3.shape[2]
    mu = mean[p, c // group]
    s_dy = 0.0
    s_dyx = 0.0
    for j in range(lo + cuda.threadIdx.x, hi, cuda.blockDim.x):
        r = j // length
        s = j - r * length
        if not relu:
            g = np.float64(dy3[p + r, c, s])
        elif y3[p + r, c, s] > 0:
            g = np.float64(dy3[p + r, c, s])
            g3[p + r, c, s] = dy3[p + r, c, s]
        else:
            g = 0.0
            g3[p + r, c, s] = 0
        s_dy += g
        s_dyx += g * (x3[p + r, c, s] - mu)
    s_dy, s_dyx = block_sum2(s_dy, s_dyx, sh_a, sh_b)
    if cuda.threadIdx.x == 0:
        ps_dy[q, k] = s_dy
        ps_dyx[q, k] = s_dyx


@kernel
def _partial_grad_sums(x3, dy3, mean, group, per_sample, chunk, ps_dy, ps_dyx):
    """Partial ``sum(dy)`` and ``sum(dy * (x - mean))`` (float64) per (p, c), grid (P * C, K).

    Block (q, k) takes the k-th ``chunk`` of channel ``c = q % C``'s values, over all
    samples (P = 1) or the positions of sample ``p = q // C``; ``mean`` is (P, G).
    """
    sh_a = cuda.shared.array(THREADS, np.float64)
    sh_b = cuda.shared.array(THREADS, np.float64)
    _chunk_grad_sums(x3, dy3, dy3, dy3, False, mean, group, per_sample, chunk, ps_dy, ps_dyx, sh_a, sh_b)


@kernel
def _partial_grad_sums_relu(x3, dy3, y3, g3, mean, group, per_sample, chunk, ps_dy, ps_dyx):
    """:func:`_partial_grad_sums` of ReLU's masked gradient ``g = dy * (y3 > 0)``, which is
    written to ``g3`` (the residual's gradient, or dx's buffer) in the same read."""
    sh_a = cuda.shared.array(THREADS, np.float64)
    sh_b = cuda.shared.array(THREADS, np.float64)
    _chunk_grad_sums(x3, dy3, y3, g3, True, mean, group, per_sample, chunk, ps_dy, ps_dyx, sh_a, sh_b)


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
def _dx_coefs(s_dy, s_dyx, mean, rstd, group, weight, count, use_input_stats, m, a, b, c3, sc):
    """float64 dx coefficients per (p, c) for a group of ``count`` values with ``g = dy * weight``:

    ``m = mean``, ``a = weight[c]``, ``b = sum(g) / count``,
    ``c = rstd**2 * sum(g * (x - mean)) / count`` (b and c 0 without ``use_input_stats``:
    fixed statistics), ``s = rstd``.
    """
    planes, channels = m.shape
    for i in range(cuda.grid(1), planes * channels, cuda.gridsize(1)):
        p = i // channels
        c = i - p * channels
        g = c // group
        r = rstd[p, g]
        m[p, c] = mean[p, g]
        a[p, c] = weight[c]
        sc[p, c] = r
        if use_input_stats:
            s_g = 0.0
            s_gx = 0.0
            for cc in range(g * group, (g + 1) * group):
                w = np.float64(weight[cc])
                s_g += s_dy[p, cc] * w
                s_gx += s_dyx[p, cc] * w
            b[p, c] = s_g / count
            c3[p, c] = r * r * s_gx / count
        else:
            b[p, c] = 0.0
            c3[p, c] = 0.0


@kernel
def _param_grads(s_dy, s_dyx, rstd, group, dweight, dbias):
    """``dweight[c] = sum_p sum(dy * (x - mean)) * rstd``, ``dbias[c] = sum_p sum(dy)``, float64."""
    for c in range(cuda.grid(1), dweight.shape[0], cuda.gridsize(1)):
        dw = 0.0
        db = 0.0
        for p in range(s_dy.shape[0]):
            dw += s_dyx[p, c] * rstd[p, c // group]
            db += s_dy[p, c]
        dweight[c] = dw
        dbias[c] = db


@kernel
def _apply_dx(x3, dy3, dx3, m, a, b, c3, sc):
    """``dx = s * ((a * dy - b) - (x - m) * c)`` with float64 (P, C) coefficients, P in {1, N}."""
    per_sample = m.shape[0] > 1
    for i in range(cuda.grid(1), x3.size, cuda.gridsize(1)):
        n, c, s, p = element_at(x3, i, per_sample)
        bracket = (a[p, c] * np.float64(dy3[n, c, s]) - b[p, c]) - (np.float64(x3[n, c, s]) - m[p, c]) * c3[p, c]
        dx3[n, c, s] = sc[p, c] * bracket


def _launch(size):
    return elementwise_blocks(size), THREADS


def update_running_stats(running_mean, running_var, mean, var, momentum, count):
    """In place: ``r = (1 - momentum) * r + momentum * s`` per channel with the unbiased
    variance; (N, C) statistics (InstanceNorm) are averaged over the batch first."""
    channels = running_mean.shape[0]
    mean = mean.reshape(1, channels) if mean.ndim == 1 else mean
    var = var.reshape(1, channels) if var.ndim == 1 else var
    _update_running[_launch(channels)](mean, var, float(count), float(momentum), running_mean, running_var)


def normalize(x3, y3, mean, rstd, group, weight, bias, residual=None, relu=False):
    """Fill ``y3`` from float64 (P, G) statistics; weight/bias (C,) device arrays or None; then
    ``+ residual`` (like x3) and ReLU when given, in the same pass."""
    channels = x3.shape[1]
    dtype = x3.dtype
    weight = param(weight, channels, 1.0, dtype)
    bias = param(bias, channels, 0.0, dtype)
    shape = (mean.shape[0], channels)
    hi, lo, scale, shift = (cuda.device_array(shape, dtype) for _ in range(4))
    _forward_coefs[_launch(hi.size)](mean, rstd, group, weight, bias, hi, lo, scale, shift)
    if residual is None and not relu:
        _normalize[_launch(x3.size)](x3, y3, hi, lo, scale, shift)
    else:
        add = residual is not None
        _normalize_epilogue[_launch(x3.size)](x3, residual if add else x3, y3, hi, lo, scale, shift, add,
                                              bool(relu))


def grad_sums(x3, dy3, mean, group, per_sample, y3=None, g3=None):
    """float64 (P, C) ``sum(dy)`` and ``sum(dy * (x - mean))`` per channel (P = 1) or per
    (sample, channel) (``per_sample``, P = N); ``mean`` is (P, G). With ``y3`` (a ReLU
    epilogue's output), the sums of ``g = dy * (y3 > 0)``, which is written to ``g3``."""
    n, channels, length = x3.shape
    planes = n if per_sample else 1
    span = length if per_sample else n * length
    chunks, chunk = partials(span)
    rows = planes * channels
    ps_dy = cuda.device_array((rows, chunks), np.float64)
    ps_dyx = cuda.device_array((rows, chunks), np.float64)
    if y3 is None:
        _partial_grad_sums[(rows, chunks), THREADS](x3, dy3, mean, group, bool(per_sample), chunk, ps_dy, ps_dyx)
    else:
        _partial_grad_sums_relu[(rows, chunks), THREADS](x3, dy3, y3, g3, mean, group, bool(per_sample), chunk,
                                                         ps_dy, ps_dyx)
    s_dy = cuda.device_array(rows, np.float64)
    s_dyx = cuda.device_array(rows, np.float64)
    sum_partials[_launch(rows)](ps_dy, ps_dyx, s_dy, s_dyx)
    return s_dy.reshape(planes, channels), s_dyx.reshape(planes, channels)


def apply_dx(x3, dy3, dx3, s_dy, s_dyx, mean, rstd, group, weight, count, use_input_stats):
    """Fill ``dx3`` from (P, C) gradient sums and (P, G) statistics of groups of ``count`` values
    (``dy3`` may be ``dx3`` itself: each element is read, then written, by one thread)."""
    channels = x3.shape[1]
    shape = (s_dy.shape[0], channels)
    w = param(weight, channels, 1.0, np.float64)
    m, a, b, c3, sc = (cuda.device_array(shape, np.float64) for _ in range(5))
    _dx_coefs[_launch(m.size)](s_dy, s_dyx, mean, rstd, group, w, float(count), bool(use_input_stats),
                               m, a, b, c3, sc)
    _apply_dx[_launch(x3.size)](x3, dy3, dx3, m, a, b, c3, sc)


def param_grads(s_dy, s_dyx, rstd, group):
    """float64 (C,) ``(dweight, dbias)`` from (P, C) gradient sums and (P, G) rstd."""
    channels = s_dy.shape[1]
    dweight = cuda.device_array(channels, np.float64)
    dbias = cuda.device_array(channels, np.float64)
    _param_grads[_launch(channels)](s_dy, s_dyx, rstd, group, dweight, dbias)
    return dweight, dbias


def backward(x3, dy3, dx3, mean, rstd, group, weight, count, use_input_stats, y3=None, g3=None):
    """Fill ``dx3``; return float64 (C,) (dweight, dbias) device arrays.

    ``mean``/``rstd`` are float64 (P, G) statistics of groups of ``count`` values;
    ``use_input_stats`` False treats them as constants (running statistics). With ``y3``
    (a ReLU epilogue's output) dy is ``dy * (y3 > 0)``, written to ``g3`` (``dx3`` when None)
    by the sums' read and read back by dx's.
    """
    per_sample = mean.shape[0] > 1  # with N = 1, per sample and per channel are the same reduction
    if y3 is not None:
        g3 = dx3 if g3 is None else g3
    s_dy, s_dyx = grad_sums(x3, dy3, mean, group, per_sample, y3, g3)
    apply_dx(x3, dy3 if y3 is None else g3, dx3, s_dy, s_dyx, mean, rstd, group, weight, count, use_input_stats)
    return param_grads(s_dy, s_dyx, rstd, group)
