"""InstanceNorm on CUDA (Ulyanov et al., 2017): the twin of :mod:`numbanorm.kernels.cpu.instancenorm`.

GroupNorm's drivers with one channel per group. With running statistics (evaluation)
the pass is BatchNorm's per-channel normalize, which :mod:`numbanorm.functional` calls.
"""

from . import groupnorm

__all__ = ["forward", "backward"]


def forward(layout, x3, y3, weight, bias, eps, residual=None, relu=False):
    """Normalize with instance statistics (then the epilogue); return (count, mean, var, rstd),
    the last three (N, C) float64."""
    return groupnorm.forward(layout, x3, y3, x3.shape[1], weight, bias, eps, residual, relu)


def backward(layout, x3, dy3, dx3, mean, rstd, weight, use_input_stats, y3=None, g3=None):
    """Fill ``dx3`` from (N, C) statistics; return float64 (C,) (dweight, dbias) device arrays;
    ReLU's mask from ``y3`` as in :func:`numbanorm.kernels.cuda.groupnorm.backward`."""
    return groupnorm.backward(layout, x3, dy3, dx3, mean, rstd, weight, use_input_stats, y3, g3)
