"""BatchNorm on CUDA: per-channel statistics over samples and positions (Ioffe & Szegedy, 2015).

The twin of :mod:`numbanorm.kernels.cpu.batchnorm`: every array is a C-contiguous
(N, C, S) device array and every statistic float64. A channel's values are shared
by up to ``config.CUDA_MAX_PARTIALS`` blocks whose partial moments are Chan-merged.
"""

from .channels import backward as _channel_backward
from .channels import normalize, stats_from_running, update_running
from .moments import channel_stats

__all__ = ["forward_train", "forward_eval", "backward"]


def forward_train(x3, y3, weight, bias, eps, momentum=0.0, running_mean=None, running_var=None):
    """Normalize with batch statistics, update the running ones in place (if given);
    return (count, mean, invstd) with (C,) float64 device arrays."""
    count, mean, var, invstd = channel_stats(x3, False, eps)
    normalize(x3, y3, mean, invstd, 1, weight, bias)
    if running_mean is not None:
        update_running(mean, var, count, momentum, running_mean, running_var)
    c = x3.shape[1]
    return count, mean.reshape(c), invstd.reshape(c)


def forward_eval(x3, y3, running_mean, running_var, weight, bias, eps):
    """One pass ``y = (x - running_mean) * weight / sqrt(running_var + eps) + bias``;
    return (mean, invstd) as (C,) float64 device arrays."""
    mean, invstd = stats_from_running(running_mean, running_var, eps, 1)
    normalize(x3, y3, mean, invstd, 1, weight, bias)
    c = x3.shape[1]
    return mean.reshape(c), invstd.reshape(c)


def backward(x3, dy3, dx3, mean, invstd, weight, training, count):
    """Fill ``dx3`` and return (dweight, dbias) as (C,) device arrays in x's dtype.

    ``dx = weight * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))`` with batch
    statistics (``training``), else ``weight * invstd * dy``: GroupNorm's backward with
    one channel per group and one row of statistics for the whole batch.
    """
    c = x3.shape[1]
    return _channel_backward(x3, dy3, dx3, mean.reshape(1, c), invstd.reshape(1, c), 1, weight, count,
                             training)
