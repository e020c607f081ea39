"""Element-wise normalize and dx loops.

Forward: the mean is split into a hi/lo pair: for float32 data ``mean_hi`` is the
float32 nearest the float64 mean and ``mean_lo = mean - mean_hi`` the part that
rounding lost. The output is formed as ``(x - mean_hi) * scale + shift'`` with
``shift' = shift - mean_lo * scale`` computed in float64 when the parameters are
packed: ``x - mean_hi`` is exact (Sterbenz) wherever the cancellation is severe and
the fused multiply-add rounds once, so the result carries the mean at about twice
float32 precision at no extra cost per element. It is never ``x * scale + shift''``,
which cancels for data far from zero. ``reassoc`` could reorder these expressions,
so the loops use ``config.FASTMATH_ELEMENTWISE``.

Backward: ``dx = s * ((a * dy - b) - (x - m) * c)`` with float64 coefficients per
slice (or per column) and the bracket evaluated in float64, rounded once at the
store: ``a * dy - b`` is ``g - mean(g)`` with ``g = a * dy`` (``a`` the weight where
it varies inside a group, else 1) and ``(x - m) * c`` is ``xhat * mean(g * xhat)``.
A group of one element (LayerNorm over one value) then gives exactly
``g - g = 0``: the dx helpers are compiled with ``config.FASTMATH_DX``, without
``contract``, which would fuse ``a * dy - b`` into one multiply-add that keeps the
product's rounding error.

Fused epilogue (``act(norm(x) + residual)``, cuDNN's BN_ADD_ACTIVATION): the ``epilogue_*``
loops add the residual and apply ReLU to each value as it is normalized, in x's dtype and in
that order, so ``y`` is what the separate passes would store, from one write. Backward takes
ReLU's mask from the saved output: the gradient sums (:mod:`numbanorm.kernels.cpu.sums`) write
``g = dy * (y > 0)`` where it is needed, and the ``dx_*_inplace`` loops turn a buffer holding
``g`` into dx (a loop that reads and writes one array at the same index vectorizes; the same
loop through two names of one array does not, as LLVM cannot rule out other overlaps).
ReLU is written ``0 if v < 0 else v``: NaN propagates as in PyTorch.
"""

import numpy as np
from numba import prange

from ._jit import cast_like, dx_helper, elementwise_helper, kernel
from .subarrays import sub, sub2

__all__ = [
    "normalize_slice",
    "normalize_slice_affine",
    "normalize_slice_scaled",
    "normalize_cols",
    "epilogue_slice",
    "epilogue_slice_affine",
    "epilogue_cols",
    "dx_slice",
    "strided_dx",
    "dx_slice_affine",
    "dx_cols",
    "dx_slice_inplace",
    "dx_slice_affine_inplace",
    "dx_cols_inplace",
    "dx_slice_affine_sum",
    "store_affine",
    "pack_affine",
    "pack_stats",
    "update_running",
    "pack_dx",
    "pack_channel_dx",
    "epilogue_flag",
    "normalize_rows",
    "dx_rows",
    "normalize_planes",
    "dx_planes",
]


@elementwise_helper
def normalize_slice(x, y, mean_hi, scale, shift):
    """``y = (x - mean_hi) * scale + shift`` over a 1-D slice (``shift`` holds the lo part)."""
    for i in range(x.size):
        y[i] = (x[i] - mean_hi) * scale + shift


@elementwise_helper
def normalize_slice_affine(x, y, mean_hi, rstd, shift, weight, bias):
    """``y = ((x - mean_hi) * rstd + shift) * weight + bias`` with per-element weight/bias.

    ``shift = -mean_lo * rstd`` carries the lo part of the mean.
    """
    for i in range(x.size):
        y[i] = ((x[i] - mean_hi) * rstd + shift) * weight[i] + bias[i]


@elementwise_helper
def normalize_slice_scaled(x, y, rstd, weight):
    """``y = x * rstd * weight`` with per-element weight: RMSNorm's rows, which have no mean
    and no bias (:func:`normalize_slice_affine` with both zero, in the same rounding order)."""
    for i in range(x.size):
        y[i] = x[i] * rstd * weight[i]


@elementwise_helper
def normalize_cols(x2, y2, mean_hi, scale, shift):
    """Per-column ``y = (x - mean_hi) * scale + shift`` over a (rows, C) block.

    Row ``i`` of the first half, then row ``i`` of the second: two sequential streams
    for the prefetcher. Whole rows, not both halves in one loop over columns: when the
    halves lie a multiple of 4 KiB apart (and x and y at the same page offset), the
    store to one half's y and the next load from the other half's x share their low
    address bits, and the CPU's 4K-aliasing check stalls that load (up to 1.8x slower).
    """
    rows = x2.shape[0]
    half = rows // 2
    for i in range(half):
        for r in (i, half + i):
            xr = sub(x2, r)
            yr = sub(y2, r)
            for c in range(xr.size):
                yr[c] = (xr[c] - mean_hi[c]) * scale[c] + shift[c]
    for i in range(2 * half, rows):
        xr = sub(x2, i)
        yr = sub(y2, i)
        for c in range(xr.size):
            yr[c] = (xr[c] - mean_hi[c]) * scale[c] + shift[c]


@elementwise_helper
def epilogue_slice(x, r, y, mean_hi, scale, shift, relu):
    """:func:`normalize_slice`, then ``+ r`` (a 1-D slice, or None) and ReLU (``relu``), per value."""
    zero = cast_like(0.0, y)
    if relu:
        for i in range(x.size):
            v = (x[i] - mean_hi) * scale + shift
            if r is not None:
                v = v + r[i]
            y[i] = zero if v < zero else v
    else:
        for i in range(x.size):
            v = (x[i] - mean_hi) * scale + shift
            if r is not None:
                v = v + r[i]
            y[i] = v


@elementwise_helper
def epilogue_slice_affine(x, r, y, mean_hi, rstd, shift, weight, bias, relu):
    """:func:`normalize_slice_affine`, then ``+ r`` (a 1-D slice, or None) and ReLU (``relu``)."""
    zero = cast_like(0.0, y)
    if relu:
        for i in range(x.size):
            v = ((x[i] - mean_hi) * rstd + shift) * weight[i] + bias[i]
            if r is not None:
                v = v + r[i]
            y[i] = zero if v < zero else v
    else:
        for i in range(x.size):
            v = ((x[i] - mean_hi) * rstd + shift) * weight[i] + bias[i]
            if r is not None:
                v = v + r[i]
            y[i] = v


@elementwise_helper
def epilogue_cols(x2, r2, y2, mean_hi, scale, shift, relu):
    """:func:`normalize_cols`, then ``+ r`` (a (rows, C) block, or None) and ReLU (``relu``)."""
    zero = cast_like(0.0, y2)
    for i in range(x2.shape[0]):
        xr = sub(x2, i)
        yr = sub(y2, i)
        if relu:
            for c in range(xr.size):
                v = (xr[c] - mean_hi[c]) * scale[c] + shift[c]
                if r2 is not None:
                    v = v + r2[i, c]
                yr[c] = zero if v < zero else v
        else:
            for c in range(xr.size):
                v = (xr[c] - mean_hi[c]) * scale[c] + shift[c]
                if r2 is not None:
                    v = v + r2[i, c]
                yr[c] = v


@elementwise_helper
def store_affine(q, p, j, mu, scale, shift):
    """``q[:, p, j] = (mean_hi, scale, shift - mean_lo * scale)`` in q's dtype (float64 arithmetic)."""
    hi = cast_like(mu, q)
    q[0, p, j] = hi
    q[1, p, j] = scale
    q[2, p, j] = shift - (mu - hi) * scale


@elementwise_helper
def pack_affine(mean, rstd, weight, bias, q):
    """Fill ``q`` (3, P, C) in x's dtype with (mean_hi, scale, shift').

    ``scale = rstd * weight`` and ``shift' = bias - (mean - mean_hi) * scale`` in float64;
    ``mean``/``rstd`` are float64 (P, C), ``weight``/``bias`` float64 (C,).
    """
    for p in range(mean.shape[0]):
        for c in range(mean.shape[1]):
            store_affine(q, p, c, mean[p, c], rstd[p, c] * weight[c], bias[c])


@elementwise_helper
def pack_stats(mean, m2, count, eps, weight, bias, q, var, rstd):
    """Statistics to packed params: ``var = m2 / count``, ``rstd = 1 / sqrt(var + eps)``.

    ``mean``/``m2`` (C,) of any float dtype (batch moments, or running mean and
    variance with ``count = 1``); ``weight``/``bias`` (C,). Fills float64
    ``var``/``rstd`` (C,) and ``q`` (3, 1, C) as :func:`pack_affine` does.
    """
    for c in range(mean.size):
        mu = np.float64(mean[c])
        v = m2[c] / count
        r = 1.0 / np.sqrt(v + eps)
        var[c] = v
        rstd[c] = r
        store_affine(q, 0, c, mu, r * weight[c], np.float64(bias[c]))


@elementwise_helper
def update_running(running_mean, running_var, mean, var, momentum, unbias):
    """``r = (1 - momentum) * r + momentum * s`` in float64, s averaged over the P rows of
    (P, C) ``mean``/``var``, the variance scaled by ``unbias``. The CUDA twin sums in the
    same order, so both give the same running statistics."""
    planes = mean.shape[0]
    for c in range(running_mean.size):
        s_mean = 0.0
        s_var = 0.0
        for p in range(planes):
            s_mean += mean[p, c]
            s_var += var[p, c]
        running_mean[c] = (1.0 - momentum) * np.float64(running_mean[c]) + momentum * (s_mean / planes)
        running_var[c] = (1.0 - momentum) * np.float64(running_var[c]) + momentum * (s_var / planes * unbias)


def epilogue_flag(residual, relu):
    """The kernels' ``relu`` argument: None without an epilogue, else whether ReLU follows the add.

    None is a type of its own to Numba, so a kernel's ``relu is None`` branch is resolved when
    it is compiled: the build without an epilogue holds the plain loops alone, as before the
    epilogue existed.
    """
    return None if residual is None and not relu else bool(relu)


@kernel
def normalize_rows(x3, y3, q, r3, relu):
    """Channels-first pass: each (n, c) row of a (N, C, S) array, params ``q`` (3, P, C), P in {1, N}.

    The epilogue (``relu`` not None, see :func:`epilogue_flag`): ``r3`` (like ``x3``, or None)
    added and ReLU applied when ``relu``, as each value is written.
    """
    n_samples, n_channels, _ = x3.shape
    per_sample = q.shape[1] > 1
    for r in prange(n_samples * n_channels):
        n = r // n_channels
        c = r - n * n_channels
        p = n if per_sample else 0
        if relu is None:
            normalize_slice(sub2(x3, n, c), sub2(y3, n, c), q[0, p, c], q[1, p, c], q[2, p, c])
        elif r3 is None:
            epilogue_slice(sub2(x3, n, c), None, sub2(y3, n, c), q[0, p, c], q[1, p, c], q[2, p, c], relu)
        else:
            epilogue_slice(sub2(x3, n, c), sub2(r3, n, c), sub2(y3, n, c), q[0, p, c], q[1, p, c], q[2, p, c],
                           relu)


@kernel
def normalize_planes(x3, y3, q, rows_per_chunk, nchunks, r3, relu):
    """Channels-last pass over (B, R, C) arrays, plane b with params ``q[:, b]`` (or ``q[:, 0]``);
    the epilogue (``r3``, ``relu``) as in :func:`normalize_rows`."""
    n_planes, n_rows, _ = x3.shape
    per_plane = q.shape[1] > 1
    for item in prange(n_planes * nchunks):
        b = item // nchunks
        lo = (item - b * nchunks) * rows_per_chunk
        hi = min(lo + rows_per_chunk, n_rows)
        p = b if per_plane else 0
        if relu is None:
            normalize_cols(x3[b, lo:hi], y3[b, lo:hi], q[0, p], q[1, p], q[2, p])
        elif r3 is None:
            epilogue_cols(x3[b, lo:hi], None, y3[b, lo:hi], q[0, p], q[1, p], q[2, p], relu)
        else:
            epilogue_cols(x3[b, lo:hi], r3[b, lo:hi], y3[b, lo:hi], q[0, p], q[1, p], q[2, p], relu)


#: The serial builds, called from :func:`normalize_stats` (compiled code calls a dispatcher, not a Kernel).
_normalize_rows_serial = normalize_rows.serial
_normalize_planes_serial = normalize_planes.serial


@elementwise_helper
def normalize_stats(x3, y3, cl, mean, m2, count, eps, weight, bias, var, rstd, r3, relu):
    """:func:`pack_stats`, then the serial normalize pass of x3's layout, in one call.

    ``cl``: x3 is channels-last (N, S, C), normalized as the one (1, N*S, C) plane of
    :func:`normalize_planes`; else channels-first (N, C, S), by :func:`normalize_rows`.
    The epilogue (``r3``, ``relu``) as there. For inputs too small for the parallel build:
    their two dispatches, the packed params' allocation and the views between them took
    longer than the pass itself.
    """
    q = np.empty((3, 1, mean.size), x3.dtype)
    pack_stats(mean, m2, count, eps, weight, bias, q, var, rstd)
    if cl:
        n, s, c = x3.shape
        xp = x3.reshape((1, n * s, c))
        yp = y3.reshape((1, n * s, c))
        if r3 is None:
            _normalize_planes_serial(xp, yp, q, n * s, 1, None, relu)
        else:
            _normalize_planes_serial(xp, yp, q, n * s, 1, r3.reshape((1, n * s, c)), relu)
    else:
        _normalize_rows_serial(x3, y3, q, r3, relu)


@dx_helper
def dx_slice(x, dy, dx, m, a, b, c, s):
    """``dx = s * ((a * dy - b) - (x - m) * c)`` over a 1-D slice, the bracket in float64."""
    for i in range(x.size):
        dx[i] = s * ((a * np.float64(dy[i]) - b) - (np.float64(x[i]) - m) * c)


@dx_helper
def strided_dx(x3, dy3, dx3, k, m, a, b, c, s):
    """:func:`dx_slice` over channel ``k`` of C-contiguous (N, C, S) arrays, its N slices
    in one loop nest."""
    n, _, length = x3.shape
    for i in range(n):
        xr = sub2(x3, i, k)
        gr = sub2(dy3, i, k)
        dr = sub2(dx3, i, k)
        for j in range(length):
            dr[j] = s * ((a * np.float64(gr[j]) - b) - (np.float64(xr[j]) - m) * c)


@dx_helper
def dx_slice_affine(x, dy, dx, m, weight, b, c, s):
    """:func:`dx_slice` with a per-element ``a = weight[i]`` (LayerNorm, GroupNorm of (N, C))."""
    for i in range(x.size):
        dx[i] = s * ((np.float64(weight[i]) * np.float64(dy[i]) - b) - (np.float64(x[i]) - m) * c)


@dx_helper
def dx_cols(x2, dy2, dx2, m, a, b, c, s):
    """Per-column :func:`dx_slice` over a (rows, C) block with float64 (C,) coefficient rows.

    Each sweep takes row ``i`` of the first half and row ``i`` of the second, so the five
    coefficient rows are loaded once per two rows (the float64 bracket makes the loop
    load-bound in cache), and each half is a sequential stream for the prefetcher.
    """
    rows = x2.shape[0]
    half = rows // 2
    xa, xb, ga, gb, da, db = x2[:half], x2[half:2 * half], dy2[:half], dy2[half:2 * half], dx2[:half], \
        dx2[half:2 * half]
    for i in range(half):
        x0, x1, g0, g1, d0, d1 = sub(xa, i), sub(xb, i), sub(ga, i), sub(gb, i), sub(da, i), sub(db, i)
        for j in range(x0.size):
            mj, aj, bj, cj, sj = m[j], a[j], b[j], c[j], s[j]
            d0[j] = sj * ((aj * np.float64(g0[j]) - bj) - (np.float64(x0[j]) - mj) * cj)
            d1[j] = sj * ((aj * np.float64(g1[j]) - bj) - (np.float64(x1[j]) - mj) * cj)
    for i in range(2 * half, rows):
        xr = sub(x2, i)
        dyr = sub(dy2, i)
        dxr = sub(dx2, i)
        for j in range(xr.size):
            dxr[j] = s[j] * ((a[j] * np.float64(dyr[j]) - b[j]) - (np.float64(xr[j]) - m[j]) * c[j])


@dx_helper
def dx_slice_inplace(x, g, m, a, b, c, s):
    """:func:`dx_slice` with ``dy`` read from ``g``, which receives dx."""
    for i in range(x.size):
        g[i] = s * ((a * np.float64(g[i]) - b) - (np.float64(x[i]) - m) * c)


@dx_helper
def dx_slice_affine_inplace(x, g, m, weight, b, c, s):
    """:func:`dx_slice_affine` with ``dy`` read from ``g``, which receives dx."""
    for i in range(x.size):
        g[i] = s * ((np.float64(weight[i]) * np.float64(g[i]) - b) - (np.float64(x[i]) - m) * c)


@dx_helper
def dx_slice_affine_sum(x, dy, dsum, dx, m, weight, b, c, s):
    """:func:`dx_slice_affine` plus ``dsum`` (a gradient reaching x by another path), in float64,
    rounded once (LayerNorm's skip form: the gradient of ``x + residual``)."""
    for i in range(x.size):
        bracket = (np.float64(weight[i]) * np.float64(dy[i]) - b) - (np.float64(x[i]) - m) * c
        dx[i] = s * bracket + np.float64(dsum[i])


@dx_helper
def dx_cols_inplace(x2, g2, m, a, b, c, s):
    """:func:`dx_cols` with ``dy`` read from ``g2``, which receives dx (the same half-and-half sweep)."""
    rows = x2.shape[0]
    half = rows // 2
    xa, xb, ga, gb = x2[:half], x2[half:2 * half], g2[:half], g2[half:2 * half]
    for i in range(half):
        x0, x1, g0, g1 = sub(xa, i), sub(xb, i), sub(ga, i), sub(gb, i)
        for j in range(x0.size):
            mj, aj, bj, cj, sj = m[j], a[j], b[j], c[j], s[j]
            g0[j] = sj * ((aj * np.float64(g0[j]) - bj) - (np.float64(x0[j]) - mj) * cj)
            g1[j] = sj * ((aj * np.float64(g1[j]) - bj) - (np.float64(x1[j]) - mj) * cj)
    for i in range(2 * half, rows):
        xr = sub(x2, i)
        gr = sub(g2, i)
        for j in range(xr.size):
            gr[j] = s[j] * ((a[j] * np.float64(gr[j]) - b[j]) - (np.float64(xr[j]) - m[j]) * c[j])


@elementwise_helper
def pack_dx(m, a, b, c, s, q):
    """Fill float64 ``q`` (5, P, C) with the dx coefficients (m, a, b, c, s) from (P, C) arrays."""
    for p in range(m.shape[0]):
        for j in range(m.shape[1]):
            q[0, p, j] = m[p, j]
            q[1, p, j] = a[p, j]
            q[2, p, j] = b[p, j]
            q[3, p, j] = c[p, j]
            q[4, p, j] = s[p, j]


@elementwise_helper
def pack_channel_dx(mean, rstd, weight, s_dy, s_dyx, count, use_input_stats, q, dweight):
    """BatchNorm's per-channel dx coefficients from its gradient sums, into float64 ``q`` (5, 1, C).

    With ``m = count`` values per channel, ``b = sum(dy) / m`` and
    ``c = rstd**2 * sum(dy * (x - mean)) / m`` when the statistics came from the batch
    (``use_input_stats``), else 0; ``a = 1`` and ``s = rstd * weight`` (the weight is a
    constant of the channel, so it scales the bracket). Also fills
    ``dweight = rstd * sum(dy * (x - mean))`` (float64 (C,)).
    """
    for j in range(mean.size):
        r = rstd[j]
        dweight[j] = s_dyx[j] * r
        q[0, 0, j] = mean[j]
        q[1, 0, j] = 1.0
        q[2, 0, j] = s_dy[j] / count if use_input_stats else 0.0
        q[3, 0, j] = r * r * s_dyx[j] / count if use_input_stats else 0.0
        q[4, 0, j] = r * weight[j]


@kernel
def dx_rows(x3, dy3, dx3, q):
    """Channels-first dx: each (n, c) row of (N, C, S) arrays, float64 coefficients ``q`` (5, P, C).

    ``dy3`` None: dy is read from ``dx3`` (ReLU's masked gradient written there), in place.
    """
    n_samples, n_channels, _ = x3.shape
    per_sample = q.shape[1] > 1
    for r in prange(n_samples * n_channels):
        n = r // n_channels
        c = r - n * n_channels
        p = n if per_sample else 0
        if dy3 is None:
            dx_slice_inplace(sub2(x3, n, c), sub2(dx3, n, c), q[0, p, c], q[1, p, c], q[2, p, c], q[3, p, c],
                             q[4, p, c])
        else:
            dx_slice(sub2(x3, n, c), sub2(dy3, n, c), sub2(dx3, n, c), q[0, p, c], q[1, p, c], q[2, p, c],
                     q[3, p, c], q[4, p, c])


@kernel
def dx_planes(x3, dy3, dx3, q, rows_per_chunk, nchunks):
    """Channels-last dx over (B, R, C) arrays, plane b with coefficients ``q[:, b]`` (or ``q[:, 0]``);
    ``dy3`` None: in place, as in :func:`dx_rows`."""
    n_planes, n_rows, _ = x3.shape
    per_plane = q.shape[1] > 1
    for item in prange(n_planes * nchunks):
        b = item // nchunks
        lo = (item - b * nchunks) * rows_per_chunk
        hi = min(lo + rows_per_chunk, n_rows)
        p = b if per_plane else 0
        if dy3 is None:
            dx_cols_inplace(x3[b, lo:hi], dx3[b, lo:hi], q[0, p], q[1, p], q[2, p], q[3, p], q[4, p])
        else:
            dx_cols(x3[b, lo:hi], dy3[b, lo:hi], dx3[b, lo:hi], q[0, p], q[1, p], q[2, p], q[3, p], q[4, p])
