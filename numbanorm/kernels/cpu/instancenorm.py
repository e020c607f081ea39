"""InstanceNorm: statistics per (sample, channel) over positions (Ulyanov et al., 2017).

GroupNorm's drivers with one channel per group, so the (n, c) moments are used as
they are (no merge) in both layouts. With running statistics (evaluation) the pass
is BatchNorm's per-channel normalize, which :mod:`numbanorm.functional` calls.
"""

from . import groupnorm

__all__ = ["forward", "backward"]


def forward(layout, x3, y3, weight, bias, eps, residual=None, relu=False):
    """Normalize with instance statistics; return (count, mean, var, rstd), the last three (N, C) float64.

    The epilogue ``relu(y + residual)`` as in :func:`numbanorm.kernels.cpu.groupnorm.forward`.
    """
    channels = x3.shape[1] if layout == "cf" else x3.shape[2]
    return groupnorm.forward(layout, x3, y3, channels, weight, bias, eps, residual, relu)


def backward(layout, x3, dy3, dx3, mean, rstd, weight, use_input_stats, y3=None, g3=None):
    """Fill ``dx3`` from (N, C) statistics; return float64 per-channel (dweight, dbias); ReLU's
    mask from ``y3`` as in :func:`numbanorm.kernels.cpu.groupnorm.backward`."""
    return groupnorm.backward(layout, x3, dy3, dx3, mean, rstd, weight, use_input_stats, y3, g3)
