"""GroupNorm and InstanceNorm on CUDA (Wu & He, 2018; Ulyanov et al., 2017).

The twin of :mod:`numbanorm.kernels.cpu.groupnorm` and ``instancenorm``. A group's
values are contiguous in (N, C, S) memory, so GroupNorm's statistics are the
per-sample "channel" statistics of the (N, G, C/G * S) view; InstanceNorm is the
case of one channel per group. Normalization and dx use per-(n, c) coefficients.
"""

from .channels import backward as _channel_backward
from .channels import normalize, stats_from_running, update_running
from .moments import channel_stats

__all__ = ["forward", "backward", "instance_forward_train", "instance_forward_eval", "instance_backward"]


def forward(x3, y3, groups, weight, bias, eps):
    """Normalize with per-(sample, group) statistics; return (count, mean, var, rstd),
    the last three (N, G) float64 device arrays."""
    n, c, s = x3.shape
    per_group = c // groups
    count, mean, var, rstd = channel_stats(x3.reshape(n, groups, per_group * s), True, eps)
    normalize(x3, y3, mean, rstd, per_group, weight, bias)
    return count, mean, var, rstd


def backward(x3, dy3, dx3, groups, mean, rstd, weight, stats_grad=True):
    """Fill ``dx3``; return (dweight, dbias), (C,) device arrays in x's dtype.

    Per group of m values with ``xhat = (x - mean) * r`` and ``g = dy * w_c``:
    ``dx = r * (g - mean(g) - xhat * mean(g * xhat))``; only ``r * g`` without
    ``stats_grad`` (fixed statistics).
    """
    n, c, s = x3.shape
    per_group = c // groups
    return _channel_backward(x3, dy3, dx3, mean, rstd, per_group, weight, per_group * s, stats_grad)


def instance_forward_train(x3, y3, weight, bias, eps, momentum=0.0, running_mean=None, running_var=None):
    """Normalize with instance statistics, update running statistics (if given) with their
    batch average; return (mean, rstd), (N, C) float64 device arrays."""
    count, mean, var, rstd = forward(x3, y3, x3.shape[1], weight, bias, eps)
    if running_mean is not None:
        update_running(mean, var, count, momentum, running_mean, running_var)
    return mean, rstd


def instance_forward_eval(x3, y3, running_mean, running_var, weight, bias, eps):
    """Normalize with running statistics (C,); return (mean, rstd) broadcast to (N, C)."""
    mean, rstd = stats_from_running(running_mean, running_var, eps, x3.shape[0])
    normalize(x3, y3, mean, rstd, 1, weight, bias)
    return mean, rstd


def instance_backward(x3, dy3, dx3, mean, rstd, weight, stats_grad=True):
    """Fill ``dx3``; return (dweight, dbias) in x's dtype."""
    return backward(x3, dy3, dx3, x3.shape[1], mean, rstd, weight, stats_grad)
