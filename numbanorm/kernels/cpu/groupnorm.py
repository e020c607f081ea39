"""GroupNorm: statistics per (sample, group of channels) over the group's channels and
all positions (Wu & He, 2018); per-channel affine. InstanceNorm is the case of one
channel per group.

Per-(sample, channel) moments from the shared channel passes are Chan-merged across
a group's channels, so contiguous and channels-last inputs share every step and
neither uses sums of squares.
"""

import numpy as np

from .channels import apply_dx, grad_sums, instance_moments, normalize
from .moments import merge

__all__ = ["group_moments", "forward", "backward"]


def group_moments(layout, x3, groups):
    """Return (count per group, mean (N, G), biased var (N, G)) in float64."""
    count, mean, m2 = instance_moments(layout, x3)
    n, c = mean.shape
    per_group = c // groups
    if per_group == 1:
        return count, mean, m2 / count
    counts = np.full((n * groups, per_group), count)
    total, mean_g, m2_g = merge(counts, mean.reshape(n * groups, per_group), m2.reshape(n * groups, per_group))
    return total[0], mean_g.reshape(n, groups), m2_g.reshape(n, groups) / total[0]


def _per_channel(values, channels):
    """Repeat per-group (N, G) values over each group's channels -> (N, C)."""
    return np.repeat(values, channels // values.shape[1], axis=1)


def normalize_groups(layout, x3, y3, mean, rstd, weight, bias):
    """``y = (x - mean_g) * rstd_g * weight_c + bias_c`` for (N, G) statistics."""
    channels = x3.shape[1] if layout == "cf" else x3.shape[2]
    mean_c, rstd_c = _per_channel(mean, channels), _per_channel(rstd, channels)
    scale = rstd_c if weight is None else rstd_c * np.asarray(weight, dtype=np.float64)
    shift = np.zeros(channels) if bias is None else np.asarray(bias, dtype=np.float64)
    normalize(layout, x3, y3, mean_c, scale, np.broadcast_to(shift, mean_c.shape))


def forward(layout, x3, y3, groups, weight, bias, eps):
    """Normalize with per-(sample, group) statistics; return (count, mean, var, rstd), (N, G) float64."""
    count, mean, var = group_moments(layout, x3, groups)
    rstd = 1.0 / np.sqrt(var + eps)
    normalize_groups(layout, x3, y3, mean, rstd, weight, bias)
    return count, mean, var, rstd


def backward(layout, x3, dy3, dx3, mean, rstd, weight, stats_grad=True):
    """Fill ``dx3``; return float64 per-channel (dweight, dbias).

    For a group of m values with :math:`\\hat x = (x - \\mu)\\,r` and :math:`g = dy \\cdot w_c`:
    ``dx = r * (g - mean(g) - xhat * mean(g * xhat))``; without ``stats_grad`` (fixed
    statistics, e.g. running ones) only ``r * g``.
    """
    channels = x3.shape[1] if layout == "cf" else x3.shape[2]
    n, groups = mean.shape
    per_group = channels // groups
    mean_c, rstd_c = _per_channel(mean, channels), _per_channel(rstd, channels)
    s_dy, s_dyx = grad_sums(layout, x3, dy3, mean_c)
    s_dy = np.broadcast_to(s_dy, (n, channels))
    s_dyx = np.broadcast_to(s_dyx, (n, channels))
    w = np.ones(channels) if weight is None else np.asarray(weight, dtype=np.float64)
    a = rstd_c * w
    if stats_grad:
        count = x3.size / (n * groups)
        s_g = (s_dy * w).reshape(n, groups, per_group).sum(axis=2)
        s_gx = (s_dyx * w).reshape(n, groups, per_group).sum(axis=2)
        b = _per_channel(-rstd * s_g / count, channels)
        c = _per_channel(-rstd ** 3 * s_gx / count, channels)
    else:
        b = c = np.zeros_like(a)
    apply_dx(layout, x3, dy3, dx3, mean_c, a, b, c)
    return (s_dyx * rstd_c).sum(axis=0), s_dy.sum(axis=0)
