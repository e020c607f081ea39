"""InstanceNorm: statistics per (sample, channel) over positions (Ulyanov et al., 2017).

Native per-instance passes: GroupNorm's drivers with one channel per group, so the
(n, c) moments are used as they are (no merge) in both layouts.
"""

import numpy as np

from . import groupnorm

__all__ = ["forward_train", "forward_eval", "backward"]


def _channels(layout, x3):
    return x3.shape[1] if layout == "cf" else x3.shape[2]


def forward_train(layout, x3, y3, weight, bias, eps):
    """Normalize with instance statistics; return (count, mean, var, rstd) as (N, C) float64."""
    return groupnorm.forward(layout, x3, y3, _channels(layout, x3), weight, bias, eps)


def forward_eval(layout, x3, y3, running_mean, running_var, weight, bias, eps):
    """Normalize with running statistics (C,); return (mean, rstd) broadcast to (N, C)."""
    n = x3.shape[0]
    mean = np.broadcast_to(np.asarray(running_mean, dtype=np.float64), (n, _channels(layout, x3)))
    rstd = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    rstd = np.broadcast_to(rstd, mean.shape)
    groupnorm.normalize_groups(layout, x3, y3, mean, rstd, weight, bias)
    return np.ascontiguousarray(mean), np.ascontiguousarray(rstd)


def backward(layout, x3, dy3, dx3, mean, rstd, weight, stats_grad=True):
    """Fill ``dx3``; return float64 per-channel (dweight, dbias)."""
    return groupnorm.backward(layout, x3, dy3, dx3, mean, rstd, weight, stats_grad)
