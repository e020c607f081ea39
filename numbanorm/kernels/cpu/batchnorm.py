"""BatchNorm: per-channel statistics over samples and positions (Ioffe & Szegedy, 2015).

Drivers over the shared channel passes; every array here is a C-contiguous 3-D view
(see :mod:`numbanorm.kernels.cpu.channels`) and every statistic is float64.
"""

import numpy as np

from ... import _memory
from .channels import apply_dx_packed, channel_moments, grad_sums, normalize_packed
from .elementwise import pack_channel_dx, pack_stats

__all__ = ["forward_train", "forward_eval", "backward"]

_NONE = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}


def _normalize_with(layout, x3, y3, mean, m2, count, eps, weight, bias):
    """Pack per-channel params from (mean, m2 / count) in one kernel, then normalize."""
    channels = mean.size
    q = _memory.empty((3, 1, channels), x3.dtype, work=x3.size)
    var = np.empty(channels)
    rstd = np.empty(channels)
    none = _NONE[x3.dtype]
    pack_stats(mean, m2, count, eps, none if weight is None else weight, none if bias is None else bias,
               q, var, rstd)
    normalize_packed(layout, x3, y3, q)
    return var, rstd


def forward_train(layout, x3, y3, weight, bias, eps):
    """Normalize with batch statistics; return (count, mean, biased var, invstd) per channel."""
    count, mean, m2 = channel_moments(layout, x3)
    var, invstd = _normalize_with(layout, x3, y3, mean, m2, count, eps, weight, bias)
    return count, mean, var, invstd


def forward_eval(layout, x3, y3, running_mean, running_var, weight, bias, eps):
    """One pass ``y = (x - running_mean) * weight / sqrt(running_var + eps) + bias``; return invstd."""
    _, invstd = _normalize_with(layout, x3, y3, running_mean, running_var, 1.0, eps, weight, bias)
    return running_mean.astype(np.float64), invstd


def backward(layout, x3, dy3, dx3, mean, invstd, weight, training):
    """Fill ``dx3`` and return per-channel ``(sum(dy * xhat), sum(dy))``.

    With ``xhat = (x - mean) * invstd`` and sums over a channel's ``count`` values,

    ``dx = weight * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))`` when the
    statistics came from the batch (``training``), else ``weight * invstd * dy``.
    """
    count = x3.size / (x3.shape[1] if layout == "cf" else x3.shape[2])
    s_dy, s_dyx = grad_sums(layout, x3, dy3, mean)
    channels = mean.size
    q = _memory.empty((4, 1, channels), x3.dtype, work=x3.size)
    s_dyxhat = np.empty(channels)
    pack_channel_dx(mean, invstd, _NONE[x3.dtype] if weight is None else weight, s_dy[0], s_dyx[0], count,
                    bool(training), q, s_dyxhat)
    apply_dx_packed(layout, x3, dy3, dx3, q)
    return s_dyxhat, s_dy[0]
