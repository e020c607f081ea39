"""BatchNorm: per-channel statistics over samples and positions (Ioffe & Szegedy, 2015).

Drivers over the shared channel passes; every array here is a C-contiguous 3-D view
(see :mod:`numbanorm.kernels.cpu.channels`) and every statistic is float64. The
partial results are exposed before they are finished — the moments before the
variance is formed, the gradient sums before dx — so that SyncBatchNorm can merge
them across processes between the two halves of each pass.

Without a merge in between, :func:`forward_train` and :func:`backward` run both halves
in one pass per channel on contiguous (N, C, S) input: a channel's N planes are read
for its statistics and read again for its output while they are still in cache, so x
comes from memory once (the two-pass path reads it twice). Same arithmetic in the same
order as the split drivers.

Small planes (S under ``config.SMALL_PLANE``: a ResNet's 7x7 and 4x4 stages) would end
every plane in a merge: a channel's statistics come from two plain passes over its N
short planes (:func:`~numbanorm.kernels.cpu.moments.strided_moments`), with no per-plane
merge. Tiny planes (S under ``config.WIDE_PLANE``: 4x4, 3x3) would also make every pass
a loop of rows too short to vectorize: such input, when it runs serially, is normalized
as a channels-last problem instead, the (N, C*S) rows read whole with one lane per
(channel, position) column.

The fused epilogue: the forward drivers take ``residual`` (a view like x3, or None) and
``relu`` and apply them as y is written; the backward drivers take the forward's output
``y3`` and write ReLU's masked gradient ``dy * (y3 > 0)`` to ``g3`` (dx3 when None) in the
gradient-sums read, and dx is computed from it while it is in cache.
"""

import numba
import numpy as np
from numba import prange

from ... import _memory, config
from ._jit import cast_like, kernel
from .channels import apply_dx_packed, channel_moments, normalize_packed
from .channels import grad_sums as _grad_sums
from .elementwise import (
    dx_slice,
    dx_slice_inplace,
    epilogue_flag,
    epilogue_slice,
    normalize_slice,
    normalize_stats,
    pack_channel_dx,
    pack_stats,
    strided_dx,
)
from .moments import chan_merge, channels_moments, slice_moments, strided_moments
from .params import param
from .prefetch import prefetch_lines, prefetch_slice
from .subarrays import sub2
from .sums import slice_grad_sums, slice_grad_sums_relu, strided_grad_sums

__all__ = ["moments", "normalize", "grad_sums", "apply_dx", "forward_train", "backward", "dweight"]


def _channels(layout, x3):
    return x3.shape[1] if layout == "cf" else x3.shape[2]


def _parallel(x3):
    return config.PARALLEL and x3.size >= config.PARALLEL_MIN_ELEMENTS


def _wide(layout, x3):
    """Contiguous (N, C, S) input with tiny planes, run serially, as ``("cl", (N, 1, C*S))``,
    and S; else (None, 1). (A parallel run splits channels over threads instead: the wide
    view's few long rows leave nothing to split.)"""
    if layout == "cf" and 1 < x3.shape[2] < config.WIDE_PLANE and not _parallel(x3):
        n, c, s = x3.shape
        return x3.reshape(n, 1, c * s), s
    return None, 1


def _like_wide(a, wide):
    return None if a is None else a.reshape(wide.shape)


def _columns(values, s):
    """Per-channel packed rows (K, 1, C) repeated for the S columns of each channel: (K, 1, C*S)."""
    return values if s == 1 else np.repeat(values, s, axis=2)


def _short(layout, x3):
    """Contiguous (N, C, S) input with small planes (S under ``config.SMALL_PLANE``)."""
    return layout == "cf" and x3.shape[2] < config.SMALL_PLANE


def moments(layout, x3):
    """Per-channel float64 ``(count, mean (C,), M2 (C,))`` over samples and positions.

    Small contiguous planes (S under ``config.SMALL_PLANE``) take each channel's N planes in
    two strided passes (:func:`strided_moments`), also where the other passes run on the wide
    view: its per-column moments would leave S Chan merges per channel, a division each,
    which for a small batch costs many times the reads themselves.
    """
    if _short(layout, x3):
        n, c, s = x3.shape
        mean, m2 = np.empty(c), np.empty(c)
        channels_moments(x3.size, x3, mean, m2)
        return float(n * s), mean, m2
    return channel_moments(layout, x3)


def normalize(layout, x3, y3, mean, m2, count, weight, bias, eps, residual=None, relu=False):
    """``y = (x - mean) * rstd * weight + bias`` with ``var = m2 / count``; return float64 (var, rstd).

    Batch moments come as ``(mean, M2, count)``, running statistics as
    ``(running_mean, running_var, 1)``; the per-channel params are packed in one kernel.
    The epilogue ``relu(y + residual)`` (either part optional) is applied as y is written.
    """
    channels = _channels(layout, x3)
    var = np.empty(channels)
    rstd = np.empty(channels)
    wide, s = _wide(layout, x3)
    if wide is None and not _parallel(x3):
        normalize_stats(x3, y3, layout == "cl", mean, m2, float(count), eps, param(weight, channels, 1.0, x3.dtype),
                        param(bias, channels, 0.0, x3.dtype), var, rstd, residual, epilogue_flag(residual, relu))
        return var, rstd
    q = _memory.empty((3, 1, channels), x3.dtype, work=x3.size)
    pack_stats(mean, m2, float(count), eps, param(weight, channels, 1.0, x3.dtype),
               param(bias, channels, 0.0, x3.dtype), q, var, rstd)
    if wide is None:
        normalize_packed(layout, x3, y3, q, residual, relu)
    else:
        normalize_packed("cl", wide, _like_wide(y3, wide), _columns(q, s), _like_wide(residual, wide), relu)
    return var, rstd


def grad_sums(layout, x3, dy3, mean, y3=None, g3=None):
    """Per-channel float64 ``(sum(dy), sum(dy * (x - mean)))``.

    With ``y3`` (the forward's output behind a ReLU), the sums of ``g = dy * (y3 > 0)``,
    which is written to ``g3`` for :func:`apply_dx`.
    """
    wide, s = _wide(layout, x3)
    if wide is None:
        s_dy, s_dyx = _grad_sums(layout, x3, dy3, mean, y3, g3)
        return s_dy[0], s_dyx[0]
    c = x3.shape[1]
    s_dy, s_dyx = _grad_sums("cl", wide, _like_wide(dy3, wide), np.repeat(mean, s), _like_wide(y3, wide),
                             _like_wide(g3, wide))
    return s_dy.reshape(c, s).sum(axis=1), s_dyx.reshape(c, s).sum(axis=1)


def apply_dx(layout, x3, dy3, dx3, mean, rstd, weight, s_dy, s_dyx, count, use_input_stats):
    """Fill ``dx3`` from the gradient sums of ``count`` values per channel; return float64 dweight.

    With ``xhat = (x - mean) * rstd``,
    ``dx = rstd * weight * (dy - mean(dy) - xhat * mean(dy * xhat))`` when the
    statistics came from the batch (``use_input_stats``), else ``rstd * weight * dy``.
    ``dy3`` may be ``dx3`` itself (a masked gradient written there by :func:`grad_sums`).
    """
    channels = mean.size
    q = _memory.empty((5, 1, channels), work=x3.size)
    dw = np.empty(channels)
    pack_channel_dx(mean, rstd, param(weight, channels, 1.0, x3.dtype), s_dy, s_dyx, float(count),
                    bool(use_input_stats), q, dw)
    wide, s = _wide(layout, x3)
    if wide is None:
        apply_dx_packed(layout, x3, dy3, dx3, q)
    else:
        apply_dx_packed("cl", wide, _like_wide(dy3, wide), _like_wide(dx3, wide), _columns(q, s))
    return dw


def dweight(s_dyx, rstd):
    """float64 ``dweight = rstd * sum(dy * (x - mean))`` per channel."""
    return s_dyx * rstd


@kernel
def channels_forward(x3, y3, weight, bias, eps, block, max_ratio, short, mean, m2, var, rstd, r3, relu, prefetch):
    """Fused BatchNorm of contiguous (N, C, S) input, parallel over channels.

    Per channel: the moments of its N planes, Chan-merged in plane order (as
    :func:`channel_moments` merges them; with ``short`` planes, two plain passes as in
    :func:`moments`), then the planes normalized with
    ``(x - hi) * scale + shift'`` while they are in cache, with the epilogue (``relu`` not
    None: ``+ r3`` unless None, then ReLU when ``relu``) in the same write. ``weight``/``bias`` are (C,)
    in x's dtype; float64 ``mean``, ``m2``, ``var``, ``rstd`` (C,) are filled. ``prefetch`` (the
    cache-line size, or 0): each plane's statistics start by prefetching the channel's next plane,
    its normalize by prefetching the next channel's first plane (a thread's next channel), and
    each plane's write by prefetching the residual's next plane.
    """
    n_samples, n_channels, _ = x3.shape
    for c in prange(n_channels):
        if short:
            count, mu, q = strided_moments(x3, c)
        else:
            count, mu, q = 0.0, 0.0, 0.0
            for n in range(n_samples):
                if prefetch and n + 1 < n_samples:
                    prefetch_slice(sub2(x3, n + 1, c), prefetch)
                k, p_mu, p_q = slice_moments(sub2(x3, n, c), block, max_ratio, True)
                count, mu, q = chan_merge(count, mu, q, k, p_mu, p_q)
        v = q / count
        r = 1.0 / np.sqrt(v + eps)
        mean[c] = mu
        m2[c] = q
        var[c] = v
        rstd[c] = r
        scale = r * weight[c]
        hi = cast_like(mu, x3)
        scale_x = cast_like(scale, x3)
        shift_x = cast_like(np.float64(bias[c]) - (mu - hi) * scale, x3)
        if prefetch and not short and c + 1 < n_channels:
            prefetch_slice(sub2(x3, 0, c + 1), prefetch)
        for n in range(n_samples):
            if prefetch and r3 is not None and n + 1 < n_samples:
                prefetch_slice(sub2(r3, n + 1, c), prefetch)
            if relu is None:
                normalize_slice(sub2(x3, n, c), sub2(y3, n, c), hi, scale_x, shift_x)
            elif r3 is None:
                epilogue_slice(sub2(x3, n, c), None, sub2(y3, n, c), hi, scale_x, shift_x, relu)
            else:
                epilogue_slice(sub2(x3, n, c), sub2(r3, n, c), sub2(y3, n, c), hi, scale_x, shift_x, relu)


@kernel
def channels_backward(x3, dy3, dx3, mean, rstd, weight, use_input_stats, short, s_dy, s_dyx, y3, g3, prefetch):
    """Fused BatchNorm backward of contiguous (N, C, S) input, parallel over channels.

    Per channel: ``sum(dy)`` and ``sum(dy * (x - mean))`` over its N planes into
    float64 ``s_dy``/``s_dyx``, then dx of the planes while x and dy are in cache
    (``short`` planes, without an epilogue: each pass one loop nest over the channel).
    With ``y3`` (not None: a ReLU epilogue's output), ``dy`` is ``dy * (y3 > 0)``, written
    to ``g3`` in the sums' read (to ``dx3`` when ``g3`` is None, and dx formed there in place).
    ``prefetch`` as in :func:`channels_forward`, for x, dy (and y3).
    """
    n_samples, n_channels, length = x3.shape
    count = float(n_samples * length)
    nest = short and y3 is None
    for c in prange(n_channels):
        mu = mean[c]
        if nest:
            a, b = strided_grad_sums(x3, dy3, c, mu)
        else:
            a = 0.0
            b = 0.0
            for n in range(n_samples):
                if prefetch and n + 1 < n_samples:
                    prefetch_slice(sub2(x3, n + 1, c), prefetch)
                    prefetch_slice(sub2(dy3, n + 1, c), prefetch)
                    if y3 is not None:
                        prefetch_slice(sub2(y3, n + 1, c), prefetch)
                if y3 is None:
                    p, q = slice_grad_sums(sub2(x3, n, c), sub2(dy3, n, c), mu)
                elif g3 is None:
                    p, q = slice_grad_sums_relu(sub2(x3, n, c), sub2(dy3, n, c), sub2(y3, n, c), sub2(dx3, n, c), mu)
                else:
                    p, q = slice_grad_sums_relu(sub2(x3, n, c), sub2(dy3, n, c), sub2(y3, n, c), sub2(g3, n, c), mu)
                a += p
                b += q
        s_dy[c] = a
        s_dyx[c] = b
        r = rstd[c]
        mean_dy = a / count if use_input_stats else 0.0
        coef = r * r * b / count if use_input_stats else 0.0
        scale = r * weight[c]
        if nest:
            strided_dx(x3, dy3, dx3, c, mu, 1.0, mean_dy, coef, scale)
            continue
        if prefetch and c + 1 < n_channels:
            prefetch_slice(sub2(x3, 0, c + 1), prefetch)
            prefetch_slice(sub2(dy3, 0, c + 1), prefetch)
        for n in range(n_samples):
            if y3 is None:
                dx_slice(sub2(x3, n, c), sub2(dy3, n, c), sub2(dx3, n, c), mu, 1.0, mean_dy, coef, scale)
            elif g3 is None:
                dx_slice_inplace(sub2(x3, n, c), sub2(dx3, n, c), mu, 1.0, mean_dy, coef, scale)
            else:
                dx_slice(sub2(x3, n, c), sub2(g3, n, c), sub2(dx3, n, c), mu, 1.0, mean_dy, coef, scale)


def _fused(layout, x3):
    """One pass per channel: contiguous input of planes that are not small, a channel that
    stays in cache between its two reads, and enough channels to keep every thread busy."""
    if layout != "cf" or _wide(layout, x3)[0] is not None:
        return False
    n, c, s = x3.shape
    threads = numba.get_num_threads() if _parallel(x3) else 1
    return c >= 2 * threads and n * s * x3.itemsize <= config.FUSED_CHANNEL_BYTES


def forward_train(layout, x3, y3, weight, bias, eps, residual=None, relu=False):
    """Normalize with batch statistics; return float64 ``(count, mean, M2, var, rstd)`` per channel.

    :func:`moments` then :func:`normalize` (with the epilogue ``relu(y + residual)`` when
    asked), fused into one pass per channel where the layout allows.
    """
    if not _fused(layout, x3):
        count, mean, m2 = moments(layout, x3)
        var, rstd = normalize(layout, x3, y3, mean, m2, count, weight, bias, eps, residual, relu)
        return count, mean, m2, var, rstd
    n, c, s = x3.shape
    mean, m2, var, rstd = (np.empty(c) for _ in range(4))
    channels_forward(x3.size, x3, y3, param(weight, c, 1.0, x3.dtype), param(bias, c, 0.0, x3.dtype), eps,
                     config.BLOCK_ELEMENTS, config.SHIFT_RATIO_MAX, _short(layout, x3), mean, m2, var, rstd, residual,
                     epilogue_flag(residual, relu), prefetch_lines(x3.nbytes))
    return float(n * s), mean, m2, var, rstd


def backward(layout, x3, dy3, dx3, mean, rstd, weight, use_input_stats, y3=None, g3=None):
    """Fill ``dx3``; return float64 (dweight, dbias): :func:`grad_sums` then :func:`apply_dx`,
    fused into one pass per channel where the layout allows.

    With ``y3`` (the output of a ReLU epilogue) the gradient is ``g = dy * (y3 > 0)``, written
    to ``g3`` (the residual's gradient; ``dx3`` when None) by the sums' read and read back by dx's.
    """
    if not _fused(layout, x3):
        if y3 is not None:
            g3 = dx3 if g3 is None else g3
        s_dy, s_dyx = grad_sums(layout, x3, dy3, mean, y3, g3)
        count = x3.size // _channels(layout, x3)
        return apply_dx(layout, x3, dy3 if y3 is None else g3, dx3, mean, rstd, weight, s_dy, s_dyx, count,
                        use_input_stats), s_dy
    c = x3.shape[1]
    s_dy, s_dyx = np.empty(c), np.empty(c)
    channels_backward(x3.size, x3, dy3, dx3, np.ascontiguousarray(mean), np.ascontiguousarray(rstd),
                      param(weight, c, 1.0, x3.dtype), bool(use_input_stats), _short(layout, x3), s_dy, s_dyx, y3,
                      g3, prefetch_lines(x3.nbytes))
    return dweight(s_dyx, rstd), s_dy
