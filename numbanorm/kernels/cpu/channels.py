"""Passes shared by the channel-wise families (BatchNorm, InstanceNorm, GroupNorm).

Input arrives as a C-contiguous 3-D view in one of two layouts:

``"cf"`` (channels first)
    ``(N, C, S)``: contiguous NCHW (S = H*W...). Each (n, c) row is contiguous.
``"cl"`` (channels last)
    ``(N, S, C)``: NHWC memory (an NCHW view of it upstream) and (N, C) input.
    Channels are the fast axis; passes run over (rows, C) blocks.

Statistics are gathered per (n, c) slice, or per channel, and combined with the
moments primitive's Chan merge; parameters and dx coefficients come as (P, C)
arrays with P = 1 (per channel, BatchNorm) or P = N (per sample and channel).
Statistics and dx coefficients are float64; forward params are packed in x's dtype.

The fused epilogue rides on these passes: normalize takes a residual (a view like x3, or
None) and a ReLU flag and applies both as it writes y; grad_sums takes the forward's output
``y3`` and writes ReLU's masked gradient ``dy * (y3 > 0)`` to ``g3`` as it sums it; apply_dx
then reads that gradient (in place when ``g3`` is the dx buffer).
"""

import numpy as np

from ... import _memory
from .elementwise import (
    dx_planes,
    dx_rows,
    epilogue_flag,
    normalize_planes,
    normalize_rows,
    pack_affine,
    pack_dx,
    update_running,
)
from .moments import _plan_chunks, column_moments, merge, row_moments
from .params import param
from .sums import column_grad_sums, row_grad_sums

__all__ = [
    "channel_moments",
    "instance_moments",
    "normalize",
    "normalize_packed",
    "grad_sums",
    "apply_dx",
    "apply_dx_packed",
    "update_running_stats",
]


def _rows2(mean):
    """Per-channel (C,) or per-(sample, channel) (N, C) float64 values as a 2-D array."""
    return mean.reshape(1, -1) if mean.ndim == 1 else mean


def _planes(x3, per_sample):
    """The (B, R, C) plane view for channels-last passes: one plane unless per sample."""
    if per_sample:
        return x3
    return x3.reshape(1, x3.shape[0] * x3.shape[1], x3.shape[2])


def channel_moments(layout, x3):
    """Per-channel (count, mean (C,), M2 (C,)) over samples and positions."""
    if layout == "cl":
        count, mean, m2 = column_moments(_planes(x3, False))
        return count, mean[0], m2[0]
    n, c, s = x3.shape
    _, mean, m2 = row_moments(x3.reshape(n * c, s))
    # Each (n, c) row holds s values: merge the N rows of a channel with Chan.
    count, mean, m2 = merge(np.full((1, n), float(s)), mean.reshape(1, n, c), m2.reshape(1, n, c))
    return count[0], mean[0], m2[0]


def instance_moments(layout, x3):
    """Per-(sample, channel) (count, mean (N, C), M2 (N, C)) over positions."""
    if layout == "cl":
        return column_moments(x3)
    n, c, s = x3.shape
    count, mean, m2 = row_moments(x3.reshape(n * c, s))
    return count, mean.reshape(n, c), m2.reshape(n, c)


def normalize(layout, x3, y3, mean, rstd, weight=None, bias=None, residual=None, relu=False):
    """``y = (x - mean) * rstd * weight + bias``, then ``+ residual`` and ReLU when given.

    ``mean``/``rstd`` are float64, per channel (C,) or per (sample, channel) (N, C);
    ``weight``/``bias`` are (C,) or None. The mean is subtracted as a hi/lo pair.
    """
    mean, rstd = _rows2(mean), _rows2(rstd)
    channels = mean.shape[1]
    q = _memory.empty((3,) + mean.shape, x3.dtype, work=x3.size)
    pack_affine(mean, rstd, param(weight, channels, 1.0), param(bias, channels, 0.0), q)
    normalize_packed(layout, x3, y3, q, residual, relu)


def _plane_or_none(a, per_sample):
    return None if a is None else _planes(a, per_sample)


def normalize_packed(layout, x3, y3, q, residual=None, relu=False):
    """``y = (x - q[0]) * q[1] + q[2]`` with packed (3, P, C) params in x's dtype; then
    ``+ residual`` (a view like x3) and ReLU when given, in the same write."""
    relu = epilogue_flag(residual, relu)
    if layout == "cf":
        normalize_rows(x3.size, x3, y3, q, residual, relu)
        return
    per_sample = q.shape[1] > 1
    xp, yp = _planes(x3, per_sample), _planes(y3, per_sample)
    rows_per_chunk, nchunks = _plan_chunks(*xp.shape)
    normalize_planes(xp.size, xp, yp, q, rows_per_chunk, nchunks, _plane_or_none(residual, per_sample), relu)


def grad_sums(layout, x3, dy3, mean, y3=None, g3=None):
    """``sum(dy)`` and ``sum(dy * (x - mean))`` per channel (P = 1) or per (n, c) (P = N).

    With ``y3`` (the output of a ReLU epilogue), the sums of ``g = dy * (y3 > 0)``, which is
    written to ``g3`` (a view like x3: the residual's gradient, or the dx buffer) in the same read.
    """
    mean = _rows2(mean)
    per_sample = mean.shape[0] > 1
    if layout == "cl":
        if y3 is None:
            return column_grad_sums(_planes(x3, per_sample), _planes(dy3, per_sample), mean)
        return column_grad_sums(_planes(x3, per_sample), _planes(dy3, per_sample), mean, _planes(y3, per_sample),
                                _planes(g3, per_sample))
    n, c, s = x3.shape
    row_mean = mean.reshape(n * c) if per_sample else np.tile(mean[0], n)
    y2 = None if y3 is None else y3.reshape(n * c, s)
    g2 = None if y3 is None else g3.reshape(n * c, s)
    s_dy, s_dyx = row_grad_sums(x3.reshape(n * c, s), dy3.reshape(n * c, s), row_mean, y2, g2)
    s_dy, s_dyx = s_dy.reshape(n, c), s_dyx.reshape(n, c)
    if per_sample:
        return s_dy, s_dyx
    return s_dy.sum(axis=0, keepdims=True), s_dyx.sum(axis=0, keepdims=True)


def apply_dx(layout, x3, dy3, dx3, m, a, b, c, s):
    """``dx = s * ((a * dy - b) - (x - m) * c)`` with float64 (C,) or (N, C) coefficients
    (``dy3`` may be the ``dx3`` object itself: in place)."""
    m = _rows2(m)
    q = _memory.empty((5,) + m.shape, work=x3.size)
    pack_dx(m, *(np.broadcast_to(_rows2(v), m.shape) for v in (a, b, c, s)), q)
    apply_dx_packed(layout, x3, dy3, dx3, q)


def apply_dx_packed(layout, x3, dy3, dx3, q):
    """``dx = q[4] * ((q[1] * dy - q[2]) - (x - q[0]) * q[3])`` with float64 (5, P, C) coefficients.

    ``dy3`` may be ``dx3`` itself (the same array object: ReLU's masked gradient written there):
    the in-place loops run.
    """
    if dy3 is dx3:
        dy3 = None
    if layout == "cf":
        dx_rows(x3.size, x3, dy3, dx3, q)
        return
    per_sample = q.shape[1] > 1
    xp, dxp = _planes(x3, per_sample), _planes(dx3, per_sample)
    rows_per_chunk, nchunks = _plan_chunks(*xp.shape)
    dx_planes(xp.size, xp, _plane_or_none(dy3, per_sample), dxp, q, rows_per_chunk, nchunks)


def update_running_stats(running_mean, running_var, mean, var, momentum, count):
    """In place: ``r = (1 - momentum) * r + momentum * s`` per channel, with the unbiased
    variance ``var * count / (count - 1)``; (N, C) statistics (InstanceNorm) are averaged
    over the batch first, as PyTorch does."""
    update_running(running_mean, running_var, _rows2(mean), _rows2(var), momentum, count / (count - 1))
