"""BatchNorm: per-channel statistics over samples and positions (Ioffe & Szegedy, 2015).

Drivers over the shared channel passes; every array here is a C-contiguous 3-D view
(see :mod:`numbanorm.kernels.cpu.channels`) and every statistic is float64. The
partial results are exposed before they are finished — the moments before the
variance is formed, the gradient sums before dx — so that SyncBatchNorm can merge
them across processes between the two halves of each pass.
"""

import numpy as np

from ... import _memory
from .channels import apply_dx_packed, channel_moments, normalize_packed
from .channels import grad_sums as _grad_sums
from .elementwise import pack_channel_dx, pack_stats
from .params import param

__all__ = ["moments", "normalize", "grad_sums", "apply_dx"]


def _channels(layout, x3):
    return x3.shape[1] if layout == "cf" else x3.shape[2]


def moments(layout, x3):
    """Per-channel float64 ``(count, mean (C,), M2 (C,))`` over samples and positions."""
    return channel_moments(layout, x3)


def normalize(layout, x3, y3, mean, m2, count, weight, bias, eps):
    """``y = (x - mean) * rstd * weight + bias`` with ``var = m2 / count``; return float64 (var, rstd).

    Batch moments come as ``(mean, M2, count)``, running statistics as
    ``(running_mean, running_var, 1)``; the per-channel params are packed in one kernel.
    """
    channels = _channels(layout, x3)
    q = _memory.empty((3, 1, channels), x3.dtype, work=x3.size)
    var = np.empty(channels)
    rstd = np.empty(channels)
    pack_stats(mean, m2, float(count), eps, param(weight, channels, 1.0, x3.dtype),
               param(bias, channels, 0.0, x3.dtype), q, var, rstd)
    normalize_packed(layout, x3, y3, q)
    return var, rstd


def grad_sums(layout, x3, dy3, mean):
    """Per-channel float64 ``(sum(dy), sum(dy * (x - mean)))``."""
    s_dy, s_dyx = _grad_sums(layout, x3, dy3, mean)
    return s_dy[0], s_dyx[0]


def apply_dx(layout, x3, dy3, dx3, mean, rstd, weight, s_dy, s_dyx, count, use_input_stats):
    """Fill ``dx3`` from the gradient sums of ``count`` values per channel; return float64 dweight.

    With ``xhat = (x - mean) * rstd``,
    ``dx = rstd * weight * (dy - mean(dy) - xhat * mean(dy * xhat))`` when the
    statistics came from the batch (``use_input_stats``), else ``rstd * weight * dy``.
    """
    channels = mean.size
    q = _memory.empty((5, 1, channels), work=x3.size)
    dweight = np.empty(channels)
    pack_channel_dx(mean, rstd, param(weight, channels, 1.0, x3.dtype), s_dy, s_dyx, float(count),
                    bool(use_input_stats), q, dweight)
    apply_dx_packed(layout, x3, dy3, dx3, q)
    return dweight
