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

The fused epilogue (``relu(y + residual)``) is applied as each segment or plane is written;
backward writes ReLU's masked gradient ``dy * (y > 0)`` in the sums' read (to the residual's
gradient, or to dx as scratch) and forms dx from it while the block or plane is in cache.
"""

import numba
import numpy as np
from numba import prange

from ... import _memory, config
from ._jit import cast_like, kernel
from .channels import apply_dx, grad_sums, instance_moments, normalize
from .elementwise import (
    dx_cols,
    dx_cols_inplace,
    dx_slice,
    dx_slice_affine,
    dx_slice_affine_inplace,
    dx_slice_inplace,
    epilogue_cols,
    epilogue_flag,
    epilogue_slice,
    epilogue_slice_affine,
    normalize_cols,
    normalize_slice,
    normalize_slice_affine,
    store_affine,
)
from .moments import cols_range_moments, merge, merge_range, slice_moments
from .params import param
from .prefetch import prefetch_lines, prefetch_slice
from .subarrays import sub, sub2
from .sums import (
    cols_block_grad_sums,
    cols_block_grad_sums_relu,
    slice_grad_sums,
    slice_grad_sums_relu,
    slice_weighted_grad_sums,
    slice_weighted_grad_sums_relu,
)

__all__ = [
    "group_moments",
    "blocks_forward",
    "blocks_backward",
    "planes_forward",
    "planes_backward",
    "forward",
    "backward",
]


@kernel(threshold="ROWS_PARALLEL_MIN_ELEMENTS")
def blocks_forward(x2, y2, seg, weight, weight_x, bias, bias_x, eps, block, max_ratio, mean, var, rstd, r2, relu,
                   prefetch):
    """Fused GroupNorm of contiguous (N*G, C/G*S) blocks: moments, then each channel's segment.

    ``weight`` and ``bias`` are (C,) of either float dtype, read as float64; ``weight_x`` and
    ``bias_x`` the same values in x's dtype (the same arrays when the dtypes match).
    The epilogue (``relu`` not None: ``+ r2`` unless None, then ReLU when ``relu``) is applied
    as y is written. ``prefetch`` (the cache-line size, or 0): each block starts by prefetching
    the next one (and the residual's).
    """
    n_blocks, width = x2.shape
    per_group = width // seg
    groups = weight.size // per_group
    for r in prange(n_blocks):
        if prefetch and r + 1 < n_blocks:
            prefetch_slice(sub(x2, r + 1), prefetch)
            if r2 is not None:
                prefetch_slice(sub(r2, r + 1), prefetch)
        xr = sub(x2, r)
        yr = sub(y2, r)
        _, mu, m2 = slice_moments(xr, block, max_ratio, True)
        var[r] = m2 / width
        inv = 1.0 / np.sqrt(var[r] + eps)
        mean[r] = mu
        rstd[r] = inv
        hi = cast_like(mu, xr)
        lo_part = mu - hi
        first = (r % groups) * per_group
        if seg == 1:
            # (N, C) input: one value per channel, per-element weight and bias.
            w = weight_x[first:first + per_group]
            b = bias_x[first:first + per_group]
            inv_x = cast_like(inv, xr)
            shift_x = cast_like(-lo_part * inv, xr)
            if relu is None:
                normalize_slice_affine(xr, yr, hi, inv_x, shift_x, w, b)
            elif r2 is None:
                epilogue_slice_affine(xr, None, yr, hi, inv_x, shift_x, w, b, relu)
            else:
                epilogue_slice_affine(xr, sub(r2, r), yr, hi, inv_x, shift_x, w, b, relu)
            continue
        for j in range(per_group):
            scale = inv * np.float64(weight[first + j])
            lo = j * seg
            scale_x = cast_like(scale, xr)
            shift_x = cast_like(np.float64(bias[first + j]) - lo_part * scale, xr)
            if relu is None:
                normalize_slice(xr[lo:lo + seg], yr[lo:lo + seg], hi, scale_x, shift_x)
            elif r2 is None:
                epilogue_slice(xr[lo:lo + seg], None, yr[lo:lo + seg], hi, scale_x, shift_x, relu)
            else:
                epilogue_slice(xr[lo:lo + seg], sub(r2, r)[lo:lo + seg], yr[lo:lo + seg], hi, scale_x, shift_x,
                               relu)


@kernel(threshold="ROWS_PARALLEL_MIN_ELEMENTS")
def blocks_backward(x2, dy2, dx2, seg, weight, weight_x, mean, rstd, use_input_stats, s_dy, s_dyx, y2, g2):
    """Fused GroupNorm backward of contiguous (N*G, C/G*S) blocks.

    Per block: per-channel ``sum(dy)`` and ``sum(dy * (x - mean))`` into ``s_dy``/``s_dyx``
    (N*G, C/G), then dx of the block while it is in cache,
    ``rstd * ((w_c * dy - mean(g)) - (x - mean) * rstd**2 * mean(g * (x - mean)))`` with
    ``g = w_c * dy`` over the block. ``weight`` is (C,) of either float dtype, read as float64;
    ``weight_x`` the same values in x's dtype.
    With ``y2`` (not None: a ReLU epilogue's output), ``dy`` is ``dy * (y2 > 0)``, written to
    ``g2`` in the sums' read (to ``dx2`` when ``g2`` is None, and dx formed there in place).
    """
    n_blocks, width = x2.shape
    per_group = width // seg
    groups = weight.size // per_group
    for r in prange(n_blocks):
        xr = sub(x2, r)
        dyr = sub(dy2, r)
        dxr = sub(dx2, r)
        mu = mean[r]
        inv = rstd[r]
        first = (r % groups) * per_group
        if seg == 1:
            # (N, C) input: one value per channel, per-element weight.
            w = weight_x[first:first + per_group]
            s_dy[r] = 0.0
            s_dyx[r] = 0.0
            if y2 is None:
                s_g, s_gx = slice_weighted_grad_sums(xr, dyr, w, mu, 1.0, sub(s_dyx, r), sub(s_dy, r))
            elif g2 is None:
                s_g, s_gx = slice_weighted_grad_sums_relu(xr, dyr, sub(y2, r), dxr, w, mu, 1.0, sub(s_dyx, r),
                                                          sub(s_dy, r))
            else:
                s_g, s_gx = slice_weighted_grad_sums_relu(xr, dyr, sub(y2, r), sub(g2, r), w, mu, 1.0, sub(s_dyx, r),
                                                          sub(s_dy, r))
            b = s_g / width if use_input_stats else 0.0
            c = inv * inv * s_gx / width if use_input_stats else 0.0
            if y2 is None:
                dx_slice_affine(xr, dyr, dxr, mu, w, b, c, inv)
            elif g2 is None:
                dx_slice_affine_inplace(xr, dxr, mu, w, b, c, inv)
            else:
                dx_slice_affine(xr, sub(g2, r), dxr, mu, w, b, c, inv)
            continue
        s_g = 0.0
        s_gx = 0.0
        for j in range(per_group):
            lo = j * seg
            if y2 is None:
                a, b = slice_grad_sums(xr[lo:lo + seg], dyr[lo:lo + seg], mu)
            elif g2 is None:
                a, b = slice_grad_sums_relu(xr[lo:lo + seg], dyr[lo:lo + seg], sub(y2, r)[lo:lo + seg],
                                            dxr[lo:lo + seg], mu)
            else:
                a, b = slice_grad_sums_relu(xr[lo:lo + seg], dyr[lo:lo + seg], sub(y2, r)[lo:lo + seg],
                                            sub(g2, r)[lo:lo + seg], mu)
            s_dy[r, j] = a
            s_dyx[r, j] = b
            s_g += np.float64(weight[first + j]) * a
            s_gx += np.float64(weight[first + j]) * b
        b = s_g / width if use_input_stats else 0.0
        c = inv * inv * s_gx / width if use_input_stats else 0.0
        for j in range(per_group):
            lo = j * seg
            w_j = np.float64(weight[first + j])
            if y2 is None:
                dx_slice(xr[lo:lo + seg], dyr[lo:lo + seg], dxr[lo:lo + seg], mu, w_j, b, c, inv)
            elif g2 is None:
                dx_slice_inplace(xr[lo:lo + seg], dxr[lo:lo + seg], mu, w_j, b, c, inv)
            else:
                dx_slice(xr[lo:lo + seg], sub(g2, r)[lo:lo + seg], dxr[lo:lo + seg], mu, w_j, b, c, inv)


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


def normalize_groups(layout, x3, y3, mean, rstd, weight, bias, residual=None, relu=False):
    """``y = (x - mean_g) * rstd_g * weight_c + bias_c`` for (N, G) statistics (then the epilogue)."""
    channels = x3.shape[1] if layout == "cf" else x3.shape[2]
    normalize(layout, x3, y3, _per_channel(mean, channels), _per_channel(rstd, channels), weight, bias,
              residual, relu)


@kernel
def planes_forward(x3, y3, groups, weight, bias, eps, max_ratio, planes_per_item, mean, var, rstd, params, cols, r3,
                   relu):
    """Fused GroupNorm of channels-last (N, S, C) planes, parallel over runs of samples.

    Per plane: column moments (:func:`~numbanorm.kernels.cpu.moments.cols_range_moments`), Chan-merged over each group's
    channels, then plane n is normalized with per-channel (hi, scale, shift)
    rows ``params[:, n]`` of ``params`` (3, N, C), in x's dtype, with the epilogue (``relu``
    not None: ``+ r3`` unless None, then ReLU when ``relu``). ``weight`` and ``bias`` are float64 (C,);
    ``cols`` (work items, 4, C) float64 is each work item's scratch.
    """
    n_planes, _, n_ch = x3.shape
    per_group = n_ch // groups
    n_items = -(-n_planes // planes_per_item)
    for item in prange(n_items):
        col = sub(cols, item)
        for n in range(item * planes_per_item, min((item + 1) * planes_per_item, n_planes)):
            xp = sub(x3, n)
            count = cols_range_moments(xp, sub(col, 0), sub(col, 1), col[2:], max_ratio)
            for g in range(groups):
                total, mu, m2 = merge_range(count, sub(col, 0), sub(col, 1), g * per_group, (g + 1) * per_group)
                v = m2 / total
                inv = 1.0 / np.sqrt(v + eps)
                mean[n, g] = mu
                var[n, g] = v
                rstd[n, g] = inv
                for c in range(g * per_group, (g + 1) * per_group):
                    store_affine(params, n, c, mu, inv * weight[c], bias[c])
            if relu is None:
                normalize_cols(xp, sub(y3, n), sub2(params, 0, n), sub2(params, 1, n), sub2(params, 2, n))
            elif r3 is None:
                epilogue_cols(xp, None, sub(y3, n), sub2(params, 0, n), sub2(params, 1, n), sub2(params, 2, n),
                              relu)
            else:
                epilogue_cols(xp, sub(r3, n), sub(y3, n), sub2(params, 0, n), sub2(params, 1, n),
                              sub2(params, 2, n), relu)


@kernel
def planes_backward(x3, dy3, dx3, weight, mean, rstd, use_input_stats, planes_per_item, s_dy, s_dyx, params, cols,
                    y3, g3):
    """Fused GroupNorm backward of channels-last (N, S, C) planes, parallel over runs of samples.

    Per plane: per-channel gradient sums into ``s_dy``/``s_dyx`` (N, C), per-group
    coefficients, then dx of plane n with per-channel float64 (m, a, b, c, s) rows
    ``params[:, n]`` of ``params`` (5, N, C); ``cols`` (work items, C) float64 is each
    work item's scratch. With ``y3`` (not None), ReLU's masked gradient as in
    :func:`blocks_backward`.
    """
    n_planes, n_rows, n_ch = x3.shape
    groups = mean.shape[1]
    per_group = n_ch // groups
    width = n_rows * per_group
    n_items = -(-n_planes // planes_per_item)
    for item in prange(n_items):
        col_mean = sub(cols, item)
        for n in range(item * planes_per_item, min((item + 1) * planes_per_item, n_planes)):
            for c in range(n_ch):
                col_mean[c] = mean[n, c // per_group]
            s_dy[n] = 0.0
            s_dyx[n] = 0.0
            if y3 is None:
                cols_block_grad_sums(sub(x3, n), sub(dy3, n), col_mean, sub(s_dy, n), sub(s_dyx, n))
            elif g3 is None:
                cols_block_grad_sums_relu(sub(x3, n), sub(dy3, n), sub(y3, n), sub(dx3, n), col_mean, sub(s_dy, n),
                                          sub(s_dyx, n))
            else:
                cols_block_grad_sums_relu(sub(x3, n), sub(dy3, n), sub(y3, n), sub(g3, n), col_mean, sub(s_dy, n),
                                          sub(s_dyx, n))
            for g in range(groups):
                inv = rstd[n, g]
                s_g = 0.0
                s_gx = 0.0
                for c in range(g * per_group, (g + 1) * per_group):
                    s_g += weight[c] * s_dy[n, c]
                    s_gx += weight[c] * s_dyx[n, c]
                b = s_g / width if use_input_stats else 0.0
                cc = inv * inv * s_gx / width if use_input_stats else 0.0
                for c in range(g * per_group, (g + 1) * per_group):
                    params[0, n, c] = mean[n, g]
                    params[1, n, c] = weight[c]
                    params[2, n, c] = b
                    params[3, n, c] = cc
                    params[4, n, c] = inv
            q0, q1, q2 = sub2(params, 0, n), sub2(params, 1, n), sub2(params, 2, n)
            q3, q4 = sub2(params, 3, n), sub2(params, 4, n)
            if y3 is None:
                dx_cols(sub(x3, n), sub(dy3, n), sub(dx3, n), q0, q1, q2, q3, q4)
            elif g3 is None:
                dx_cols_inplace(sub(x3, n), sub(dx3, n), q0, q1, q2, q3, q4)
            else:
                dx_cols(sub(x3, n), sub(g3, n), sub(dx3, n), q0, q1, q2, q3, q4)


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


def forward(layout, x3, y3, groups, weight, bias, eps, residual=None, relu=False):
    """Normalize with per-(sample, group) statistics; return (count, mean, var, rstd), (N, G) float64.

    The epilogue ``relu(y + residual)`` (``residual`` a view like x3, or None) is applied as y
    is written.
    """
    if layout == "cf":
        n, c, s = x3.shape
        x2, y2 = _blocks(x3, groups), _blocks(y3, groups)
        stats = np.empty((3, n * groups))
        r2 = None if residual is None else _blocks(residual, groups)
        w_x, b_x = param(weight, c, 1.0, x3.dtype), param(bias, c, 0.0, x3.dtype)
        blocks_forward(x2.size, x2, y2, s, w_x if weight is None else weight, w_x, b_x if bias is None else bias, b_x,
                       eps, config.BLOCK_ELEMENTS, config.SHIFT_RATIO_MAX, stats[0], stats[1], stats[2], r2,
                       epilogue_flag(residual, relu), prefetch_lines(x2.nbytes))
        mean, var, rstd = stats.reshape(3, n, groups)
        return float(x2.shape[1]), mean, var, rstd
    n, s, c = x3.shape
    w = param(weight, c, 1.0)
    b = param(bias, c, 0.0)
    if _fused_planes(x3):
        mean, var, rstd = np.empty((3, n, groups))
        params = _memory.empty((3, n, c), x3.dtype, work=x3.size)
        per_item = _planes_per_item(n)
        cols = _memory.empty((-(-n // per_item), 4, c), work=x3.size)
        planes_forward(x3.size, x3, y3, groups, w, b, eps, config.SHIFT_RATIO_MAX, per_item, mean, var, rstd, params,
                       cols, residual, epilogue_flag(residual, relu))
        return float(s * (c // groups)), mean, var, rstd
    count, mean, var = group_moments(layout, x3, groups)
    rstd = 1.0 / np.sqrt(var + eps)
    normalize_groups(layout, x3, y3, mean, rstd, weight, bias, residual, relu)
    return count, mean, var, rstd


def backward(layout, x3, dy3, dx3, mean, rstd, weight, use_input_stats, y3=None, g3=None):
    """Fill ``dx3``; return float64 per-channel (dweight, dbias).

    For a group of m values with :math:`\\hat x = (x - \\mu)\\,r` and :math:`g = dy \\cdot w_c`:
    ``dx = r * (g - mean(g) - xhat * mean(g * xhat))``; without ``use_input_stats`` (fixed
    statistics, e.g. running ones) only ``r * g``. With ``y3`` (the output of a ReLU
    epilogue) dy is ``dy * (y3 > 0)``, written to ``g3`` (``dx3`` when None) in the sums' read.
    """
    channels = x3.shape[1] if layout == "cf" else x3.shape[2]
    n, groups = mean.shape
    per_group = channels // groups
    if layout == "cf":
        x2, dy2, dx2 = _blocks(x3, groups), _blocks(dy3, groups), _blocks(dx3, groups)
        sums = np.empty((2, x2.shape[0], per_group))
        s_dy, s_dyx = sums
        y2 = None if y3 is None else _blocks(y3, groups)
        g2 = None if g3 is None else _blocks(g3, groups)
        w_x = param(weight, channels, 1.0, x3.dtype)
        blocks_backward(x2.size, x2, dy2, dx2, x3.shape[2], w_x if weight is None else weight, w_x,
                        np.ascontiguousarray(mean.reshape(-1)), np.ascontiguousarray(rstd.reshape(-1)),
                        bool(use_input_stats), s_dy, s_dyx, y2, g2)
        dweight = (s_dyx.reshape(n, groups, per_group) * rstd[:, :, None]).sum(axis=0).reshape(channels)
        return dweight, s_dy.reshape(n, channels).sum(axis=0)
    w = param(weight, channels, 1.0)
    if _fused_planes(x3):
        s_dy = _memory.empty((n, channels), work=x3.size)
        s_dyx = _memory.empty((n, channels), work=x3.size)
        params = _memory.empty((5, n, channels), work=x3.size)
        per_item = _planes_per_item(n)
        cols = _memory.empty((-(-n // per_item), channels), work=x3.size)
        planes_backward(x3.size, x3, dy3, dx3, w, np.ascontiguousarray(mean), np.ascontiguousarray(rstd),
                        bool(use_input_stats), per_item, s_dy, s_dyx, params, cols, y3, g3)
        return (s_dyx * _per_channel(rstd, channels)).sum(axis=0), s_dy.sum(axis=0)
    mean_c, rstd_c = _per_channel(mean, channels), _per_channel(rstd, channels)
    if y3 is not None:
        g3 = dx3 if g3 is None else g3
    s_dy, s_dyx = grad_sums(layout, x3, dy3, mean_c, y3, g3)
    if y3 is not None:
        dy3 = g3  # dx is formed from the masked gradient
    s_dy = np.broadcast_to(s_dy, (n, channels))
    s_dyx = np.broadcast_to(s_dyx, (n, channels))
    if use_input_stats:
        count = x3.size / (n * groups)
        s_g = (s_dy * w).reshape(n, groups, per_group).sum(axis=2)
        s_gx = (s_dyx * w).reshape(n, groups, per_group).sum(axis=2)
        b = _per_channel(s_g / count, channels)
        c = _per_channel(rstd ** 2 * s_gx / count, channels)
    else:
        b = c = np.zeros_like(mean_c)
    apply_dx(layout, x3, dy3, dx3, mean_c, np.broadcast_to(w, mean_c.shape), b, c, rstd_c)
    return (s_dyx * rstd_c).sum(axis=0), s_dy.sum(axis=0)
