"""BatchNorm: per-channel statistics over samples and positions (Ioffe & Szegedy, 2015).

Drivers over the shared channel passes; every array here is a C-contiguous 3-D view
(see :mod:`numbanorm.kernels.cpu.channels`) and every statistic is float64.
"""

import numpy as np

from .channels import apply_dx, channel_moments, grad_sums, normalize

__all__ = ["forward_train", "forward_eval", "backward"]


def _as64(p):
    return None if p is None else np.asarray(p, dtype=np.float64)


def forward_train(layout, x3, y3, weight, bias, eps):
    """Normalize with batch statistics; return (count, mean, biased var, invstd) per channel."""
    count, mean, m2 = channel_moments(layout, x3)
    var = m2 / count
    invstd = 1.0 / np.sqrt(var + eps)
    normalize(layout, x3, y3, mean, invstd, weight, bias)
    return count, mean, var, invstd


def forward_eval(layout, x3, y3, running_mean, running_var, weight, bias, eps):
    """One pass ``y = (x - running_mean) * weight / sqrt(running_var + eps) + bias``; return invstd."""
    mean = np.asarray(running_mean, dtype=np.float64)
    invstd = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    normalize(layout, x3, y3, mean, invstd, weight, bias)
    return mean, invstd


def backward(layout, x3, dy3, dx3, mean, invstd, weight, training, count):
    """Fill ``dx3`` and return per-channel ``(sum(dy * xhat), sum(dy))``.

    With ``xhat = (x - mean) * invstd`` and sums over a channel's ``count`` values,

    ``dx = weight * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))`` when the
    statistics came from the batch (``training``), else ``weight * invstd * dy``.
    """
    s_dy, s_dyx = grad_sums(layout, x3, dy3, mean)
    s_dy, s_dyxhat = s_dy[0], s_dyx[0] * invstd
    a = invstd if weight is None else invstd * _as64(weight)
    if training:
        b = -a * s_dy / count
        c = -a * invstd * s_dyxhat / count
    else:
        b = c = np.zeros_like(a)
    apply_dx(layout, x3, dy3, dx3, mean, a, b, c)
    return s_dyxhat, s_dy
