"""GroupNorm: statistics per (sample, group of channels) over the group's channels and
all positions (Wu & He, 2018); per-channel affine. InstanceNorm is the case of one
channel per group.

Contiguous (N, C, S) input: a (sample, group) block of ``C/G * S`` values is
contiguous, so one fused pass per block computes its moments and writes its output
while the block is in cache (one read of x), and backward likewise reads x and dy once.
Channels-last (N, S, C) input: per-(sample, channel) column moments are Chan-merged
across a group's channels. With at least one sample per thread, one fused pass per
sample plane computes the moments and writes the output while the plane is in cache;
otherwise the shared channel passes parallelize over row chunks. Neither path uses
sums of squares.
"""

import numba
import numpy as np
from numba import prange

from ... import _memory, config
from ._jit import kernel
from .channels import apply_dx, grad_sums, instance_moments, normalize, per_channel64
from .elementwise import (
    dx_cols,
    dx_slice,
    dx_slice_affine,
    normalize_cols,
    normalize_slice,
    normalize_slice_affine,
    store_affine,
    store_dx,
)
from .moments import chan_merge, cols_range_moments, merge, slice_moments
from .sums import cols_block_grad_sums, slice_grad_sums, slice_weighted_grad_sums

__all__ = [
    "group_moments",
    "blocks_forward",
    "blocks_backward",
    "planes_forward",
    "planes_backward",
    "forward",
    "backward",
]


@kernel
def blocks_forward(x2, y2, seg, weight, weight_x, bias, bias_x, eps, block, max_ratio, mean, var, rstd, cast):
    """Fused GroupNorm of contiguous (N*G, C/G*S) blocks: moments, then each channel's segment.

    ``weight`` and ``bias`` are float64 (C,), ``weight_x`` and ``bias_x`` their x-dtype copies; ``cast`` (R, 3) is
    x-dtype scratch through which float64 values are rounded by storing them.
    """
    n_blocks, width = x2.shape
    per_group = width // seg
    groups = weight.size // per_group
    for r in prange(n_blocks):
        xr = x2[r]
        yr = y2[r]
        _, mu, m2 = slice_moments(xr, block, max_ratio)
        var[r] = m2 / width
        inv = 1.0 / np.sqrt(var[r] + eps)
        mean[r] = mu
        rstd[r] = inv
        cast[r, 0] = mu
        lo_part = mu - cast[r, 0]
        first = (r % groups) * per_group
        if seg == 1:
            # (N, C) input: one value per channel, per-element weight and bias.
            cast[r, 1] = inv
            cast[r, 2] = -lo_part * inv
            normalize_slice_affine(xr, yr, cast[r, 0], cast[r, 1], cast[r, 2], weight_x[first:first + per_group],
                                   bias_x[first:first + per_group])
            continue
        for j in range(per_group):
            scale = inv * weight[first + j]
            cast[r, 1] = scale
            cast[r, 2] = bias[first + j] - lo_part * scale
            lo = j * seg
            normalize_slice(xr[lo:lo + seg], yr[lo:lo + seg], cast[r, 0], cast[r, 1], cast[r, 2])


@kernel
def blocks_backward(x2, dy2, dx2, seg, weight, weight_x, mean, rstd, stats_grad, s_dy, s_dyx, cast):
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
        cast[r, 0] = mu
        lo_part = mu - cast[r, 0]
        if seg == 1:
            # (N, C) input: one value per channel, per-element weight.
            w = weight[first:first + per_group]
            s_dy[r] = 0.0
            s_dyx[r] = 0.0
            s_g, s_gx = slice_weighted_grad_sums(xr, dyr, w, mu, 1.0, s_dyx[r], s_dy[r])
            b = -inv * s_g / width if stats_grad else 0.0
            c = -inv * inv * inv * s_gx / width if stats_grad else 0.0
            cast[r, 1] = inv
            cast[r, 2] = b - c * lo_part
            cast[r, 3] = c
            dx_slice_affine(xr, dyr, dxr, cast[r, 0], cast[r, 1], weight_x[first:first + per_group],
                            cast[r, 2], cast[r, 3])
            continue
        s_g = 0.0
        s_gx = 0.0
        for j in range(per_group):
            lo = j * seg
            a, b = slice_grad_sums(xr[lo:lo + seg], dyr[lo:lo + seg], mu)
            s_dy[r, j] = a
            s_dyx[r, j] = b
            s_g += weight[first + j] * a
            s_gx += weight[first + j] * b
        b = -inv * s_g / width if stats_grad else 0.0
        c = -inv * inv * inv * s_gx / width if stats_grad else 0.0
        cast[r, 2] = b - c * lo_part
        cast[r, 3] = c
        for j in range(per_group):
            cast[r, 1] = inv * weight[first + j]
            lo = j * seg
            dx_slice(xr[lo:lo + seg], dyr[lo:lo + seg], dxr[lo:lo + seg], cast[r, 0], cast[r, 1], cast[r, 2],
                     cast[r, 3])


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
    normalize(layout, x3, y3, _per_channel(mean, channels), _per_channel(rstd, channels), weight, bias)


@kernel
def planes_forward(x3, y3, groups, weight, bias, eps, planes_per_item, mean, var, rstd, params, cols):
    """Fused GroupNorm of channels-last (N, S, C) planes, parallel over runs of samples.

    Per plane: column moments (lane-wise Welford), Chan-merged over each group's
    channels, then plane n is normalized with per-channel (hi, scale, shift)
    rows ``params[:, n]`` of ``params`` (3, N, C), in x's dtype. ``weight`` and ``bias`` are float64 (C,);
    ``cols`` (work items, 4, C) float64 is each work item's scratch.
    """
    n_planes, _, n_ch = x3.shape
    per_group = n_ch // groups
    n_items = -(-n_planes // planes_per_item)
    for item in prange(n_items):
        col = cols[item]
        for n in range(item * planes_per_item, min((item + 1) * planes_per_item, n_planes)):
            xp = x3[n]
            count = cols_range_moments(xp, col[0], col[1], col[2:])
            for g in range(groups):
                total, mu, m2 = 0.0, 0.0, 0.0
                for c in range(g * per_group, (g + 1) * per_group):
                    total, mu, m2 = chan_merge(total, mu, m2, count, col[0, c], col[1, c])
                v = m2 / total
                inv = 1.0 / np.sqrt(v + eps)
                mean[n, g] = mu
                var[n, g] = v
                rstd[n, g] = inv
                for c in range(g * per_group, (g + 1) * per_group):
                    store_affine(params, n, c, mu, inv * weight[c], bias[c])
            normalize_cols(xp, y3[n], params[0, n], params[1, n], params[2, n])


@kernel
def planes_backward(x3, dy3, dx3, weight, mean, rstd, stats_grad, planes_per_item, s_dy, s_dyx, params, cols):
    """Fused GroupNorm backward of channels-last (N, S, C) planes, parallel over runs of samples.

    Per plane: per-channel gradient sums into ``s_dy``/``s_dyx`` (N, C), per-group
    coefficients, then dx of plane n with per-channel (hi, a, b, c) rows ``params[:, n]``
    of ``params`` (4, N, C); ``cols`` (work items, C) float64 is each work item's scratch.
    """
    n_planes, n_rows, n_ch = x3.shape
    groups = mean.shape[1]
    per_group = n_ch // groups
    width = n_rows * per_group
    n_items = -(-n_planes // planes_per_item)
    for item in prange(n_items):
        col_mean = cols[item]
        for n in range(item * planes_per_item, min((item + 1) * planes_per_item, n_planes)):
            for c in range(n_ch):
                col_mean[c] = mean[n, c // per_group]
            s_dy[n] = 0.0
            s_dyx[n] = 0.0
            cols_block_grad_sums(x3[n], dy3[n], col_mean, s_dy[n], s_dyx[n])
            for g in range(groups):
                inv = rstd[n, g]
                s_g = 0.0
                s_gx = 0.0
                for c in range(g * per_group, (g + 1) * per_group):
                    s_g += weight[c] * s_dy[n, c]
                    s_gx += weight[c] * s_dyx[n, c]
                b = -inv * s_g / width if stats_grad else 0.0
                cc = -inv * inv * inv * s_gx / width if stats_grad else 0.0
                for c in range(g * per_group, (g + 1) * per_group):
                    store_dx(params, n, c, mean[n, g], inv * weight[c], b, cc)
            dx_cols(x3[n], dy3[n], dx3[n], params[0, n], params[1, n], params[2, n], params[3, n])


def _planes_per_item(n_planes):
    """Samples per work item: a few items per thread (each with its own scratch)."""
    items = numba.get_num_threads() * config.CHUNKS_PER_THREAD
    return max(1, -(-n_planes // items))


def _fused_planes(x3):
    """Channels-last planes run fused when every thread gets a sample (or it runs serially)."""
    return x3.size < config.PARALLEL_MIN_ELEMENTS or x3.shape[0] >= numba.get_num_threads()


def _blocks(x3, groups):
    n, c, s = x3.shape
    return x3.reshape(n * groups, (c // groups) * s)


def forward(layout, x3, y3, groups, weight, bias, eps):
    """Normalize with per-(sample, group) statistics; return (count, mean, var, rstd), (N, G) float64."""
    if layout == "cf":
        n, c, s = x3.shape
        x2, y2 = _blocks(x3, groups), _blocks(y3, groups)
        mean, var, rstd = (np.empty((n, groups)) for _ in range(3))
        b = per_channel64(bias, c, 0.0)
        cast = np.empty((x2.shape[0], 3), x3.dtype)
        w = per_channel64(weight, c, 1.0)
        blocks_forward(x2.size, x2, y2, s, w, w.astype(x3.dtype), b, b.astype(x3.dtype), eps, config.BLOCK_ELEMENTS,
                       config.SHIFT_RATIO_MAX, mean.reshape(-1), var.reshape(-1), rstd.reshape(-1), cast)
        return float(x2.shape[1]), mean, var, rstd
    n, s, c = x3.shape
    if _fused_planes(x3):
        mean, var, rstd = (np.empty((n, groups)) for _ in range(3))
        b = per_channel64(bias, c, 0.0)
        params = _memory.empty((3, n, c), x3.dtype, work=x3.size)
        per_item = _planes_per_item(n)
        cols = _memory.empty((-(-n // per_item), 4, c), work=x3.size)
        planes_forward(x3.size, x3, y3, groups, per_channel64(weight, c, 1.0), b, eps, per_item,
                       mean, var, rstd, params, cols)
        return float(s * (c // groups)), mean, var, rstd
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
        cast = np.empty((x2.shape[0], 4), x3.dtype)
        w = per_channel64(weight, channels, 1.0)
        blocks_backward(x2.size, x2, dy2, dx2, x3.shape[2], w, w.astype(x3.dtype),
                        np.ascontiguousarray(mean.reshape(-1)), np.ascontiguousarray(rstd.reshape(-1)),
                        stats_grad, s_dy, s_dyx, cast)
        s_dy, s_dyx = s_dy.reshape(n, channels), s_dyx.reshape(n, channels)
        return (s_dyx * _per_channel(rstd, channels)).sum(axis=0), s_dy.sum(axis=0)
    if _fused_planes(x3):
        s_dy = _memory.empty((n, channels), work=x3.size)
        s_dyx = _memory.empty((n, channels), work=x3.size)
        params = _memory.empty((4, n, channels), x3.dtype, work=x3.size)
        per_item = _planes_per_item(n)
        cols = _memory.empty((-(-n // per_item), channels), work=x3.size)
        planes_backward(x3.size, x3, dy3, dx3, per_channel64(weight, channels, 1.0), np.ascontiguousarray(mean),
                        np.ascontiguousarray(rstd), stats_grad, per_item, s_dy, s_dyx, params, cols)
        return (s_dyx * _per_channel(rstd, channels)).sum(axis=0), s_dy.sum(axis=0)
    mean_c, rstd_c = _per_channel(mean, channels), _per_channel(rstd, channels)
    s_dy, s_dyx = grad_sums(layout, x3, dy3, mean_c)
    s_dy = np.broadcast_to(s_dy, (n, channels))
    s_dyx = np.broadcast_to(s_dyx, (n, channels))
    w = per_channel64(weight, channels, 1.0)
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
