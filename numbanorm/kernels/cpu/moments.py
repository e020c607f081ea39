"""The moments primitive: stable per-slice (count, mean, M2) and Chan's merge.

Every layer's statistics come from here. Within a cache-sized block the moments
are a two-pass computation (mean first, then the sum of squared deviations from it),
both accumulated in float64; blocks, threads, CUDA blocks and processes are then
combined with the pairwise update of Chan, Golub & LeVeque (1979):

.. math::

    n = n_a + n_b,\\quad \\delta = \\bar x_b - \\bar x_a,\\quad
    \\bar x = \\bar x_a + \\delta\\, n_b / n,\\quad
    M_2 = M_{2,a} + M_{2,b} + \\delta^2 n_a n_b / n.

``E[x^2] - E[x]^2`` is never used: it cancels catastrophically for data far from zero.
A per-element Welford update would be as stable but does not vectorize; the two-pass
block reads the block twice from L1, which costs less than the dependency chain.
"""

import numba
import numpy as np
from numba import prange

from ... import config
from ._jit import kernel, reduce_helper

__all__ = [
    "chan_merge",
    "slice_moments",
    "slice_mean_square",
    "cols_block_moments",
    "cols_merge",
    "cols_range_moments",
    "rows_moments",
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


@reduce_helper
def slice_moments(x, block):
    """(count, mean, M2) of a contiguous 1-D slice: blockwise two-pass, Chan-merged."""
    n = x.size
    if n == 0:
        return 0.0, 0.0, 0.0
    first = min(block, n)
    mean, m2 = _two_pass(x[:first])
    count = float(first)
    start = first
    while start < n:
        stop = min(start + block, n)
        b_mean, b_m2 = _two_pass(x[start:stop])
        count, mean, m2 = chan_merge(count, mean, m2, float(stop - start), b_mean, b_m2)
        start = stop
    return count, mean, m2


@reduce_helper
def slice_mean_square(x):
    """Mean of x**2 over a contiguous 1-D slice, accumulated in float64 (RMSNorm)."""
    s = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        s += v * v
    return s / max(x.size, 1)


@reduce_helper
def cols_block_moments(x2, mean, m2):
    """Two-pass moments of each column of a (rows, C) block into ``mean``/``m2`` (float64).

    Four rows per sweep: the (C,) accumulators are read and written once per four
    elements of a column instead of once per element.
    """
    rows, cols = x2.shape
    mean[:] = 0.0
    m2[:] = 0.0
    quad = rows - rows % 4
    for i in range(0, quad, 4):
        r0, r1, r2, r3 = x2[i], x2[i + 1], x2[i + 2], x2[i + 3]
        for c in range(cols):
            mean[c] += (np.float64(r0[c]) + r1[c]) + (np.float64(r2[c]) + r3[c])
    for i in range(quad, rows):
        r0 = x2[i]
        for c in range(cols):
            mean[c] += r0[c]
    inv = 1.0 / rows
    for c in range(cols):
        mean[c] *= inv
    for i in range(0, quad, 4):
        r0, r1, r2, r3 = x2[i], x2[i + 1], x2[i + 2], x2[i + 3]
        for c in range(cols):
            mu = mean[c]
            d0 = r0[c] - mu
            d1 = r1[c] - mu
            d2 = r2[c] - mu
            d3 = r3[c] - mu
            m2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for i in range(quad, rows):
        r0 = x2[i]
        for c in range(cols):
            d = r0[c] - mean[c]
            m2[c] += d * d


@reduce_helper
def cols_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan-merge column moments of ``n_b`` rows into those of ``n_a`` rows, in place."""
    n = n_a + n_b
    frac = n_b / n
    weight = n_a * frac
    for c in range(mean_a.size):
        delta = mean_b[c] - mean_a[c]
        mean_a[c] += delta * frac
        m2_a[c] += m2_b[c] + delta * delta * weight


@kernel
def rows_moments(x2, block, mean, m2):
    """Mean and M2 of every row of a C-contiguous (R, L) array, parallel over rows."""
    for r in prange(x2.shape[0]):
        _, mean[r], m2[r] = slice_moments(x2[r], block)


@reduce_helper
def cols_range_moments(x2, block_rows, mean, m2, tmp_mean, tmp_m2):
    """Column moments of a (rows, C) array walked in cache-sized blocks of ``block_rows``.

    Each block is a two-pass computation, Chan-merged into ``mean``/``m2``;
    ``tmp_mean``/``tmp_m2`` are (C,) float64 scratch. Returns the row count.
    """
    n_rows = x2.shape[0]
    first = min(block_rows, n_rows)
    cols_block_moments(x2[:first], mean, m2)
    count = float(first)
    lo = first
    while lo < n_rows:
        hi = min(lo + block_rows, n_rows)
        cols_block_moments(x2[lo:hi], tmp_mean, tmp_m2)
        cols_merge(count, mean, m2, float(hi - lo), tmp_mean, tmp_m2)
        count += hi - lo
        lo = hi
    return count


@kernel
def cols_moments(x3, rows_per_chunk, block_rows, mean, m2):
    """Partial column moments of a C-contiguous (B, R, C) array.

    Rows of each of the B planes are cut into K chunks of ``rows_per_chunk`` rows;
    ``mean`` and ``m2`` have shape (B, K, C) and receive each chunk's moments (its
    count is the chunk's row count), to be combined with :func:`merge_partials`.
    """
    nb, nrows, ncols = x3.shape
    nchunks = mean.shape[1]
    for item in prange(nb * nchunks):
        b = item // nchunks
        k = item - b * nchunks
        start = k * rows_per_chunk
        stop = min(start + rows_per_chunk, nrows)
        tmp_mean = np.empty(ncols, np.float64)
        tmp_m2 = np.empty(ncols, np.float64)
        cols_range_moments(x3[b, start:stop], block_rows, mean[b, k], m2[b, k], tmp_mean, tmp_m2)


@kernel
def merge_partials(counts, mean, m2, out_count, out_mean, out_m2):
    """Chan-merge partial moments along axis 1.

    ``counts`` (P, K), ``mean`` and ``m2`` (P, K, M) -> ``out_count`` (P,),
    ``out_mean`` and ``out_m2`` (P, M). Used for chunks, channels of a group,
    samples of a batch and processes of a SyncBatchNorm alike.
    """
    npart, nk, nm = mean.shape
    for p in prange(npart):
        for j in range(nm):
            n, mu, s = 0.0, 0.0, 0.0
            for k in range(nk):
                n, mu, s = chan_merge(n, mu, s, counts[p, k], mean[p, k, j], m2[p, k, j])
            out_mean[p, j] = mu
            out_m2[p, j] = s
        total = 0.0
        for k in range(nk):
            total += counts[p, k]
        out_count[p] = total


def _plan_chunks(planes, rows, cols):
    """Rows per chunk for :func:`cols_moments`-style column passes over (planes, rows, cols)."""
    block_rows = max(1, config.COLUMN_BLOCK_ELEMENTS // max(cols, 1))
    if planes * rows * cols < config.PARALLEL_MIN_ELEMENTS:
        # The serial build runs it: one chunk per plane, nothing to merge.
        return max(rows, 1), 1, block_rows
    items = numba.get_num_threads() * config.CHUNKS_PER_THREAD
    want = -(-items // planes)
    nchunks = max(1, min(want, -(-rows // block_rows)))
    rows_per_chunk = -(-rows // nchunks)
    nchunks = -(-rows // rows_per_chunk)
    return rows_per_chunk, nchunks, block_rows


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
    rows_moments(x2.size, x2, config.BLOCK_ELEMENTS, mean, m2)
    return float(length), mean, m2


def column_moments(x3):
    """Per-column (count, mean, M2) of each plane of a C-contiguous (B, R, C) array.

    Returns the row count and (B, C) arrays of means and M2, from chunk partials
    computed in parallel and merged with Chan's formula.
    """
    planes, rows, cols = x3.shape
    rows_per_chunk, nchunks, block_rows = _plan_chunks(planes, rows, cols)
    mean = np.empty((planes, nchunks, cols))
    m2 = np.empty((planes, nchunks, cols))
    cols_moments(x3.size, x3, rows_per_chunk, block_rows, mean, m2)
    if nchunks == 1:
        return float(rows), mean[:, 0], m2[:, 0]
    _, mean, m2 = merge(chunk_counts(rows, rows_per_chunk, nchunks), mean, m2)
    return float(rows), mean, m2
