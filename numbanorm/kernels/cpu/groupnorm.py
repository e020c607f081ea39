"""GroupNorm: statistics per (sample, group of channels) over the group's channels and
all positions (Wu & He, 2018); per-channel affine. InstanceNorm is the case of one
channel per group.

Contiguous (N, C, S) input: a (sample, group) block of ``C/G * S`` values is
contiguous, so one fused pass per block computes its moments and writes its output
while the block is in cache (one read of x), and backward likewise reads x and dy once.
Channels-last input: per-(sample, channel) column moments from the shared channel
passes are Chan-merged across a group's channels. Neither uses sums of squares.
"""

import numpy as np
from numba import prange

from ... import config
from ._jit import kernel
from .channels import apply_dx, grad_sums, instance_moments, normalize
from .elementwise import dx_slice, normalize_slice
from .moments import merge, slice_moments
from .sums import slice_grad_sums

__all__ = ["group_moments", "blocks_forward", "blocks_backward", "forward", "backward"]


@kernel
def blocks_forward(x2, y2, seg, weight, bias, eps, block, mean, var, rstd, cast):
    """Fused GroupNorm of contiguous (N*G, C/G*S) blocks: moments, then each channel's segment.

    ``weight`` is float64 (C,), ``bias`` (C,) in x's dtype; ``cast`` (R, 3) is x-dtype scratch
    through which float64 values are rounded by storing them.
    """
    n_blocks, width = x2.shape
    per_group = width // seg
    groups = weight.size // per_group
    for r in prange(n_blocks):
        xr = x2[r]
        yr = y2[r]
        _, mu, m2 = slice_moments(xr, block)
        var[r] = m2 / width
        inv = 1.0 / np.sqrt(var[r] + eps)
        mean[r] = mu
        rstd[r] = inv
        cast[r, 0] = mu
        cast[r, 1] = mu - cast[r, 0]
        first = (r % groups) * per_group
        for j in range(per_group):
            cast[r, 2] = inv * weight[first + j]
            lo = j * seg
            normalize_slice(xr[lo:lo + seg], yr[lo:lo + seg], cast[r, 0], cast[r, 1], cast[r, 2], bias[first + j])


@kernel
def blocks_backward(x2, dy2, dx2, seg, weight, mean, rstd, stats_grad, s_dy, s_dyx, cast):
    """Fused GroupNorm backward of contiguous (N*G, C/G*S) blocks.

    Per block: per-channel ``sum(dy)`` and ``sum(dy * (x - mean))`` into ``s_dy``/``s_dyx``
    (N*G, C/G), then dx of the block while it is in cache. ``weight`` is float64 (C,).
    """
    n_blocks, width = x2.shape
    per_group = width // seg
    groups = weight.size // per_group
    for r in prange(n_blocks):
        xr = x2[r]
        dyr = dy2[r]
        dxr = dx2[r]
        mu = mean[r]
        inv = rstd[r]
        first = (r % groups) * per_group
        s_g = 0.0
        s_gx = 0.0
        for j in range(per_group):
            lo = j * seg
            a, b = slice_grad_sums(xr[lo:lo + seg], dyr[lo:lo + seg], mu)
            s_dy[r, j] = a
            s_dyx[r, j] = b
            s_g += weight[first + j] * a
            s_gx += weight[first + j] * b
        cast[r, 0] = mu
        cast[r, 1] = mu - cast[r, 0]
        cast[r, 2] = -inv * s_g / width if stats_grad else 0.0
        cast[r, 3] = -inv * inv * inv * s_gx / width if stats_grad else 0.0
        for j in range(per_group):
            cast[r, 4] = inv * weight[first + j]
            lo = j * seg
            dx_slice(xr[lo:lo + seg], dyr[lo:lo + seg], dxr[lo:lo + seg], cast[r, 0], cast[r, 1],
                     cast[r, 4], cast[r, 2], cast[r, 3])


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


def _weight64(weight, channels):
    return np.ones(channels) if weight is None else np.asarray(weight, dtype=np.float64)


def _blocks(x3, groups):
    n, c, s = x3.shape
    return x3.reshape(n * groups, (c // groups) * s)


def forward(layout, x3, y3, groups, weight, bias, eps):
    """Normalize with per-(sample, group) statistics; return (count, mean, var, rstd), (N, G) float64."""
    if layout == "cf":
        n, c, s = x3.shape
        x2, y2 = _blocks(x3, groups), _blocks(y3, groups)
        mean, var, rstd = (np.empty((n, groups)) for _ in range(3))
        b = np.zeros(c, x3.dtype) if bias is None else np.ascontiguousarray(bias, dtype=x3.dtype)
        cast = np.empty((x2.shape[0], 3), x3.dtype)
        blocks_forward(x2.size, x2, y2, s, _weight64(weight, c), b, eps, config.BLOCK_ELEMENTS,
                       mean.reshape(-1), var.reshape(-1), rstd.reshape(-1), cast)
        return float(x2.shape[1]), mean, var, rstd
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
    if layout == "cf":
        x2, dy2, dx2 = _blocks(x3, groups), _blocks(dy3, groups), _blocks(dx3, groups)
        s_dy = np.empty((x2.shape[0], per_group))
        s_dyx = np.empty((x2.shape[0], per_group))
        cast = np.empty((x2.shape[0], 5), x3.dtype)
        blocks_backward(x2.size, x2, dy2, dx2, x3.shape[2], _weight64(weight, channels),
                        np.ascontiguousarray(mean.reshape(-1)), np.ascontiguousarray(rstd.reshape(-1)),
                        stats_grad, s_dy, s_dyx, cast)
        s_dy, s_dyx = s_dy.reshape(n, channels), s_dyx.reshape(n, channels)
        return (s_dyx * _per_channel(rstd, channels)).sum(axis=0), s_dy.sum(axis=0)
    mean_c, rstd_c = _per_channel(mean, channels), _per_channel(rstd, channels)
    s_dy, s_dyx = grad_sums(layout, x3, dy3, mean_c)
    s_dy = np.broadcast_to(s_dy, (n, channels))
    s_dyx = np.broadcast_to(s_dyx, (n, channels))
    w = _weight64(weight, channels)
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
