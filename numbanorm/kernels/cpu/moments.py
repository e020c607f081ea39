"""The moments primitive: stable per-slice (count, mean, M2) and Chan's merge.

Every layer's statistics come from here, accumulated in float64:

* Contiguous slices (rows of NCHW planes, LayerNorm rows, GroupNorm blocks): per
  cache-sized block, sums of deviations from the block's first value in one read,
  checked for cancellation, with a two-pass computation (mean first, then the sum of
  squared deviations from it) for the blocks that fail the check.
* Columns of a (rows, C) array (channels-last and (N, C) input): the same shifted sums,
  one lane per column about the first row's value, eight row streams per sweep, checked
  per column, with lane-wise Welford (1962) for the row ranges that fail the check; both
  read each row once.
* A channel of short planes (BatchNorm's 7x7 and 4x4 stages, parallel over channels): its
  N short slices read twice while in cache, the corrected two-pass algorithm (mean, then
  ``sum(d**2) - sum(d)**2 / n`` with ``d = x - mean``) in float64, with no per-slice
  block check or merge, which would cost as much as the slice's values.

Blocks, row chunks, threads, channels of a group, CUDA blocks and processes are then
combined with the pairwise update of Chan, Golub & LeVeque (1979):

.. math::

    n = n_a + n_b,\\quad \\delta = \\bar x_b - \\bar x_a,\\quad
    \\bar x = \\bar x_a + \\delta\\, n_b / n,\\quad
    M_2 = M_{2,a} + M_{2,b} + \\delta^2 n_a n_b / n.

``E[x^2] - E[x]^2`` is never used: it cancels catastrophically for data far from zero.
Deviations from a value of the block bound the cancellation by the block size, and
the check bounds it further (see :func:`_block_moments`).
A per-element Welford update along a contiguous slice would be as stable but is a
serial dependency chain that does not vectorize; across columns each lane is
independent, so there it vectorizes and saves the second read, which makes it the
columns' fallback (the shifted sums cost fewer operations per value: one subtraction, an
add and a multiply-add).

:func:`add_slice_moments` is the slice primitive of a sum (LayerNorm's skip form,
``s = x + residual``): it writes each value of ``s`` and takes its shifted sums in the same
read of x and the residual, with the same check and fallback.
"""

import numba
import numpy as np
from numba import prange

from ... import _memory, config
from ._jit import elementwise_helper, kernel, reduce_helper, reduce_inline
from .prefetch import prefetch_lines, prefetch_slice
from .subarrays import sub, sub2

__all__ = [
    "chan_merge",
    "chan_merge_into",
    "slice_moments",
    "add_slice_moments",
    "merge_range",
    "welford_step",
    "cols_shifted_sums",
    "cols_welford",
    "cols_range_moments",
    "rows_moments",
    "strided_moments",
    "channels_moments",
    "cols_moments",
    "merge_partials",
    "merge",
    "row_moments",
    "column_moments",
    "chunk_counts",
]


@reduce_helper
def chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two partial moments (count, mean, M2) with Chan's formula."""
    n = n_a + n_b
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    delta = mean_b - mean_a
    frac = n_b / n
    return n, mean_a + delta * frac, m2_a + m2_b + delta * delta * (n_a * frac)


@reduce_helper
def chan_merge_into(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """:func:`chan_merge` of every entry of (M,) ``mean_b``/``m2_b`` (``n_b`` values each)
    into ``mean_a``/``m2_a`` (``n_a`` each), in place; returns the merged count.

    One call per pair of counts instead of one per entry: the compiled loop hoists
    :func:`chan_merge`'s count tests and division out of the entries and vectorizes.
    """
    for j in range(mean_a.size):
        _, mean_a[j], m2_a[j] = chan_merge(n_a, mean_a[j], m2_a[j], n_b, mean_b[j], m2_b[j])
    return n_a + n_b


@reduce_inline
def _two_pass(x):
    # float64 accumulators for float32 input: x - mean is exact in float64.
    s = 0.0
    for i in range(x.size):
        s += x[i]
    mean = s / x.size
    m2 = 0.0
    for i in range(x.size):
        d = x[i] - mean
        m2 += d * d
    return mean, m2


@reduce_inline
def _shifted_sums(x, k):
    """``(sum(x - k), sum((x - k)**2))`` in float64, one read of x."""
    s1 = 0.0
    s2 = 0.0
    for i in range(x.size):
        d = x[i] - k
        s1 += d
        s2 += d * d
    return s1, s2


@reduce_inline
def _shifted_moments(k, s1, s2, n, max_ratio):
    """``(ok, mean, M2)`` of n values from their shifted sums ``s1 = sum(x - k)`` and
    ``s2 = sum((x - k)**2)``: ``mean = k + s1 / n``, ``M2 = s2 - s1**2 / n``, and whether
    they pass the cancellation check ``r = s1**2 / (n M2) <= max_ratio`` with a finite ``k``
    (a NaN M2 passes: NaN data gives NaN moments either way; a negative M2 from rounding,
    when M2 is next to nothing, is clamped to 0)."""
    t = s1 / n
    shift = s1 * t
    m2 = s2 - shift
    if np.isfinite(k) and (shift <= max_ratio * m2 or not np.isfinite(m2)):
        if m2 < 0.0:
            m2 = 0.0
        return True, k + t, m2
    return False, 0.0, 0.0


@reduce_inline
def _block_moments(x, max_ratio):
    """(mean, M2) of a cache-sized block: shifted sums about its first value, checked.

    With ``k = x[0]`` and ``d = x - k`` (exact in float64 for float32 data),
    ``mean = k + sum(d) / n`` and ``M2 = sum(d**2) - sum(d)**2 / n``. The subtraction
    loses about ``log2(1 + 2 r)`` bits, ``r = n (mean - k)**2 / M2``, and since
    ``(x[0] - mean)**2`` is one term of M2, ``r <= n``: a bounded loss in float64, not the
    unbounded one of ``E[x^2] - E[x]^2``. Data rarely puts ``x[0]`` far from the mean,
    so ``r`` is small and one read of the block gives the moments; when ``r`` exceeds
    ``max_ratio`` (an outlier first, or a non-finite one) the block is recomputed with
    the two-pass algorithm, whose error does not depend on a shift.
    """
    k = np.float64(x[0])
    if np.isfinite(k):
        s1, s2 = _shifted_sums(x, k)
        ok, mean, m2 = _shifted_moments(k, s1, s2, x.size, max_ratio)
        if ok:
            return mean, m2
    return _two_pass(x)


@reduce_inline
def _add_shifted_sums(x, r, s, k):
    """Write ``s = x + r`` (in s's dtype) and return ``(sum(s - k), sum((s - k)**2))`` in float64."""
    s1 = 0.0
    s2 = 0.0
    for i in range(x.size):
        v = x[i] + r[i]
        s[i] = v
        d = np.float64(v) - k
        s1 += d
        s2 += d * d
    return s1, s2


@reduce_inline
def _add_block_moments(x, r, s, max_ratio):
    """:func:`_block_moments` of ``s = x + r``, written to ``s`` in the same read; the shift is
    ``s[0]`` and a block that fails the check is recomputed two-pass from ``s`` (in cache)."""
    k = np.float64(x[0] + r[0])
    s1, s2 = _add_shifted_sums(x, r, s, k if np.isfinite(k) else 0.0)
    ok, mean, m2 = _shifted_moments(k, s1, s2, x.size, max_ratio)
    if ok:
        return mean, m2
    return _two_pass(s)


@reduce_inline
def _add_sum_squares(x, r, s):
    """Write ``s = x + r`` and return ``sum(s**2)`` in float64, one read."""
    acc = 0.0
    for i in range(x.size):
        v = x[i] + r[i]
        s[i] = v
        w = np.float64(v)
        acc += w * w
    return acc


@reduce_inline
def _sum_squares(x):
    """``sum(x**2)`` over a contiguous 1-D slice, accumulated in float64."""
    s = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        s += v * v
    return s


@reduce_helper
def slice_moments(x, block, max_ratio, center):
    """(count, mean, M2) of a contiguous 1-D slice.

    With ``center``: moments of blocks of ``block`` values (:func:`_block_moments`,
    ``max_ratio`` its check), Chan-merged. Without (RMSNorm's mean-square mode): the
    moments about zero, ``(count, 0, sum(x**2))``, so that ``M2 / count`` is the mean
    square and every caller finishes the statistics the same way.
    """
    n = x.size
    if n == 0:
        return 0.0, 0.0, 0.0
    if not center:
        return float(n), 0.0, _sum_squares(x)
    first = min(block, n)
    mean, m2 = _block_moments(x[:first], max_ratio)
    count = float(first)
    start = first
    while start < n:
        stop = min(start + block, n)
        b_mean, b_m2 = _block_moments(x[start:stop], max_ratio)
        count, mean, m2 = chan_merge(count, mean, m2, float(stop - start), b_mean, b_m2)
        start = stop
    return count, mean, m2


@reduce_helper
def add_slice_moments(x, r, s, block, max_ratio, center):
    """:func:`slice_moments` of ``s = x + r`` (1-D slices), writing ``s`` in the same read.

    ``s`` is rounded to its dtype (x's) before its moments are taken, so they are the moments
    of the values stored, as if ``s`` had been formed first and then passed to
    :func:`slice_moments`.
    """
    n = x.size
    if n == 0:
        return 0.0, 0.0, 0.0
    if not center:
        return float(n), 0.0, _add_sum_squares(x, r, s)
    first = min(block, n)
    mean, m2 = _add_block_moments(x[:first], r[:first], s[:first], max_ratio)
    count = float(first)
    start = first
    while start < n:
        stop = min(start + block, n)
        b_mean, b_m2 = _add_block_moments(x[start:stop], r[start:stop], s[start:stop], max_ratio)
        count, mean, m2 = chan_merge(count, mean, m2, float(stop - start), b_mean, b_m2)
        start = stop
    return count, mean, m2


@reduce_helper
def merge_range(count, mean, m2, lo, hi):
    """Chan-merge entries ``lo:hi`` of (C,) ``mean``/``m2``, each the moments of ``count`` values.

    The channels of a group, in channel order: the same order on every path.
    """
    n, mu, s = 0.0, 0.0, 0.0
    for c in range(lo, hi):
        n, mu, s = chan_merge(n, mu, s, count, mean[c], m2[c])
    return n, mu, s


@elementwise_helper
def welford_step(x, mean, m2, inv_count):
    """One Welford update of a running (mean, M2) by ``x``, ``inv_count = 1 / (count after)``."""
    v = np.float64(x)
    d = v - mean
    mean += d * inv_count
    return mean, m2 + d * (v - mean)


@elementwise_helper
def cols_welford(x2, mean, m2, tmp):
    """Moments of each column of a (rows, C) array into float64 ``mean``/``m2``; returns the row count.

    The fallback of :func:`cols_range_moments`. Lane-wise Welford (1962), one lane per
    column: for the ``k``-th row of a stream

    .. math::

        \\delta = x_k - \\bar x,\\quad \\bar x \\mathrel{+}= \\delta / k,\\quad
        M_2 \\mathrel{+}= \\delta\\,(x_k - \\bar x),

    all in float64. The ``1 / k`` factor is shared by a row's columns, so the update
    vectorizes across columns, and each row is read once (a two-pass block would read
    it again from L2, which is what bounded the column passes). The first and second
    halves of the rows are two independent streams updated in the same sweep, four
    rows at a time, so that narrow arrays (C = 64: eight vectors) still have enough
    independent work to hide the update's latency; the halves are Chan-merged at the
    end. ``tmp`` is (2, C) float64 scratch for the second stream. Nothing is reduced
    across columns, so the loop vectorizes without ``reassoc`` and is compiled without
    it: the update stays exactly as written.
    """
    rows, cols = x2.shape
    mean[:] = 0.0
    m2[:] = 0.0
    if rows == 0:
        return 0.0
    mean_b = tmp[0]
    m2_b = tmp[1]
    mean_b[:] = 0.0
    m2_b[:] = 0.0
    half = (rows // 8) * 4
    xa = x2[:half]
    xb = x2[half:2 * half]
    for i in range(0, half, 4):
        a0, a1, a2, a3 = xa[i], xa[i + 1], xa[i + 2], xa[i + 3]
        b0, b1, b2, b3 = xb[i], xb[i + 1], xb[i + 2], xb[i + 3]
        f0 = 1.0 / (i + 1)
        f1 = 1.0 / (i + 2)
        f2 = 1.0 / (i + 3)
        f3 = 1.0 / (i + 4)
        for c in range(cols):
            mu, q = mean[c], m2[c]
            nu, p = mean_b[c], m2_b[c]
            mu, q = welford_step(a0[c], mu, q, f0)
            nu, p = welford_step(b0[c], nu, p, f0)
            mu, q = welford_step(a1[c], mu, q, f1)
            nu, p = welford_step(b1[c], nu, p, f1)
            mu, q = welford_step(a2[c], mu, q, f2)
            nu, p = welford_step(b2[c], nu, p, f2)
            mu, q = welford_step(a3[c], mu, q, f3)
            nu, p = welford_step(b3[c], nu, p, f3)
            mean[c], m2[c] = mu, q
            mean_b[c], m2_b[c] = nu, p
    # The last rows % 8 rows continue the second stream.
    for i in range(2 * half, rows):
        r0 = sub(x2, i)
        f0 = 1.0 / (i - half + 1)
        for c in range(cols):
            mean_b[c], m2_b[c] = welford_step(r0[c], mean_b[c], m2_b[c], f0)
    n_b = rows - half
    frac = n_b / rows
    weight = half * frac
    for c in range(cols):
        delta = mean_b[c] - mean[c]
        mean[c] += delta * frac
        m2[c] += m2_b[c] + delta * delta * weight
    return float(rows)


@elementwise_helper
def cols_shifted_sums(x2, k, s1, s2):
    """Per-column ``sum(x - k)`` and ``sum((x - k)**2)`` of a (rows, C) array into float64 ``s1``/``s2``.

    The rows are cut into eight equal segments (and a tail of ``rows % 8``), and each sweep
    takes row ``i`` of every segment: eight sequential streams for the prefetcher, never two
    adjacent rows (which it does not follow), and the (C,) accumulators read and written
    once per eight rows. Nothing is reduced across columns, so the loop vectorizes without
    ``reassoc`` and is compiled without it: each ``x - k`` is formed as written, not merged
    with another row's.
    """
    rows = x2.shape[0]
    s1[:] = 0.0
    s2[:] = 0.0
    q = rows // 8
    xa, xb, xc, xd = x2[:q], x2[q:2 * q], x2[2 * q:3 * q], x2[3 * q:4 * q]
    xe, xf, xg, xh = x2[4 * q:5 * q], x2[5 * q:6 * q], x2[6 * q:7 * q], x2[7 * q:8 * q]
    for i in range(q):
        ra, rb, rc, rd, re, rf, rg, rh = xa[i], xb[i], xc[i], xd[i], xe[i], xf[i], xg[i], xh[i]
        for c in range(k.size):
            kc = k[c]
            d0 = np.float64(ra[c]) - kc
            d1 = np.float64(rb[c]) - kc
            d2 = np.float64(rc[c]) - kc
            d3 = np.float64(rd[c]) - kc
            d4 = np.float64(re[c]) - kc
            d5 = np.float64(rf[c]) - kc
            d6 = np.float64(rg[c]) - kc
            d7 = np.float64(rh[c]) - kc
            s1[c] += ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7))
            s2[c] += ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)) + ((d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7))
    for i in range(8 * q, rows):
        r = sub(x2, i)
        for c in range(k.size):
            d = np.float64(r[c]) - k[c]
            s1[c] += d
            s2[c] += d * d


@reduce_helper
def cols_range_moments(x2, mean, m2, tmp, max_ratio):
    """Moments of each column of a (rows, C) array into float64 ``mean``/``m2``; returns the row count.

    Shifted sums about the first row, as :func:`_block_moments` takes them for a slice:
    with ``k`` the column's first value and ``d = x - k`` (exact in float64 for float32
    data), ``mean = k + sum(d) / n`` and ``M2 = sum(d**2) - sum(d)**2 / n``, in one read of
    the rows (:func:`cols_shifted_sums`). The cancellation ratio ``r = sum(d)**2 / (n M2)``
    is at most n, and a column with ``r`` above ``max_ratio``, or a non-finite first value,
    makes the whole range fall back to lane-wise Welford (:func:`cols_welford`), whose error
    does not depend on a shift. ``tmp`` is (2, C) float64 scratch.
    """
    rows, cols = x2.shape
    if rows == 0:
        mean[:] = 0.0
        m2[:] = 0.0
        return 0.0
    k = tmp[0]
    for c in range(cols):
        k[c] = np.float64(x2[0, c])
    cols_shifted_sums(x2, k, mean, m2)
    for c in range(cols):
        ok, mean[c], m2[c] = _shifted_moments(k[c], mean[c], m2[c], rows, max_ratio)
        if not ok:
            return cols_welford(x2, mean, m2, tmp)
    return float(rows)


@kernel
def rows_moments(x2, block, max_ratio, mean, m2, prefetch):
    """Mean and M2 of every row of a C-contiguous (R, L) array, parallel over rows; each row
    starts by prefetching the next (``prefetch``: the cache-line size, or 0 for none)."""
    rows = x2.shape[0]
    for r in prange(rows):
        if prefetch and r + 1 < rows:
            prefetch_slice(sub(x2, r + 1), prefetch)
        _, mean[r], m2[r] = slice_moments(sub(x2, r), block, max_ratio, True)


@reduce_helper
def strided_moments(x3, c):
    """(count, mean, M2) of channel ``c`` of a C-contiguous (N, C, S) array, two passes.

    The corrected two-pass algorithm (Chan, Golub & LeVeque, 1983) in float64: the mean,
    then ``sum(d**2) - sum(d)**2 / n`` with ``d = x - mean``, whose second term removes
    the first pass's rounding. For a channel small enough to stay in cache between reads.
    """
    n, _, s = x3.shape
    count = float(n * s)
    if count == 0.0:
        return 0.0, 0.0, 0.0
    t = 0.0
    for i in range(n):
        row = sub2(x3, i, c)
        for j in range(s):
            t += np.float64(row[j])
    mean = t / count
    q = 0.0
    e = 0.0
    for i in range(n):
        row = sub2(x3, i, c)
        for j in range(s):
            d = np.float64(row[j]) - mean
            q += d * d
            e += d
    m2 = q - e * e / count
    if m2 < 0.0:  # rounding, when M2 is next to nothing; NaN stays NaN
        m2 = 0.0
    return count, mean + e / count, m2


@kernel
def channels_moments(x3, mean, m2):
    """Per-channel mean and M2 of a C-contiguous (N, C, S) array (:func:`strided_moments`),
    parallel over channels."""
    for c in prange(x3.shape[1]):
        _, mean[c], m2[c] = strided_moments(x3, c)


@kernel
def cols_moments(x3, rows_per_chunk, max_ratio, mean, m2, tmp):
    """Partial column moments of a C-contiguous (B, R, C) array.

    Rows of each of the B planes are cut into K chunks of ``rows_per_chunk`` rows;
    ``mean`` and ``m2`` have shape (B, K, C) and receive each chunk's moments (its
    count is the chunk's row count), to be combined with :func:`merge_partials`.
    ``tmp`` (B*K, 2, C) float64 is each chunk's scratch (allocated aligned by the caller:
    Numba's own arrays are 32-byte aligned, and these rows are read once per input row).
    """
    nb, nrows, ncols = x3.shape
    nchunks = mean.shape[1]
    for item in prange(nb * nchunks):
        b = item // nchunks
        k = item - b * nchunks
        start = k * rows_per_chunk
        stop = min(start + rows_per_chunk, nrows)
        cols_range_moments(x3[b, start:stop], mean[b, k], m2[b, k], tmp[item], max_ratio)


@kernel
def merge_partials(counts, mean, m2, out_count, out_mean, out_m2):
    """Chan-merge partial moments along axis 1.

    ``counts`` (P, K), ``mean`` and ``m2`` (P, K, M) -> ``out_count`` (P,),
    ``out_mean`` and ``out_m2`` (P, M). Used for chunks, channels of a group,
    samples of a batch and processes of a SyncBatchNorm alike.
    """
    npart, nk, _ = mean.shape
    for p in prange(npart):
        into_mean = sub(out_mean, p)
        into_m2 = sub(out_m2, p)
        into_mean[:] = 0.0
        into_m2[:] = 0.0
        n = 0.0
        for k in range(nk):
            n = chan_merge_into(n, into_mean, into_m2, counts[p, k], sub2(mean, p, k), sub2(m2, p, k))
        total = 0.0
        for k in range(nk):
            total += counts[p, k]
        out_count[p] = total


def _plan_chunks(planes, rows, cols):
    """(rows per chunk, chunks per plane) for column passes over (planes, rows, cols).

    A chunk holds at least ``config.COLUMN_BLOCK_ELEMENTS`` values and
    ``config.COLUMN_MIN_ROWS`` rows: each one ends in a (C,)-wide merge or partial sum
    (a Chan merge costs a division per column), which a chunk of few rows would not
    amortize, however wide.
    """
    if not config.PARALLEL or planes * rows * cols < config.PARALLEL_MIN_ELEMENTS:
        # The serial build runs it: one chunk per plane, nothing to merge.
        return max(rows, 1), 1
    min_rows = max(1, config.COLUMN_MIN_ROWS, config.COLUMN_BLOCK_ELEMENTS // max(cols, 1))
    items = numba.get_num_threads() * config.CHUNKS_PER_THREAD
    want = -(-items // planes)
    nchunks = max(1, min(want, -(-rows // min_rows)))
    rows_per_chunk = -(-rows // nchunks)
    nchunks = -(-rows // rows_per_chunk)
    return rows_per_chunk, nchunks


def chunk_counts(rows, rows_per_chunk, nchunks):
    """Row counts of the chunks :func:`_plan_chunks` cut ``rows`` into, as float64."""
    counts = np.full(nchunks, float(rows_per_chunk))
    counts[-1] = rows - rows_per_chunk * (nchunks - 1)
    return counts


def merge(counts, mean, m2):
    """Merge partial moments along axis 1: (P, K[, M]) -> (count (P,), mean (P, M), M2 (P, M))."""
    counts = np.ascontiguousarray(np.broadcast_to(counts, mean.shape[:2]), dtype=np.float64)
    mean = np.ascontiguousarray(mean, dtype=np.float64)
    m2 = np.ascontiguousarray(m2, dtype=np.float64)
    squeeze = mean.ndim == 2
    if squeeze:
        mean, m2 = mean[:, :, None], m2[:, :, None]
    p, _, m = mean.shape
    out_count = np.empty(p)
    out_mean = np.empty((p, m))
    out_m2 = np.empty((p, m))
    merge_partials(mean.size, counts, mean, m2, out_count, out_mean, out_m2)
    if squeeze:
        return out_count, out_mean[:, 0], out_m2[:, 0]
    return out_count, out_mean, out_m2


def row_moments(x2):
    """Per-row (count, mean, M2) of a C-contiguous (R, L) array."""
    rows, length = x2.shape
    mean = np.empty(rows)
    m2 = np.empty(rows)
    rows_moments(x2.size, x2, config.BLOCK_ELEMENTS, config.SHIFT_RATIO_MAX, mean, m2, prefetch_lines(x2.nbytes))
    return float(length), mean, m2


def column_moments(x3):
    """Per-column (count, mean, M2) of each plane of a C-contiguous (B, R, C) array.

    Returns the row count and (B, C) arrays of means and M2, from chunk partials
    computed in parallel and merged with Chan's formula.
    """
    planes, rows, cols = x3.shape
    rows_per_chunk, nchunks = _plan_chunks(planes, rows, cols)
    mean = _memory.empty((planes, nchunks, cols), work=x3.size)
    m2 = _memory.empty((planes, nchunks, cols), work=x3.size)
    tmp = _memory.empty((planes * nchunks, 2, cols), work=x3.size)
    cols_moments(x3.size, x3, rows_per_chunk, config.SHIFT_RATIO_MAX, mean, m2, tmp)
    if nchunks == 1:
        return float(rows), mean[:, 0], m2[:, 0]
    _, mean, m2 = merge(chunk_counts(rows, rows_per_chunk, nchunks), mean, m2)
    return float(rows), mean, m2
