"""InstanceNorm on CUDA (Ulyanov et al., 2017): the twin of :mod:`numbanorm.kernels.cpu.instancenorm`.

GroupNorm's drivers with one channel per group. With running statistics (evaluation)
the pass is BatchNorm's per-channel normalize, which :mod:`numbanorm.functional` calls.
"""

from . import groupnorm

__all__ = ["forward", "backward"]


def forward(layout, x3, y3, weight, bias, eps):
    """Normalize with instance statistics; return (count, mean, var, rstd), the last three (N, C) float64."""
    return groupnorm.forward(layout, x3, y3, x3.shape[1], weight, bias, eps)


def backward(layout, x3, dy3, dx3, mean, rstd, weight, use_input_stats):
    """Fill ``dx3`` from (N, C) statistics; return float64 (C,) (dweight, dbias) device arrays."""
    return groupnorm.backward(layout, x3, dy3, dx3, mean, rstd, weight, use_input_stats)
