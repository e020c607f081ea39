"""GroupNorm on CUDA (Wu & He, 2018): the twin of :mod:`numbanorm.kernels.cpu.groupnorm`.

A group's values are contiguous in (N, C, S) memory, so GroupNorm's statistics are the
per-sample "channel" statistics of the (N, G, C/G * S) view. Normalization and dx use
per-(n, c) coefficients.
"""

from . import channels
from .moments import channel_stats

__all__ = ["forward", "backward"]


def forward(layout, x3, y3, groups, weight, bias, eps, residual=None, relu=False):
    """Normalize with per-(sample, group) statistics (then the epilogue ``relu(y + residual)``);
    return (count, mean, var, rstd), the last three (N, G) float64 device arrays."""
    n, c, s = x3.shape
    per_group = c // groups
    count, mean, var, rstd = channel_stats(x3.reshape(n, groups, per_group * s), True, eps)
    channels.normalize(x3, y3, mean, rstd, per_group, weight, bias, residual, relu)
    return count, mean, var, rstd


def backward(layout, x3, dy3, dx3, mean, rstd, weight, use_input_stats, y3=None, g3=None):
    """Fill ``dx3``; return float64 (C,) (dweight, dbias) device arrays.

    Per group of m values with ``xhat = (x - mean) * r`` and ``g = dy * w_c``:
    ``dx = r * (g - mean(g) - xhat * mean(g * xhat))``; only ``r * g`` without
    ``use_input_stats`` (fixed statistics). ReLU's mask from ``y3`` as in
    :func:`numbanorm.kernels.cuda.channels.backward`.
    """
    n, c, s = x3.shape
    per_group = c // mean.shape[1]
    return channels.backward(x3, dy3, dx3, mean, rstd, per_group, weight, per_group * s, use_input_stats, y3, g3)
